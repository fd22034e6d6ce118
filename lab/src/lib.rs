//! `fogswarm lab`: a fog of simulated devices on one machine.
//!
//! A lab is a private bridge network, a real registry on its gateway, and N
//! devices, each a container running its own Docker Engine with a fixed IP,
//! MAC and hostname. It is the demo, the end-to-end test bed and the
//! benchmark bed. Everything it creates carries the label `io.fogswarm.lab`
//! and is recorded in a state file, so `down` removes exactly that.

/// Engine access lives with the other clients.
pub use fogswarm_client::engine;

pub mod binfmt;
pub mod device;
pub mod fleet;
pub mod image;
pub mod net;
pub mod progress;
pub mod registry;
pub mod server;
pub mod state;
mod status;
pub mod supervisor;
pub mod tools;
pub mod tpm;

use status::status_of;
pub use status::{status, DeviceEngine, DeviceStatus, LabStatus, RegistryStatus, ServerStatus};

use crate::engine::{Engine, EngineAddr};
use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use device::{AgentSetup, DeviceSpec};
use fleet::Fleet;
use fogswarm_client::{Client, Endpoint};
use fogswarm_protocol::api::{DeviceCreate, DeviceState, Secret, SwarmCreate};
use image::DevicePlatform;
use net::Subnet;
use progress::Step;
use serde::{Deserialize, Serialize};
use state::{DeviceRecord, LabPaths, LabState, LAB_LABEL};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A lab-level error caused by the caller's input, as opposed to the
/// machine's state; the CLI exits 2 for these, 1 for everything else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// What `lab up` is asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub devices: u32,
    /// How many of the devices (the last ones) are arm64 under emulation.
    pub arm64: u32,
    pub subnet: Option<Subnet>,
    pub root: PathBuf,
    /// Extra arguments for every device's dockerd.
    pub dockerd_args: Vec<String>,
    /// The fogswarm binary, which runs the services' supervisor.
    pub fogswarm_exe: PathBuf,
    /// Engines only: no config server, no agents (a swarm is formed by hand).
    pub bare: bool,
    /// Who the config server knows [default: `Fleet::default_for(devices)`].
    pub fleet: Option<Fleet>,
    /// Static agent binaries by platform (amd64, arm64), as given; missing
    /// ones are looked up (see `agent_binary`).
    pub agent_bins: BTreeMap<String, PathBuf>,
    /// The agents' heartbeat, seconds.
    pub heartbeat_secs: u64,
    /// Wait until every declared device is an active node.
    pub wait: bool,
}

/// The Rust target whose static agent runs on a device platform.
fn agent_target(platform: DevicePlatform) -> &'static str {
    match platform {
        DevicePlatform::Amd64 => "x86_64-unknown-linux-musl",
        DevicePlatform::Arm64 => "aarch64-unknown-linux-musl",
    }
}

/// The static agent for a platform: as given, else
/// `$FOGSWARM_AGENT_BIN_<PLATFORM>`, else where cargo puts it beside this
/// fogswarm binary's target dir.
pub fn agent_binary(
    platform: DevicePlatform,
    given: &BTreeMap<String, PathBuf>,
    fogswarm_exe: &Path,
) -> Result<PathBuf> {
    let name = platform.docker_name();
    if let Some(p) = given.get(name) {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(format!("FOGSWARM_AGENT_BIN_{}", name.to_uppercase()))
        .filter(|p| !p.is_empty())
    {
        return Ok(p.into());
    }
    let target = agent_target(platform);
    let candidate = fogswarm_exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join(target).join("release-small").join("fogswarm-agent"));
    match candidate.filter(|p| p.exists()) {
        Some(p) => Ok(p),
        None => Err(anyhow!(
            "no static fogswarm-agent for {name}: build it with `cargo build -p fogswarm-agent --profile release-small --target {target}`, or give --agent-bin {name}=PATH"
        )),
    }
}

/// Lab names become parts of container and network names.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(bad_input(format!(
            "lab name {name:?} is invalid: use 1 to 24 lower-case letters, digits and '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

fn network_name(lab: &str) -> String {
    format!("fogswarm-{lab}")
}

fn container_name(lab: &str, device: &str) -> String {
    format!("fogswarm-{lab}-{device}")
}

fn lab_filter(lab: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LAB_LABEL}={lab}")])])
}

