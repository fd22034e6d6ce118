//! The dashboard per user (issue 23, test 4's browser half), in headless
//! Chromium against a real server: users sign in with their password; a
//! viewer is offered no action and a forged POST from its own pages is
//! refused; an operator of the swarm acts, and the event names it.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::browser::{png_size, Browser, WIDTH};
use fogswarm_e2e::server::{declare, ServerProcess};
use fogswarm_e2e::workspace_root;
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{AutoEnrol, Role};

const PASSWORD: &str = "correct horse battery";

async fn sign_in(browser: &Browser, base: &str, user: &str, password: &str) -> Result<()> {
    for _ in 0..5 {
        browser.goto(&format!("{base}/login")).await?;
        browser.fill("#user", user).await?;
        browser.fill("#token", password).await?;
        browser.click("button[type=submit]").await?;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Chromium aborts a navigation when Docker changes a network.
        if !browser.html().await?.contains("ERR_NETWORK_CHANGED") {
            return Ok(());
        }
    }
    anyhow::bail!("signing in: the network kept changing")
}

/// The forms a page offers, by action (the sign-out form aside).
async fn actions(browser: &Browser) -> Result<Vec<String>> {
    let forms = browser
        .script(
            "return Array.from(document.querySelectorAll('form[method=post]')).map(f => f.getAttribute('action')).filter(a => a !== '/logout')",
        )
        .await?;
    Ok(serde_json::from_value(forms)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_action_and_an_operator_acts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "a", &[("02:f6:00:00:00:01", Role::Leader)]).await?;
    admin
        .update_swarm(
            "a",
            &SwarmUpdate {
                auto_enrol: Some(AutoEnrol::Pending),
                ..Default::default()
            },
        )
        .await?;
    // A device waiting for approval.
    let key = fogswarm_e2e::server::device_key("02:f6:00:00:00:02")?;
    let mut request = fogswarm_e2e::server::enrol_request(
        &key,
        fogswarm_e2e::server::Admit::Key(server.provisioning_key()),
        &[],
    )?;
    request.swarm = Some("a".into());
    server.anonymous().with_device(key).enrol(&request).await?;
    for (name, role) in [("vic", UserRole::Viewer), ("ola", UserRole::Operator)] {
        admin
            .create_user(&UserCreate {
                name: name.into(),
                role,
                swarms: vec!["a".into()],
                password: Some(Secret::new(PASSWORD)),
            })
            .await?;
    }
    let base = server.url.clone();
    let browser = Browser::start().await?;

    // A wrong password is refused.
    sign_in(&browser, &base, "vic", "not the password at all").await?;
    ensure!(browser.text("[role=alert]").await?.contains("do not match"));

    // The viewer reads every page and is offered no action.
    sign_in(&browser, &base, "vic", PASSWORD).await?;
    browser.wait_for_path("/").await?;
    let fleet = browser.html().await?;
    ensure!(
        fleet.contains("02:f6:00:00:00:02"),
        "the pending device is listed"
    );
    ensure!(
        actions(&browser).await?.is_empty(),
        "{:?}",
        actions(&browser).await?
    );
    for page in [
        "/devices/02:f6:00:00:00:02",
        "/swarms/a",
        "/devices",
        "/events",
    ] {
        browser.goto(&format!("{base}{page}")).await?;
        let offered = actions(&browser).await?;
        ensure!(offered.is_empty(), "{page} offers a viewer {offered:?}");
    }
    browser
        .goto(&format!("{base}/devices/02:f6:00:00:00:02"))
        .await?;
    let page = browser.html().await?;
    ensure!(page.contains("Labels") && !page.contains("Save labels"));
    ensure!(page.contains("Read only: your role does not let you change swarm a"));
    let png = browser.screenshot().await?;
    let out = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("device-as-viewer.png"), &png)?;
    let (w, _) = png_size(&png).context("not a PNG")?;
    ensure!(w == WIDTH && png.len() > 10_000, "{w} {}", png.len());

    // A POST forged from the viewer's own page (same origin, its session)
    // is refused by role, and nothing changes.
    let answer = browser
        .script(
            "const x = new XMLHttpRequest(); x.open('POST', '/devices/02:f6:00:00:00:02/approve', false); x.send(); return [x.status, x.responseText]",
        )
        .await?;
    let (status, text): (u16, String) = serde_json::from_value(answer)?;
    ensure!(status == 403, "{status} {text}");
    ensure!(text.contains("viewer vic may not change swarm a"), "{text}");
    ensure!(admin.get_device("02:f6:00:00:00:02").await?.state == DeviceState::Pending);

    // The operator of swarm a approves it from the device page.
    browser.click("form[action='/logout'] button").await?;
    sign_in(&browser, &base, "ola", PASSWORD).await?;
    browser.wait_for_path("/").await?;
    browser
        .goto(&format!("{base}/devices/02:f6:00:00:00:02"))
        .await?;
    let offered = actions(&browser).await?;
    ensure!(
        offered.contains(&"/devices/02%3Af6%3A00%3A00%3A00%3A02/approve".to_string()),
        "{offered:?} {}",
        browser.text("body").await?
    );
    // Clicked again if Chromium aborted the POST for a network change.
    let pending = || async {
        anyhow::Ok(admin.get_device("02:f6:00:00:00:02").await?.state == DeviceState::Pending)
    };
    for _ in 0..5 {
        if !pending().await? {
            break;
        }
        browser
            .goto(&format!("{base}/devices/02:f6:00:00:00:02"))
            .await?;
        let _ = browser
            .click("form[action='/devices/02%3Af6%3A00%3A00%3A00%3A02/approve'] button")
            .await;
        for _ in 0..100 {
            if !pending().await? {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let events = admin.events(0, 100, Some("02:f6:00:00:00:02")).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.actor == "user:ola" && e.action == "device.approve"),
        "{events:?}"
    );
    // No page holds a password.
    ensure!(!browser.html().await?.contains(PASSWORD));
    Ok(())
}
