//! A device's reports: its state, node, engine, facts and error, and what
//! rides along (hardware grant refusals, its raft view, how an agent
//! update ended). A report that says what is stored already only notes the
//! device heard (see `presence`); any other is one write transaction.

use super::devices::{device_view, validate_facts};
use super::events::log_event;
use super::{bump, json_of, now, Actor, Result, Store, StoreError, Touched};
use crate::db::params;
use fogswarm_protocol::api::{DeviceState, DeviceView, ReportRequest};
use fogswarm_protocol::version::{ProtocolVersion, Support, PROTOCOL};

impl Store {
    /// A device's report; `protocol` is the version its agent speaks (a
    /// change to an older one than the server's is an event).
    pub fn report(
        &self,
        device: &str,
        report: &ReportRequest,
        protocol: ProtocolVersion,
    ) -> Result<Touched> {
        let protocol_text = protocol.to_string();
        if let Some(facts) = &report.facts {
            validate_facts(facts)?;
        }
        if let Some(state) = report.state {
            if !state.reportable() {
                return Err(StoreError::Invalid {
                    field: Some("state".into()),
                    message: format!("state {state} is the server's to set, not a device's"),
                });
            }
        }
        for (field, value) in [
            ("node_id", &report.node_id),
            ("cluster_id", &report.cluster_id),
            ("engine_version", &report.engine_version),
            ("agent_version", &report.agent_version),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.len() > 128 || v.chars().any(char::is_control))
            {
                return Err(StoreError::Invalid {
                    field: Some(field.into()),
                    message: format!(
                        "{field} is longer than 128 characters or has control characters"
                    ),
                });
            }
        }
        if let Some(t) = &report.telemetry {
            fogswarm_protocol::telemetry::validate(t).map_err(|(field, message)| {
                StoreError::Invalid {
                    field: Some(field),
                    message,
                }
            })?;
        }
        if report
            .heartbeat_secs
            .is_some_and(|h| !(1..=86_400).contains(&h))
        {
            return Err(StoreError::Invalid {
                field: Some("heartbeat_secs".into()),
                message: "must be between 1 and 86400".into(),
            });
        }
        let error = report
            .error
            .as_ref()
            .map(|e| e.chars().take(1000).collect::<String>());
        if report.grant_refusals.len() > 100 {
            return Err(StoreError::Invalid {
                field: Some("grant_refusals".into()),
                message: "at most 100 grant refusals per report".into(),
            });
        }
        let steady = report.grant_refusals.is_empty()
            && report.agent_update.is_none()
            && self.read(|tx| {
                let view = device_view(tx, device)?;
                Ok(changes_nothing(&view, report, &error)
                    && view.protocol.as_deref() == Some(protocol_text.as_str()))
            })?;
        // Heard (and back online, if it was not) at the next presence
        // flush, with its telemetry. The steady state, a report that says
        // what is stored already, writes nothing else.
        self.heard(device);
        if let Some(t) = &report.telemetry {
            self.note_telemetry(device, t);
        }
        if steady {
            return Ok(Vec::new());
        }
        let heard = &self.presence;
        self.write(|tx| {
            let view = device_view(tx, device)?;
            let actor = Actor::Device(device.into());
            if report.state == Some(DeviceState::Left) && view.state == DeviceState::Leaving {
                tx.execute("DELETE FROM devices WHERE id = $1", params![device])?;
                super::telemetry::forget_telemetry(tx, device)?;
                log_event(tx, &actor, "device.left", device, "decommissioned and removed")?;
                bump(tx, &view.swarm)?;
                return Ok(vec![view.swarm]);
            }
            let mut desired_changed = false;
            let new_state = next_state(view.state, report.state);
            let mut stale = super::devices::stale_node_ids(tx, device)?;
            // A node the swarm removed (a lost manager) is not taken back:
            // the device is told to leave it and join afresh.
            let node_id = report.node_id.as_ref().filter(|n| !stale.contains(n));
            if let Some(node_id) = node_id {
                if view.node_id.as_deref() != Some(node_id.as_str()) {
                    desired_changed = true;
                    if let Some(old) = &view.node_id {
                        if !stale.contains(old) {
                            stale.push(old.clone());
                        }
                        tx.execute(
                            "UPDATE devices SET stale_node_ids = $2 WHERE id = $1",
                            params![device, json_of(&stale)],
                        )?;
                    }
                    tx.execute(
                        "UPDATE devices SET node_id = $2 WHERE id = $1",
                        params![device, node_id],
                    )?;
                }
            }
            if let Some(facts) = &report.facts {
                if facts != &view.facts {
                    desired_changed = true;
                    tx.execute(
                        "UPDATE devices SET facts = $2 WHERE id = $1",
                        params![device, json_of(facts)],
                    )?;
                }
            }
            if new_state != view.state {
                desired_changed = true;
                log_event(
                    tx,
                    &actor,
                    "device.state",
                    device,
                    &format!("{} -> {}", view.state, new_state),
                )?;
            }
            for refusal in &report.grant_refusals {
                let clip = |s: &str| s.chars().filter(|c| !c.is_control()).take(300).collect::<String>();
                log_event(
                    tx,
                    &actor,
                    "grant.refused",
                    device,
                    &format!(
                        "container {} (service {}): {}",
                        clip(&refusal.container),
                        clip(refusal.service.as_deref().unwrap_or("-")),
                        clip(&refusal.reason)
                    ),
                )?;
            }
            if let Some(leader) = report.raft_leader.filter(|l| *l != view.raft_leader) {
                if leader {
                    tx.execute(
                        "UPDATE devices SET raft_leader = 1, raft_leader_at = $2 WHERE id = $1",
                        params![device, now()],
                    )?;
                } else {
                    tx.execute(
                        "UPDATE devices SET raft_leader = 0 WHERE id = $1",
                        params![device],
                    )?;
                }
            }
            if let Some(update) = &report.agent_update {
                super::rollouts::outcome(tx, &view.swarm, device, update)?;
            }
            if let Some(quorum) = report.quorum.filter(|q| view.quorum != Some(*q)) {
                super::quorum::note_quorum(tx, &view.swarm, device, quorum)?;
            }
            if let Some(manager) = report.manager {
                if view.manager != Some(manager) {
                    tx.execute(
                        "UPDATE devices SET swarm_manager = $2 WHERE id = $1",
                        params![device, manager as i64],
                    )?;
                }
                if view.manager.is_some_and(|before| before != manager) {
                    let (action, detail) = if manager {
                        ("device.promoted", "worker -> manager")
                    } else {
                        ("device.demoted", "manager -> worker")
                    };
                    log_event(tx, &actor, action, device, detail)?;
                }
            }
            if error.is_some() && error != view.last_error {
                log_event(
                    tx,
                    &actor,
                    "device.error",
                    device,
                    error.as_deref().unwrap_or(""),
                )?;
            }
            if view.protocol.as_deref() != Some(protocol_text.as_str())
                && protocol.support() == Support::Outdated
            {
                log_event(
                    tx,
                    &actor,
                    "device.agent_outdated",
                    device,
                    &format!(
                        "its agent speaks protocol {protocol}, the server {PROTOCOL}: update the agent (fogswarm agent rollout) before the next server release"
                    ),
                )?;
            }
            tx.execute(
                "UPDATE devices SET state = $2, cluster_id = COALESCE($3, cluster_id), engine_version = COALESCE($4, engine_version),
                 last_error = $5, last_seen = $6, agent_version = COALESCE($7, agent_version),
                 heartbeat_secs = COALESCE($8, heartbeat_secs), protocol = $9 WHERE id = $1",
                params![device, new_state.as_str(), &report.cluster_id, &report.engine_version, &error, now(), &report.agent_version, report.heartbeat_secs.map(|h| h as i64), &protocol_text],
            )?;
            if desired_changed {
                // A device that became eligible (joined again, say) may be
                // what a swarm short of managers was waiting for.
                super::quorum::promote_to_target(tx, &Actor::Server, &view.swarm, heard)?;
                bump(tx, &view.swarm)?;
                return Ok(vec![view.swarm]);
            }
            Ok(Vec::new())
        })
    }
}

