//! `fogswarm`: the operator's and CI's command.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use fogswarm::fleet::{self, Connection, DeviceCommand, SwarmCommand};
use fogswarm::lab::{self, net::Subnet, BadInput, LabStatus};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fogswarm",
    version,
    about = "Turn fleets of Docker devices into swarm fogs, and deploy to them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A simulated fog on this machine: network, registry and devices that
    /// each run their own Docker Engine.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Multi-arch scratch images, built and pushed without a Docker daemon.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Swarms on the configuration server.
    Swarm {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: SwarmCommand,
    },
    /// Agents on the fleet's devices: rollouts in waves.
    Agent {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::agent::AgentCommand,
    },
    /// Devices on the configuration server.
    Device {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Services a swarm should run: deployed through the server, made so by
    /// the swarm's raft leader.
    Service {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::service::ServiceCommand,
    },
    /// Compose files deployed as stacks of services.
    Stack {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::service::StackCommand,
    },
    /// Secrets a swarm's services read as files (encrypted on the server).
    Secret {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::files::FileCommand,
    },
    /// Configs a swarm's services read as files.
    Config {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::files::FileCommand,
    },
    /// Registry logins a swarm's devices pull with.
    Registry {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::files::RegistryCommand,
    },
    /// Tokens that admit new devices into a swarm, with labels.
    EnrolToken {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::EnrolTokenCommand,
    },
    /// Named users with roles: viewer, operator (of some swarms), admin.
    User {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::UserCommand,
    },
    /// Users' API tokens (the CLI reads one from FOGSWARM_TOKEN or --token-file).
    Token {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::TokenCommand,
    },
    /// Users' client certificates from the fleet's CA (for Docker contexts
    /// and other TLS clients).
    Cert {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::CertCommand,
    },
    /// The fleet-wide provisioning key that admits new devices.
    ProvisioningKey {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::ProvisioningKeyCommand,
    },
    /// The admin token (the built-in admin's).
    AdminToken {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: fogswarm::trust::AdminTokenCommand,
    },
    /// The fleet at a glance: devices per swarm and state, and problems.
    Status {
        #[command(flatten)]
        conn: Connection,
    },
    /// The server's event log: who did what, when.
    Events {
        #[command(flatten)]
        conn: Connection,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only events about this swarm or device.
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build an image for several platforms and push it, or write it out.
    Build(Box<fogswarm::image::BuildArgs>),
    /// Show an image's index, platform manifests and layer sizes.
    Inspect {
        reference: String,
        /// Plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        auth: fogswarm::image::RegistryAuth,
        #[arg(long)]
        json: bool,
    },
    /// Write a signing key pair: PREFIX.key (private, 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, default_value = "fogswarm")]
        out: std::path::PathBuf,
    },
    /// Sign an image in its registry, as cosign does (`sha256-DIGEST.sig`).
    Sign {
        reference: String,
        /// The private key (fogswarm image keygen).
        #[arg(long)]
        key: std::path::PathBuf,
        /// Plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        auth: fogswarm::image::RegistryAuth,
        #[arg(long)]
        json: bool,
    },
    /// Check that an image carries a signature by one of the keys.
    Verify {
        reference: String,
        /// A public key (repeatable).
        #[arg(long)]
        key: Vec<std::path::PathBuf>,
        /// Plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        auth: fogswarm::image::RegistryAuth,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct LabTarget {
    /// Name of the lab.
    #[arg(long, default_value = "fog")]
    name: String,
    /// Where labs keep their state [default: /var/lib/fogswarm/labs as root].
    #[arg(long, env = "FOGSWARM_LAB_DIR")]
    lab_dir: Option<PathBuf>,
}

impl LabTarget {
    fn root(&self) -> PathBuf {
        self.lab_dir
            .clone()
            .unwrap_or_else(lab::state::default_root)
    }
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create the network, registry and devices, and wait for every engine.
    Up {
        #[command(flatten)]
        target: LabTarget,
        /// How many devices.
        #[arg(long, default_value_t = 3)]
        devices: u32,
        /// How many of them (the last ones) are arm64 devices under emulation.
        #[arg(long, default_value_t = 0)]
        arm64: u32,
        /// The lab network's IPv4 subnet, /16 to /28 [default: 10.213.X.0/24, X from the name].
        #[arg(long)]
        subnet: Option<String>,
        /// Extra argument for every device's dockerd (repeatable).
        #[arg(long = "dockerd-arg", allow_hyphen_values = true)]
        dockerd_args: Vec<String>,
        /// Engines only: no config server and no agents.
        #[arg(long)]
        bare: bool,
        /// Fleet file (JSON): the swarm, and each device's role and labels
        /// [default: dev1 leader, dev2-3 managers, the rest workers].
        #[arg(long, conflicts_with = "bare")]
        fleet: Option<PathBuf>,
        /// Static agent binary for a platform, PLATFORM=PATH (amd64, arm64)
        /// [default: $FOGSWARM_AGENT_BIN_<PLATFORM>, else cargo's target dir].
        #[arg(long = "agent-bin")]
        agent_bins: Vec<String>,
        /// Seconds between an agent's heartbeats.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
        /// Return once the engines answer, without waiting for the swarm.
        #[arg(long)]
        no_wait: bool,
        /// Print the resulting status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a held device's agent (a fleet entry with "hold": true).
    StartAgent {
        #[command(flatten)]
        target: LabTarget,
        device: String,
    },
    /// Restart a device's container: a reboot (engine and agent state kept).
    Reboot {
        #[command(flatten)]
        target: LabTarget,
        device: String,
    },
    /// Recreate a device from the image with the same IP and MAC: a re-image
    /// (engine and agent state lost).
    Reimage {
        #[command(flatten)]
        target: LabTarget,
        device: String,
    },
    /// Devices, addresses, engine state and the registry address.
    Status {
        #[command(flatten)]
        target: LabTarget,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a device (the lab's stand-in for ssh).
    Exec {
        #[command(flatten)]
        target: LabTarget,
        /// Device name, like dev1.
        device: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove exactly what `up` created.
    Down {
        #[command(flatten)]
        target: LabTarget,
        #[arg(long)]
        json: bool,
    },
    /// Keep a command running (used by `up` for the registry).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        name: String,
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
}

/// Exits quietly when the reader of our output goes away (`| head`), as
/// Unix tools do, instead of panicking on the broken pipe.
fn default_sigpipe() {
    // SAFETY: restoring the default disposition of one signal at start-up,
    // before any thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let refused_input = e
                .downcast_ref::<fogswarm_client::ClientError>()
                .and_then(|c| c.status())
                .is_some_and(|s| s == 400 || s == 422);
            if e.downcast_ref::<BadInput>().is_some() || refused_input {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Lab { command } => run_lab(command).await,
        Command::Image { command } => match command {
            ImageCommand::Build(args) => fogswarm::image::build(*args)
                .await
                .map(|_| ExitCode::SUCCESS),
            ImageCommand::Inspect {
                reference,
                insecure,
                auth,
                json,
            } => fogswarm::image::inspect(&reference, insecure, &auth, json)
                .await
                .map(|_| ExitCode::SUCCESS),
            ImageCommand::Keygen { out } => {
                fogswarm::supply::keygen(&out).map(|(private, public)| {
                    println!(
                        "private key {} (0600)\npublic key  {}",
                        private.display(),
                        public.display()
                    );
                    ExitCode::SUCCESS
                })
            }
            ImageCommand::Sign {
                reference,
                key,
                insecure,
                auth,
                json,
            } => fogswarm::supply::sign_image(&reference, &key, insecure, &auth, json)
                .await
                .map(|_| ExitCode::SUCCESS),
            ImageCommand::Verify {
                reference,
                key,
                insecure,
                auth,
                json,
            } => fogswarm::supply::verify_image(&reference, &key, insecure, &auth, json)
                .await
                .map(|_| ExitCode::SUCCESS),
        },
        Command::Agent { conn, command } => fogswarm::agent::agent(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Swarm { conn, command } => fleet::swarm(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Device { conn, command } => fleet::device(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Service { conn, command } => fogswarm::service::service(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Stack { conn, command } => fogswarm::service::stack(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Secret { conn, command } => {
            fogswarm::files::file(&conn, fogswarm_protocol::secret::FileKind::Secret, command)
                .await
                .map(|_| ExitCode::SUCCESS)
        }
        Command::Config { conn, command } => {
            fogswarm::files::file(&conn, fogswarm_protocol::secret::FileKind::Config, command)
                .await
                .map(|_| ExitCode::SUCCESS)
        }
        Command::Registry { conn, command } => fogswarm::files::registry(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Status { conn } => fleet::status(&conn).await.map(|_| ExitCode::SUCCESS),
        Command::EnrolToken { conn, command } => fogswarm::trust::enrol_token(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::User { conn, command } => fogswarm::trust::user(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Token { conn, command } => fogswarm::trust::token(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Cert { conn, command } => fogswarm::trust::cert(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::ProvisioningKey { conn, command } => {
            fogswarm::trust::provisioning_key(&conn, command)
                .await
                .map(|_| ExitCode::SUCCESS)
        }
        Command::AdminToken { conn, command } => fogswarm::trust::admin_token(&conn, command)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Events {
            conn,
            since,
            limit,
            subject,
        } => fleet::events(&conn, since, limit, subject)
            .await
            .map(|_| ExitCode::SUCCESS),
    }
}

async fn run_lab(command: LabCommand) -> Result<ExitCode> {
    match command {
        LabCommand::Up {
            target,
            devices,
            arm64,
            subnet,
            dockerd_args,
            bare,
            fleet,
            agent_bins,
            heartbeat,
            no_wait,
            json,
        } => {
            let subnet = subnet
                .map(|s| {
                    s.parse::<Subnet>()
                        .map_err(|e| anyhow::Error::from(BadInput(format!("--subnet: {e}"))))
                })
                .transpose()?;
            let opts = lab::UpOptions {
                name: target.name.clone(),
                devices,
                arm64,
                subnet,
                root: target.root(),
                dockerd_args,
                fogswarm_exe: std::env::current_exe()?,
                bare,
                fleet: fleet
                    .map(|f| lab::fleet::Fleet::load(&f, devices))
                    .transpose()?,
                agent_bins: agent_bins
                    .iter()
                    .map(|a| {
                        a.split_once('=')
                            .map(|(p, path)| (p.to_string(), PathBuf::from(path)))
                            .ok_or_else(|| {
                                anyhow::Error::from(BadInput(format!(
                                    "--agent-bin {a:?} is not PLATFORM=PATH"
                                )))
                            })
                    })
                    .collect::<Result<_>>()?,
                heartbeat_secs: heartbeat.clamp(1, 3600),
                wait: !no_wait,
            };
            let status = lab::up(&opts).await?;
            print_status(&status, json)?;
        }
        LabCommand::StartAgent { target, device } => {
            lab::start_agent(&target.name, &target.root(), &device)?;
            println!("{device}: agent enabled; its boot starts it within a second");
        }
        LabCommand::Reboot { target, device } => {
            lab::reboot(&target.name, &target.root(), &device).await?;
            println!("{device} rebooted");
        }
        LabCommand::Reimage { target, device } => {
            lab::reimage(&target.name, &target.root(), &device).await?;
            println!("{device} re-imaged");
        }
        LabCommand::Status { target, json } => {
            let status = lab::status(&target.name, &target.root()).await?;
            print_status(&status, json)?;
        }
        LabCommand::Exec {
            target,
            device,
            cmd,
        } => {
            let code = lab::exec(&target.name, &target.root(), &device, &cmd).await?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        LabCommand::Down { target, json } => {
            let report = lab::down(&target.name, &target.root()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "lab {} removed: {} containers, {} networks, registry {}, server {}",
                    target.name,
                    report.containers,
                    report.networks,
                    if report.registry_stopped {
                        "stopped"
                    } else {
                        "was not running"
                    },
                    if report.server_stopped {
                        "stopped"
                    } else {
                        "was not running"
                    }
                );
            }
        }
        LabCommand::Supervise { name: _, cmd } => lab::supervisor::supervise(cmd).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &LabStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    println!(
        "lab {}  subnet {}  gateway {}",
        status.name, status.subnet, status.gateway
    );
    match &status.registry {
        Some(r) => println!(
            "registry {} ({})",
            r.addr,
            if r.answering {
                "answering"
            } else {
                "NOT answering"
            }
        ),
        None => println!("registry none"),
    }
    if let Some(s) = &status.server {
        println!(
            "server   {} ({}), swarm {}\n         CA fingerprint {}\n         admin token file {}",
            s.url,
            if s.answering {
                "answering"
            } else {
                "NOT answering"
            },
            status.swarm.as_deref().unwrap_or("-"),
            s.ca_fingerprint,
            s.admin_token_file.display()
        );
    }
    let mut table = fogswarm::table::Table::new(&[
        "DEVICE",
        "IP",
        "MAC",
        "ARCH",
        "CONTAINER",
        "ENGINE",
        "SWARM",
        "FLEET",
        "ERROR",
    ]);
    for d in &status.devices {
        let (arch, engine, swarm) = match &d.engine {
            Some(e) => (
                e.architecture.clone(),
                e.version.split('+').next().unwrap_or("").to_string(),
                e.swarm.clone(),
            ),
            None => (d.platform.clone(), "down".into(), "-".into()),
        };
        table.row([
            d.name.clone(),
            d.ip.clone(),
            d.mac.clone(),
            arch,
            d.state.clone(),
            engine,
            swarm,
            d.fleet_state.clone().unwrap_or_else(|| "-".into()),
            d.fleet_error.clone().unwrap_or_default(),
        ]);
    }
    table.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every command (unique flag
    /// names across flattened groups, say), which otherwise fire only when
    /// the command runs.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
