//! Running the server for a year, as a real process over real HTTP (rerun
//! on PostgreSQL by scripts/test): the admin token rotated online and
//! offline, events and telemetry history pruned by age, `/readyz` beside
//! `/healthz`, the access log (who, never a secret) and the latency
//! histograms on `/metrics`.

use anyhow::{ensure, Context, Result};
use fogswarm_client::{Client, ClientError};
use fogswarm_e2e::eventually;
use fogswarm_e2e::server::{db_execute, declare, ServerProcess};
use fogswarm_protocol::validate::Role;

const D: &str = "02:f9:00:00:00:01";

fn unauthorized(result: Result<impl std::fmt::Debug, ClientError>) -> Result<()> {
    match result {
        Err(e) if e.status() == Some(401) => Ok(()),
        other => anyhow::bail!("expected 401, got {other:?}"),
    }
}

/// Online: an admin rotates the token, the old one is refused at once,
/// the new one works and is in DATA/admin.token. Offline: `fogswarm-server
/// admin-token --rotate` on a stopped server's data does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_rotates_online_and_offline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[])?;
    let first = server.admin_token();
    let admin = server.admin();
    declare(&admin, "kept", &[(D, Role::Leader)]).await?;

    let rotated = admin.rotate_admin_token().await?;
    ensure!(rotated.admin_token.expose() != first.expose());
    ensure!(
        rotated.admin_token.expose().starts_with("fsa_"),
        "an admin token says what it is"
    );
    ensure!(
        server.admin_token().expose() == rotated.admin_token.expose(),
        "DATA/admin.token holds the new token"
    );
    unauthorized(admin.list_swarms().await)?;
    let admin = Client::new(&server.endpoint(), Some(rotated.admin_token.clone()))?;
    ensure!(admin.get_swarm("kept").await?.devices == 1);
    let events = admin.events(0, 100, Some("fleet")).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.action == "admin_token.rotate" && e.actor == "admin"),
        "{events:?}"
    );
    let log = server.log_text();
    for secret in [first.expose(), rotated.admin_token.expose()] {
        ensure!(!log.contains(secret), "an admin token reached the log");
    }

    // Offline, with the server stopped: the token file changes, and the
    // restarted server takes only the new one.
    let online = rotated.admin_token;
    server.stop()?;
    let server = ServerProcess::start(&data, &[])?;
    let (code, out) = server.beside(&["admin-token"])?;
    ensure!(code == 2 && out.contains("--rotate"), "{out}");
    drop(server);
    let stopped = ServerProcess::start(&data, &[])?;
    let (code, out) = stopped.beside(&["admin-token", "--rotate"])?;
    ensure!(code == 0 && out.contains("admin.token"), "{out}");
    let offline = stopped.admin_token();
    ensure!(offline.expose() != online.expose());
    ensure!(!out.contains(offline.expose()), "the token is not printed");
    // The running server sees the rotation at once (the hash is read from
    // the database), as every replica would.
    unauthorized(
        Client::new(&stopped.endpoint(), Some(online))?
            .list_swarms()
            .await,
    )?;
    ensure!(stopped.admin().get_swarm("kept").await?.devices == 1);
    Ok(())
}

/// Events and telemetry history older than `--retain-events` and
/// `--retain-telemetry` are deleted; newer ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_and_telemetry_are_pruned() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let args = ["--retain-events", "1h", "--retain-telemetry", "2h"];
    let server = ServerProcess::start(&data, &args)?;
    let admin = server.admin();
    declare(&admin, "aged", &[(D, Role::Leader)]).await?;
    let old = admin.events(0, 1000, None).await?;
    let old_last = old.last().context("declaring logs events")?.id;
    server.stop()?;

    // Behind the server's back: its events two hours old, and the history
    // rows of the hours three hours and ten minutes ago (one minute each).
    let now = fogswarm_protocol::time::unix_now();
    db_execute(
        &data,
        &format!("UPDATE events SET at = at - 7200 WHERE id <= {old_last}"),
    )?;
    for at in [now - 3 * 3600, now - 600] {
        let hour = at - at % 3600;
        db_execute(
            &data,
            &format!(
                "INSERT INTO telemetry_hours (device, hour, minutes) VALUES ('{D}', {hour}, '0,10,,,,;')"
            ),
        )?;
    }
    let server = ServerProcess::start(&data, &args)?;
    let admin = server.admin();
    declare(&admin, "fresh", &[("02:f9:00:00:00:02", Role::Leader)]).await?;
    // Pruning runs at start and every minute.
    eventually(20, || async {
        let events = admin.events(0, 1000, None).await?;
        ensure!(
            events.iter().all(|e| e.id > old_last),
            "events past retention are still there: {:?}",
            events.first()
        );
        ensure!(
            events.iter().any(|e| e.subject == "fresh"),
            "new events must stay: {events:?}"
        );
        Ok(())
    })
    .await?;
    // The old hour's row is gone, the recent one kept (counted by an
    // update that changes nothing).
    let cutoff = now - 2 * 3600;
    let old_rows = db_execute(
        &data,
        &format!("UPDATE telemetry_hours SET minutes = minutes WHERE hour + 3600 <= {cutoff}"),
    )?;
    let kept = db_execute(
        &data,
        &format!("UPDATE telemetry_hours SET minutes = minutes WHERE hour + 3600 > {cutoff}"),
    )?;
    ensure!(old_rows == 0 && kept == 1, "old {old_rows}, kept {kept}");
    // A retention that would delete everything at once is refused.
    let (code, out) = server.beside(&["--retain-events", "10s"])?;
    ensure!(code == 2 && out.contains("at least a minute"), "{out}");
    Ok(())
}

