//! The agent end to end: real device engines in the lab, the real config
//! server, the real static agent binary in every device. Nobody types a
//! command on a device; the tests only watch, and power-cycle, re-image or
//! relabel as an operator would.

use anyhow::{ensure, Context, Result};
use bollard::models::{
    NodeSpecAvailabilityEnum, NodeState, ServiceSpec, ServiceSpecMode, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement,
};
use fogswarm_client::engine::Engine;
use fogswarm_e2e::{eventually, fogswarm, serial, Lab};
use fogswarm_protocol::api::DeviceState;
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

/// Node facts as a manager's engine reports them, by hostname.
#[derive(Debug, Clone)]
struct NodeView {
    id: String,
    ready: bool,
    active: bool,
    manager: bool,
    arch: String,
    labels: HashMap<String, String>,
}

async fn nodes(engine: &Engine) -> Result<BTreeMap<String, Vec<NodeView>>> {
    let mut by_host: BTreeMap<String, Vec<NodeView>> = BTreeMap::new();
    for n in engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await?
    {
        let spec = n.spec.clone().unwrap_or_default();
        let description = n.description.clone().unwrap_or_default();
        by_host
            .entry(description.hostname.clone().unwrap_or_default())
            .or_default()
            .push(NodeView {
                id: n.id.clone().unwrap_or_default(),
                ready: n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY),
                active: spec.availability == Some(NodeSpecAvailabilityEnum::ACTIVE),
                manager: n.manager_status.is_some(),
                arch: description
                    .platform
                    .and_then(|p| p.architecture)
                    .unwrap_or_default(),
                labels: spec.labels.unwrap_or_default(),
            });
    }
    Ok(by_host)
}

/// The one live node of a device (Ready), failing if there are several.
fn live<'a>(nodes: &'a BTreeMap<String, Vec<NodeView>>, host: &str) -> Result<&'a NodeView> {
    let live: Vec<&NodeView> = nodes
        .get(host)
        .map(|v| v.iter().filter(|n| n.ready).collect())
        .unwrap_or_default();
    ensure!(live.len() == 1, "{host}: {} ready nodes", live.len());
    Ok(live[0])
}

fn fleet_file(dir: &tempfile::TempDir, json: serde_json::Value) -> Result<String> {
    let path = dir.path().join("fleet.json");
    std::fs::write(&path, serde_json::to_vec(&json)?)?;
    Ok(path.display().to_string())
}

