//! TLS for real deployments, with a test PKI shaped like a public CA's (a
//! root, two intermediates): clients pinned to the root and clients
//! trusting the system's roots keep trusting a certificate re-issued under
//! another intermediate; SIGHUP (or a changed file) puts a renewal in
//! place without dropping open long polls; PostgreSQL is reached over
//! verified TLS.

use anyhow::{ensure, Context, Result};
use fogswarm_client::{Client, Endpoint};
use fogswarm_e2e::eventually;
use fogswarm_e2e::pki::{fingerprint, Authority, Leaf};
use fogswarm_e2e::postgres::PgCluster;
use fogswarm_e2e::server::{declare, server_binary, ServerProcess};
use fogswarm_e2e::workspace_binary;
use fogswarm_protocol::api::LabelChange;
use fogswarm_protocol::validate::{Labels, Role};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const D: &str = "02:f8:00:00:00:01";

/// Writes a leaf as certbot lays a renewal out: the chain (leaf, then its
/// intermediate) and the key.
fn install(dir: &Path, leaf: &Leaf, intermediate: &Authority) -> Result<()> {
    std::fs::write(
        dir.join("fullchain.pem"),
        format!("{}{}", leaf.pem, intermediate.pem),
    )?;
    std::fs::write(dir.join("privkey.pem"), &leaf.key_pem)?;
    Ok(())
}

/// Whether a client pinned to exactly `pin` gets an answer from `url`.
async fn trusted(url: &str, pin: &str, token: &fogswarm_protocol::api::Secret) -> bool {
    let Ok(endpoint) = Endpoint::new(url, Some(pin)) else {
        return false;
    };
    match Client::new(&endpoint, Some(token.clone())) {
        Ok(client) => client.list_swarms().await.is_ok(),
        Err(_) => false,
    }
}

