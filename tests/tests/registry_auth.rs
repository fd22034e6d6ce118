//! `fogswarm image build --push` and `image inspect` against a real
//! registry that demands bearer tokens (docker-registry with `auth: token`)
//! from a token server the test plays: a multi-arch push, a
//! cross-repository mount and a pull through the challenge, a refused
//! scope, retried 503s, credentials from flags, the environment and a
//! `docker-credential-` helper; the credential in no output.

use anyhow::{ensure, Result};
use fogswarm_e2e::token_registry::TokenRegistry;
use fogswarm_e2e::{fogswarm, static_binary, Run};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const USER: &str = "ci-bot";
const PASSWORD: &str = "pw-5e1f0c9a-d7b3-registry";

fn binaries() -> Vec<String> {
    [
        ("linux/amd64", "x86_64-unknown-linux-musl"),
        ("linux/arm64", "aarch64-unknown-linux-musl"),
    ]
    .iter()
    .flat_map(|(p, t)| {
        [
            "--binary".to_string(),
            format!("{p}={}", static_binary("fog-hello", t).display()),
        ]
    })
    .collect()
}

/// `fogswarm image SUBCOMMAND ARGS` with an environment of the test's own
/// (an empty Docker config unless one is given).
fn image(sub: &str, args: &[String], env: &[(&str, String)]) -> Run {
    let mut cmd = Command::new(fogswarm());
    cmd.args(["image", sub]).args(args);
    for var in [
        "FOGSWARM_REGISTRY_USER",
        "FOGSWARM_REGISTRY_TOKEN",
        "FOGSWARM_REGISTRY_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("fogswarm image").into()
}

fn push_args(reference: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--tag", reference, "--push", "--insecure", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(binaries());
    args
}

fn no_secret(run: &Run) -> Result<()> {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        ensure!(
            !text.contains(PASSWORD),
            "the registry password appears in {name}"
        );
    }
    Ok(())
}

fn skopeo_inspect(reference: &str) -> std::process::Output {
    Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo")
}

