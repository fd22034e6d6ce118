//! Managers kept and quorum recovered: the server's half of self-healing.
//!
//! The raft leader's agent sees which managers are unreachable; the
//! server decides what follows, in one transaction, so two leaders (or
//! replicas) never promote twice for one loss: the lost manager becomes a
//! worker (its node to be removed, and left by its engine if it returns),
//! and the best eligible worker becomes a manager. The agents then make
//! the roles so, as for any role change.
//!
//! A recovery names exactly one device at a time; only it forces a new
//! cluster, and only until it reports back or the recovery expires.

use super::devices::{device_rows, device_view};
use super::events::log_event;
use super::presence::Presence;
use super::{bump, json_of, now, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Tx};
use fogswarm_protocol::api::{
    DeviceState, DeviceView, ManagerLost, ManagerPolicy, ManagerReplaced, Recovered, Recovery,
};
use fogswarm_protocol::validate::{self, Role};
use fogswarm_protocol::DeviceId;

/// A recovery whose device has not reported back by then may be asked of
/// another device (the first may have died while forcing).
pub const RECOVERY_EXPIRES_SECS: i64 = 600;

/// A swarm's manager settings as stored.
pub(super) struct ManagerSettings {
    pub policy: ManagerPolicy,
    pub spread_label: Option<String>,
    pub auto_recover_secs: u64,
    pub quorum_lost_at: Option<i64>,
}

pub(super) fn settings(tx: &Tx<'_>, swarm: &str) -> Result<ManagerSettings> {
    let row = tx
        .query_opt(
            "SELECT managers_target, manager_grace_secs, spread_label, auto_recover_secs, quorum_lost_at FROM swarms WHERE name = $1",
            params![swarm],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} does not exist")))?;
    Ok(ManagerSettings {
        policy: ManagerPolicy {
            target: row.get::<i64>(0)? as u32,
            grace_secs: row.get::<i64>(1)? as u64,
        },
        spread_label: row.get(2)?,
        auto_recover_secs: row.get::<i64>(3)? as u64,
        quorum_lost_at: row.get(4)?,
    })
}

/// The recovery in progress, if any.
pub(super) fn recovery(tx: &Tx<'_>, swarm: &str) -> Result<Option<Recovery>> {
    let row = tx.query_one(
        "SELECT recovery_device, recovery_generation, recovery_started FROM swarms WHERE name = $1",
        params![swarm],
    )?;
    let Some(device) = row.get::<Option<String>>(0)? else {
        return Ok(None);
    };
    Ok(Some(Recovery {
        generation: row.get::<i64>(1)? as u64,
        device_id: DeviceId::parse(&device).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        started_at: row.get::<Option<i64>>(2)?.unwrap_or(0),
    }))
}

