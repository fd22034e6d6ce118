//! Services end to end: the operator deploys through the server with the
//! real CLI; the real static agent on the swarm's raft leader makes each
//! lab swarm (real device engines) match; fog-hello images come from the
//! real image builder through the lab's real registry. Nothing here talks
//! to a device's Docker socket except to look, or to play the operator who
//! creates a service by hand (test 5) or pulls a device's plug (test 7).

use anyhow::{bail, ensure, Context, Result};
use fogswarm_e2e::server::{db_fingerprint, ServerProcess};
use fogswarm_e2e::{eventually, fogswarm, http_get, serial, Lab, Run};
use fogswarm_protocol::api::LabelChange;
use fogswarm_protocol::service::{ServiceSpec, ServiceStatus, ServiceView, TaskObserved};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PORT: u16 = 8080;

/// Runs the CLI against the lab's server.
fn cli(lab: &Lab, args: &[&str]) -> Result<Run> {
    lab.cli(args, None)
}

/// Like `cli`, failing unless it exits 0.
fn cli_ok(lab: &Lab, args: &[&str]) -> Result<Run> {
    lab.cli_ok(args)
}

/// Builds fog-hello with the image builder, FOG_VERSION set to `tag` (and
/// any extra `--env`), and pushes it to the lab's registry.
fn build_hello(lab: &Lab, tag: &str, extra_env: &[&str]) -> Result<String> {
    let registry = lab.status()?.registry.context("lab registry")?.addr;
    let extra: Vec<&str> = extra_env.iter().flat_map(|e| ["--env", e]).collect();
    lab.build_hello(&registry, tag, &extra)
}

/// Device name to IP.
fn device_ips(lab: &Lab) -> Result<BTreeMap<String, String>> {
    Ok(lab
        .status()?
        .devices
        .into_iter()
        .map(|d| (d.name, d.ip))
        .collect())
}

/// Device id (MAC, as the server names devices) to lab device name.
fn device_names(lab: &Lab) -> Result<BTreeMap<String, String>> {
    Ok(lab
        .status()?
        .devices
        .into_iter()
        .map(|d| (d.mac, d.name))
        .collect())
}