/// Brings a lab up from nothing and answers its status. On any failure it
/// removes what it had created before returning the error.
pub async fn up(opts: &UpOptions) -> Result<LabStatus> {
    validate_name(&opts.name)?;
    let subnet = opts
        .subnet
        .unwrap_or_else(|| Subnet::default_for(&opts.name));
    if opts.devices == 0 {
        return Err(bad_input("--devices must be at least 1"));
    }
    if opts.devices > subnet.device_capacity() {
        return Err(bad_input(format!(
            "--devices {} does not fit subnet {subnet}, which holds at most {} devices",
            opts.devices,
            subnet.device_capacity()
        )));
    }
    if opts.arm64 > opts.devices {
        return Err(bad_input(format!(
            "--arm64 {} is more than --devices {}",
            opts.arm64, opts.devices
        )));
    }
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    let paths = LabPaths::new(&opts.root, &opts.name);
    ensure_not_up(&engine, &paths, &opts.name).await?;

    // Every prerequisite is checked before anything is created.
    let mut platforms = Vec::new();
    if opts.arm64 < opts.devices {
        platforms.push(DevicePlatform::Amd64);
    }
    if opts.arm64 > 0 {
        platforms.push(DevicePlatform::Arm64);
    }
    let mut missing_images = Vec::new();
    for &platform in &platforms {
        let image = image::image_ref(platform);
        if !image::exists(&engine, &image).await? {
            image::check_build_prerequisites(platform)?;
            missing_images.push((platform, image));
        } else if platform.emulated() {
            binfmt::check_available(platform)?;
        }
    }
    tools::require_tool("docker-registry", "docker-registry")?;
    let mut services = None;
    if !opts.bare {
        let server_exe = server::find_binary(&opts.fogswarm_exe)?;
        let mut agents = BTreeMap::new();
        for &platform in &platforms {
            let bin = agent_binary(platform, &opts.agent_bins, &opts.fogswarm_exe)?;
            if !bin.exists() {
                return Err(bad_input(format!(
                    "agent binary {} does not exist",
                    bin.display()
                )));
            }
            agents.insert(platform.docker_name().to_string(), bin);
        }
        let fleet = opts
            .fleet
            .clone()
            .unwrap_or_else(|| Fleet::default_for(opts.devices));
        services = Some(Services {
            server_exe,
            agents,
            fleet,
        });
    }

    let mut state = LabState::new(&opts.name, subnet.to_string(), subnet.gateway().to_string());
    state.dockerd_args = opts.dockerd_args.clone();
    paths.save(&state)?;
    let result = bring_up(
        &engine,
        opts,
        &paths,
        subnet,
        &missing_images,
        services.as_ref(),
        &mut state,
    )
    .await;
    match result {
        Ok(()) => status_of(&engine, &state).await,
        Err(e) => {
            let cleanup = teardown(&engine, &paths, &opts.name, Some(&state)).await;
            match cleanup {
                Ok(_) => Err(e.context(format!("lab {} did not come up; removed what it had created", opts.name))),
                Err(c) => Err(e.context(format!(
                    "lab {} did not come up, and cleaning up failed too ({c:#}); run `fogswarm lab down --name {}`",
                    opts.name, opts.name
                ))),
            }
        }
    }
}

async fn ensure_not_up(engine: &Engine, paths: &LabPaths, lab: &str) -> Result<()> {
    if paths.state_file().exists() {
        return Err(bad_input(format!(
            "lab {lab} is already up (state in {}); run `fogswarm lab down --name {lab}` first",
            paths.state_file().display()
        )));
    }
    let leftovers = engine
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&lab_filter(lab))
                .build(),
        ))
        .await
        .context("listing containers")?;
    if !leftovers.is_empty() {
        return Err(bad_input(format!(
            "lab {lab} has {} containers left from an earlier run; run `fogswarm lab down --name {lab}` first",
            leftovers.len()
        )));
    }
    Ok(())
}

/// What a lab with a config server needs besides engines.
struct Services {
    server_exe: PathBuf,
    agents: BTreeMap<String, PathBuf>,
    fleet: Fleet,
}

/// The bridge interface name for a lab (at most 15 characters).
fn bridge_name(lab: &str) -> String {
    let hash = lab.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("fsl{hash:08x}")
}

