//! Signed-only swarms (issue 16's "signed-only fogs"). At the server: a
//! real registry, images built, pushed and signed by the real CLI, a real
//! server. A swarm that requires signatures takes a signed image by
//! digest, refuses an unsigned one and one signed with another key (naming
//! the image and the key ids tried, storing nothing), and a tag pushed
//! over later changes nothing it stored. On a lab: the signed image runs
//! on the devices by digest and a tag pushed over changes nothing there;
//! the raft leader's agent checks again before it updates a service, and
//! reports services made outside fogswarm with unsigned images.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::registry::LocalRegistry;
use fogswarm_e2e::server::{db_fingerprint, ServerProcess};
use fogswarm_e2e::{eventually, fogswarm, http_get, serial, static_binary, Lab, Run};
use fogswarm_protocol::api::{Event, SwarmView};
use fogswarm_protocol::service::{ServiceStatus, ServiceView};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Env<'a> {
    server: &'a ServerProcess,
    home: &'a Path,
}

impl Env<'_> {
    fn run(&self, args: &[&str]) -> Result<Run> {
        Ok(Command::new(fogswarm())
            .args(args)
            .env("FOGSWARM_SERVER", &self.server.url)
            .env("FOGSWARM_TOKEN", self.server.admin_token().expose())
            .env("HOME", self.home)
            .output()?
            .into())
    }

    fn ok(&self, args: &[&str]) -> Result<Run> {
        let run = self.run(args)?;
        ensure!(
            run.code == 0,
            "fogswarm {args:?}: {}{}",
            run.stdout,
            run.stderr
        );
        Ok(run)
    }

    /// fog-hello pushed as `reference`, signed with `key` when given.
    fn push(&self, reference: &str, version: &str, key: Option<&Path>) -> Result<()> {
        let binary = static_binary("fog-hello", "x86_64-unknown-linux-musl");
        let binary_arg = format!("linux/amd64={}", binary.display());
        let env = format!("FOG_VERSION={version}");
        let key_arg = key.map(|k| k.display().to_string());
        let mut args = vec![
            "image",
            "build",
            "--binary",
            &binary_arg,
            "--tag",
            reference,
            "--push",
            "--insecure",
            "--sbom=false",
            "--env",
            &env,
        ];
        if let Some(k) = &key_arg {
            args.extend(["--sign", k]);
        }
        self.ok(&args)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_only_swarm_takes_signed_digests_only() -> Result<()> {
    let registry = LocalRegistry::start(None)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let insecure = format!("--insecure-registry={}", registry.addr);
    let server = ServerProcess::start(&data, &[&insecure, "--log-level", "debug"])?;
    let env = Env {
        server: &server,
        home: dir.path(),
    };
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let ours = keys.join("ours");
    let theirs = keys.join("theirs");
    for prefix in [&ours, &theirs] {
        env.ok(&["image", "keygen", "--out", &prefix.display().to_string()])?;
    }
    let signed = format!("{}/fog-hello:signed", registry.addr);
    let unsigned = format!("{}/fog-hello:unsigned", registry.addr);
    let other = format!("{}/fog-hello:other", registry.addr);
    env.push(&signed, "v1", Some(&ours.with_extension("key")))?;
    env.push(&unsigned, "v2", None)?;
    env.push(&other, "v3", Some(&theirs.with_extension("key")))?;
    env.ok(&["swarm", "create", "vault"])?;
    // A bad key file is refused by the CLI, naming it.
    let junk = dir.path().join("junk.pub");
    std::fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    )?;
    let bad = env.run(&[
        "swarm",
        "update",
        "vault",
        "--require-signed",
        &junk.display().to_string(),
    ])?;
    ensure!(
        bad.code == 2 && bad.stderr.contains("junk.pub"),
        "{}",
        bad.stderr
    );
    let ours_pub = ours.with_extension("pub").display().to_string();
    let updated = env.ok(&["swarm", "update", "vault", "--require-signed", &ours_pub])?;
    ensure!(
        updated.stdout.contains("must be signed by"),
        "{}",
        updated.stdout
    );
    let shown = env.ok(&["swarm", "show", "vault"])?;
    ensure!(shown.stdout.contains("signed by:"), "{}", shown.stdout);

    // Signed by our key: stored by digest.
    env.ok(&[
        "service", "deploy", "good", "--swarm", "vault", "--image", &signed, "--detach",
    ])?;
    let view: ServiceView = serde_json::from_str(
        &env.ok(&["service", "inspect", "good", "--swarm", "vault"])?
            .stdout,
    )
    .map(|mut v: Vec<ServiceView>| v.remove(0))?;
    let (base, digest) = view
        .spec
        .image
        .split_once('@')
        .context("stored by digest")?;
    ensure!(
        base == signed && digest.starts_with("sha256:"),
        "{}",
        view.spec.image
    );

    // Unsigned, and signed by another key: refused, naming image and key;
    // nothing stored.
    let before = db_fingerprint(&data)?;
    let our_id = {
        let out = env.ok(&[
            "image",
            "verify",
            &signed,
            "--key",
            &ours_pub,
            "--insecure",
            "--json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        v["key_id"].as_str().context("key id")?[..16].to_string()
    };
    for (image, name) in [(&unsigned, "plain"), (&other, "stranger")] {
        let run = env.run(&[
            "service", "deploy", name, "--swarm", "vault", "--image", image, "--detach",
        ])?;
        ensure!(run.code == 2, "{image}: exit {}: {}", run.code, run.stderr);
        ensure!(
            run.stderr.contains("fog-hello@sha256:") && run.stderr.contains(&our_id),
            "{image}: {}",
            run.stderr
        );
        ensure!(
            db_fingerprint(&data)? == before,
            "{image} changed the database"
        );
    }
    // A stack with one unsigned service is refused whole.
    let stack = dir.path().join("stack.yml");
    std::fs::write(
        &stack,
        format!("services:\n  a:\n    image: {signed}\n  b:\n    image: {unsigned}\n"),
    )?;
    let run = env.run(&[
        "stack",
        "deploy",
        "s",
        "--swarm",
        "vault",
        "-c",
        &stack.display().to_string(),
        "--detach",
    ])?;
    ensure!(
        run.code == 2 && run.stderr.contains("services[1].image"),
        "{}",
        run.stderr
    );
    ensure!(
        db_fingerprint(&data)? == before,
        "the refused stack changed the database"
    );

    // The tag pushed over (unsigned): the stored digest stays, and a new
    // deploy of that tag is refused.
    env.push(&signed, "v9", None)?;
    let again = env.run(&[
        "service", "deploy", "good", "--swarm", "vault", "--image", &signed, "--detach",
    ])?;
    ensure!(
        again.code == 2,
        "the re-pushed, unsigned tag deployed: {}",
        again.stdout
    );
    let view: Vec<ServiceView> = serde_json::from_str(
        &env.ok(&["service", "inspect", "good", "--swarm", "vault"])?
            .stdout,
    )?;
    ensure!(
        view[0].spec.image.ends_with(digest),
        "{}",
        view[0].spec.image
    );

    // --allow-unsigned lifts the rule.
    env.ok(&["swarm", "update", "vault", "--allow-unsigned"])?;
    env.ok(&[
        "service", "deploy", "plain", "--swarm", "vault", "--image", &unsigned, "--detach",
    ])?;
    Ok(())
}

/// What fog-hello answers on `ip`:8080 as its version, if it answers.
fn version_on(ip: &str) -> Option<String> {
    let (code, body) = http_get(&format!("{ip}:8080"), "/").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["version"].as_str().map(str::to_string))?
}

/// A service made on the leader's engine behind the server's back, with no
/// task (only its image matters here).
fn by_hand(name: &str, image: &str) -> bollard::models::ServiceSpec {
    bollard::models::ServiceSpec {
        name: Some(name.into()),
        mode: Some(bollard::models::ServiceSpecMode {
            replicated: Some(bollard::models::ServiceSpecModeReplicated { replicas: Some(0) }),
            ..Default::default()
        }),
        task_template: Some(bollard::models::TaskSpec {
            container_spec: Some(bollard::models::TaskSpecContainerSpec {
                image: Some(image.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_devices_the_leader_checks_again_and_reports_unsigned_services() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-sign", "10.213.246.0/24", &["--devices", "3"])?;
    let registry = lab.status()?.registry.context("lab registry")?.addr;
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("ours");
    lab.cli_ok(&["image", "keygen", "--out", &ours.display().to_string()])?;
    let key = ours.with_extension("key").display().to_string();
    let public = ours.with_extension("pub").display().to_string();
    let signed = lab.build_hello(&registry, "signed", &["--sign", &key])?;
    let unsigned = lab.build_hello(&registry, "unsigned", &[])?;

    // Before the swarm requires signatures: an unsigned service that reads
    // a secret.
    let run = lab.cli(
        &["secret", "create", "token", "-", "--swarm", "fog"],
        Some("one"),
    )?;
    ensure!(run.code == 0, "{}", run.stderr);
    lab.cli_ok(&[
        "service", "deploy", "old", "--swarm", "fog", "--image", &unsigned, "--secret", "token",
    ])?;
    lab.cli_ok(&["swarm", "update", "fog", "--require-signed", &public])?;

    // A signed image deploys by digest and runs on every device.
    lab.cli_ok(&[
        "service",
        "deploy",
        "hello",
        "--swarm",
        "fog",
        "--image",
        &signed,
        "--mode",
        "global",
        "--publish",
        "mode=host,8080:8080",
    ])?;
    let leader = lab.engine("dev1").await?;
    let running_image = || async {
        let s = leader.docker.inspect_service("hello", None).await?;
        s.spec
            .and_then(|s| s.task_template?.container_spec?.image)
            .context("hello's image")
    };
    let pinned = running_image().await?;
    ensure!(
        pinned.starts_with(&format!("{signed}@sha256:")),
        "the swarm runs {pinned}"
    );
    let ips: Vec<String> = lab.status()?.devices.into_iter().map(|d| d.ip).collect();
    eventually(30, || async {
        let versions: Vec<Option<String>> = ips.iter().map(|ip| version_on(ip)).collect();
        ensure!(
            versions.iter().all(|v| v.as_deref() == Some("signed")),
            "{versions:?}"
        );
        Ok(())
    })
    .await?;

    // The tag pushed over with an unsigned image: nothing changes on the
    // devices (several reconcile passes later).
    let hello = static_binary("fog-hello", "x86_64-unknown-linux-musl");
    lab.push_binary(&hello, &signed, &["--env", "FOG_VERSION=over"])?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        running_image().await? == pinned,
        "the service moved off its digest"
    );
    for ip in &ips {
        ensure!(
            version_on(ip).as_deref() == Some("signed"),
            "{ip} runs another image"
        );
    }

    // Services made behind the server's back: the unsigned one is
    // reported, the one on the signed digest is not.
    let unsigned_digest = leader
        .docker
        .inspect_registry_image(&unsigned, None)
        .await?
        .descriptor
        .digest
        .context("digest")?;
    let rogue = format!("{unsigned}@{unsigned_digest}");
    leader
        .docker
        .create_service(by_hand("rogue", &rogue), None)
        .await?;
    leader
        .docker
        .create_service(by_hand("vouched", &pinned), None)
        .await?;
    eventually(40, || async {
        let view: SwarmView =
            serde_json::from_str(&lab.cli_ok(&["swarm", "show", "fog", "--json"])?.stdout)?;
        let names: Vec<&str> = view
            .unsigned_services
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        ensure!(
            names == ["rogue"],
            "reported unsigned: {:?}",
            view.unsigned_services
        );
        let found = &view.unsigned_services[0];
        ensure!(
            found.image == rogue && found.problem.contains("no signature by key"),
            "{found:?}"
        );
        Ok(())
    })
    .await?;
    let shown = lab.cli_ok(&["swarm", "show", "fog"])?.stdout;
    ensure!(
        shown.contains("UNSIGNED") && shown.contains("rogue"),
        "{shown}"
    );
    let events: Vec<Event> =
        serde_json::from_str(&lab.cli_ok(&["events", "--limit", "500", "--json"])?.stdout)?;
    let reported: Vec<&Event> = events
        .iter()
        .filter(|e| e.action == "service.unsigned")
        .collect();
    ensure!(
        reported.len() == 1 && reported[0].subject == "fog/rogue",
        "{reported:?}"
    );

    // The leader's own check: a new secret version gives "old" a new
    // revision (the server does not re-check an image it stored before
    // the swarm required signatures); the leader refuses to update it to
    // the unsigned image and says why, and the swarm keeps the old task.
    let version_of_old = || async {
        let s = leader.docker.inspect_service("old", None).await?;
        Ok::<_, anyhow::Error>(s.version.and_then(|v| v.index))
    };
    let before = version_of_old().await?;
    let run = lab.cli(
        &["secret", "update", "token", "-", "--swarm", "fog"],
        Some("two"),
    )?;
    ensure!(
        run.code == 0 && run.stdout.contains("old"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    eventually(40, || async {
        let views: Vec<ServiceView> = serde_json::from_str(
            &lab.cli_ok(&["service", "ls", "--swarm", "fog", "--json"])?
                .stdout,
        )?;
        let old = views
            .iter()
            .find(|v| v.spec.name == "old")
            .context("old is listed")?;
        let error = old
            .observed
            .as_ref()
            .and_then(|o| o.apply_error.clone())
            .unwrap_or_default();
        ensure!(
            old.status == ServiceStatus::Failed
                && error.contains("signature rule")
                && error.contains("fog-hello@sha256:"),
            "{:?}: {error}",
            old.status
        );
        Ok(())
    })
    .await?;
    ensure!(
        version_of_old().await? == before,
        "the leader updated the unsigned service"
    );
    Ok(())
}
