//! The fleet's source of truth: one SQLite file in WAL mode, migrated by
//! version, written in transactions so a refused request leaves nothing
//! half-written.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, each
//! statement here takes microseconds, and the mutex makes every
//! read-decide-write sequence (the leader lease above all) atomic.

use crate::secrets;
use fogswarm_protocol::api::{
    Availability, ConfigAnswer, DesiredNode, DesiredState, DeviceCreate, DeviceProblem,
    DeviceState, DeviceUpdate, DeviceView, Event, Facts, FleetStatus, LabelChange, ReportRequest,
    Secret, SwarmSummary, SwarmTokens, SwarmView,
};
use fogswarm_protocol::validate::{self, AutoEnrol, Role, FACT_PREFIX};
use fogswarm_protocol::DeviceId;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

mod services;

/// How long a device may hold the leader lease before another init may be
/// granted: long enough for `swarm init` and posting the tokens.
pub const LEASE_SECS: u64 = 60;

/// Schema versions, applied in order; `PRAGMA user_version` records the
/// last one applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE swarms (
    name TEXT PRIMARY KEY,
    auto_enrol TEXT NOT NULL DEFAULT 'off',
    cluster_id TEXT,
    manager_addrs TEXT NOT NULL DEFAULT '[]',
    worker_token TEXT,
    manager_token TEXT,
    lease_holder TEXT,
    lease_expires INTEGER,
    revision INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    swarm TEXT NOT NULL REFERENCES swarms(name),
    role TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    facts TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    credential_hash TEXT,
    node_id TEXT,
    stale_node_ids TEXT NOT NULL DEFAULT '[]',
    cluster_id TEXT,
    engine_version TEXT,
    last_seen INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX devices_by_swarm ON devices(swarm);
CREATE UNIQUE INDEX devices_by_credential ON devices(credential_hash);
CREATE UNIQUE INDEX one_leader_per_swarm ON devices(swarm) WHERE role = 'leader';
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE services (
    swarm TEXT NOT NULL REFERENCES swarms(name),
    name TEXT NOT NULL,
    stack TEXT,
    spec TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (swarm, name)
);
CREATE TABLE observed (
    swarm TEXT PRIMARY KEY REFERENCES swarms(name),
    report TEXT NOT NULL,
    device TEXT NOT NULL,
    at INTEGER NOT NULL
);
"#,
];

/// Why a store operation was refused. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<validate::ValidationError> for StoreError {
    fn from(e: validate::ValidationError) -> Self {
        StoreError::Invalid {
            field: Some(e.field),
            message: e.message,
        }
    }
}

