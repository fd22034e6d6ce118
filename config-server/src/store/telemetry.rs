//! Device telemetry: each device's latest sample and a day of history at
//! one value a minute. Like last-seen times (see `presence`), samples are
//! soft state: noted in memory as reports arrive and written for all
//! devices at once every few seconds, so a fleet's heartbeats do not each
//! cost a durable write.
//!
//! Shaped for 100,000 devices: the latest sample lives in a narrow table
//! of its own (`device_telemetry`), not in the wide `devices` row a flush
//! would rewrite; the history is one row per device and hour
//! (`telemetry_hours`), each minute an entry appended to its `minutes`
//! text ([`HourEntry`]), at most one a minute (the latest sample's row
//! says which minute the history last took). History is pruned by whole
//! hours past its retention (see `retention`).

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

    /// One chunk of samples: their minutes appended to the history (for
    /// devices whose history has not taken that minute yet), then the
    /// latest samples, each one statement. (Devices are found by key from
    /// the chunk's VALUES table; see `flush_presence` for why not a join.)
    fn write_telemetry(&self, samples: &[(&String, &(i64, Telemetry))]) -> Result<()> {
        let mut latest = Vec::with_capacity(samples.len() * 4);
        let mut history = Vec::with_capacity(samples.len() * 4);
        for &(device, (at, t)) in samples {
            let minute = at - at.rem_euclid(60);
            latest.extend([
                Value::from(device),
                Value::from(super::json_of(t)),
                Value::from(*at),
                Value::from(minute),
            ]);
            history.extend([
                Value::from(device),
                Value::from(minute - minute.rem_euclid(3600)),
                Value::from(minute),
                Value::from(HourEntry::of(minute, t).to_string()),
            ]);
        }
        let history_sql = values_cte(
            &[
                ("device", "TEXT"),
                ("hour", "BIGINT"),
                ("minute", "BIGINT"),
                ("entry", "TEXT"),
            ],
            samples.len(),
        ) + "INSERT INTO telemetry_hours (device, hour, minutes)
             SELECT v.device, v.hour, v.entry FROM v
               LEFT JOIN device_telemetry t ON t.device = v.device
             WHERE (t.minute IS NULL OR t.minute < v.minute)
               AND EXISTS (SELECT 1 FROM devices WHERE id = v.device)
             ON CONFLICT (device, hour) DO UPDATE
               SET minutes = telemetry_hours.minutes || excluded.minutes";
        let latest_sql = values_cte(
            &[
                ("device", "TEXT"),
                ("sample", "TEXT"),
                ("at", "BIGINT"),
                ("minute", "BIGINT"),
            ],
            samples.len(),
        ) + "INSERT INTO device_telemetry (device, sample, at, minute)
             SELECT v.device, v.sample, v.at, v.minute FROM v
             WHERE EXISTS (SELECT 1 FROM devices WHERE id = v.device)
             ON CONFLICT (device) DO UPDATE SET sample = excluded.sample, at = excluded.at,
               minute = CASE WHEN excluded.minute > device_telemetry.minute
                             THEN excluded.minute ELSE device_telemetry.minute END";
        self.write(|tx| {
            tx.execute(&history_sql, &history)?;
            tx.execute(&latest_sql, &latest)?;
            Ok(())
        })
    }

    /// The devices with telemetry, for /metrics: at most `limit` (by id),
    /// and how many were left out.
    pub fn device_gauges(&self, limit: usize) -> Result<DeviceGauges> {
        self.read(|tx| {
            let total: i64 = tx
                .query_one("SELECT COUNT(*) FROM device_telemetry", params![])?
                .get(0)?;
            let devices = tx
                .query(
                    "SELECT d.id, d.swarm, d.offline_since IS NULL, t.sample
                     FROM device_telemetry t JOIN devices d ON d.id = t.device
                     ORDER BY t.device LIMIT $1",
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
                .query_one("SELECT MAX(at) FROM device_telemetry", params![])?
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
        let mut values = vec![Value::from(first - first.rem_euclid(3600))];
        values.extend(devices.iter().map(|d| Value::from(*d)));
        self.read(|tx| {
            for r in tx
                .query(
                    &format!(
                        "SELECT device, hour, minutes FROM telemetry_hours
                         WHERE hour >= $1 AND device IN ({})",
                        placeholders.join(", ")
                    ),
                    &values,
                )?
                .iter()
            {
                let device: String = r.get(0)?;
                let Some(line) = out.get_mut(&device) else {
                    continue;
                };
                for entry in HourEntry::parse_all(r.get(1)?, &r.get::<String>(2)?) {
                    if entry.minute >= first && entry.minute < first + 3600 {
                        line[((entry.minute - first) / 60) as usize] = entry.point().cpu_percent;
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
                .query_opt(
                    "SELECT at FROM device_telemetry WHERE device = $1",
                    params![device],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            let since = now() - self.retention.telemetry_secs;
            let mut history: Vec<TelemetryPoint> = Vec::new();
            for r in tx
                .query(
                    "SELECT hour, minutes FROM telemetry_hours
                     WHERE device = $1 AND hour >= $2 ORDER BY hour",
                    params![device, since - since.rem_euclid(3600)],
                )?
                .iter()
            {
                history.extend(
                    HourEntry::parse_all(r.get(0)?, &r.get::<String>(1)?)
                        .into_iter()
                        .filter(|e| e.minute >= since)
                        .map(|e| e.point()),
                );
            }
            Ok(TelemetryView {
                device: device.to_string(),
                latest: view.telemetry,
                latest_at,
                history,
            })
        })
    }
}

/// Deletes a removed device's telemetry, latest and history.
pub(super) fn forget_telemetry(tx: &crate::db::Tx<'_>, device: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM device_telemetry WHERE device = $1",
        params![device],
    )?;
    tx.execute(
        "DELETE FROM telemetry_hours WHERE device = $1",
        params![device],
    )?;
    Ok(())
}

/// One minute of a device's history as its hour's row keeps it:
/// `M,cpu,load,memory,disk,temperature;` with M the minute of the hour
/// (0-59), the values as integers (tenths of a percent and of a degree,
/// hundredths of load, MB), empty when the sample had none. Both databases
/// append text alike; a few bytes a minute against a row (and its index
/// entries) a minute before.
#[derive(Debug, Clone, PartialEq)]
struct HourEntry {
    /// Unix seconds at the start of the minute.
    minute: i64,
    cpu_tenths: Option<i64>,
    load1_hundredths: Option<i64>,
    memory_used_mb: Option<i64>,
    disk_free_mb: Option<i64>,
    temperature_tenths: Option<i64>,
}

impl HourEntry {
    fn of(minute: i64, t: &Telemetry) -> HourEntry {
        HourEntry {
            minute,
            cpu_tenths: scaled(t.cpu_percent, 10.0),
            load1_hundredths: scaled(t.load.map(|l| l[0]), 100.0),
            memory_used_mb: t.memory_used_mb.map(|m| m as i64),
            disk_free_mb: t.disk_free_mb.map(|m| m as i64),
            temperature_tenths: scaled(t.temperature_c, 10.0),
        }
    }

    /// The entries of an hour's row, oldest first, one a minute (the last
    /// written wins should a minute appear twice, as two replicas could
    /// write it). Entries that do not parse (none are written so) are
    /// skipped rather than failing the device's whole history.
    fn parse_all(hour: i64, minutes: &str) -> Vec<HourEntry> {
        let mut by_minute = std::collections::BTreeMap::new();
        for text in minutes.split(';').filter(|e| !e.is_empty()) {
            if let Some(entry) = HourEntry::parse(hour, text) {
                by_minute.insert(entry.minute, entry);
            }
        }
        by_minute.into_values().collect()
    }

    fn parse(hour: i64, text: &str) -> Option<HourEntry> {
        let mut fields = text.split(',');
        let of_hour: i64 = fields.next()?.parse().ok()?;
        if !(0..60).contains(&of_hour) {
            return None;
        }
        let mut value = || -> Option<Option<i64>> {
            match fields.next()? {
                "" => Some(None),
                v => v.parse().ok().map(Some),
            }
        };
        let entry = HourEntry {
            minute: hour + of_hour * 60,
            cpu_tenths: value()?,
            load1_hundredths: value()?,
            memory_used_mb: value()?,
            disk_free_mb: value()?,
            temperature_tenths: value()?,
        };
        Some(entry)
    }

    fn point(&self) -> TelemetryPoint {
        let tenths = |v: Option<i64>| v.map(|v| v as f64 / 10.0);
        TelemetryPoint {
            at: self.minute,
            cpu_percent: tenths(self.cpu_tenths),
            load1: self.load1_hundredths.map(|v| v as f64 / 100.0),
            memory_used_mb: self.memory_used_mb.map(|v| v as u64),
            disk_free_mb: self.disk_free_mb.map(|v| v as u64),
            temperature_c: tenths(self.temperature_tenths),
        }
    }
}

impl std::fmt::Display for HourEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        write!(
            f,
            "{},{},{},{},{},{};",
            self.minute.rem_euclid(3600) / 60,
            v(self.cpu_tenths),
            v(self.load1_hundredths),
            v(self.memory_used_mb),
            v(self.disk_free_mb),
            v(self.temperature_tenths)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: f64) -> Telemetry {
        Telemetry {
            cpu_percent: Some(cpu),
            load: Some([0.25, 0.5, 1.0]),
            memory_used_mb: Some(300),
            temperature_c: Some(48.5),
            ..Telemetry::default()
        }
    }

    /// An entry reads back as written, missing values stay missing, and
    /// the minute comes back from the hour's start.
    #[test]
    fn hour_entries_read_back_as_written() {
        let hour = 500_000 * 3600;
        let full = HourEntry::of(hour + 59 * 60, &sample(12.3));
        let sparse = HourEntry::of(hour, &Telemetry::default());
        let row = format!("{full}{sparse}");
        assert_eq!(row, "59,123,25,300,,485;0,,,,,;");
        assert_eq!(HourEntry::parse_all(hour, &row), [sparse, full.clone()]);
        let point = full.point();
        assert_eq!(point.at, hour + 59 * 60);
        assert_eq!(point.cpu_percent, Some(12.3));
        assert_eq!(point.load1, Some(0.25));
        assert_eq!(point.disk_free_mb, None);
        assert_eq!(point.temperature_c, Some(48.5));
    }

    /// A minute written twice keeps the later entry; what does not parse
    /// (a cut row, a minute past the hour) is skipped, not fatal.
    #[test]
    fn repeated_minutes_and_damaged_entries() {
        let hour = 3600 * 10;
        let row = format!(
            "{}{}61,1,,,,;x;5,1,2;{}",
            HourEntry::of(hour + 300, &sample(1.0)),
            HourEntry::of(hour + 300, &sample(2.0)),
            HourEntry::of(hour + 60, &sample(3.0)),
        );
        let entries = HourEntry::parse_all(hour, &row);
        let cpu: Vec<_> = entries.iter().map(|e| (e.minute, e.cpu_tenths)).collect();
        assert_eq!(cpu, [(hour + 60, Some(30)), (hour + 300, Some(20))]);
    }
}