/// Checks and stores `swarm update`'s manager settings.
pub(super) fn set_policy(
    tx: &Tx<'_>,
    actor: &Actor,
    swarm: &str,
    target: Option<u32>,
    grace_secs: Option<u64>,
    spread_label: Option<&str>,
    auto_recover_secs: Option<u64>,
) -> Result<()> {
    let invalid = |field: &str, message: String| StoreError::Invalid {
        field: Some(field.into()),
        message,
    };
    if let Some(n) = target {
        if n != 0 && (n > 7 || n % 2 == 0) {
            return Err(invalid(
                "managers",
                format!("managers {n}: keep an odd number from 1 to 7 (0 turns keeping off); an even count tolerates no more failures than one fewer"),
            ));
        }
    }
    if let Some(g) = grace_secs {
        if !(10..=86_400).contains(&g) {
            return Err(invalid(
                "manager_grace_secs",
                format!("manager grace {g}s: give 10s to 24h"),
            ));
        }
    }
    if let Some(label) = spread_label.filter(|l| !l.is_empty()) {
        validate::validate_label_key(label).map_err(|e| invalid("spread_label", e.message))?;
    }
    let mut parts = Vec::new();
    if let Some(n) = target {
        tx.execute(
            "UPDATE swarms SET managers_target = $2 WHERE name = $1",
            params![swarm, n as i64],
        )?;
        parts.push(format!("managers={n}"));
    }
    if let Some(g) = grace_secs {
        tx.execute(
            "UPDATE swarms SET manager_grace_secs = $2 WHERE name = $1",
            params![swarm, g as i64],
        )?;
        parts.push(format!("manager_grace={g}s"));
    }
    if let Some(label) = spread_label {
        let stored = Some(label).filter(|l| !l.is_empty());
        tx.execute(
            "UPDATE swarms SET spread_label = $2 WHERE name = $1",
            params![swarm, stored],
        )?;
        parts.push(format!("spread_label={label}"));
    }
    if let Some(a) = auto_recover_secs {
        let grace = settings(tx, swarm)?.policy.grace_secs;
        if a != 0 && (a < grace || a > 86_400) {
            return Err(invalid(
                "auto_recover_secs",
                format!("auto-recover after {a}s: give 0 (off) or from the manager grace period ({grace}s) to 24h"),
            ));
        }
        tx.execute(
            "UPDATE swarms SET auto_recover_secs = $2 WHERE name = $1",
            params![swarm, a as i64],
        )?;
        parts.push(format!("auto_recover={a}s"));
    }
    if parts.is_empty() {
        return Ok(());
    }
    log_event(tx, actor, "swarm.update", swarm, &parts.join(" "))?;
    // A higher target is met at once, from the workers there are.
    promote_to_target(tx, actor, swarm, &Presence::default())?;
    bump(tx, swarm)?;
    Ok(())
}

impl Store {
    /// The raft leader's report that a manager node has been unreachable
    /// for longer than the grace period: the manager is demoted (its node
    /// removed by the leader once Down) and the best eligible worker
    /// promoted in its place. Idempotent: a loss already handled changes
    /// nothing more.
    pub fn manager_lost(
        &self,
        device: &str,
        lost: &ManagerLost,
    ) -> Result<(ManagerReplaced, Touched)> {
        let heard = &self.presence;
        self.write(|tx| {
            let reporter = device_view(tx, device)?;
            if !reporter.role.is_manager() {
                return Err(StoreError::Forbidden(format!(
                    "device {device} is a {}; only managers report lost managers",
                    reporter.role
                )));
            }
            let swarm = reporter.swarm.clone();
            let settings = settings(tx, &swarm)?;
            if settings.policy.target == 0 {
                return Err(StoreError::Conflict(format!(
                    "swarm {swarm} keeps no manager count (fogswarm swarm update {swarm} --managers N)"
                )));
            }
            if lost.unreachable_secs < settings.policy.grace_secs {
                return Err(StoreError::Conflict(format!(
                    "node {} unreachable for {}s; swarm {swarm} waits {}s before replacing a manager",
                    lost.node_id, lost.unreachable_secs, settings.policy.grace_secs
                )));
            }
            let actor = Actor::Device(device.into());
            let owner = tx.query_opt(
                "SELECT id FROM devices WHERE swarm = $1 AND node_id = $2",
                params![&swarm, &lost.node_id],
            )?;
            let lost_device = match owner {
                Some(row) => {
                    let id: String = row.get(0)?;
                    let view = device_view(tx, &id)?;
                    if id == device {
                        return Err(StoreError::Conflict(format!(
                            "device {device} reported its own node {} lost",
                            lost.node_id
                        )));
                    }
                    if view.role.is_manager() {
                        lose_manager(
                            tx,
                            &actor,
                            &view,
                            &format!("node unreachable for {}s", lost.unreachable_secs),
                        )?;
                        Some(view.id)
                    } else {
                        None
                    }
                }
                None => None,
            };
            let promoted = promote_to_target(tx, &actor, &swarm, heard)?;
            let note = match (&lost_device, promoted.is_empty()) {
                (None, _) => Some(format!(
                    "node {} is no manager device's current node (handled before?)",
                    lost.node_id
                )),
                (Some(_), true) => Some(format!(
                    "no eligible worker to promote (online, not never-manager{})",
                    settings
                        .spread_label
                        .as_ref()
                        .map(|l| format!(", on a {l} without a manager"))
                        .unwrap_or_default()
                )),
                _ => None,
            };
            let touched = if lost_device.is_some() || !promoted.is_empty() {
                bump(tx, &swarm)?;
                vec![swarm]
            } else {
                Vec::new()
            };
            Ok((
                ManagerReplaced {
                    lost: lost_device,
                    promoted,
                    note,
                },
                touched,
            ))
        })
    }

