//! What services need from the server, as a real process over real HTTP
//! (rerun on PostgreSQL by scripts/test): secrets, configs and registry
//! logins (versions, values only for managers, sealed at rest, never in a
//! log, event or listing), `service rollback`, and `service logs` passing
//! through the server.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::server::ServerProcess;
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::Role;

/// Secrets, configs and registry logins on the server: versions, the
/// rollout of a new value to the services naming it, values only for the
/// swarm's managers, sealed at rest, never in a log, an event or a
/// listing; and `service rollback` swapping specs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_configs_logins_and_rollback() -> Result<()> {
    use base64::Engine as _;
    use fogswarm_protocol::secret::*;
    use fogswarm_protocol::service::{DeployOutcome, FileRef, ServiceSpec};
    let b64 = |s: &str| Secret::new(base64::engine::general_purpose::STANDARD.encode(s));
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--log-level", "trace"])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(
        &admin,
        "vault",
        &[
            ("02:fc:00:00:00:01", Role::Leader),
            ("02:fc:00:00:00:02", Role::Worker),
        ],
    )
    .await?;
    let (manager, _) = server.enrol("02:fc:00:00:00:01", &[]).await?;
    let (worker, _) = server.enrol("02:fc:00:00:00:02", &[]).await?;
    const VALUE: &str = "correct-horse-battery-staple";
    const VALUE2: &str = "a-second-secret-value-9f2c";
    const PASSWORD: &str = "registry-password-77d1";
    let write = |name: &str, value: &str| FileWrite {
        name: name.into(),
        data: b64(value),
    };
    let created = admin
        .write_file(
            "vault",
            FileKind::Secret,
            &write("db_password", VALUE),
            true,
        )
        .await?;
    ensure!(created.outcome == DeployOutcome::Created && created.file.version == 1);
    ensure!(
        created.file.digest.is_none(),
        "a secret's digest is never shown"
    );
    let again = admin
        .write_file(
            "vault",
            FileKind::Secret,
            &write("db_password", "other"),
            true,
        )
        .await
        .expect_err("create refuses an existing name");
    ensure!(
        again.status() == Some(409) && again.to_string().contains("update"),
        "{again}"
    );
    let same = admin
        .write_file(
            "vault",
            FileKind::Secret,
            &write("db_password", VALUE),
            false,
        )
        .await?;
    ensure!(same.outcome == DeployOutcome::Unchanged && same.file.version == 1);
    admin
        .write_file(
            "vault",
            FileKind::Config,
            &write("app_conf", "level=debug\n"),
            true,
        )
        .await?;
    let conf = admin
        .get_file("vault", FileKind::Config, "app_conf")
        .await?;
    ensure!(
        conf["data"] == base64::engine::general_purpose::STANDARD.encode("level=debug\n"),
        "{conf}"
    );
    let shown = admin
        .get_file("vault", FileKind::Secret, "db_password")
        .await?;
    ensure!(
        shown.get("data").is_none(),
        "a secret's value is never shown: {shown}"
    );

    // A service naming a secret the swarm lacks is refused.
    let mut spec = ServiceSpec::new("app", "reg.example:5000/app:v1");
    spec.secrets = vec![FileRef {
        source: "nope".into(),
        ..Default::default()
    }];
    let e = admin
        .deploy_service("vault", &spec)
        .await
        .expect_err("missing secret");
    ensure!(
        e.status() == Some(422) && e.to_string().contains("nope"),
        "{e}"
    );
    spec.secrets[0].source = "db_password".into();
    spec.configs = vec![FileRef {
        source: "app_conf".into(),
        target: Some("/etc/app.conf".into()),
        ..Default::default()
    }];
    let deployed = admin.deploy_service("vault", &spec).await?;
    let desired = manager.desired(None, 0).await?;
    let app = desired
        .services
        .iter()
        .find(|s| s.spec.name == "app")
        .context("app desired")?;
    ensure!(
        app.secret_versions.get("db_password") == Some(&1),
        "{:?}",
        app.secret_versions
    );
    ensure!(app.config_versions.get("app_conf") == Some(&1));
    ensure!(app.registry_auth.is_none());

    // A new value: version 2, and the service rolls to it.
    let rotated = admin
        .write_file(
            "vault",
            FileKind::Secret,
            &write("db_password", VALUE2),
            false,
        )
        .await?;
    ensure!(rotated.outcome == DeployOutcome::Updated && rotated.file.version == 2);
    ensure!(rotated.rolled == ["app"], "{:?}", rotated.rolled);
    let after = admin.get_service("vault", "app").await?;
    ensure!(
        after.revision > deployed.service.revision,
        "the service rolls"
    );
    let desired = manager.desired(None, 0).await?;
    let app = desired
        .services
        .iter()
        .find(|s| s.spec.name == "app")
        .context("app")?;
    ensure!(app.secret_versions.get("db_password") == Some(&2));
    let listed = admin.list_files("vault", FileKind::Secret).await?;
    ensure!(
        listed[0].used_by == ["app"] && listed[0].version == 2,
        "{listed:?}"
    );

    // Values: the current version, for a manager of the swarm only.
    let ask = |version| ValuesRequest {
        files: vec![FileVersion {
            kind: FileKind::Secret,
            name: "db_password".into(),
            version,
        }],
        registries: vec![],
    };
    let values = manager.values(&ask(2)).await?;
    ensure!(values.files[0].data.expose() == b64(VALUE2).expose());
    let old = manager.values(&ask(1)).await.expect_err("old version");
    ensure!(old.status() == Some(404), "{old}");
    let refused = worker.values(&ask(2)).await.expect_err("a worker");
    ensure!(refused.status() == Some(403), "{refused}");
    let in_use = admin
        .remove_file("vault", FileKind::Secret, "db_password")
        .await
        .expect_err("in use");
    ensure!(
        in_use.status() == Some(409) && in_use.to_string().contains("app"),
        "{in_use}"
    );

    // A registry login: the services pulling from it roll, and the leader
    // can fetch it; listings show the user, never the password.
    let login = admin
        .registry_login(
            "vault",
            "reg.example:5000",
            &RegistryLogin {
                username: "ci".into(),
                password: Secret::new(PASSWORD),
            },
        )
        .await?;
    ensure!(login.username == "ci");
    let desired = manager.desired(None, 0).await?;
    let app = desired
        .services
        .iter()
        .find(|s| s.spec.name == "app")
        .context("app")?;
    ensure!(app.registry_auth.as_deref() == Some("reg.example:5000"));
    let creds = manager
        .values(&ValuesRequest {
            files: vec![],
            registries: vec!["reg.example:5000".into()],
        })
        .await?;
    ensure!(
        creds.registries[0].password.expose() == PASSWORD && creds.registries[0].username == "ci"
    );
    let bad_host = admin
        .registry_login(
            "vault",
            "not a host",
            &RegistryLogin {
                username: "ci".into(),
                password: Secret::new("x"),
            },
        )
        .await
        .expect_err("bad host");
    ensure!(bad_host.status() == Some(422), "{bad_host}");

    // Rollback swaps the spec with the one before, twice over.
    let mut v2 = spec.clone();
    v2.image = "reg.example:5000/app:v2".into();
    admin.deploy_service("vault", &v2).await?;
    let back = admin.rollback_service("vault", "app").await?;
    ensure!(back.spec.image.ends_with(":v1"), "{}", back.spec.image);
    let forth = admin.rollback_service("vault", "app").await?;
    ensure!(forth.spec.image.ends_with(":v2"));
    admin
        .deploy_service("vault", &ServiceSpec::new("fresh", "x:1"))
        .await?;
    let none = admin
        .rollback_service("vault", "fresh")
        .await
        .expect_err("no previous");
    ensure!(none.status() == Some(409), "{none}");

    // Nothing of a value anywhere it could leak.
    let log = server.log_text();
    let events = serde_json::to_string(&admin.events(0, 1000, None).await?)?;
    let listings = serde_json::to_string(&(
        admin.list_files("vault", FileKind::Secret).await?,
        admin.list_registries("vault").await?,
        admin.list_services("vault").await?,
    ))?;
    for value in [VALUE, VALUE2, PASSWORD] {
        let encoded = b64(value);
        for (place, text) in [("log", &log), ("events", &events), ("listings", &listings)] {
            ensure!(!text.contains(value), "a value appears in the {place}");
            ensure!(
                !text.contains(encoded.expose()),
                "a base64 value appears in the {place}"
            );
        }
    }
    ensure!(
        events.contains("secret.update") && events.contains("registry.login"),
        "{events}"
    );
    // Sealed at rest: the database file holds no value (SQLite; on
    // PostgreSQL the same code writes the same sealed text).
    if !fogswarm_e2e::server::on_postgres() {
        let db = std::fs::read(data.join("fleet.db"))?;
        let wal = std::fs::read(data.join("fleet.db-wal")).unwrap_or_default();
        for value in [VALUE, VALUE2, PASSWORD] {
            for bytes in [&db, &wal] {
                ensure!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "a value is stored in the clear"
                );
            }
        }
    }
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("secrets.key"))?.permissions(),
    ) & 0o777;
    ensure!(key_mode == 0o600, "secrets.key is {key_mode:o}");
    Ok(())
}

