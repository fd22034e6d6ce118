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
    /// (and replicas gone for a day), in batches of [`PRUNE_BATCH`] rows a
    /// transaction, so a first pruning of a long history never holds the
    /// writer for long.
    pub fn prune(&self) -> Result<Pruned> {
        let at = now();
        let events_before = at - self.retention.events_secs;
        let telemetry_before = at - self.retention.telemetry_secs;
        let mut pruned = Pruned::default();
        loop {
            let (events, telemetry_rows) = self.write(|tx| {
                Ok((
                    tx.execute(
                        "DELETE FROM events WHERE id IN
                           (SELECT id FROM events WHERE at < $1 LIMIT $2)",
                        params![events_before, PRUNE_BATCH as i64],
                    )?,
                    // Whole hours: those ending before the cutoff.
                    tx.execute(
                        "DELETE FROM telemetry_hours WHERE (device, hour) IN
                           (SELECT device, hour FROM telemetry_hours WHERE hour + 3600 <= $1 LIMIT $2)",
                        params![telemetry_before, PRUNE_BATCH as i64],
                    )?,
                ))
            })?;
            pruned.events += events;
            pruned.telemetry_rows += telemetry_rows;
            if events < PRUNE_BATCH && telemetry_rows < PRUNE_BATCH {
                break;
            }
        }
        pruned.replicas = self.write(Store::forget_replicas)?;
        Ok(pruned)
    }
}

/// Rows deleted per table and transaction.
pub const PRUNE_BATCH: u64 = 5_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// A history longer than a batch is pruned whole, the recent rows kept.
    #[test]
    fn pruning_goes_past_one_batch_and_keeps_what_is_recent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("fleet.db"))
            .expect("store")
            .with_retention(Retention {
                events_secs: 3600,
                telemetry_secs: 3600,
            });
        let old = PRUNE_BATCH as i64 * 2 + 17;
        let t = now();
        store
            .write(|tx| {
                tx.execute(
                    "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < $1)
                     INSERT INTO events (at, actor, action, subject, detail)
                     SELECT $2 - 7200 - n, 'server', 'old', 'fleet', '' FROM k",
                    params![old, t],
                )?;
                tx.execute(
                    "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < $1)
                     INSERT INTO telemetry_hours (device, hour, minutes)
                     SELECT 'd' || n, $2 - $2 % 3600 - 7200, '' FROM k",
                    params![old, t],
                )?;
                tx.execute(
                    "INSERT INTO events (at, actor, action, subject, detail) VALUES ($1, 'server', 'new', 'fleet', '')",
                    params![t],
                )?;
                tx.execute(
                    "INSERT INTO telemetry_hours (device, hour, minutes) VALUES ('d1', $1, '')",
                    params![t - t % 3600],
                )?;
                Ok(())
            })
            .expect("rows");
        let pruned = store.prune().expect("prune");
        assert_eq!(pruned.events, old as u64);
        assert_eq!(pruned.telemetry_rows, old as u64);
        let left = store.events(0, 1000, None).expect("events");
        assert_eq!(
            left.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!(store.prune().expect("again"), Pruned::default());
    }
}
