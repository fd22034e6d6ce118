//! `fogswarm service` and `fogswarm stack`: what a swarm should run, kept
//! on the server; the swarm's raft leader makes it so.
//!
//! Flags follow `docker service create`. A deploy is declarative (the
//! flags are the whole spec; an unchanged spec is a no-op) and, like
//! Docker's, waits until the service runs or swarm gives up, unless
//! `--detach`.

mod flags;

use crate::fleet::{bad, print_json, Connection};
use crate::table::Table;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use fogswarm_client::Client;
use fogswarm_protocol::service::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create or replace a service (the flags are its whole spec); the
    /// words after the image's flags are its command and arguments.
    Deploy(Box<DeployArgs>),
    /// Change part of a service, as `docker service update` does.
    Update {
        name: String,
        #[arg(long)]
        swarm: String,
        #[command(flatten)]
        changes: Box<flags::UpdateArgs>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set the task count of replicated services: NAME=N...
    Scale {
        #[arg(required = true)]
        scales: Vec<String>,
        #[arg(long)]
        swarm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Go back to the spec a service had before its last change.
    Rollback {
        name: String,
        #[arg(long)]
        swarm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Services' specs and observed state (JSON; --pretty for people).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        swarm: String,
        #[arg(long)]
        pretty: bool,
    },
    /// The tasks' output, from every device, prefixed with task and device
    /// (read by the raft leader's agent and passed on through the server).
    Logs {
        name: String,
        #[arg(long)]
        swarm: String,
        /// Keep printing new lines until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines from the end of each task's log.
        #[arg(short = 'n', long)]
        tail: Option<u64>,
        /// Only newer lines: a duration back from now (10m) or a Unix time.
        #[arg(long)]
        since: Option<String>,
        /// Show each line's time.
        #[arg(short = 't', long)]
        timestamps: bool,
    },
    /// List a swarm's services.
    Ls {
        #[arg(long)]
        swarm: String,
    },
    /// A service's tasks: device, state and error.
    Ps {
        name: String,
        #[arg(long)]
        swarm: String,
    },
    /// Remove services; the swarm's manager removes them from the swarm.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        swarm: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StackCommand {
    /// Deploy the services of a Compose file as one stack.
    Deploy {
        /// Stack name: services and networks are named STACK_NAME.
        stack: String,
        #[arg(long)]
        swarm: String,
        /// The Compose file; several merge in order, as Docker merges them.
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_files: Vec<PathBuf>,
        /// Remove services of the stack that the file no longer names.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a swarm's stacks.
    Ls {
        #[arg(long)]
        swarm: String,
    },
    /// Remove every service of a stack.
    Rm {
        stack: String,
        #[arg(long)]
        swarm: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Return once the server has the spec, without waiting for the swarm.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// How long to wait for the services to run.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    pub name: String,
    #[arg(long)]
    pub swarm: String,
    #[command(flatten)]
    pub spec: flags::SpecArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// The command and its arguments, replacing the image's (after `--`
    /// when they start with a dash).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl DeployArgs {
    /// The spec these flags describe, checked as the server will check it.
    pub fn spec(&self) -> Result<ServiceSpec> {
        self.spec.spec(&self.name, &self.command)
    }
}

pub async fn service(conn: &Connection, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Deploy(args) => {
            let spec = args.spec()?;
            deploy_and_wait(conn, &args.swarm, spec, &args.wait).await
        }
        ServiceCommand::Update {
            name,
            swarm,
            changes,
            wait,
        } => {
            wait_timeout(&wait)?;
            let current = conn.client()?.get_service(&swarm, &name).await?;
            let spec = changes.apply(current.spec)?;
            deploy_and_wait(conn, &swarm, spec, &wait).await
        }
        ServiceCommand::Scale {
            scales,
            swarm,
            wait,
        } => {
            let timeout = wait_timeout(&wait)?;
            let mut wanted = Vec::new();
            for s in &scales {
                let (name, n) = s
                    .split_once('=')
                    .and_then(|(name, n)| Some((name, n.parse::<u64>().ok()?)))
                    .ok_or_else(|| bad(format!("{s:?}: expected SERVICE=REPLICAS")))?;
                wanted.push((name.to_string(), n));
            }
            let client = conn.client()?;
            let mut names = Vec::new();
            for (name, n) in wanted {
                let mut spec = client.get_service(&swarm, &name).await?.spec;
                if spec.mode.is_global() {
                    return Err(bad(format!(
                        "{name}: scale can only be used with replicated or replicated-job mode"
                    )));
                }
                spec.replicas = Some(n);
                client.deploy_service(&swarm, &spec).await?;
                if !conn.json {
                    eprintln!("{name} scaled to {n}");
                }
                names.push(name);
            }
            let views = match timeout {
                Some(t) => wait_settled(&client, &swarm, &names, t, conn.json).await?,
                None => select(&client, &swarm, &names).await?,
            };
            show_deployed(conn, &views)
        }
        ServiceCommand::Rollback { name, swarm, wait } => {
            let timeout = wait_timeout(&wait)?;
            let client = conn.client()?;
            let view = client.rollback_service(&swarm, &name).await?;
            if !conn.json {
                eprintln!("service {name} rolled back (revision {})", view.revision);
            }
            let views = match timeout {
                Some(t) => wait_settled(&client, &swarm, &[name], t, conn.json).await?,
                None => vec![view],
            };
            show_deployed(conn, &views)
        }
        ServiceCommand::Inspect {
            names,
            swarm,
            pretty,
        } => {
            let client = conn.client()?;
            let mut views = Vec::new();
            for name in &names {
                views.push(client.get_service(&swarm, name).await?);
            }
            if !pretty {
                return print_json(&views);
            }
            for v in &views {
                print_pretty(v);
            }
            Ok(())
        }
        ServiceCommand::Logs {
            name,
            swarm,
            follow,
            tail,
            since,
            timestamps,
        } => {
            let options = fogswarm_protocol::logs::LogOptions {
                follow,
                tail,
                since,
                timestamps,
            };
            options
                .validate()
                .map_err(|e| bad(format!("--{}: {}", e.field, e.message)))?;
            let source = fogswarm_client::LogSource::Service {
                swarm: swarm.clone(),
                service: name.clone(),
            };
            crate::logs::print_logs(
                &conn.client()?,
                &source,
                &options,
                std::time::Duration::from_secs(30),
                &format!("no manager of swarm {swarm} answered the logs request within 30s; is its raft leader's agent running?"),
            )
            .await
            .map_err(|e| e.context(format!("reading the logs of {name}")))
        }
        ServiceCommand::Ls { swarm } => {
            let views = conn.client()?.list_services(&swarm).await?;
            if conn.json {
                return print_json(&views);
            }
            print_services(&views);
            Ok(())
        }
        ServiceCommand::Ps { name, swarm } => {
            let view = conn.client()?.get_service(&swarm, &name).await?;
            let tasks = view.observed.map(|o| o.tasks).unwrap_or_default();
            if conn.json {
                return print_json(&tasks);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            let mut table = Table::new(&[
                "TASK",
                "NAME",
                "DEVICE",
                "NODE",
                "IMAGE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR",
            ]);
            for t in &tasks {
                let task_name = match t.slot {
                    Some(slot) => format!("{name}.{slot}"),
                    None => format!(
                        "{name}.{}",
                        t.node_id
                            .as_deref()
                            .map(|n| &n[..n.len().min(12)])
                            .unwrap_or("-")
                    ),
                };
                table.row([
                    t.id.chars().take(12).collect(),
                    task_name,
                    t.device
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "-".into()),
                    t.hostname
                        .clone()
                        .or_else(|| t.node_id.as_ref().map(|n| n[..n.len().min(12)].to_string()))
                        .unwrap_or_else(|| "-".into()),
                    short_image(&t.image),
                    capitalise(&t.desired_state),
                    match t.since.as_deref().and_then(crate::table::parse_rfc3339) {
                        Some(at) => {
                            format!("{} {}", capitalise(&t.state), crate::table::ago(now - at))
                        }
                        None => capitalise(&t.state),
                    },
                    t.error.clone().unwrap_or_default(),
                ]);
            }
            table.print();
            Ok(())
        }
        ServiceCommand::Rm { names, swarm } => {
            let client = conn.client()?;
            for name in &names {
                client.remove_service(&swarm, name).await?;
                if !conn.json {
                    println!("{name}");
                }
            }
            if conn.json {
                print_json(&names)?;
            }
            Ok(())
        }
    }
}

pub async fn stack(conn: &Connection, command: StackCommand) -> Result<()> {
    match command {
        StackCommand::Deploy {
            stack,
            swarm,
            compose_files,
            prune,
            wait,
        } => {
            let input = crate::compose::Input::read(&compose_files).map_err(bad)?;
            let project = crate::compose::load(&input, &stack).map_err(bad)?;
            for w in &project.warnings {
                eprintln!("{w}");
            }
            let services = project.services;
            let timeout = wait_timeout(&wait)?;
            let client = conn.client()?;
            // The stack's own secrets and configs first: its services name
            // them. An unchanged value is a no-op; a changed one rolls the
            // services that use it.
            for f in &project.files {
                let written = client
                    .write_file(
                        &swarm,
                        f.kind,
                        &fogswarm_protocol::secret::FileWrite {
                            name: f.name.clone(),
                            data: fogswarm_protocol::api::Secret::new(crate::files::b64(&f.data)),
                        },
                        false,
                    )
                    .await?;
                if !conn.json && written.outcome != DeployOutcome::Unchanged {
                    eprintln!(
                        "{} {} {} (version {})",
                        f.kind.as_str(),
                        f.name,
                        written.outcome.as_str(),
                        written.file.version
                    );
                }
            }
            let outcome = client
                .deploy_stack(&swarm, &stack, &StackDeploy { services, prune })
                .await?;
            if !conn.json {
                for o in &outcome {
                    eprintln!("service {} {}", o.name, o.outcome.as_str());
                }
            }
            let names: Vec<String> = outcome
                .iter()
                .filter(|o| o.outcome != DeployOutcome::Removed)
                .map(|o| o.name.clone())
                .collect();
            let views = match timeout {
                Some(t) => wait_settled(&client, &swarm, &names, t, conn.json).await?,
                None => stack_services(&client, &swarm, &stack).await?,
            };
            show_deployed(conn, &views)
        }
        StackCommand::Ls { swarm } => {
            let views = conn.client()?.list_services(&swarm).await?;
            let mut stacks: std::collections::BTreeMap<String, Vec<&ServiceView>> =
                Default::default();
            for v in &views {
                if let Some(s) = &v.spec.stack {
                    stacks.entry(s.clone()).or_default().push(v);
                }
            }
            if conn.json {
                let list: Vec<serde_json::Value> = stacks
                    .iter()
                    .map(|(name, services)| {
                        serde_json::json!({
                            "name": name,
                            "services": services.iter().map(|s| &s.spec.name).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                return print_json(&list);
            }
            let mut table = Table::new(&["NAME", "SERVICES", "RUNNING"]);
            for (name, services) in &stacks {
                let running = services
                    .iter()
                    .filter(|s| s.status == ServiceStatus::Running)
                    .count();
                table.row([
                    name.clone(),
                    services.len().to_string(),
                    running.to_string(),
                ]);
            }
            table.print();
            Ok(())
        }
        StackCommand::Rm { stack, swarm } => {
            let removed = conn.client()?.remove_stack(&swarm, &stack).await?;
            if conn.json {
                return print_json(&removed);
            }
            for r in removed {
                println!("{}", r.name);
            }
            Ok(())
        }
    }
}

/// Deploys one spec and, unless detached, waits until it settles.
async fn deploy_and_wait(
    conn: &Connection,
    swarm: &str,
    spec: ServiceSpec,
    wait: &WaitArgs,
) -> Result<()> {
    let timeout = wait_timeout(wait)?;
    let client = conn.client()?;
    let deployed = client.deploy_service(swarm, &spec).await?;
    if !conn.json {
        eprintln!(
            "service {} {} (revision {})",
            spec.name,
            deployed.outcome.as_str(),
            deployed.service.revision
        );
    }
    let views = match timeout {
        Some(t) => {
            wait_settled(
                &client,
                swarm,
                std::slice::from_ref(&spec.name),
                t,
                conn.json,
            )
            .await?
        }
        None => vec![deployed.service],
    };
    show_deployed(conn, &views)
}

async fn select(client: &Client, swarm: &str, names: &[String]) -> Result<Vec<ServiceView>> {
    Ok(client
        .list_services(swarm)
        .await?
        .into_iter()
        .filter(|v| names.contains(&v.spec.name))
        .collect())
}

/// "Running" for "running", as Docker's tables write states.
fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `service inspect --pretty`: the spec's set parts, one per line.
fn print_pretty(v: &ServiceView) {
    let spec = &v.spec;
    println!("Name:\t\t{}", spec.name);
    println!("Swarm:\t\t{}", v.swarm);
    println!("Revision:\t{} ({})", v.revision, v.status.as_str());
    println!("Mode:\t\t{}", spec.mode.describe(spec.replicas));
    println!("Image:\t\t{}", spec.image);
    if let Some(o) = &v.observed {
        if let Some(image) = &o.image {
            println!("Running image:\t{image}");
        }
        println!(
            "Tasks:\t\t{} running of {}",
            o.running_tasks, o.desired_tasks
        );
    }
    if !spec.entrypoint.is_empty() {
        println!("Entrypoint:\t{}", spec.entrypoint.join(" "));
    }
    if !spec.command.is_empty() {
        println!("Args:\t\t{}", spec.command.join(" "));
    }
    for (title, list) in [
        ("Constraints", &spec.constraints),
        ("Networks", &spec.networks),
    ] {
        if !list.is_empty() {
            println!("{title}:\t{}", list.join(", "));
        }
    }
    // Environment values may be credentials: names only.
    if !spec.env.is_empty() {
        println!(
            "Env:\t\t{}",
            spec.env.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for m in &spec.mounts {
        println!(
            "Mount:\t\t{:?} {} -> {}{}",
            m.kind,
            m.source.as_deref().unwrap_or("(anonymous)"),
            m.target,
            if m.read_only { " (ro)" } else { "" }
        );
    }
    for (kind, refs) in [("Secret", &spec.secrets), ("Config", &spec.configs)] {
        for r in refs {
            println!(
                "{kind}:\t\t{} -> {}",
                r.source,
                r.target_or_default(kind == "Secret")
            );
        }
    }
    if let Some(h) = &spec.healthcheck {
        println!("Healthcheck:\t{}", h.test.join(" "));
    }
    for p in &spec.ports {
        println!("Port:\t\t{p}");
    }
    println!(
        "Update:\t\tparallelism {}, on failure {:?}, order {:?}",
        spec.update.parallelism, spec.update.failure_action, spec.update.order
    );
    println!();
}

async fn stack_services(client: &Client, swarm: &str, stack: &str) -> Result<Vec<ServiceView>> {
    Ok(client
        .list_services(swarm)
        .await?
        .into_iter()
        .filter(|v| v.spec.stack.as_deref() == Some(stack))
        .collect())
}

fn wait_timeout(wait: &WaitArgs) -> Result<Option<Duration>> {
    if wait.detach {
        return Ok(None);
    }
    let nanos = parse_duration(&wait.timeout).map_err(|e| bad(format!("--timeout: {e}")))?;
    Ok(Some(Duration::from_nanos(nanos)))
}

/// Polls until every named service is settled (running, or given up),
/// showing progress on stderr; answers their views.
async fn wait_settled(
    client: &Client,
    swarm: &str,
    names: &[String],
    timeout: Duration,
    quiet: bool,
) -> Result<Vec<ServiceView>> {
    let started = Instant::now();
    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    loop {
        let views: Vec<ServiceView> = client
            .list_services(swarm)
            .await?
            .into_iter()
            .filter(|v| names.contains(&v.spec.name))
            .collect();
        let summary: Vec<String> = views
            .iter()
            .map(|v| {
                let (running, desired) = v
                    .observed
                    .as_ref()
                    .map(|o| (o.running_tasks, o.desired_tasks))
                    .unwrap_or_default();
                format!("{} {running}/{desired} {}", v.spec.name, v.status.as_str())
            })
            .collect();
        progress.set_message(summary.join("  "));
        if views.len() == names.len() && views.iter().all(|v| v.status.is_settled()) {
            progress.finish_and_clear();
            if !quiet {
                eprintln!("settled in {:.1}s", started.elapsed().as_secs_f64());
            }
            return Ok(views);
        }
        if started.elapsed() > timeout {
            progress.finish_and_clear();
            bail!(
                "still not running after {:?}: {}; see `fogswarm service ps`",
                timeout,
                summary.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Prints what a deploy left (table or JSON) and fails, either way, when
/// swarm gave up on a service.
fn show_deployed(conn: &Connection, views: &[ServiceView]) -> Result<()> {
    if conn.json {
        print_json(&views)?;
    } else {
        print_services(views);
    }
    fail_unless_running(views)
}

fn fail_unless_running(views: &[ServiceView]) -> Result<()> {
    let failed: Vec<String> = views
        .iter()
        .filter(|v| {
            v.status.is_settled()
                && !matches!(v.status, ServiceStatus::Running | ServiceStatus::Complete)
        })
        .map(|v| {
            format!(
                "service {} {}: {}",
                v.spec.name,
                v.status.as_str().replace('_', " "),
                v.observed
                    .as_ref()
                    .and_then(|o| o.error.clone())
                    .unwrap_or_else(|| "no error reported".into())
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

fn short_image(image: &str) -> String {
    // The digest is long and the tag says enough in a table.
    image.split('@').next().unwrap_or(image).to_string()
}

fn print_services(views: &[ServiceView]) {
    let mut table = Table::new(&["NAME", "MODE", "TASKS", "IMAGE", "STATUS", "PORTS", "ERROR"]);
    for v in views {
        let (running, desired) = v
            .observed
            .as_ref()
            .map(|o| (o.running_tasks, o.desired_tasks))
            .unwrap_or_default();
        table.row([
            v.spec.name.clone(),
            v.spec.mode.describe(v.spec.replicas),
            format!("{running}/{desired}"),
            v.spec.image.clone(),
            v.status.as_str().to_string(),
            v.spec
                .ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            v.observed
                .as_ref()
                .and_then(|o| o.error.clone())
                .unwrap_or_default(),
        ]);
    }
    table.print();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DeployArgs,
    }

    fn spec(args: &[&str]) -> Result<ServiceSpec> {
        let mut argv = vec![
            "x",
            "web",
            "--swarm",
            "fog",
            "--image",
            "reg:5000/fog-hello:v1",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.args.spec()
    }

    #[test]
    fn flags_become_a_spec() {
        let s = spec(&[
            "--mode",
            "global",
            "--constraint",
            "node.labels.temperature_sensor==1",
            "--publish",
            "mode=host,8080:8080",
            "--env",
            "A=1",
            "--update-parallelism",
            "2",
            "--update-delay",
            "2s",
            "--update-failure-action",
            "rollback",
            "--limit-memory",
            "64M",
        ])
        .expect("spec");
        assert_eq!(s.mode, ServiceMode::Global);
        assert_eq!(s.ports[0].published, 8080);
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(s.update.failure_action, FailureAction::Rollback);
        assert_eq!(s.resources.limit_memory.as_deref(), Some("64M"));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = spec(&[
            "--constraint",
            "node.labels.a==1",
            "--constraint",
            "node.lables.b==2",
        ])
        .expect_err("bad constraint")
        .to_string();
        assert!(
            e.starts_with("--constraint[1]") && e.contains("column 1"),
            "{e}"
        );
        let e = spec(&["--mode", "everywhere"])
            .expect_err("bad mode")
            .to_string();
        assert!(e.contains("--mode") && e.contains("global"), "{e}");
        let e = spec(&["--update-delay", "soon"])
            .expect_err("bad delay")
            .to_string();
        assert!(e.starts_with("--update-delay"), "{e}");
        let e = spec(&["--publish", "8080"])
            .expect_err("bad port")
            .to_string();
        assert!(e.contains("--publish"), "{e}");
    }
}
