//! fogswarm-loadgen: load for the configuration server, as a fleet would
//! make it.
//!
//! `config`: declares and enrols N devices of one swarm, then has all N ask
//! for their config at once, in a loop, for a while (a factory powering on);
//! then the same N clients hit /healthz, the server's floor (HTTP, TLS and
//! routing without auth or the store), for the same time. Prints requests
//! per second and latency percentiles for both, and their ratio.
//!
//! `populate`: declares N devices in bulk, for memory measurements.
//!
//! `fleet`: a simulated fleet (see `fogswarm_e2e::fleet`): N devices that
//! enrol within a window, then poll and report every 15 s with jitter;
//! errors, p50/p99 per call, inits, devices lost.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, Endpoint};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{AutoEnrol, Labels, Role};
use fogswarm_protocol::DeviceId;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "fogswarm-loadgen",
    about = "Load for the fogswarm configuration server"
)]
struct Args {
    /// Server URL, or several replicas' separated by commas.
    #[arg(long)]
    server: String,
    /// CA fingerprint, for https.
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// The server's data dir, for the admin token and provisioning key.
    #[arg(long)]
    data: PathBuf,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N devices asking for their config at once.
    Config {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Seconds of load per endpoint.
        #[arg(long, default_value_t = 15)]
        duration: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A simulated fleet at a device's cadence.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Managers racing for init.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Seconds between a device's polls.
        #[arg(long, default_value_t = 15.0)]
        interval: f64,
        /// Jitter on each wait, as a fraction of the interval.
        #[arg(long, default_value_t = 0.2)]
        jitter: f64,
        /// Seconds within which every device enrols (a burst when short).
        #[arg(long, default_value_t = 15.0)]
        enrol_window: f64,
        /// Seconds the run lasts, enrolment included.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// HTTP connection pools the simulated devices share.
        #[arg(long, default_value_t = 64)]
        pools: usize,
        /// Requests in flight at once per pool (bounds the connections).
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Declare N devices in bulk.
    Populate {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
    },
}

#[derive(serde::Serialize)]
struct Run {
    endpoint: &'static str,
    clients: usize,
    seconds: f64,
    requests: usize,
    errors: usize,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn read(path: PathBuf) -> Result<Secret> {
    Ok(Secret::new(
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim(),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let endpoint = Endpoint::new(&args.server, args.ca_fingerprint.as_deref())?;
    let admin = Client::new(&endpoint, Some(read(args.data.join("admin.token"))?))?;
    let key = read(args.data.join("provisioning.key"))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    match args.command {
        Mode::Fleet {
            devices,
            managers,
            interval,
            jitter,
            enrol_window,
            duration,
            pools,
            in_flight,
            json,
        } => {
            let plan = fogswarm_e2e::fleet::FleetPlan {
                devices,
                managers,
                interval: Duration::from_secs_f64(interval),
                jitter: jitter.clamp(0.0, 1.0),
                enrol_window: Duration::from_secs_f64(enrol_window),
                duration: Duration::from_secs_f64(duration),
                pools,
                in_flight,
                swarm: String::new(),
            };
            let admin_token = read(args.data.join("admin.token"))?;
            let report =
                fogswarm_e2e::fleet::run(&rotations(&endpoint), admin_token, key, &plan).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} devices: {} enrolled (all by {}), {} joined, {} inits, {} errors, {} lost",
                    report.devices,
                    report.enrolled,
                    report
                        .all_enrolled_secs
                        .map(|s| format!("{s:.1}s"))
                        .unwrap_or_else(|| "never".into()),
                    report.joined,
                    report.inits,
                    report.errors,
                    report.lost
                );
                for (name, l) in [
                    ("enrol", &report.enrol),
                    ("config", &report.config),
                    ("report", &report.report),
                    ("config, steady", &report.config_steady),
                    ("report, steady", &report.report_steady),
                ] {
                    println!(
                        "{name:<15} {} calls, {} errors, p50 {:.1} ms, p99 {:.1} ms",
                        l.count, l.errors, l.p50_ms, l.p99_ms
                    );
                }
            }
            if report.errors > 0 || report.lost > 0 {
                bail!(
                    "{} errors, {} devices lost: {:?}",
                    report.errors,
                    report.lost,
                    report.sample_errors
                );
            }
        }
        Mode::Populate { devices } => {
            let swarm = format!("pop-{stamp}");
            admin
                .create_swarm(&SwarmCreate {
                    name: swarm.clone(),
                    auto_enrol: AutoEnrol::Off,
                })
                .await?;
            let started = Instant::now();
            for chunk_start in (0..devices).step_by(10_000) {
                let rows: Vec<DeviceCreate> = (chunk_start..(chunk_start + 10_000).min(devices))
                    .map(|i| DeviceCreate {
                        id: format!("pop-{stamp}-{i}"),
                        swarm: swarm.clone(),
                        role: Role::Worker,
                        labels: Labels::from([("location".to_string(), format!("hall{}", i % 20))]),
                    })
                    .collect();
                admin
                    .import_devices("application/json", serde_json::to_vec(&rows)?)
                    .await?;
            }
            println!(
                "declared {devices} devices in swarm {swarm} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        Mode::Config {
            devices,
            duration,
            json,
        } => {
            let swarm = format!("load-{stamp}");
            admin
                .create_swarm(&SwarmCreate {
                    name: swarm.clone(),
                    auto_enrol: AutoEnrol::Off,
                })
                .await?;
            let rows: Vec<DeviceCreate> = (0..devices)
                .map(|i| DeviceCreate {
                    id: format!("{swarm}-{i}"),
                    swarm: swarm.clone(),
                    role: if i == 0 { Role::Leader } else { Role::Worker },
                    labels: Labels::new(),
                })
                .collect();
            admin
                .import_devices("application/json", serde_json::to_vec(&rows)?)
                .await?;
            let anonymous = Client::new(&endpoint, None)?;
            let mut clients = Vec::with_capacity(devices);
            for chunk in rows.chunks(50) {
                let enrolments = futures_util::future::join_all(chunk.iter().map(|row| {
                    let anonymous = anonymous.clone();
                    let key = key.clone();
                    async move {
                        let signer = std::sync::Arc::new(
                            FileKey::generate(&row.id).map_err(anyhow::Error::msg)?,
                        );
                        let client = anonymous.with_device(signer.clone());
                        client
                            .enrol(&EnrolRequest {
                                device_id: DeviceId::parse(&row.id)?,
                                public_key: signer.public_key().clone(),
                                provisioning_key: Some(key),
                                token: None,
                                swarm: None,
                                facts: Labels::new(),
                                endorsement_key: None,
                            })
                            .await
                            .map_err(anyhow::Error::from)?;
                        anyhow::Ok(client)
                    }
                }))
                .await;
                for client in enrolments {
                    clients.push(client?);
                }
            }
            let config = load("config", &clients, duration, |c| async move {
                c.config().await.map(|_| ())
            })
            .await;
            let healthz = load("healthz", &clients, duration, |c| async move {
                c.healthz().await
            })
            .await;
            if json {
                println!("{}", serde_json::to_string_pretty(&[&config, &healthz])?);
            } else {
                for r in [&config, &healthz] {
                    println!(
                        "{:<8} {} clients {:.0}s: {} requests, {} errors, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
                        r.endpoint, r.clients, r.seconds, r.requests, r.errors, r.requests_per_second, r.p50_ms, r.p99_ms
                    );
                }
                println!(
                    "config / healthz throughput: {:.2}",
                    config.requests_per_second / healthz.requests_per_second
                );
            }
            if config.errors > 0 {
                bail!("{} config requests failed", config.errors);
            }
        }
    }
    Ok(())
}

/// With several replicas, the simulated devices are split across them:
/// each pool starts at another replica and fails over to the rest.
fn rotations(endpoint: &Endpoint) -> Vec<Endpoint> {
    (0..endpoint.urls.len())
        .map(|i| {
            let mut e = endpoint.clone();
            e.urls.rotate_left(i);
            e
        })
        .collect()
}

/// Every client loops `call` until the deadline; latencies of all calls.
async fn load<F, Fut>(endpoint: &'static str, clients: &[Client], seconds: u64, call: F) -> Run
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), fogswarm_client::ClientError>> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match call(client.clone()).await {
                        Ok(()) => latencies.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Run {
        endpoint,
        clients: clients.len(),
        seconds: elapsed,
        requests: all.len(),
        errors,
        requests_per_second: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}