/// What fog-hello on a device's host-mode port says, if it answers.
fn hello(ip: &str, port: u16) -> Option<serde_json::Value> {
    match http_get(&format!("{ip}:{port}"), "/") {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Which devices answer on `port`, with what they answered.
fn answering(ips: &BTreeMap<String, String>, port: u16) -> BTreeMap<String, serde_json::Value> {
    ips.iter()
        .filter_map(|(name, ip)| Some((name.clone(), hello(ip, port)?)))
        .collect()
}

fn service(lab: &Lab, name: &str) -> Result<ServiceView> {
    let run = cli_ok(lab, &["service", "ls", "--swarm", "fog", "--json"])?;
    let views: Vec<ServiceView> = serde_json::from_str(&run.stdout)?;
    views
        .into_iter()
        .find(|v| v.spec.name == name)
        .with_context(|| format!("no service {name}"))
}

fn tasks(lab: &Lab, name: &str) -> Result<Vec<TaskObserved>> {
    let run = cli_ok(lab, &["service", "ps", name, "--swarm", "fog", "--json"])?;
    Ok(serde_json::from_str(&run.stdout)?)
}

/// The lab device names running `name`'s current tasks.
fn running_on(lab: &Lab, name: &str) -> Result<BTreeSet<String>> {
    let names = device_names(lab)?;
    Ok(tasks(lab, name)?
        .into_iter()
        .filter(|t| t.desired_state == "running" && t.state == "running")
        .filter_map(|t| names.get(&t.device?.to_string()).cloned())
        .collect())
}

/// fog-hello on every device with a temperature sensor, answering on 8080
/// with its device's host name.
fn deploy_to_sensors(lab: &Lab, image: &str) -> Result<Run> {
    cli_ok(
        lab,
        &[
            "service",
            "deploy",
            "hello",
            "--swarm",
            "fog",
            "--image",
            image,
            "--mode",
            "global",
            "--constraint",
            "node.labels.temperature_sensor==1",
            "--publish",
            "mode=host,8080:8080",
            "--hostname",
            "{{.Node.Hostname}}",
        ],
    )
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// 1. A global service constrained to a label runs on exactly the labelled
/// devices (dev2 and dev4 have temperature sensors in the default fleet):
/// each answers on its host-mode port with its own host name; the others
/// do not answer.
#[tokio::test(flavor = "multi_thread")]
async fn global_service_runs_on_exactly_the_labelled_devices() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc1", "10.213.231.0/24", &["--devices", "5"])?;
    let image = build_hello(&lab, "v1", &[])?;
    let run = deploy_to_sensors(&lab, &image)?;
    ensure!(
        run.stdout.contains("2/2") && run.stdout.contains("running"),
        "{}",
        run.stdout
    );
    let ips = device_ips(&lab)?;
    let answers = eventually(20, || async {
        let a = answering(&ips, PORT);
        ensure!(a.len() == 2, "answering: {:?}", a.keys());
        Ok(a)
    })
    .await?;
    ensure!(answers.keys().cloned().collect::<BTreeSet<_>>() == set(&["dev2", "dev4"]));
    for (device, body) in &answers {
        ensure!(
            body["hostname"] == device.as_str(),
            "{device} answered {body}"
        );
        ensure!(body["version"] == "v1", "{device} answered {body}");
    }
    ensure!(running_on(&lab, "hello")? == set(&["dev2", "dev4"]));
    // The leader's engine shows the service marked as fogswarm's.
    let leader = lab.engine("dev1").await?;
    let inspect = leader.docker.inspect_service("hello", None).await?;
    let labels = inspect.spec.and_then(|s| s.labels).unwrap_or_default();
    ensure!(
        labels.get("io.fogswarm.managed").map(String::as_str) == Some("fog"),
        "{labels:?}"
    );
    Ok(())
}

/// 2. A replicated service with a spread preference over
/// `node.labels.location` puts its replicas across locations (hall-a:
/// dev1, dev3, dev5; hall-b: dev2, dev4).
#[tokio::test(flavor = "multi_thread")]
async fn spread_preference_puts_replicas_across_locations() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc2", "10.213.232.0/24", &["--devices", "5"])?;
    let image = build_hello(&lab, "v1", &[])?;
    cli_ok(
        &lab,
        &[
            "service",
            "deploy",
            "spread",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.location",
        ],
    )?;
    let hall = |d: &str| -> &str {
        if ["dev2", "dev4"].contains(&d) {
            "hall-b"
        } else {
            "hall-a"
        }
    };
    let names = device_names(&lab)?;
    let placed: Vec<String> = tasks(&lab, "spread")?
        .into_iter()
        .filter(|t| t.desired_state == "running")
        .filter_map(|t| names.get(&t.device?.to_string()).cloned())
        .collect();
    ensure!(placed.len() == 4, "tasks on {placed:?}");
    let mut per_hall: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &placed {
        *per_hall.entry(hall(d)).or_default() += 1;
    }
    ensure!(
        per_hall.get("hall-a") == Some(&2) && per_hall.get("hall-b") == Some(&2),
        "replicas per location: {per_hall:?} (on {placed:?})"
    );
    Ok(())
}

/// 3. Relabelling a device moves the service onto it, or off it, within
/// 15 seconds.
#[tokio::test(flavor = "multi_thread")]
async fn relabelling_moves_the_service_within_15_seconds() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc3", "10.213.233.0/24", &["--devices", "4"])?;
    let image = build_hello(&lab, "v1", &[])?;
    deploy_to_sensors(&lab, &image)?;
    let ips = device_ips(&lab)?;
    let macs: BTreeMap<String, String> = device_names(&lab)?
        .into_iter()
        .map(|(mac, name)| (name, mac))
        .collect();
    let admin = lab.admin()?;
    // On: dev3 gets a sensor.
    let started = Instant::now();
    admin
        .change_labels(
            &macs["dev3"],
            &LabelChange {
                set: BTreeMap::from([("temperature_sensor".to_string(), "1".to_string())]),
                unset: vec![],
            },
        )
        .await?;
    eventually(15, || async {
        ensure!(
            hello(&ips["dev3"], PORT).is_some(),
            "dev3 does not answer yet"
        );
        Ok(())
    })
    .await?;
    let on = started.elapsed();
    // Off: dev2 loses its sensor.
    let started = Instant::now();
    admin
        .change_labels(
            &macs["dev2"],
            &LabelChange {
                set: BTreeMap::new(),
                unset: vec!["temperature_sensor".to_string()],
            },
        )
        .await?;
    eventually(15, || async {
        ensure!(hello(&ips["dev2"], PORT).is_none(), "dev2 still answers");
        Ok(())
    })
    .await?;
    let off = started.elapsed();
    eprintln!("relabel: on in {on:?}, off in {off:?}");
    let answers = answering(&ips, PORT);
    ensure!(
        answers.keys().cloned().collect::<BTreeSet<_>>() == set(&["dev3", "dev4"]),
        "answering: {:?}",
        answers.keys()
    );
    Ok(())
}