async fn bring_up(
    engine: &Engine,
    opts: &UpOptions,
    paths: &LabPaths,
    subnet: Subnet,
    missing_images: &[(DevicePlatform, String)],
    services: Option<&Services>,
    state: &mut LabState,
) -> Result<()> {
    let cache_dir = opts.root.join(".cache");
    for (platform, image) in missing_images {
        image::build(engine, *platform, image, &cache_dir).await?;
    }
    if opts.arm64 > 0 && DevicePlatform::Arm64.emulated() {
        binfmt::ensure_registered(DevicePlatform::Arm64)?;
    }

    let network = network_name(&opts.name);
    let bridge = bridge_name(&opts.name);
    let created = engine
        .docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(subnet.gateway().to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(LAB_LABEL.to_string(), opts.name.clone())])),
            options: Some(HashMap::from([("com.docker.network.bridge.name".to_string(), bridge.clone())])),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            anyhow!("creating network {network} on {subnet}: {e}; if another network uses that range, choose one with --subnet")
        })?;
    state.network = Some(created.id);
    state.bridge = Some(bridge.clone());
    paths.save(state)?;

    let registry_step = Step::spinner(format!(
        "starting registry on {}:{}",
        subnet.gateway(),
        registry::REGISTRY_PORT
    ));
    let record = registry::start(paths, &opts.name, subnet.gateway(), &opts.fogswarm_exe).await;
    match record {
        Ok(record) => {
            registry_step.done();
            state.registry = Some(record);
        }
        Err(e) => {
            registry_step.fail();
            return Err(e);
        }
    }
    paths.save(state)?;
    let registry_addr = state
        .registry
        .as_ref()
        .map(|r| r.addr.clone())
        .unwrap_or_default();

    // The config server, and the fleet declared on it.
    let mut agent_base = None;
    if let Some(services) = services {
        let step = Step::spinner(format!(
            "starting the config server on {}:{}",
            subnet.gateway(),
            server::SERVER_PORT
        ));
        let record = match server::start(
            paths,
            &opts.name,
            subnet.gateway(),
            &bridge,
            &services.server_exe,
            &opts.fogswarm_exe,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                step.fail();
                return Err(e);
            }
        };
        step.done();
        state.server = Some(record.clone());
        state.fleet = Some(services.fleet.clone());
        paths.save(state)?;
        declare_fleet(&record, &services.fleet, subnet).await?;
        let key = std::fs::read_to_string(record.data.join("provisioning.key"))
            .context("reading the provisioning key")?;
        agent_base = Some((record, key.trim().to_string()));
    }

    let mut specs = Vec::new();
    for index in 1..=opts.devices {
        let name = format!("dev{index}");
        let ip = subnet.device_ip(index);
        let platform = if index > opts.devices - opts.arm64 {
            DevicePlatform::Arm64
        } else {
            DevicePlatform::Amd64
        };
        let fleet_entry = services.and_then(|s| s.fleet.devices.get(&name));
        let with_tpm = fleet_entry.is_some_and(|d| d.tpm);
        let agent = match (services, &agent_base) {
            (Some(services), Some((record, key))) => Some(AgentSetup {
                binary: services.agents[platform.docker_name()].clone(),
                agent_flags: agent_flags(
                    record,
                    &services.fleet.other_servers,
                    fleet_entry.is_some_and(|d| d.discover),
                    opts.heartbeat_secs,
                    with_tpm,
                ),
                provisioning_key: key.clone(),
                hold: fleet_entry.is_some_and(|d| d.hold),
                runtime: fleet_entry.is_none_or(|d| d.runtime),
            }),
            _ => None,
        };
        specs.push(DeviceSpec {
            lab: opts.name.clone(),
            container: container_name(&opts.name, &name),
            host_dir: paths.device_dir(&name),
            name,
            ip,
            mac: net::device_mac(ip).to_string(),
            platform,
            image: image::image_ref(platform),
            network: network.clone(),
            registry: registry_addr.clone(),
            dockerd_args: opts.dockerd_args.clone(),
            agent,
            device_nodes: fleet_entry
                .map(|d| d.device_nodes.clone())
                .unwrap_or_default(),
        });
    }
    let start_step = Step::count("starting devices", specs.len() as u64);
    let mut containers = Vec::new();
    for spec in &specs {
        start_step.message(&spec.name);
        let with_tpm = services
            .and_then(|s| s.fleet.devices.get(&spec.name))
            .is_some_and(|d| d.tpm);
        let tpm_supervisor = if with_tpm {
            Some(tpm::start(&opts.fogswarm_exe, &opts.name, &spec.host_dir)?)
        } else {
            None
        };
        let (id, mode) = device::create_and_start(engine, spec, state.run_mode).await?;
        state.run_mode = Some(mode);
        state.devices.push(DeviceRecord {
            name: spec.name.clone(),
            container: id.clone(),
            ip: spec.ip.to_string(),
            mac: spec.mac.clone(),
            platform: spec.platform.docker_name().to_string(),
            image: spec.image.clone(),
            socket: spec.socket(),
            agent: spec.agent.is_some(),
            tpm_supervisor,
        });
        paths.save(state)?;
        containers.push(id);
        start_step.advance(1);
    }
    start_step.done();

    let wait_step = Step::count("waiting for device engines", specs.len() as u64);
    let waits = specs.iter().zip(&containers).map(|(spec, id)| {
        let step = wait_step.clone();
        async move {
            let result = device::wait_for_engine(engine, spec, id).await;
            step.advance(1);
            result
        }
    });
    let results = futures_util::future::join_all(waits).await;
    if let Some(err) = results.into_iter().find_map(Result::err) {
        wait_step.fail();
        return Err(err);
    }
    wait_step.done();
    if opts.wait {
        if let (Some(services), Some((record, _))) = (services, &agent_base) {
            wait_for_formation(record, &services.fleet).await?;
        }
    }
    Ok(())
}

