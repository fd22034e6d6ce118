//! Device telemetry: each device's latest sample and a day of history at
//! one row per device and minute. Like last-seen times (see `presence`),
//! samples are soft state: noted in memory as reports arrive and written
//! for all devices at once every few seconds, so a fleet's heartbeats do
//! not each cost a durable write. History is pruned past its retention
//! (see `retention`).

use super::{now, Result, Store};
use crate::db::{params, values_cte, Value};
use fogswarm_protocol::telemetry::{Telemetry, TelemetryPoint, TelemetryView};
use std::collections::HashMap;
use std::sync::Mutex;

/// Samples not written yet, by device, with when they came.
#[derive(Default)]
pub(super) struct PendingTelemetry(Mutex<HashMap<String, (i64, Telemetry)>>);

/// One device's series on /metrics.
pub struct DeviceGauge {
    pub device: String,
    pub swarm: String,
    pub online: bool,
    pub telemetry: Telemetry,
}

/// The devices /metrics shows, and how many it leaves out (the cap).
#[derive(Default)]
pub struct DeviceGauges {
    pub devices: Vec<DeviceGauge>,
    pub left_out: usize,
}

/// Scaled to integers for storage (both databases alike).
fn scaled(v: Option<f64>, by: f64) -> Option<i64> {
    v.map(|v| (v * by).round() as i64)
}

