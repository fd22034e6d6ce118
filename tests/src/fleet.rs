//! A simulated fleet, for load and fault tests of the server: N devices of
//! one swarm, each with its own credential, that enrol (spread over a
//! window: a factory powering on), ask for their config until they may
//! join (the first manager to get `init` posts the swarm's tokens), then
//! poll their config and report at a device's cadence with jitter.
//!
//! It counts what a fleet operator cares about: errors (requests that
//! failed after the client's fail-over), latency per call, inits granted
//! (one per swarm, whatever the races), and devices lost: enrolled here
//! but not enrolled on the server at the end.

use anyhow::{Context, Result};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, Endpoint};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{AutoEnrol, Labels, Role};
use fogswarm_protocol::DeviceId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub devices: usize,
    /// Managers racing for init (the first `managers` devices).
    pub managers: usize,
    /// Seconds between a device's polls (each a config request and a report).
    pub interval: Duration,
    /// Each wait is the interval times a factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
    /// Every device enrols at a random moment within this window.
    pub enrol_window: Duration,
    /// How long the whole run lasts, enrolment included.
    pub duration: Duration,
    /// HTTP connection pools the devices share (a pool per device would
    /// need a socket per device on this side too).
    pub pools: usize,
    /// Requests in flight at once per pool, so per pool at most this many
    /// connections: a fleet larger than the file descriptors of one host
    /// shares them. Latency counts the wait for a slot (what the devices
    /// would see).
    pub in_flight: usize,
    /// Swarm name; a new one when empty.
    pub swarm: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize, Clone)]
pub struct Latency {
    pub count: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize, Clone)]
pub struct FleetReport {
    pub swarm: String,
    pub devices: usize,
    pub enrolled: usize,
    pub joined: usize,
    pub inits: usize,
    /// Requests that failed after fail-over, all calls together.
    pub errors: usize,
    /// Enrolled here, not enrolled on the server at the end.
    pub lost: usize,
    /// Seconds from the start until the last device was enrolled.
    pub all_enrolled_secs: Option<f64>,
    pub enrol: Latency,
    pub config: Latency,
    pub report: Latency,
    /// The same calls once every device has enrolled and an interval has
    /// passed since the enrolment window: the fleet's steady load.
    pub config_steady: Latency,
    pub report_steady: Latency,
    /// First few error messages, for the operator reading the run.
    pub sample_errors: Vec<String>,
}

#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: usize,
}