/// The agent's settings inside a device, as `fogswarm-agent install`
/// flags: the lab server's URL after any others the fleet names.
fn agent_flags(
    server: &state::ServerRecord,
    others: &[String],
    discover: bool,
    heartbeat_secs: u64,
    with_tpm: bool,
) -> Vec<String> {
    let mut flags = vec![
        format!("--ca-fingerprint={}", server.ca_fingerprint),
        "--provisioning-key-file=/lab/provisioning.key".into(),
        "--state-dir=/var/lib/fogswarm-agent".into(),
        format!("--heartbeat-secs={heartbeat_secs}"),
        // Explicit either way: a lab device must never use a TPM the host
        // machine may have (privileged containers see the host's /dev).
        format!(
            "--tpm={}",
            if with_tpm { tpm::DEVICE_SOCKET } else { "none" }
        ),
    ];
    if !discover {
        let urls: Vec<&str> = others
            .iter()
            .map(String::as_str)
            .chain([server.url.as_str()])
            .collect();
        flags.push(format!("--server={}", urls.join(",")));
    }
    flags
}

/// An operator client for the lab's server.
pub fn admin_client(server: &state::ServerRecord) -> Result<Client> {
    let token = std::fs::read_to_string(server.data.join("admin.token"))
        .context("reading the lab server's admin token")?;
    let endpoint = Endpoint::new(&server.url, Some(&server.ca_fingerprint))?;
    Ok(Client::new(&endpoint, Some(Secret::new(token.trim())))?)
}

/// Declares the fleet's swarm and devices (by the MACs the lab assigns).
async fn declare_fleet(server: &state::ServerRecord, fleet: &Fleet, subnet: Subnet) -> Result<()> {
    let admin = admin_client(server)?;
    admin
        .create_swarm(&SwarmCreate {
            name: fleet.swarm.clone(),
            auto_enrol: fleet.auto_enrol,
        })
        .await
        .context("declaring the lab's swarm")?;
    let rows: Vec<DeviceCreate> = fleet
        .devices
        .iter()
        .filter_map(|(name, d)| {
            let index: u32 = name.strip_prefix("dev")?.parse().ok()?;
            Some(DeviceCreate {
                id: net::device_mac(subnet.device_ip(index)).to_string(),
                swarm: fleet.swarm.clone(),
                role: d.role,
                labels: d.labels.clone(),
            })
        })
        .collect();
    if !rows.is_empty() {
        admin
            .import_devices("application/json", serde_json::to_vec(&rows)?)
            .await
            .context("declaring the lab's devices")?;
    }
    Ok(())
}

