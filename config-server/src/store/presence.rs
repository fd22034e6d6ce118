//! When each device was last heard from. Every config poll and report
//! refreshes it: written through, that would be a durable write (an fsync
//! on SQLite) per request, the fleet's whole steady load. It is soft state
//! instead: noted in memory and written for all devices at once every few
//! seconds ([`Store::flush_presence`], one transaction). A crash loses at
//! most that much of it, and nothing a request was told had been stored.

use super::{Result, Store};
use crate::db::params;
use std::collections::HashMap;
use std::sync::Mutex;

/// Last-seen times not written yet, by device.
#[derive(Default)]
pub(super) struct Presence(Mutex<HashMap<String, i64>>);

impl Presence {
    /// The times noted since the last flush (fresher than the stored ones).
    pub(super) fn snapshot(&self) -> HashMap<String, i64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    /// Writes the last-seen times noted since the last flush, in one
    /// transaction; answers how many. On failure they are kept for the
    /// next flush.
    pub fn flush_presence(&self) -> Result<usize> {
        let pending =
            std::mem::take(&mut *self.presence.0.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        let written = self.write(|tx| {
            for (device, at) in &pending {
                // Never backwards: a write transaction may have stored a
                // later time meanwhile.
                tx.execute(
                    "UPDATE devices SET last_seen = $2 WHERE id = $1 AND (last_seen IS NULL OR last_seen < $2)",
                    params![device, *at],
                )?;
            }
            Ok(pending.len())
        });
        if written.is_err() {
            let mut now = self.presence.0.lock().unwrap_or_else(|p| p.into_inner());
            for (device, at) in pending {
                let entry = now.entry(device).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        written
    }
}