impl From<fogswarm_protocol::DeviceIdError> for StoreError {
    fn from(e: fogswarm_protocol::DeviceIdError) -> Self {
        StoreError::Invalid {
            field: Some("id".into()),
            message: e.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// Who did something, for the event log.
#[derive(Debug, Clone)]
pub enum Actor {
    Admin,
    Device(String),
    Server,
}

impl Actor {
    fn as_string(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Device(id) => format!("device:{id}"),
            Actor::Server => "server".into(),
        }
    }
}

/// What an enrolment decided.
pub struct Enrolment {
    pub swarm: String,
    pub role: Role,
    pub pending: bool,
    pub credential: Secret,
}

/// Swarms whose desired state changed in a call, so the server can wake
/// their long polls.
pub type Touched = Vec<String>;

pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn json_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Opens (creating if needed) the database and applies pending
    /// migrations.
    pub fn open(path: &Path) -> Result<Store> {
        // The file holds join tokens: private from its first byte (the WAL
        // and shared-memory files SQLite makes take the same mode).
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Corrupt(format!("creating {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = conn.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half
        // applied (rusqlite rolls back on drop), so a poisoned lock is safe
        // to take over.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one write transaction.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.lock();
        f(&conn)
    }

    // ---- swarms ----

    pub fn create_swarm(
        &self,
        actor: &Actor,
        name: &str,
        auto_enrol: AutoEnrol,
    ) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        self.write(|tx| {
            if swarm_exists(tx, name)? {
                return Err(StoreError::Conflict(format!("swarm {name} already exists")));
            }
            tx.execute(
                "INSERT INTO swarms (name, auto_enrol, created_at) VALUES (?1, ?2, ?3)",
                params![name, auto_enrol.as_str(), now()],
            )?;
            log_event(
                tx,
                actor,
                "swarm.create",
                name,
                &format!("auto_enrol={}", auto_enrol.as_str()),
            )?;
            swarm_view(tx, name)
        })
    }

    pub fn list_swarms(&self) -> Result<Vec<SwarmView>> {
        self.read(|conn| {
            let names: Vec<String> = conn
                .prepare("SELECT name FROM swarms ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            names.iter().map(|n| swarm_view(conn, n)).collect()
        })
    }

    pub fn get_swarm(&self, name: &str) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        self.read(|conn| swarm_view(conn, name))
    }

    pub fn update_swarm(
        &self,
        actor: &Actor,
        name: &str,
        auto_enrol: Option<AutoEnrol>,
    ) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        self.write(|tx| {
            swarm_view(tx, name)?;
            if let Some(a) = auto_enrol {
                tx.execute(
                    "UPDATE swarms SET auto_enrol = ?2 WHERE name = ?1",
                    params![name, a.as_str()],
                )?;
                log_event(
                    tx,
                    actor,
                    "swarm.update",
                    name,
                    &format!("auto_enrol={}", a.as_str()),
                )?;
            }
            swarm_view(tx, name)
        })
    }

    /// Removes a swarm; refused while it has devices unless `force`, which
    /// removes them too.
    pub fn remove_swarm(&self, actor: &Actor, name: &str, force: bool) -> Result<()> {
        validate::validate_swarm_name(name)?;
        self.write(|tx| {
            let view = swarm_view(tx, name)?;
            if view.devices > 0 && !force {
                return Err(StoreError::Conflict(format!(
                    "swarm {name} still has {} devices; remove them first or use force",
                    view.devices
                )));
            }
            tx.execute("DELETE FROM devices WHERE swarm = ?1", params![name])?;
            tx.execute("DELETE FROM services WHERE swarm = ?1", params![name])?;
            tx.execute("DELETE FROM observed WHERE swarm = ?1", params![name])?;
            tx.execute("DELETE FROM swarms WHERE name = ?1", params![name])?;
            log_event(
                tx,
                actor,
                "swarm.remove",
                name,
                &format!("devices_removed={}", view.devices),
            )?;
            Ok(())
        })
    }

    // ---- devices ----

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

    pub fn list_devices(&self, swarm: Option<&str>) -> Result<Vec<DeviceView>> {
        if let Some(s) = swarm {
            validate::validate_swarm_name(s)?;
        }
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE (?1 IS NULL OR swarm = ?1) ORDER BY swarm, id"
            ))?;
            let rows = stmt.query_map(params![swarm], device_row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|r| r.into_view())).collect()
        })
    }

    pub fn get_device(&self, id: &str) -> Result<DeviceView> {
        let id = DeviceId::parse(id)?;
        self.read(|conn| device_view(conn, id.as_str()))
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
                    "UPDATE devices SET swarm = ?2 WHERE id = ?1",
                    params![id.as_str(), swarm],
                )?;
                touched.push(swarm.clone());
            }
            if let Some(role) = update.role {
                set_role(tx, id.as_str(), role)?;
            }
            if let Some(labels) = &update.labels {
                tx.execute(
                    "UPDATE devices SET labels = ?2 WHERE id = ?1",
                    params![id.as_str(), json_of(labels)],
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
                "UPDATE devices SET labels = ?2 WHERE id = ?1",
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
            if view.state != DeviceState::Pending {
                return Err(StoreError::Conflict(format!(
                    "device {id} is {}, not pending",
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
            if force || !view.enrolled {
                tx.execute("DELETE FROM devices WHERE id = ?1", params![id.as_str()])?;
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

    // ---- device API ----

    /// Enrols a device: a declared one, or an unknown one into a swarm that
    /// auto-enrols. A new credential replaces any earlier one (a re-imaged
    /// device has lost it).
    pub fn enrol(
        &self,
        id: &DeviceId,
        requested_swarm: Option<&str>,
        facts: &Facts,
    ) -> Result<(Enrolment, Touched)> {
        validate_facts(facts)?;
        if let Some(s) = requested_swarm {
            validate::validate_swarm_name(s)?;
        }
        let credential = secrets::random_token("fsd");
        let hash = secrets::hash(credential.expose());
        self.write(|tx| {
            let existing = tx
                .query_row("SELECT swarm, role, state FROM devices WHERE id = ?1", params![id.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })
                .optional()?;
            let (swarm, role, pending) = match existing {
                Some((swarm, role, state)) => {
                    let role = Role::parse(&role)?;
                    let state = DeviceState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?;
                    let pending = state == DeviceState::Pending;
                    let new_state = match state {
                        DeviceState::Pending | DeviceState::Leaving => state,
                        _ => DeviceState::Enrolled,
                    };
                    tx.execute(
                        "UPDATE devices SET credential_hash = ?2, facts = ?3, state = ?4, last_seen = ?5 WHERE id = ?1",
                        params![id.as_str(), hash, json_of(facts), new_state.as_str(), now()],
                    )?;
                    (swarm, role, pending)
                }
                None => {
                    let swarm = auto_enrol_swarm(tx, requested_swarm)?.ok_or_else(|| {
                        StoreError::Forbidden(format!(
                            "device {id} is not declared{}",
                            match requested_swarm {
                                Some(s) => format!(" and swarm {s} does not auto-enrol"),
                                None => " and no swarm auto-enrols unknown devices".into(),
                            }
                        ))
                    })?;
                    let pending = swarm.1 == AutoEnrol::Pending;
                    let state = if pending { DeviceState::Pending } else { DeviceState::Enrolled };
                    tx.execute(
                        "INSERT INTO devices (id, swarm, role, facts, state, credential_hash, last_seen, created_at)
                         VALUES (?1, ?2, 'worker', ?3, ?4, ?5, ?6, ?6)",
                        params![id.as_str(), swarm.0, json_of(facts), state.as_str(), hash, now()],
                    )?;
                    log_event(tx, &Actor::Server, "device.auto_enrol", id.as_str(), &format!("swarm={} pending={pending}", swarm.0))?;
                    (swarm.0, Role::Worker, pending)
                }
            };
            log_event(tx, &Actor::Device(id.to_string()), "device.enrol", id.as_str(), &format!("swarm={swarm}"))?;
            bump(tx, &swarm)?;
            Ok((
                Enrolment {
                    swarm: swarm.clone(),
                    role,
                    pending,
                    credential: credential.clone(),
                },
                vec![swarm],
            ))
        })
    }

    /// The device whose credential this is, if any.
    pub fn authenticate_device(&self, credential: &str) -> Result<Option<String>> {
        let hash = secrets::hash(credential);
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT id FROM devices WHERE credential_hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Decides what a device does next. The leader lease is taken in the
    /// same transaction that checks it, so of any number of concurrent
    /// requests exactly one gets `init`.
    pub fn config_for(&self, device: &str) -> Result<(ConfigAnswer, bool)> {
        self.write(|tx| {
            let view = device_view(tx, device)?;
            tx.execute("UPDATE devices SET last_seen = ?2 WHERE id = ?1", params![device, now()])?;
            let swarm = &view.swarm;
            match view.state {
                DeviceState::Leaving => return Ok((ConfigAnswer::Leave { swarm: swarm.clone() }, false)),
                DeviceState::Pending => {
                    return Ok((
                        ConfigAnswer::Wait {
                            retry_after_secs: 30,
                            reason: "waiting for an operator to approve this device".into(),
                        },
                        false,
                    ))
                }
                _ => {}
            }
            let (worker_token, manager_token, addrs, cluster_id): (Option<String>, Option<String>, String, Option<String>) = tx.query_row(
                "SELECT worker_token, manager_token, manager_addrs, cluster_id FROM swarms WHERE name = ?1",
                params![swarm],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            if let (Some(worker), Some(manager)) = (worker_token, manager_token) {
                let token = if view.role.is_manager() { manager } else { worker };
                return Ok((
                    ConfigAnswer::Join {
                        swarm: swarm.clone(),
                        cluster_id,
                        node_id: view.node_id.clone(),
                        role: view.role,
                        managers: from_json(&addrs)?,
                        token: Secret::new(token),
                    },
                    false,
                ));
            }
            // Not initialized. Who may initialize: the declared leader, or,
            // in a swarm without one, any manager.
            let has_leader: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM devices WHERE swarm = ?1 AND role = 'leader')",
                params![swarm],
                |r| r.get(0),
            )?;
            let candidate = view.role == Role::Leader || (!has_leader && view.role == Role::Manager);
            if !candidate {
                return Ok((
                    ConfigAnswer::Wait {
                        retry_after_secs: 5,
                        reason: format!("swarm {swarm} is not initialized yet"),
                    },
                    false,
                ));
            }
            let t = now();
            let granted = tx.execute(
                "UPDATE swarms SET lease_holder = ?2, lease_expires = ?3
                 WHERE name = ?1 AND worker_token IS NULL AND (lease_holder IS NULL OR lease_expires < ?4)",
                params![swarm, device, t + LEASE_SECS as i64, t],
            )?;
            if granted == 1 {
                log_event(tx, &Actor::Server, "swarm.lease", swarm, &format!("granted to {device} for {LEASE_SECS}s"))?;
                return Ok((
                    ConfigAnswer::Init {
                        swarm: swarm.clone(),
                        lease_secs: LEASE_SECS,
                    },
                    true,
                ));
            }
            Ok((
                ConfigAnswer::Wait {
                    retry_after_secs: 3,
                    reason: format!("swarm {swarm} is being initialized"),
                },
                false,
            ))
        })
    }

    pub fn report(&self, device: &str, report: &ReportRequest) -> Result<Touched> {
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
        let error = report
            .error
            .as_ref()
            .map(|e| e.chars().take(1000).collect::<String>());
        self.write(|tx| {
            let view = device_view(tx, device)?;
            if report.state == Some(DeviceState::Left) && view.state == DeviceState::Leaving {
                tx.execute("DELETE FROM devices WHERE id = ?1", params![device])?;
                log_event(tx, &Actor::Device(device.into()), "device.left", device, "decommissioned and removed")?;
                bump(tx, &view.swarm)?;
                return Ok(vec![view.swarm]);
            }
            let mut desired_changed = false;
            let new_state = match (view.state, report.state) {
                (DeviceState::Leaving | DeviceState::Pending, _) => view.state,
                (_, Some(s)) => s,
                (s, None) => s,
            };
            if let Some(node_id) = &report.node_id {
                if view.node_id.as_deref() != Some(node_id.as_str()) {
                    desired_changed = true;
                    if let Some(old) = &view.node_id {
                        let mut stale: Vec<String> = tx.query_row(
                            "SELECT stale_node_ids FROM devices WHERE id = ?1",
                            params![device],
                            |r| r.get::<_, String>(0),
                        ).map_err(StoreError::from).and_then(|s| from_json(&s))?;
                        if !stale.contains(old) {
                            stale.push(old.clone());
                        }
                        tx.execute("UPDATE devices SET stale_node_ids = ?2 WHERE id = ?1", params![device, json_of(&stale)])?;
                    }
                    tx.execute("UPDATE devices SET node_id = ?2 WHERE id = ?1", params![device, node_id])?;
                }
            }
            if let Some(facts) = &report.facts {
                if facts != &view.facts {
                    desired_changed = true;
                    tx.execute("UPDATE devices SET facts = ?2 WHERE id = ?1", params![device, json_of(facts)])?;
                }
            }
            if new_state != view.state {
                desired_changed = true;
                log_event(tx, &Actor::Device(device.into()), "device.state", device, &format!("{} -> {}", view.state, new_state))?;
            }
            if error.is_some() && error != view.last_error {
                log_event(tx, &Actor::Device(device.into()), "device.error", device, error.as_deref().unwrap_or(""))?;
            }
            tx.execute(
                "UPDATE devices SET state = ?2, cluster_id = COALESCE(?3, cluster_id), engine_version = COALESCE(?4, engine_version),
                 last_error = ?5, last_seen = ?6 WHERE id = ?1",
                params![device, new_state.as_str(), report.cluster_id, report.engine_version, error, now()],
            )?;
            if desired_changed {
                bump(tx, &view.swarm)?;
                return Ok(vec![view.swarm]);
            }
            Ok(Vec::new())
        })
    }

    /// Records a swarm's cluster id, manager addresses and join tokens, from
    /// one of its managers. The first post must come from the lease holder;
    /// later ones (token rotation, new managers) must name the same cluster.
    pub fn set_tokens(&self, device: &str, tokens: &SwarmTokens) -> Result<Touched> {
        if tokens.cluster_id.is_empty() || tokens.cluster_id.len() > 128 {
            return Err(StoreError::Invalid {
                field: Some("cluster_id".into()),
                message: "cluster_id must be 1 to 128 characters".into(),
            });
        }
        for (field, token) in [
            ("worker_token", &tokens.worker_token),
            ("manager_token", &tokens.manager_token),
        ] {
            if !token.expose().starts_with("SWMTKN-") || token.expose().len() > 256 {
                return Err(StoreError::Invalid {
                    field: Some(field.into()),
                    message: format!("{field} is not a swarm join token"),
                });
            }
        }
        if tokens.manager_addrs.is_empty()
            || tokens
                .manager_addrs
                .iter()
                .any(|a| a.parse::<std::net::SocketAddr>().is_err())
        {
            return Err(StoreError::Invalid {
                field: Some("manager_addrs".into()),
                message: "manager_addrs must be one or more ip:port addresses".into(),
            });
        }
        self.write(|tx| {
            let view = device_view(tx, device)?;
            if !view.role.is_manager() {
                return Err(StoreError::Forbidden(format!(
                    "device {device} is a {} of swarm {}; only its managers may post tokens",
                    view.role, view.swarm
                )));
            }
            let (cluster_id, lease_holder): (Option<String>, Option<String>) = tx.query_row(
                "SELECT cluster_id, lease_holder FROM swarms WHERE name = ?1",
                params![view.swarm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            match &cluster_id {
                None if lease_holder.as_deref() != Some(device) => {
                    return Err(StoreError::Conflict(format!(
                        "swarm {} is not initialized and {device} does not hold its leader lease",
                        view.swarm
                    )))
                }
                Some(existing) if existing != &tokens.cluster_id => {
                    return Err(StoreError::Conflict(format!(
                        "swarm {} is cluster {existing}, not {}",
                        view.swarm, tokens.cluster_id
                    )))
                }
                _ => {}
            }
            tx.execute(
                "UPDATE swarms SET cluster_id = ?2, manager_addrs = ?3, worker_token = ?4, manager_token = ?5,
                 lease_holder = NULL, lease_expires = NULL WHERE name = ?1",
                params![
                    view.swarm,
                    tokens.cluster_id,
                    json_of(&tokens.manager_addrs),
                    tokens.worker_token.expose(),
                    tokens.manager_token.expose()
                ],
            )?;
            let action = if cluster_id.is_none() { "swarm.initialized" } else { "swarm.tokens" };
            log_event(
                tx,
                &Actor::Device(device.into()),
                action,
                &view.swarm,
                &format!("cluster={} managers={}", tokens.cluster_id, tokens.manager_addrs.join(",")),
            )?;
            bump(tx, &view.swarm)?;
            Ok(vec![view.swarm])
        })
    }

    /// The swarm a manager device belongs to; refuses workers.
    pub fn manager_swarm(&self, device: &str) -> Result<String> {
        self.read(|conn| {
            let view = device_view(conn, device)?;
            if !view.role.is_manager() {
                return Err(StoreError::Forbidden(format!(
                    "device {device} is a {}; only managers may read the desired state",
                    view.role
                )));
            }
            Ok(view.swarm)
        })
    }

    pub fn desired_state(&self, swarm: &str) -> Result<DesiredState> {
        self.read(|conn| {
            let (revision, cluster_id): (i64, Option<String>) = conn.query_row(
                "SELECT revision, cluster_id FROM swarms WHERE name = ?1",
                params![swarm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE swarm = ?1 ORDER BY id"
            ))?;
            let rows: Vec<DeviceRow> = stmt
                .query_map(params![swarm], device_row)?
                .collect::<std::result::Result<_, _>>()?;
            let mut nodes = Vec::new();
            for row in rows {
                let stale: Vec<String> = from_json(&row.stale_node_ids)?;
                let view = row.into_view()?;
                let mut labels = view.labels.clone();
                for (k, v) in &view.facts {
                    labels.insert(format!("{FACT_PREFIX}{k}"), v.clone());
                }
                let availability = match view.state {
                    DeviceState::Pending | DeviceState::Leaving => Availability::Drain,
                    _ => Availability::Active,
                };
                nodes.push(DesiredNode {
                    device_id: view.id,
                    node_id: view.node_id,
                    role: view.role,
                    labels,
                    availability,
                    stale_node_ids: stale,
                });
            }
            Ok(DesiredState {
                swarm: swarm.to_string(),
                revision: revision as u64,
                cluster_id,
                nodes,
                services: services::desired_services(conn, swarm)?,
            })
        })
    }

    pub fn revision(&self, swarm: &str) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT revision FROM swarms WHERE name = ?1",
                params![swarm],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
    }

    // ---- fleet-wide ----

    pub fn status(&self) -> Result<FleetStatus> {
        self.read(|conn| {
            let mut swarms = Vec::new();
            let mut total = 0;
            let names: Vec<(String, bool)> = conn
                .prepare("SELECT name, worker_token IS NOT NULL FROM swarms ORDER BY name")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            for (name, initialized) in names {
                let by_state: BTreeMap<String, u64> = conn
                    .prepare("SELECT state, COUNT(*) FROM devices WHERE swarm = ?1 GROUP BY state")?
                    .query_map(params![name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                    .collect::<std::result::Result<_, _>>()?;
                let devices: u64 = by_state.values().sum();
                total += devices;
                swarms.push(SwarmSummary {
                    name,
                    initialized,
                    devices,
                    by_state,
                });
            }
            let problems = conn
                .prepare("SELECT id, swarm, last_error FROM devices WHERE last_error IS NOT NULL ORDER BY swarm, id")?
                .query_map([], |r| {
                    Ok(DeviceProblem {
                        device: r.get(0)?,
                        swarm: r.get(1)?,
                        error: r.get(2)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(FleetStatus {
                swarms,
                devices: total,
                problems,
            })
        })
    }

    /// Device counts by state, for /metrics.
    pub fn devices_by_state(&self) -> Result<Vec<(String, u64)>> {
        self.read(|conn| {
            Ok(conn
                .prepare("SELECT state, COUNT(*) FROM devices GROUP BY state ORDER BY state")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<std::result::Result<_, _>>()?)
        })
    }

    pub fn events(&self, since_id: i64, limit: u32, subject: Option<&str>) -> Result<Vec<Event>> {
        self.read(|conn| {
            Ok(conn
                .prepare(
                    "SELECT id, at, actor, action, subject, detail FROM events
                     WHERE id > ?1 AND (?3 IS NULL OR subject = ?3) ORDER BY id DESC LIMIT ?2",
                )?
                .query_map(params![since_id, limit, subject], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        subject: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?
                .into_iter()
                .rev()
                .collect())
        })
    }

    pub fn log(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<()> {
        self.write(|tx| log_event(tx, actor, action, subject, detail))
    }

    /// A digest of every row, for tests that prove a refused request
    /// changed nothing.
    pub fn fingerprint(&self) -> Result<String> {
        self.read(|conn| {
            let mut text = String::new();
            for table in ["swarms", "devices", "services"] {
                let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1"))?;
                let columns = stmt.column_count();
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    for i in 0..columns {
                        let v: rusqlite::types::Value = row.get(i)?;
                        text.push_str(&format!("{v:?}|"));
                    }
                    text.push('\n');
                }
            }
            Ok(secrets::hash(&text))
        })
    }
}

const DEVICE_COLUMNS: &str =
    "id, swarm, role, labels, facts, state, credential_hash IS NOT NULL, node_id, cluster_id, engine_version, last_seen, last_error, created_at, stale_node_ids";

struct DeviceRow {
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
    stale_node_ids: String,
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
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
    })
}

impl DeviceRow {
    fn into_view(self) -> Result<DeviceView> {
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
        })
    }
}

fn device_view(conn: &Connection, id: &str) -> Result<DeviceView> {
    conn.query_row(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
        params![id],
        device_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("device {id} does not exist")))?
    .into_view()
}

/// Refuses (404) a swarm that does not exist.
fn require_swarm(conn: &Connection, name: &str) -> Result<()> {
    if swarm_exists(conn, name)? {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("swarm {name} does not exist")))
    }
}

fn swarm_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM swarms WHERE name = ?1)",
        params![name],
        |r| r.get(0),
    )?)
}

fn swarm_view(conn: &Connection, name: &str) -> Result<SwarmView> {
    let row = conn
        .query_row(
            "SELECT s.name, s.auto_enrol, s.worker_token IS NOT NULL, s.cluster_id, s.manager_addrs,
                    (SELECT COUNT(*) FROM devices d WHERE d.swarm = s.name), s.lease_holder, s.lease_expires, s.created_at
             FROM swarms s WHERE s.name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, i64>(8)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {name} does not exist")))?;
    let lease_live = row.7.is_some_and(|expires| expires >= now());
    Ok(SwarmView {
        name: row.0,
        auto_enrol: AutoEnrol::parse(&row.1).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        initialized: row.2,
        cluster_id: row.3,
        managers: from_json(&row.4)?,
        devices: row.5 as u64,
        lease_holder: row.6.filter(|_| lease_live),
        created_at: row.8,
    })
}

fn insert_device(
    tx: &Transaction<'_>,
    spec: &DeviceCreate,
    row: Option<usize>,
) -> Result<DeviceView> {
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
    let exists: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM devices WHERE id = ?1)",
        params![id.as_str()],
        |r| r.get(0),
    )?;
    if exists {
        return Err(at_row(StoreError::Conflict(format!(
            "device {id} already exists"
        ))));
    }
    if spec.role == Role::Leader {
        check_no_other_leader(tx, &spec.swarm, id.as_str()).map_err(at_row)?;
    }
    tx.execute(
        "INSERT INTO devices (id, swarm, role, labels, state, created_at) VALUES (?1, ?2, ?3, ?4, 'declared', ?5)",
        params![id.as_str(), spec.swarm, spec.role.as_str(), json_of(&spec.labels), now()],
    )?;
    device_view(tx, id.as_str())
}

fn check_no_other_leader(conn: &Connection, swarm: &str, device: &str) -> Result<()> {
    let other: Option<String> = conn
        .query_row(
            "SELECT id FROM devices WHERE swarm = ?1 AND role = 'leader' AND id != ?2",
            params![swarm, device],
            |r| r.get(0),
        )
        .optional()?;
    match other {
        Some(other) => Err(StoreError::Conflict(format!(
            "swarm {swarm} already has a leader ({other}); a swarm has exactly one"
        ))),
        None => Ok(()),
    }
}

fn set_role(tx: &Transaction<'_>, id: &str, role: Role) -> Result<()> {
    let swarm: String = tx.query_row(
        "SELECT swarm FROM devices WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    if role == Role::Leader {
        check_no_other_leader(tx, &swarm, id)?;
    }
    tx.execute(
        "UPDATE devices SET role = ?2 WHERE id = ?1",
        params![id, role.as_str()],
    )?;
    Ok(())
}

fn set_state(tx: &Transaction<'_>, id: &str, state: DeviceState) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = ?2 WHERE id = ?1",
        params![id, state.as_str()],
    )?;
    Ok(())
}

fn auto_enrol_swarm(
    tx: &Transaction<'_>,
    requested: Option<&str>,
) -> Result<Option<(String, AutoEnrol)>> {
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT name, auto_enrol FROM swarms WHERE auto_enrol != 'off' AND (?1 IS NULL OR name = ?1)")?
        .query_map(params![requested], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    // Without a requested swarm, auto-enrolment must be unambiguous.
    if rows.len() != 1 {
        return Ok(None);
    }
    let (name, mode) = rows
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("row vanished".into()))?;
    Ok(Some((name, AutoEnrol::parse(&mode)?)))
}

fn validate_facts(facts: &Facts) -> Result<()> {
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

/// Bumps a swarm's revision; answers the new one (0 for no such swarm,
/// which changes nothing).
fn bump(tx: &Transaction<'_>, swarm: &str) -> Result<u64> {
    let revision: Option<i64> = tx
        .query_row(
            "UPDATE swarms SET revision = revision + 1 WHERE name = ?1 RETURNING revision",
            params![swarm],
            |r| r.get(0),
        )
        .optional()?;
    Ok(revision.unwrap_or(0) as u64)
}

fn log_event(
    tx: &Connection,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO events (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now(), actor.as_string(), action, subject, detail],
    )?;
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