/// Waits until every declared device that boots its agent is active.
async fn wait_for_formation(server: &state::ServerRecord, fleet: &Fleet) -> Result<()> {
    let expected = fleet.devices.values().filter(|d| !d.hold).count();
    let step = Step::count(
        format!("waiting for swarm {} to form", fleet.swarm),
        expected as u64,
    );
    let admin = admin_client(server)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut last = Vec::new();
    loop {
        if let Ok(devices) = admin.list_devices(Some(&fleet.swarm)).await {
            let active = devices
                .iter()
                .filter(|d| d.state == DeviceState::Active)
                .count();
            step.set(active as u64);
            last = devices
                .iter()
                .map(|d| (d.id.to_string(), d.state, d.last_error.clone()))
                .collect();
            if active >= expected {
                step.done();
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            step.fail();
            let states: Vec<String> = last
                .iter()
                .map(|(id, s, e)| {
                    format!(
                        "{id} {s}{}",
                        e.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                    )
                })
                .collect();
            bail!("the swarm did not form within 300s: {}", states.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What `down` removed.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub containers: usize,
    pub networks: usize,
    pub registry_stopped: bool,
    pub server_stopped: bool,
    pub removed_dir: Option<PathBuf>,
}

/// Removes a lab: its containers, network, registry process and files.
pub async fn down(name: &str, root: &Path) -> Result<DownReport> {
    validate_name(name)?;
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    let paths = LabPaths::new(root, name);
    let state = paths.load()?;
    let report = teardown(&engine, &paths, name, state.as_ref()).await?;
    if state.is_none() && report.containers == 0 && report.networks == 0 {
        bail!(
            "no lab named {name} is up (no state in {} and no labelled containers)",
            paths.dir.display()
        );
    }
    Ok(report)
}

/// Removes what the state records plus anything carrying the lab's label
/// (an interrupted `up` may have created a container it never recorded).
async fn teardown(
    engine: &Engine,
    paths: &LabPaths,
    name: &str,
    state: Option<&LabState>,
) -> Result<DownReport> {
    let mut report = DownReport::default();
    let mut containers: Vec<String> = state
        .map(|s| s.devices.iter().map(|d| d.container.clone()).collect())
        .unwrap_or_default();
    let labelled = engine
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&lab_filter(name))
                .build(),
        ))
        .await
        .context("listing lab containers")?;
    containers.extend(labelled.into_iter().filter_map(|c| c.id));
    containers.sort();
    containers.dedup();
    for id in &containers {
        device::remove(engine, id).await?;
    }
    report.containers = containers.len();

    let mut networks: Vec<String> = state.and_then(|s| s.network.clone()).into_iter().collect();
    let labelled = engine
        .docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&lab_filter(name))
                .build(),
        ))
        .await
        .context("listing lab networks")?;
    networks.extend(labelled.into_iter().filter_map(|n| n.id));
    networks.sort();
    networks.dedup();
    for id in &networks {
        match engine.docker.remove_network(id).await {
            Ok(()) => report.networks += 1,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).with_context(|| format!("removing network {id}")),
        }
    }

    if let Some(record) = state.and_then(|s| s.registry.as_ref()) {
        report.registry_stopped = supervisor::is_our_supervisor(record.supervisor_pid, name);
        supervisor::stop(record.supervisor_pid, name)?;
    }
    if let Some(record) = state.and_then(|s| s.server.as_ref()) {
        report.server_stopped = supervisor::is_our_supervisor(record.supervisor_pid, name);
        supervisor::stop(record.supervisor_pid, name)?;
    }
    for pid in state
        .iter()
        .flat_map(|s| &s.devices)
        .filter_map(|d| d.tpm_supervisor)
    {
        supervisor::stop(pid, name)?;
    }
    if paths.dir.exists() {
        std::fs::remove_dir_all(&paths.dir)
            .with_context(|| format!("removing {}", paths.dir.display()))?;
        report.removed_dir = Some(paths.dir.clone());
    }
    Ok(report)
}

fn loaded(name: &str, root: &Path) -> Result<(LabPaths, LabState)> {
    validate_name(name)?;
    let paths = LabPaths::new(root, name);
    let state = paths.load()?.ok_or_else(|| {
        anyhow!(
            "no lab named {name} is up (no state in {})",
            paths.dir.display()
        )
    })?;
    Ok((paths, state))
}

fn record<'a>(state: &'a LabState, device: &str) -> Result<&'a DeviceRecord> {
    state
        .devices
        .iter()
        .find(|d| d.name == device)
        .ok_or_else(|| {
            let known: Vec<&str> = state.devices.iter().map(|d| d.name.as_str()).collect();
            bad_input(format!(
                "lab {} has no device {device:?}; it has {}",
                state.name,
                known.join(", ")
            ))
        })
}

