//! The lab on real engines: three devices, a swarm formed by hand through
//! their engines, fog-hello through the lab registry, and a clean `down`.

use anyhow::{ensure, Context, Result};
use bollard::models::{
    ContainerCreateBody, HostConfig, NodeState, PortBinding, SwarmInitRequest, SwarmJoinRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, CreateImageOptionsBuilder};
use fogswarm_e2e::{eventually, http_get, Lab};
use futures_util::TryStreamExt;
use std::collections::HashMap;

const LAB: &str = "e2e-swarm";
const SUBNET: &str = "10.213.201.0/24";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_device_lab_forms_a_swarm_runs_fog_hello_and_goes_down_clean() -> Result<()> {
    let mut lab = Lab::up(LAB, SUBNET, &["--devices", "3", "--bare"])?;
    let status = lab.status()?;
    assert_eq!(status.devices.len(), 3);
    let registry = status.registry.clone().context("registry in status")?;
    assert!(
        registry.answering,
        "registry should answer on {}",
        registry.addr
    );
    assert_eq!(registry.addr, "10.213.201.1:5000");

    // Each device: its own engine, its own hostname, the MAC the lab
    // assigned (02:fb + its IPv4), also as seen from inside the device.
    for (i, device) in status.devices.iter().enumerate() {
        let expected_name = format!("dev{}", i + 1);
        assert_eq!(device.name, expected_name);
        let engine = device
            .engine
            .as_ref()
            .with_context(|| format!("{expected_name} engine"))?;
        assert_eq!(engine.hostname, expected_name);
        assert_eq!(engine.architecture, "x86_64");
        let ip: std::net::Ipv4Addr = device.ip.parse()?;
        assert_eq!(ip, std::net::Ipv4Addr::new(10, 213, 201, 11 + i as u8));
        let o = ip.octets();
        let expected_mac = format!("02:fb:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        assert_eq!(
            device.mac, expected_mac,
            "{expected_name} MAC as the host engine reports it"
        );
        let inside = lab.fogswarm(
            &["lab", "exec", "--name", LAB, &expected_name, "--"],
            &["cat", "/sys/class/net/eth0/address"],
        );
        assert_eq!(inside.code, 0, "{}", inside.stderr);
        assert_eq!(
            inside.stdout.trim(),
            expected_mac,
            "{expected_name} MAC inside the device"
        );
    }

    // A second `up` of the same lab is refused and changes nothing.
    let again = lab.fogswarm(
        &["lab", "up", "--name", LAB, "--subnet", SUBNET],
        &["--bare"],
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("lab e2e-swarm is already up"),
        "{}",
        again.stderr
    );
    assert_eq!(lab.status()?.devices.len(), 3);

    form_swarm_by_hand(&lab).await?;
    fog_hello_through_the_registry(&lab, &registry.addr).await?;

    // Down removes exactly what up made.
    let supervisor = supervisor_pid(&lab)?;
    let containers: Vec<String> = status.devices.iter().map(|d| d.container.clone()).collect();
    let down = lab.down();
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(
        down.stdout
            .contains("3 containers, 1 networks, registry stopped"),
        "{}",
        down.stdout
    );
    let host =
        fogswarm_client::engine::Engine::connect(&fogswarm_client::engine::EngineAddr::from_env()?)
            .await?;
    for id in &containers {
        assert!(
            host.docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>
                )
                .await
                .is_err(),
            "container {id} still exists"
        );
    }
    assert!(host
        .docker
        .inspect_network(
            &format!("fogswarm-{LAB}"),
            None::<bollard::query_parameters::InspectNetworkOptions>
        )
        .await
        .is_err());
    assert!(
        !fogswarm_lab::supervisor::alive(supervisor),
        "registry supervisor {supervisor} still running"
    );
    assert!(
        !registry_process_running(&lab),
        "docker-registry for this lab still running"
    );
    assert!(!lab.root.path().join(LAB).exists(), "lab dir still exists");
    Ok(())
}

