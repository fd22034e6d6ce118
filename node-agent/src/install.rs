//! `fogswarm-agent install`: what a device image runs once, at build or at
//! first boot. It writes the agent's config and systemd unit, and makes
//! the agent the engine's default runtime (so hardware grants work),
//! merging into the engine's daemon.json with a backup of what was there.
//! The engine is restarted only when its config changed and it is
//! running. Every step is idempotent: a second run changes nothing.
//! `--uninstall` reverses it, restoring the engine's own daemon.json.

use crate::config::Flags;
use anyhow::{Context, Result};
use fogswarm_protocol::hardware::RUNTIME_NAME;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct InstallOptions {
    /// Where the agent binary lives on the device (copied there from this
    /// one when it differs).
    #[arg(long, default_value = "/usr/local/bin/fogswarm-agent")]
    pub binary: PathBuf,
    /// The engine's config file.
    #[arg(long, default_value = "/etc/docker/daemon.json")]
    pub daemon_json: PathBuf,
    /// Where systemd units go.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub systemd_dir: PathBuf,
    /// No systemd unit (a device whose init starts the agent otherwise).
    #[arg(long)]
    pub no_systemd: bool,
    /// Leave the engine's runtime alone: the device gets no hardware grants.
    #[arg(long)]
    pub no_runtime: bool,
    /// How to restart the engine when its config changed.
    #[arg(long, default_value = "systemctl restart docker")]
    pub engine_restart: String,
    /// Undo a previous install.
    #[arg(long)]
    pub uninstall: bool,
    #[arg(long)]
    pub json: bool,
}

/// One step's outcome, for the table and `--json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Step {
    pub what: String,
    pub path: String,
    /// `written`, `unchanged`, `removed`, `restored`, `restarted`,
    /// `not running` (the engine reads the new config when it starts),
    /// `skipped`.
    pub outcome: String,
}

const UNIT_NAME: &str = "fogswarm-agent.service";

fn backup_of(daemon_json: &Path) -> PathBuf {
    let mut name = daemon_json.as_os_str().to_owned();
    name.push(".fogswarm-backup");
    PathBuf::from(name)
}

pub fn run(
    flags: &Flags,
    heartbeat_secs: Option<u64>,
    options: &InstallOptions,
) -> Result<Vec<Step>> {
    let config = flags
        .config
        .clone()
        .unwrap_or_else(|| "/etc/fogswarm/agent.json".into());
    // Read before uninstalling removes the config that may name them.
    // The flags first: at a first install, the config does not exist yet.
    let loaded = crate::config::AgentConfig::load(flags).ok();
    let socket = flags
        .docker_host
        .as_deref()
        .and_then(|h| h.strip_prefix("unix://"))
        .map(PathBuf::from)
        .or_else(|| loaded.as_ref().map(|c| c.docker_socket.clone()))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let state_dir = flags
        .state_dir
        .clone()
        .or_else(|| loaded.map(|c| c.state_dir))
        .unwrap_or_else(|| "/var/lib/fogswarm-agent".into());
    let mut steps = Vec::new();
    let engine_changed;
    if options.uninstall {
        engine_changed = uninstall_runtime(&options.daemon_json, &mut steps)?;
        if !options.no_systemd {
            let unit = options.systemd_dir.join(UNIT_NAME);
            let wants = options
                .systemd_dir
                .join("multi-user.target.wants")
                .join(UNIT_NAME);
            remove(&wants, "systemd unit enabled", &mut steps)?;
            remove(&unit, "systemd unit", &mut steps)?;
        }
        remove(&config, "agent config", &mut steps)?;
    } else {
        if !options.no_runtime {
            // Refuse a broken daemon.json before writing anything.
            read_daemon_json(&options.daemon_json)?;
        }
        let exe = std::env::current_exe().context("finding this binary")?;
        let same = std::fs::canonicalize(&exe).ok() == std::fs::canonicalize(&options.binary).ok();
        if same {
            steps.push(step("agent binary", &options.binary, "unchanged"));
        } else {
            let bytes =
                std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
            write_if_changed(&options.binary, &bytes, 0o755, "agent binary", &mut steps)?;
        }
        write_if_changed(
            &config,
            &agent_config(flags, heartbeat_secs)?,
            0o644,
            "agent config",
            &mut steps,
        )?;
        if !options.no_systemd {
            let unit = options.systemd_dir.join(UNIT_NAME);
            write_if_changed(
                &unit,
                unit_text(&options.binary, &config).as_bytes(),
                0o644,
                "systemd unit",
                &mut steps,
            )?;
            // What `systemctl enable` does, without needing a running
            // systemd (an image being built has none).
            let wants_dir = options.systemd_dir.join("multi-user.target.wants");
            let link = wants_dir.join(UNIT_NAME);
            if std::fs::read_link(&link).ok().as_deref() == Some(unit.as_path()) {
                steps.push(step("systemd unit enabled", &link, "unchanged"));
            } else {
                std::fs::create_dir_all(&wants_dir)
                    .with_context(|| format!("creating {}", wants_dir.display()))?;
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&unit, &link)
                    .with_context(|| format!("linking {}", link.display()))?;
                steps.push(step("systemd unit enabled", &link, "written"));
            }
        }
        engine_changed = if options.no_runtime {
            steps.push(step("engine runtime", &options.daemon_json, "skipped"));
            false
        } else {
            install_runtime(
                &options.daemon_json,
                &options.binary,
                &state_dir,
                &mut steps,
            )?
        };
    }
    restart_engine(&socket, options, engine_changed, &mut steps)?;
    Ok(steps)
}

