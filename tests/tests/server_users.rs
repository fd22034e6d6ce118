//! Named operators with roles (issue 23, test 4) against a real server:
//! every write of the operator API, as the OpenAPI document lists them, is
//! refused to a viewer and to an operator of another swarm (403, nothing
//! stored); an admin and an operator of the swarm may; events name the
//! user; removed users and expired tokens stop working. Both databases.

use anyhow::{ensure, Context, Result};
use fogswarm_client::{Client, ClientError};
use fogswarm_e2e::server::{db_fingerprint, declare, ServerProcess};
use fogswarm_e2e::{fogswarm, Run};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{Labels, Role};
use std::process::Command;

fn status_of<T>(r: std::result::Result<T, ClientError>) -> Option<u16> {
    r.err().and_then(|e| e.status())
}

/// Every operator-API write in the OpenAPI document: (method, path).
async fn operator_writes(server: &ServerProcess) -> Result<Vec<(String, String)>> {
    let doc: serde_json::Value = fogswarm_e2e::http()
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await?
        .json()
        .await?;
    let mut writes = Vec::new();
    for (path, ops) in doc["paths"].as_object().context("paths")? {
        for (method, op) in ops.as_object().context("ops")? {
            let operator_api = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s.get("admin").is_some()));
            let reads_logs = (method == "post" && path.ends_with("/logs"))
                || (method == "delete" && path.contains("/logs/{"));
            if operator_api && method != "get" && !reads_logs {
                writes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    Ok(writes)
}

/// A path of the template with its parameters filled in swarm `swarm`'s
/// things; the body names the swarm too where the route takes it there.
fn fill(path: &str, swarm: &str, device: &str, token_id: &str) -> String {
    let id = if path.starts_with("/v1/enrol-tokens") {
        token_id
    } else if path.starts_with("/v1/tokens") || path.starts_with("/v1/certificates") {
        "nosuchtoken"
    } else {
        device
    };
    path.replace("{name}", swarm)
        .replace("{id}", id)
        .replace("{service}", "svc")
        .replace("{stack}", "st")
        .replace("{secret}", "sec")
        .replace("{config}", "conf")
        .replace("{host}", "registry.example")
        .replace("{request}", "r1")
}

fn body_for(path: &str, swarm: &str) -> String {
    match path {
        "/v1/devices" => serde_json::json!({"id": "02:f5:00:00:00:99", "swarm": swarm}).to_string(),
        "/v1/devices/import" => {
            serde_json::json!([{"id": "02:f5:00:00:00:98", "swarm": swarm}]).to_string()
        }
        "/v1/enrol-tokens" => serde_json::json!({"swarm": swarm}).to_string(),
        "/v1/swarms" => serde_json::json!({"name": "newswarm"}).to_string(),
        _ => "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_every_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[])?;
    let admin = server.admin();
    declare(&admin, "a", &[("02:f5:00:00:00:0a", Role::Leader)]).await?;
    declare(&admin, "b", &[("02:f5:00:00:00:0b", Role::Leader)]).await?;
    let b_token = admin
        .create_enrol_token(&EnrolTokenCreate {
            swarm: "b".into(),
            labels: Labels::new(),
            uses: None,
            expires_in_secs: None,
            role: Role::Worker,
        })
        .await?;
    let user = |name: &str, role: UserRole, swarms: &[&str]| UserCreate {
        name: name.into(),
        role,
        swarms: swarms.iter().map(|s| s.to_string()).collect(),
        password: None,
    };
    let mut clients = Vec::new();
    for (name, role, swarms) in [
        ("vera", UserRole::Viewer, vec![]),
        ("otto", UserRole::Operator, vec!["a"]),
        ("ada", UserRole::Admin, vec![]),
    ] {
        admin.create_user(&user(name, role, &swarms)).await?;
        let made = admin
            .create_token(&UserTokenCreate {
                user: Some(name.into()),
                expires_in_secs: None,
            })
            .await?;
        assert!(made.token.expose().starts_with("fsu_"));
        clients.push((name, made.token));
    }
    let token_of = |name: &str| {
        clients
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .expect("a user of the test")
    };
    let as_user =
        |name: &str| Client::new(&server.endpoint(), Some(token_of(name))).expect("client");
    assert_eq!(as_user("otto").whoami().await?.swarms, ["a"]);

    // Every write: a viewer gets 403, and so does an operator of swarm a
    // on swarm b's things; nothing is stored.
    let writes = operator_writes(&server).await?;
    assert!(writes.len() >= 30, "{} writes: {writes:?}", writes.len());
    let http = fogswarm_e2e::http();
    let before = db_fingerprint(&data)?;
    let mut checked = 0;
    for (method, template) in &writes {
        // A user's own tokens and certificates are theirs to manage,
        // whatever the role (checked below).
        if template.starts_with("/v1/tokens") || template.starts_with("/v1/certificates") {
            continue;
        }
        for who in ["vera", "otto"] {
            let path = fill(template, "b", "02:f5:00:00:00:0b", &b_token.view.id);
            let r = http
                .request(method.parse()?, format!("{}{path}", server.url))
                .bearer_auth(token_of(who).expose())
                .header("content-type", "application/json")
                .body(body_for(template, "b"))
                .send()
                .await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            ensure!(status == 403, "{who}: {method} {path}: {status} {text}");
            let error: ApiError = serde_json::from_str(&text)?;
            ensure!(
                error.message.contains(who),
                "{who}: {method} {path}: {text}"
            );
            checked += 1;
        }
    }
    assert_eq!(
        db_fingerprint(&data)?,
        before,
        "a refused write changed the database"
    );
    eprintln!("{checked} refusals checked over {} writes", writes.len());

    // Reads are everyone's.
    let vera = as_user("vera");
    assert_eq!(vera.list_swarms().await?.len(), 2);
    vera.get_device("02:f5:00:00:00:0b").await?;
    vera.list_users().await?;

    // The operator changes its own swarm; the events name it.
    let otto = as_user("otto");
    otto.change_labels(
        "02:f5:00:00:00:0a",
        &LabelChange {
            set: Labels::from([("room".to_string(), "3".to_string())]),
            unset: vec![],
        },
    )
    .await?;
    otto.create_device(&DeviceCreate {
        id: "02:f5:00:00:00:1a".into(),
        swarm: "a".into(),
        role: Role::Worker,
        labels: Labels::new(),
    })
    .await?;
    // ... but cannot move a device of its swarm into another.
    let moved = otto
        .update_device(
            "02:f5:00:00:00:1a",
            &DeviceUpdate {
                swarm: Some("b".into()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(status_of(moved), Some(403));
    let events = admin.events(0, 1000, Some("02:f5:00:00:00:0a")).await?;
    assert!(
        events
            .iter()
            .any(|e| e.actor == "user:otto" && e.action == "device.label"),
        "{events:?}"
    );

    // An admin user does what the admin token does.
    let ada = as_user("ada");
    ada.create_swarm(&SwarmCreate {
        name: "c".into(),
        auto_enrol: fogswarm_protocol::validate::AutoEnrol::Off,
    })
    .await?;
    ada.update_swarm(
        "b",
        &SwarmUpdate {
            reimage: Some(Reimage::Auto),
            ..Default::default()
        },
    )
    .await?;
    ada.remove_enrol_token(&b_token.view.id).await?;
    ada.create_user(&user("ivy", UserRole::Viewer, &[])).await?;
    assert!(admin
        .events(0, 1000, Some("c"))
        .await?
        .iter()
        .any(|e| e.actor == "user:ada" && e.action == "swarm.create"));

    // Tokens: one's own; a removed user's stop at once; expired ones too.
    let own = vera.create_token(&UserTokenCreate::default()).await?;
    assert_eq!(own.view.user, "vera");
    let others = vera
        .create_token(&UserTokenCreate {
            user: Some("otto".into()),
            expires_in_secs: None,
        })
        .await;
    assert_eq!(status_of(others), Some(403));
    assert_eq!(vera.list_tokens(None).await?.len(), 2);
    let brief = admin
        .create_token(&UserTokenCreate {
            user: Some("otto".into()),
            expires_in_secs: Some(1),
        })
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = Client::new(&server.endpoint(), Some(brief.token))?;
    assert_eq!(status_of(expired.whoami().await), Some(401));
    admin.remove_user("vera").await?;
    assert_eq!(status_of(vera.whoami().await), Some(401));
    // The built-in admin's name is not for users; bad users are refused.
    assert_eq!(
        status_of(
            admin
                .create_user(&user("admin", UserRole::Admin, &[]))
                .await
        ),
        Some(422)
    );
    let mut weak = user("walt", UserRole::Viewer, &[]);
    weak.password = Some(Secret::new("short"));
    assert_eq!(status_of(admin.create_user(&weak).await), Some(422));

    // The CLI: users and tokens, the token printed once.
    let cli = |args: &[&str], stdin: Option<&str>| -> Result<Run> {
        let mut child = Command::new(fogswarm())
            .args(args)
            .env("FOGSWARM_SERVER", &server.url)
            .env("FOGSWARM_TOKEN", server.admin_token().expose())
            .env_remove("FOGSWARM_TOKEN_FILE")
            .env_remove("FOGSWARM_CA_FINGERPRINT")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?.into())
    };
    let added = cli(
        &[
            "user",
            "add",
            "pat",
            "--role",
            "operator",
            "--swarm",
            "a",
            "--password-stdin",
        ],
        Some("a long enough password\n"),
    )?;
    ensure!(added.code == 0, "{}", added.stderr);
    let listed = cli(&["user", "ls"], None)?;
    ensure!(
        listed.stdout.contains("pat")
            && listed.stdout.contains("operator")
            && listed.stdout.contains("set"),
        "{}",
        listed.stdout
    );
    let made = cli(
        &["token", "create", "--user", "pat", "--expires", "720h"],
        None,
    )?;
    ensure!(made.code == 0, "{}", made.stderr);
    let printed = made.stdout.trim().to_string();
    ensure!(printed.starts_with("fsu_"), "{}", made.stdout);
    let pat = Client::new(&server.endpoint(), Some(Secret::new(printed.clone())))?;
    assert_eq!(pat.whoami().await?.name, "pat");
    let bad = cli(&["user", "add", "x", "--role", "boss"], None)?;
    ensure!(
        bad.code == 2 && bad.stderr.contains("--role"),
        "{}",
        bad.stderr
    );
    // No user token anywhere but in the answers that made them.
    let log = server.log_text();
    let events = serde_json::to_string(&admin.events(0, 1000, None).await?)?;
    for token in [printed, own.token.expose().to_string()] {
        ensure!(!log.contains(&token) && !events.contains(&token));
    }
    Ok(())
}

/// Users' client certificates from the fleet's CA: written by the CLI as
/// Docker's TLS files, presented instead of a token, scoped by the user's
/// role, revoked at once; another fleet's certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_present_client_certificates_from_the_fleet_ca() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--tls-self-signed"])?;
    let fingerprint = server.fingerprint.clone().context("fingerprint")?;
    let admin = server.admin();
    declare(&admin, "a", &[("02:f7:00:00:00:0a", Role::Leader)]).await?;
    declare(&admin, "b", &[("02:f7:00:00:00:0b", Role::Leader)]).await?;
    admin
        .create_user(&UserCreate {
            name: "cora".into(),
            role: UserRole::Operator,
            swarms: vec!["a".into()],
            password: None,
        })
        .await?;
    let out = dir.path().join("cora-tls");
    let run: Run = Command::new(fogswarm())
        .args(["cert", "create", "--user", "cora", "--days", "30", "--out"])
        .arg(&out)
        .env("FOGSWARM_SERVER", &server.url)
        .env("FOGSWARM_CA_FINGERPRINT", &fingerprint)
        .env("FOGSWARM_TOKEN", server.admin_token().expose())
        .env_remove("FOGSWARM_TOKEN_FILE")
        .output()?
        .into();
    ensure!(run.code == 0, "{}", run.stderr);
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        ensure!(out.join(name).exists(), "{name} missing");
    }
    ensure!(std::fs::metadata(out.join("key.pem"))?.permissions().mode() & 0o777 == 0o600);
    let cert = std::fs::read_to_string(out.join("cert.pem"))?;
    let key = std::fs::read_to_string(out.join("key.pem"))?;
    let endpoint = server
        .endpoint()
        .with_client_certificate(&cert, Secret::new(key.clone()));
    let cora = Client::new(&endpoint, None)?;
    let me = cora.whoami().await?;
    assert_eq!((me.name.as_str(), me.role), ("cora", UserRole::Operator));
    cora.change_labels(
        "02:f7:00:00:00:0a",
        &LabelChange {
            set: Labels::from([("room".to_string(), "7".to_string())]),
            unset: vec![],
        },
    )
    .await?;
    let elsewhere = cora
        .change_labels(
            "02:f7:00:00:00:0b",
            &LabelChange {
                set: Labels::from([("room".to_string(), "7".to_string())]),
                unset: vec![],
            },
        )
        .await;
    assert_eq!(status_of(elsewhere), Some(403));
    assert!(admin
        .events(0, 100, Some("02:f7:00:00:00:0a"))
        .await?
        .iter()
        .any(|e| e.actor == "user:cora"));
    // No key is kept by the server: only the certificate's fingerprint.
    let listed = admin.list_certificates(Some("cora")).await?;
    assert_eq!(listed.len(), 1);
    ensure!(!server.log_text().contains(key.trim()));

    // Another fleet's CA signed this one: refused.
    let other = ServerProcess::start(&dir.path().join("other"), &["--tls-self-signed"])?;
    let other_admin = other.admin();
    other_admin
        .create_user(&UserCreate {
            name: "cora".into(),
            role: UserRole::Admin,
            swarms: vec![],
            password: None,
        })
        .await?;
    let foreign = other_admin
        .create_certificate(&UserCertificateCreate {
            user: Some("cora".into()),
            days: None,
        })
        .await?;
    let impostor = Client::new(
        &server
            .endpoint()
            .with_client_certificate(&foreign.certificate, foreign.key.clone()),
        None,
    )?;
    ensure!(
        impostor.whoami().await.is_err(),
        "another fleet's certificate got in"
    );

    // Revoked: the next request with it is nobody's.
    admin.remove_certificate(&listed[0].id).await?;
    assert_eq!(status_of(cora.whoami().await), Some(401));
    Ok(())
}
