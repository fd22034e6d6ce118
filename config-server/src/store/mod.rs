//! The fleet's source of truth, on SQLite (embedded, the default) or
//! PostgreSQL (several replicas), migrated by version, written in
//! transactions so a refused request leaves nothing half-written.
//!
//! One module per concept: swarms and their leader lease, devices,
//! services, events, and the server's own credentials. The SQL is written
//! once for both databases (see [`crate::db`]).

use crate::db::{self, Database, DbError, Location, PostgresOptions, Tx};
use crate::secrets;

use fogswarm_protocol::validate;
use std::path::Path;

mod credentials;
mod devices;
mod enrolment;
mod events;
mod files;
mod hardware;
mod logs;
mod presence;
mod quorum;
mod replicas;
mod reports;
mod retention;
mod rollouts;
mod schema;
mod services;
mod sessions;
mod swarms;
mod telemetry;
mod users;
pub use logs::LogScope;
pub use sessions::SESSION_SECS;
pub use telemetry::{DeviceGauge, DeviceGauges};

pub use credentials::ServerCredentials;
pub use enrolment::{Admission, DeviceKeys, EnrolInput, Enrolment};
pub use hardware::HardwarePolicy;
pub use quorum::RECOVERY_EXPIRES_SECS;
pub use replicas::{FleetHealth, Replica, SwarmHealth, REPLICA_FRESH_SECS};
pub use retention::{Pruned, Retention};
pub use schema::MIGRATIONS;
pub use swarms::{key_id, SigningKeyText, LEASE_SECS};
pub use users::{Operator, BUILTIN_ADMIN, USER_TOKEN_PREFIX};

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
    /// A secret presented inside a request (an enrolment token) is not
    /// valid.
    #[error("{0}")]
    Unauthorized(String),
    /// What was asked for existed and is gone (an expired log request).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Database(#[from] DbError),
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
    /// The built-in admin (the server's admin token).
    Admin,
    /// A named user.
    User(String),
    Device(String),
    Server,
}

impl Actor {
    pub fn as_string(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::User(name) => format!("user:{name}"),
            Actor::Device(id) => format!("device:{id}"),
            Actor::Server => "server".into(),
        }
    }
}

/// Swarms whose desired state changed in a call, so the server can wake
/// their long polls.
pub type Touched = Vec<String>;

pub struct Store {
    db: Database,
    presence: presence::Presence,
    telemetry: telemetry::PendingTelemetry,
    retention: Retention,
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
    /// Opens (creating if needed) a SQLite database and applies pending
    /// migrations.
    pub fn open(path: &Path) -> Result<Store> {
        Store::over(Database::open_sqlite(path, schema::MIGRATIONS)?)
    }

    /// Opens the database `--database` names and applies pending
    /// migrations.
    pub fn open_location(location: &Location, postgres: &PostgresOptions) -> Result<Store> {
        match location {
            Location::Sqlite(path) => Store::open(path),
            Location::Postgres(url) => {
                Store::over(Database::open_postgres(url, postgres, schema::MIGRATIONS)?)
            }
        }
    }

    /// The store over a migrated database, with what the schema's
    /// migrations could not move in SQL moved.
    fn over(db: Database) -> Result<Store> {
        let store = Store {
            db,
            presence: Default::default(),
            telemetry: Default::default(),
            retention: Default::default(),
        };
        store.carry_over_rollout_plans()?;
        Ok(store)
    }

    /// The database underneath, for the notification listener and backups.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn write<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.db.write(f)
    }

    fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.db.read(f)
    }

    /// A digest of every row, for tests that prove a refused request
    /// changed nothing.
    pub fn fingerprint(&self) -> Result<String> {
        self.read(|tx| {
            let mut text = String::new();
            for table in ["swarms", "devices", "services"] {
                for row in tx.query(&format!("SELECT * FROM {table} ORDER BY 1"), &[])? {
                    for v in row.values() {
                        text.push_str(&format!("{v:?}|"));
                    }
                    text.push('\n');
                }
            }
            Ok(secrets::hash(&text))
        })
    }
}

/// Bumps a swarm's revision and tells the other replicas; answers the new
/// one (0 for no such swarm, which changes nothing).
fn bump(tx: &Tx<'_>, swarm: &str) -> Result<u64> {
    let revision: Option<i64> = match tx.query_opt(
        "UPDATE swarms SET revision = revision + 1 WHERE name = $1 RETURNING revision",
        db::params![swarm],
    )? {
        Some(row) => Some(row.get(0)?),
        None => None,
    };
    let revision = revision.unwrap_or(0) as u64;
    if revision > 0 {
        tx.notify_revision(swarm, revision)?;
    }
    Ok(revision)
}
