//! Simulated devices: containers that each run their own Docker Engine.
//!
//! A device's engine listens on its usual socket inside and on /lab/docker.sock,
//! a directory bind-mounted from the host. The host (tests, `lab status`)
//! reaches each engine through that socket file, never over TCP: like a real
//! device, no engine is exposed on the network.

use super::image::DevicePlatform;
use super::state::{RunMode, LAB_LABEL};
use crate::engine::{Engine, EngineAddr};
use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{LogsOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// Mount point of the device's host directory inside the device.
const LAB_MOUNT: &str = "/lab";

/// Everything needed to create one device container.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub lab: String,
    pub name: String,
    pub container: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub platform: DevicePlatform,
    pub image: String,
    pub network: String,
    /// Host directory bind-mounted at /lab: engine socket, daemon.json.
    pub host_dir: PathBuf,
    pub registry: String,
    pub dockerd_args: Vec<String>,
    /// The agent this device boots, if any.
    pub agent: Option<AgentSetup>,
    /// Character devices made in the device's /dev at boot, as
    /// (path, major, minor): hardware the lab pretends the device has.
    pub device_nodes: Vec<(String, u32, u32)>,
}

/// What a device needs to run the agent at boot.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// Static agent binary for the device's platform.
    pub binary: PathBuf,
    /// The agent's settings as `fogswarm-agent install` flags (server,
    /// pin, key file, state dir, heartbeat).
    pub agent_flags: Vec<String>,
    /// The fleet's provisioning key, copied into the device (0600).
    pub provisioning_key: String,
    /// Boot without starting the agent until `lab start-agent`.
    pub hold: bool,
    /// Register the agent as the engine's runtime at boot (hardware
    /// grants); without it, `sh /lab/install.sh` does so later.
    pub runtime: bool,
}

/// The device's set-up, as a device image's first boot would run it:
/// `fogswarm-agent install` writes /lab/agent.json and registers the
/// runtime in /lab/daemon.json; the engine restarts through its pid (the
/// boot loop starts it again).
const INSTALL_FLAGS: &[&str] = &[
    "--config",
    "/lab/agent.json",
    "--no-systemd",
    "--binary",
    "/lab/fogswarm-agent",
    "--daemon-json",
    "/lab/daemon.json",
    "--engine-restart",
    r#"kill "$(cat /var/run/docker.pid)""#,
];

/// A device's boot: the device nodes the lab gives it, the install, its
/// engine (started again whenever it exits, as an init system would),
/// then (once enabled) the agent, restarted whenever it exits.
const BOOT_SCRIPT: &str = r#"#!/bin/sh
if [ -f /lab/device-nodes ]; then
  while read -r path major minor; do
    [ -e "$path" ] || mknod -m 0660 "$path" c "$major" "$minor"
  done < /lab/device-nodes
fi
if [ -f /lab/install.sh ]; then
  sh /lab/install.sh $(cat /lab/install.flags 2>/dev/null) >>/lab/install.log 2>&1
fi
(while true; do dockerd --config-file /lab/daemon.json "$@"; sleep 0.2; done) &
engine=$!
if [ -x /lab/fogswarm-agent ]; then
  (
    while [ ! -e /lab/agent.enabled ]; do sleep 0.2; done
    while true; do
      /lab/fogswarm-agent run --config /lab/agent.json >>/lab/agent.log 2>&1
      sleep 3
    done
  ) &
fi
wait "$engine"
"#;

/// The device's thermal zones on the host: a lab machine has none, so
/// each device gets one, bind-mounted read-only as /sys/class/thermal, for
/// the agent's telemetry. A test changes a device's temperature by writing
/// `thermal_zone0/temp` (millidegrees) here.
pub fn thermal_dir(host_dir: &std::path::Path) -> PathBuf {
    host_dir.join("thermal")
}