fn step(what: &str, path: &Path, outcome: &str) -> Step {
    Step {
        what: what.into(),
        path: path.display().to_string(),
        outcome: outcome.into(),
    }
}

/// agent.json from the flags given (what `run` reads back).
fn agent_config(flags: &Flags, heartbeat_secs: Option<u64>) -> Result<Vec<u8>> {
    let mut file = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            file.insert(key.into(), v);
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| json!(p.display().to_string()));
    put("server", flags.server.clone().map(Value::from));
    put(
        "ca_fingerprint",
        flags.ca_fingerprint.clone().map(Value::from),
    );
    put("provisioning_key_file", path(&flags.provisioning_key_file));
    put("enrol_token_file", path(&flags.enrol_token_file));
    put("tpm", flags.tpm.clone().map(Value::from));
    put("device_id", flags.device_id.clone().map(Value::from));
    put("state_dir", path(&flags.state_dir));
    put(
        "advertise_addr",
        flags.advertise_addr.clone().map(Value::from),
    );
    put("docker_host", flags.docker_host.clone().map(Value::from));
    put("swarm", flags.swarm.clone().map(Value::from));
    put("heartbeat_secs", heartbeat_secs.map(Value::from));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(file))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn unit_text(binary: &Path, config: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=fogswarm agent: joins this device to its fog\n\
         After=docker.service network-online.target\n\
         Wants=network-online.target\n\
         Requires=docker.service\n\n\
         [Service]\n\
         ExecStart={} run --config {}\n\
         Restart=always\n\
         RestartSec=3\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        binary.display(),
        config.display()
    )
}

fn write_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    what: &str,
    steps: &mut Vec<Step>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        steps.push(step(what, path, "unchanged"));
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    steps.push(step(what, path, "written"));
    Ok(())
}

fn remove(path: &Path, what: &str, steps: &mut Vec<Step>) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => steps.push(step(what, path, "removed")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            steps.push(step(what, path, "unchanged"))
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(())
}

