//! Devices: declared by the operator (one or in bulk), reporting their
//! state and facts; and the fleet-wide views over them. Enrolment and
//! identity are in `enrolment`.

use super::events::log_event;
use super::swarms::require_swarm;
use super::{bump, from_json, json_of, now, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Row, Tx, Value};
use fogswarm_protocol::api::{
    DeviceCreate, DeviceProblem, DeviceState, DeviceUpdate, DeviceView, Facts, FleetStatus,
    LabelChange, OfflineDevice, OutdatedAgent, ReenrolPending, SwarmSummary,
};
use fogswarm_protocol::validate::{self, Role, FACT_PREFIX};
use fogswarm_protocol::DeviceId;
use std::collections::BTreeMap;

impl Store {
    pub fn create_device(
        &self,
        actor: &Actor,
        spec: &DeviceCreate,
    ) -> Result<(DeviceView, Touched)> {
        self.write(|tx| {
            let view = insert_device(tx, spec, None)?;
            log_event(
                tx,
                actor,
                "device.create",
                view.id.as_str(),
                &format!("swarm={} role={}", view.swarm, view.role),
            )?;
            bump(tx, &view.swarm)?;
            Ok((view.clone(), vec![view.swarm]))
        })
    }

    /// Creates every device or none: a bad row rolls the whole import back
    /// and is named in the error (rows count from 1).
    pub fn import_devices(&self, actor: &Actor, rows: &[DeviceCreate]) -> Result<(usize, Touched)> {
        self.write(|tx| {
            let mut touched = Vec::new();
            for (i, spec) in rows.iter().enumerate() {
                let view = insert_device(tx, spec, Some(i + 1))?;
                touched.push(view.swarm);
            }
            touched.sort();
            touched.dedup();
            for swarm in &touched {
                bump(tx, swarm)?;
            }
            log_event(
                tx,
                actor,
                "device.import",
                &format!("{} devices", rows.len()),
                &touched.join(","),
            )?;
            Ok((rows.len(), touched))
        })
    }