async fn form_swarm_by_hand(lab: &Lab) -> Result<()> {
    let dev1 = lab.device("dev1")?;
    let leader = lab.engine("dev1").await?;
    leader
        .docker
        .init_swarm(SwarmInitRequest {
            listen_addr: Some("0.0.0.0:2377".into()),
            advertise_addr: Some(dev1.ip.clone()),
            ..Default::default()
        })
        .await
        .context("swarm init on dev1")?;
    let swarm = leader.docker.inspect_swarm().await?;
    let worker_token = swarm
        .join_tokens
        .and_then(|t| t.worker)
        .context("worker token")?;
    for name in ["dev2", "dev3"] {
        let device = lab.device(name)?;
        lab.engine(name)
            .await?
            .docker
            .join_swarm(SwarmJoinRequest {
                listen_addr: Some("0.0.0.0:2377".into()),
                advertise_addr: Some(device.ip.clone()),
                remote_addrs: Some(vec![format!("{}:2377", dev1.ip)]),
                join_token: Some(worker_token.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("swarm join on {name}"))?;
    }
    let hostnames = eventually(30, || async {
        let nodes = leader
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await?;
        let ready: Vec<String> = nodes
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
            .filter_map(|n| n.description.as_ref().and_then(|d| d.hostname.clone()))
            .collect();
        ensure!(ready.len() == 3, "ready nodes: {ready:?}");
        Ok(ready)
    })
    .await?;
    let mut hostnames = hostnames;
    hostnames.sort();
    assert_eq!(hostnames, ["dev1", "dev2", "dev3"]);
    // The lab's status reflects the swarm.
    for d in lab.status()?.devices {
        assert_eq!(
            d.engine.map(|e| e.swarm).as_deref(),
            Some("active"),
            "{}",
            d.name
        );
    }
    Ok(())
}

async fn fog_hello_through_the_registry(lab: &Lab, registry: &str) -> Result<()> {
    let remote = fogswarm_e2e::push_fog_hello(registry, "lab")?;

    // Pull and run on dev2, publishing on the device's address.
    let dev2 = lab.device("dev2")?;
    let engine = lab.engine("dev2").await?;
    engine
        .docker
        .create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(&remote)
                    .build(),
            ),
            None,
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .context("pulling fog-hello on dev2 from the lab registry")?;
    let created = engine
        .docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("fog-hello")
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(remote.clone()),
                env: Some(vec!["FOG_LABELS=room=lab,temperature_sensor=1".into()]),
                host_config: Some(HostConfig {
                    port_bindings: Some(HashMap::from([(
                        "8080/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: None,
                            host_port: Some("18080".into()),
                        }]),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    engine
        .docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await?;
    let inner = engine
        .docker
        .inspect_container(
            &created.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    let inner_hostname = inner
        .config
        .and_then(|c| c.hostname)
        .context("inner hostname")?;

    let addr = format!("{}:18080", dev2.ip);
    let body = eventually(20, || async { http_get(&addr, "/").map(|(_, b)| b) }).await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["hostname"], inner_hostname.as_str(), "{body}");
    assert_eq!(answer["arch"], "x86_64");
    assert_eq!(answer["labels"]["temperature_sensor"], "1");
    assert_eq!(answer["labels"]["room"], "lab");
    Ok(())
}

fn supervisor_pid(lab: &Lab) -> Result<u32> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.root.path().join(LAB).join("lab.json"))?)?;
    state["registry"]["supervisor_pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("supervisor pid in state")
}

/// Whether a docker-registry process serving this lab's config still runs.
fn registry_process_running(lab: &Lab) -> bool {
    let config = lab
        .root
        .path()
        .join(LAB)
        .join("registry")
        .join("config.yml");
    let config = config.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| fogswarm_lab::supervisor::alive(*pid))
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(&config))
}
