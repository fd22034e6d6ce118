//! Fogs that heal themselves (issue 15), end to end on one 5-device lab:
//! real engines, the real server and agents. dev1 leads, dev2 and dev3
//! are managers, dev4 and dev5 workers; each has a `location`, dev4 the
//! same as dev1.
//!
//! A manager rebooted within the grace period changes nothing; one
//! stopped for longer is replaced by the worker on a location without a
//! manager (dev5, not dev4) and its node removed; started again, it
//! rejoins as a worker. Then two of three managers stop: the quorum is
//! lost, `fogswarm swarm recover` brings it back from dev1 with the
//! service still running and deployable, and workers refill the managers.

use anyhow::{ensure, Context, Result};
use bollard::models::{NodeState, Reachability};
use fogswarm_client::engine::Engine;
use fogswarm_e2e::{eventually, Lab, Run};
use fogswarm_protocol::api::{DeviceView, Event};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const GRACE_SECS: u64 = 30;

struct Ctx {
    lab: Lab,
    /// Device name -> device id (its MAC).
    ids: BTreeMap<String, String>,
    containers: BTreeMap<String, String>,
}

/// A node as the swarm sees it, by host name.
#[derive(Debug)]
struct NodeSeen {
    id: String,
    ready: bool,
    manager: bool,
    reachable: bool,
}

impl Ctx {
    fn cli(&self, args: &[&str]) -> Result<Run> {
        self.lab.cli_ok(args)
    }

    fn device(&self, name: &str) -> Result<DeviceView> {
        let run = self.cli(&["device", "show", &self.ids[name], "--json"])?;
        Ok(serde_json::from_str(&run.stdout)?)
    }

    fn events(&self, action: &str) -> Result<Vec<Event>> {
        let run = self.cli(&["events", "--limit", "1000", "--json"])?;
        let events: Vec<Event> = serde_json::from_str(&run.stdout)?;
        Ok(events.into_iter().filter(|e| e.action == action).collect())
    }

    /// The device names an event action was about.
    fn subjects(&self, action: &str) -> Result<Vec<String>> {
        Ok(self
            .events(action)?
            .into_iter()
            .filter_map(|e| {
                self.ids
                    .iter()
                    .find(|(_, id)| id.eq_ignore_ascii_case(&e.subject))
                    .map(|(name, _)| name.clone())
            })
            .collect())
    }

    fn docker(&self, verb: &str, device: &str) -> Result<()> {
        let out = Command::new("docker")
            .args([verb, &self.containers[device]])
            .output()?;
        ensure!(
            out.status.success(),
            "docker {verb} {device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    async fn engine(&self, device: &str) -> Result<Engine> {
        self.lab.engine(device).await
    }

    /// The swarm's nodes as `via`'s engine lists them, by host name.
    async fn nodes(&self, via: &str) -> Result<BTreeMap<String, Vec<NodeSeen>>> {
        let engine = self.engine(via).await?;
        let mut by_host: BTreeMap<String, Vec<NodeSeen>> = BTreeMap::new();
        for n in engine
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await?
        {
            let host = n
                .description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default();
            by_host.entry(host).or_default().push(NodeSeen {
                id: n.id.clone().unwrap_or_default(),
                ready: n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY),
                manager: n.manager_status.is_some(),
                reachable: n.manager_status.as_ref().and_then(|m| m.reachability)
                    == Some(Reachability::REACHABLE),
            });
        }
        Ok(by_host)
    }

    /// Host names of the reachable managers, as `via` sees them.
    async fn reachable_managers(&self, via: &str) -> Result<Vec<String>> {
        Ok(self
            .nodes(via)
            .await?
            .into_iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| n.manager && n.reachable))
            .map(|(host, _)| host)
            .collect())
    }

    fn running(&self, service: &str) -> Result<usize> {
        let run = self.cli(&["service", "ps", service, "--swarm", "fog", "--json"])?;
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&run.stdout)?;
        Ok(tasks.iter().filter(|t| t["state"] == "running").count())
    }
}