    /// At most `limit` devices (of `swarm`, or all), by swarm and id, the
    /// first after `after` (a swarm and an id): a listing read a chunk at
    /// a time, each found through the (swarm, id) index.
    pub fn devices_after(
        &self,
        swarm: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> Result<Vec<DeviceView>> {
        if let Some(s) = swarm {
            validate::validate_swarm_name(s)?;
        }
        let (after_swarm, after_id) = match after {
            Some((s, id)) => (Some(s.as_str()), Some(id.as_str())),
            None => (None, None),
        };
        self.read(|tx| {
            views_where(
                tx,
                "(CAST($1 AS TEXT) IS NULL OR swarm = $1)
                   AND (CAST($2 AS TEXT) IS NULL OR (swarm, id) > (CAST($2 AS TEXT), CAST($3 AS TEXT)))
                 ORDER BY swarm, id LIMIT $4",
                params![swarm, after_swarm, after_id, limit as i64],
            )
        })
    }

    /// The devices waiting for an operator's approval (the fleet page's
    /// list), without reading the rest of the fleet.
    pub fn pending_devices(&self) -> Result<Vec<DeviceView>> {
        self.read(|tx| views_where(tx, "state = 'pending' ORDER BY swarm, id", params![]))
    }

    /// One page of devices for the dashboard, problems first (offline,
    /// then with an error, then pending), then by swarm and id: `query`
    /// matches the id or any fact or label text, `label` (`KEY=VALUE`) an
    /// exact label. Answers the page and how many match in all.
    pub fn device_page(
        &self,
        query: Option<&str>,
        label: Option<(&str, &str)>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<DeviceView>, u64)> {
        let like = |s: &str| {
            format!(
                "%{}%",
                s.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        };
        let text = query.filter(|q| !q.is_empty()).map(like);
        // Labels are stored as JSON: `"KEY":"VALUE"` is in the text.
        let label = label.map(|(k, v)| {
            let pair = json_of(&std::collections::BTreeMap::from([(k, v)]));
            like(&pair[1..pair.len() - 1])
        });
        let filter = "(CAST($1 AS TEXT) IS NULL OR id LIKE $1 ESCAPE '\\' OR facts LIKE $1 ESCAPE '\\' OR labels LIKE $1 ESCAPE '\\')
             AND (CAST($2 AS TEXT) IS NULL OR labels LIKE $2 ESCAPE '\\')";
        self.read(|tx| {
            let total: i64 = tx
                .query_one(
                    &format!("SELECT COUNT(*) FROM devices WHERE {filter}"),
                    params![&text, &label],
                )?
                .get(0)?;
            let devices = views_where(
                tx,
                &format!(
                    "{filter}
                     ORDER BY CASE WHEN offline_since IS NOT NULL THEN 0
                                   WHEN last_error IS NOT NULL THEN 1
                                   WHEN state = 'pending' THEN 2 ELSE 3 END,
                              swarm, id
                     LIMIT $3 OFFSET $4"
                ),
                params![&text, &label, limit as i64, offset as i64],
            )?;
            Ok((devices, total as u64))
        })
    }

    pub fn get_device(&self, id: &str) -> Result<DeviceView> {
        let id = DeviceId::parse(id)?;
        self.read(|tx| device_view(tx, id.as_str()))
    }

    pub fn update_device(
        &self,
        actor: &Actor,
        id: &str,
        update: &DeviceUpdate,
    ) -> Result<(DeviceView, Touched)> {
        let id = DeviceId::parse(id)?;
        if let Some(labels) = &update.labels {
            validate::validate_operator_labels(labels)?;
        }
        if let Some(swarm) = &update.swarm {
            validate::validate_swarm_name(swarm)?;
        }
        self.write(|tx| {
            let before = device_view(tx, id.as_str())?;
            let mut touched = vec![before.swarm.clone()];
            if let Some(swarm) = &update.swarm {
                require_swarm(tx, swarm)?;
                tx.execute(
                    "UPDATE devices SET swarm = $2 WHERE id = $1",
                    params![id.as_str(), swarm],
                )?;
                touched.push(swarm.clone());
            }
            if let Some(role) = update.role {
                set_role(tx, id.as_str(), role)?;
            }
            if let Some(labels) = &update.labels {
                tx.execute(
                    "UPDATE devices SET labels = $2 WHERE id = $1",
                    params![id.as_str(), json_of(labels)],
                )?;
            }
            if let Some(never) = update.never_manager {
                tx.execute(
                    "UPDATE devices SET never_manager = $2 WHERE id = $1",
                    params![id.as_str(), never as i64],
                )?;
            }
            log_event(
                tx,
                actor,
                "device.update",
                id.as_str(),
                &describe_update(update),
            )?;
            touched.sort();
            touched.dedup();
            for s in &touched {
                bump(tx, s)?;
            }
            Ok((device_view(tx, id.as_str())?, touched))
        })
    }

    pub fn change_labels(
        &self,
        actor: &Actor,
        id: &str,
        change: &LabelChange,
    ) -> Result<(DeviceView, Touched)> {
        let id = DeviceId::parse(id)?;
        validate::validate_operator_labels(&change.set)?;
        for key in &change.unset {
            validate::validate_operator_label_key(key)?;
        }
        self.write(|tx| {
            let view = device_view(tx, id.as_str())?;
            let mut labels = view.labels.clone();
            for key in &change.unset {
                labels.remove(key);
            }
            labels.extend(change.set.clone());
            if labels.len() > validate::MAX_LABELS {
                return Err(StoreError::Invalid {
                    field: Some("labels".into()),
                    message: format!(
                        "the device would have {} labels; at most {} are allowed",
                        labels.len(),
                        validate::MAX_LABELS
                    ),
                });
            }
            tx.execute(
                "UPDATE devices SET labels = $2 WHERE id = $1",
                params![id.as_str(), json_of(&labels)],
            )?;
            let detail = format!(
                "set={} unset={}",
                change
                    .set
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                change.unset.join(",")
            );
            log_event(tx, actor, "device.label", id.as_str(), &detail)?;
            bump(tx, &view.swarm)?;
            Ok((device_view(tx, id.as_str())?, vec![view.swarm]))
        })
    }

    pub fn approve_device(&self, actor: &Actor, id: &str) -> Result<DeviceView> {
        let id = DeviceId::parse(id)?;
        self.write(|tx| {
            let view = device_view(tx, id.as_str())?;
            // Another key waiting to be this device: a re-image accepted.
            let reenrolled = super::enrolment::accept_reenrolment(tx, actor, id.as_str())?;
            if !reenrolled && view.state != DeviceState::Pending {
                return Err(StoreError::Conflict(format!(
                    "device {id} is {}, not pending, and no other key waits to enrol as it",
                    view.state
                )));
            }
            set_state(tx, id.as_str(), DeviceState::Enrolled)?;
            log_event(tx, actor, "device.approve", id.as_str(), "")?;
            bump(tx, &view.swarm)?;
            device_view(tx, id.as_str())
        })
    }

    /// Decommissions a device: an enrolled one is told to leave and removed
    /// when it reports it has; one never enrolled (or with `force`) is
    /// removed at once.
    pub fn remove_device(
        &self,
        actor: &Actor,
        id: &str,
        force: bool,
    ) -> Result<(Option<DeviceView>, Touched)> {
        let id = DeviceId::parse(id)?;
        self.write(|tx| {
            let view = device_view(tx, id.as_str())?;
            let touched = vec![view.swarm.clone()];
            bump(tx, &view.swarm)?;
            if view.enrolled {
                super::swarms::request_rotation(
                    tx,
                    actor,
                    &view.swarm,
                    &format!("device {id} decommissioned"),
                )?;
            }
            if force || !view.enrolled {
                tx.execute("DELETE FROM devices WHERE id = $1", params![id.as_str()])?;
                super::telemetry::forget_telemetry(tx, id.as_str())?;
                log_event(tx, actor, "device.remove", id.as_str(), "")?;
                return Ok((None, touched));
            }
            set_state(tx, id.as_str(), DeviceState::Leaving)?;
            log_event(
                tx,
                actor,
                "device.decommission",
                id.as_str(),
                "told to leave",
            )?;
            Ok((Some(device_view(tx, id.as_str())?), touched))
        })
    }

    /// The fleet at a glance: devices per swarm and state, and problems.
    pub fn status(&self) -> Result<FleetStatus> {
        self.read(|tx| {
            let mut swarms = Vec::new();
            let mut total = 0;
            for row in tx.query(
                "SELECT name, worker_token IS NOT NULL FROM swarms ORDER BY name",
                &[],
            )? {
                let name: String = row.get(0)?;
                let by_state = tx
                    .query(
                        "SELECT state, COUNT(*) FROM devices WHERE swarm = $1 GROUP BY state",
                        params![&name],
                    )?
                    .iter()
                    .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)? as u64)))
                    .collect::<Result<BTreeMap<_, _>>>()?;
                let devices: u64 = by_state.values().sum();
                total += devices;
                swarms.push(SwarmSummary {
                    name,
                    initialized: row.get(1)?,
                    devices,
                    by_state,
                });
            }
            let offline = tx
                .query(
                    "SELECT id, swarm, offline_since, last_seen FROM devices
                     WHERE offline_since IS NOT NULL ORDER BY offline_since, id",
                    &[],
                )?
                .iter()
                .map(|r| {
                    Ok(OfflineDevice {
                        device: r.get(0)?,
                        swarm: r.get(1)?,
                        since: r.get(2)?,
                        last_seen: r.get(3)?,
                    })
                })
                .collect::<Result<_>>()?;
            let problems = tx
                .query(
                    "SELECT id, swarm, last_error FROM devices WHERE last_error IS NOT NULL ORDER BY swarm, id",
                    &[],
                )?
                .iter()
                .map(|r| {
                    Ok(DeviceProblem {
                        device: r.get(0)?,
                        swarm: r.get(1)?,
                        error: r.get(2)?,
                    })
                })
                .collect::<Result<_>>()?;
            let outdated_agents = tx
                .query(
                    "SELECT id, swarm, protocol, agent_version FROM devices
                     WHERE protocol IS NOT NULL AND protocol <> $1 ORDER BY swarm, id",
                    params![fogswarm_protocol::version::PROTOCOL],
                )?
                .iter()
                .map(|r| {
                    Ok(OutdatedAgent {
                        device: r.get(0)?,
                        swarm: r.get(1)?,
                        protocol: r.get(2)?,
                        agent_version: r.get(3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|a| fogswarm_protocol::version::behind(&a.protocol))
                .collect();
            Ok(FleetStatus {
                offline,
                swarms,
                devices: total,
                problems,
                outdated_agents,
            })
        })
    }

    /// Device counts by state, for /metrics.
    pub fn devices_by_state(&self) -> Result<Vec<(String, u64)>> {
        self.read(|tx| {
            tx.query(
                "SELECT state, COUNT(*) FROM devices GROUP BY state ORDER BY state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)? as u64)))
            .collect()
        })
    }
}

const DEVICE_COLUMNS: &str =
    "id, swarm, role, labels, facts, state, (public_key IS NOT NULL OR credential_hash IS NOT NULL), node_id, cluster_id, engine_version, last_seen, last_error, created_at, stale_node_ids, swarm_manager, never_manager, raft_leader, agent_version, has_quorum, offline_since, (SELECT sample FROM device_telemetry WHERE device = devices.id), heartbeat_secs, public_key, endorsement_key, pending_key, pending_endorsement_key, pending_since, protocol";

pub(super) struct DeviceRow {
    id: String,
    swarm: String,
    role: String,
    labels: String,
    facts: String,
    state: String,
    enrolled: bool,
    node_id: Option<String>,
    cluster_id: Option<String>,
    engine_version: Option<String>,
    last_seen: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    pub(super) stale_node_ids: String,
    swarm_manager: Option<i64>,
    never_manager: i64,
    raft_leader: i64,
    agent_version: Option<String>,
    has_quorum: Option<i64>,
    offline_since: Option<i64>,
    telemetry: Option<String>,
    heartbeat_secs: Option<i64>,
    public_key: Option<String>,
    endorsement_key: Option<String>,
    pending_key: Option<String>,
    pending_endorsement_key: Option<String>,
    pending_since: Option<i64>,
    protocol: Option<String>,
}

impl DeviceRow {
    fn of(r: &Row) -> Result<DeviceRow> {
        Ok(DeviceRow {
            id: r.get(0)?,
            swarm: r.get(1)?,
            role: r.get(2)?,
            labels: r.get(3)?,
            facts: r.get(4)?,
            state: r.get(5)?,
            enrolled: r.get(6)?,
            node_id: r.get(7)?,
            cluster_id: r.get(8)?,
            engine_version: r.get(9)?,
            last_seen: r.get(10)?,
            last_error: r.get(11)?,
            created_at: r.get(12)?,
            stale_node_ids: r.get(13)?,
            swarm_manager: r.get(14)?,
            never_manager: r.get(15)?,
            raft_leader: r.get(16)?,
            agent_version: r.get(17)?,
            has_quorum: r.get(18)?,
            offline_since: r.get(19)?,
            telemetry: r.get(20)?,
            heartbeat_secs: r.get(21)?,
            public_key: r.get(22)?,
            endorsement_key: r.get(23)?,
            pending_key: r.get(24)?,
            pending_endorsement_key: r.get(25)?,
            pending_since: r.get(26)?,
            protocol: r.get(27)?,
        })
    }

    pub(super) fn into_view(self) -> Result<DeviceView> {
        Ok(DeviceView {
            id: DeviceId::parse(&self.id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            swarm: self.swarm,
            role: Role::parse(&self.role).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            labels: from_json(&self.labels)?,
            facts: from_json(&self.facts)?,
            state: DeviceState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("state {}", self.state)))?,
            enrolled: self.enrolled,
            node_id: self.node_id,
            cluster_id: self.cluster_id,
            engine_version: self.engine_version,
            last_seen: self.last_seen,
            last_error: self.last_error,
            created_at: self.created_at,
            manager: self.swarm_manager.map(|m| m != 0),
            never_manager: self.never_manager != 0,
            raft_leader: self.raft_leader != 0,
            agent_version: self.agent_version,
            protocol: self.protocol,
            quorum: self.has_quorum.map(|q| q != 0),
            offline_since: self.offline_since,
            telemetry: self.telemetry.as_deref().map(from_json).transpose()?,
            heartbeat_secs: self.heartbeat_secs.map(|h| h as u64),
            key: self.public_key.as_deref().map(key_fingerprint),
            endorsement_key: self.endorsement_key,
            reenrol_pending: match (self.pending_key, self.pending_since) {
                (Some(key), Some(since)) => Some(ReenrolPending {
                    key: key_fingerprint(&key),
                    since,
                    endorsement_key: self.pending_endorsement_key,
                }),
                _ => None,
            },
        })
    }
}

/// A stored key's fingerprint, for people.
fn key_fingerprint(key: &str) -> String {
    fogswarm_protocol::identity::PublicKey::parse(key)
        .map(|k| k.fingerprint())
        .unwrap_or_else(|_| "unreadable".into())
}

/// The devices `condition` (a WHERE clause, with its ORDER BY and LIMIT)
/// selects, as views.
fn views_where(tx: &Tx<'_>, condition: &str, params: &[Value]) -> Result<Vec<DeviceView>> {
    tx.query(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE {condition}"),
        params,
    )?
    .iter()
    .map(|r| DeviceRow::of(r)?.into_view())
    .collect()
}

/// Every device, or one swarm's, in a stable order.
pub(super) fn device_rows(tx: &Tx<'_>, swarm: Option<&str>) -> Result<Vec<DeviceRow>> {
    tx.query(
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE (CAST($1 AS TEXT) IS NULL OR swarm = $1) ORDER BY swarm, id"
        ),
        params![swarm],
    )?
    .iter()
    .map(DeviceRow::of)
    .collect()
}

/// Node ids a device had before (re-imaged) or lost (a replaced manager):
/// to be removed from the swarm, never taken back.
pub(super) fn stale_node_ids(tx: &Tx<'_>, id: &str) -> Result<Vec<String>> {
    let stale: String = tx
        .query_one(
            "SELECT stale_node_ids FROM devices WHERE id = $1",
            params![id],
        )?
        .get(0)?;
    from_json(&stale)
}

pub(super) fn device_view(tx: &Tx<'_>, id: &str) -> Result<DeviceView> {
    let row = tx
        .query_opt(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"),
            params![id],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("device {id} does not exist")))?;
    DeviceRow::of(&row)?.into_view()
}

