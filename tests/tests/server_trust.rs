//! Trust in the field (issue 23) against a real server: devices whose
//! identity is bound to a key cannot be taken over with the provisioning
//! key or a token; re-enrolment waits for an operator (or a swarm's
//! `reimage: auto`); keys rotate; enrolment tokens admit counted devices
//! with their labels and never show up again. Runs on both databases.

use anyhow::{ensure, Context, Result};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, ClientError};
use fogswarm_e2e::server::{declare, device_key, enrol_request, Admit, ServerProcess};
use fogswarm_e2e::{fogswarm, Run};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{Labels, Role};
use std::process::Command;
use std::sync::Arc;

fn status_of<T: std::fmt::Debug>(r: std::result::Result<T, ClientError>) -> Option<u16> {
    r.err().and_then(|e| e.status())
}

fn status_of_any<T: std::fmt::Debug>(r: Result<T>) -> Option<u16> {
    r.err()
        .and_then(|e| e.downcast::<ClientError>().ok())
        .and_then(|e| e.status())
}

fn tokens(cluster: &str) -> SwarmTokens {
    SwarmTokens {
        cluster_id: cluster.into(),
        manager_addrs: vec!["10.213.9.11:2377".into()],
        worker_token: Secret::new(format!("SWMTKN-1-{cluster}-workerworkerworker")),
        manager_token: Secret::new(format!("SWMTKN-1-{cluster}-managermanagermanager")),
        generation: 0,
    }
}

async fn actions(admin: &Client, subject: &str) -> Result<Vec<(String, String, String)>> {
    Ok(admin
        .events(0, 1000, Some(subject))
        .await?
        .into_iter()
        .map(|e| (e.actor, e.action, e.detail))
        .collect())
}