    /// `swarm recover`: names the device that forces a new cluster, the
    /// online manager with the freshest raft log as far as the server can
    /// tell (the last to report being raft leader, then the last heard).
    /// Refused while another recovery is in progress.
    pub fn recover(&self, actor: &Actor, swarm: &str) -> Result<(Recovery, Touched)> {
        validate::validate_swarm_name(swarm)?;
        let heard = &self.presence;
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let t = now();
            if let Some(r) = recovery(tx, swarm)? {
                if t - r.started_at < RECOVERY_EXPIRES_SECS {
                    return Err(StoreError::Conflict(format!(
                        "swarm {swarm} is being recovered by {} (since {}s); one device at a time",
                        r.device_id,
                        t - r.started_at
                    )));
                }
            }
            let initialized: bool = tx
                .query_one(
                    "SELECT cluster_id IS NOT NULL FROM swarms WHERE name = $1",
                    params![swarm],
                )?
                .get(0)?;
            if !initialized {
                return Err(StoreError::Conflict(format!(
                    "swarm {swarm} is not initialized; there is nothing to recover"
                )));
            }
            let online_after = t - settings(tx, swarm)?.policy.grace_secs.max(30) as i64;
            let rows = tx.query(
                "SELECT id, last_seen FROM devices
                 WHERE swarm = $1 AND role IN ('leader', 'manager') AND state = 'active' AND swarm_manager = 1
                 ORDER BY raft_leader DESC, COALESCE(raft_leader_at, 0) DESC, last_seen DESC, id",
                params![swarm],
            )?;
            let mut survivor = None;
            for row in &rows {
                let id: String = row.get(0)?;
                let seen = last_seen(heard, &id, row.get(1)?);
                if seen >= online_after {
                    survivor = Some(id);
                    break;
                }
            }
            let Some(survivor) = survivor else {
                return Err(StoreError::Conflict(format!(
                    "swarm {swarm} has no manager device heard in the last {}s to recover from",
                    t - online_after
                )));
            };
            tx.execute(
                "UPDATE swarms SET recovery_device = $2, recovery_generation = recovery_generation + 1, recovery_started = $3 WHERE name = $1",
                params![swarm, &survivor, t],
            )?;
            let r = recovery(tx, swarm)?
                .ok_or_else(|| StoreError::Corrupt("recovery not stored".into()))?;
            log_event(
                tx,
                actor,
                "swarm.recover",
                swarm,
                &format!(
                    "recovery {}: {survivor} forces a new cluster",
                    r.generation
                ),
            )?;
            bump(tx, swarm)?;
            Ok((r, vec![swarm.to_string()]))
        })
    }

    /// The recovering device's word that its forced cluster has a leader:
    /// every other manager is out of the raft now, so each becomes a worker
    /// (its node removed, its engine told to join afresh), and workers are
    /// promoted to the target (or to as many managers as there were).
    pub fn recovered(&self, device: &str, done: &Recovered) -> Result<Touched> {
        let heard = &self.presence;
        self.write(|tx| {
            let view = device_view(tx, device)?;
            let swarm = view.swarm.clone();
            let current = recovery(tx, &swarm)?;
            let Some(r) = current.filter(|r| r.generation == done.generation) else {
                return Err(StoreError::Conflict(format!(
                    "swarm {swarm} has no recovery {} in progress",
                    done.generation
                )));
            };
            if r.device_id.as_str() != device {
                return Err(StoreError::Forbidden(format!(
                    "recovery {} of swarm {swarm} was asked of {}, not {device}",
                    r.generation, r.device_id
                )));
            }
            let actor = Actor::Device(device.into());
            tx.execute(
                "UPDATE swarms SET recovery_device = NULL, recovery_started = NULL WHERE name = $1",
                params![&swarm],
            )?;
            tx.execute(
                "UPDATE swarms SET quorum_lost_at = NULL WHERE name = $1",
                params![&swarm],
            )?;
            let mut lost = 0;
            for row in device_rows(tx, Some(&swarm))? {
                let other = row.into_view()?;
                if other.id.as_str() != device && other.role.is_manager() {
                    lose_manager(tx, &actor, &other, "out of the raft after the recovery")?;
                    lost += 1;
                }
            }
            // Without a target, as many managers as there were.
            let target = settings(tx, &swarm)?.policy.target.max(lost + 1);
            log_event(
                tx,
                &actor,
                "swarm.recovered",
                &swarm,
                &format!(
                    "recovery {}: a new cluster from {device}; {lost} managers replaced",
                    r.generation
                ),
            )?;
            promote(tx, &actor, &swarm, Some(target), heard)?;
            bump(tx, &swarm)?;
            Ok(vec![swarm])
        })
    }

    /// Starts the recoveries that are due: swarms that allow automatic
    /// recovery, where no manager has reached a raft leader for that long
    /// and none heard since says otherwise. Called every few seconds by
    /// every replica; the recovery's own transaction keeps it to one.
    pub fn auto_recover(&self) -> Result<Vec<(Recovery, Touched)>> {
        let t = now();
        let due: Vec<String> = self.read(|tx| {
            tx.query(
                "SELECT s.name FROM swarms s
                 WHERE s.auto_recover_secs > 0 AND s.quorum_lost_at IS NOT NULL
                   AND s.quorum_lost_at + s.auto_recover_secs <= $1 AND s.recovery_device IS NULL
                   AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.swarm = s.name AND d.swarm_manager = 1
                                   AND d.has_quorum = 1 AND d.last_seen >= $1 - s.manager_grace_secs)",
                params![t],
            )?
            .iter()
            .map(|r| r.get::<String>(0).map_err(StoreError::from))
            .collect()
        })?;
        let mut started = Vec::new();
        for swarm in due {
            match self.recover(&Actor::Server, &swarm) {
                Ok(r) => started.push(r),
                // Another replica was first, or no manager is left to do it.
                Err(StoreError::Conflict(m)) => tracing::debug!(%swarm, "automatic recovery: {m}"),
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }
}

