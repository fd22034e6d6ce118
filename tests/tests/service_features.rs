//! Swarm's service features through fogswarm, end to end on one shared lab
//! (3 devices, dev1-dev3 managers): command and entrypoint, secrets and
//! configs with their rotation, volumes and bind mounts, healthchecks and
//! a rollback on an unhealthy update, private registries, the update,
//! scale, rollback and inspect verbs, and replicated jobs. The operator
//! uses the real CLI; the real agent on the raft leader makes it so on the
//! devices' real engines; the images come from the image builder through
//! real registries.
//!
//! The scenarios run one after another on the same lab (bringing a lab up
//! is the expensive part); each names itself in its errors.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::registry::LocalRegistry;
use fogswarm_e2e::{eventually, fogswarm, http_get, serial, Lab, Run};
use fogswarm_protocol::service::{ServiceStatus, ServiceView, TaskObserved};
use std::process::Command;

/// Everything the CLI printed, to look for leaked values at the end.
#[derive(Default)]
struct Transcript(std::sync::Mutex<String>);

struct Ctx {
    lab: Lab,
    ips: std::collections::BTreeMap<String, String>,
    transcript: Transcript,
}

impl Ctx {
    fn cli_with(&self, args: &[&str], stdin: Option<&str>) -> Result<Run> {
        let run = self.lab.cli(args, stdin)?;
        if let Ok(mut t) = self.transcript.0.lock() {
            t.push_str(&run.stdout);
            t.push_str(&run.stderr);
        }
        Ok(run)
    }