/// `/healthz` and `/readyz` say who answers; the access log names the
/// caller of each request and never a secret; `/metrics` has latency
/// histograms, the build, and this replica's readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_access_log_and_latency_metrics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[])?;
    fogswarm_client::ensure_crypto_provider();
    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("{}/healthz", server.url))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        health["protocol"] == fogswarm_protocol::version::PROTOCOL,
        "{health}"
    );
    let ready = http.get(format!("{}/readyz", server.url)).send().await?;
    ensure!(ready.status() == 200);
    let ready: serde_json::Value = ready.json().await?;
    ensure!(ready["status"] == "ready", "{ready}");
    let replica = ready["replica"].as_str().context("replica")?.to_string();
    ensure!(
        replica.ends_with(&format!(
            ":{}",
            server.url.rsplit(':').next().unwrap_or_default()
        )),
        "{replica}"
    );

    let admin = server.admin();
    declare(&admin, "seen", &[(D, Role::Leader)]).await?;
    let (device, _) = server.enrol(D, &[]).await?;
    device.config().await?;
    unauthorized(
        Client::new(
            &server.endpoint(),
            Some(fogswarm_protocol::api::Secret::new("fsa_wrong")),
        )?
        .list_swarms()
        .await,
    )?;

    let log = eventually(5, || async {
        let log = server.log_text();
        ensure!(
            log.contains("path=/v1/config") && log.contains(&format!("who=device:{D}")),
            "no access line for the device's config request"
        );
        Ok(log)
    })
    .await?;
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fogswarm::access"))
        .collect();
    ensure!(
        access.iter().any(|l| l.contains("INFO")
            && l.contains("path=/v1/swarms")
            && l.contains("who=admin")),
        "{access:#?}"
    );
    ensure!(
        access
            .iter()
            .any(|l| l.contains("status=401") && l.contains("who=-")),
        "a refused request is logged without a caller: {access:#?}"
    );
    for secret in [
        server.admin_token().expose().to_string(),
        server.provisioning_key().expose().to_string(),
        "fsa_wrong".to_string(),
    ] {
        ensure!(!log.contains(&secret), "a secret reached the log");
    }

    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    let config = "fogswarm_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/config\",le=\"+Inf\"} ";
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix(config))
        .context("no latency histogram for /v1/config")?;
    ensure!(count.parse::<u64>()? >= 1, "{count}");
    ensure!(metrics.contains("fogswarm_replica_ready 1"), "{metrics}");
    ensure!(metrics.contains(&format!(
        "fogswarm_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    ensure!(metrics.contains("fogswarm_replicas{version="));
    ensure!(metrics.contains("fogswarm_swarm_quorum_lost{swarm=\"seen\"} 0"));
    Ok(())
}

/// Versions: every answer names the server's protocol; an agent one minor
/// version older (1.0: it sends no version) is served and flagged (event,
/// `status`, `device show`); one the server does not serve gets 426; a
/// newer agent's report with a field this server does not know is taken,
/// while an operator's body with one is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_agents_are_served_and_flagged_newer_fields_pass() -> Result<()> {
    use fogswarm_e2e::server::{device_key, signed_authorization, Admit};
    use fogswarm_protocol::version::{HEADER, PROTOCOL};
    const OLD: &str = "02:f9:00:00:00:0a";
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "mixed", &[(D, Role::Leader), (OLD, Role::Worker)]).await?;
    let (current, _) = server.enrol(D, &[]).await?;
    let old_key = device_key(OLD)?;
    server
        .enrol_with(&old_key, Admit::Key(server.provisioning_key()), &[])
        .await?;
    fogswarm_client::ensure_crypto_provider();
    let http = reqwest::Client::new();
    // A report as a newer agent (a field this server does not know) and as
    // an older one (no version header).
    let report = |version: Option<&str>, body: serde_json::Value| {
        let body = body.to_string();
        let mut request = http
            .post(format!("{}/v1/report", server.url))
            .header("content-type", "application/json")
            .header(
                "authorization",
                signed_authorization(&old_key, "POST", "/v1/report", body.as_bytes()),
            )
            .body(body);
        if let Some(v) = version {
            request = request.header(HEADER, v);
        }
        request.send()
    };
    let newer = report(
        Some("1.9"),
        serde_json::json!({"state": "waiting", "a_field_from_1_9": {"x": 1}}),
    )
    .await?;
    ensure!(newer.status() == 204, "newer agent: {}", newer.status());
    ensure!(
        newer.headers().get(HEADER).and_then(|v| v.to_str().ok()) == Some(PROTOCOL),
        "answers name the server's protocol"
    );
    let old = report(None, serde_json::json!({"state": "waiting"})).await?;
    ensure!(old.status() == 204, "1.0 agent: {}", old.status());
    let refused = report(Some("2.0"), serde_json::json!({"state": "waiting"})).await?;
    ensure!(refused.status() == 426, "{}", refused.status());
    let body: serde_json::Value = refused.json().await?;
    ensure!(
        body["error"] == "protocol_unsupported"
            && body["message"].as_str().is_some_and(|m| m.contains("2.0")),
        "{body}"
    );
    current
        .report(&fogswarm_protocol::api::ReportRequest {
            state: Some(fogswarm_protocol::api::DeviceState::Waiting),
            ..Default::default()
        })
        .await?;

    let status = admin.status().await?;
    ensure!(
        status.outdated_agents.len() == 1
            && status.outdated_agents[0].device == OLD
            && status.outdated_agents[0].protocol == "1.0",
        "{:?}",
        status.outdated_agents
    );
    let shown = admin.get_device(OLD).await?;
    ensure!(shown.protocol.as_deref() == Some("1.0"), "{shown:?}");
    ensure!(admin.get_device(D).await?.protocol.as_deref() == Some(PROTOCOL));
    let events = admin.events(0, 100, Some(OLD)).await?;
    ensure!(
        events
            .iter()
            .filter(|e| e.action == "device.agent_outdated")
            .count()
            == 1,
        "{events:?}"
    );

    // An operator's typo is refused by name, whatever the type takes from
    // agents.
    let typo = http
        .put(format!("{}/v1/swarms/mixed/services/web", server.url))
        .bearer_auth(server.admin_token().expose())
        .json(&serde_json::json!({"name": "web", "image": "reg.example:5000/web:1", "replcias": 3}))
        .send()
        .await?;
    ensure!(typo.status() == 422, "{}", typo.status());
    let body: serde_json::Value = typo.json().await?;
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `replcias`")),
        "{body}"
    );
    ensure!(admin.list_services("mixed").await?.is_empty());
    Ok(())
}