/// A manager's report that its engine does (or does not) reach a raft
/// leader. The swarm counts as without quorum from the first "no" while no
/// other manager says "yes", until one does.
pub(super) fn note_quorum(tx: &Tx<'_>, swarm: &str, device: &str, quorum: bool) -> Result<()> {
    tx.execute(
        "UPDATE devices SET has_quorum = $2 WHERE id = $1",
        params![device, quorum as i64],
    )?;
    let lost_at = settings(tx, swarm)?.quorum_lost_at;
    let others_reach: bool = tx
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM devices WHERE swarm = $1 AND id != $2 AND swarm_manager = 1 AND has_quorum = 1)",
            params![swarm, device],
        )?
        .get(0)?;
    let actor = Actor::Device(device.into());
    match (quorum, lost_at) {
        (false, None) if !others_reach => {
            tx.execute(
                "UPDATE swarms SET quorum_lost_at = $2 WHERE name = $1",
                params![swarm, now()],
            )?;
            log_event(
                tx,
                &actor,
                "swarm.quorum-lost",
                swarm,
                "a manager reaches no raft leader and none says otherwise",
            )
        }
        (true, Some(_)) => {
            tx.execute(
                "UPDATE swarms SET quorum_lost_at = NULL WHERE name = $1",
                params![swarm],
            )?;
            log_event(
                tx,
                &actor,
                "swarm.quorum-ok",
                swarm,
                "a manager reaches a raft leader",
            )
        }
        _ => Ok(()),
    }
}

