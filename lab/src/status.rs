//! What a lab is now: its network, registry, server and every device's
//! container, engine, swarm state and state on the server (`lab status`,
//! and what `up` answers).

use super::*;

/// A lab as it is now, for `lab status` and for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    pub network: Option<String>,
    pub registry: Option<RegistryStatus>,
    /// The config server, in labs that have one.
    #[serde(default)]
    pub server: Option<ServerStatus>,
    #[serde(default)]
    pub swarm: Option<String>,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub url: String,
    pub ca_fingerprint: String,
    pub answering: bool,
    /// Where its admin token is (for `fogswarm --token-file`).
    pub admin_token_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryStatus {
    pub addr: String,
    pub answering: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    pub container: String,
    pub ip: String,
    pub mac: String,
    pub platform: String,
    /// The device engine's socket on this machine.
    pub socket: PathBuf,
    /// Container state: running, exited, missing...
    pub state: String,
    pub engine: Option<DeviceEngine>,
    /// The device as the config server sees it: its state, or "undeclared".
    #[serde(default)]
    pub fleet_state: Option<String>,
    #[serde(default)]
    pub fleet_error: Option<String>,
}

/// What a device's engine says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceEngine {
    pub hostname: String,
    pub architecture: String,
    pub version: String,
    /// Swarm membership: inactive, pending, active, error, locked.
    pub swarm: String,
    pub node_id: Option<String>,
}

/// Reads a lab's state and asks the engines how things are.
pub async fn status(name: &str, root: &Path) -> Result<LabStatus> {
    let (_, state) = loaded(name, root)?;
    let engine = Engine::connect(&EngineAddr::from_env()?).await?;
    status_of(&engine, &state).await
}

pub(crate) async fn status_of(engine: &Engine, state: &LabState) -> Result<LabStatus> {
    let registry = match &state.registry {
        Some(r) => Some(RegistryStatus {
            addr: r.addr.clone(),
            answering: registry::answers(&r.addr).await,
        }),
        None => None,
    };
    let mut devices =
        futures_util::future::join_all(state.devices.iter().map(|d| device_status(engine, d)))
            .await;
    let mut server = None;
    if let Some(record) = &state.server {
        let fleet = match admin_client(record) {
            Ok(admin) => admin.list_devices(None).await.ok(),
            Err(_) => None,
        };
        if let Some(fleet) = &fleet {
            for d in &mut devices {
                let known = fleet.iter().find(|f| f.id.as_str() == d.mac);
                d.fleet_state = Some(
                    known
                        .map(|f| f.state.to_string())
                        .unwrap_or_else(|| "undeclared".into()),
                );
                d.fleet_error = known.and_then(|f| f.last_error.clone());
            }
        }
        server = Some(ServerStatus {
            url: record.url.clone(),
            ca_fingerprint: record.ca_fingerprint.clone(),
            answering: fleet.is_some(),
            admin_token_file: record.data.join("admin.token"),
        });
    }
    Ok(LabStatus {
        name: state.name.clone(),
        subnet: state.subnet.clone(),
        gateway: state.gateway.clone(),
        network: state.network.clone(),
        registry,
        server,
        swarm: state.fleet.as_ref().map(|f| f.swarm.clone()),
        devices,
    })
}

async fn device_status(engine: &Engine, record: &DeviceRecord) -> DeviceStatus {
    let inspect = engine
        .docker
        .inspect_container(
            &record.container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    let container_state = match &inspect {
        Ok(c) => c
            .state
            .as_ref()
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "missing".into(),
    };
    // The MAC as the engine reports it, not as recorded: status must show
    // what is, so a test can compare it with what was assigned.
    let mac = inspect
        .ok()
        .and_then(|c| c.network_settings)
        .and_then(|n| n.networks)
        .and_then(|nets| nets.into_values().find_map(|e| e.mac_address))
        .unwrap_or_default();
    let device_engine = if container_state == "running" {
        probe_engine(&record.socket).await
    } else {
        None
    };
    DeviceStatus {
        name: record.name.clone(),
        container: record.container.clone(),
        ip: record.ip.clone(),
        mac,
        platform: record.platform.clone(),
        socket: record.socket.clone(),
        state: container_state,
        engine: device_engine,
        fleet_state: None,
        fleet_error: None,
    }
}

async fn probe_engine(socket: &Path) -> Option<DeviceEngine> {
    let addr = EngineAddr::socket(socket);
    let engine = tokio::time::timeout(Duration::from_secs(5), Engine::connect(&addr))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(Duration::from_secs(5), engine.docker.info())
        .await
        .ok()?
        .ok()?;
    let swarm = info.swarm.unwrap_or_default();
    Some(DeviceEngine {
        hostname: info.name.unwrap_or_default(),
        architecture: info.architecture.unwrap_or_default(),
        version: info.server_version.unwrap_or_default(),
        swarm: swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        node_id: swarm.node_id.filter(|id| !id.is_empty()),
    })
}