/// 4. A failing image with failure action rollback ends on v1 (and is not
/// retried); then a rolling update from v1 to v2 with parallelism 1 never
/// leaves fewer than count - 1 devices answering, sampled all along.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_update_keeps_count_minus_one_and_a_failing_image_rolls_back() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc4", "10.213.234.0/24", &["--devices", "3"])?;
    let v1 = build_hello(&lab, "v1", &[])?;
    let v2 = build_hello(&lab, "v2", &[])?;
    // Exits at start: its PORT is not a port.
    let broken = build_hello(&lab, "broken", &["PORT=not-a-port"])?;
    let deploy = |image: &str| {
        cli(
            &lab,
            &[
                "service",
                "deploy",
                "hello",
                "--swarm",
                "fog",
                "--image",
                image,
                "--mode",
                "global",
                "--publish",
                "mode=host,8080:8080",
                "--hostname",
                "{{.Node.Hostname}}",
                "--update-parallelism",
                "1",
                "--update-delay",
                "1s",
                "--update-failure-action",
                "rollback",
                "--timeout",
                "120s",
            ],
        )
    };
    let ips = device_ips(&lab)?;
    let versions = |ips: &BTreeMap<String, String>| -> BTreeSet<String> {
        answering(ips, PORT)
            .values()
            .map(|b| b["version"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let run = deploy(&v1)?;
    ensure!(run.code == 0, "v1: {}", run.stderr);

    let run = deploy(&broken)?;
    ensure!(
        run.code != 0,
        "a rolled-back deploy must fail: {}",
        run.stdout
    );
    ensure!(run.stderr.contains("rolled back"), "{}", run.stderr);
    eventually(60, || async {
        let a = answering(&ips, PORT);
        ensure!(
            a.len() == 3 && versions(&ips) == set(&["v1"]),
            "answering {a:?}"
        );
        Ok(())
    })
    .await?;
    let view = service(&lab, "hello")?;
    ensure!(
        view.status == ServiceStatus::RolledBack,
        "{:?}",
        view.status
    );
    ensure!(view
        .observed
        .as_ref()
        .and_then(|o| o.image.as_deref())
        .is_some_and(|i| i.contains(":v1@")));
    // Not retried: the agent updated the service once for the broken image.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let updates = lab
        .agent_log("dev1")
        .lines()
        .filter(|l| l.contains("updated service") && l.contains(":broken"))
        .count();
    ensure!(
        updates == 1,
        "the broken revision was applied {updates} times"
    );

    // v1 -> v2, sampled every 100 ms from another thread.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, ips) = (stop.clone(), ips.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push(answering(&ips, PORT).len());
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let run = deploy(&v2)?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    ensure!(run.code == 0, "v2: {}", run.stderr);
    let least = samples.iter().copied().min().unwrap_or(0);
    eprintln!(
        "rolling update: {} samples, fewest answering {least}",
        samples.len()
    );
    ensure!(samples.len() > 10, "too few samples: {samples:?}");
    ensure!(
        least >= 2,
        "fewer than count - 1 answered during the update: {samples:?}"
    );
    eventually(20, || async {
        ensure!(versions(&ips) == set(&["v2"]) && answering(&ips, PORT).len() == 3);
        Ok(())
    })
    .await?;
    Ok(())
}

/// 5. A service created with the Docker API directly is never changed or
/// removed, even when a managed service of the same name is asked for.
/// 6. Removing a service on the server removes it from the swarm.
#[tokio::test(flavor = "multi_thread")]
async fn unmanaged_services_are_untouched_and_removal_reaches_the_swarm() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc5", "10.213.235.0/24", &["--devices", "3"])?;
    let image = build_hello(&lab, "v1", &[])?;
    let leader = lab.engine("dev1").await?;
    let by_hand = bollard::models::ServiceSpec {
        name: Some("by-hand".into()),
        task_template: Some(bollard::models::TaskSpec {
            container_spec: Some(bollard::models::TaskSpecContainerSpec {
                image: Some(image.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        endpoint_spec: Some(bollard::models::EndpointSpec {
            mode: Some(bollard::models::EndpointSpecModeEnum::DNSRR),
            ports: None,
        }),
        ..Default::default()
    };
    leader.docker.create_service(by_hand, None).await?;
    let snapshot = || async {
        let s = leader.docker.inspect_service("by-hand", None).await?;
        Ok::<_, anyhow::Error>((
            s.version.and_then(|v| v.index),
            serde_json::to_string(&s.spec)?,
        ))
    };
    let before = snapshot().await?;

    cli_ok(
        &lab,
        &[
            "service",
            "deploy",
            "hello",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--mode",
            "global",
            "--publish",
            "mode=host,8080:8080",
        ],
    )?;
    // A managed service by the by-hand one's name: refused by the engine,
    // reported, and the by-hand service stays as it was.
    let run = cli(
        &lab,
        &[
            "service",
            "deploy",
            "by-hand",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--timeout",
            "30s",
        ],
    )?;
    ensure!(run.code != 0, "{}", run.stdout);
    ensure!(
        run.stderr.contains("failed") && run.stderr.contains("by-hand"),
        "{}",
        run.stderr
    );
    cli_ok(&lab, &["service", "rm", "by-hand", "--swarm", "fog"])?;

    // 6: removal.
    let ips = device_ips(&lab)?;
    ensure!(
        answering(&ips, PORT).len() == 3,
        "hello should answer everywhere first"
    );
    cli_ok(&lab, &["service", "rm", "hello", "--swarm", "fog"])?;
    eventually(20, || async {
        let services = leader
            .docker
            .list_services(None::<bollard::query_parameters::ListServicesOptions>)
            .await?;
        let names: Vec<String> = services
            .iter()
            .filter_map(|s| s.spec.as_ref()?.name.clone())
            .collect();
        ensure!(names == ["by-hand"], "services in the swarm: {names:?}");
        ensure!(answering(&ips, PORT).is_empty(), "hello still answers");
        Ok(())
    })
    .await?;
    // Several reconcile passes later, by-hand is exactly as created.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(snapshot().await? == before, "the by-hand service changed");
    ensure!(!cli_ok(&lab, &["service", "ls", "--swarm", "fog"])?
        .stdout
        .contains("by-hand"));
    Ok(())
}

/// 7. The raft leader's device is stopped (3 managers): a new leader's
/// agent takes over, and a deploy made afterwards lands.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_raft_leader_takes_over_service_duty() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc7", "10.213.236.0/24", &["--devices", "3"])?;
    let image = build_hello(&lab, "v1", &[])?;
    cli_ok(
        &lab,
        &[
            "service", "deploy", "first", "--swarm", "fog", "--image", &image, "--mode", "global",
        ],
    )?;
    let old_leader = raft_leader(&lab, "dev2").await?;
    let container = lab.device(&old_leader)?.container;
    let stop = Command::new("docker")
        .args(["stop", "-t", "1", &container])
        .output()?;
    ensure!(
        stop.status.success(),
        "docker stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let survivor = if old_leader == "dev1" { "dev2" } else { "dev1" };
    let new_leader = eventually(60, || async {
        let l = raft_leader(&lab, survivor).await?;
        ensure!(l != old_leader, "still {l}");
        Ok(l)
    })
    .await?;
    eprintln!("raft leader {old_leader} stopped; {new_leader} leads");
    let started = Instant::now();
    cli_ok(
        &lab,
        &[
            "service",
            "deploy",
            "second",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--mode",
            "global",
            "--publish",
            "mode=host,8080:8080",
            "--timeout",
            "90s",
        ],
    )?;
    eprintln!("deploy after failover ran in {:?}", started.elapsed());
    let ips: BTreeMap<String, String> = device_ips(&lab)?
        .into_iter()
        .filter(|(d, _)| *d != old_leader)
        .collect();
    eventually(20, || async {
        let a = answering(&ips, PORT);
        ensure!(a.len() == 2, "answering: {:?}", a.keys());
        Ok(())
    })
    .await?;
    ensure!(
        lab.agent_log(&new_leader)
            .contains("created service service=second"),
        "{new_leader}'s agent did not create it"
    );
    Ok(())
}

/// The hostname of the swarm's raft leader, as `device`'s engine sees it.
async fn raft_leader(lab: &Lab, device: &str) -> Result<String> {
    let engine = lab.engine(device).await?;
    let nodes = engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await?;
    nodes
        .into_iter()
        .find(|n| n.manager_status.as_ref().and_then(|m| m.leader) == Some(true))
        .and_then(|n| n.description?.hostname)
        .context("no raft leader")
}

/// 8. A stack of three services comes up; the front one, on an overlay
/// network, calls the api one by its name, and the call succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_stack_comes_up_and_its_services_call_each_other_by_name() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-svc8", "10.213.237.0/24", &["--devices", "3"])?;
    let image = build_hello(&lab, "v1", &[])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("stack.yml");
    std::fs::write(
        &file,
        format!(
            r#"version: "3.8"
services:
  api:
    image: {image}
    hostname: "api-{{{{.Task.Slot}}}}"
    networks: [backend]
    deploy:
      replicas: 1
      placement:
        constraints: ["node.hostname==dev3"]
  front:
    image: {image}
    networks: [backend]
    ports: ["mode=host,8081:8080"]
    deploy:
      placement:
        constraints: ["node.hostname==dev2"]
  metrics:
    image: {image}
    environment:
      PORT: "9000"
    deploy:
      mode: global
networks:
  backend:
    driver: overlay
"#
        ),
    )?;
    let file = file.display().to_string();
    let run = cli_ok(
        &lab,
        &[
            "stack",
            "deploy",
            "shop",
            "--swarm",
            "fog",
            "-c",
            &file,
            "--timeout",
            "120s",
        ],
    )?;
    for name in ["shop_api", "shop_front", "shop_metrics"] {
        ensure!(
            run.stdout.contains(name),
            "{name} missing from\n{}",
            run.stdout
        );
    }
    let ips = device_ips(&lab)?;
    let answer = eventually(30, || async {
        let (status, body) = http_get(&format!("{}:8081", ips["dev2"]), "/call/api:8080")?;
        ensure!(status == 200, "call answered {status}: {body}");
        Ok(serde_json::from_str::<serde_json::Value>(&body)?)
    })
    .await?;
    ensure!(answer["answer"]["hostname"] == "api-1", "{answer}");
    // The network is the stack's, and a device engine sees the stack.
    let leader = lab.engine("dev1").await?;
    let network = leader.docker.inspect_network("shop_backend", None).await?;
    ensure!(network.driver.as_deref() == Some("overlay"));
    let stacks = cli_ok(&lab, &["stack", "ls", "--swarm", "fog"])?;
    ensure!(stacks.stdout.contains("shop"), "{}", stacks.stdout);
    // Removing the stack removes its services and, once free, its networks.
    cli_ok(&lab, &["stack", "rm", "shop", "--swarm", "fog"])?;
    eventually(40, || async {
        let left = leader
            .docker
            .list_services(None::<bollard::query_parameters::ListServicesOptions>)
            .await?;
        ensure!(left.is_empty(), "{} services left", left.len());
        ensure!(
            leader
                .docker
                .inspect_network("shop_backend", None)
                .await
                .is_err(),
            "shop_backend still exists"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// 9. Bad constraints, unknown swarms, duplicate names and unsupported
/// Compose keys are refused with clear messages, and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_service_input_is_refused_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--log-level", "trace"])?;
    let admin = server.admin();
    admin
        .create_swarm(&fogswarm_protocol::api::SwarmCreate {
            name: "fog".into(),
            auto_enrol: Default::default(),
        })
        .await?;
    admin
        .create_service("fog", &ServiceSpec::new("web", "reg:5000/fog-hello:v1"))
        .await?;
    let run = |args: &[&str]| -> Result<Run> {
        Ok(Command::new(fogswarm())
            .args(args)
            .env("FOGSWARM_SERVER", &server.url)
            .env("FOGSWARM_TOKEN", server.admin_token().expose())
            .env("HOME", dir.path())
            .output()?
            .into())
    };
    let compose = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let typo = compose(
        "typo.yml",
        "services:\n  web:\n    image: x\n    build: .\n    comand: [run]\n",
    )?;
    let required = compose(
        "required.yml",
        "services:\n  web:\n    image: x:${TAG:?set TAG to the release}\n",
    )?;
    let relative = compose(
        "relative.yml",
        "services:\n  web:\n    image: x\n    volumes: [\"/data:data\"]\n",
    )?;
    let undeclared = compose(
        "undeclared.yml",
        "services:\n  web:\n    image: x\n    volumes: [\"data:/data\"]\n",
    )?;
    let missing_file = compose(
        "missing.yml",
        "services:\n  web:\n    image: x\n    secrets: [db]\nsecrets:\n  db: {file: ./nowhere.txt}\n",
    )?;
    let both = compose(
        "both.yml",
        "services:\n  web:\n    image: x\n    secrets: [db]\nsecrets:\n  db: {file: ./a, external: true}\n",
    )?;
    let bad_mode = compose(
        "mode.yml",
        "services:\n  web:\n    image: x\n    configs: [{source: c, mode: 0999}]\nconfigs:\n  c: {content: hi}\n",
    )?;
    let takeover = compose("takeover.yml", "services:\n  web:\n    image: x\n")?;
    let mut cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec![
                "service",
                "deploy",
                "api",
                "--swarm",
                "fog",
                "--image",
                "x",
                "--constraint",
                "node.labels.zone=north",
            ],
            2,
            vec!["--constraint[0]", "column 17", "an operator, == or !="],
        ),
        (
            vec![
                "service",
                "deploy",
                "api",
                "--swarm",
                "fog",
                "--image",
                "x",
                "--constraint",
                "node.colour==red",
            ],
            2,
            vec!["--constraint[0]", "column 1", "a known key"],
        ),
        (
            vec![
                "service", "deploy", "api", "--swarm", "nope", "--image", "x",
            ],
            1,
            vec!["swarm nope does not exist"],
        ),
        (
            vec![
                "service",
                "deploy",
                "api",
                "--swarm",
                "fog",
                "--image",
                "Upper/Case",
            ],
            2,
            vec!["image", "lower-case"],
        ),
        (
            vec![
                "service",
                "deploy",
                "api",
                "--swarm",
                "fog",
                "--image",
                "x",
                "--mode",
                "global",
                "--replicas",
                "3",
            ],
            2,
            vec!["--replicas", "global"],
        ),
        (
            vec!["stack", "deploy", "shop", "--swarm", "fog", "-c", &typo],
            2,
            vec!["unknown field `comand`", "typo.yml:5"],
        ),
        (
            vec!["stack", "deploy", "shop", "--swarm", "fog", "-c", &required],
            2,
            vec!["TAG", "set TAG to the release"],
        ),
        (
            vec!["stack", "deploy", "shop", "--swarm", "fog", "-c", &relative],
            2,
            vec!["services.web.mounts[0]", "absolute path"],
        ),
        (
            vec![
                "stack",
                "deploy",
                "shop",
                "--swarm",
                "fog",
                "-c",
                &undeclared,
            ],
            2,
            vec!["volumes[0]", "\"data\" is not declared"],
        ),
        (
            vec![
                "stack",
                "deploy",
                "shop",
                "--swarm",
                "fog",
                "-c",
                &missing_file,
            ],
            2,
            vec!["secrets.db.file", "nowhere.txt"],
        ),
        (
            vec!["stack", "deploy", "shop", "--swarm", "fog", "-c", &both],
            2,
            vec!["secrets.db", "external"],
        ),
        (
            vec!["stack", "deploy", "shop", "--swarm", "fog", "-c", &bad_mode],
            2,
            vec!["configs[0]", "octal"],
        ),
        (
            vec![
                "stack", "deploy", "shop", "--swarm", "nope", "-c", &takeover,
            ],
            1,
            vec!["swarm nope does not exist"],
        ),
        (
            vec!["service", "rm", "ghost", "--swarm", "fog"],
            1,
            vec!["service ghost does not exist in swarm fog"],
        ),
    ];
    // Every service flag with a value of its own, each refused by name.
    let base = ["service", "deploy", "api", "--swarm", "fog", "--image", "x"];
    let flag_cases: &[(&[&str], &[&str])] = &[
        (&["--mount", "type=nfs,target=/x"], &["--mount", "nfs"]),
        (
            &["--mount", "type=bind,source=rel,target=/x"],
            &["--mount[0]", "absolute path"],
        ),
        (
            &["--mount", "type=tmpfs,source=x,target=/x"],
            &["--mount[0]", "no source"],
        ),
        (
            &[
                "--mount",
                "type=volume,target=/a",
                "--mount",
                "type=tmpfs,target=/a",
            ],
            &["--mount[1]", "twice"],
        ),
        (&["--secret", "source=db,mode=0999"], &["--secret", "octal"]),
        (&["--secret", "target=/x"], &["--secret", "no source"]),
        (
            &["--config", "source=c,target=relative"],
            &["--config[0]", "absolute path"],
        ),
        (&["--health-interval", "soon"], &["--health-interval"]),
        (
            &["--health-cmd", "true", "--no-healthcheck"],
            &["--no-healthcheck"],
        ),
        (&["--ulimit", "nofile=10:5"], &["--ulimit[0]", "above hard"]),
        (&["--ulimit", "bogus=1"], &["--ulimit[0]", "unknown ulimit"]),
        (&["--ulimit", "nofile"], &["--ulimit", "NAME=SOFT"]),
        (&["--cap-add", "net_admin"], &["--cap-add[0]", "upper case"]),
        (&["--sysctl", "novalue"], &["--sysctl", "KEY=VALUE"]),
        (
            &["--stop-grace-period", "forever"],
            &["--stop-grace-period"],
        ),
        (&["--stop-signal", "TERM NOW"], &["--stop-signal"]),
        (&["--dns", "resolver.local"], &["--dns[0]", "IP address"]),
        (&["--host", "nocolon"], &["--host[0]", "HOST:IP"]),
        (&["--limit-pids", "0"], &["--limit-pids"]),
        (
            &["--mode", "global", "--max-replicas", "2"],
            &["--max-replicas"],
        ),
        (
            &["--max-concurrent", "2"],
            &["--max-concurrent", "replicated-job"],
        ),
        (&["--mode", "forever"], &["--mode", "global-job"]),
        (&["--log-opt", "max-size=1m"], &["--log-driver"]),
        (
            &["--label", "io.fogswarm.revision=1"],
            &["--label", "fogswarm's own"],
        ),
        (&["--label", "novalue"], &["--label", "KEY=VALUE"]),
        (&["--network", "name=n,alias=-bad"], &["--network", "alias"]),
        (
            &["--network", "n", "--network", "n"],
            &["--network[1]", "twice"],
        ),
        (&["--entrypoint", "'unclosed"], &["--entrypoint", "quote"]),
        (&["--workdir", "relative"], &["--workdir", "absolute"]),
        (&["--user", "a b"], &["--user"]),
        (&["--rollback-delay", "soon"], &["--rollback-delay"]),
        (
            &["--update-failure-action", "explode"],
            &["--update-failure-action"],
        ),
        (
            &["--restart-condition", "sometimes"],
            &["--restart-condition"],
        ),
    ];
    for (flags, needles) in flag_cases {
        let mut args = base.to_vec();
        args.extend_from_slice(flags);
        cases.push((args, 2, needles.to_vec()));
    }
    let value_file = dir.path().join("value.txt");
    std::fs::write(&value_file, "v")?;
    let value_file = value_file.display().to_string();
    let more: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            [base.as_slice(), &["--secret", "absent"]].concat(),
            2,
            vec!["secret absent", "does not have"],
        ),
        (
            vec![
                "service", "update", "ghost", "--swarm", "fog", "--image", "x",
            ],
            1,
            vec!["ghost does not exist"],
        ),
        (
            vec![
                "service",
                "update",
                "web",
                "--swarm",
                "fog",
                "--publish-rm",
                "http",
            ],
            2,
            vec!["--publish-rm"],
        ),
        (
            vec![
                "service",
                "update",
                "web",
                "--swarm",
                "fog",
                "--mount-add",
                "target=rel",
            ],
            2,
            vec!["--mount[0]", "absolute"],
        ),
        (
            vec!["service", "scale", "web=many", "--swarm", "fog"],
            2,
            vec!["SERVICE=REPLICAS"],
        ),
        (
            vec!["service", "rollback", "web", "--swarm", "fog"],
            1,
            vec!["no previous spec"],
        ),
        (
            vec![
                "secret",
                "create",
                "bad/name",
                &value_file,
                "--swarm",
                "fog",
            ],
            2,
            vec!["NAME", "'/'"],
        ),
        (
            vec![
                "secret",
                "create",
                "db",
                "/nonexistent/file",
                "--swarm",
                "fog",
            ],
            2,
            vec!["reading /nonexistent/file"],
        ),
        (
            vec!["secret", "rm", "ghost", "--swarm", "fog"],
            1,
            vec!["secret ghost does not exist"],
        ),
        (
            vec!["config", "create", "c", &value_file, "--swarm", "nope"],
            1,
            vec!["swarm nope does not exist"],
        ),
        (
            vec![
                "registry", "login", "reg:5000", "--swarm", "fog", "-u", "ci",
            ],
            2,
            vec!["--password-stdin"],
        ),
        (
            vec!["registry", "logout", "reg:5000", "--swarm", "fog"],
            1,
            vec!["reg:5000"],
        ),
    ];
    cases.extend(more);
    let fingerprint = || db_fingerprint(&data);
    let before = fingerprint()?;
    for (args, code, needles) in &cases {
        let r = run(args)?;
        ensure!(
            r.code == *code,
            "{args:?}: exit {} (want {code}): {}",
            r.code,
            r.stderr
        );
        for n in needles {
            ensure!(r.stderr.contains(n), "{args:?}: {n:?} not in {}", r.stderr);
        }
        ensure!(fingerprint()? == before, "{args:?} changed the database");
    }
    // Duplicate names: the API's create refuses a taken name; a stack may
    // not take over a service deployed on its own (a stack `web` in stack
    // `fog`... is `fog_web`, so deploy one by that name first).
    match admin
        .create_service("fog", &ServiceSpec::new("web", "x"))
        .await
    {
        Err(fogswarm_client::ClientError::Api { status: 409, body }) => {
            ensure!(
                body.message.contains("service web already exists"),
                "{}",
                body.message
            )
        }
        other => bail!("duplicate create: {other:?}"),
    }
    admin
        .create_service("fog", &ServiceSpec::new("shop_web", "x"))
        .await?;
    let before = fingerprint()?;
    let r = run(&["stack", "deploy", "shop", "--swarm", "fog", "-c", &takeover])?;
    ensure!(r.code == 1, "takeover: exit {}: {}", r.code, r.stderr);
    ensure!(
        r.stderr
            .contains("service shop_web already exists and belongs to no stack"),
        "{}",
        r.stderr
    );
    ensure!(
        fingerprint()? == before,
        "the refused stack changed the database"
    );
    let dup = compose(
        "dup.yml",
        "services:\n  web:\n    image: x\n  web:\n    image: y\n",
    )?;
    let r = run(&["stack", "deploy", "other", "--swarm", "fog", "-c", &dup])?;
    ensure!(
        r.code == 2 && r.stderr.contains("duplicate"),
        "{}",
        r.stderr
    );
    ensure!(
        fingerprint()? == before,
        "the duplicate stack changed the database"
    );

    // Environment values may be credentials: a deploy carrying one leaves
    // it out of the server's trace log and the event log.
    let secret = "sekrit-0b7f3e";
    let env = format!("API_KEY={secret}");
    let r = run(&[
        "service", "deploy", "keyed", "--swarm", "fog", "--image", "x", "--env", &env, "--detach",
    ])?;
    ensure!(r.code == 0, "{}", r.stderr);
    let events = serde_json::to_string(&admin.events(0, 1000, None).await?)?;
    ensure!(
        events.contains("fog/keyed"),
        "no event for the deploy: {events}"
    );
    ensure!(!events.contains(secret), "the env value is in the events");
    let log = server.log_text();
    ensure!(
        log.contains("/v1/swarms/{name}/services/{service}"),
        "the trace log does not show the deploy at all"
    );
    ensure!(!log.contains(secret), "the env value is in the server log");
    Ok(())
}