/// The freshest of the stored last-seen time and one noted in memory
/// since the last flush.
fn last_seen(heard: &Presence, id: &str, stored: Option<i64>) -> i64 {
    heard.get(id).max(stored).unwrap_or(0)
}

/// A manager out: a worker from now on, its node to be removed (by the
/// raft leader once Down) and left by its engine should it come back.
fn lose_manager(tx: &Tx<'_>, actor: &Actor, view: &DeviceView, why: &str) -> Result<()> {
    let mut stale = super::devices::stale_node_ids(tx, view.id.as_str())?;
    if let Some(node) = &view.node_id {
        if !stale.contains(node) {
            stale.push(node.clone());
        }
    }
    tx.execute(
        "UPDATE devices SET role = 'worker', node_id = NULL, stale_node_ids = $2, raft_leader = 0 WHERE id = $1",
        params![view.id.as_str(), json_of(&stale)],
    )?;
    log_event(
        tx,
        actor,
        "manager.lost",
        view.id.as_str(),
        &format!(
            "{why}; node {} to be removed, the device rejoins as a worker",
            view.node_id.as_deref().unwrap_or("-")
        ),
    )
}

/// Promotes workers up to the swarm's target, when it keeps one.
pub(super) fn promote_to_target(
    tx: &Tx<'_>,
    actor: &Actor,
    swarm: &str,
    heard: &Presence,
) -> Result<Vec<DeviceId>> {
    promote(tx, actor, swarm, None, heard)
}

/// Promotes eligible workers, best first, until the swarm has `target`
/// manager devices (the swarm's own target when `None`; none when that is
/// 0) or no worker is eligible.
fn promote(
    tx: &Tx<'_>,
    actor: &Actor,
    swarm: &str,
    target: Option<u32>,
    heard: &Presence,
) -> Result<Vec<DeviceId>> {
    let settings = settings(tx, swarm)?;
    let target = target.unwrap_or(settings.policy.target);
    if target == 0 {
        return Ok(Vec::new());
    }
    let managers: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM devices WHERE swarm = $1 AND role IN ('leader', 'manager')",
            params![swarm],
        )?
        .get(0)?;
    if managers >= target as i64 {
        return Ok(Vec::new()); // the common case, without reading every device
    }
    let mut devices: Vec<DeviceView> = device_rows(tx, Some(swarm))?
        .into_iter()
        .map(|r| r.into_view())
        .collect::<Result<_>>()?;
    let mut promoted = Vec::new();
    let online_after = now() - settings.policy.grace_secs as i64;
    loop {
        let managers = devices.iter().filter(|d| d.role.is_manager()).count();
        if managers >= target as usize {
            break;
        }
        let Some(best) = best_worker(&devices, settings.spread_label.as_deref(), |d| {
            last_seen(heard, d.id.as_str(), d.last_seen) >= online_after
        }) else {
            break;
        };
        let id = devices[best].id.clone();
        super::devices::set_role(tx, id.as_str(), Role::Manager)?;
        log_event(
            tx,
            actor,
            "manager.promoted",
            id.as_str(),
            &format!("worker -> manager, keeping {target} managers"),
        )?;
        devices[best].role = Role::Manager;
        promoted.push(id);
    }
    Ok(promoted)
}

