//! How long the log-like tables keep rows: the event log and telemetry
//! history grow with the fleet and with time, so both are pruned by age
//! (`--retain-events`, `--retain-telemetry`) and the database stays
//! bounded. Pruning runs on every replica's tick; the deletes are
//! idempotent, so replicas doing it at once only repeat each other.

use super::{now, Result, Store};
use crate::db::params;

/// Ages past which rows are deleted, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub events_secs: i64,
    pub telemetry_secs: i64,
}

impl Default for Retention {
    /// 90 days of events (a quarter's audit trail), a day of telemetry
    /// (what the dashboard's sparklines and `device show` draw).
    fn default() -> Self {
        Retention {
            events_secs: 90 * 86_400,
            telemetry_secs: 86_400,
        }
    }
}

/// What one pruning pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub telemetry_rows: u64,
    pub replicas: u64,
}

impl Store {
    /// The store with these retention ages.
    pub fn with_retention(mut self, retention: Retention) -> Store {
        self.retention = retention;
        self
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Deletes events and telemetry history older than their retention
    /// (and replicas gone for a day).
    pub fn prune(&self) -> Result<Pruned> {
        let at = now();
        self.write(|tx| {
            Ok(Pruned {
                events: tx.execute(
                    "DELETE FROM events WHERE at < $1",
                    params![at - self.retention.events_secs],
                )?,
                telemetry_rows: tx.execute(
                    "DELETE FROM telemetry_history WHERE minute < $1",
                    params![at - self.retention.telemetry_secs],
                )?,
                replicas: Store::forget_replicas(tx)?,
            })
        })
    }
}
