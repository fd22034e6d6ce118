//! Manager duty: on every manager the agent follows the server's desired
//! state (long poll); the one whose engine is the raft leader applies it.
//!
//! For each node: operator labels plus `fog.` facts, then availability, in
//! one node update, so a node is never active without its labels. Labels
//! fogswarm owns are the `fog.` ones and the operator keys listed in the
//! node label `io.fogswarm.owned`; every other label is left as it is, so
//! labels set by hand survive. Stale nodes of re-imaged devices are removed
//! once the new node is active, and the Down nodes of decommissioned devices
//! (labelled by fogswarm, known to no device any more) are removed too.

use anyhow::{Context, Result};
use bollard::models::{
    NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Reachability,
};
use fogswarm_client::engine::Engine;
use fogswarm_client::Client;
use fogswarm_protocol::api::{Availability, DesiredNode, DesiredState};
use fogswarm_protocol::service::ObservedReport;
use fogswarm_protocol::validate::FACT_PREFIX;
use fogswarm_protocol::DeviceId;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Node label listing the operator label keys fogswarm applied.
pub const OWNED_LABEL: &str = "io.fogswarm.owned";

/// What one pass changed.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub updated: Vec<String>,
    pub removed_stale: Vec<String>,
    /// Devices promoted or demoted to the role the server gives them.
    pub roles: Vec<String>,
}

/// Whether this node is the raft leader.
pub async fn is_raft_leader(engine: &Engine, node_id: &str) -> bool {
    raft_leader(engine, node_id).await.unwrap_or(false)
}

/// On a manager: whether it is the raft leader; `None` when the swarm
/// cannot say (no leader reachable: the quorum may be lost).
pub async fn raft_leader(engine: &Engine, node_id: &str) -> Option<bool> {
    match engine.docker.inspect_node(node_id).await {
        Ok(node) => Some(node.manager_status.and_then(|m| m.leader).unwrap_or(false)),
        Err(_) => None,
    }
}