/// A device listing longer than the chunks the server streams it in
/// (1,000 devices) comes whole: every device once, by swarm and id, for
/// the fleet and for one swarm, with a device of another swarm between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_listings_longer_than_a_chunk_come_whole() -> Result<()> {
    use fogswarm_protocol::api::DeviceCreate;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "a-big", &[]).await?;
    declare(&admin, "b-other", &[("b-0", Role::Worker)]).await?;
    declare(&admin, "c-big", &[]).await?;
    let mut expected = vec![("b-other".to_string(), "b-0".to_string())];
    for swarm in ["a-big", "c-big"] {
        let rows: Vec<DeviceCreate> = (0..1_250)
            .map(|i| DeviceCreate {
                id: format!("{swarm}-{i:05}"),
                swarm: swarm.into(),
                role: Role::Worker,
                labels: Default::default(),
            })
            .collect();
        expected.extend(rows.iter().map(|r| (r.swarm.clone(), r.id.clone())));
        admin
            .import_devices("application/json", serde_json::to_vec(&rows)?)
            .await?;
    }
    expected.sort();
    let listed = |devices: Vec<fogswarm_protocol::api::DeviceView>| -> Vec<(String, String)> {
        devices
            .into_iter()
            .map(|d| (d.swarm, d.id.to_string()))
            .collect()
    };
    let all = listed(admin.list_devices(None).await?);
    ensure!(all.len() == 2_501, "{} devices listed", all.len());
    ensure!(
        all == expected,
        "the fleet's listing is not every device once, in order"
    );
    let one = listed(admin.list_devices(Some("c-big")).await?);
    let c: Vec<_> = expected
        .iter()
        .filter(|(s, _)| s == "c-big")
        .cloned()
        .collect();
    ensure!(one == c, "{} of c-big's 1,250 listed", one.len());
    // A bad swarm name is still an error status, not a cut body.
    let bad = admin.list_devices(Some("Not A Swarm")).await;
    ensure!(bad.is_err(), "{bad:?}");
    Ok(())
}
