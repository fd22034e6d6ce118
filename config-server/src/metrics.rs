//! Prometheus counters, rendered in the text exposition format. A handful
//! of counters do not need a metrics framework: a mutex-guarded map each.

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

    /// The exposition text; `devices_by_state` comes from the store at
    /// scrape time, so it is never stale.
    pub fn render(&self, devices_by_state: &[(String, u64)]) -> String {
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
        out
    }
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
        let text = m.render(&[("active".into(), 3)]);
        assert!(text.contains("fogswarm_http_requests_total{method=\"GET\",route=\"/v1/config\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("fogswarm_devices{state=\"active\"} 3"));
        assert!(text.contains("fogswarm_enrolments_total{result=\"accepted\"} 1"));
        assert!(text.contains("fogswarm_lease_grants_total 1"));
    }
}
