//! The dashboard in a real browser (headless Chromium through ChromeDriver)
//! against a real server and a real 6-device lab: signing in (a wrong
//! token refused); the fleet and devices pages (state, arch, label filter,
//! CPU sparklines); telemetry matching the device's report; labels edited
//! in the page reaching the swarm node; a device booting and a paused one
//! going offline and back on open pages without a reload; a stack pasted
//! in and its tasks appearing; a service's and an agent's log lines; a
//! cross-site form refused; no secret in any page; signing out; and a
//! screenshot of each page that the test looks at.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::browser::{png_size, Browser, WIDTH};
use fogswarm_e2e::{docker, eventually, serial, workspace_root, Lab};
use std::time::Duration;

/// The text of the devices page's row for `mac` ("" without one).
async fn row_of(browser: &Browser, mac: &str) -> Result<String> {
    let row = browser
        .script(&format!(
            "const r = document.querySelector('tr[data-device=\"{mac}\"]'); return r ? r.innerText : ''"
        ))
        .await?;
    Ok(row.as_str().unwrap_or_default().to_string())
}

/// Saves a screenshot of the page under target/dashboard-screenshots and
/// checks it: a PNG of the window's width, far bigger than a blank page
/// (about 5 KB at this size), of a page that is not an error page.
async fn screenshot(browser: &Browser, name: &str) -> Result<()> {
    let title: String = browser
        .script("return document.title")
        .await?
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        !title.starts_with("Error")
            && !title.starts_with("Not found")
            && !title.starts_with("Refused"),
        "{name}: an error page ({title})"
    );
    let png = browser.screenshot().await?;
    let dir = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), &png)?;
    let (w, h) = png_size(&png).context("not a PNG")?;
    ensure!(w == WIDTH && h >= 600, "{name}: {w}x{h}");
    ensure!(
        png.len() > 20_000,
        "{name}: only {} bytes, a blank page?",
        png.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser() -> Result<()> {
    let _serial = serial().await;
    // The lab's default 5 devices, and a sixth held back: it boots while
    // the devices page is open.
    let dir = tempfile::tempdir()?;
    let fleet = dir.path().join("fleet.json");
    std::fs::write(
        &fleet,
        serde_json::json!({"swarm": "fog", "devices": {
            "dev1": {"role": "leader", "labels": {"location": "hall-a"}},
            "dev2": {"role": "manager", "labels": {"location": "hall-b", "temperature_sensor": "1"}},
            "dev3": {"role": "manager", "labels": {"location": "hall-a"}},
            "dev4": {"labels": {"location": "hall-b", "temperature_sensor": "1"}},
            "dev5": {"labels": {"location": "hall-a"}},
            "dev6": {"labels": {"location": "hall-b"}, "hold": true},
        }})
        .to_string(),
    )?;
    let lab = Lab::up(
        "e2e-dash",
        "10.213.248.0/24",
        &["--devices", "6", "--fleet", &fleet.display().to_string()],
    )?;
    let status = lab.status()?;
    let server = status.server.clone().context("lab server")?;
    let token = std::fs::read_to_string(&server.admin_token_file)?
        .trim()
        .to_string();
    let base = server.url.trim_end_matches('/').to_string();
    let dev2 = lab.device("dev2")?;
    let dev5 = lab.device("dev5")?;
    let browser = Browser::start().await?;
    let mut pages_html = Vec::new();

    // 1. Signing in: a wrong token is refused; the right one opens the
    // fleet, whose devices page lists the lab's 5 running devices, active,
    // amd64 (and the held one).
    browser.goto(&format!("{base}/")).await?;
    browser.wait_for_path("/login").await?;
    browser.fill("#token", "fsa_not-the-token").await?;
    browser.click("button[type=submit]").await?;
    ensure!(
        browser
            .text("[role=alert]")
            .await?
            .contains("not the admin token"),
        "wrong token not refused"
    );
    browser.fill("#token", &token).await?;
    browser.click("button[type=submit]").await?;
    browser.wait_for_path("/").await?;
    let fleet = browser.html().await?;
    ensure!(fleet.contains("<b>6</b>devices"), "{fleet}");
    screenshot(&browser, "fleet").await?;
    pages_html.push(fleet);
    browser.goto(&format!("{base}/devices")).await?;
    let rows = browser
        .script(
            "return Array.from(document.querySelectorAll('tr[data-device]')).map(r => r.innerText)",
        )
        .await?;
    let rows: Vec<String> = serde_json::from_value(rows)?;
    ensure!(rows.len() == 6, "{rows:?}");
    let dev6 = lab.device("dev6")?;
    for d in status.devices.iter().filter(|d| d.name != "dev6") {
        let row = rows
            .iter()
            .find(|r| r.contains(&d.mac))
            .with_context(|| format!("{} not listed: {rows:?}", d.mac))?;
        ensure!(row.contains("active") && row.contains(&d.platform), "{row}");
        ensure!(row.contains(&d.name), "host name missing: {row}");
    }
    // 3. The held device boots while the page is open: its row turns
    // active without a reload (the page is marked to tell one).
    browser
        .script("window.fogswarmMarker = 42; return 1")
        .await?;
    ensure!(!row_of(&browser, &dev6.mac).await?.contains("active"));
    let started = lab.fogswarm(&["lab", "start-agent", "--name", "e2e-dash", "dev6"], &[]);
    ensure!(started.code == 0, "{}", started.stderr);
    eventually(90, || async {
        let row = row_of(&browser, &dev6.mac).await?;
        ensure!(
            row.contains("active") && row.contains("dev6"),
            "dev6: {row}"
        );
        Ok(())
    })
    .await?;
    ensure!(
        browser.script("return window.fogswarmMarker").await? == 42,
        "the page reloaded"
    );
    screenshot(&browser, "devices").await?;
    pages_html.push(browser.html().await?);
    // Filtering by label: the lab's sensors are dev2 and dev4.
    browser
        .goto(&format!("{base}/devices?label=temperature_sensor%3D1"))
        .await?;
    ensure!(
        browser.text("#count").await?.starts_with("2 devices"),
        "{}",
        browser.text("#count").await?
    );

    // 6. Telemetry on the device page matches what the device reported.
    let reported = eventually(30, || async {
        let d = lab.device_view(&dev2.mac)?;
        d.telemetry.clone().context("no telemetry yet")
    })
    .await?;
    browser
        .goto(&format!("{base}/devices/{}", dev2.mac))
        .await?;
    let temperature = browser.text("#temperature").await?;
    ensure!(
        temperature == format!("{:.1} °C", reported.temperature_c.context("temperature")?),
        "page {temperature} vs {reported:?}"
    );
    let memory = browser.text("#memory").await?;
    ensure!(
        memory.ends_with(&format!(
            "of {} MiB",
            reported.memory_total_mb.context("memory")?
        )),
        "{memory}"
    );
    screenshot(&browser, "device").await?;
    pages_html.push(browser.html().await?);

    // 2. Labels edited in the page reach the swarm node within 5 s.
    let mut labels: String = lab
        .device_view(&dev2.mac)?
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    labels.push_str("zone=b7\n");
    browser.fill("#labels", &labels).await?;
    let saved_at = std::time::Instant::now();
    browser.click("form[action$='/labels'] button").await?;
    let leader = lab.engine("dev1").await?;
    let node_id = lab.device_view(&dev2.mac)?.node_id.context("node id")?;
    eventually(5, || async {
        let node = leader.docker.inspect_node(&node_id).await?;
        let labels = node.spec.and_then(|s| s.labels).unwrap_or_default();
        ensure!(
            labels.get("zone").map(String::as_str) == Some("b7"),
            "{labels:?}"
        );
        Ok(())
    })
    .await?;
    ensure!(saved_at.elapsed() < Duration::from_secs(6));

    // 3. Live: on the open fleet page (marked, to tell a reload), dev5
    // paused turns offline, then online again; both events show live.
    browser.goto(&format!("{base}/")).await?;
    browser
        .script("window.fogswarmMarker = 42; return 1")
        .await?;
    docker(&["pause", &dev5.container])?;
    let went_offline = eventually(60, || async {
        let html = browser.html().await?;
        ensure!(
            html.contains("<h2>Offline</h2>") && html.contains(&dev5.mac),
            "not offline yet"
        );
        Ok(())
    })
    .await;
    if went_offline.is_err() {
        docker(&["unpause", &dev5.container])?;
    }
    went_offline?;
    screenshot(&browser, "fleet-offline").await?;
    ensure!(
        browser.script("return window.fogswarmMarker").await? == 42,
        "the page reloaded"
    );
    docker(&["unpause", &dev5.container])?;
    eventually(40, || async {
        ensure!(
            !browser.html().await?.contains("<h2>Offline</h2>"),
            "still offline"
        );
        Ok(())
    })
    .await?;
    ensure!(browser.script("return window.fogswarmMarker").await? == 42);
    browser.goto(&format!("{base}/events")).await?;
    let events = browser.html().await?;
    ensure!(
        events.contains("device.offline") && events.contains("device.online"),
        "events page"
    );
    screenshot(&browser, "events").await?;
    pages_html.push(events);
    // 4. A stack pasted into the swarm page is deployed; its tasks appear
    // on the page as the devices run them, without a reload.
    let registry = status.registry.clone().context("lab registry")?.addr;
    let image = lab.build_hello(&registry, "dash", &[])?;
    browser.goto(&format!("{base}/swarms/fog")).await?;
    browser.fill("#stack", "web").await?;
    browser
        .fill(
            "#compose",
            &format!("services:\n  hello:\n    image: {image}\n    deploy:\n      mode: global\n"),
        )
        .await?;
    browser.click("form[action$='/stacks'] button").await?;
    browser.wait_for_path("/swarms/fog").await?;
    browser
        .script("window.fogswarmMarker = 7; return 1")
        .await?;
    eventually(240, || async {
        let html = browser.html().await?;
        let running = html.matches("<td>running</td><td>running</td>").count();
        ensure!(
            html.contains("web_hello") && running >= 5,
            "{running} running tasks on the page"
        );
        Ok(())
    })
    .await?;
    ensure!(
        browser.script("return window.fogswarmMarker").await? == 7,
        "the page reloaded"
    );
    // A file the page cannot take (a secret from a file) is refused, named.
    browser.fill("#stack", "bad").await?;
    browser
        .fill(
            "#compose",
            &format!("services:\n  a:\n    image: {image}\n    secrets: [s]\nsecrets:\n  s:\n    file: ./s.txt\n"),
        )
        .await?;
    browser.click("form[action$='/stacks'] button").await?;
    ensure!(
        browser.text("[role=alert]").await?.contains("stack deploy"),
        "{}",
        browser.text("[role=alert]").await?
    );
    browser.goto(&format!("{base}/swarms/fog")).await?;
    screenshot(&browser, "swarm").await?;
    pages_html.push(browser.html().await?);
    // A service's recent log lines, through the raft leader.
    browser.click("a[href$='/services/web_hello/log']").await?;
    let log = browser.text("#log").await?;
    ensure!(
        log.contains("fog-hello: listening on"),
        "service log: {log}"
    );
    pages_html.push(browser.html().await?);
    // An agent's last lines, asked of the device at its next report.
    browser
        .goto(&format!("{base}/devices/{}", dev2.mac))
        .await?;
    browser.click("a[href$='/log']").await?;
    let log = browser.text("#log").await?;
    ensure!(
        log.contains(" INFO ") && !log.contains("SWMTKN-1-"),
        "agent log: {log}"
    );
    pages_html.push(browser.html().await?);

    // 5. A form on another origin posting with the session: refused (the
    // cookie is SameSite=Strict, and the origin is checked); the device
    // is not decommissioned.
    let evil = format!(
        "data:text/html,<form id=f method=post action='{base}/devices/{}/decommission'></form><script>document.getElementById('f').submit()</script>",
        dev2.mac
    );
    browser.goto(&evil).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let landed = browser.html().await?;
    ensure!(
        landed.contains("Sign in") || landed.contains("did not come from a page of this server"),
        "cross-site post: {landed}"
    );
    ensure!(lab.device_view(&dev2.mac)?.state.as_str() == "active");
    // The same post over plain HTTP with the cookie but a foreign Origin.
    let cookie = browser
        .client
        .get_named_cookie("fogswarm_session")
        .await?
        .value()
        .to_string();
    fogswarm_client::ensure_crypto_provider();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let refused = client
        .post(format!("{base}/devices/{}/decommission", dev2.mac))
        .header("cookie", format!("fogswarm_session={cookie}"))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    ensure!(refused.status() == 403, "{}", refused.status());
    ensure!(lab.device_view(&dev2.mac)?.state.as_str() == "active");

    // No page holds a token, key or credential.
    let provisioning = std::fs::read_to_string(
        server
            .admin_token_file
            .parent()
            .context("data dir")?
            .join("provisioning.key"),
    )?;
    for html in &pages_html {
        for secret in [
            token.as_str(),
            provisioning.trim(),
            "SWMTKN-",
            "PRIVATE KEY",
            "fsd_",
        ] {
            ensure!(!html.contains(secret), "a page holds {secret:.8}...");
        }
    }

    // By now every device has more than a minute of history: the devices
    // list draws its CPU sparklines.
    browser.goto(&format!("{base}/devices")).await?;
    let sparks = browser
        .script("return document.querySelectorAll('tr[data-device] svg.spark').length")
        .await?;
    ensure!(sparks.as_u64().unwrap_or(0) >= 5, "{sparks} sparklines");
    screenshot(&browser, "devices").await?;

    // Signing out ends the session.
    browser.goto(&format!("{base}/")).await?;
    browser.click("form[action='/logout'] button").await?;
    browser.wait_for_path("/login").await?;
    browser.goto(&format!("{base}/devices")).await?;
    browser.wait_for_path("/login").await?;
    browser.client.clone().close().await?;
    Ok(())
}