fn fleet_file(dir: &std::path::Path) -> Result<String> {
    let at = |role: &str, location: &str| serde_json::json!({"role": role, "labels": {"location": location}});
    let fleet = serde_json::json!({
        "swarm": "fog",
        "devices": {
            "dev1": at("leader", "hall1"),
            "dev2": at("manager", "hall2"),
            "dev3": at("manager", "hall3"),
            "dev4": at("worker", "hall1"),
            "dev5": at("worker", "hall4"),
        }
    });
    let path = dir.join("fleet.json");
    std::fs::write(&path, fleet.to_string())?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn managers_are_kept_and_a_lost_quorum_recovered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(dir.path())?;
    let lab = Lab::up(
        "e2e-heal",
        "10.213.243.0/24",
        &["--devices", "5", "--fleet", &fleet],
    )?;
    let status = lab.status()?;
    let ids = status
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.mac.clone()))
        .collect();
    let containers = status
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.container.clone()))
        .collect();
    let registry = status.registry.context("lab registry")?.addr;
    let ctx = Ctx {
        lab,
        ids,
        containers,
    };
    ctx.cli(&[
        "swarm",
        "update",
        "fog",
        "--managers",
        "3",
        "--manager-grace",
        &format!("{GRACE_SECS}s"),
        "--spread-label",
        "location",
    ])?;
    let show = ctx.cli(&["swarm", "show", "fog"])?.stdout;
    ensure!(
        show.contains("managers kept: 3, replaced after 30s unreachable, at most one per location"),
        "{show}"
    );
    // Every agent says which build it runs.
    let devices: Vec<DeviceView> =
        serde_json::from_str(&ctx.cli(&["device", "ls", "--json"])?.stdout)?;
    ensure!(
        devices.len() == 5
            && devices.iter().all(|d| d
                .agent_version
                .as_deref()
                .is_some_and(|v| v.starts_with(concat!(env!("CARGO_PKG_VERSION"), " sha256:")))),
        "agent versions: {:?}",
        devices.iter().map(|d| &d.agent_version).collect::<Vec<_>>()
    );
    let image = ctx.lab.build_hello(&registry, "heal", &["--sbom=false"])?;
    ctx.cli(&[
        "service",
        "deploy",
        "hello",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--replicas",
        "3",
    ])?;
    eventually(120, || async {
        ensure!(ctx.running("hello")? == 3, "hello not running 3 tasks");
        Ok(())
    })
    .await?;
    eventually(60, || async {
        let managers = ctx.reachable_managers("dev1").await?;
        ensure!(managers == ["dev1", "dev2", "dev3"], "{managers:?}");
        Ok(())
    })
    .await?;

    // A manager rebooted within the grace period: nothing is replaced.
    let rebooted = Instant::now();
    let run = ctx
        .lab
        .fogswarm(&["lab", "reboot", "--name", "e2e-heal", "dev2"], &[]);
    ensure!(run.code == 0, "lab reboot: {}", run.stderr);
    eventually(90, || async {
        let managers = ctx.reachable_managers("dev1").await?;
        ensure!(managers == ["dev1", "dev2", "dev3"], "{managers:?}");
        Ok(())
    })
    .await?;
    let back_after = rebooted.elapsed();
    ensure!(
        back_after < Duration::from_secs(GRACE_SECS),
        "dev2 took {back_after:?} to come back; the grace period is {GRACE_SECS}s"
    );
    // Past the grace period counted from the reboot, with margin.
    tokio::time::sleep(Duration::from_secs(GRACE_SECS + 10).saturating_sub(back_after)).await;
    ensure!(
        ctx.events("manager.lost")?.is_empty() && ctx.events("manager.promoted")?.is_empty(),
        "a reboot within the grace period replaced a manager"
    );

    // 2 and 3. dev3 stopped past the grace period: dev5 (hall4) is
    // promoted, not dev4 (hall1 has dev1); dev3's node is removed.
    let old_dev3 = ctx.device("dev3")?.node_id.context("dev3's node")?;
    let stopped = Instant::now();
    ctx.docker("stop", "dev3")?;
    eventually(GRACE_SECS + 90, || async {
        let managers = ctx.reachable_managers("dev1").await?;
        ensure!(managers == ["dev1", "dev2", "dev5"], "{managers:?}");
        let nodes = ctx.nodes("dev1").await?;
        ensure!(
            !nodes.values().flatten().any(|n| n.id == old_dev3),
            "dev3's old node is still in the swarm"
        );
        Ok(())
    })
    .await?;
    let restored = stopped.elapsed();
    ensure!(
        restored >= Duration::from_secs(GRACE_SECS),
        "replaced after {restored:?}, within the grace period"
    );
    println!(
        "quorum restored at 3 managers {restored:?} after a manager stopped (grace {GRACE_SECS}s)"
    );
    let lost = ctx.subjects("manager.lost")?;
    ensure!(lost == ["dev3"], "manager.lost: {lost:?}");
    let promoted = ctx.subjects("manager.promoted")?;
    ensure!(promoted == ["dev5"], "manager.promoted: {promoted:?}");
    // dev5 says so itself at its next report.
    eventually(30, || async {
        ensure!(
            ctx.device("dev5")?.manager == Some(true),
            "dev5 not a manager yet"
        );
        Ok(())
    })
    .await?;

    // dev3 back: it leaves its removed node and joins as a worker.
    ctx.docker("start", "dev3")?;
    eventually(180, || async {
        let d = ctx.device("dev3")?;
        ensure!(
            d.manager == Some(false) && d.node_id.as_deref().is_some_and(|n| n != old_dev3),
            "dev3: manager {:?}, node {:?}",
            d.manager,
            d.node_id
        );
        let nodes = ctx.nodes("dev1").await?;
        let dev3 = nodes.get("dev3").map(Vec::as_slice).unwrap_or_default();
        ensure!(
            dev3.len() == 1 && dev3[0].ready && !dev3[0].manager,
            "dev3's nodes: {dev3:?}"
        );
        Ok(())
    })
    .await?;
    ensure!(ctx.running("hello")? == 3);

    // 4. Two of three managers stopped: no quorum. (The spread label is
    // cleared first: dev1's hall1 would leave only dev3 to promote.)
    ctx.cli(&["swarm", "update", "fog", "--spread-label", ""])?;
    ctx.docker("stop", "dev2")?;
    ctx.docker("stop", "dev5")?;
    eventually(60, || async {
        let listed = ctx
            .engine("dev1")
            .await?
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await;
        ensure!(listed.is_err(), "dev1 still lists nodes: the quorum holds");
        Ok(())
    })
    .await?;
    let asked = Instant::now();
    let run = ctx.cli(&["swarm", "recover", "fog", "--json"])?;
    let recovery: serde_json::Value = serde_json::from_str(&run.stdout)?;
    ensure!(
        recovery["device_id"]
            .as_str()
            .is_some_and(|d| d.eq_ignore_ascii_case(&ctx.ids["dev1"])),
        "the recovery should be asked of dev1: {recovery}"
    );
    let again = ctx.lab.cli(&["swarm", "recover", "fog"], None)?;
    ensure!(
        again.code != 0 && again.stderr.contains("one device at a time"),
        "a second recovery: {} {}",
        again.code,
        again.stderr
    );
    // (A promoted worker whose engine knew only dead managers ends in the
    // engine's error state; its agent leaves and joins again, and it is
    // promoted anew: hence the long wait.)
    eventually(240, || async {
        let managers = ctx.reachable_managers("dev1").await?;
        ensure!(managers == ["dev1", "dev3", "dev4"], "{managers:?}");
        Ok(())
    })
    .await?;
    println!(
        "quorum recovered to 3 managers {:?} after swarm recover",
        asked.elapsed()
    );
    ensure!(
        ctx.subjects("swarm.recovered")?.is_empty(),
        "the subject is the swarm"
    );
    ensure!(!ctx.events("swarm.recovered")?.is_empty());
    // The service kept running and the swarm takes new ones.
    eventually(60, || async {
        ensure!(
            ctx.running("hello")? == 3,
            "hello not at 3 after the recovery"
        );
        Ok(())
    })
    .await?;
    ctx.cli(&[
        "service",
        "deploy",
        "after",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--replicas",
        "2",
    ])?;
    eventually(120, || async {
        ensure!(
            ctx.running("after")? == 2,
            "a service deployed after the recovery does not run"
        );
        Ok(())
    })
    .await?;

    // The old managers come back as workers of the recovered swarm.
    ctx.docker("start", "dev2")?;
    ctx.docker("start", "dev5")?;
    eventually(180, || async {
        for name in ["dev2", "dev5"] {
            let d = ctx.device(name)?;
            ensure!(
                d.manager == Some(false) && d.node_id.is_some(),
                "{name}: {d:?}"
            );
        }
        let nodes = ctx.nodes("dev1").await?;
        for name in ["dev2", "dev5"] {
            let live: Vec<&NodeSeen> = nodes
                .get(name)
                .map(|v| v.iter().filter(|n| n.ready).collect())
                .unwrap_or_default();
            ensure!(
                live.len() == 1 && !live[0].manager,
                "{name}: {:?}",
                nodes.get(name)
            );
        }
        Ok(())
    })
    .await?;
    ensure!(ctx.reachable_managers("dev1").await? == ["dev1", "dev3", "dev4"]);
    Ok(())
}
