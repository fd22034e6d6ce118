//! The raft leader's watch over the other managers, and a quorum recovery.
//!
//! The leader notes when each manager became unreachable (its own view: a
//! new leader starts counting afresh, which errs on the side of waiting);
//! one unreachable past the swarm's grace period is reported to the
//! server, which decides who replaces it. A manager back within the grace
//! period is forgotten, so a reboot changes nothing.

use anyhow::{bail, Context, Result};
use bollard::models::{Node, NodeSpecRoleEnum, NodeState, Reachability};
use fogswarm_client::engine::Engine;
use fogswarm_client::Client;
use fogswarm_protocol::api::{ManagerLost, ManagerPolicy, Recovered, Recovery};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Managers other than `own` that cannot take part in the raft now:
/// unreachable to the leader, or Down.
pub fn unreachable_managers(nodes: &[Node], own: &str) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.id.as_deref() != Some(own))
        .filter(|n| n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .filter(|n| {
            let unreachable = n.manager_status.as_ref().and_then(|m| m.reachability)
                == Some(Reachability::UNREACHABLE);
            let down = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::DOWN);
            unreachable || down
        })
        .filter_map(|n| n.id.clone())
        .collect()
}

/// Since when each manager has been unreachable, and which were reported.
#[derive(Default)]
pub struct LostManagers {
    since: HashMap<String, Instant>,
    reported: HashSet<String>,
}

impl LostManagers {
    /// Whether a manager is unreachable now (the leader then looks again
    /// within seconds rather than at its next long poll).
    pub fn watching(&self) -> bool {
        !self.since.is_empty()
    }

    /// One look: reports managers unreachable past the grace period.
    pub async fn pass(
        &mut self,
        engine: &Engine,
        device: &Client,
        own: &str,
        policy: ManagerPolicy,
    ) -> Result<()> {
        if policy.target == 0 {
            self.since.clear();
            return Ok(());
        }
        let nodes = engine
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .context("listing nodes")?;
        let now = Instant::now();
        let lost = unreachable_managers(&nodes, own);
        self.since.retain(|id, _| lost.contains(id));
        self.reported.retain(|id| lost.contains(id));
        for id in lost {
            let since = *self.since.entry(id.clone()).or_insert(now);
            let for_secs = now.duration_since(since).as_secs();
            if for_secs < policy.grace_secs || self.reported.contains(&id) {
                continue;
            }
            let answer = device
                .manager_lost(&ManagerLost {
                    node_id: id.clone(),
                    unreachable_secs: for_secs,
                })
                .await
                .with_context(|| format!("reporting manager {id} lost"))?;
            tracing::warn!(
                node = %id,
                unreachable_secs = for_secs,
                lost = ?answer.lost,
                promoted = ?answer.promoted,
                note = ?answer.note,
                "a manager stayed unreachable past the grace period"
            );
            self.reported.insert(id);
        }
        Ok(())
    }
}

/// Runs a recovery asked of this device: `swarm init --force-new-cluster`
/// (keeping services, networks, secrets) unless this node already leads a
/// working cluster (forced before a crash), then tells the server.
pub async fn recover(
    engine: &Engine,
    device: &Client,
    node_id: &str,
    recovery: &Recovery,
) -> Result<()> {
    if !crate::manager::is_raft_leader(engine, node_id).await {
        let node = crate::swarm::local(engine).await?;
        let addr = node
            .node_addr
            .context("this node has no address to advertise")?;
        tracing::warn!(
            generation = recovery.generation,
            "forcing a new cluster from this manager (quorum recovery)"
        );
        engine
            .post_json(
                "/swarm/init",
                &json!({
                    "ListenAddr": format!("0.0.0.0:{}", crate::swarm::SWARM_PORT),
                    "AdvertiseAddr": format!("{addr}:{}", crate::swarm::SWARM_PORT),
                    "ForceNewCluster": true,
                }),
            )
            .await
            .context("swarm init --force-new-cluster")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::manager::is_raft_leader(engine, node_id).await {
            if Instant::now() >= deadline {
                bail!("the forced cluster had no leader within 60s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    device
        .recovered(&Recovered {
            generation: recovery.generation,
        })
        .await
        .context("reporting the recovery done")?;
    tracing::info!(generation = recovery.generation, "quorum recovered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ManagerStatus, NodeSpec, NodeStatus};

    fn node(id: &str, manager: Option<Reachability>, state: NodeState) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                role: Some(if manager.is_some() {
                    NodeSpecRoleEnum::MANAGER
                } else {
                    NodeSpecRoleEnum::WORKER
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(state),
                ..Default::default()
            }),
            manager_status: manager.map(|r| ManagerStatus {
                reachability: Some(r),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn unreachable_or_down_managers_but_never_workers_or_self() {
        let nodes = [
            node("leader", Some(Reachability::REACHABLE), NodeState::READY),
            node("m2", Some(Reachability::UNREACHABLE), NodeState::READY),
            node("m3", Some(Reachability::REACHABLE), NodeState::DOWN),
            node("m4", Some(Reachability::REACHABLE), NodeState::READY),
            node("w1", None, NodeState::DOWN),
        ];
        assert_eq!(unreachable_managers(&nodes, "leader"), ["m2", "m3"]);
        assert_eq!(unreachable_managers(&nodes, "m2"), ["m3"]);
    }
}