/// Issue 23, test 1 (the server's half; the lab's re-image is in
/// agent.rs): with the provisioning key, or a valid token, enrolling as
/// an enrolled device (the leader) yields nothing that works as it; the
/// real device keeps working; the attempt is an event; approval swaps
/// the keys; `reimage: auto` takes a re-image at once; keys rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_card_cannot_take_over_an_enrolled_device() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    let (leader_id, worker_id) = ("02:f1:00:00:00:01", "02:f1:00:00:00:02");
    declare(
        &admin,
        "fort",
        &[(leader_id, Role::Leader), (worker_id, Role::Worker)],
    )
    .await?;
    let (leader, _) = server.enrol(leader_id, &[]).await?;
    assert!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    leader.post_swarm_tokens(&tokens("cfort")).await?;
    leader
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            node_id: Some("node-leader".into()),
            ..Default::default()
        })
        .await?;
    let enrolled_key = admin.get_device(leader_id).await?.key.context("key")?;

    // A copied card's owner, with the fleet's provisioning key and a key
    // of its own, enrols as the leader: held, not admitted.
    let thief_key = device_key(leader_id)?;
    let answer = server
        .enrol_with(&thief_key, Admit::Key(server.provisioning_key()), &[])
        .await?;
    assert!(answer.pending, "another key for an enrolled device is held");
    let thief = server.anonymous().with_device(thief_key.clone());
    match thief.config().await? {
        ConfigAnswer::Wait { reason, .. } => assert!(reason.contains("approve"), "{reason}"),
        other => panic!("the held key got {other:?}"),
    }
    assert_eq!(
        status_of(thief.post_swarm_tokens(&tokens("cfort")).await),
        Some(403)
    );
    assert_eq!(status_of(thief.desired(None, 0).await), Some(403));
    let values = thief
        .values(&fogswarm_protocol::secret::ValuesRequest::default())
        .await;
    assert_eq!(status_of(values), Some(403), "no secret values for it");
    // Its report is taken and ignored: the device's state is unchanged.
    thief
        .report(&ReportRequest {
            state: Some(DeviceState::Error),
            node_id: Some("node-thief".into()),
            error: Some("stolen".into()),
            ..Default::default()
        })
        .await?;
    let shown = admin.get_device(leader_id).await?;
    assert_eq!(shown.node_id.as_deref(), Some("node-leader"));
    assert_eq!(shown.state, DeviceState::Active);
    assert_eq!(shown.key.as_ref(), Some(&enrolled_key));
    let pending = shown.reenrol_pending.context("the attempt is shown")?;
    assert_eq!(pending.key, thief_key.public_key().fingerprint());
    // The real device keeps working.
    assert!(matches!(
        leader.config().await?,
        ConfigAnswer::Join { .. } | ConfigAnswer::Init { .. }
    ));
    leader.desired(None, 0).await?;
    // The attempt is an event naming the newcomer's key.
    let events = actions(&admin, leader_id).await?;
    assert!(
        events
            .iter()
            .any(|(_, action, detail)| action == "device.reenrol_requested"
                && detail.contains(&thief_key.public_key().fingerprint())),
        "{events:?}"
    );

    // With a valid enrolment token for the same swarm: held just the
    // same, and the token's use is not spent on it.
    let token = admin
        .create_enrol_token(&EnrolTokenCreate {
            swarm: "fort".into(),
            labels: Labels::new(),
            uses: Some(1),
            expires_in_secs: None,
            role: Role::Worker,
        })
        .await?;
    let second_thief = device_key(leader_id)?;
    let answer = server
        .enrol_with(&second_thief, Admit::Token(token.token.clone()), &[])
        .await?;
    assert!(answer.pending);
    assert_eq!(admin.list_enrol_tokens(Some("fort")).await?[0].used, 0);
    assert!(matches!(
        leader.config().await?,
        ConfigAnswer::Join { .. } | ConfigAnswer::Init { .. }
    ));

    // A request signed by a key never enrolled, or naming another device
    // than its key's, is refused.
    let stranger = server.anonymous().with_device(device_key(worker_id)?);
    assert_eq!(status_of(stranger.config().await), Some(401));
    // An enrolment signed with another key than the one it carries.
    let carried = device_key("02:f1:00:00:00:09")?;
    let signer = device_key("02:f1:00:00:00:09")?;
    let forged = server
        .anonymous()
        .with_device(signer)
        .enrol(&enrol_request(
            &carried,
            Admit::Key(server.provisioning_key()),
            &[],
        )?)
        .await;
    assert_eq!(status_of(forged), Some(401));

    // The operator approves the newest key as a re-image: it becomes the
    // device, the old key stops working.
    let approved = admin.approve_device(leader_id).await?;
    assert_eq!(approved.key, Some(second_thief.public_key().fingerprint()));
    assert!(approved.reenrol_pending.is_none());
    let reimaged = server.anonymous().with_device(second_thief);
    assert!(!matches!(
        reimaged.config().await?,
        ConfigAnswer::Wait { .. }
    ));
    assert_eq!(status_of(leader.config().await), Some(401));
    assert!(actions(&admin, leader_id)
        .await?
        .iter()
        .any(|(actor, action, _)| actor == "admin" && action == "device.reenrol_approved"));

    // A swarm that takes re-images at once (labs).
    admin
        .update_swarm(
            "fort",
            &SwarmUpdate {
                reimage: Some(Reimage::Auto),
                ..Default::default()
            },
        )
        .await?;
    let (worker, _) = server.enrol(worker_id, &[]).await?;
    let fresh_image = device_key(worker_id)?;
    let answer = server
        .enrol_with(&fresh_image, Admit::Key(server.provisioning_key()), &[])
        .await?;
    assert!(!answer.pending);
    assert_eq!(status_of(worker.config().await), Some(401));
    let worker = server.anonymous().with_device(fresh_image.clone());
    worker.config().await?;
    assert!(actions(&admin, worker_id)
        .await?
        .iter()
        .any(|(_, action, _)| action == "device.reimaged"));

    // Keys rotate without enrolling again.
    let next = Arc::new(FileKey::generate(worker_id).map_err(anyhow::Error::msg)?);
    worker.rotate_device_key(next.public_key()).await?;
    assert_eq!(status_of(worker.config().await), Some(401));
    server.anonymous().with_device(next).config().await?;
    Ok(())
}