/// Labels a node should have: what it has, minus what fogswarm owned
/// before, plus what is desired now.
pub fn merge_labels(
    current: &HashMap<String, String>,
    desired: &DesiredNode,
) -> HashMap<String, String> {
    let previously_owned: BTreeSet<&str> = current
        .get(OWNED_LABEL)
        .map(|s| s.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    let mut labels: HashMap<String, String> = current
        .iter()
        .filter(|(k, _)| {
            k.as_str() != OWNED_LABEL
                && !k.starts_with(FACT_PREFIX)
                && !previously_owned.contains(k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let operator_keys: Vec<&str> = desired
        .labels
        .keys()
        .filter(|k| !k.starts_with(FACT_PREFIX))
        .map(String::as_str)
        .collect();
    for (k, v) in &desired.labels {
        labels.insert(k.clone(), v.clone());
    }
    labels.insert(OWNED_LABEL.into(), operator_keys.join(","));
    labels
}

fn availability(a: Availability) -> NodeSpecAvailabilityEnum {
    match a {
        Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
        Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
        Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
    }
}

/// Updates a node's spec with `change`, inspecting for the current version
/// and retrying when a heartbeat moved it ("update out of sequence").
async fn update_node(
    engine: &Engine,
    node_id: &str,
    change: impl Fn(&mut NodeSpec) -> bool,
) -> Result<bool> {
    for attempt in 0..8 {
        let node = engine
            .docker
            .inspect_node(node_id)
            .await
            .with_context(|| format!("inspecting node {node_id}"))?;
        let version = node
            .version
            .and_then(|v| v.index)
            .context("node without version")?;
        let mut spec = node.spec.context("node without spec")?;
        if !change(&mut spec) {
            return Ok(false);
        }
        let options = bollard::query_parameters::UpdateNodeOptionsBuilder::default()
            .version(version as i64)
            .build();
        match engine.docker.update_node(node_id, spec, options).await {
            Ok(()) => return Ok(true),
            Err(e) if e.to_string().contains("out of sequence") && attempt < 7 => {
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
            Err(e) => return Err(e).with_context(|| format!("updating node {node_id}")),
        }
    }
    anyhow::bail!("node {node_id} kept changing under the update")
}

pub async fn set_role(engine: &Engine, node_id: &str, role: NodeSpecRoleEnum) -> Result<()> {
    update_node(engine, node_id, |spec| {
        if spec.role == Some(role) {
            return false;
        }
        spec.role = Some(role);
        true
    })
    .await
    .map(|_| ())
}

/// Makes the swarm's nodes match the desired state. `own` is this node's
/// id (changed last when its role changes).
pub async fn apply(engine: &Engine, desired: &DesiredState, own: &str) -> Result<Applied> {
    let mut applied = Applied::default();
    let nodes = engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("listing nodes")?;
    let ready: HashMap<String, bool> = nodes
        .iter()
        .filter_map(|n| {
            Some((
                n.id.clone()?,
                n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY),
            ))
        })
        .collect();
    for want in &desired.nodes {
        let Some(node_id) = &want.node_id else {
            continue; // a lost manager's device: see below
        };
        if !ready.contains_key(node_id) {
            continue; // reported but not (or no longer) in this swarm
        }
        let changed = update_node(engine, node_id, |spec| {
            let current = spec.labels.clone().unwrap_or_default();
            let labels = merge_labels(&current, want);
            let avail = availability(want.availability);
            if labels == current && spec.availability == Some(avail) {
                return false;
            }
            spec.labels = Some(labels);
            spec.availability = Some(avail);
            true
        })
        .await?;
        if changed {
            tracing::info!(device = %want.device_id, node = %node_id, "applied labels and availability");
            applied.updated.push(want.device_id.to_string());
        }
        // A re-imaged device's old node goes once the new one is ready.
        if ready.get(node_id) == Some(&true) {
            for stale in &want.stale_node_ids {
                if stale == node_id || !ready.contains_key(stale) {
                    continue;
                }
                remove_node(engine, stale).await?;
                tracing::info!(device = %want.device_id, node = %stale, "removed the stale node of a re-imaged device");
                applied.removed_stale.push(stale.clone());
            }
        }
    }
    apply_roles(engine, desired, &nodes, own, &mut applied).await;
    // A lost manager's old node goes once not Ready, after the promotion
    // of its replacement (if its engine comes back, it leaves the node by
    // itself).
    for want in desired.nodes.iter().filter(|n| n.node_id.is_none()) {
        for stale in &want.stale_node_ids {
            if ready.get(stale) == Some(&false) {
                remove_node(engine, stale).await?;
                tracing::info!(device = %want.device_id, node = %stale, "removed the node of a lost manager");
                applied.removed_stale.push(stale.clone());
            }
        }
    }
    // Nodes fogswarm labelled whose device is gone (decommissioned): once
    // Down, they are stale. Nodes it never labelled are not its to remove.
    let known: std::collections::HashSet<&str> = desired
        .nodes
        .iter()
        .filter_map(|n| n.node_id.as_deref())
        .chain(
            desired
                .nodes
                .iter()
                .flat_map(|n| n.stale_node_ids.iter().map(String::as_str)),
        )
        .collect();
    for node in &nodes {
        let Some(id) = node.id.as_deref() else {
            continue;
        };
        let ours = node
            .spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .is_some_and(|l| l.contains_key(OWNED_LABEL));
        let down = node.status.as_ref().and_then(|s| s.state) == Some(NodeState::DOWN);
        if ours && down && !known.contains(id) {
            remove_node(engine, id).await?;
            tracing::info!(node = %id, "removed the node of a decommissioned device");
            applied.removed_stale.push(id.to_string());
        }
    }
    Ok(applied)
}

/// Roles changed on the server after joining: ready nodes are promoted or
/// demoted to match. Promotions go first, so the managers are as many as
/// they will be before any leaves; this node goes last (demoting the raft
/// leader hands leadership on). Swarm refuses what would break its quorum;
/// that is logged and tried again at the next pass, not fatal to the rest.
async fn apply_roles(
    engine: &Engine,
    desired: &DesiredState,
    nodes: &[bollard::models::Node],
    own: &str,
    applied: &mut Applied,
) {
    let current: HashMap<&str, (Option<NodeSpecRoleEnum>, bool)> = nodes
        .iter()
        .filter_map(|n| {
            let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
            Some((n.id.as_deref()?, (n.spec.as_ref()?.role, ready)))
        })
        .collect();
    let mut changes: Vec<(&DesiredNode, &str, NodeSpecRoleEnum)> = desired
        .nodes
        .iter()
        .filter_map(|want| {
            let id = want.node_id.as_deref()?;
            let (role, ready) = current.get(id)?;
            let target = if want.role.is_manager() {
                NodeSpecRoleEnum::MANAGER
            } else {
                NodeSpecRoleEnum::WORKER
            };
            (*ready && *role != Some(target)).then_some((want, id, target))
        })
        .collect();
    changes.sort_by_key(|(_, id, target)| (*target == NodeSpecRoleEnum::WORKER, *id == own));
    for (want, id, target) in changes {
        match set_role(engine, id, target).await {
            Ok(()) => {
                tracing::info!(device = %want.device_id, node = %id, role = %target, "role applied");
                applied.roles.push(want.device_id.to_string());
            }
            Err(e) => {
                tracing::warn!(device = %want.device_id, node = %id, role = %target, error = %format!("{e:#}"), "cannot apply the role")
            }
        }
    }
}

/// Rotates both join tokens and posts the new ones (with every manager's
/// address) as the answer to rotation `generation`. Rotating again after a
/// crash between the two steps is harmless: the server keeps the last.
async fn rotate_tokens(engine: &Engine, device: &Client, generation: u64) -> Result<()> {
    let swarm = engine
        .docker
        .inspect_swarm()
        .await
        .context("inspecting the swarm")?;
    let version = swarm
        .version
        .and_then(|v| v.index)
        .context("the swarm has no version")?;
    let options = bollard::query_parameters::UpdateSwarmOptionsBuilder::default()
        .version(version as i64)
        .rotate_worker_token(true)
        .rotate_manager_token(true)
        .build();
    engine
        .docker
        .update_swarm(swarm.spec.unwrap_or_default(), options)
        .await
        .context("rotating the join tokens")?;
    post_tokens(engine, device, generation, manager_addrs(engine).await?).await
}

/// The addresses of the swarm's reachable managers, sorted.
async fn manager_addrs(engine: &Engine) -> Result<Vec<String>> {
    let mut addrs: Vec<String> = engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("listing nodes")?
        .into_iter()
        .filter_map(|n| n.manager_status)
        .filter(|m| m.reachability == Some(Reachability::REACHABLE))
        .filter_map(|m| m.addr)
        .collect();
    addrs.sort();
    Ok(addrs)
}

/// Posts the swarm's tokens with its managers' addresses, as the answer to
/// rotation `generation`: after a rotation, and whenever the reachable
/// managers changed, so joining devices are sent to live ones.
async fn post_tokens(
    engine: &Engine,
    device: &Client,
    generation: u64,
    manager_addrs: Vec<String>,
) -> Result<()> {
    let (cluster_id, worker, manager) = crate::swarm::tokens(engine).await?;
    device
        .post_swarm_tokens(&fogswarm_protocol::api::SwarmTokens {
            cluster_id,
            manager_addrs,
            worker_token: fogswarm_protocol::api::Secret::new(worker),
            manager_token: fogswarm_protocol::api::Secret::new(manager),
            generation,
        })
        .await?;
    Ok(())
}

async fn remove_node(engine: &Engine, node_id: &str) -> Result<()> {
    // A manager must be demoted first, or the quorum keeps counting it.
    let _ = set_role(engine, node_id, NodeSpecRoleEnum::WORKER).await;
    let options = bollard::query_parameters::DeleteNodeOptionsBuilder::default()
        .force(true)
        .build();
    match engine.docker.delete_node(node_id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing node {node_id}")),
    }
}

/// The duty loop, for as long as this node is a manager: long-poll the
/// desired state; apply it whenever this node is the raft leader. Non-leaders
/// poll with short waits, so a new leader takes over within seconds; so does
/// a leader with services, whose tasks change without the desired state
/// changing and whose observed state the server should see promptly: every
/// second while a service converges and its state still moves (for at most
/// 30 s after the last change, so a service that never converges does not
/// keep the leader busy). The leader also watches the other managers
/// (every 5 s while the swarm keeps a manager count, every 2 s while one
/// is unreachable: `quorum::LostManagers`), and any manager runs a quorum
/// recovery asked of its device.
pub async fn duty(engine: Engine, device: Client, device_id: DeviceId, node_id: String) {
    let mut since: Option<u64> = None;
    let mut lost = crate::quorum::LostManagers::default();
    // The manager addresses last posted (none yet in this leadership).
    let mut posted_managers: Option<Vec<String>> = None;
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut last_report: Option<ObservedReport> = None;
    let mut services = crate::services::ServiceDuty::default();
    let mut logs = crate::logs::LogDuty::default();
    let mut has_services = false;
    // Whether the swarm keeps a manager count: the leader then looks at
    // its managers every few seconds, not only when the desired state moves.
    let mut keeping = false;
    let mut moving_until = tokio::time::Instant::now();
    loop {
        let leader = is_raft_leader(&engine, &node_id).await;
        let moving = tokio::time::Instant::now() < moving_until;
        let converging = moving
            && last_report.as_ref().is_some_and(|r| {
                r.services.iter().any(|s| {
                    s.running_tasks != s.desired_tasks
                        || matches!(
                            s.update_state.as_deref(),
                            Some("updating" | "rollback_started")
                        )
                })
            });
        let wait = match (leader, converging, has_services) {
            _ if leader && lost.watching() => 2,
            (true, true, _) => 1,
            (true, false, false) if !keeping => 20,
            _ => 5,
        };
        let desired = match device.desired(since, wait).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading the desired state");
                tokio::time::sleep(backoff.next(None)).await;
                continue;
            }
        };
        backoff.reset();
        since = Some(desired.revision);
        has_services = !desired.services.is_empty();
        keeping = desired.managers.target > 0;
        // A recovery asked of this device runs whether or not a raft
        // leader exists: there is none when it is needed.
        if let Some(r) = desired
            .recovery
            .as_ref()
            .filter(|r| r.device_id == device_id)
        {
            if let Err(e) = crate::quorum::recover(&engine, &device, &node_id, r).await {
                tracing::warn!(error = %format!("{e:#}"), "recovering the quorum");
                tokio::time::sleep(backoff.next(None)).await;
            }
            since = None;
            continue;
        }
        if !is_raft_leader(&engine, &node_id).await {
            last_report = None; // a future leadership reports afresh
            posted_managers = None;
            logs.stop();
            continue;
        }
        logs.serve(&engine, &device, &desired.log_requests);
        match apply(&engine, &desired, &node_id).await {
            Ok(a) if a != Applied::default() => tracing::info!(
                revision = desired.revision,
                updated = a.updated.len(),
                removed = a.removed_stale.len(),
                roles = a.roles.len(),
                "desired state applied"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "applying the desired state");
                since = None; // try again soon rather than at the next change
                tokio::time::sleep(backoff.next(None)).await;
                continue;
            }
        }
        if let Err(e) = lost
            .pass(&engine, &device, &node_id, desired.managers)
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), "watching the managers");
        }
        if desired.token_rotation <= desired.tokens_generation {
            match manager_addrs(&engine).await {
                Ok(addrs) if posted_managers.as_ref() != Some(&addrs) && !addrs.is_empty() => {
                    match post_tokens(&engine, &device, desired.tokens_generation, addrs.clone())
                        .await
                    {
                        Ok(()) => posted_managers = Some(addrs),
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "posting the manager addresses")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "listing the managers"),
            }
        }
        if desired.token_rotation > desired.tokens_generation {
            match rotate_tokens(&engine, &device, desired.token_rotation).await {
                Ok(()) => {
                    tracing::info!(generation = desired.token_rotation, "join tokens rotated")
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "rotating the join tokens");
                    since = None;
                }
            }
        }
        match services_pass(&engine, &device, &desired, &mut services, &mut last_report).await {
            Ok(true) => moving_until = tokio::time::Instant::now() + Duration::from_secs(30),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconciling services");
                since = None;
                tokio::time::sleep(backoff.next(None)).await;
            }
        }
    }
}

