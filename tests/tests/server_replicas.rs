//! Several server replicas on one real PostgreSQL: one init per swarm
//! whatever the interleaving, long polls woken across replicas, a replica
//! killed in the middle of an enrolment burst, PostgreSQL restarted under
//! load, a replica cut off from PostgreSQL turning not ready while the
//! other serves, and a fleet restored from pg_dump.

use anyhow::{ensure, Context, Result};
use fogswarm_client::{Client, ClientError, Endpoint};
use fogswarm_e2e::eventually;
use fogswarm_e2e::fleet::{self, FleetPlan, FleetReport};
use fogswarm_e2e::link::CuttableLink;
use fogswarm_e2e::postgres::{self, PgCluster};
use fogswarm_e2e::server::{declare, device_key, Admit, ServerProcess};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{Labels, Role};
use std::path::Path;
use std::time::{Duration, Instant};

fn replica(data: &Path, database: &str) -> Result<ServerProcess> {
    ServerProcess::start(data, &["--database", database, "--tls-self-signed"])
}

/// An endpoint that tries `first`, then `then`.
fn both(first: &ServerProcess, then: &ServerProcess) -> Result<Endpoint> {
    Ok(Endpoint::new(
        &format!("{},{}", first.url, then.url),
        first.fingerprint.as_deref(),
    )?)
}

fn plan(devices: usize, window: f64, duration: f64) -> FleetPlan {
    FleetPlan {
        devices,
        managers: 3,
        interval: Duration::from_secs(1),
        jitter: 0.2,
        enrol_window: Duration::from_secs_f64(window),
        duration: Duration::from_secs_f64(duration),
        pools: 8,
        in_flight: 16,
        swarm: String::new(),
    }
}

async fn lease_grants(admin: &Client, swarm: &str) -> Result<usize> {
    Ok(admin
        .events(0, 1000, Some(swarm))
        .await?
        .iter()
        .filter(|e| e.action == "swarm.lease")
        .count())
}