/// A device whose clock is off (no real-time clock, no NTP yet) is told
/// the server's time and signs with it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_wrong_clock_learns_the_servers_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    declare(
        &server.admin(),
        "clock",
        &[("02:f2:00:00:00:01", Role::Leader)],
    )
    .await?;
    let key = device_key("02:f2:00:00:00:01")?;
    server
        .enrol_with(&key, Admit::Key(server.provisioning_key()), &[])
        .await?;
    let input = fogswarm_protocol::identity::signing_input(
        key.device_id(),
        "GET",
        "/v1/config",
        fogswarm_protocol::time::unix_now() - 3600,
        b"",
    );
    let late = fogswarm_protocol::identity::authorization(
        key.device_id(),
        fogswarm_protocol::time::unix_now() - 3600,
        &key.sign(&input).map_err(anyhow::Error::msg)?,
    );
    let r = fogswarm_e2e::http()
        .get(format!("{}/v1/config", server.url))
        .header("authorization", late)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let told: i64 = r
        .headers()
        .get(fogswarm_protocol::identity::TIME_HEADER)
        .context("Fogswarm-Time")?
        .to_str()?
        .parse()?;
    assert!((told - fogswarm_protocol::time::unix_now()).abs() < 5);
    let body: ApiError = r.json().await?;
    assert_eq!(body.error, "clock_skew");
    Ok(())
}