/// The state a report leaves a device in: a device cannot report itself
/// out of leaving or pending.
fn next_state(stored: DeviceState, reported: Option<DeviceState>) -> DeviceState {
    match (stored, reported) {
        (DeviceState::Leaving | DeviceState::Pending, _) => stored,
        (_, Some(s)) => s,
        (s, None) => s,
    }
}

/// Whether a report would store nothing new.
fn changes_nothing(view: &DeviceView, report: &ReportRequest, error: &Option<String>) -> bool {
    let same = |reported: &Option<String>, stored: &Option<String>| {
        reported.is_none() || reported == stored
    };
    !(report.state == Some(DeviceState::Left) && view.state == DeviceState::Leaving)
        && next_state(view.state, report.state) == view.state
        && same(&report.node_id, &view.node_id)
        && same(&report.cluster_id, &view.cluster_id)
        && same(&report.engine_version, &view.engine_version)
        && same(&report.agent_version, &view.agent_version)
        && report.facts.as_ref().is_none_or(|f| f == &view.facts)
        && (report.manager.is_none() || report.manager == view.manager)
        && report.raft_leader.is_none_or(|l| l == view.raft_leader)
        && (report.quorum.is_none() || report.quorum == view.quorum)
        && (report.heartbeat_secs.is_none() || report.heartbeat_secs == view.heartbeat_secs)
        && *error == view.last_error
}
