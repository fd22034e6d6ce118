//! `fogswarm-agent run | facts | status | install | runtime`.

use clap::{Parser, Subcommand};
use fogswarm_agent::config::{AgentConfig, Flags};
use fogswarm_agent::{facts, flow, install, runtime, state};
use std::path::Path;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fogswarm-agent", version, about = "The fogswarm node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find the server, enrol, join (or initialize) the swarm, keep it so.
    Run {
        #[command(flatten)]
        flags: Flags,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Print the detected facts (the fog.* labels this device gets).
    Facts {
        #[arg(long)]
        json: bool,
    },
    /// Set the device up once (at image build or first boot): agent
    /// config, systemd unit, and the agent as the engine's default runtime
    /// so services can be granted hardware. Idempotent; --uninstall undoes it.
    Install {
        #[command(flatten)]
        flags: Flags,
        /// The agent's report interval, seconds (written to the config).
        #[arg(long)]
        heartbeat_secs: Option<u64>,
        #[command(flatten)]
        options: install::InstallOptions,
    },
    /// The engine's runtime (called by the engine with runc's arguments
    /// after `--`): applies verified hardware grants, then runs runc.
    #[command(hide = true)]
    Runtime {
        #[command(flatten)]
        options: runtime::RuntimeOptions,
        #[arg(last = true, allow_hyphen_values = true)]
        runc_args: Vec<std::ffi::OsString>,
    },
    /// Replace the device's key file with a new key, told to the server
    /// with a request signed by the old one (no enrolment, no approval).
    /// A key in a TPM does not rotate.
    RotateKey {
        #[command(flatten)]
        flags: Flags,
    },
    /// Print what the agent knows: server, device, role, swarm, node, last
    /// error (never a secret).
    Status {
        #[command(flatten)]
        flags: Flags,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Runtime { options, runc_args } => {
            // Returns only when runc could not be started.
            if let Err(e) = runtime::run(&options, runc_args) {
                eprintln!("fogswarm runtime: {e:#}");
            }
            ExitCode::FAILURE
        }
        Command::Install {
            flags,
            heartbeat_secs,
            options,
        } => match install::run(&flags, heartbeat_secs, &options) {
            Ok(steps) if options.json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&steps).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(steps) => {
                let width = steps.iter().map(|s| s.what.len()).max().unwrap_or(0);
                for s in &steps {
                    println!("{:width$}  {:10}  {}", s.what, s.outcome, s.path);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Facts { json } => {
            let facts = facts::detect(Path::new("/"));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&facts).unwrap_or_default()
                );
            } else {
                for (k, v) in &facts {
                    println!("fog.{k}={v}");
                }
            }
            ExitCode::SUCCESS
        }
        Command::RotateKey { flags } => {
            let rotated = async {
                let config = AgentConfig::load(&flags)?;
                let id = fogswarm_agent::identity::device_id(
                    Path::new("/"),
                    config.device_id.as_deref(),
                )?;
                fogswarm_agent::keys::rotate(&config, id.as_str()).await
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(rotated) {
                Ok(fingerprint) => {
                    println!(
                        "the device's key is now {fingerprint}; restart the agent to sign with it"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { flags, json } => match AgentConfig::load(&flags) {
            Ok(config) => {
                let status = state::StateDir::open(&config.state_dir)
                    .ok()
                    .and_then(|s| s.status());
                match status {
                    Some(s) if json => {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
                    }
                    Some(s) => {
                        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                        println!("server:     {}", show(&s.server));
                        println!("device id:  {}", show(&s.device_id));
                        println!("swarm:      {}", show(&s.swarm));
                        println!("role:       {}", show(&s.role));
                        println!("phase:      {}", s.phase);
                        println!("node id:    {}", show(&s.node_id));
                        println!("cluster id: {}", show(&s.cluster_id));
                        println!("last error: {}", show(&s.last_error));
                    }
                    None => {
                        eprintln!(
                            "error: no status in {} (has the agent run?)",
                            config.state_dir.display()
                        );
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run { flags, log_json } => {
            // RUST_LOG as `LEVEL,TARGET=LEVEL,...` (targets, no span or
            // regex filters: EnvFilter and its regex engine were 820 KB,
            // a seventh of the static agent).
            let filter = std::env::var("RUST_LOG")
                .ok()
                .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
                .unwrap_or_else(|| {
                    tracing_subscriber::filter::Targets::new()
                        .with_default(tracing::Level::INFO)
                        .with_target("mdns_sd", tracing::Level::WARN)
                        .with_target("hyper", tracing::Level::WARN)
                        .with_target("reqwest", tracing::Level::WARN)
                });
            // Every line goes to stderr (the init system's log) and to
            // the in-memory journal that `fogswarm device logs` reads.
            use tracing_subscriber::prelude::*;
            let stderr = tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr);
            let stderr = if log_json {
                stderr.json().boxed()
            } else {
                stderr.boxed()
            };
            let journal = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(fogswarm_agent::journal::Writer);
            tracing_subscriber::registry()
                .with(filter)
                .with(stderr)
                .with(journal)
                .init();
            let config = match AgentConfig::load(&flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            // One worker thread: the agent waits on the network almost all
            // the time, and small boards have few cores and little memory.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let agent = flow::Agent::start(config).await?;
                agent.run().await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "agent stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
