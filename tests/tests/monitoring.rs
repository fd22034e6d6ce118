//! The monitoring kit under deploy/monitoring, judged by Prometheus's own
//! tools: `promtool` checks the configuration and the alert rules and runs
//! their unit tests; Debian's real Prometheus scrapes a real server with
//! the kit's configuration and answers a query for a device's telemetry;
//! every series the rules and the Grafana dashboard name is one the server
//! serves.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::eventually;
use fogswarm_e2e::prometheus::{kit, Prometheus};
use fogswarm_e2e::server::{declare, ServerProcess};
use fogswarm_protocol::api::{DeviceState, ReportRequest};
use fogswarm_protocol::telemetry::Telemetry;
use fogswarm_protocol::validate::Role;
use std::collections::BTreeSet;
use std::process::Command;

const D: &str = "02:f7:00:00:00:01";

fn promtool(args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(kit())
        .output()
        .context("running promtool (apt-get install prometheus; scripts/test does)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?}: {text}");
    Ok(text)
}

/// Every `fogswarm_*` series name in `text`.
fn series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fogswarm_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn promtool_passes_the_config_and_the_alert_rules_and_their_tests() -> Result<()> {
    let out = promtool(&["check", "config", "prometheus.yml"])?;
    ensure!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "rules", "alerts.yml"])?;
    ensure!(out.contains("SUCCESS: 7 rules found"), "{out}");
    promtool(&["test", "rules", "alerts_test.yml"])?;
    // A broken rule file is refused: promtool is really judging.
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(kit().join("alerts.yml"))?.replace("== 0", "== == 0"),
    )?;
    ensure!(promtool(&["check", "rules", &broken.display().to_string()]).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_server_with_the_kit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "watched", &[(D, Role::Leader)]).await?;
    let (device, _) = server.enrol(D, &[]).await?;
    device
        .report(&ReportRequest {
            state: Some(DeviceState::Waiting),
            telemetry: Some(Telemetry {
                cpu_percent: Some(42.5),
                temperature_c: Some(51.0),
                ..Default::default()
            }),
            heartbeat_secs: Some(5),
            ..Default::default()
        })
        .await?;

    // The series the rules and the dashboard name are all served.
    let (status, metrics) = server.raw_get("/metrics").await?;
    ensure!(status == 200);
    let served = series_names(&metrics);
    let mut named = series_names(&std::fs::read_to_string(kit().join("alerts.yml"))?);
    named.extend(series_names(&std::fs::read_to_string(
        kit().join("grafana-dashboard.json"),
    )?));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        kit().join("grafana-dashboard.json"),
    )?)?;
    ensure!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| p.len() >= 10));
    let missing: Vec<_> = named.difference(&served).collect();
    ensure!(missing.is_empty(), "named but not served: {missing:?}");

    // The kit's configuration, pointed at this server, scraping fast.
    let target = server
        .url
        .strip_prefix("http://")
        .context("plain HTTP server")?;
    let prometheus = Prometheus::start(dir.path(), target, None)?;
    let query = format!("fogswarm_device_cpu_percent{{device=\"{D}\",swarm=\"watched\"}}");
    let value = eventually(60, || async {
        prometheus.query(&query).await?.context("no sample yet")
    })
    .await
    .with_context(|| prometheus.log())?;
    ensure!(value == "42.5", "Prometheus has {value}");
    let rules = prometheus.get("rules").await?;
    let alerts: BTreeSet<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(
        alerts.contains("FogswarmDeviceOffline") && alerts.len() == 7,
        "{alerts:?}"
    );
    Ok(())
}
