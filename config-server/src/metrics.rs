//! Prometheus counters and histograms, rendered in the text exposition
//! format. A handful of series do not need a metrics framework: a
//! mutex-guarded map each.

use crate::db::CommitStats;
use crate::store::{DeviceGauge, DeviceGauges, FleetHealth};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Request latency buckets, in seconds: a config answer takes about a
/// millisecond, a long poll up to a minute.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

/// One route's latencies: counts per bucket (not cumulative), the sum.
#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    enrolments: Mutex<BTreeMap<&'static str, u64>>,
    lease_grants: AtomicU64,
}

impl Metrics {
    /// One request, by method, route template and status, and how long
    /// it took.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        drop(map);
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = map
            .entry((method.to_string(), route.to_string()))
            .or_default();
        let bucket = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        histogram.counts[bucket] += 1;
        histogram.sum += seconds;
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

    /// The exposition text; `health`, `devices_by_state` and `devices`
    /// come from the store at scrape time, so they are never stale.
    pub fn render(
        &self,
        health: &FleetHealth,
        devices_by_state: &[(String, u64)],
        devices: &DeviceGauges,
        commits: &CommitStats,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fogswarm_build_info The server's version (the value is always 1)."
        );
        let _ = writeln!(out, "# TYPE fogswarm_build_info gauge");
        let _ = writeln!(
            out,
            "fogswarm_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            fogswarm_protocol::version::PROTOCOL
        );
        render_health(&mut out, health);
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
        let _ = writeln!(
            out,
            "# HELP fogswarm_http_request_duration_seconds HTTP request latency by method and route."
        );
        let _ = writeln!(
            out,
            "# TYPE fogswarm_http_request_duration_seconds histogram"
        );
        for ((method, route), h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(h.counts.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "fogswarm_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += h.counts[BUCKETS.len()];
            let _ = writeln!(
                out,
                "fogswarm_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "fogswarm_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "fogswarm_http_request_duration_seconds_count{{{labels}}} {cumulative}"
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
        let _ = writeln!(
            out,
            "# HELP fogswarm_db_commits_total Write transactions this replica committed (writes arriving together share one)."
        );
        let _ = writeln!(out, "# TYPE fogswarm_db_commits_total counter");
        let _ = writeln!(out, "fogswarm_db_commits_total {}", commits.commits);
        let _ = writeln!(
            out,
            "# HELP fogswarm_db_writes_total Writes those commits held."
        );
        let _ = writeln!(out, "# TYPE fogswarm_db_writes_total counter");
        let _ = writeln!(out, "fogswarm_db_writes_total {}", commits.writes);
        out
    }
}

/// The database, the replicas, and each swarm's quorum and agent rollout:
/// what the alert rules under deploy/monitoring watch.
fn render_health(out: &mut String, health: &FleetHealth) {
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP fogswarm_{name} {help}");
        let _ = writeln!(out, "# TYPE fogswarm_{name} gauge");
    };
    gauge(
        out,
        "replica_ready",
        "1 while this replica's last check-in wrote to the database (as /readyz).",
    );
    let _ = writeln!(out, "fogswarm_replica_ready {}", u8::from(health.ready));
    gauge(
        out,
        "replicas",
        "Replicas that checked in lately, by version.",
    );
    for (version, n) in &health.replicas {
        let _ = writeln!(
            out,
            "fogswarm_replicas{{version=\"{}\"}} {n}",
            escape(version)
        );
    }
    gauge(
        out,
        "swarm_quorum_lost",
        "1 while a swarm's managers report no raft quorum.",
    );
    for swarm in &health.swarms {
        let _ = writeln!(
            out,
            "fogswarm_swarm_quorum_lost{{swarm=\"{}\"}} {}",
            escape(&swarm.name),
            u8::from(swarm.quorum_lost_at.is_some())
        );
    }
    gauge(
        out,
        "swarm_rollout_wave_seconds",
        "How long a running agent rollout's current wave has run.",
    );
    for swarm in &health.swarms {
        if let Some(secs) = swarm.rollout_wave_secs {
            let _ = writeln!(
                out,
                "fogswarm_swarm_rollout_wave_seconds{{swarm=\"{}\"}} {secs}",
                escape(&swarm.name)
            );
        }
    }
    gauge(
        out,
        "swarm_rollout_failed",
        "1 when a swarm's last agent rollout stopped on a failure.",
    );
    for swarm in &health.swarms {
        let _ = writeln!(
            out,
            "fogswarm_swarm_rollout_failed{{swarm=\"{}\"}} {}",
            escape(&swarm.name),
            u8::from(swarm.rollout_failed)
        );
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
        m.request("GET", "/v1/config", 200, 0.0007);
        m.request("GET", "/v1/config", 200, 0.2);
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
        let health = FleetHealth {
            ready: true,
            replicas: vec![("0.1.0".into(), 2)],
            swarms: vec![crate::store::SwarmHealth {
                name: "fog".into(),
                quorum_lost_at: Some(5),
                rollout_wave_secs: None,
                rollout_failed: false,
            }],
        };
        let commits = CommitStats {
            commits: 4,
            writes: 9,
        };
        let text = m.render(&health, &[("active".into(), 3)], &gauges, &commits);
        assert!(text.contains("\nfogswarm_db_commits_total 4\n"), "{text}");
        assert!(text.contains("\nfogswarm_db_writes_total 9\n"), "{text}");
        let latency =
            "fogswarm_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/config\"";
        assert!(
            text.contains(&format!("{latency},le=\"0.001\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{latency},le=\"0.1\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{latency},le=\"0.25\"}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{latency},le=\"+Inf\"}} 2")),
            "{text}"
        );
        assert!(text.contains(
            "fogswarm_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/config\"} 2"
        ));
        assert!(text.contains("fogswarm_replica_ready 1"));
        assert!(text.contains("fogswarm_replicas{version=\"0.1.0\"} 2"));
        assert!(text.contains("fogswarm_swarm_quorum_lost{swarm=\"fog\"} 1"));
        assert!(text.contains("fogswarm_build_info{version="));
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
