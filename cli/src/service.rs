//! `fogswarm service` and `fogswarm stack`: what a swarm should run, kept
//! on the server; the swarm's raft leader makes it so.
//!
//! Flags follow `docker service create`. A deploy is declarative (the
//! flags are the whole spec; an unchanged spec is a no-op) and, like
//! Docker's, waits until the service runs or swarm gives up, unless
//! `--detach`.

use crate::fleet::{bad, print_json, Connection};
use crate::table::Table;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fogswarm_client::Client;
use fogswarm_protocol::service::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create or replace a service (the flags are its whole spec).
    Deploy(Box<DeployArgs>),
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
        /// The Compose file.
        #[arg(short = 'c', long = "compose-file")]
        compose_file: PathBuf,
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
    #[arg(long)]
    pub image: String,
    /// global or replicated.
    #[arg(long, default_value = "replicated", value_parser = parse_name::<ServiceMode>)]
    pub mode: ServiceMode,
    /// Tasks of a replicated service [default: 1].
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Placement constraint, like node.labels.temperature_sensor==1.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement preference: spread=node.labels.KEY.
    #[arg(long = "placement-pref")]
    pub placement_prefs: Vec<String>,
    /// Environment variable K=V (K alone takes it from this shell).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Tasks' host name; {{.Node.Hostname}} names each after its device.
    #[arg(long)]
    pub hostname: Option<String>,
    /// [mode=host|ingress,]PUBLISHED:TARGET[/PROTO], or the long form
    /// published=P,target=T[,protocol=..][,mode=..]. Host mode by default.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Overlay network (created when missing).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// dnsrr (default; works without IPVS) or vip.
    #[arg(long, default_value = "dnsrr", value_parser = parse_name::<EndpointMode>)]
    pub endpoint_mode: EndpointMode,
    #[arg(long, default_value_t = 1)]
    pub update_parallelism: u64,
    /// Pause between update batches (10s, 1m30s).
    #[arg(long)]
    pub update_delay: Option<String>,
    /// pause, continue or rollback.
    #[arg(long, default_value = "pause", value_parser = parse_name::<FailureAction>)]
    pub update_failure_action: FailureAction,
    /// How long each updated task is watched for failure.
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long, default_value = "stop-first", value_parser = parse_name::<UpdateOrder>)]
    pub update_order: UpdateOrder,
    /// none, on-failure or any.
    #[arg(long, default_value = "any", value_parser = parse_name::<RestartCondition>)]
    pub restart_condition: RestartCondition,
    #[arg(long)]
    pub restart_delay: Option<String>,
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    #[arg(long)]
    pub restart_window: Option<String>,
    /// CPUs, like 0.5.
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Memory, like 128M.
    #[arg(long)]
    pub limit_memory: Option<String>,
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    #[arg(long)]
    pub reserve_memory: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

impl DeployArgs {
    /// The spec these flags describe, checked as the server will check it.
    pub fn spec(&self) -> Result<ServiceSpec> {
        let mut spec = ServiceSpec::new(self.name.clone(), self.image.clone());
        spec.mode = self.mode;
        spec.replicas = self.replicas;
        spec.constraints = self.constraints.clone();
        spec.placement_prefs = self.placement_prefs.clone();
        for e in &self.env {
            let (k, v) = match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    e.clone(),
                    std::env::var(e).map_err(|_| {
                        bad(format!("--env {e}: no value given and {e} is not set here"))
                    })?,
                ),
            };
            spec.env.insert(k, v);
        }
        spec.hostname = self.hostname.clone();
        for p in &self.publish {
            spec.ports.push(parse_publish(p).map_err(bad)?);
        }
        spec.networks = self.networks.clone();
        spec.endpoint_mode = self.endpoint_mode;
        spec.update = UpdatePolicy {
            parallelism: self.update_parallelism,
            delay: self.update_delay.clone(),
            failure_action: self.update_failure_action,
            monitor: self.update_monitor.clone(),
            order: self.update_order,
        };
        spec.restart = RestartPolicy {
            condition: self.restart_condition,
            delay: self.restart_delay.clone(),
            max_attempts: self.restart_max_attempts,
            window: self.restart_window.clone(),
        };
        spec.resources = Resources {
            limit_cpus: self.limit_cpu.clone(),
            limit_memory: self.limit_memory.clone(),
            reserve_cpus: self.reserve_cpu.clone(),
            reserve_memory: self.reserve_memory.clone(),
        };
        spec.validate()
            .map_err(|e| bad(format!("{}: {}", flag_of(&e.field), e.message)))?;
        Ok(spec)
    }
}

/// The flag a spec field comes from, for error messages.
fn flag_of(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    let flag = match base {
        "name" => "NAME",
        "constraints" => "--constraint",
        "placement_prefs" => "--placement-pref",
        "ports" => "--publish",
        "networks" => "--network",
        "update.delay" => "--update-delay",
        "update.monitor" => "--update-monitor",
        "update.parallelism" => "--update-parallelism",
        "restart.delay" => "--restart-delay",
        "restart.window" => "--restart-window",
        "resources.limit_cpus" => "--limit-cpu",
        "resources.limit_memory" => "--limit-memory",
        "resources.reserve_cpus" => "--reserve-cpu",
        "resources.reserve_memory" => "--reserve-memory",
        other => return format!("--{}", other.replace('_', "-")),
    };
    match field.find('[') {
        Some(i) => format!("{flag}{}", &field[i..]),
        None => flag.to_string(),
    }
}

pub async fn service(conn: &Connection, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Deploy(args) => {
            let spec = args.spec()?;
            let timeout = wait_timeout(&args.wait)?;
            let client = conn.client()?;
            let deployed = client.deploy_service(&args.swarm, &spec).await?;
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
                        &args.swarm,
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
            let mut table = Table::new(&[
                "TASK", "DEVICE", "SLOT", "IMAGE", "DESIRED", "STATE", "SINCE", "ERROR",
            ]);
            for t in &tasks {
                table.row([
                    t.id.chars().take(12).collect(),
                    t.device
                        .as_ref()
                        .map(|d| d.to_string())
                        .or_else(|| {
                            t.node_id
                                .as_ref()
                                .map(|n| format!("node {}", &n[..n.len().min(12)]))
                        })
                        .unwrap_or_else(|| "-".into()),
                    t.slot.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    short_image(&t.image),
                    t.desired_state.clone(),
                    t.state.clone(),
                    t.since.clone().unwrap_or_default(),
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
            compose_file,
            prune,
            wait,
        } => {
            let text = std::fs::read_to_string(&compose_file)
                .with_context(|| format!("reading {}", compose_file.display()))
                .map_err(|e| bad(format!("{e:#}")))?;
            let services = crate::compose::parse(&text, &stack)
                .map_err(|e| bad(format!("{}: {e}", compose_file.display())))?;
            let timeout = wait_timeout(&wait)?;
            let client = conn.client()?;
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
        .filter(|v| v.status.is_settled() && v.status != ServiceStatus::Running)
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
            match v.spec.mode {
                ServiceMode::Global => "global".to_string(),
                ServiceMode::Replicated => format!("replicated {}", v.spec.replicas.unwrap_or(1)),
            },
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
