//! Telemetry and offline detection at the server (a real process over real
//! HTTP; rerun on PostgreSQL by scripts/test): samples in reports become
//! the device's latest values and a minute of history; out-of-range
//! values are refused by name; a device silent for three of its report
//! intervals turns offline (an event, first in the status), and online
//! again when it reports (an event).

use anyhow::{ensure, Context, Result};
use fogswarm_client::Client;
use fogswarm_e2e::eventually;
use fogswarm_e2e::server::ServerProcess;
use fogswarm_protocol::api::*;
use fogswarm_protocol::telemetry::Telemetry;
use fogswarm_protocol::validate::Role;

const D: &str = "02:fd:00:00:00:01";
const QUIET: &str = "02:fd:00:00:00:02";

fn sample(cpu: f64) -> Telemetry {
    Telemetry {
        cpu_percent: Some(cpu),
        load: Some([0.25, 0.5, 0.75]),
        memory_used_mb: Some(700),
        memory_total_mb: Some(3900),
        disk_free_mb: Some(12_000),
        disk_total_mb: Some(30_000),
        temperature_c: Some(47.5),
        uptime_secs: Some(4000),
        containers_running: Some(2),
    }
}

async fn report(client: &Client, telemetry: Telemetry, heartbeat: u64) -> Result<()> {
    client
        .report(&ReportRequest {
            state: Some(DeviceState::Waiting),
            telemetry: Some(telemetry),
            heartbeat_secs: Some(heartbeat),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn events_of(admin: &Client, device: &str) -> Result<Vec<String>> {
    Ok(admin
        .events(0, 500, Some(device))
        .await?
        .into_iter()
        .map(|e| e.action)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_kept_and_silent_devices_go_offline_and_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--metrics-device-limit", "1"])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(&admin, "tele", &[(D, Role::Leader), (QUIET, Role::Worker)])
        .await?;
    let device = server.enrol(D, &[]).await?.0;
    let quiet = server.enrol(QUIET, &[]).await?.0;

    // Out of range: refused naming the field; nothing kept.
    let err = report(&device, sample(150.0), 1)
        .await
        .expect_err("cpu 150%");
    ensure!(err.to_string().contains("telemetry.cpu_percent"), "{err}");
    let bad = Telemetry {
        memory_used_mb: Some(5000),
        ..sample(10.0)
    };
    let err = report(&device, bad, 1).await.expect_err("used > total");
    ensure!(
        err.to_string().contains("telemetry.memory_used_mb"),
        "{err}"
    );

    // Kept: the latest on the device, a point of history for its minute.
    report(&device, sample(12.5), 1).await?;
    report(&quiet, sample(3.0), 1).await?;
    let view = eventually(15, || async {
        let view = admin.device_telemetry(D).await?;
        ensure!(
            view.latest.is_some() && !view.history.is_empty(),
            "{view:?}"
        );
        Ok(view)
    })
    .await?;
    ensure!(view.latest == Some(sample(12.5)), "{:?}", view.latest);
    let point = view.history.last().context("a point")?;
    ensure!(
        point.cpu_percent == Some(12.5)
            && point.memory_used_mb == Some(700)
            && point.temperature_c == Some(47.5)
            && point.load1 == Some(0.25)
            && point.at % 60 == 0,
        "{point:?}"
    );
    let shown = admin.get_device(D).await?;
    ensure!(
        shown.telemetry == Some(sample(12.5)) && shown.heartbeat_secs == Some(1),
        "{shown:?}"
    );

    // The quiet device stops reporting (heartbeat 1 s): offline within
    // three intervals and a presence check; the other keeps reporting.
    let offline = eventually(20, || async {
        report(&device, sample(20.0), 1).await?;
        let status = admin.status().await?;
        ensure!(
            status
                .offline
                .iter()
                .map(|o| o.device.as_str())
                .collect::<Vec<_>>()
                == [QUIET],
            "{:?}",
            status.offline
        );
        Ok(status)
    })
    .await?;
    ensure!(offline.offline[0].swarm == "tele");
    // /metrics: per-device series for the first device only (the limit),
    // the other counted as left out.
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    let series = format!("{{device=\"{D}\",swarm=\"tele\"}}");
    for line in [
        format!("fogswarm_device_online{series} 1"),
        format!(
            "fogswarm_device_memory_used_bytes{series} {}",
            700 * 1024 * 1024
        ),
        format!("fogswarm_device_temperature_celsius{series} 47.5"),
        "fogswarm_device_series_left_out 1".to_string(),
    ] {
        ensure!(metrics.contains(&line), "no {line} in:\n{metrics}");
    }
    ensure!(!metrics.contains(QUIET), "{metrics}");
    ensure!(admin.get_device(QUIET).await?.offline_since.is_some());
    ensure!(events_of(&admin, QUIET)
        .await?
        .contains(&"device.offline".to_string()));
    ensure!(admin.get_device(D).await?.offline_since.is_none());

    // It reports again: online, with an event.
    eventually(15, || async {
        report(&quiet, sample(4.0), 1).await?;
        let q = admin.get_device(QUIET).await?;
        ensure!(
            q.offline_since.is_none(),
            "{q:?} {:?}",
            admin.events(0, 50, Some(QUIET)).await?
        );
        let actions = events_of(&admin, QUIET).await?;
        ensure!(
            actions.iter().filter(|a| *a == "device.online").count() == 1,
            "{actions:?}"
        );
        Ok(())
    })
    .await?;
    ensure!(admin.status().await?.offline.is_empty());
    // The newest sample wins within a minute.
    let latest = admin.device_telemetry(D).await?;
    ensure!(
        latest.latest.as_ref().and_then(|t| t.cpu_percent) == Some(20.0),
        "{latest:?}"
    );
    Ok(())
}

/// `device logs` at the server: the request reaches only its device (in
/// its config answer, not in the swarm's desired state), only that device
/// may answer it, and the reader pages through the lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_log_requests_reach_their_device_only() -> Result<()> {
    use fogswarm_client::LogSource;
    use fogswarm_protocol::logs::{LogChunk, LogOptions};
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(&admin, "talk", &[(D, Role::Leader), (QUIET, Role::Worker)])
        .await?;
    let device = server.enrol(D, &[]).await?.0;
    let other = server.enrol(QUIET, &[]).await?.0;
    let source = LogSource::Agent {
        device: QUIET.into(),
    };
    let bad = admin
        .open_logs(
            &source,
            &LogOptions {
                since: Some("10m".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("since");
    ensure!(
        bad.status() == Some(422) && bad.to_string().contains("since"),
        "{bad}"
    );
    let opened = admin
        .open_logs(
            &source,
            &LogOptions {
                tail: Some(2),
                ..Default::default()
            },
        )
        .await?;
    // Its device sees it; the other does not, nor does the swarm's
    // desired state (service log requests only).
    let requests = |answer: ConfigAnswer| match answer {
        ConfigAnswer::Join { agent_logs, .. } => agent_logs,
        _ => vec![],
    };
    let d_answer = device.config().await?;
    let initialized = matches!(d_answer, ConfigAnswer::Init { .. });
    ensure!(requests(d_answer).is_empty());
    if initialized {
        device
            .post_swarm_tokens(&SwarmTokens {
                cluster_id: "c-talk".into(),
                manager_addrs: vec!["10.213.9.2:2377".into()],
                worker_token: Secret::new("SWMTKN-1-talk-worker"),
                manager_token: Secret::new("SWMTKN-1-talk-manager"),
                generation: 0,
            })
            .await?;
    }
    let mine = requests(other.config().await?);
    ensure!(
        mine.len() == 1 && mine[0].id == opened.id && mine[0].options.tail == Some(2),
        "{mine:?}"
    );
    ensure!(requests(device.config().await?).is_empty());
    ensure!(device.desired(None, 0).await?.log_requests.is_empty());

    // Only that device answers.
    let chunk = LogChunk {
        lines: vec!["INFO agent: one".into(), "INFO agent: two".into()],
        done: true,
        error: None,
    };
    let refused = device
        .post_log_chunk(&opened.id, &chunk)
        .await
        .expect_err("another device");
    ensure!(refused.status() == Some(403), "{refused}");
    other.post_log_chunk(&opened.id, &chunk).await?;
    let page = admin.read_logs(&source, &opened.id, 0).await?;
    ensure!(
        page.lines == ["INFO agent: one", "INFO agent: two"] && page.done,
        "{page:?}"
    );
    // Read through another device's path: not found.
    let elsewhere = LogSource::Agent { device: D.into() };
    let gone = admin
        .read_logs(&elsewhere, &opened.id, 0)
        .await
        .expect_err("wrong device");
    ensure!(gone.status() == Some(410), "{gone}");
    admin.close_logs(&source, &opened.id).await?;
    ensure!(requests(other.config().await?).is_empty());
    Ok(())
}