/// The worker to promote: active with a node, online, not marked
/// never-manager, on a value of the spread label no manager has (a worker
/// without the label qualifies after those with one); then the most
/// memory, the most recently heard, and the id, so the choice is stable.
fn best_worker(
    devices: &[DeviceView],
    spread_label: Option<&str>,
    online: impl Fn(&DeviceView) -> bool,
) -> Option<usize> {
    let taken: Vec<&str> = spread_label
        .map(|label| {
            devices
                .iter()
                .filter(|d| d.role.is_manager())
                .filter_map(|d| d.labels.get(label).map(String::as_str))
                .collect()
        })
        .unwrap_or_default();
    devices
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            !d.role.is_manager()
                && !d.never_manager
                && d.state == DeviceState::Active
                && d.node_id.is_some()
                && online(d)
        })
        .filter(|(_, d)| {
            spread_label
                .and_then(|label| d.labels.get(label))
                .is_none_or(|value| !taken.contains(&value.as_str()))
        })
        .max_by(|(_, a), (_, b)| {
            let has_spread =
                |d: &DeviceView| spread_label.is_some_and(|l| d.labels.contains_key(l));
            let memory = |d: &DeviceView| {
                d.facts
                    .get("memory_mb")
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (has_spread(a), memory(a), a.last_seen)
                .cmp(&(has_spread(b), memory(b), b.last_seen))
                // Ties go to the smaller id.
                .then_with(|| b.id.as_str().cmp(a.id.as_str()))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, role: Role, memory: u64, location: Option<&str>) -> DeviceView {
        DeviceView {
            id: DeviceId::parse(id).expect("id"),
            swarm: "fog".into(),
            role,
            labels: location
                .map(|l| [("location".to_string(), l.to_string())].into())
                .unwrap_or_default(),
            facts: [("memory_mb".to_string(), memory.to_string())].into(),
            state: DeviceState::Active,
            enrolled: true,
            node_id: Some(format!("node-{id}")),
            cluster_id: None,
            engine_version: None,
            last_seen: Some(100),
            last_error: None,
            created_at: 0,
            manager: Some(role.is_manager()),
            never_manager: false,
            raft_leader: false,
            agent_version: None,
            protocol: None,
            quorum: None,
            offline_since: None,
            telemetry: None,
            heartbeat_secs: None,
            key: None,
            endorsement_key: None,
            reenrol_pending: None,
        }
    }

    fn pick(devices: &[DeviceView], spread: Option<&str>) -> Option<String> {
        best_worker(devices, spread, |d| d.last_seen.unwrap_or(0) >= 50)
            .map(|i| devices[i].id.to_string())
    }

    #[test]
    fn most_memory_then_smallest_id() {
        let devices = [
            device("m1", Role::Manager, 4000, None),
            device("w1", Role::Worker, 1000, None),
            device("w2", Role::Worker, 2000, None),
            device("w3", Role::Worker, 2000, None),
        ];
        assert_eq!(pick(&devices, None).as_deref(), Some("w2"));
    }

    #[test]
    fn never_manager_offline_and_unjoined_workers_are_skipped() {
        let mut devices = vec![
            device("m1", Role::Manager, 4000, None),
            device("w1", Role::Worker, 9000, None),
            device("w2", Role::Worker, 8000, None),
            device("w3", Role::Worker, 7000, None),
            device("w4", Role::Worker, 1000, None),
        ];
        devices[1].never_manager = true;
        devices[2].last_seen = Some(10);
        devices[3].node_id = None;
        assert_eq!(pick(&devices, None).as_deref(), Some("w4"));
        devices[4].state = DeviceState::Error;
        assert_eq!(pick(&devices, None), None);
    }

    #[test]
    fn no_two_managers_on_one_spread_value() {
        let devices = [
            device("m1", Role::Leader, 4000, Some("hall1")),
            device("m2", Role::Manager, 4000, Some("hall2")),
            device("w1", Role::Worker, 9000, Some("hall1")),
            device("w2", Role::Worker, 1000, None),
            device("w3", Role::Worker, 1000, Some("hall3")),
        ];
        assert_eq!(pick(&devices, Some("location")).as_deref(), Some("w3"));
        // Without the spread label, memory decides.
        assert_eq!(pick(&devices, None).as_deref(), Some("w1"));
        // A worker without the label comes after those on a free value.
        assert_eq!(pick(&devices[..4], Some("location")).as_deref(), Some("w2"));
        assert_eq!(pick(&devices[..3], Some("location")), None);
    }
}