/// Every simulated device is on the server, enrolled, once.
async fn all_enrolled_once(admin: &Client, report: &FleetReport) -> Result<()> {
    let devices = admin.list_devices(Some(&report.swarm)).await?;
    ensure!(
        devices.len() == report.devices,
        "{} devices on the server, {} simulated",
        devices.len(),
        report.devices
    );
    let not_enrolled: Vec<_> = devices.iter().filter(|d| !d.enrolled).collect();
    ensure!(not_enrolled.is_empty(), "not enrolled: {not_enrolled:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_grant_one_init_and_wake_each_others_long_polls() -> Result<()> {
    let database = postgres::shared().create_database()?;
    let dir = tempfile::tempdir()?;
    let a = replica(&dir.path().join("a"), &database)?;
    let b = replica(&dir.path().join("b"), &database)?;
    ensure!(
        a.fingerprint.is_some() && a.fingerprint == b.fingerprint,
        "replicas share one CA: {:?} vs {:?}",
        a.fingerprint,
        b.fingerprint
    );
    let stdout_b = std::fs::read_to_string(&b.log).unwrap_or_default();
    ensure!(!stdout_b.contains("fsa_"), "no token in B's log");

    // 200 devices, half of them talking to A first and half to B, three
    // managers racing for init across the two.
    let report = fleet::run(
        &[both(&a, &b)?, both(&b, &a)?],
        a.admin_token(),
        a.provisioning_key(),
        &plan(200, 2.0, 8.0),
    )
    .await?;
    ensure!(
        report.errors == 0,
        "errors: {} {:?}",
        report.errors,
        report.sample_errors
    );
    ensure!(report.inits == 1, "{} inits granted", report.inits);
    ensure!(
        report.joined == 200,
        "{} of 200 got their join answer",
        report.joined
    );
    ensure!(report.lost == 0, "{} devices lost", report.lost);
    let admin_b = Client::new(&b.endpoint(), Some(a.admin_token()))?;
    ensure!(lease_grants(&admin_b, &report.swarm).await? == 1);
    all_enrolled_once(&admin_b, &report).await?;

    // A manager long-polls A; a label change made through B wakes it.
    let admin_a = a.admin();
    declare(
        &admin_a,
        "watch",
        &[
            ("02:fa:00:00:00:01", Role::Leader),
            ("02:fa:00:00:00:02", Role::Worker),
        ],
    )
    .await?;
    let (manager, _) = a.enrol("02:fa:00:00:00:01", &[]).await?;
    for _ in 0..5 {
        let revision = manager.desired(None, 0).await?.revision;
        let poll = {
            let manager = manager.clone();
            tokio::spawn(async move {
                let answer = manager.desired(Some(revision), 30).await;
                (answer, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changed = Instant::now();
        admin_b
            .change_labels(
                "02:fa:00:00:00:02",
                &LabelChange {
                    set: Labels::from([("zone".to_string(), format!("z{revision}"))]),
                    unset: vec![],
                },
            )
            .await?;
        let (answer, woke) = poll.await?;
        let answer = answer?;
        let delay = woke.saturating_duration_since(changed);
        ensure!(answer.revision > revision, "woke without a new revision");
        ensure!(
            delay < Duration::from_secs(1),
            "the long poll on A woke {delay:?} after the change on B"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_burst_loses_no_device() -> Result<()> {
    let database = postgres::shared().create_database()?;
    let dir = tempfile::tempdir()?;
    let mut a = replica(&dir.path().join("a"), &database)?;
    let b = replica(&dir.path().join("b"), &database)?;
    let endpoints = [both(&a, &b)?];
    let (token, key) = (a.admin_token(), a.provisioning_key());
    let run =
        tokio::spawn(
            async move { fleet::run(&endpoints, token, key, &plan(200, 6.0, 14.0)).await },
        );
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.child.kill()?; // SIGKILL, mid-burst
    a.child.wait()?;
    let report = run.await??;
    ensure!(
        report.errors == 0,
        "a client saw a failure it did not retry: {} {:?}",
        report.errors,
        report.sample_errors
    );
    ensure!(report.enrolled == 200 && report.lost == 0, "{report:?}");
    ensure!(report.inits == 1, "{} inits", report.inits);
    let admin_b = Client::new(&b.endpoint(), Some(a.admin_token()))?;
    all_enrolled_once(&admin_b, &report).await?;
    ensure!(lease_grants(&admin_b, &report.swarm).await? == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_gives_503_then_recovers() -> Result<()> {
    // A cluster of its own: this test stops it.
    let cluster = PgCluster::start()?;
    let database = cluster.create_database()?;
    let dir = tempfile::tempdir()?;
    let a = replica(&dir.path().join("a"), &database)?;
    let b = replica(&dir.path().join("b"), &database)?;
    let admin = Client::new(&both(&a, &b)?, Some(a.admin_token()))?;
    declare(&admin, "steady", &[("02:fb:00:00:00:01", Role::Worker)]).await?;
    // Load: a fleet polling every second, and a stream of label changes
    // whose acknowledged values must all survive.
    let endpoints = [both(&a, &b)?, both(&b, &a)?];
    let (token, key) = (a.admin_token(), a.provisioning_key());
    let fleet_run =
        tokio::spawn(async move { fleet::run(&endpoints, token, key, &plan(60, 1.0, 16.0)).await });
    let labeller = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = Vec::new();
            let end = Instant::now() + Duration::from_secs(14);
            let mut n = 0u32;
            while Instant::now() < end {
                n += 1;
                // Thirty slots, each holding the newest value written to it.
                let change = LabelChange {
                    set: Labels::from([(format!("k{}", n % 30), n.to_string())]),
                    unset: vec![],
                };
                match admin.change_labels("02:fb:00:00:00:01", &change).await {
                    Ok(_) => acknowledged.push(n),
                    Err(e) => refused.push((n, e.status())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (acknowledged, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.crash()?;
    // While it is down, both replicas answer 503 with a clear message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for server in [&a, &b] {
        let alone = Client::new(&server.endpoint(), Some(a.admin_token()))?;
        match alone.list_swarms().await {
            Err(ClientError::Api { status: 503, body }) => ensure!(
                body.message.contains("PostgreSQL"),
                "503 without saying why: {}",
                body.message
            ),
            other => anyhow::bail!("with PostgreSQL down, a replica answered {other:?}"),
        }
        // Not ready, and says why; alive all the same.
        let (status, body) = server.raw_get("/readyz").await?;
        ensure!(
            status == 503 && body.contains("PostgreSQL"),
            "/readyz with PostgreSQL down: {status} {body}"
        );
        ensure!(server.raw_get("/healthz").await?.0 == 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart()?;
    // They recover by themselves.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok_a = Client::new(&a.endpoint(), Some(a.admin_token()))?
            .list_swarms()
            .await
            .is_ok();
        let ok_b = Client::new(&b.endpoint(), Some(a.admin_token()))?
            .list_swarms()
            .await
            .is_ok();
        let ready = a.raw_get("/readyz").await?.0 == 200 && b.raw_get("/readyz").await?.0 == 200;
        if ok_a && ok_b && ready {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "replicas did not recover: A {ok_a}, B {ok_b}, both ready {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (acknowledged, refused) = labeller.await?;
    ensure!(
        !refused.is_empty(),
        "the outage refused no change: the test proved nothing"
    );
    ensure!(
        refused.iter().all(|(_, s)| *s == Some(503)),
        "refusals other than 503: {refused:?}"
    );
    // Each slot holds its last acknowledged value, or a later one whose
    // answer was lost with the outage: never an older one.
    let labels = admin.get_device("02:fb:00:00:00:01").await?.labels;
    for n in &acknowledged {
        let slot = format!("k{}", n % 30);
        let stored: u32 = labels.get(&slot).and_then(|v| v.parse().ok()).unwrap_or(0);
        ensure!(
            stored >= *n,
            "acknowledged change {slot}={n} is lost ({slot}={stored})"
        );
    }
    let report = fleet_run.await??;
    ensure!(report.lost == 0, "devices lost: {report:?}");
    ensure!(report.enrolled == 60, "{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_restored_from_pg_dump_keeps_credentials_and_ca() -> Result<()> {
    let cluster = postgres::shared();
    let database = cluster.create_database()?;
    let dir = tempfile::tempdir()?;
    let server = replica(&dir.path().join("a"), &database)?;
    let admin = server.admin();
    declare(&admin, "kept", &[("02:fc:00:00:00:01", Role::Leader)]).await?;
    let key = device_key("02:fc:00:00:00:01")?;
    server
        .enrol_with(&key, Admit::Key(server.provisioning_key()), &[])
        .await?;
    let fingerprint = server.fingerprint.clone().context("fingerprint")?;
    let admin_token = server.admin_token();

    // The documented path: pg_dump --format=custom, pg_restore into a new
    // database, a new server (new data directory) on it.
    let dump = dir.path().join("fleet.dump");
    let source_db = database.rsplit('/').next().context("db name")?;
    let out = std::process::Command::new(PgCluster::tool("pg_dump")?)
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &cluster.port.to_string(),
        ])
        .args(["--format=custom", "-f"])
        .arg(&dump)
        .arg(source_db)
        .output()?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let restored = cluster.create_database()?;
    let out = std::process::Command::new(PgCluster::tool("pg_restore")?)
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &cluster.port.to_string(),
        ])
        .args([
            "--no-owner",
            "-d",
            restored.rsplit('/').next().context("db name")?,
        ])
        .arg(&dump)
        .output()?;
    ensure!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let again = replica(&dir.path().join("elsewhere"), &restored)?;
    ensure!(
        again.fingerprint.as_deref() == Some(fingerprint.as_str()),
        "the CA changed"
    );
    let device = again.anonymous().with_device(key);
    ensure!(
        matches!(device.config().await?, ConfigAnswer::Init { .. }),
        "the restored fleet does not know the device's key"
    );
    let admin = Client::new(&again.endpoint(), Some(admin_token))?;
    ensure!(admin.get_swarm("kept").await?.devices == 1);
    Ok(())
}

/// `/readyz` follows each replica's own path to the database: replica A
/// reaches PostgreSQL through a link the test cuts, B directly. Cut, A
/// answers 503 on /readyz (saying why) while /healthz stays 200, and a
/// client given A first is served by B; healed, A is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_is_not_ready_and_clients_fail_over() -> Result<()> {
    let cluster = postgres::shared();
    let database = cluster.create_database()?;
    let link = CuttableLink::start(format!("127.0.0.1:{}", cluster.port).parse()?).await?;
    let via_link = database.replace(
        &format!(":{}/", cluster.port),
        &format!(":{}/", link.addr.port()),
    );
    let dir = tempfile::tempdir()?;
    let a = replica(&dir.path().join("a"), &via_link)?;
    let b = replica(&dir.path().join("b"), &database)?;
    for server in [&a, &b] {
        let (status, body) = server.raw_get("/readyz").await?;
        ensure!(status == 200 && body.contains("\"ready\""), "{body}");
    }
    let admin = Client::new(&both(&a, &b)?, Some(a.admin_token()))?;
    declare(&admin, "steady", &[("02:fb:00:00:00:09", Role::Worker)]).await?;

    link.cut();
    eventually(20, || async {
        let (status, body) = a.raw_get("/readyz").await?;
        ensure!(
            status == 503 && body.contains("PostgreSQL"),
            "A still ready: {status} {body}"
        );
        Ok(())
    })
    .await?;
    ensure!(
        a.raw_get("/healthz").await?.0 == 200,
        "A's process is alive"
    );
    ensure!(b.raw_get("/readyz").await?.0 == 200, "B is ready");
    // Served by B, though A comes first.
    ensure!(admin.get_swarm("steady").await?.devices == 1);
    let alone = Client::new(&a.endpoint(), Some(a.admin_token()))?;
    match alone.list_swarms().await {
        Err(ClientError::Api { status: 503, .. }) => {}
        other => anyhow::bail!("A without its database answered {other:?}"),
    }

    link.heal();
    eventually(20, || async {
        let (status, body) = a.raw_get("/readyz").await?;
        ensure!(status == 200, "A not ready again: {status} {body}");
        Ok(())
    })
    .await?;
    ensure!(alone.get_swarm("steady").await?.devices == 1);
    Ok(())
}