fn empty_docker_config(dir: &Path) -> Result<String> {
    let cfg = dir.join("docker");
    std::fs::create_dir_all(&cfg)?;
    std::fs::write(cfg.join("config.json"), "{}")?;
    Ok(cfg.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mount_and_pull_through_a_token_registry() -> Result<()> {
    let registry = TokenRegistry::start(USER, PASSWORD).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{PASSWORD}\n"))?;
    let token_arg = token_file.display().to_string();
    let env = vec![("DOCKER_CONFIG", empty_docker_config(dir.path())?)];
    let creds = ["--registry-user", USER, "--registry-token-file", &token_arg];

    // A multi-arch push; the token server's first answer is a 503.
    registry.seen.lock().expect("seen").fail_next = 1;
    let hello = format!("{}/fog/hello:v1", registry.addr);
    let run = image("build", &push_args(&hello, &creds), &env);
    ensure!(run.code == 0, "push through the token flow: {}", run.stderr);
    no_secret(&run)?;
    let pushed: serde_json::Value = serde_json::from_str(&run.stdout)?;
    {
        let seen = registry.seen.lock().expect("seen");
        let push_tokens = seen
            .by_scope
            .get("repository:fog/hello:pull,push")
            .copied()
            .unwrap_or(0);
        // Blobs, two manifests, the index and the tag: one token serves.
        ensure!(
            (1..=2).contains(&push_tokens),
            "{push_tokens} token requests for one push: {:?}",
            seen.by_scope
        );
    }

    // An implementation that is not ours pulls it through the challenge.
    let out = skopeo_inspect(&hello);
    ensure!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(index["manifests"].as_array().map(Vec::len) == Some(2));
    // So does `image inspect`, with the credential in the environment.
    let mut env_creds = env.clone();
    env_creds.push(("FOGSWARM_REGISTRY_USER", USER.into()));
    env_creds.push(("FOGSWARM_REGISTRY_TOKEN", PASSWORD.into()));
    let run = image(
        "inspect",
        &[hello.clone(), "--insecure".into(), "--json".into()],
        &env_creds,
    );
    ensure!(run.code == 0, "inspect: {}", run.stderr);
    no_secret(&run)?;
    ensure!(run
        .stdout
        .contains(pushed["index_digest"].as_str().unwrap_or("?")));

    // A cross-repository mount asks for pull on the source with push on
    // the target, in one token.
    let other = format!("{}/fog/other:v1", registry.addr);
    let mut extra = creds.to_vec();
    extra.extend(["--mount-from", "fog/hello"]);
    let run = image("build", &push_args(&other, &extra), &env);
    ensure!(run.code == 0, "mount: {}", run.stderr);
    let mounted: serde_json::Value = serde_json::from_str(&run.stdout)?;
    ensure!(
        mounted["uploaded_bytes"] == 0,
        "mounted, not uploaded: {mounted}"
    );
    ensure!(registry
        .seen
        .lock()
        .expect("seen")
        .by_scope
        .contains_key("repository:fog/other:pull,push repository:fog/hello:pull"));

    // A refused scope: a clear error naming the registry and the scope,
    // not the credential, and no tag left behind.
    let forbidden = format!("{}/forbidden/app:v1", registry.addr);
    let run = image("build", &push_args(&forbidden, &creds), &env);
    ensure!(run.code != 0, "a refused scope must fail");
    no_secret(&run)?;
    for needle in [
        registry.addr.as_str(),
        "repository:forbidden/app:pull,push",
        "refused",
        USER,
    ] {
        ensure!(
            run.stderr.contains(needle),
            "the error should name {needle}: {}",
            run.stderr
        );
    }
    ensure!(
        !skopeo_inspect(&forbidden).status.success(),
        "a refused push left a tag"
    );

    // Wrong credentials: refused, said so, the secret not echoed.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password")?;
    let wrong_arg = wrong.display().to_string();
    let run = image(
        "build",
        &push_args(
            &format!("{}/fog/hello:v2", registry.addr),
            &["--registry-user", USER, "--registry-token-file", &wrong_arg],
        ),
        &env,
    );
    ensure!(
        run.code != 0 && run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );
    ensure!(!run.stderr.contains("not-the-password"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_helper_supplies_the_credentials() -> Result<()> {
    let registry = TokenRegistry::start(USER, PASSWORD).await?;
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let helper = bin.join("docker-credential-fogtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n\
             if [ \"$server\" = \"{addr}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n\
             else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            addr = registry.addr
        ),
    )?;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config_dir = dir.path().join("docker");
    std::fs::create_dir_all(&config_dir)?;
    let env = vec![
        ("DOCKER_CONFIG", config_dir.display().to_string()),
        ("PATH", path),
    ];

    for (n, config) in [
        serde_json::json!({"credHelpers": {registry.addr.clone(): "fogtest"}}),
        serde_json::json!({"credsStore": "fogtest"}),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(config_dir.join("config.json"), config.to_string())?;
        let reference = format!("{}/fog/helper:v{n}", registry.addr);
        let run = image("build", &push_args(&reference, &[]), &env);
        ensure!(run.code == 0, "push with {config}: {}", run.stderr);
        no_secret(&run)?;
        ensure!(skopeo_inspect(&reference).status.success());
    }
    // A helper that has nothing for the registry: an anonymous push, refused
    // with a hint on where credentials come from.
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::json!({"credHelpers": {"elsewhere.example": "fogtest"}}).to_string(),
    )?;
    let run = image(
        "build",
        &push_args(&format!("{}/fog/helper:anon", registry.addr), &[]),
        &env,
    );
    ensure!(
        run.code != 0 && run.stderr.contains("no credentials"),
        "{}",
        run.stderr
    );
    Ok(())
}
