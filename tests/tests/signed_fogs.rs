//! Signed-only swarms at the server (issue 16's "signed-only fogs", the
//! server's half): a real registry, images built, pushed and signed by the
//! real CLI, a real server. A swarm that requires signatures takes a
//! signed image by digest, refuses an unsigned one and one signed with
//! another key (naming the image and the key ids tried, storing nothing),
//! and a tag pushed over later changes nothing it stored.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::registry::LocalRegistry;
use fogswarm_e2e::server::{db_fingerprint, ServerProcess};
use fogswarm_e2e::{fogswarm, static_binary, Run};
use fogswarm_protocol::service::ServiceView;
use std::path::Path;
use std::process::Command;

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