fn read_daemon_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Some(json!({}))),
        Ok(bytes) => {
            let value: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid JSON; fix it first", path.display()))?;
            if !value.is_object() {
                anyhow::bail!("{} is not a JSON object; fix it first", path.display());
            }
            Ok(Some(value))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Registers the runtime as the engine's default; answers whether
/// daemon.json changed. The first change backs up the file as it was (or
/// notes that there was none, by an empty backup).
fn install_runtime(
    daemon_json: &Path,
    binary: &Path,
    state_dir: &Path,
    steps: &mut Vec<Step>,
) -> Result<bool> {
    let existing = read_daemon_json(daemon_json)?;
    let mut config = existing.clone().unwrap_or_else(|| json!({}));
    config["runtimes"][RUNTIME_NAME] = json!({
        "path": binary.display().to_string(),
        "runtimeArgs": ["runtime", "--state-dir", state_dir.display().to_string()],
    });
    config["default-runtime"] = json!(RUNTIME_NAME);
    if let Some(args) = config["runtimes"][RUNTIME_NAME]["runtimeArgs"].as_array_mut() {
        if let Some(root) = existing.as_ref().and_then(|c| c.get("data-root")) {
            args.extend([json!("--engine-root"), root.clone()]);
        }
        // runc's arguments follow (dockerd's wrapper script appends them).
        args.push(json!("--"));
    }
    if existing.as_ref() == Some(&config) {
        steps.push(step("engine runtime", daemon_json, "unchanged"));
        return Ok(false);
    }
    let backup = backup_of(daemon_json);
    if !backup.exists() {
        let original = match &existing {
            Some(_) => std::fs::read(daemon_json)?,
            None => Vec::new(),
        };
        std::fs::write(&backup, original)
            .with_context(|| format!("writing the backup {}", backup.display()))?;
        steps.push(step("engine config backup", &backup, "written"));
    }
    let mut bytes = serde_json::to_vec_pretty(&config)?;
    bytes.push(b'\n');
    write_if_changed(daemon_json, &bytes, 0o644, "engine runtime", steps)?;
    Ok(true)
}

/// Puts back the daemon.json the install found; answers whether it changed.
fn uninstall_runtime(daemon_json: &Path, steps: &mut Vec<Step>) -> Result<bool> {
    let backup = backup_of(daemon_json);
    let current = std::fs::read(daemon_json).ok();
    match std::fs::read(&backup) {
        Ok(original) => {
            let changed = current.as_deref() != Some(original.as_slice())
                && !(original.is_empty() && current.is_none());
            if original.is_empty() {
                // There was no daemon.json before the install.
                let _ = std::fs::remove_file(daemon_json);
            } else {
                std::fs::write(daemon_json, &original)
                    .with_context(|| format!("restoring {}", daemon_json.display()))?;
            }
            std::fs::remove_file(&backup)?;
            steps.push(step("engine config", daemon_json, "restored"));
            Ok(changed)
        }
        Err(_) => {
            // No backup: take out only what install puts in.
            let Some(mut config) = read_daemon_json(daemon_json)? else {
                steps.push(step("engine config", daemon_json, "unchanged"));
                return Ok(false);
            };
            let before = config.clone();
            if config["default-runtime"] == json!(RUNTIME_NAME) {
                config.as_object_mut().map(|o| o.remove("default-runtime"));
            }
            if let Some(r) = config["runtimes"].as_object_mut() {
                r.remove(RUNTIME_NAME);
                if r.is_empty() {
                    config.as_object_mut().map(|o| o.remove("runtimes"));
                }
            }
            if config == before {
                steps.push(step("engine config", daemon_json, "unchanged"));
                return Ok(false);
            }
            let mut bytes = serde_json::to_vec_pretty(&config)?;
            bytes.push(b'\n');
            write_if_changed(daemon_json, &bytes, 0o644, "engine config", steps)?;
            Ok(true)
        }
    }
}

/// Restarts the engine when its config changed and it is running (an
/// engine that is not running reads the new config when it starts), then
/// waits until it answers again.
fn restart_engine(
    socket: &Path,
    options: &InstallOptions,
    changed: bool,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let engine_step = |outcome: &str| step("engine", socket, outcome);
    if !changed {
        steps.push(engine_step("unchanged"));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answers = || {
        runtime.block_on(async {
            let addr = fogswarm_client::engine::EngineAddr::socket(socket);
            match fogswarm_client::engine::Engine::connect(&addr).await {
                Ok(e) => e.docker.info().await.ok().map(|i| i.default_runtime),
                Err(_) => None,
            }
        })
    };
    let Some(before) = answers() else {
        steps.push(engine_step("not running"));
        return Ok(());
    };
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&options.engine_restart)
        .status()
        .with_context(|| format!("running {:?}", options.engine_restart))?;
    if !status.success() {
        anyhow::bail!(
            "restarting the engine with {:?} failed ({status}); the new config takes effect at its next start",
            options.engine_restart
        );
    }
    let want = (!options.uninstall).then(|| RUNTIME_NAME.to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        match answers() {
            Some(runtime) if runtime == want || (options.uninstall && runtime != before) => break,
            _ if std::time::Instant::now() > deadline => anyhow::bail!(
                "the engine did not come back with its new config within 90 s after {:?}",
                options.engine_restart
            ),
            _ => {}
        }
    }
    steps.push(engine_step("restarted"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InstallOptions {
        InstallOptions {
            binary: dir.join("bin/fogswarm-agent"),
            daemon_json: dir.join("docker/daemon.json"),
            systemd_dir: dir.join("systemd"),
            no_systemd: false,
            no_runtime: false,
            engine_restart: "false".into(),
            uninstall: false,
            json: false,
        }
    }

    fn flags(dir: &Path) -> Flags {
        Flags {
            server: Some("https://fog.example:8443".into()),
            config: Some(dir.join("etc/agent.json")),
            state_dir: Some(dir.join("state")),
            docker_host: Some(format!("unix://{}", dir.join("no-engine.sock").display())),
            ..Default::default()
        }
    }

    fn outcomes(steps: &[Step]) -> Vec<(&str, &str)> {
        steps
            .iter()
            .map(|s| (s.what.as_str(), s.outcome.as_str()))
            .collect()
    }

    #[test]
    fn install_is_idempotent_and_uninstall_restores_daemon_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = options(dir.path());
        std::fs::create_dir_all(o.daemon_json.parent().expect("parent")).expect("mkdir");
        let original = "{\n  \"log-driver\": \"journald\",\n  \"runtimes\": {\"nvidia\": {\"path\": \"/usr/bin/nvidia\"}}\n}\n";
        std::fs::write(&o.daemon_json, original).expect("write");
        let first = run(&flags(dir.path()), Some(10), &o).expect("install");
        assert!(
            outcomes(&first).contains(&("engine runtime", "written")),
            "{first:?}"
        );
        // No engine answers on the socket: nothing to restart.
        assert!(first
            .iter()
            .any(|s| s.what == "engine" && s.outcome == "not running"));
        let config: Value =
            serde_json::from_slice(&std::fs::read(&o.daemon_json).expect("read")).expect("json");
        assert_eq!(config["default-runtime"], RUNTIME_NAME);
        assert_eq!(config["log-driver"], "journald", "merged, not replaced");
        assert_eq!(config["runtimes"]["nvidia"]["path"], "/usr/bin/nvidia");
        assert_eq!(
            config["runtimes"][RUNTIME_NAME]["runtimeArgs"][0],
            "runtime"
        );
        let agent: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("etc/agent.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(agent["server"], "https://fog.example:8443");
        assert_eq!(agent["heartbeat_secs"], 10);
        let unit = std::fs::read_to_string(o.systemd_dir.join(UNIT_NAME)).expect("unit");
        assert!(unit.contains("run --config"), "{unit}");

        let second = run(&flags(dir.path()), Some(10), &o).expect("again");
        assert!(
            second.iter().all(|s| s.outcome == "unchanged"),
            "a second install changes nothing: {second:?}"
        );

        let undo = InstallOptions {
            uninstall: true,
            ..options(dir.path())
        };
        run(&flags(dir.path()), None, &undo).expect("uninstall");
        assert_eq!(
            std::fs::read_to_string(&o.daemon_json).expect("read"),
            original
        );
        assert!(!o.systemd_dir.join(UNIT_NAME).exists());
        assert!(!dir.path().join("etc/agent.json").exists());
    }

    #[test]
    fn a_broken_daemon_json_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = options(dir.path());
        std::fs::create_dir_all(o.daemon_json.parent().expect("parent")).expect("mkdir");
        std::fs::write(&o.daemon_json, "{ not json").expect("write");
        let e = run(&flags(dir.path()), None, &o).expect_err("refused");
        assert!(
            format!("{e:#}").contains("daemon.json is not valid JSON"),
            "{e:#}"
        );
        assert_eq!(
            std::fs::read_to_string(&o.daemon_json).expect("read"),
            "{ not json"
        );
        assert!(!backup_of(&o.daemon_json).exists());
    }
}