impl Store {
    /// Keeps `device`'s newest sample until the next flush.
    pub(super) fn note_telemetry(&self, device: &str, sample: &Telemetry) {
        self.telemetry
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), (now(), sample.clone()));
    }

    /// Writes the samples noted since the last flush (latest per device and
    /// the row of its minute), a chunk of devices a transaction; answers
    /// how many samples. On failure a chunk's samples are dropped (the next
    /// report brings fresh ones).
    pub fn flush_telemetry(&self) -> Result<usize> {
        let pending =
            std::mem::take(&mut *self.telemetry.0.lock().unwrap_or_else(|p| p.into_inner()));
        let entries: Vec<_> = pending.iter().collect();
        let mut failed = None;
        for chunk in entries.chunks(super::presence::FLUSH_CHUNK) {
            if let Err(e) = self.write_telemetry(chunk) {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(pending.len()),
        }
    }

    /// One chunk of samples: the devices' latest in one statement, their
    /// minutes' history rows in another. (Not `UPDATE ... FROM v`: SQLite
    /// would scan every device for it; see `flush_presence`.)
    fn write_telemetry(&self, samples: &[(&String, &(i64, Telemetry))]) -> Result<()> {
        let mut latest = Vec::with_capacity(samples.len() * 3);
        let mut history = Vec::with_capacity(samples.len() * 7);
        for &(device, (at, t)) in samples {
            latest.extend([
                Value::from(device),
                Value::from(super::json_of(t)),
                Value::from(*at),
            ]);
            history.extend([
                Value::from(device),
                Value::from(at - at.rem_euclid(60)),
                Value::from(scaled(t.cpu_percent, 10.0)),
                Value::from(scaled(t.load.map(|l| l[0]), 100.0)),
                Value::from(t.memory_used_mb.map(|m| m as i64)),
                Value::from(t.disk_free_mb.map(|m| m as i64)),
                Value::from(scaled(t.temperature_c, 10.0)),
            ]);
        }
        let latest_sql = values_cte(
            &[("id", "TEXT"), ("telemetry", "TEXT"), ("at", "BIGINT")],
            samples.len(),
        )
            + "UPDATE devices SET telemetry = (SELECT telemetry FROM v WHERE v.id = devices.id),
                                telemetry_at = (SELECT at FROM v WHERE v.id = devices.id)
             WHERE id IN (SELECT id FROM v)";
        let history_sql = values_cte(
            &[
                ("device", "TEXT"),
                ("minute", "BIGINT"),
                ("cpu", "BIGINT"),
                ("load1", "BIGINT"),
                ("memory", "BIGINT"),
                ("disk", "BIGINT"),
                ("temperature", "BIGINT"),
            ],
            samples.len(),
        ) + "INSERT INTO telemetry_history
               (device, minute, cpu_tenths, load1_hundredths, memory_used_mb, disk_free_mb, temperature_tenths)
             SELECT v.device, v.minute, v.cpu, v.load1, v.memory, v.disk, v.temperature FROM v
             WHERE EXISTS (SELECT 1 FROM devices WHERE id = v.device)
             ON CONFLICT (device, minute) DO UPDATE SET
               cpu_tenths = excluded.cpu_tenths, load1_hundredths = excluded.load1_hundredths,
               memory_used_mb = excluded.memory_used_mb, disk_free_mb = excluded.disk_free_mb,
               temperature_tenths = excluded.temperature_tenths";
        self.write(|tx| {
            tx.execute(&latest_sql, &latest)?;
            tx.execute(&history_sql, &history)?;
            Ok(())
        })
    }

    /// The devices with telemetry, for /metrics: at most `limit` (by id),
    /// and how many were left out.
    pub fn device_gauges(&self, limit: usize) -> Result<DeviceGauges> {
        self.read(|tx| {
            let total: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM devices WHERE telemetry IS NOT NULL",
                    params![],
                )?
                .get(0)?;
            let devices = tx
                .query(
                    "SELECT id, swarm, offline_since IS NULL, telemetry FROM devices
                     WHERE telemetry IS NOT NULL ORDER BY id LIMIT $1",
                    params![limit as i64],
                )?
                .iter()
                .map(|r| {
                    Ok(DeviceGauge {
                        device: r.get(0)?,
                        swarm: r.get(1)?,
                        online: r.get(2)?,
                        telemetry: super::from_json(&r.get::<String>(3)?)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(DeviceGauges {
                left_out: (total as usize).saturating_sub(devices.len()),
                devices,
            })
        })
    }

    /// When a raft leader last reported its services and a device its
    /// telemetry: the dashboard's pages refresh when either moves (those
    /// are not events).
    pub fn live_marks(&self) -> Result<(i64, i64)> {
        self.read(|tx| {
            let observed: Option<i64> = tx
                .query_one("SELECT MAX(at) FROM observed", params![])?
                .get(0)?;
            let telemetry: Option<i64> = tx
                .query_one("SELECT MAX(telemetry_at) FROM devices", params![])?
                .get(0)?;
            Ok((observed.unwrap_or(0), telemetry.unwrap_or(0)))
        })
    }

    /// The last hour of CPU use of each of `devices`, one value a minute
    /// (None for a minute without a sample), oldest first: the devices
    /// list's sparklines, one query for a page.
    pub fn cpu_last_hour(
        &self,
        devices: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<Option<f64>>>> {
        let mut out: std::collections::HashMap<String, Vec<Option<f64>>> = devices
            .iter()
            .map(|d| (d.to_string(), vec![None; 60]))
            .collect();
        if devices.is_empty() {
            return Ok(out);
        }
        let now = now();
        let first = now - now.rem_euclid(60) - 59 * 60;
        let placeholders: Vec<String> = (0..devices.len()).map(|i| format!("${}", i + 2)).collect();
        let mut values = vec![crate::db::Value::from(first)];
        values.extend(devices.iter().map(|d| crate::db::Value::from(*d)));
        self.read(|tx| {
            for r in tx
                .query(
                    &format!(
                        "SELECT device, minute, cpu_tenths FROM telemetry_history
                         WHERE minute >= $1 AND device IN ({})",
                        placeholders.join(", ")
                    ),
                    &values,
                )?
                .iter()
            {
                let (device, minute): (String, i64) = (r.get(0)?, r.get(1)?);
                let cpu: Option<i64> = r.get(2)?;
                let slot = ((minute - first) / 60) as usize;
                if let Some(line) = out.get_mut(&device) {
                    if slot < 60 {
                        line[slot] = cpu.map(|c| c as f64 / 10.0);
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A device's latest sample and its history, oldest first.
    pub fn telemetry(&self, device: &str) -> Result<TelemetryView> {
        self.read(|tx| {
            let view = super::devices::device_view(tx, device)?;
            let latest_at: Option<i64> = tx
                .query_one(
                    "SELECT telemetry_at FROM devices WHERE id = $1",
                    params![device],
                )?
                .get(0)?;
            let history = tx
                .query(
                    "SELECT minute, cpu_tenths, load1_hundredths, memory_used_mb, disk_free_mb, temperature_tenths
                     FROM telemetry_history WHERE device = $1 AND minute >= $2 ORDER BY minute",
                    params![device, now() - self.retention.telemetry_secs],
                )?
                .iter()
                .map(|r| {
                    let tenths = |v: Option<i64>| v.map(|v| v as f64 / 10.0);
                    Ok(TelemetryPoint {
                        at: r.get(0)?,
                        cpu_percent: tenths(r.get(1)?),
                        load1: r.get::<Option<i64>>(2)?.map(|v| v as f64 / 100.0),
                        memory_used_mb: r.get::<Option<i64>>(3)?.map(|v| v as u64),
                        disk_free_mb: r.get::<Option<i64>>(4)?.map(|v| v as u64),
                        temperature_c: tenths(r.get(5)?),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(TelemetryView {
                device: device.to_string(),
                latest: view.telemetry,
                latest_at,
                history,
            })
        })
    }
}