/// A SoC zone at 40.5 to 59.5 °C, by the MAC's last byte; kept as it is
/// across reboots and re-images.
fn write_thermal_zone(spec: &DeviceSpec) -> Result<()> {
    let zone = thermal_dir(&spec.host_dir).join("thermal_zone0");
    if zone.join("temp").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&zone).with_context(|| format!("creating {}", zone.display()))?;
    let last = spec
        .mac
        .rsplit(':')
        .next()
        .and_then(|b| u8::from_str_radix(b, 16).ok())
        .unwrap_or(0);
    let millidegrees = 40_500 + u32::from(last % 20) * 1000;
    std::fs::write(zone.join("type"), "soc-thermal\n")?;
    std::fs::write(zone.join("temp"), format!("{millidegrees}\n"))?;
    Ok(())
}

/// The file whose presence lets a device's boot start its agent.
pub fn agent_enabled_file(host_dir: &std::path::Path) -> PathBuf {
    host_dir.join("agent.enabled")
}

impl DeviceSpec {
    pub fn socket(&self) -> PathBuf {
        self.host_dir.join("docker.sock")
    }

    /// The device engine's configuration: both sockets, the lab's host
    /// (any port: the lab registry, and registries a test starts beside
    /// it) as an insecure registry, vfs storage (overlay on the host's
    /// overlay fails), and no iptables under emulation (it fails there).
    fn daemon_json(&self) -> serde_json::Value {
        let host = self.registry.split(':').next().unwrap_or(&self.registry);
        let mut config = json!({
            "hosts": ["unix:///var/run/docker.sock", format!("unix://{LAB_MOUNT}/docker.sock")],
            "insecure-registries": [self.registry, format!("{host}/32")],
            "storage-driver": "vfs",
        });
        if self.platform.emulated() {
            config["iptables"] = json!(false);
        }
        config
    }

    fn create_body(&self, mode: RunMode) -> serde_json::Value {
        let mut cmd = vec!["/bin/sh".to_string(), format!("{LAB_MOUNT}/boot.sh")];
        cmd.extend(self.dockerd_args.iter().cloned());
        let mut host_config = json!({
            "Init": true,
            "NetworkMode": self.network,
            "Tmpfs": {"/run": ""},
            "Binds": [
                "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                format!("{}:{LAB_MOUNT}", self.host_dir.display()),
                format!("{}:/sys/class/thermal:ro", thermal_dir(&self.host_dir).display()),
            ],
        });
        match mode {
            RunMode::Privileged => host_config["Privileged"] = json!(true),
            RunMode::Capabilities => {
                host_config["CapAdd"] = json!(["ALL"]);
                host_config["CapDrop"] = json!(["SYS_RESOURCE"]);
                host_config["SecurityOpt"] = json!(["seccomp=unconfined", "apparmor=unconfined"]);
            }
        }
        json!({
            "Image": self.image,
            "Hostname": self.name,
            // Container-level MacAddress: what API 1.41 reads (bollard's
            // create body has no such field, hence the raw call).
            "MacAddress": self.mac,
            "Cmd": cmd,
            "Labels": {
                LAB_LABEL: self.lab,
                "io.fogswarm.lab.device": self.name,
            },
            "HostConfig": host_config,
            "NetworkingConfig": {
                "EndpointsConfig": {
                    self.network.clone(): {"IPAMConfig": {"IPv4Address": self.ip.to_string()}}
                }
            },
        })
    }
}

