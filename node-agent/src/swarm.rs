//! The local engine's side of swarm membership: what the node is, and init,
//! join and leave.
//!
//! Init and join send their own JSON bodies: the engine accepts
//! `Availability` on both (so a node starts drained and no task lands on it
//! before its labels exist), but bollard's request types lack the field.

use anyhow::{anyhow, bail, Context, Result};
use fogswarm_client::engine::Engine;
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::Duration;

pub const SWARM_PORT: u16 = 2377;

/// The node as its engine reports it (`GET /info`).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalNode {
    /// inactive, pending, active, error or locked.
    pub state: String,
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub is_manager: bool,
    pub node_addr: Option<String>,
    /// Addresses of the managers this node knows (workers see these, not
    /// the cluster id).
    pub remote_managers: Vec<String>,
    pub error: Option<String>,
    pub engine_version: String,
    /// The engine's default runtime: `fogswarm` once `fogswarm-agent
    /// install` registered it, which is what hardware grants need.
    pub default_runtime: Option<String>,
    /// Where the engine keeps its data, and its running containers: for
    /// telemetry.
    pub docker_root_dir: Option<String>,
    pub containers_running: Option<u64>,
}

impl LocalNode {
    pub fn active(&self) -> bool {
        self.state == "active"
    }

    /// Whether this node belongs to the swarm the server describes: same
    /// cluster id (managers see it), the node id the server has for this
    /// device, or a manager address in common (workers see those).
    pub fn in_swarm(
        &self,
        cluster_id: Option<&str>,
        known_node_id: Option<&str>,
        managers: &[String],
    ) -> bool {
        let same_cluster = self.cluster_id.is_some() && self.cluster_id.as_deref() == cluster_id;
        let same_node = self.node_id.is_some() && self.node_id.as_deref() == known_node_id;
        let shared_manager = self.remote_managers.iter().any(|m| managers.contains(m));
        same_cluster || same_node || shared_manager
    }
}

pub async fn local(engine: &Engine) -> Result<LocalNode> {
    let info = engine
        .docker
        .info()
        .await
        .context("asking the local engine for /info")?;
    let swarm = info.swarm.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(LocalNode {
        state: swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "inactive".into()),
        node_id: non_empty(swarm.node_id),
        cluster_id: non_empty(swarm.cluster.and_then(|c| c.id)),
        is_manager: swarm.control_available.unwrap_or(false),
        node_addr: non_empty(swarm.node_addr),
        remote_managers: swarm
            .remote_managers
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.addr)
            .collect(),
        error: non_empty(swarm.error),
        engine_version: info.server_version.unwrap_or_default(),
        default_runtime: info.default_runtime,
        docker_root_dir: info.docker_root_dir,
        containers_running: info.containers_running.map(|n| n.max(0) as u64),
    })
}

/// `swarm init`, drained; answers the new node once active.
pub async fn init(engine: &Engine, advertise: Ipv4Addr) -> Result<LocalNode> {
    engine
        .post_json(
            "/swarm/init",
            &json!({
                "ListenAddr": format!("0.0.0.0:{SWARM_PORT}"),
                "AdvertiseAddr": format!("{advertise}:{SWARM_PORT}"),
                "Availability": "drain",
            }),
        )
        .await
        .context("swarm init")?;
    wait_active(engine, Duration::from_secs(30)).await
}

/// `swarm join`, drained, with every known manager. A join that "will
/// continue in the background" is pending, not failed: poll until active.
pub async fn join(
    engine: &Engine,
    managers: &[String],
    token: &str,
    advertise: Ipv4Addr,
) -> Result<LocalNode> {
    let result = engine
        .post_json(
            "/swarm/join",
            &json!({
                "ListenAddr": format!("0.0.0.0:{SWARM_PORT}"),
                "AdvertiseAddr": format!("{advertise}:{SWARM_PORT}"),
                "RemoteAddrs": managers,
                "JoinToken": token,
                "Availability": "drain",
            }),
        )
        .await;
    if let Err(e) = result {
        let text = format!("{e:#}");
        let background =
            text.contains("continue in the background") || text.contains("Timeout was reached");
        if !background {
            // The engine's message may quote the request; never the token.
            return Err(anyhow!(
                "swarm join failed: {}",
                text.replace(token, "[redacted]")
            ));
        }
        tracing::info!("join continues in the background; waiting for the node to become active");
    }
    wait_active(engine, Duration::from_secs(90)).await
}

/// Polls `/info` until the node is active; fails on the engine's error
/// state or at the timeout.
pub async fn wait_active(engine: &Engine, timeout: Duration) -> Result<LocalNode> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let node = local(engine).await?;
        match node.state.as_str() {
            "active" if node.node_id.is_some() => return Ok(node),
            "error" => bail!(
                "the engine's swarm state is error: {}",
                node.error.unwrap_or_default()
            ),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the node did not become active within {}s (state {})",
                timeout.as_secs(),
                node.state
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The swarm's cluster id and join tokens (managers only).
pub async fn tokens(engine: &Engine) -> Result<(String, String, String)> {
    let swarm = engine
        .docker
        .inspect_swarm()
        .await
        .context("inspecting the swarm (needs a manager)")?;
    let id = swarm.id.context("the swarm has no id")?;
    let tokens = swarm.join_tokens.context("the swarm has no join tokens")?;
    Ok((
        id,
        tokens.worker.context("no worker join token")?,
        tokens.manager.context("no manager join token")?,
    ))
}

/// Leaves a node the swarm removed, by force: its managers no longer
/// answer it, so nothing can be demoted first.
pub async fn leave_removed(engine: &Engine) -> Result<()> {
    let options = bollard::query_parameters::LeaveSwarmOptionsBuilder::default()
        .force(true)
        .build();
    match engine.docker.leave_swarm(Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("not part of a swarm") => Ok(()),
        Err(e) => Err(e).context("swarm leave --force (a removed node)"),
    }
}

/// Leaves the swarm. A manager first demotes itself, so the quorum stops
/// counting it; the last manager leaves with force.
pub async fn leave(engine: &Engine, node: &LocalNode) -> Result<()> {
    let mut force = false;
    if node.is_manager {
        if let Some(id) = &node.node_id {
            match crate::manager::set_role(engine, id, bollard::models::NodeSpecRoleEnum::WORKER)
                .await
            {
                Ok(()) => tokio::time::sleep(Duration::from_secs(2)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not demote this manager before leaving; leaving with force");
                    force = true;
                }
            }
        }
    }
    let options = bollard::query_parameters::LeaveSwarmOptionsBuilder::default()
        .force(force)
        .build();
    match engine.docker.leave_swarm(Some(options)).await {
        Ok(()) => Ok(()),
        // 503: "This node is not part of a swarm": nothing to leave.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 503, ..
        }) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            if text.contains("not part of a swarm") {
                return Ok(());
            }
            if !force {
                engine
                    .docker
                    .leave_swarm(Some(
                        bollard::query_parameters::LeaveSwarmOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ))
                    .await
                    .context("swarm leave --force")?;
                return Ok(());
            }
            Err(anyhow!("swarm leave: {text}"))
        }
    }
}