/// Lets a held device's boot start its agent.
pub fn start_agent(name: &str, root: &Path, device: &str) -> Result<()> {
    let (paths, state) = loaded(name, root)?;
    let record = record(&state, device)?;
    if !record.agent {
        return Err(bad_input(format!("{device} boots no agent (a --bare lab)")));
    }
    let file = device::agent_enabled_file(&paths.device_dir(device));
    std::fs::write(&file, b"").with_context(|| format!("writing {}", file.display()))
}

/// Restarts a device's container, as a power cycle would.
pub async fn reboot(name: &str, root: &Path, device: &str) -> Result<()> {
    let (_, state) = loaded(name, root)?;
    let record = record(&state, device)?;
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    engine
        .docker
        .restart_container(
            &record.container,
            Some(
                bollard::query_parameters::RestartContainerOptionsBuilder::default()
                    .t(5)
                    .build(),
            ),
        )
        .await
        .with_context(|| format!("restarting {device}"))?;
    let spec = spec_of(&state, record)?;
    device::wait_for_engine(&engine, &spec, &record.container).await?;
    Ok(())
}

/// Replaces a device's container with a fresh one from the image, same IP,
/// MAC and host directory: a re-imaged device, whose engine and agent state
/// are gone.
pub async fn reimage(name: &str, root: &Path, device: &str) -> Result<()> {
    let (paths, mut state) = loaded(name, root)?;
    let old = record(&state, device)?.clone();
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    device::remove(&engine, &old.container).await?;
    let spec = spec_of(&state, &old)?;
    let (id, _) = device::create_and_start(&engine, &spec, state.run_mode).await?;
    if let Some(r) = state.devices.iter_mut().find(|d| d.name == device) {
        r.container = id.clone();
    }
    paths.save(&state)?;
    device::wait_for_engine(&engine, &spec, &id).await?;
    Ok(())
}

/// The spec a recorded device was made from. Its host directory already
/// holds the boot files, so no agent setup is rewritten.
fn spec_of(state: &LabState, record: &DeviceRecord) -> Result<DeviceSpec> {
    let platform = match record.platform.as_str() {
        "arm64" => DevicePlatform::Arm64,
        _ => DevicePlatform::Amd64,
    };
    Ok(DeviceSpec {
        lab: state.name.clone(),
        name: record.name.clone(),
        container: container_name(&state.name, &record.name),
        ip: record.ip.parse().context("device ip in state")?,
        mac: record.mac.clone(),
        platform,
        image: record.image.clone(),
        network: network_name(&state.name),
        host_dir: record
            .socket
            .parent()
            .map(Path::to_path_buf)
            .context("device dir in state")?,
        registry: state
            .registry
            .as_ref()
            .map(|r| r.addr.clone())
            .unwrap_or_default(),
        dockerd_args: state.dockerd_args.clone(),
        agent: None,
        device_nodes: state
            .fleet
            .as_ref()
            .and_then(|f| f.devices.get(&record.name))
            .map(|d| d.device_nodes.clone())
            .unwrap_or_default(),
    })
}

/// Runs a command in a device, streaming its output; answers its exit code.
pub async fn exec(name: &str, root: &Path, device: &str, cmd: &[String]) -> Result<i64> {
    use futures_util::StreamExt;
    if cmd.is_empty() {
        return Err(bad_input("lab exec needs a command after --"));
    }
    let (_, state) = loaded(name, root)?;
    let record = record(&state, device)?;
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    let exec = engine
        .docker
        .create_exec(
            &record.container,
            bollard::models::ExecConfig {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("starting a command in {device}"))?;
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = engine
        .docker
        .start_exec(&exec.id, None)
        .await
        .with_context(|| format!("running a command in {device}"))?
    {
        use std::io::Write;
        while let Some(chunk) = output.next().await {
            match chunk.with_context(|| format!("reading output from {device}"))? {
                bollard::container::LogOutput::StdErr { message } => {
                    std::io::stderr().write_all(&message)?;
                }
                other => {
                    std::io::stdout().write_all(&other.into_bytes())?;
                }
            }
        }
        std::io::stdout().flush()?;
    }
    let inspect = engine
        .docker
        .inspect_exec(&exec.id)
        .await
        .context("reading the command's exit code")?;
    Ok(inspect.exit_code.unwrap_or(-1))
}
