//! Prometheus counters, rendered in the text exposition format. A handful
//! of counters do not need a metrics framework: a mutex-guarded map each.

use crate::store::{DeviceGauge, DeviceGauges};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    enrolments: Mutex<BTreeMap<&'static str, u64>>,
    lease_grants: AtomicU64,
}

impl Metrics {
    /// One request, by method, route template and status.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
    }

    /// One enrolment attempt, by result.
    pub fn enrolment(&self, result: &'static str) {
        *self
            .enrolments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(result)
            .or_default() += 1;
    }

    pub fn lease_grant(&self) {
        self.lease_grants.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `devices_by_state` and `devices` come from
    /// the store at scrape time, so they are never stale.
    pub fn render(&self, devices_by_state: &[(String, u64)], devices: &DeviceGauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fogswarm_http_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(out, "# TYPE fogswarm_http_requests_total counter");
        for ((method, route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "fogswarm_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(out, "# HELP fogswarm_devices Devices by state.");
        let _ = writeln!(out, "# TYPE fogswarm_devices gauge");
        for (state, n) in devices_by_state {
            let _ = writeln!(out, "fogswarm_devices{{state=\"{}\"}} {n}", escape(state));
        }
        let _ = writeln!(
            out,
            "# HELP fogswarm_enrolments_total Enrolment attempts by result."
        );
        let _ = writeln!(out, "# TYPE fogswarm_enrolments_total counter");
        for (result, n) in self
            .enrolments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "fogswarm_enrolments_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP fogswarm_lease_grants_total Leader leases granted (swarm inits)."
        );
        let _ = writeln!(out, "# TYPE fogswarm_lease_grants_total counter");
        let _ = writeln!(
            out,
            "fogswarm_lease_grants_total {}",
            self.lease_grants.load(Ordering::Relaxed)
        );
        render_devices(&mut out, devices);
        out
    }
}

/// Per-device gauges from each device's latest telemetry, one family at a
/// time as the format wants; a value a device did not send is left out.
fn render_devices(out: &mut String, gauges: &DeviceGauges) {
    type Pick = fn(&DeviceGauge) -> Option<f64>;
    const MIB: f64 = 1024.0 * 1024.0;
    let families: [(&str, &str, Pick); 8] = [
        (
            "online",
            "1 while the device reports, 0 once offline.",
            |g| Some(if g.online { 1.0 } else { 0.0 }),
        ),
        ("cpu_percent", "CPU busy share, 0-100.", |g| {
            g.telemetry.cpu_percent
        }),
        ("load1", "Load average over one minute.", |g| {
            g.telemetry.load.map(|l| l[0])
        }),
        (
            "memory_used_bytes",
            "Memory in use (total minus available).",
            |g| g.telemetry.memory_used_mb.map(|m| m as f64 * MIB),
        ),
        ("memory_total_bytes", "Memory in all.", |g| {
            g.telemetry.memory_total_mb.map(|m| m as f64 * MIB)
        }),
        (
            "disk_free_bytes",
            "Free space where the engine keeps its data.",
            |g| g.telemetry.disk_free_mb.map(|m| m as f64 * MIB),
        ),
        ("temperature_celsius", "The hottest thermal zone.", |g| {
            g.telemetry.temperature_c
        }),
        ("containers_running", "Containers the engine runs.", |g| {
            g.telemetry.containers_running.map(|c| c as f64)
        }),
    ];
    for (name, help, pick) in families {
        let _ = writeln!(out, "# HELP fogswarm_device_{name} {help}");
        let _ = writeln!(out, "# TYPE fogswarm_device_{name} gauge");
        for g in &gauges.devices {
            if let Some(v) = pick(g) {
                let _ = writeln!(
                    out,
                    "fogswarm_device_{name}{{device=\"{}\",swarm=\"{}\"}} {v}",
                    escape(&g.device),
                    escape(&g.swarm)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP fogswarm_device_series_left_out Devices without per-device series (over --metrics-device-limit)."
    );
    let _ = writeln!(out, "# TYPE fogswarm_device_series_left_out gauge");
    let _ = writeln!(out, "fogswarm_device_series_left_out {}", gauges.left_out);
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exposition_text() {
        let m = Metrics::default();
        m.request("GET", "/v1/config", 200);
        m.request("GET", "/v1/config", 200);
        m.enrolment("accepted");
        m.lease_grant();
        let gauges = DeviceGauges {
            devices: vec![DeviceGauge {
                device: "02:00:00:00:00:01".into(),
                swarm: "fog".into(),
                online: false,
                telemetry: fogswarm_protocol::telemetry::Telemetry {
                    memory_used_mb: Some(2),
                    temperature_c: Some(47.5),
                    ..Default::default()
                },
            }],
            left_out: 4,
        };
        let text = m.render(&[("active".into(), 3)], &gauges);
        assert!(text.contains("fogswarm_http_requests_total{method=\"GET\",route=\"/v1/config\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("fogswarm_devices{state=\"active\"} 3"));
        assert!(text.contains("fogswarm_enrolments_total{result=\"accepted\"} 1"));
        assert!(text.contains("fogswarm_lease_grants_total 1"));
        let series = "{device=\"02:00:00:00:00:01\",swarm=\"fog\"}";
        assert!(
            text.contains(&format!("fogswarm_device_online{series} 0")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "fogswarm_device_memory_used_bytes{series} 2097152"
        )));
        assert!(text.contains(&format!("fogswarm_device_temperature_celsius{series} 47.5")));
        assert!(
            !text.contains("fogswarm_device_cpu_percent{"),
            "not sent, not shown"
        );
        assert!(text.contains("fogswarm_device_series_left_out 4"));
    }
}
