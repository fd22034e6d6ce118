//! What a device measures of itself and sends with each report: cheap to
//! read on a Raspberry Pi (a few files under /proc and /sys, one statvfs,
//! the engine's /info the agent asks anyway). Every value is optional: a
//! device without a thermal zone sends no temperature rather than a zero.

use serde::{Deserialize, Serialize};

/// One sample, as the agent sends it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// CPU busy share since the previous sample, 0-100 over all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Load averages over 1, 5 and 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<[f64; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mb: Option<u64>,
    /// Free space where the engine keeps its data (its `DockerRootDir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_mb: Option<u64>,
    /// The hottest thermal zone (the SoC on a single-board computer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_running: Option<u64>,
}

/// Bounds a sample must keep: anything outside is a broken probe or a
/// forged report, refused naming the field.
pub fn validate(t: &Telemetry) -> Result<(), (String, String)> {
    let bad = |field: &str, why: &str| Err((format!("telemetry.{field}"), why.to_string()));
    if t.cpu_percent.is_some_and(|c| !(0.0..=100.0).contains(&c)) {
        return bad("cpu_percent", "must be between 0 and 100");
    }
    if t.load
        .is_some_and(|l| l.iter().any(|v| !v.is_finite() || *v < 0.0 || *v > 1e6))
    {
        return bad("load", "must be three finite, non-negative numbers");
    }
    if t.temperature_c
        .is_some_and(|c| !(-100.0..=250.0).contains(&c))
    {
        return bad("temperature_c", "must be between -100 and 250");
    }
    if let (Some(used), Some(total)) = (t.memory_used_mb, t.memory_total_mb) {
        if used > total {
            return bad("memory_used_mb", "is more than memory_total_mb");
        }
    }
    if let (Some(free), Some(total)) = (t.disk_free_mb, t.disk_total_mb) {
        if free > total {
            return bad("disk_free_mb", "is more than disk_total_mb");
        }
    }
    Ok(())
}

/// One minute of a device's history, as the server keeps it (24 hours).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryPoint {
    /// Unix seconds at the start of the minute.
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
}

/// A device's latest sample and its history, oldest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryView {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Telemetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_at: Option<i64>,
    pub history: Vec<TelemetryPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_values_are_named() {
        assert!(validate(&Telemetry::default()).is_ok());
        let t = Telemetry {
            cpu_percent: Some(101.0),
            ..Default::default()
        };
        assert_eq!(
            validate(&t).expect_err("refused").0,
            "telemetry.cpu_percent"
        );
        let t = Telemetry {
            memory_used_mb: Some(10),
            memory_total_mb: Some(5),
            ..Default::default()
        };
        assert_eq!(
            validate(&t).expect_err("refused").0,
            "telemetry.memory_used_mb"
        );
        let t = Telemetry {
            load: Some([1.0, f64::NAN, 0.0]),
            ..Default::default()
        };
        assert_eq!(validate(&t).expect_err("refused").0, "telemetry.load");
    }
}