/// The CLI with no pin, trusting the system's roots, where the system's
/// store is `ca_file` (SSL_CERT_FILE, as OpenSSL and rustls-native-certs
/// read it) or the machine's own when `None`.
fn cli_without_pin(url: &str, token_file: &Path, ca_file: Option<&Path>) -> Result<(bool, String)> {
    let mut command = Command::new(workspace_binary("fogswarm", "fogswarm"));
    command
        .args(["swarm", "ls", "--json", "--server", url, "--token-file"])
        .arg(token_file)
        .env_remove("FOGSWARM_CA_FINGERPRINT")
        .env_remove("FOGSWARM_CONFIG")
        .env_remove("SSL_CERT_DIR");
    match ca_file {
        Some(file) => command.env("SSL_CERT_FILE", file),
        None => command.env_remove("SSL_CERT_FILE"),
    };
    let out = command.output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_root_pins_and_system_roots_and_drop_no_long_poll() -> Result<()> {
    let root = Authority::root("fogswarm test root")?;
    let a = root.intermediate("intermediate A")?;
    let b = root.intermediate("intermediate B")?;
    let names = ["localhost", "127.0.0.1"];
    let (first, renewed) = (a.leaf(&names)?, b.leaf(&names)?);
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::write(certs.join("root.pem"), &root.pem)?;
    install(&certs, &first, &a)?;
    let arg = |name: &str| certs.join(name).display().to_string();
    let (chain, key, ca) = (arg("fullchain.pem"), arg("privkey.pem"), arg("root.pem"));
    let data = dir.path().join("data");
    let server = ServerProcess::start(
        &data,
        &["--tls-cert", &chain, "--tls-key", &key, "--tls-ca", &ca],
    )?;
    let root_pin = root.fingerprint()?;
    ensure!(
        server.fingerprint.as_deref() == Some(root_pin.as_str()),
        "the server names the root to pin, not the intermediate: {:?}",
        server.fingerprint
    );
    let token = server.admin_token();
    let admin = server.admin();
    declare(&admin, "renewed", &[(D, Role::Leader)]).await?;
    let (device, _) = server.enrol(D, &[]).await?;
    let revision = device.desired(None, 0).await?.revision;

    // A client with no pin trusts the system's roots: the test root in a
    // trust store of its own; the machine's own store does not know it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.expose())?;
    let url = server.url.replace("127.0.0.1", "localhost");
    let (ok, out) = cli_without_pin(&url, &token_file, Some(&certs.join("root.pem")))?;
    ensure!(ok && out.contains("renewed"), "system roots: {out}");
    let (ok, out) = cli_without_pin(&url, &token_file, None)?;
    ensure!(!ok, "an unknown root was trusted: {out}");

    // A long poll open across the renewal.
    let poll = tokio::spawn(async move { device.desired(Some(revision), 50).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The renewal comes under intermediate B; SIGHUP puts it in place.
    install(&certs, &renewed, &b)?;
    let pid = server.child.id().to_string();
    ensure!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()?
        .success());
    let leaf_pin = |leaf: &Leaf| fingerprint(&leaf.pem);
    eventually(10, || async {
        ensure!(
            trusted(&server.url, &leaf_pin(&renewed)?, &token).await,
            "new connections do not get the renewed certificate yet"
        );
        Ok(())
    })
    .await?;
    ensure!(
        !trusted(&server.url, &leaf_pin(&first)?, &token).await,
        "the old leaf is still served"
    );
    ensure!(trusted(&server.url, &root_pin, &token).await, "root pin");
    let (ok, out) = cli_without_pin(&url, &token_file, Some(&certs.join("root.pem")))?;
    ensure!(ok, "system roots after the renewal: {out}");

    // The long poll opened before the renewal ends with the change.
    let change = LabelChange {
        set: Labels::from([("renewed".to_string(), "yes".to_string())]),
        unset: vec![],
    };
    Client::new(&server.endpoint(), Some(token.clone()))?
        .change_labels(D, &change)
        .await?;
    let woken = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .context("the long poll never returned")??
        .context("the long poll failed across the renewal")?;
    ensure!(woken.revision > revision);

    // A renewal half written (a key that is no key) keeps the served one.
    std::fs::write(certs.join("privkey.pem"), "not a key")?;
    ensure!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()?
        .success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(trusted(&server.url, &leaf_pin(&renewed)?, &token).await);
    // Without SIGHUP: the files changing is enough (checked every 5 s).
    install(&certs, &first, &a)?;
    eventually(15, || async {
        ensure!(
            trusted(&server.url, &leaf_pin(&first)?, &token).await,
            "the changed files were not picked up"
        );
        Ok(())
    })
    .await?;
    let log = server.log_text();
    ensure!(
        log.contains("TLS certificate not reloaded"),
        "the failed reload is logged"
    );
    let mut server = server;
    ensure!(
        server.child.try_wait()?.is_none(),
        "SIGHUP stopped the server"
    );
    Ok(())
}

/// `--database ...?sslmode=verify-full&sslrootcert=CA` connects over TLS
/// (the server's session shows in pg_stat_ssl); another CA is refused, a
/// name the certificate does not hold is refused by verify-full and taken
/// by verify-ca, and sslmode=prefer is refused for its silent fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls() -> Result<()> {
    let root = Authority::root("database CA")?;
    let leaf = root.leaf(&["localhost"])?;
    let cluster = PgCluster::start_tls(&format!("{}{}", leaf.pem, root.pem), &leaf.key_pem)?;
    let db = cluster.create_database()?;
    let dbname = db.rsplit('/').next().context("database name")?.to_string();
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, &root.pem)?;
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, Authority::root("another CA")?.pem)?;
    let url = |host: &str, mode: &str, ca: &Path| {
        format!(
            "postgres://postgres@{host}:{}/{dbname}?sslmode={mode}&sslrootcert={}",
            cluster.port,
            ca.display()
        )
    };

    let verified = url("localhost", "verify-full", &ca);
    let server = ServerProcess::start(&dir.path().join("data"), &["--database", &verified])?;
    declare(&server.admin(), "sealed", &[(D, Role::Leader)]).await?;
    let token = server.admin_token();
    let over_tls = cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'fogswarm-server' AND s.ssl",
    )?;
    ensure!(
        over_tls.trim().parse::<u32>()? >= 1,
        "no fogswarm-server session uses TLS: {over_tls}"
    );
    drop(server);

    let refused = |database: String| -> Result<String> {
        let out = Command::new(server_binary())
            .arg("--data")
            .arg(dir.path().join("refused"))
            .args(["--listen", "127.0.0.1:0", "--database", &database])
            .output()?;
        ensure!(!out.status.success(), "{database} was accepted");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let e = refused(url("localhost", "verify-full", &other))?;
    ensure!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    let e = refused(url("127.0.0.1", "verify-full", &ca))?;
    ensure!(e.contains("NotValidForName") || e.contains("name"), "{e}");
    let e = refused(format!(
        "postgres://postgres@localhost:{}/{dbname}?sslmode=prefer",
        cluster.port
    ))?;
    ensure!(e.contains("sslmode=prefer"), "{e}");
    // verify-ca checks the chain, not the name.
    let server = ServerProcess::start(
        &dir.path().join("data-ca"),
        &["--database", &url("127.0.0.1", "verify-ca", &ca)],
    )?;
    let admin = Client::new(&server.endpoint(), Some(token))?;
    ensure!(admin.get_swarm("sealed").await?.devices == 1);
    Ok(())
}