impl Samples {
    fn summary(&mut self) -> Latency {
        self.micros.sort_unstable();
        let pct = |p: f64| {
            self.micros
                .get(
                    ((self.micros.len() as f64 * p) as usize)
                        .min(self.micros.len().saturating_sub(1)),
                )
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        Latency {
            count: self.micros.len(),
            errors: self.errors,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}

#[derive(Default)]
struct Tally {
    enrol: Mutex<Samples>,
    config: Mutex<Samples>,
    report: Mutex<Samples>,
    config_steady: Mutex<Samples>,
    report_steady: Mutex<Samples>,
    /// When calls start counting as steady (and every device enrolled).
    steady_after: Mutex<Option<Instant>>,
    devices: AtomicUsize,
    enrolled: AtomicUsize,
    joined: AtomicUsize,
    inits: AtomicUsize,
    last_enrolled_micros: AtomicUsize,
    sample_errors: Mutex<Vec<String>>,
}

impl Tally {
    /// Records a config or report call in its overall and, once the fleet
    /// is steady, its steady samples.
    fn record_polled<T>(
        &self,
        overall: &Mutex<Samples>,
        steady: &Mutex<Samples>,
        started: Instant,
        outcome: &std::result::Result<T, fogswarm_client::ClientError>,
    ) {
        self.record(overall, started, outcome);
        let after = *self.steady_after.lock().unwrap_or_else(|p| p.into_inner());
        if after.is_some_and(|a| started >= a)
            && self.enrolled.load(Ordering::SeqCst) == self.devices.load(Ordering::SeqCst)
        {
            self.record(steady, started, outcome);
        }
    }

    fn record<T>(
        &self,
        samples: &Mutex<Samples>,
        started: Instant,
        outcome: &std::result::Result<T, fogswarm_client::ClientError>,
    ) {
        let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(_) => s.micros.push(started.elapsed().as_micros() as u64),
            Err(e) => {
                s.errors += 1;
                let mut sample = self.sample_errors.lock().unwrap_or_else(|p| p.into_inner());
                if sample.len() < 5 {
                    sample.push(e.to_string());
                }
            }
        }
    }
}

fn summary(samples: &Mutex<Samples>) -> Latency {
    samples.lock().unwrap_or_else(|p| p.into_inner()).summary()
}

/// A small deterministic generator for jitter (no need for a crate).
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Declares the swarm and its devices, runs the fleet, and checks the
/// server's view at the end. The devices' connection pools take the
/// endpoints in turn (the same replicas in different orders splits the
/// fleet across them); the operator's calls use the first.
pub async fn run(
    endpoints: &[Endpoint],
    admin_token: Secret,
    provisioning_key: Secret,
    plan: &FleetPlan,
) -> Result<FleetReport> {
    let endpoint = endpoints.first().context("no endpoint")?;
    let admin = Client::new(endpoint, Some(admin_token))?;
    let swarm = if plan.swarm.is_empty() {
        format!(
            "sim-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        )
    } else {
        plan.swarm.clone()
    };
    admin
        .create_swarm(&SwarmCreate {
            name: swarm.clone(),
            auto_enrol: AutoEnrol::Off,
        })
        .await
        .context("creating the simulated swarm")?;
    let ids: Vec<String> = (0..plan.devices).map(|i| format!("{swarm}-{i}")).collect();
    for chunk in ids.chunks(10_000).enumerate() {
        let (c, chunk) = chunk;
        let rows: Vec<DeviceCreate> = chunk
            .iter()
            .enumerate()
            .map(|(j, id)| DeviceCreate {
                id: id.clone(),
                swarm: swarm.clone(),
                role: if c * 10_000 + j < plan.managers {
                    Role::Manager
                } else {
                    Role::Worker
                },
                labels: Labels::from([(
                    "location".to_string(),
                    format!("hall{}", (c * 10_000 + j) % 20),
                )]),
            })
            .collect();
        admin
            .import_devices("application/json", serde_json::to_vec(&rows)?)
            .await
            .context("declaring the simulated devices")?;
    }

    let pools: Vec<(Client, Arc<Semaphore>)> = (0..plan.pools.max(1))
        .map(|i| {
            Ok((
                Client::new(&endpoints[i % endpoints.len()], None)?,
                Arc::new(Semaphore::new(plan.in_flight.max(1))),
            ))
        })
        .collect::<Result<_>>()?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    tally.devices.store(plan.devices, Ordering::SeqCst);
    *tally.steady_after.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(started + plan.enrol_window + plan.interval);
    let deadline = started + plan.duration;
    let mut tasks = Vec::with_capacity(plan.devices);
    for (i, id) in ids.iter().enumerate() {
        let (anonymous, slots) = pools[i % pools.len()].clone();
        let tally = tally.clone();
        let plan = plan.clone();
        let id = DeviceId::parse(id)?;
        let key = provisioning_key.clone();
        let swarm = swarm.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix(0x5eed ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
            let pool = Pool { anonymous, slots };
            device(
                i, id, pool, key, swarm, plan, tally, started, deadline, &mut rng,
            )
            .await
        }));
    }
    let mut enrolled_ids = Vec::new();
    for task in tasks {
        if let Ok(Some(id)) = task.await {
            enrolled_ids.push(id);
        }
    }
    let on_server: std::collections::BTreeMap<String, bool> = admin
        .list_devices(Some(&swarm))
        .await
        .context("listing the swarm's devices at the end")?
        .into_iter()
        .map(|d| (d.id.to_string(), d.enrolled))
        .collect();
    let lost = enrolled_ids
        .iter()
        .filter(|id| !on_server.get(*id).copied().unwrap_or(false))
        .count();
    let enrolled = tally.enrolled.load(Ordering::SeqCst);
    let last = tally.last_enrolled_micros.load(Ordering::SeqCst);
    let mut report = FleetReport {
        swarm,
        devices: plan.devices,
        enrolled,
        joined: tally.joined.load(Ordering::SeqCst),
        inits: tally.inits.load(Ordering::SeqCst),
        errors: 0,
        lost,
        all_enrolled_secs: (enrolled == plan.devices).then_some(last as f64 / 1e6),
        enrol: summary(&tally.enrol),
        config: summary(&tally.config),
        report: summary(&tally.report),
        config_steady: summary(&tally.config_steady),
        report_steady: summary(&tally.report_steady),
        sample_errors: tally
            .sample_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    report.errors = report.enrol.errors + report.config.errors + report.report.errors;
    Ok(report)
}

/// A device's share of a connection pool.
struct Pool {
    anonymous: Client,
    slots: Arc<Semaphore>,
}

impl Pool {
    /// Runs one call once a slot is free.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = std::result::Result<T, fogswarm_client::ClientError>>,
    ) -> std::result::Result<T, fogswarm_client::ClientError> {
        let _slot = self.slots.acquire().await;
        f.await
    }
}

/// One device's life; answers its id if it enrolled.
#[allow(clippy::too_many_arguments)]
async fn device(
    index: usize,
    id: DeviceId,
    pool: Pool,
    key: Secret,
    swarm: String,
    plan: FleetPlan,
    tally: Arc<Tally>,
    started: Instant,
    deadline: Instant,
    rng: &mut SplitMix,
) -> Option<String> {
    let at = plan.enrol_window.mul_f64(rng.next_f64());
    tokio::time::sleep_until((started + at).into()).await;
    // Enrol, retrying as an agent does until the run ends.
    let signer = match FileKey::generate(id.as_str()) {
        Ok(k) => Arc::new(k),
        Err(_) => return None,
    };
    let client = pool.anonymous.with_device(signer.clone());
    loop {
        let t = Instant::now();
        let outcome = pool
            .call(client.enrol(&EnrolRequest {
                device_id: id.clone(),
                public_key: signer.public_key().clone(),
                provisioning_key: Some(key.clone()),
                token: None,
                swarm: None,
                facts: Labels::from([("arch".to_string(), "amd64".to_string())]),
                endorsement_key: None,
            }))
            .await;
        tally.record(&tally.enrol, t, &outcome);
        match outcome {
            Ok(_) => break,
            Err(_) if Instant::now() + Duration::from_secs(1) < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(_) => return None,
        }
    }
    tally.enrolled.fetch_add(1, Ordering::SeqCst);
    tally
        .last_enrolled_micros
        .fetch_max(started.elapsed().as_micros() as usize, Ordering::SeqCst);
    let mut joined = false;
    let mut first = true;
    while Instant::now() < deadline {
        // Until joined, a device asks again soon (as the agent does with
        // the server's retry-after, capped by the cadence).
        let wait = if first {
            Duration::ZERO
        } else if joined {
            plan.interval
                .mul_f64(1.0 + plan.jitter * (2.0 * rng.next_f64() - 1.0))
        } else {
            plan.interval.min(Duration::from_secs(1))
        };
        first = false;
        if Instant::now() + wait >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        let t = Instant::now();
        let answer = pool.call(client.config()).await;
        tally.record_polled(&tally.config, &tally.config_steady, t, &answer);
        match answer {
            Ok(ConfigAnswer::Init { .. }) => {
                tally.inits.fetch_add(1, Ordering::SeqCst);
                let tokens = SwarmTokens {
                    cluster_id: format!("sim{index}"),
                    manager_addrs: vec![format!("10.213.0.{}:2377", index % 250 + 1)],
                    worker_token: Secret::new(format!("SWMTKN-1-{swarm}-simulated-worker")),
                    manager_token: Secret::new(format!("SWMTKN-1-{swarm}-simulated-manager")),
                    generation: 0,
                };
                let t = Instant::now();
                let posted = pool.call(client.post_swarm_tokens(&tokens)).await;
                tally.record(&tally.report, t, &posted);
                if posted.is_ok() && !joined {
                    joined = true;
                    tally.joined.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(ConfigAnswer::Join { .. }) if !joined => {
                joined = true;
                tally.joined.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let t = Instant::now();
        let reported = pool
            .call(client.report(&ReportRequest {
                state: Some(if joined {
                    DeviceState::Active
                } else {
                    DeviceState::Waiting
                }),
                node_id: joined.then(|| format!("node{index}")),
                cluster_id: None,
                engine_version: Some("28.2.2".into()),
                facts: None,
                error: None,
                grant_refusals: vec![],
                manager: None,
                raft_leader: None,
                agent_version: None,
                quorum: None,
                agent_update: None,
                // What a real agent sends with every report.
                telemetry: Some(fogswarm_protocol::telemetry::Telemetry {
                    cpu_percent: Some((index % 100) as f64),
                    load: Some([0.5, 0.4, 0.3]),
                    memory_used_mb: Some(512),
                    memory_total_mb: Some(4096),
                    disk_free_mb: Some(20_000),
                    disk_total_mb: Some(30_000),
                    temperature_c: Some(48.5),
                    uptime_secs: Some(3600),
                    containers_running: Some(2),
                }),
                // As an agent says it: its own reporting cadence.
                heartbeat_secs: Some(plan.interval.as_secs().max(1)),
            }))
            .await;
        tally.record_polled(&tally.report, &tally.report_steady, t, &reported);
    }
    Some(id.to_string())
}