/// `service logs` through the server: a request reaches the managers'
/// desired state, lines posted by a manager come back to the reader in
/// order, a worker cannot post, and a closed request answers 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_pass_through_the_server() -> Result<()> {
    use fogswarm_protocol::logs::{LogChunk, LogOptions};
    use fogswarm_protocol::service::ServiceSpec;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(
        &admin,
        "talk",
        &[
            ("02:fd:00:00:00:01", Role::Leader),
            ("02:fd:00:00:00:02", Role::Worker),
        ],
    )
    .await?;
    let (manager, _) = server.enrol("02:fd:00:00:00:01", &[]).await?;
    let (worker, _) = server.enrol("02:fd:00:00:00:02", &[]).await?;
    let missing = admin
        .open_logs(&talk("ghost"), &LogOptions::default())
        .await
        .expect_err("no such service");
    ensure!(missing.status() == Some(404), "{missing}");
    let bad = admin
        .open_logs(
            &talk("ghost"),
            &LogOptions {
                since: Some("yesterday".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("bad since");
    ensure!(bad.status() == Some(422), "{bad}");
    admin
        .deploy_service("talk", &ServiceSpec::new("web", "x:1"))
        .await?;
    let options = LogOptions {
        follow: true,
        tail: Some(10),
        ..Default::default()
    };
    let opened = admin.open_logs(&talk("web"), &options).await?;
    let desired = manager.desired(None, 0).await?;
    let request = desired
        .log_requests
        .iter()
        .find(|r| r.id == opened.id)
        .context("the request in the desired state")?;
    ensure!(request.service == "web" && request.options == options);
    let page = admin.read_logs(&talk("web"), &opened.id, 0).await?;
    ensure!(!page.started && page.lines.is_empty() && !page.done);
    manager
        .post_log_chunk(
            &opened.id,
            &LogChunk {
                lines: vec![
                    "web.1.aaa@dev1    | one".into(),
                    "web.1.aaa@dev1    | two".into(),
                ],
                ..Default::default()
            },
        )
        .await?;
    let refused = worker
        .post_log_chunk(&opened.id, &LogChunk::default())
        .await
        .expect_err("a worker");
    ensure!(refused.status() == Some(403), "{refused}");
    let page = admin.read_logs(&talk("web"), &opened.id, 0).await?;
    ensure!(
        page.started && page.lines.len() == 2 && page.next == 2,
        "{page:?}"
    );
    manager
        .post_log_chunk(
            &opened.id,
            &LogChunk {
                lines: vec!["web.2.bbb@dev2    | three".into()],
                done: true,
                error: None,
            },
        )
        .await?;
    let page = admin.read_logs(&talk("web"), &opened.id, page.next).await?;
    ensure!(
        page.lines == ["web.2.bbb@dev2    | three"] && page.done,
        "{page:?}"
    );
    let desired = manager.desired(None, 0).await?;
    ensure!(
        desired.log_requests.is_empty(),
        "a done request is not asked for again"
    );
    admin.close_logs(&talk("web"), &opened.id).await?;
    let gone = manager
        .post_log_chunk(&opened.id, &LogChunk::default())
        .await
        .expect_err("closed");
    ensure!(gone.status() == Some(410), "{gone}");
    let gone = admin
        .read_logs(&talk("web"), &opened.id, 0)
        .await
        .expect_err("closed");
    ensure!(gone.status() == Some(410), "{gone}");
    Ok(())
}

/// A service of swarm "talk", as a log source.
fn talk(service: &str) -> fogswarm_client::LogSource {
    fogswarm_client::LogSource::Service {
        swarm: "talk".into(),
        service: service.into(),
    }
}
