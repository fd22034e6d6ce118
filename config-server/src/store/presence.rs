//! When each device was last heard from. Every config poll and report
//! refreshes it: written through, that would be a durable write (an fsync
//! on SQLite) per request, the fleet's whole steady load. It is soft state
//! instead: noted in memory and written for all devices every few
//! seconds ([`Store::flush_presence`], a few hundred devices a
//! transaction). A crash loses at
//! most that much of it, and nothing a request was told had been stored.
//!
//! Offline: a device not heard for three of its report intervals (its
//! agent says how often it reports; 30 s when it has not), plus the
//! batching's few seconds, is marked
//! offline with a `device.offline` event; the flush that writes it heard
//! again marks it online (`device.online`). Every replica checks, from the
//! stored times, and a conditional update makes one of them log it.

use super::events::log_event;
use super::{now, Actor, Result, Store};
use crate::db::{params, values_cte, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Last-seen times not written yet, by device.
#[derive(Default)]
pub(super) struct Presence(Mutex<HashMap<String, i64>>);

impl Presence {
    /// When `device` was last heard, if since the last flush (fresher
    /// than the stored time). Looked up one device at a time: a copy of
    /// the whole map per report was quadratic in the fleet's size.
    pub(super) fn get(&self, device: &str) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .copied()
    }
}

impl Store {
    /// Notes that `device` was heard from now.
    pub(super) fn heard(&self, device: &str) {
        self.presence
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), super::now());
    }

    /// Writes the last-seen times noted since the last flush, a chunk
    /// of devices a transaction (so other writes are never held up for
    /// long); answers how many. Times a failed chunk held are kept for the
    /// next flush.
    pub fn flush_presence(&self) -> Result<usize> {
        let pending =
            std::mem::take(&mut *self.presence.0.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        let entries: Vec<(&String, &i64)> = pending.iter().collect();
        let mut failed = None;
        for chunk in entries.chunks(FLUSH_CHUNK) {
            let mut values = Vec::with_capacity(chunk.len() * 2);
            for (device, at) in chunk {
                values.push(Value::from(*device));
                values.push(Value::from(**at));
            }
            // Never backwards: a write transaction may have stored a later
            // time meanwhile. Written so that SQLite walks the chunk and
            // finds each device by its key (`UPDATE ... FROM v` makes it
            // scan every device instead, 100x slower at 100,000).
            let sql = values_cte(&[("id", "TEXT"), ("at", "BIGINT")], chunk.len())
                + "UPDATE devices SET last_seen = (SELECT at FROM v WHERE v.id = devices.id)
                   WHERE id IN (SELECT v.id FROM v CROSS JOIN devices d
                                WHERE d.id = v.id AND (d.last_seen IS NULL OR d.last_seen < v.at))";
            let written = self.write(|tx| Ok(tx.execute(&sql, &values)?));
            if let Err(e) = written {
                let mut now = self.presence.0.lock().unwrap_or_else(|p| p.into_inner());
                for (device, at) in chunk {
                    let entry = now.entry((*device).clone()).or_insert(**at);
                    *entry = (*entry).max(**at);
                }
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Devices heard again after being offline: found by a read (a scan
        // of the fleet), written only when there are some.
        let offline = self.read(|tx| {
            tx.query(
                "SELECT id, offline_since FROM devices WHERE offline_since IS NOT NULL",
                params![],
            )?
            .iter()
            .map(|row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?)))
            .collect::<Result<Vec<_>>>()
        })?;
        let back: Vec<(String, i64)> = offline
            .into_iter()
            .filter_map(|(device, since)| pending.get(&device).map(|at| (device, at - since)))
            .collect();
        if !back.is_empty() {
            self.write(|tx| {
                for (device, after) in &back {
                    if tx.execute(
                        "UPDATE devices SET offline_since = NULL WHERE id = $1 AND offline_since IS NOT NULL",
                        params![device],
                    )? == 1
                    {
                        log_event(
                            tx,
                            &Actor::Server,
                            "device.online",
                            device,
                            &format!("heard again after {after}s offline"),
                        )?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(pending.len())
    }

    /// Marks offline the devices not heard for three of their report
    /// intervals, with an event each; answers their ids.
    pub fn mark_offline(&self) -> Result<Vec<String>> {
        let at = now();
        // The scan is a read; the writer is taken only for devices found
        // quiet, and each is checked again as it is marked (a flush may
        // have stored a fresher time meanwhile).
        let quiet = self.read(|tx| {
            tx.query(
                "SELECT id, last_seen, COALESCE(heartbeat_secs, $2) FROM devices
                 WHERE offline_since IS NULL AND last_seen IS NOT NULL
                   AND last_seen + 3 * COALESCE(heartbeat_secs, $2) + $3 < $1",
                params![at, DEFAULT_HEARTBEAT_SECS, BATCHING_SLACK_SECS],
            )?
            .iter()
            .map(|row| {
                Ok((
                    row.get::<String>(0)?,
                    row.get::<i64>(1)?,
                    row.get::<i64>(2)?,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })?;
        if quiet.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut marked = Vec::new();
            for (device, seen, every) in &quiet {
                if tx.execute(
                    "UPDATE devices SET offline_since = $2 WHERE id = $1 AND offline_since IS NULL
                       AND last_seen + 3 * COALESCE(heartbeat_secs, $3) + $4 < $2",
                    params![device, at, DEFAULT_HEARTBEAT_SECS, BATCHING_SLACK_SECS],
                )? == 1
                {
                    log_event(
                        tx,
                        &Actor::Server,
                        "device.offline",
                        device,
                        &format!("not heard for {}s (reports every {every}s)", at - seen),
                    )?;
                    marked.push(device.clone());
                }
            }
            Ok(marked)
        })
    }
}

/// Devices a flush writes in one transaction: small enough that the
/// writes queued behind it (enrolments, reports) wait milliseconds, not
/// the whole flush.
pub(super) const FLUSH_CHUNK: usize = 500;
/// The report interval assumed for an agent that has not said its own.
const DEFAULT_HEARTBEAT_SECS: i64 = 30;
/// Last-seen times reach the database in batches (every few seconds, per
/// replica), so a stored time may be that much older than the device's
/// last word: the allowance before three silent intervals count.
const BATCHING_SLACK_SECS: i64 = 6;