/// Reconciles the managed services and reports what runs, when that
/// changed since the last report; answers whether it changed.
async fn services_pass(
    engine: &Engine,
    device: &Client,
    desired: &DesiredState,
    duty: &mut crate::services::ServiceDuty,
    last_report: &mut Option<ObservedReport>,
) -> Result<bool> {
    let (changes, errors) = duty.reconcile(engine, device, desired).await?;
    if !changes.is_empty() {
        tracing::info!(
            revision = desired.revision,
            created = ?changes.created,
            updated = ?changes.updated,
            removed = ?changes.removed,
            "services reconciled"
        );
    }
    let mut report = duty
        .observe(
            engine,
            &desired.swarm,
            &desired.services,
            &desired.nodes,
            &errors,
        )
        .await?;
    report.unsigned = duty.unsigned_unmanaged(engine, device, desired).await?;
    if last_report.as_ref() == Some(&report) {
        return Ok(false);
    }
    device
        .post_observed(&report)
        .await
        .context("reporting observed services")?;
    *last_report = Some(report);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogswarm_protocol::DeviceId;

    fn desired(labels: &[(&str, &str)]) -> DesiredNode {
        DesiredNode {
            device_id: DeviceId::parse("dev1").expect("id"),
            node_id: Some("n1".into()),
            role: fogswarm_protocol::Role::Worker,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            availability: Availability::Active,
            stale_node_ids: vec![],
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_application_keeps_foreign_labels() {
        let merged = merge_labels(
            &map(&[("by-hand", "x")]),
            &desired(&[("location", "hall1"), ("fog.arch", "amd64")]),
        );
        assert_eq!(
            merged,
            map(&[
                ("by-hand", "x"),
                ("location", "hall1"),
                ("fog.arch", "amd64"),
                (OWNED_LABEL, "location")
            ])
        );
    }

    #[test]
    fn removed_operator_labels_and_stale_facts_go_foreign_ones_stay() {
        let current = map(&[
            ("by-hand", "x"),
            ("location", "hall1"),
            ("temperature_sensor", "1"),
            ("fog.arch", "amd64"),
            ("fog.video", "video0"),
            (OWNED_LABEL, "location,temperature_sensor"),
        ]);
        let merged = merge_labels(
            &current,
            &desired(&[("location", "hall2"), ("fog.arch", "amd64")]),
        );
        assert_eq!(
            merged,
            map(&[
                ("by-hand", "x"),
                ("location", "hall2"),
                ("fog.arch", "amd64"),
                (OWNED_LABEL, "location")
            ])
        );
    }

    #[test]
    fn merging_is_idempotent() {
        let want = desired(&[("location", "hall1"), ("fog.cpus", "2")]);
        let once = merge_labels(&map(&[]), &want);
        assert_eq!(merge_labels(&once, &want), once);
    }
}