async fn metric(lab: &Lab, needle: &str) -> Result<u64> {
    let server = lab.status()?.server.context("server")?;
    fogswarm_client::ensure_crypto_provider();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    let text = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Creates a global service constrained to a label, on the given manager.
async fn global_service(
    engine: &Engine,
    name: &str,
    image: &str,
    constraint: &str,
) -> Result<String> {
    let spec = ServiceSpec {
        name: Some(name.into()),
        mode: Some(ServiceSpecMode {
            global: Some(HashMap::new()),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.into()),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec![constraint.into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = engine
        .docker
        .create_service(spec, None)
        .await
        .context("creating the service")?;
    created.id.context("service id")
}

/// Hostnames of the nodes that hold a running (or starting) task of a service.
async fn task_hosts(
    engine: &Engine,
    service: &str,
    node_names: &HashMap<String, String>,
) -> Result<Vec<String>> {
    let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
    let tasks = engine
        .docker
        .list_tasks(Some(
            bollard::query_parameters::ListTasksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut hosts: Vec<String> = tasks
        .iter()
        .filter(|t| t.desired_state == Some(bollard::models::TaskState::RUNNING))
        .filter_map(|t| {
            t.node_id
                .as_ref()
                .and_then(|id| node_names.get(id).cloned())
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

async fn node_names(engine: &Engine) -> Result<HashMap<String, String>> {
    Ok(nodes(engine)
        .await?
        .into_iter()
        .flat_map(|(host, views)| views.into_iter().map(move |v| (v.id, host.clone())))
        .collect())
}

/// Tests 1, 4, 5 and 8: zero-touch formation of 5 devices with labels, then a
/// reboot, a re-image and a relabel the constrained service follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_then_reboot_reimage_and_relabel() -> Result<()> {
    let _serial = serial().await;
    let mut lab = Lab::up("e2e-zt", "10.213.221.0/24", &["--devices", "5"])?;
    let status = lab.status()?;
    for d in &status.devices {
        assert_eq!(
            d.fleet_state.as_deref(),
            Some("active"),
            "{}: {:?}",
            d.name,
            d.fleet_error
        );
        assert_eq!(
            d.engine.as_ref().map(|e| e.swarm.as_str()),
            Some("active"),
            "{}",
            d.name
        );
    }
    let leader = lab.engine("dev1").await?;
    let all = nodes(&leader).await?;
    assert_eq!(all.len(), 5, "{all:?}");
    let managers = all.values().flatten().filter(|n| n.manager).count();
    assert_eq!(managers, 3, "1 leader + 2 managers");
    for (i, host) in ["dev1", "dev2", "dev3", "dev4", "dev5"].iter().enumerate() {
        let n = live(&all, host)?;
        assert!(n.active, "{host} active");
        let location = if i % 2 == 0 { "hall-a" } else { "hall-b" };
        assert_eq!(
            n.labels.get("location").map(String::as_str),
            Some(location),
            "{host}"
        );
        assert_eq!(
            n.labels.contains_key("temperature_sensor"),
            i % 2 == 1,
            "{host}"
        );
        assert_eq!(
            n.labels.get("fog.arch").map(String::as_str),
            Some("amd64"),
            "{host}"
        );
        for fact in ["fog.cpus", "fog.memory_mb", "fog.os", "fog.kernel"] {
            assert!(
                n.labels.contains_key(fact),
                "{host} lacks {fact}: {:?}",
                n.labels
            );
        }
    }

    // Reboot (test 4): one node for the device, still active, no second join.
    let dev4_before = live(&all, "dev4")?.id.clone();
    let joins_before = lab.agent_log("dev4").matches("joining the swarm").count();
    let run = lab.fogswarm(&["lab", "reboot", "--name", "e2e-zt", "dev4"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = eventually(60, || async {
        let all = nodes(&leader).await?;
        let n = live(&all, "dev4")?;
        ensure!(n.active, "dev4 not active yet");
        ensure!(
            lab.agent_log("dev4").matches("agent starting").count() >= 2,
            "the agent has not restarted yet"
        );
        Ok(all)
    })
    .await?;
    assert_eq!(after["dev4"].len(), 1, "a reboot leaves one node");
    assert_eq!(
        live(&after, "dev4")?.id,
        dev4_before,
        "same node after a reboot"
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // a heartbeat after boot
    assert_eq!(
        lab.agent_log("dev4").matches("joining the swarm").count(),
        joins_before,
        "no second join"
    );

    // Re-image (test 5; issue 23, test 1): the fresh root fs has a new
    // key, so the device waits as a pending re-enrolment (the swarm
    // holds re-images for approval by default) until an operator approves
    // it; then a new node id, and the stale node removed.
    let dev5_before = live(&after, "dev5")?.id.clone();
    let dev5 = lab.device("dev5")?.mac;
    let run = lab.fogswarm(&["lab", "reimage", "--name", "e2e-zt", "dev5"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    eventually(60, || async {
        let shown = lab.device_view(&dev5)?;
        let pending = shown
            .reenrol_pending
            .context("no pending re-enrolment yet")?;
        ensure!(shown.key.as_ref() != Some(&pending.key));
        Ok(())
    })
    .await?;
    let events = lab
        .cli_ok(&["events", "--subject", &dev5, "--json"])?
        .stdout;
    assert!(events.contains("device.reenrol_requested"), "{events}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting = nodes(&leader).await?;
    assert!(
        waiting["dev5"].iter().all(|n| n.id == dev5_before),
        "no new node joins before approval: {:?}",
        waiting["dev5"]
    );
    lab.cli_ok(&["device", "approve", &dev5])?;
    eventually(90, || async {
        let all = nodes(&leader).await?;
        let views = all.get("dev5").cloned().unwrap_or_default();
        ensure!(views.len() == 1, "dev5 has {} nodes", views.len());
        ensure!(views[0].id != dev5_before, "still the old node");
        ensure!(views[0].ready && views[0].active, "new node not active yet");
        Ok(())
    })
    .await?;

    // Relabel (test 8): the label reaches the node within 10 s, and a
    // service constrained to it follows.
    let status = lab.status()?;
    let registry = status.registry.clone().context("registry")?.addr;
    let image = fogswarm_e2e::push_fog_hello(&registry, "zt")?;
    let service = global_service(
        &leader,
        "sensors",
        &image,
        "node.labels.temperature_sensor==1",
    )
    .await?;
    let names = node_names(&leader).await?;
    eventually(60, || async {
        let hosts = task_hosts(&leader, &service, &node_names(&leader).await?).await?;
        ensure!(hosts == ["dev2", "dev4"], "tasks on {hosts:?}");
        Ok(())
    })
    .await?;
    drop(names);
    let dev3 = status
        .devices
        .iter()
        .find(|d| d.name == "dev3")
        .context("dev3")?
        .mac
        .clone();
    let started = Instant::now();
    let label = Command::new(fogswarm())
        .args(["device", "label", &dev3, "temperature_sensor=1"])
        .envs(lab.cli_env()?)
        .output()?;
    assert!(
        label.status.success(),
        "{}",
        String::from_utf8_lossy(&label.stderr)
    );
    eventually(10, || async {
        let all = nodes(&leader).await?;
        ensure!(
            live(&all, "dev3")?
                .labels
                .get("temperature_sensor")
                .map(String::as_str)
                == Some("1"),
            "no label yet"
        );
        Ok(())
    })
    .await
    .context("the label did not reach the node within 10 s")?;
    let reached = started.elapsed();
    eventually(30, || async {
        let hosts = task_hosts(&leader, &service, &node_names(&leader).await?).await?;
        ensure!(hosts == ["dev2", "dev3", "dev4"], "tasks on {hosts:?}");
        Ok(())
    })
    .await?;
    eprintln!("relabel reached the node in {reached:?}");
    // Unlabel: the fog.* facts stay, the operator label goes.
    let unlabel = Command::new(fogswarm())
        .args(["device", "unlabel", &dev3, "temperature_sensor"])
        .envs(lab.cli_env()?)
        .output()?;
    assert!(unlabel.status.success());
    eventually(10, || async {
        let all = nodes(&leader).await?;
        let n = live(&all, "dev3")?;
        ensure!(
            !n.labels.contains_key("temperature_sensor") && n.labels.contains_key("fog.arch"),
            "{:?}",
            n.labels
        );
        Ok(())
    })
    .await?;

    // Roles changed after joining (issue 15, test 1): dev4, a worker, made a
    // manager on the server becomes a swarm manager; made a worker again,
    // it is demoted; both are events.
    let dev4 = status
        .devices
        .iter()
        .find(|d| d.name == "dev4")
        .context("dev4")?
        .mac
        .clone();
    let admin = lab.admin()?;
    for (role, manager) in [("manager", true), ("worker", false)] {
        let update = Command::new(fogswarm())
            .args(["device", "update", &dev4, "--role", role])
            .envs(lab.cli_env()?)
            .output()?;
        assert!(
            update.status.success(),
            "{}",
            String::from_utf8_lossy(&update.stderr)
        );
        eventually(60, || async {
            let all = nodes(&leader).await?;
            ensure!(
                live(&all, "dev4")?.manager == manager,
                "dev4 is not a {role} yet"
            );
            Ok(())
        })
        .await
        .with_context(|| format!("dev4 made a {role}"))?;
        // The device reports its new role at its next pass.
        eventually(30, || async {
            let view = admin.get_device(&dev4).await?;
            ensure!(view.manager == Some(manager), "{:?}", view.manager);
            Ok(())
        })
        .await
        .with_context(|| format!("dev4 reporting itself a {role}"))?;
    }
    eventually(30, || async {
        let events = admin.events(0, 1000, Some(&dev4)).await?;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        ensure!(
            actions.contains(&"device.promoted") && actions.contains(&"device.demoted"),
            "{actions:?}"
        );
        Ok(())
    })
    .await
    .context("promotion and demotion events")?;

    // Decommission: the device leaves, the server forgets it, and its node
    // goes from the swarm.
    let dev5 = status
        .devices
        .iter()
        .find(|d| d.name == "dev5")
        .context("dev5")?
        .mac
        .clone();
    let old_worker_token = leader
        .docker
        .inspect_swarm()
        .await?
        .join_tokens
        .and_then(|t| t.worker)
        .context("the swarm's worker token")?;
    let rm = Command::new(fogswarm())
        .args(["device", "rm", &dev5])
        .envs(lab.cli_env()?)
        .output()?;
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(String::from_utf8_lossy(&rm.stdout).contains("told to leave"));
    eventually(60, || async {
        ensure!(
            admin.get_device(&dev5).await.is_err(),
            "dev5 still on the server"
        );
        let all = nodes(&leader).await?;
        ensure!(
            !all.contains_key("dev5"),
            "dev5's node is still in the swarm"
        );
        Ok(())
    })
    .await
    .context("decommission")?;
    assert!(lab
        .agent_log("dev5")
        .contains("left the swarm: decommissioned"));
    let dev5_engine = lab.engine("dev5").await?;
    assert_eq!(
        dev5_engine
            .docker
            .info()
            .await?
            .swarm
            .and_then(|s| s.local_node_state)
            .map(|s| s.to_string())
            .as_deref(),
        Some("inactive")
    );
    // The decommission rotated the join tokens (issue 15, test 5): the
    // leader's agent did, and posted the new ones; the old worker token,
    // which dev5 knew, no longer joins a fresh engine.
    eventually(60, || async {
        let now = leader
            .docker
            .inspect_swarm()
            .await?
            .join_tokens
            .and_then(|t| t.worker)
            .unwrap_or_default();
        ensure!(now != old_worker_token, "the worker token is unchanged");
        let events = admin.events(0, 1000, None).await?;
        ensure!(
            events.iter().any(|e| e.action == "swarm.tokens-rotated"),
            "no rotation event yet"
        );
        Ok(())
    })
    .await
    .context("token rotation on decommission")?;
    let ip = |name: &str| {
        status
            .devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.ip.clone())
            .unwrap_or_default()
    };
    let join = dev5_engine
        .post_json(
            "/swarm/join",
            &serde_json::json!({
                "ListenAddr": "0.0.0.0:2377",
                "AdvertiseAddr": format!("{}:2377", ip("dev5")),
                "RemoteAddrs": [format!("{}:2377", ip("dev1"))],
                "JoinToken": old_worker_token,
            }),
        )
        .await;
    let refused = match join {
        Ok(answer) => anyhow::bail!("the old worker token joined: {answer}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.to_lowercase().contains("token"),
        "refused for another reason: {refused}"
    );

    // The agents' logs and status files never hold a secret.
    let key = std::fs::read_to_string(lab.device_dir("dev1").join("provisioning.key"))?;
    for dev in ["dev1", "dev2", "dev3", "dev4"] {
        let log = lab.agent_log(dev);
        assert!(
            !log.contains(key.trim()),
            "{dev}: provisioning key in the agent log"
        );
        assert!(
            !log.contains("SWMTKN-"),
            "{dev}: a join token in the agent log"
        );
        assert!(
            !log.contains("fsd_"),
            "{dev}: a credential in the agent log"
        );
        let status = lab.exec(
            dev,
            &[
                "/lab/fogswarm-agent",
                "status",
                "--config",
                "/lab/agent.json",
                "--json",
            ],
        )?;
        assert!(
            !status.contains("fsd_") && !status.contains("SWMTKN-"),
            "{dev}: a secret in agent status"
        );
        assert!(status.contains("\"phase\": \"active\""), "{dev}: {status}");
    }
    let down = lab.down();
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(down.stdout.contains("server stopped"), "{}", down.stdout);
    Ok(())
}

/// Test 2: a global service constrained to a label, created as soon as the
/// swarm exists, runs only on labelled devices; no task ever lands on a
/// drained device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_exist_before_any_task_lands() -> Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(
        &dir,
        serde_json::json!({"devices": {
            "dev1": {"role": "leader", "labels": {"location": "a"}},
            "dev2": {"role": "manager", "labels": {"temperature_sensor": "1"}, "hold": true},
            "dev3": {"labels": {"temperature_sensor": "1"}, "hold": true},
            "dev4": {"labels": {"location": "b"}, "hold": true},
        }}),
    )?;
    let mut lab = Lab::up(
        "e2e-before",
        "10.213.222.0/24",
        &["--devices", "4", "--fleet", &fleet],
    )?;
    let status = lab.status()?;
    let registry = status.registry.clone().context("registry")?.addr;
    let image = fogswarm_e2e::push_fog_hello(&registry, "before")?;
    let leader = lab.engine("dev1").await?;
    let service = global_service(
        &leader,
        "sensors",
        &image,
        "node.labels.temperature_sensor==1",
    )
    .await?;
    for dev in ["dev2", "dev3", "dev4"] {
        let run = lab.fogswarm(&["lab", "start-agent", "--name", "e2e-before", dev], &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    // Watch every task the swarm creates while the devices join.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen_hosts = Vec::new();
    loop {
        let all = nodes(&leader).await?;
        let by_id: HashMap<String, NodeView> = all
            .values()
            .flatten()
            .map(|n| (n.id.clone(), n.clone()))
            .collect();
        let filters = HashMap::from([("service".to_string(), vec![service.clone()])]);
        for task in leader
            .docker
            .list_tasks(Some(
                bollard::query_parameters::ListTasksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?
        {
            let Some(node) = task.node_id.as_ref().and_then(|id| by_id.get(id)) else {
                continue;
            };
            assert!(
                node.active,
                "a task was scheduled on drained node {}",
                node.id
            );
            assert_eq!(
                node.labels.get("temperature_sensor").map(String::as_str),
                Some("1"),
                "a task on an unlabelled node"
            );
            if !seen_hosts.contains(&node.id) {
                seen_hosts.push(node.id.clone());
            }
        }
        let formed = lab
            .status()?
            .devices
            .iter()
            .all(|d| d.fleet_state.as_deref() == Some("active"));
        if formed && seen_hosts.len() == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "formation or scheduling did not finish; tasks seen on {seen_hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hosts = task_hosts(&leader, &service, &node_names(&leader).await?).await?;
    assert_eq!(hosts, ["dev2", "dev3"]);
    lab.down();
    Ok(())
}

/// Test 3: workers (and managers) boot before the leader: they wait, then
/// join once it has initialized, without a request storm. Test 7: the
/// server restarts mid-formation and formation still completes. And every
/// agent knows two server URLs of which the first is down (nothing listens
/// there): they fail over to the second for all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_first_no_storm_and_server_restart_mid_formation() -> Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let mut devices = serde_json::Map::new();
    devices.insert(
        "dev1".into(),
        serde_json::json!({"role": "leader", "hold": true}),
    );
    devices.insert("dev2".into(), serde_json::json!({"role": "manager"}));
    for i in 3..=5 {
        devices.insert(format!("dev{i}"), serde_json::json!({}));
    }
    let fleet = fleet_file(
        &dir,
        serde_json::json!({"devices": devices, "other_servers": ["https://10.213.223.1:8444"]}),
    )?;
    let mut lab = Lab::up(
        "e2e-order",
        "10.213.223.0/24",
        &["--devices", "5", "--fleet", &fleet, "--no-wait"],
    )?;
    let admin = lab.admin()?;
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let fleet_devices = admin.list_devices(None).await?;
    for d in fleet_devices
        .iter()
        .filter(|d| d.role != fogswarm_protocol::Role::Leader)
    {
        assert_eq!(
            d.state,
            DeviceState::Waiting,
            "{} should wait for the leader",
            d.id
        );
    }
    // Bounded by the backoff: a fixed 1 s poll would be 20 per device.
    for dev in ["dev2", "dev3", "dev4", "dev5"] {
        let passes = lab.agent_log(dev).matches("waiting").count();
        assert!(
            (1..=12).contains(&passes),
            "{dev} asked {passes} times in {window:?}"
        );
    }
    let configs = metric(
        &lab,
        "fogswarm_http_requests_total{method=\"GET\",route=\"/v1/config\"",
    )
    .await?;
    assert!(
        configs <= 4 * 12,
        "the server saw {configs} config requests from 4 waiting devices in {window:?}"
    );

    // The leader boots; the server restarts while the swarm forms.
    let run = lab.fogswarm(&["lab", "start-agent", "--name", "e2e-order", "dev1"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The server itself, not its supervisor (whose command line contains
    // the server's): the supervisor restarts it, as an init system would.
    let pattern = format!(
        "^[^ ]*fogswarm-server --data {}",
        lab.root.path().join("e2e-order").join("server").display()
    );
    let killed = Command::new("pkill").args(["-f", &pattern]).status()?;
    assert!(killed.success(), "the server process was found and killed");
    eventually(120, || async {
        let devices = admin.list_devices(None).await?;
        let active = devices
            .iter()
            .filter(|d| d.state == DeviceState::Active)
            .count();
        ensure!(active == 5, "{active} of 5 active");
        Ok(())
    })
    .await
    .context("formation did not complete after the server restart")?;
    let leader = lab.engine("dev1").await?;
    let all = nodes(&leader).await?;
    assert_eq!(
        all.values()
            .flatten()
            .filter(|n| n.ready && n.active)
            .count(),
        5
    );
    lab.down();
    Ok(())
}

/// Test 6: a device that became the leader of a swarm of its own is left
/// alone and reported; the fleet's swarm stays one swarm, and a second
/// leader cannot be declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_leader_is_refused_and_reported_never_two_inits() -> Result<()> {
    let _serial = serial().await;
    let mut lab = Lab::up("e2e-twolead", "10.213.224.0/24", &["--devices", "4"])?;
    let status = lab.status()?;
    let dev4 = status
        .devices
        .iter()
        .find(|d| d.name == "dev4")
        .context("dev4")?
        .clone();
    // Declaring a second leader is refused.
    let promote = Command::new(fogswarm())
        .args(["device", "update", &dev4.mac, "--role", "leader"])
        .envs(lab.cli_env()?)
        .output()?;
    assert_eq!(promote.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&promote.stderr).contains("already has a leader"));
    // Someone makes dev4 the leader of a swarm of its own, by hand.
    // Right after a leave the engine refuses init for a moment, and dev4's
    // agent rightly rejoins a device that left its swarm. So: stop the agent
    // (its boot loop restarts it 3 s later, to find the foreign swarm),
    // leave, pause, init; retry until the hand-made init wins.
    let takeover = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do pkill -x fogswarm-agent; docker swarm leave --force >/dev/null 2>&1; sleep 1; \
         docker swarm init --advertise-addr {} >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1",
        dev4.ip
    );
    lab.exec("dev4", &["sh", "-c", &takeover])?;
    let problem = eventually(30, || async {
        let out = Command::new(fogswarm())
            .args(["status"])
            .envs(lab.cli_env()?)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            text.contains(&dev4.mac) && text.contains("not in swarm fog"),
            "{text}"
        );
        Ok(text)
    })
    .await?;
    assert!(problem.contains("left alone"), "{problem}");
    // dev4's own swarm was not touched, and the fleet's swarm is still one.
    let own = lab.exec(
        "dev4",
        &[
            "docker",
            "info",
            "--format",
            "{{.Swarm.ControlAvailable}} {{.Swarm.Nodes}}",
        ],
    )?;
    assert_eq!(own.trim(), "true 1");
    let leader = lab.engine("dev1").await?;
    let swarm_id = leader.docker.inspect_swarm().await?.id;
    for dev in ["dev2", "dev3"] {
        let info = lab.engine(dev).await?.docker.info().await?;
        assert_eq!(
            info.swarm.and_then(|s| s.cluster).and_then(|c| c.id),
            swarm_id,
            "{dev} in the fleet's swarm"
        );
    }
    assert_eq!(
        metric(&lab, "fogswarm_lease_grants_total").await?,
        1,
        "exactly one init"
    );
    lab.down();
    Ok(())
}

/// Test 9: a device started without a server URL finds the server by mDNS.
/// And (issue 23, test 3) a device whose key lives in its TPM, re-imaged,
/// comes back as itself without an operator (the file-key device's
/// re-image waits for approval: zero_touch_then_reboot_reimage_and_relabel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_finds_the_server_by_mdns_and_a_tpm_device_survives_a_reimage() -> Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(
        &dir,
        serde_json::json!({"devices": {
            "dev1": {"role": "leader"},
            "dev2": {"discover": true, "labels": {"zone": "mdns"}},
            "dev3": {"tpm": true, "labels": {"zone": "tpm"}},
        }}),
    )?;
    let mut lab = Lab::up(
        "e2e-mdns",
        "10.213.225.0/24",
        &["--devices", "3", "--fleet", &fleet],
    )?;
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.device_dir("dev2").join("agent.json"))?)?;
    assert!(
        config.get("server").is_none(),
        "dev2 was given no server: {config}"
    );
    assert!(
        lab.agent_log("dev2").contains("found the server over mDNS"),
        "{}",
        lab.agent_log("dev2")
    );
    let status = lab.status()?;
    assert!(status
        .devices
        .iter()
        .all(|d| d.fleet_state.as_deref() == Some("active")));

    // The TPM device: its key is the TPM's, recorded with the TPM's
    // endorsement key; re-imaged, it enrols with the same key and joins
    // again as a new node, with no approval and no re-enrolment asked.
    let dev3 = lab.device("dev3")?.mac;
    let before = lab.device_view(&dev3)?;
    let key = before.key.clone().context("dev3's key")?;
    let ek = before
        .endorsement_key
        .clone()
        .context("dev3 reports no TPM endorsement key")?;
    assert_eq!(
        lab.device_view(&lab.device("dev1")?.mac)?.endorsement_key,
        None
    );
    let leader = lab.engine("dev1").await?;
    let node_before = live(&nodes(&leader).await?, "dev3")?.id.clone();
    let run = lab.fogswarm(&["lab", "reimage", "--name", "e2e-mdns", "dev3"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    eventually(120, || async {
        let all = nodes(&leader).await?;
        let views = all.get("dev3").cloned().unwrap_or_default();
        ensure!(views.len() == 1, "dev3 has {} nodes", views.len());
        ensure!(views[0].id != node_before, "still the old node");
        ensure!(views[0].ready && views[0].active, "new node not active yet");
        Ok(())
    })
    .await?;
    let after = lab.device_view(&dev3)?;
    assert_eq!(
        after.key.as_ref(),
        Some(&key),
        "the same key from the same TPM"
    );
    assert_eq!(after.endorsement_key.as_ref(), Some(&ek));
    assert!(after.reenrol_pending.is_none());
    let events = lab
        .cli_ok(&["events", "--subject", &dev3, "--json"])?
        .stdout;
    assert!(!events.contains("device.reenrol_requested"), "{events}");
    assert!(
        lab.agent_log("dev3").contains("identity key in the TPM"),
        "{}",
        lab.agent_log("dev3")
    );
    lab.down();
    Ok(())
}

/// Test 10: an arm64 device (emulated) joins and carries fog.arch=arm64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm64_device_joins_with_its_arch() -> Result<()> {
    let _serial = serial().await;
    let mut lab = Lab::up(
        "e2e-armjoin",
        "10.213.226.0/24",
        &["--devices", "2", "--arm64", "1"],
    )?;
    let leader = lab.engine("dev1").await?;
    let all = nodes(&leader).await?;
    let arm = live(&all, "dev2")?;
    assert_eq!(arm.arch, "aarch64");
    assert!(arm.active);
    assert_eq!(
        arm.labels.get("fog.arch").map(String::as_str),
        Some("arm64")
    );
    assert_eq!(
        live(&all, "dev1")?
            .labels
            .get("fog.arch")
            .map(String::as_str),
        Some("amd64")
    );
    lab.down();
    Ok(())
}

/// Bad fleet files are refused before anything is created.
#[test]
fn bad_fleet_files_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(
        &dir,
        serde_json::json!({"devices": {"dev1": {"role": "leader"}, "dev2": {"role": "leader"}}}),
    )?;
    let root = tempfile::tempdir()?;
    let out = Command::new(fogswarm())
        .args([
            "lab",
            "up",
            "--name",
            "e2e-badfleet",
            "--devices",
            "2",
            "--fleet",
            &fleet,
        ])
        .env("FOGSWARM_LAB_DIR", root.path())
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 devices are declared leader"));
    assert!(!root.path().join("e2e-badfleet").exists());
    Ok(())
}

/// Issue 15, test 7: swarms of 3, 5 and 8 devices whose agents all start
/// at once form with few requests each (the long-polled config answers a
/// waiting device when the tokens arrive; nobody polls in a loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarms_of_3_5_and_8_form_without_a_request_storm() -> Result<()> {
    let _serial = serial().await;
    for n in [3usize, 5, 8] {
        let dir = tempfile::tempdir()?;
        let mut devices = serde_json::Map::new();
        for i in 1..=n {
            let role = match i {
                1 => "leader",
                2 | 3 => "manager",
                _ => "worker",
            };
            devices.insert(
                format!("dev{i}"),
                serde_json::json!({"role": role, "hold": true}),
            );
        }
        let fleet = fleet_file(&dir, serde_json::json!({ "devices": devices }))?;
        let devices_arg = n.to_string();
        let mut lab = Lab::up(
            "e2e-form",
            "10.213.245.0/24",
            &["--devices", &devices_arg, "--fleet", &fleet, "--no-wait"],
        )?;
        let started = std::time::Instant::now();
        for i in 1..=n {
            let run = lab.fogswarm(
                &[
                    "lab",
                    "start-agent",
                    "--name",
                    "e2e-form",
                    &format!("dev{i}"),
                ],
                &[],
            );
            ensure!(run.code == 0, "{}", run.stderr);
        }
        let admin = lab.admin()?;
        eventually(120, || async {
            let active = admin
                .list_devices(None)
                .await?
                .iter()
                .filter(|d| d.state == DeviceState::Active)
                .count();
            ensure!(active == n, "{active} of {n} active");
            Ok(())
        })
        .await?;
        let took = started.elapsed();
        let configs = metric(
            &lab,
            "fogswarm_http_requests_total{method=\"GET\",route=\"/v1/config\"",
        )
        .await?;
        println!("{n} devices: all active in {took:?} with {configs} config requests");
        ensure!(
            configs <= 12 * n as u64,
            "{configs} config requests from {n} devices forming in {took:?}"
        );
        lab.down();
    }
    Ok(())
}