/// Creates and starts a device. With no run mode known yet, tries
/// `--privileged` first and falls back to the capability set when the host
/// refuses it; answers the container id and the mode that worked.
pub async fn create_and_start(
    engine: &Engine,
    spec: &DeviceSpec,
    mode: Option<RunMode>,
) -> Result<(String, RunMode)> {
    std::fs::create_dir_all(&spec.host_dir)
        .with_context(|| format!("creating {}", spec.host_dir.display()))?;
    write_boot_files(spec)?;
    let modes: &[RunMode] = match mode {
        Some(RunMode::Privileged) => &[RunMode::Privileged],
        Some(RunMode::Capabilities) => &[RunMode::Capabilities],
        None => &[RunMode::Privileged, RunMode::Capabilities],
    };
    let mut last_error = None;
    for &mode in modes {
        // No `platform=` here: Engine 20.10's import records the host's
        // architecture whatever was asked, so an arm64 root fs is labelled
        // amd64 and a platform check would refuse it. Its binaries are arm64
        // and run through binfmt; the image label keeps the real platform.
        let query = format!("/containers/create?name={}", spec.container);
        let created = engine
            .post_json(&query, &spec.create_body(mode))
            .await
            .with_context(|| format!("creating device container {}", spec.container))?;
        let id = created
            .get("Id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("engine answered no container id for {}", spec.container))?
            .to_string();
        match engine
            .docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            Ok(()) => return Ok((id, mode)),
            Err(e) => {
                // Not startable in this mode: remove it so the next mode (or
                // the caller's cleanup) starts from nothing.
                remove(engine, &id).await?;
                last_error = Some(anyhow!("starting {} ({mode:?}): {e}", spec.container));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("no run mode to try for {}", spec.container)))
}

/// The device's /lab: engine config, boot script, and the agent's binary,
/// config and key when it has one.
fn write_boot_files(spec: &DeviceSpec) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &spec.host_dir;
    let write = |name: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    };
    write(
        "daemon.json",
        &serde_json::to_vec_pretty(&spec.daemon_json())?,
        0o644,
    )?;
    write("boot.sh", BOOT_SCRIPT.as_bytes(), 0o755)?;
    write_thermal_zone(spec)?;
    let nodes: String = spec
        .device_nodes
        .iter()
        .map(|(path, major, minor)| format!("{path} {major} {minor}\n"))
        .collect();
    write("device-nodes", nodes.as_bytes(), 0o644)?;
    if let Some(agent) = &spec.agent {
        let bytes = std::fs::read(&agent.binary)
            .with_context(|| format!("reading the agent binary {}", agent.binary.display()))?;
        write("fogswarm-agent", &bytes, 0o755)?;
        let mut install = String::from("#!/bin/sh\nexec /lab/fogswarm-agent install");
        for arg in agent
            .agent_flags
            .iter()
            .map(String::as_str)
            .chain(INSTALL_FLAGS.iter().copied())
        {
            install.push(' ');
            install.push_str(&shell_quote(arg));
        }
        install.push_str(" \"$@\"\n");
        write("install.sh", install.as_bytes(), 0o755)?;
        let flags = if agent.runtime { "" } else { "--no-runtime\n" };
        write("install.flags", flags.as_bytes(), 0o644)?;
        write("provisioning.key", agent.provisioning_key.as_bytes(), 0o600)?;
        if !agent.hold {
            write("agent.enabled", b"", 0o644)?;
        }
    }
    Ok(())
}

/// One word for sh, single-quoted.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Waits for the device's engine to answer on its socket. Fails at once
/// when the container stops, with the tail of its log (dockerd's own).
pub async fn wait_for_engine(
    engine: &Engine,
    spec: &DeviceSpec,
    container: &str,
) -> Result<Engine> {
    let timeout = if spec.platform.emulated() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(90)
    };
    let addr = EngineAddr::socket(spec.socket());
    let result = Engine::wait_for(&addr, timeout, || async {
        let inspect = engine
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .with_context(|| format!("inspecting {container}"))?;
        let running = inspect.state.and_then(|s| s.running).unwrap_or(false);
        if !running {
            bail!("device container {container} stopped");
        }
        Ok(())
    })
    .await;
    match result {
        Ok(device_engine) => Ok(device_engine),
        Err(e) => Err(anyhow!(
            "{}: engine never came up ({e}); its log ends:\n{}",
            spec.name,
            log_tail(engine, container, 20).await
        )),
    }
}

/// The last `lines` lines of a container's output.
pub async fn log_tail(engine: &Engine, container: &str, lines: usize) -> String {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut stream = engine.docker.logs(container, Some(options));
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out.trim_end().to_string()
}

/// Removes a container and its anonymous volumes; a missing one is fine.
pub async fn remove(engine: &Engine, container: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match engine
        .docker
        .remove_container(container, Some(options))
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {container}")),
    }
}