/// Issue 23, test 2: a token with 2 uses admits 2 devices and refuses the
/// third; expired and revoked tokens are refused; its labels land on the
/// devices; no token appears in any log, event, listing or metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_tokens_admit_counted_devices_with_their_labels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--log-level", "trace"])?;
    let admin = server.admin();
    declare(&admin, "site", &[("02:f3:00:00:00:10", Role::Worker)]).await?;
    declare(&admin, "other", &[]).await?;
    let mut shown_once = Vec::new();
    let create = |uses: Option<u32>, expires: Option<u64>, swarm: &str| EnrolTokenCreate {
        swarm: swarm.into(),
        labels: Labels::from([
            ("location".to_string(), "roof".to_string()),
            ("sensor".to_string(), "wind".to_string()),
        ]),
        uses,
        expires_in_secs: expires,
        role: Role::Worker,
    };
    let two = admin
        .create_enrol_token(&create(Some(2), None, "site"))
        .await?;
    assert!(two.token.expose().starts_with("fset_"));
    shown_once.push(two.token.expose().to_string());
    for i in 1..=2 {
        let id = format!("02:f3:00:00:00:0{i}");
        let key = device_key(&id)?;
        let answer = server
            .enrol_with(&key, Admit::Token(two.token.clone()), &[("arch", "arm64")])
            .await?;
        assert!(!answer.pending);
        assert_eq!(answer.swarm, "site");
        let device = admin.get_device(&id).await?;
        assert_eq!(
            device.labels.get("location").map(String::as_str),
            Some("roof")
        );
        assert_eq!(device.role, Role::Worker);
        server.anonymous().with_device(key).config().await?;
    }
    let third = server
        .enrol_with(
            &device_key("02:f3:00:00:00:03")?,
            Admit::Token(two.token.clone()),
            &[],
        )
        .await;
    assert_eq!(status_of_any(third), Some(401), "a third device");
    assert!(admin.get_device("02:f3:00:00:00:03").await.is_err());
    let listed = admin.list_enrol_tokens(Some("site")).await?;
    assert_eq!((listed[0].used, listed[0].uses), (2, Some(2)));

    // A declared device takes the token's labels where its declaration
    // sets none; a device declared in another swarm is refused.
    admin
        .change_labels(
            "02:f3:00:00:00:10",
            &LabelChange {
                set: Labels::from([("location".to_string(), "cellar".to_string())]),
                unset: vec![],
            },
        )
        .await?;
    let many = admin
        .create_enrol_token(&create(None, None, "site"))
        .await?;
    shown_once.push(many.token.expose().to_string());
    server
        .enrol_with(
            &device_key("02:f3:00:00:00:10")?,
            Admit::Token(many.token.clone()),
            &[],
        )
        .await?;
    let declared = admin.get_device("02:f3:00:00:00:10").await?;
    assert_eq!(
        declared.labels.get("location").map(String::as_str),
        Some("cellar")
    );
    assert_eq!(
        declared.labels.get("sensor").map(String::as_str),
        Some("wind")
    );
    let elsewhere = admin
        .create_enrol_token(&create(None, None, "other"))
        .await?;
    shown_once.push(elsewhere.token.expose().to_string());
    declare(&admin, "third", &[("02:f3:00:00:00:20", Role::Worker)]).await?;
    let refused = server
        .enrol_with(
            &device_key("02:f3:00:00:00:20")?,
            Admit::Token(elsewhere.token.clone()),
            &[],
        )
        .await;
    assert_eq!(status_of_any(refused), Some(403));

    // Expired, and revoked: refused.
    let brief = admin
        .create_enrol_token(&create(None, Some(1), "site"))
        .await?;
    shown_once.push(brief.token.expose().to_string());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let late = server
        .enrol_with(
            &device_key("02:f3:00:00:00:04")?,
            Admit::Token(brief.token.clone()),
            &[],
        )
        .await;
    assert_eq!(status_of_any(late), Some(401), "expired");
    let revoked = admin
        .create_enrol_token(&create(None, None, "site"))
        .await?;
    shown_once.push(revoked.token.expose().to_string());
    admin.remove_enrol_token(&revoked.view.id).await?;
    let after = server
        .enrol_with(
            &device_key("02:f3:00:00:00:05")?,
            Admit::Token(revoked.token.clone()),
            &[],
        )
        .await;
    assert_eq!(status_of_any(after), Some(401), "revoked");
    // Bad requests: nothing made.
    for bad in [
        create(Some(0), None, "site"),
        create(None, Some(0), "site"),
        create(None, None, "nowhere"),
    ] {
        assert!(admin.create_enrol_token(&bad).await.is_err());
    }
    let mut leader_token = create(None, None, "site");
    leader_token.role = Role::Leader;
    assert_eq!(
        status_of(admin.create_enrol_token(&leader_token).await),
        Some(422)
    );

    // The CLI makes, lists and revokes them; the token is printed once.
    let cli = |args: &[&str]| -> Run {
        Command::new(fogswarm())
            .args(args)
            .env("FOGSWARM_SERVER", &server.url)
            .env("FOGSWARM_TOKEN", server.admin_token().expose())
            .env_remove("FOGSWARM_TOKEN_FILE")
            .env_remove("FOGSWARM_CA_FINGERPRINT")
            .output()
            .expect("running fogswarm")
            .into()
    };
    let made = cli(&[
        "enrol-token",
        "create",
        "--swarm",
        "site",
        "--label",
        "location=yard",
        "--uses",
        "3",
        "--expires",
        "24h",
    ]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let printed = made.stdout.trim().to_string();
    assert!(printed.starts_with("fset_"), "{}", made.stdout);
    shown_once.push(printed.clone());
    let listed = cli(&["enrol-token", "ls", "--swarm", "site"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("0/3") && listed.stdout.contains("location=yard"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("in 23 hours") || listed.stdout.contains("in 24 hours"),
        "{}",
        listed.stdout
    );
    let id = admin
        .list_enrol_tokens(Some("site"))
        .await?
        .into_iter()
        .find(|t| t.uses == Some(3))
        .context("the CLI's token")?
        .id;
    let removed = cli(&["enrol-token", "rm", &id]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let bad = cli(&[
        "enrol-token",
        "create",
        "--swarm",
        "site",
        "--expires",
        "soon",
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--expires"), "{}", bad.stderr);

    // No token anywhere but in the answers that made them.
    let events = serde_json::to_string(&admin.events(0, 1000, None).await?)?;
    let listings = serde_json::to_string(&admin.list_enrol_tokens(None).await?)?;
    let devices = serde_json::to_string(&admin.list_devices(None).await?)?;
    let status = serde_json::to_string(&admin.status().await?)?;
    let metrics = fogswarm_e2e::http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    let log = server.log_text();
    for token in &shown_once {
        for (place, text) in [
            ("events", &events),
            ("listings", &listings),
            ("devices", &devices),
            ("status", &status),
            ("metrics", &metrics),
            ("log", &log),
        ] {
            ensure!(!text.contains(token.as_str()), "a token in the {place}");
            ensure!(
                !text.contains(&token[5..25]),
                "part of a token in the {place}"
            );
        }
    }
    ensure!(events.contains("enrol_token.use"), "{events}");
    Ok(())
}

/// Credentials rotate without enrolling again: `fogswarm-agent rotate-key`
/// makes a new key, tells the server with the old one, and puts it in
/// place; the old key stops working, the new one is the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_its_key_without_enrolling_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    declare(&server.admin(), "turn", &[("rot-1", Role::Leader)]).await?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    let old = Arc::new(
        FileKey::load_or_create("rot-1", &state.join("device.key")).map_err(anyhow::Error::msg)?,
    );
    server
        .enrol_with(&old, Admit::Key(server.provisioning_key()), &[])
        .await?;
    std::fs::write(state.join("enrolled"), b"")?;
    let agent = fogswarm_e2e::workspace_binary("fogswarm-agent", "fogswarm-agent");
    let rotate = || -> Result<Run> {
        Ok(Command::new(&agent)
            .args([
                "rotate-key",
                "--server",
                &server.url,
                "--device-id",
                "rot-1",
                "--tpm",
                "none",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(dir.path().join("agent.json"))
            .output()?
            .into())
    };
    std::fs::write(dir.path().join("agent.json"), b"{}")?;
    let run = rotate()?;
    ensure!(run.code == 0, "{}", run.stderr);
    let new =
        FileKey::load_or_create("rot-1", &state.join("device.key")).map_err(anyhow::Error::msg)?;
    ensure!(new.public_key() != old.public_key());
    ensure!(
        run.stdout.contains(&new.public_key().fingerprint()),
        "{}",
        run.stdout
    );
    assert_eq!(
        status_of(server.anonymous().with_device(old).config().await),
        Some(401)
    );
    server
        .anonymous()
        .with_device(Arc::new(new))
        .config()
        .await?;
    let shown = server.admin().get_device("rot-1").await?;
    assert!(shown.reenrol_pending.is_none());
    assert!(server
        .admin()
        .events(0, 100, Some("rot-1"))
        .await?
        .iter()
        .any(|e| e.action == "device.key_rotated"));
    // A key in a TPM does not rotate; a device not enrolled has nothing to.
    let tpm = Command::new(&agent)
        .args([
            "rotate-key",
            "--server",
            &server.url,
            "--device-id",
            "rot-1",
            "--tpm",
            "/dev/null",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(dir.path().join("agent.json"))
        .output()?;
    ensure!(!tpm.status.success() && String::from_utf8_lossy(&tpm.stderr).contains("TPM"));
    std::fs::remove_file(state.join("enrolled"))?;
    let run = rotate()?;
    ensure!(
        run.code != 0 && run.stderr.contains("not enrolled"),
        "{}",
        run.stderr
    );
    Ok(())
}