    fn cli(&self, args: &[&str]) -> Result<Run> {
        let run = self.cli_with(args, None)?;
        ensure!(
            run.code == 0,
            "fogswarm {args:?} exited {}:\n{}\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run)
    }

    fn service(&self, name: &str) -> Result<ServiceView> {
        let run = self.cli(&["service", "inspect", name, "--swarm", "fog"])?;
        let mut views: Vec<ServiceView> = serde_json::from_str(&run.stdout)?;
        views.pop().context("no view")
    }

    fn tasks(&self, name: &str) -> Result<Vec<TaskObserved>> {
        let run = self.cli(&["service", "ps", name, "--swarm", "fog", "--json"])?;
        Ok(serde_json::from_str(&run.stdout)?)
    }

    /// GET `path` from fog-hello on a device's host-mode port.
    fn get(&self, device: &str, port: u16, path: &str) -> Result<serde_json::Value> {
        let (status, body) = http_get(&format!("{}:{port}", self.ips[device]), path)?;
        ensure!(
            status == 200,
            "{device}:{port}{path} answered {status}: {body}"
        );
        Ok(serde_json::from_str(&body)?)
    }

    fn build(&self, registry: &str, tag: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["--sbom=false"];
        args.extend_from_slice(extra);
        self.lab.build_hello(registry, tag, &args)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_service_features_on_a_real_fog() -> Result<()> {
    let _serial = serial().await;
    // The lab's server logs at trace level: values must not show even there.
    std::env::set_var("RUST_LOG", "info,fogswarm_server=trace");
    let lab = Lab::up("e2e-feat", "10.213.241.0/24", &["--devices", "3"])?;
    std::env::remove_var("RUST_LOG");
    let ips = lab
        .status()?
        .devices
        .into_iter()
        .map(|d| (d.name, d.ip))
        .collect();
    let ctx = Ctx {
        lab,
        ips,
        transcript: Transcript::default(),
    };
    let registry = ctx.lab.status()?.registry.context("lab registry")?.addr;
    let v1 = ctx.build(&registry, "v1", &[])?;
    let v2 = ctx.build(&registry, "v2", &[])?;
    // FOGSWARM_SCENARIOS=4,5 runs some only (a developer's shortcut).
    let chosen = std::env::var("FOGSWARM_SCENARIOS").unwrap_or_default();
    let run = |n: &str| chosen.is_empty() || chosen.split(',').any(|c| c == n);
    let mut values = Vec::new();
    if run("1") {
        command_and_entrypoint(&ctx, &v1).context("scenario 1: command and entrypoint")?;
    }
    if run("2") {
        values = secrets_and_configs(&ctx, &v1)
            .await
            .context("scenario 2: secrets and configs")?;
    }
    if run("3") {
        mounts_keep_data(&ctx, &v1).context("scenario 3: volumes and bind mounts")?;
    }
    if run("4") {
        healthchecks(&ctx, &v1, &v2)
            .await
            .context("scenario 4: healthchecks")?;
    }
    if run("5") {
        private_registry(&ctx)
            .await
            .context("scenario 5: private registry")?;
    }
    if run("6") {
        logs(&ctx, &v1).await.context("scenario 6: service logs")?;
    }
    if run("7") {
        verbs(&ctx, &v1, &v2).context("scenario 7: update, scale, rollback, inspect")?;
    }
    if run("8") {
        jobs(&ctx, &v1).context("scenario 8: replicated job")?;
    }
    if run("9") {
        real_stack(&ctx, &v1).context("scenario 9: a real stack file")?;
    }
    // No secret value anywhere: server trace log, events, agents' logs,
    // any CLI output.
    let events = ctx.cli(&["events", "--limit", "1000", "--json"])?.stdout;
    let transcript = ctx
        .transcript
        .0
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    let server_log = ctx.lab.server_log();
    ensure!(
        server_log.contains("fogswarm::access"),
        "the server did not log its requests (the access log)"
    );
    for value in &values {
        for (place, text) in [
            ("server log", &server_log),
            ("events", &events),
            ("CLI output", &transcript),
            ("dev1 agent log", &ctx.lab.agent_log("dev1")),
            ("dev2 agent log", &ctx.lab.agent_log("dev2")),
            ("dev3 agent log", &ctx.lab.agent_log("dev3")),
        ] {
            ensure!(
                !text.contains(value.as_str()),
                "a secret value appears in the {place}"
            );
        }
    }
    Ok(())
}

/// Scenario 1: Arguments after the image, and an entrypoint, reach the process.
fn command_and_entrypoint(ctx: &Ctx, image: &str) -> Result<()> {
    ctx.cli(&[
        "service",
        "deploy",
        "argv",
        "--swarm",
        "fog",
        "--image",
        image,
        "--constraint",
        "node.hostname==dev2",
        "--publish",
        "mode=host,8090:8080",
        "--entrypoint",
        "/fog-hello serve",
        "--timeout",
        "90s",
        "--",
        "--greeting",
        "hello world",
    ])?;
    let answer = ctx.get("dev2", 8090, "/")?;
    ensure!(
        answer["argv"] == serde_json::json!(["/fog-hello", "serve", "--greeting", "hello world"]),
        "{answer}"
    );
    ctx.cli(&["service", "rm", "argv", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 2: A secret and a config at their targets with their modes; a new
/// secret value rolls the service, and the old swarm secret goes.
/// Answers the values used, for the leak check at the end.
async fn secrets_and_configs(ctx: &Ctx, image: &str) -> Result<Vec<String>> {
    let first = "s3cret-value-one-4b1d9e".to_string();
    let second = "s3cret-value-two-77c0aa".to_string();
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("app.conf");
    std::fs::write(&conf, "level=debug\n")?;
    let conf = conf.display().to_string();
    // The value comes on standard input, never on the command line.
    let run = ctx.cli_with(
        &["secret", "create", "db_password", "-", "--swarm", "fog"],
        Some(&first),
    )?;
    ensure!(run.code == 0, "{}", run.stderr);
    ctx.cli(&["config", "create", "app_conf", &conf, "--swarm", "fog"])?;
    ctx.cli(&[
        "service",
        "deploy",
        "files",
        "--swarm",
        "fog",
        "--image",
        image,
        "--constraint",
        "node.hostname==dev2",
        "--publish",
        "mode=host,8091:8080",
        "--secret",
        "source=db_password,target=db,uid=1000,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf,mode=0440",
        "--timeout",
        "90s",
    ])?;
    let secret = ctx.get("dev2", 8091, "/file/run/secrets/db")?;
    ensure!(secret["content"] == first.as_str(), "{}", secret["mode"]);
    ensure!(
        secret["mode"] == "0400" && secret["uid"] == 1000,
        "{}",
        secret["mode"]
    );
    let config = ctx.get("dev2", 8091, "/file/etc/app.conf")?;
    ensure!(
        config["content"] == "level=debug\n" && config["mode"] == "0440",
        "{config}"
    );
    // Rotate: the service rolls to version 2, and version 1 leaves the swarm.
    let run = ctx.cli_with(
        &["secret", "update", "db_password", "-", "--swarm", "fog"],
        Some(&second),
    )?;
    ensure!(
        run.code == 0 && run.stdout.contains("files"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    eventually(60, || async {
        let now = ctx.get("dev2", 8091, "/file/run/secrets/db")?;
        ensure!(now["content"] == second.as_str(), "still the old value");
        Ok(())
    })
    .await?;
    let leader = ctx.lab.engine("dev1").await?;
    eventually(60, || async {
        let names: Vec<String> = leader
            .docker
            .list_secrets(None::<bollard::query_parameters::ListSecretsOptions>)
            .await?
            .into_iter()
            .filter_map(|s| s.spec?.name)
            .collect();
        ensure!(names == ["db_password.v2"], "swarm secrets: {names:?}");
        Ok(())
    })
    .await?;
    let listed = ctx.cli(&["secret", "ls", "--swarm", "fog"])?.stdout;
    ensure!(
        listed.contains("db_password") && listed.contains("files"),
        "{listed}"
    );
    ctx.cli(&["service", "rm", "files", "--swarm", "fog"])?;
    Ok(vec![first, second])
}

/// Scenario 3: A named volume and a bind mount keep data across a task restart.
fn mounts_keep_data(ctx: &Ctx, image: &str) -> Result<()> {
    ctx.lab.exec("dev3", &["mkdir", "-p", "/srv/fog"])?;
    for (name, port, mount, file) in [
        (
            "vol",
            "8092",
            "type=volume,source=hello_data,target=/data",
            "/data/count",
        ),
        (
            "bind",
            "8093",
            "type=bind,source=/srv/fog,target=/data",
            "/data/count",
        ),
    ] {
        let publish = format!("mode=host,{port}:8080");
        let counter = format!("FOG_COUNTER_FILE={file}");
        ctx.cli(&[
            "service",
            "deploy",
            name,
            "--swarm",
            "fog",
            "--image",
            image,
            "--constraint",
            "node.hostname==dev3",
            "--publish",
            &publish,
            "--mount",
            mount,
            "--env",
            &counter,
            "--timeout",
            "90s",
        ])?;
    }
    ensure!(ctx.get("dev3", 8092, "/")?["starts"] == 1);
    ensure!(ctx.get("dev3", 8093, "/")?["starts"] == 1);
    for name in ["vol", "bind"] {
        ctx.cli(&[
            "service",
            "update",
            name,
            "--swarm",
            "fog",
            "--force",
            "--timeout",
            "90s",
        ])?;
    }
    for port in [8092, 8093] {
        let answer = ctx.get("dev3", port, "/")?;
        ensure!(answer["starts"] == 2, "port {port}: {answer}");
    }
    let on_device = ctx.lab.exec("dev3", &["cat", "/srv/fog/count"])?;
    ensure!(
        on_device.trim() == "2",
        "bind mount on the device: {on_device:?}"
    );
    ctx.cli(&["service", "rm", "vol", "bind", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 4: A task whose healthcheck starts failing is replaced; an update whose
/// new tasks are unhealthy, with failure action rollback, ends on the old
/// version.
async fn healthchecks(ctx: &Ctx, v1: &str, v2: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = dir.path().join("health.yml");
    let write = |image: &str, extra_env: &str| -> Result<()> {
        std::fs::write(
            &stack,
            format!(
                r#"services:
  web:
    image: {image}
    ports: ["mode=host,8094:8080"]
    environment: {{{extra_env}}}
    healthcheck:
      test: ["CMD", "/fog-hello", "health"]
      interval: 1s
      timeout: 2s
      retries: 2
    deploy:
      placement: {{constraints: ["node.hostname==dev2"]}}
      update_config: {{failure_action: rollback, monitor: 15s}}
"#
            ),
        )?;
        Ok(())
    };
    let file = stack.display().to_string();
    write(v1, "")?;
    ctx.cli(&[
        "stack",
        "deploy",
        "hc",
        "--swarm",
        "fog",
        "-c",
        &file,
        "--timeout",
        "90s",
    ])?;
    let first = ctx.tasks("hc_web")?;
    let first_id = first
        .iter()
        .find(|t| t.state == "running")
        .map(|t| t.id.clone())
        .context("a running task")?;
    ctx.get("dev2", 8094, "/sick")?;
    eventually(60, || async {
        let tasks = ctx.tasks("hc_web")?;
        ensure!(
            tasks
                .iter()
                .any(|t| t.state == "running" && t.id != first_id),
            "the unhealthy task was not replaced: {tasks:?}"
        );
        ctx.get("dev2", 8094, "/healthz")?;
        Ok(())
    })
    .await?;
    // v2 never becomes healthy: swarm rolls it back to v1.
    write(v2, "FOG_UNHEALTHY: \"1\"")?;
    let run = ctx.cli_with(
        &[
            "stack",
            "deploy",
            "hc",
            "--swarm",
            "fog",
            "-c",
            &file,
            "--timeout",
            "120s",
        ],
        None,
    )?;
    ensure!(
        run.code == 1,
        "an update that rolled back fails the deploy: {}",
        run.stderr
    );
    let view = ctx.service("hc_web")?;
    ensure!(
        view.status == ServiceStatus::RolledBack,
        "{:?}",
        view.status
    );
    // Swarm has given up on v2 once the rollback starts; the v1 task
    // answers once the rollback completed.
    eventually(90, || async {
        let state = ctx
            .service("hc_web")?
            .observed
            .and_then(|o| o.update_state)
            .unwrap_or_default();
        ensure!(state == "rollback_completed", "update state {state:?}");
        Ok(())
    })
    .await?;
    eventually(60, || async {
        let answer = ctx.get("dev2", 8094, "/")?;
        ensure!(answer["version"] == "v1", "{answer}");
        ctx.get("dev2", 8094, "/healthz")?;
        Ok(())
    })
    .await?;
    ctx.cli(&["stack", "rm", "hc", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 5: An image in an htpasswd registry: every device pulls it once the
/// swarm has the login; before, each device's task shows the pull error.
async fn private_registry(ctx: &Ctx) -> Result<()> {
    let gateway = ctx
        .lab
        .status()?
        .registry
        .context("lab registry")?
        .addr
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let private = LocalRegistry::start_on(&gateway, ("ci", "pull-pass-51e0"))?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    std::fs::write(&token, "pull-pass-51e0")?;
    let token = token.display().to_string();
    let image = ctx.build(
        &private.addr,
        "private",
        &["--registry-user", "ci", "--registry-token-file", &token],
    )?;
    ctx.cli(&[
        "service",
        "deploy",
        "priv",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--mode",
        "global",
        "--publish",
        "mode=host,8095:8080",
        "--detach",
    ])?;
    eventually(60, || async {
        let tasks = ctx.tasks("priv")?;
        let devices: std::collections::BTreeSet<String> = tasks
            .iter()
            .filter(|t| {
                t.error.as_deref().is_some_and(|e| {
                    e.contains("no basic auth")
                        || e.contains("denied")
                        || e.contains("unauthorized")
                        || e.contains("No such image")
                })
            })
            .filter_map(|t| t.hostname.clone())
            .collect();
        ensure!(devices.len() == 3, "pull errors on {devices:?}: {tasks:?}");
        Ok(())
    })
    .await?;
    let run = ctx.cli_with(
        &[
            "registry",
            "login",
            &private.addr,
            "--swarm",
            "fog",
            "-u",
            "ci",
            "--password-stdin",
        ],
        Some("pull-pass-51e0\n"),
    )?;
    ensure!(run.code == 0, "{}", run.stderr);
    eventually(90, || async {
        for device in ["dev1", "dev2", "dev3"] {
            let answer = ctx.get(device, 8095, "/")?;
            ensure!(answer["version"] == "private", "{device}: {answer}");
        }
        Ok(())
    })
    .await?;
    ctx.cli(&["service", "rm", "priv", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 7: update --image, scale, rollback and inspect, as Docker's do.
fn verbs(ctx: &Ctx, v1: &str, v2: &str) -> Result<()> {
    ctx.cli(&[
        "service",
        "deploy",
        "verbs",
        "--swarm",
        "fog",
        "--image",
        v1,
        "--max-replicas",
        "1",
        "--publish",
        "mode=host,8096:8080",
        "--timeout",
        "90s",
    ])?;
    let running_versions = || -> Result<Vec<String>> {
        let mut versions = Vec::new();
        for device in ["dev1", "dev2", "dev3"] {
            if let Ok(answer) = ctx.get(device, 8096, "/") {
                versions.push(answer["version"].as_str().unwrap_or_default().to_string());
            }
        }
        Ok(versions)
    };
    ensure!(running_versions()? == ["v1"], "{:?}", running_versions()?);
    ctx.cli(&[
        "service",
        "update",
        "verbs",
        "--swarm",
        "fog",
        "--image",
        v2,
        "--env-add",
        "MODE=fast",
        "--timeout",
        "90s",
    ])?;
    ensure!(running_versions()? == ["v2"], "{:?}", running_versions()?);
    let inspected = ctx.service("verbs")?;
    ensure!(
        inspected.spec.image == v2
            && inspected.spec.env.get("MODE").map(String::as_str) == Some("fast")
    );
    ctx.cli(&[
        "service",
        "rollback",
        "verbs",
        "--swarm",
        "fog",
        "--timeout",
        "90s",
    ])?;
    ensure!(running_versions()? == ["v1"], "{:?}", running_versions()?);
    ensure!(!ctx.service("verbs")?.spec.env.contains_key("MODE"));
    ctx.cli(&[
        "service",
        "scale",
        "verbs=3",
        "--swarm",
        "fog",
        "--timeout",
        "90s",
    ])?;
    ensure!(
        running_versions()? == ["v1", "v1", "v1"],
        "{:?}",
        running_versions()?
    );
    let view = ctx.service("verbs")?;
    let observed = view.observed.context("observed")?;
    ensure!(
        view.spec.replicas == Some(3) && observed.running_tasks == 3,
        "{observed:?}"
    );
    let ps = ctx
        .cli(&["service", "ps", "verbs", "--swarm", "fog"])?
        .stdout;
    for needle in ["dev1", "dev2", "dev3", "Running", " ago"] {
        ensure!(ps.contains(needle), "{needle:?} not in\n{ps}");
    }
    let pretty = ctx
        .cli(&["service", "inspect", "verbs", "--swarm", "fog", "--pretty"])?
        .stdout;
    ensure!(
        pretty.contains("replicated 3") && pretty.contains(v1),
        "{pretty}"
    );
    ctx.cli(&["service", "rm", "verbs", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 8: A replicated job runs to completion once per replica.
fn jobs(ctx: &Ctx, image: &str) -> Result<()> {
    let run = ctx.cli(&[
        "service",
        "deploy",
        "collect",
        "--swarm",
        "fog",
        "--image",
        image,
        "--mode",
        "replicated-job",
        "--replicas",
        "3",
        "--max-concurrent",
        "2",
        "--timeout",
        "90s",
        "--",
        "once",
        "collected",
    ])?;
    ensure!(run.stdout.contains("complete"), "{}", run.stdout);
    let view = ctx.service("collect")?;
    ensure!(view.status == ServiceStatus::Complete, "{:?}", view.status);
    let tasks = ctx.tasks("collect")?;
    let complete = tasks.iter().filter(|t| t.state == "complete").count();
    ensure!(complete == 3, "{tasks:?}");
    let ps = ctx
        .cli(&["service", "ps", "collect", "--swarm", "fog"])?
        .stdout;
    ensure!(ps.contains("Complete"), "{ps}");
    ctx.cli(&["service", "rm", "collect", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 6: `service logs --follow` shows lines from tasks on three devices,
/// prefixed with each, and ends cleanly on Ctrl-C (SIGINT).
async fn logs(ctx: &Ctx, image: &str) -> Result<()> {
    ctx.cli(&[
        "service",
        "deploy",
        "chatty",
        "--swarm",
        "fog",
        "--image",
        image,
        "--mode",
        "global",
        "--publish",
        "mode=host,8097:8080",
        "--timeout",
        "90s",
    ])?;
    // Without --follow: every task's startup line, then the command ends.
    let run = ctx.cli(&["service", "logs", "chatty", "--swarm", "fog"])?;
    for device in ["dev1", "dev2", "dev3"] {
        ensure!(
            run.stdout.lines().any(|l| l.starts_with("chatty.")
                && l.contains(&format!("@{device}"))
                && l.contains("| fog-hello: listening")),
            "no line from {device} in\n{}",
            run.stdout
        );
    }
    // --follow: lines written after the start arrive; SIGINT ends it with 0.
    let mut cmd = Command::new(fogswarm());
    cmd.args([
        "service", "logs", "chatty", "--swarm", "fog", "--follow", "--tail", "0",
    ])
    .env("FOGSWARM_LAB_DIR", ctx.lab.root.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in ctx.lab.cli_env()? {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // A restart of each task writes a new startup line: new output.
    ctx.cli(&[
        "service",
        "update",
        "chatty",
        "--swarm",
        "fog",
        "--force",
        "--timeout",
        "90s",
    ])?;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -INT");
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        out.status.code() == Some(0),
        "logs --follow ended with {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.trim().is_empty(),
        "logs --follow wrote errors: {stderr}"
    );
    for device in ["dev1", "dev2", "dev3"] {
        ensure!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("@{device}")) && l.contains("| fog-hello: listening")),
            "no followed line from {device} in\n{stdout}"
        );
    }
    ctx.cli(&["service", "rm", "chatty", "--swarm", "fog"])?;
    Ok(())
}

/// Scenario 9: A real stack file (the voting app's) deploys, with fog-hello
/// standing in for its images through a second file merged over it, as
/// `docker stack deploy -c a.yml -c b.yml` merges.
fn real_stack(ctx: &Ctx, image: &str) -> Result<()> {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/stacks/voting/docker-stack.yml");
    let dir = tempfile::tempdir()?;
    let over = dir.path().join("lab.yml");
    let mut text = String::from("services:\n");
    for service in ["redis", "db", "vote", "result", "worker"] {
        text.push_str(&format!(
            "  {service}:\n    image: {image}\n    environment: {{PORT: \"80\"}}\n"
        ));
    }
    std::fs::write(&over, text)?;
    let fixture = fixture.display().to_string();
    let over = over.display().to_string();
    ctx.cli(&[
        "stack",
        "deploy",
        "voting",
        "--swarm",
        "fog",
        "-c",
        &fixture,
        "-c",
        &over,
        "--timeout",
        "120s",
    ])?;
    let services: Vec<ServiceView> = serde_json::from_str(
        &ctx.cli(&["service", "ls", "--swarm", "fog", "--json"])?
            .stdout,
    )?;
    let voting: Vec<&ServiceView> = services
        .iter()
        .filter(|s| s.spec.stack.as_deref() == Some("voting"))
        .collect();
    ensure!(voting.len() == 5, "{} services", voting.len());
    ensure!(
        voting.iter().all(|s| s.status == ServiceStatus::Running),
        "{:?}",
        voting
            .iter()
            .map(|s| (&s.spec.name, s.status))
            .collect::<Vec<_>>()
    );
    // The vote service publishes 5000 -> 80 in host mode on its devices.
    let answering = ["dev1", "dev2", "dev3"]
        .iter()
        .filter(|d| ctx.get(d, 5000, "/").is_ok())
        .count();
    ensure!(
        answering == 2,
        "vote answers on {answering} devices (2 replicas)"
    );
    ctx.cli(&["stack", "rm", "voting", "--swarm", "fog"])?;
    Ok(())
}
