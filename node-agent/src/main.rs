//! `fogswarm-agent run | facts | status`.

use clap::{Parser, Subcommand};
use fogswarm_agent::config::{AgentConfig, Flags};
use fogswarm_agent::{facts, flow, state};
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
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,mdns_sd=warn,hyper=warn,reqwest=warn")
                });
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr);
            if log_json {
                logs.json().init();
            } else {
                logs.init();
            }
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
