//! The SQLite server under faults: killed mid-stream, its disk full or
//! read-only, backed up under load and restored elsewhere; and guessing
//! secrets slowed down per source address.

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use fogswarm_client::{Client, ClientError};
use fogswarm_e2e::fleet::{self, FleetPlan};
use fogswarm_e2e::server::{
    declare, device_key, secret_value, server_binary, Admit, ServerProcess,
};
use fogswarm_protocol::api::*;
use fogswarm_protocol::secret::{FileKind, FileWrite};
use fogswarm_protocol::validate::{AutoEnrol, Labels, Role};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_keeps_every_acknowledged_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[])?;
    let admin = server.admin();
    declare(&admin, "durable", &[("02:fd:00:00:00:01", Role::Worker)]).await?;
    let labeller = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 1u32.. {
                let change = LabelChange {
                    set: Labels::from([(format!("k{}", n % 30), n.to_string())]),
                    unset: vec![],
                };
                match admin.change_labels("02:fd:00:00:00:01", &change).await {
                    Ok(_) => acknowledged.push(n),
                    Err(_) => break,
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill()?;
    server.child.wait()?;
    let acknowledged = labeller.await?;
    ensure!(
        acknowledged.len() > 20,
        "only {} changes before the kill",
        acknowledged.len()
    );
    let again = ServerProcess::start(&data, &[])?;
    let labels = again.admin().get_device("02:fd:00:00:00:01").await?.labels;
    for n in &acknowledged {
        let slot = format!("k{}", n % 30);
        let stored: u32 = labels.get(&slot).and_then(|v| v.parse().ok()).unwrap_or(0);
        ensure!(
            stored >= *n,
            "acknowledged {slot}={n} is lost after kill -9 ({slot}={stored})"
        );
    }
    Ok(())
}

/// A filesystem of the test's own, unmounted when dropped: a small tmpfs
/// (to fill), or ext4 on a loop device mounted `errors=remount-ro` (to
/// have the kernel turn it read-only under the server, as a failing disk
/// does; tmpfs cannot go read-only while a file is open for writing).
struct Disk(std::path::PathBuf);

impl Disk {
    fn tmpfs(path: &Path, size: &str) -> Result<Disk> {
        std::fs::create_dir_all(path)?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &arg(path),
            ],
        )?;
        Ok(Disk(path.to_path_buf()))
    }

    fn ext4(image: &Path, path: &Path) -> Result<Disk> {
        std::fs::create_dir_all(path)?;
        run("truncate", &["-s", "64M", &arg(image)])?;
        run("mkfs.ext4", &["-q", "-F", &arg(image)])?;
        Self::mount_ext4(image, path)
    }

    fn mount_ext4(image: &Path, path: &Path) -> Result<Disk> {
        run(
            "mount",
            &["-o", "loop,errors=remount-ro", &arg(image), &arg(path)],
        )?;
        Ok(Disk(path.to_path_buf()))
    }

    /// Makes the kernel see an ext4 error: the filesystem turns read-only
    /// at once, open files or not.
    fn fail_read_only(&self) -> Result<()> {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.0)
            .output()?;
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = device.rsplit('/').next().unwrap_or_default().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
            .with_context(|| format!("triggering an ext4 error on {device}"))
    }

    fn unmount(self) -> Result<()> {
        run("umount", &[&arg(&self.0)])?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Writes until one is refused; answers the acknowledged swarm names and
/// the refusal.
async fn write_until_refused(admin: &Client, prefix: &str) -> Result<(Vec<String>, ClientError)> {
    let mut acknowledged = Vec::new();
    for i in 0..2000 {
        let name = format!("{prefix}{i}");
        match admin
            .create_swarm(&SwarmCreate {
                name: name.clone(),
                auto_enrol: AutoEnrol::Off,
            })
            .await
        {
            Ok(_) => acknowledged.push(name),
            Err(e) => return Ok((acknowledged, e)),
        }
    }
    bail!("2000 writes were all accepted: the fault never showed")
}

/// The refusal is a 503 whose message says one of `words`.
fn unavailable_saying(refusal: &ClientError, words: &[&str]) -> Result<()> {
    match refusal {
        ClientError::Api { status: 503, body } => ensure!(
            words.iter().any(|w| body.message.contains(w)),
            "the 503 should say what is wrong ({words:?}): {}",
            body.message
        ),
        other => bail!("got {other:?}, not 503"),
    }
    Ok(())
}

async fn swarm_names(server: &ServerProcess) -> Result<Vec<String>> {
    Ok(server
        .admin()
        .list_swarms()
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_the_database_survives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = Disk::tmpfs(&dir.path().join("disk"), "3m")?;
    let data = disk.0.join("data");
    let server = ServerProcess::start(&data, &[])?;
    let admin = server.admin();
    // A filler takes every free byte; writes go on until one does not fit.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
    }
    let (acknowledged, refusal) = write_until_refused(&admin, "full").await?;
    unavailable_saying(&refusal, &["full", "disk"])?;
    // Reads still work, and writes resume once there is room.
    admin.list_swarms().await?;
    std::fs::remove_file(&filler)?;
    admin
        .create_swarm(&SwarmCreate {
            name: "after-full".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await
        .context("a write once the disk has room again")?;
    server.stop()?;
    // The database opens afterwards with every acknowledged write.
    let again = ServerProcess::start(&data, &[])?;
    let names = swarm_names(&again).await?;
    for name in acknowledged.iter().chain([&"after-full".to_string()]) {
        ensure!(names.contains(name), "acknowledged swarm {name} is gone");
    }
    drop(again);
    disk.unmount()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_gone_read_only_answers_503_and_the_database_survives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    let mount = dir.path().join("disk");
    let disk = Disk::ext4(&image, &mount)?;
    // The data directory is the mount itself: the server's log (beside the
    // data directory) stays on a disk that keeps working.
    let data = mount.clone();
    let server = ServerProcess::start(&data, &[])?;
    let admin = server.admin();
    let mut before = Vec::new();
    for i in 0..20 {
        let name = format!("before{i}");
        admin
            .create_swarm(&SwarmCreate {
                name: name.clone(),
                auto_enrol: AutoEnrol::Off,
            })
            .await?;
        before.push(name);
    }
    disk.fail_read_only()?;
    let (acknowledged, refusal) = write_until_refused(&admin, "ro").await?;
    unavailable_saying(&refusal, &["read-only", "disk"])?;
    // Reads go on.
    ensure!(admin.list_swarms().await?.len() >= before.len());
    drop(server);
    // As after a real disk error: unmount, repair, mount again.
    disk.unmount()?;
    let fsck = Command::new("e2fsck").arg("-fy").arg(&image).status()?;
    ensure!(fsck.code().is_some_and(|c| c <= 1), "e2fsck: {fsck}");
    let _disk = Disk::mount_ext4(&image, &mount)?;
    let again = ServerProcess::start(&data, &[])?;
    let names = swarm_names(&again).await?;
    for name in before.iter().chain(&acknowledged) {
        ensure!(names.contains(name), "acknowledged swarm {name} is gone");
    }
    Ok(())
}

fn server_command(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(server_binary()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_the_same_fleet() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--tls-self-signed"])?;
    let fingerprint = server.fingerprint.clone().context("fingerprint")?;
    let admin = server.admin();
    declare(&admin, "kept", &[("02:fe:00:00:00:01", Role::Leader)]).await?;
    let identity = device_key("02:fe:00:00:00:01")?;
    server
        .enrol_with(&identity, Admit::Key(server.provisioning_key()), &[])
        .await?;
    // A secret: sealed under DATA/secrets.key, which is not in the database.
    const VALUE: &str = "restored-secret-value-31c7";
    let value = fogswarm_protocol::api::Secret::new(
        base64::engine::general_purpose::STANDARD.encode(VALUE),
    );
    admin
        .write_file(
            "kept",
            FileKind::Secret,
            &FileWrite {
                name: "db_password".into(),
                data: value.clone(),
            },
            true,
        )
        .await?;
    // Load while the backup is taken.
    let endpoints = [server.endpoint()];
    let (token, key) = (server.admin_token(), server.provisioning_key());
    let load = tokio::spawn(async move {
        let plan = FleetPlan {
            devices: 100,
            managers: 3,
            interval: Duration::from_millis(500),
            jitter: 0.2,
            enrol_window: Duration::from_secs(2),
            duration: Duration::from_secs(8),
            pools: 4,
            in_flight: 16,
            swarm: "busy".into(),
        };
        fleet::run(&endpoints, token, key, &plan).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let backup = dir.path().join("fleet.backup");
    let data_arg = data.display().to_string();
    let backup_arg = backup.display().to_string();
    let (code, stdout, stderr) =
        server_command(&["backup", "--data", &data_arg, "--to", &backup_arg])?;
    ensure!(code == 0, "backup failed: {stderr}");
    ensure!(stdout.contains("backed up"), "{stdout}");
    let key_copy = dir.path().join("fleet.backup.secrets-key");
    ensure!(
        stdout.contains(&key_copy.display().to_string()),
        "the backup says where the secrets key went: {stdout}"
    );
    for file in [&backup, &key_copy] {
        ensure!(
            std::fs::metadata(file)?.permissions().mode() & 0o777 == 0o600,
            "{} holds keys: it must be 0600",
            file.display()
        );
    }
    ensure!(
        std::fs::read(&key_copy)? == std::fs::read(data.join("secrets.key"))?,
        "the copy beside the backup is the server's secrets key"
    );
    let report = load.await??;
    ensure!(
        report.errors == 0,
        "the backup disturbed the load: {report:?}"
    );
    // A second backup to the same file is refused, the first kept.
    let (code, _, stderr) = server_command(&["backup", "--data", &data_arg, "--to", &backup_arg])?;
    ensure!(code != 0 && stderr.contains("exists"), "{stderr}");

    // Without the key beside it the restore is refused by name, and
    // leaves nothing; with another key too.
    let elsewhere = dir.path().join("elsewhere");
    let elsewhere_arg = elsewhere.display().to_string();
    let aside = dir.path().join("key-aside");
    std::fs::rename(&key_copy, &aside)?;
    let (code, _, stderr) =
        server_command(&["restore", "--from", &backup_arg, "--data", &elsewhere_arg])?;
    ensure!(
        code != 0 && stderr.contains(&key_copy.display().to_string()) && stderr.contains("missing"),
        "{stderr}"
    );
    ensure!(!elsewhere.join("fleet.db").exists() && !elsewhere.join("secrets.key").exists());
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, format!("{}\n", "ab".repeat(32)))?;
    let (code, _, stderr) = server_command(&[
        "restore",
        "--from",
        &backup_arg,
        "--secrets-key",
        &other_key.display().to_string(),
        "--data",
        &elsewhere_arg,
    ])?;
    ensure!(code != 0 && stderr.contains("sealed with key"), "{stderr}");
    ensure!(!elsewhere.join("fleet.db").exists() && !elsewhere.join("secrets.key").exists());
    std::fs::rename(&aside, &key_copy)?;

    // Restore elsewhere.
    let (code, stdout, stderr) =
        server_command(&["restore", "--from", &backup_arg, "--data", &elsewhere_arg])?;
    ensure!(code == 0, "restore failed: {stderr}");
    ensure!(
        stdout.contains(&fingerprint),
        "restore names the CA: {stdout}"
    );
    // Not over an existing fleet, and not from something that is no backup.
    let (code, _, stderr) =
        server_command(&["restore", "--from", &backup_arg, "--data", &elsewhere_arg])?;
    ensure!(code != 0 && stderr.contains("already exists"), "{stderr}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a database at all, just some words")?;
    let fresh = dir.path().join("fresh");
    let (code, _, stderr) = server_command(&[
        "restore",
        "--from",
        &junk.display().to_string(),
        "--data",
        &fresh.display().to_string(),
    ])?;
    ensure!(
        code != 0 && stderr.contains("not a SQLite database"),
        "{stderr}"
    );
    ensure!(
        !fresh.join("fleet.db").exists(),
        "a refused restore left a database"
    );

    let admin_token = server.admin_token();
    drop(server);
    let restored = ServerProcess::start(&elsewhere, &["--tls-self-signed"])?;
    ensure!(
        restored.fingerprint.as_deref() == Some(fingerprint.as_str()),
        "the CA changed"
    );
    let device = restored.anonymous().with_device(identity);
    ensure!(
        matches!(device.config().await?, ConfigAnswer::Init { .. }),
        "the restored server does not know the device"
    );
    // The leader gets the secret's value from the restored server.
    ensure!(
        secret_value(&device, "db_password", 1).await?.expose() == value.expose(),
        "the secret does not open after the restore"
    );
    let admin = Client::new(&restored.endpoint(), Some(admin_token))?;
    ensure!(admin.get_swarm("kept").await?.devices == 1);
    ensure!(admin.get_swarm("busy").await?.devices == 100);
    Ok(())
}

fn raw_client(source: &str) -> Result<reqwest::Client> {
    fogswarm_client::ensure_crypto_provider();
    Ok(reqwest::Client::builder()
        .local_address(Some(source.parse()?))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Issue 23, test 5: guesses are slowed per address and per what was
/// guessed, and never lock out a valid credential from the same address
/// (a site behind one NAT address); behind a trusted proxy the limit falls
/// on the forwarded client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_slowed_without_locking_out_the_innocent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(
        &admin,
        "guarded",
        &[
            ("02:ff:00:00:00:01", Role::Leader),
            ("02:ff:00:00:00:03", Role::Worker),
        ],
    )
    .await?;
    let (device, _) = server.enrol("02:ff:00:00:00:01", &[]).await?;
    let same_address = raw_client("127.0.0.1")?;

    // Twenty wrong admin tokens: refused, then slowed with Retry-After.
    let statuses = guess_admin_tokens(&same_address, &server.url, 20, None).await?;
    ensure!(statuses.0[..10].iter().all(|s| *s == 401), "{statuses:?}");
    ensure!(statuses.0[10..].iter().all(|s| *s == 429), "{statuses:?}");
    ensure!(
        statuses.1.is_some_and(|s| s > 0 && s <= 60),
        "Retry-After: {statuses:?}"
    );
    // Twenty wrong provisioning keys, each enrolment signed with a key of
    // its own: refused, then slowed.
    let mut enrol_statuses = Vec::new();
    for i in 0..20 {
        let r = server
            .enrol_with(
                &device_key("02:ff:00:00:00:02")?,
                Admit::Key(Secret::new(format!("fsp_guess{i}"))),
                &[],
            )
            .await;
        enrol_statuses.push(
            r.err()
                .and_then(|e| e.downcast::<ClientError>().ok())
                .and_then(|e| e.status()),
        );
    }
    ensure!(
        enrol_statuses[..10].iter().all(|s| *s == Some(401))
            && enrol_statuses[10..].iter().all(|s| *s == Some(429)),
        "{enrol_statuses:?}"
    );

    // From the same address, everything valid still works: the device's
    // signed requests, the admin token, a user's token, a dashboard
    // session signed in with it, and a new device with the right
    // provisioning key.
    ensure!(matches!(device.config().await?, ConfigAnswer::Init { .. }));
    admin.status().await?;
    admin
        .create_user(&UserCreate {
            name: "nat".into(),
            role: UserRole::Viewer,
            swarms: vec![],
            password: None,
        })
        .await?;
    let nat = admin
        .create_token(&UserTokenCreate {
            user: Some("nat".into()),
            expires_in_secs: None,
        })
        .await?;
    let r = same_address
        .get(format!("{}/v1/status", server.url))
        .bearer_auth(nat.token.expose())
        .send()
        .await?;
    ensure!(
        r.status() == 200,
        "a user's token from the same address: {}",
        r.status()
    );
    let r = same_address
        .post(format!("{}/login", server.url))
        .header("origin", &server.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.admin_token().expose()))
        .send()
        .await?;
    ensure!(
        r.status() == 303,
        "sign-in with the right token: {}",
        r.status()
    );
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("session cookie")?
        .to_string();
    let page = same_address
        .get(format!("{}/devices", server.url))
        .header("cookie", &cookie)
        .send()
        .await?;
    ensure!(
        page.status() == 200,
        "the session's page: {}",
        page.status()
    );
    server.enrol("02:ff:00:00:00:03", &[]).await?;
    // The refusals leak no secret.
    ensure!(!server
        .log_text()
        .contains(server.provisioning_key().expose()));
    drop(server);

    // Behind a trusted proxy (here the loopback), the limit falls on the
    // address it forwards, not on the proxy.
    let proxied = ServerProcess::start(
        &dir.path().join("proxied"),
        &["--trusted-proxy", "127.0.0.0/8"],
    )?;
    let (statuses, _) =
        guess_admin_tokens(&same_address, &proxied.url, 12, Some("198.51.100.7")).await?;
    ensure!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let (statuses, _) =
        guess_admin_tokens(&same_address, &proxied.url, 3, Some("198.51.100.8")).await?;
    ensure!(
        statuses.iter().all(|s| *s == 401),
        "another client behind the same proxy is not slowed: {statuses:?}"
    );
    drop(proxied);
    // Without --trusted-proxy, X-Forwarded-For is not believed.
    let direct = ServerProcess::start(&dir.path().join("direct"), &[])?;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let forwarded = format!("198.51.100.{i}");
        statuses.extend(
            guess_admin_tokens(&same_address, &direct.url, 1, Some(&forwarded))
                .await?
                .0,
        );
    }
    ensure!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    Ok(())
}

/// Sends `n` wrong admin tokens; answers the statuses and the last
/// Retry-After.
async fn guess_admin_tokens(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    forwarded_for: Option<&str>,
) -> Result<(Vec<u16>, Option<u64>)> {
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..n {
        let mut request = client
            .get(format!("{url}/v1/status"))
            .bearer_auth(format!("fsa_guess{i}"));
        if let Some(f) = forwarded_for {
            request = request.header("x-forwarded-for", f);
        }
        let r = request.send().await?;
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(r.status().as_u16());
    }
    Ok((statuses, retry_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_follows_polls_within_seconds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "seen", &[("02:f0:00:00:00:01", Role::Worker)]).await?;
    let (device, _) = server.enrol("02:f0:00:00:00:01", &[]).await?;
    let enrolled_at = admin
        .get_device("02:f0:00:00:00:01")
        .await?
        .last_seen
        .context("seen at enrolment")?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    device.config().await?;
    // Written in the next batch, a few seconds at most.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let seen = admin
            .get_device("02:f0:00:00:00:01")
            .await?
            .last_seen
            .unwrap_or(0);
        if seen >= enrolled_at + 2 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "last_seen stayed {seen} after a poll 2 s past {enrolled_at}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