fn insert_device(tx: &Tx<'_>, spec: &DeviceCreate, row: Option<usize>) -> Result<DeviceView> {
    let at_row = |e: StoreError| match (row, e) {
        (Some(n), StoreError::Invalid { field, message }) => StoreError::Invalid {
            field: Some(format!(
                "row {n}{}",
                field.map(|f| format!(": {f}")).unwrap_or_default()
            )),
            message: format!("row {n}: {message}"),
        },
        (Some(n), StoreError::Conflict(m)) => StoreError::Conflict(format!("row {n}: {m}")),
        (Some(n), StoreError::NotFound(m)) => StoreError::Invalid {
            field: Some(format!("row {n}: swarm")),
            message: format!("row {n}: {m}"),
        },
        (_, e) => e,
    };
    let id = DeviceId::parse(&spec.id).map_err(|e| at_row(e.into()))?;
    validate::validate_swarm_name(&spec.swarm).map_err(|e| at_row(e.into()))?;
    validate::validate_operator_labels(&spec.labels).map_err(|e| at_row(e.into()))?;
    require_swarm(tx, &spec.swarm).map_err(at_row)?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM devices WHERE id = $1)",
            params![id.as_str()],
        )?
        .get(0)?;
    if exists {
        return Err(at_row(StoreError::Conflict(format!(
            "device {id} already exists"
        ))));
    }
    if spec.role == Role::Leader {
        check_no_other_leader(tx, &spec.swarm, id.as_str()).map_err(at_row)?;
    }
    tx.execute(
        "INSERT INTO devices (id, swarm, role, labels, state, created_at) VALUES ($1, $2, $3, $4, 'declared', $5)",
        params![id.as_str(), &spec.swarm, spec.role.as_str(), json_of(&spec.labels), now()],
    )?;
    device_view(tx, id.as_str())
}

fn check_no_other_leader(tx: &Tx<'_>, swarm: &str, device: &str) -> Result<()> {
    let other = tx.query_opt(
        "SELECT id FROM devices WHERE swarm = $1 AND role = 'leader' AND id != $2",
        params![swarm, device],
    )?;
    match other {
        Some(row) => Err(StoreError::Conflict(format!(
            "swarm {swarm} already has a leader ({}); a swarm has exactly one",
            row.get::<String>(0)?
        ))),
        None => Ok(()),
    }
}

pub(super) fn set_role(tx: &Tx<'_>, id: &str, role: Role) -> Result<()> {
    let swarm: String = tx
        .query_one("SELECT swarm FROM devices WHERE id = $1", params![id])?
        .get(0)?;
    if role == Role::Leader {
        check_no_other_leader(tx, &swarm, id)?;
    }
    tx.execute(
        "UPDATE devices SET role = $2 WHERE id = $1",
        params![id, role.as_str()],
    )?;
    Ok(())
}

fn set_state(tx: &Tx<'_>, id: &str, state: DeviceState) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = $2 WHERE id = $1",
        params![id, state.as_str()],
    )?;
    Ok(())
}

pub(super) fn validate_facts(facts: &Facts) -> Result<()> {
    if facts.len() > validate::MAX_LABELS {
        return Err(StoreError::Invalid {
            field: Some("facts".into()),
            message: format!(
                "{} facts; at most {} are allowed",
                facts.len(),
                validate::MAX_LABELS
            ),
        });
    }
    for (k, v) in facts {
        validate::validate_label_key(&format!("{FACT_PREFIX}{k}")).map_err(|e| {
            StoreError::Invalid {
                field: Some(format!("facts.{k}")),
                message: e.message,
            }
        })?;
        validate::validate_label_value(k, v).map_err(|e| StoreError::Invalid {
            field: Some(format!("facts.{k}")),
            message: e.message,
        })?;
    }
    Ok(())
}

fn describe_update(update: &DeviceUpdate) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &update.swarm {
        parts.push(format!("swarm={s}"));
    }
    if let Some(r) = update.role {
        parts.push(format!("role={r}"));
    }
    if let Some(never) = update.never_manager {
        parts.push(format!("never_manager={never}"));
    }
    if let Some(l) = &update.labels {
        parts.push(format!(
            "labels={}",
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    parts.join(" ")
}
