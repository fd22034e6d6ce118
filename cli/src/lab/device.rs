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
}

/// What a device needs to run the agent at boot.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// Static agent binary for the device's platform.
    pub binary: PathBuf,
    /// The agent's config file (server, pin, key file, state dir).
    pub config: serde_json::Value,
    /// The fleet's provisioning key, copied into the device (0600).
    pub provisioning_key: String,
    /// Boot without starting the agent until `lab start-agent`.
    pub hold: bool,
}

/// A device's boot: its engine, then (once enabled) the agent, restarted
/// whenever it exits, as an init system would.
const BOOT_SCRIPT: &str = r#"#!/bin/sh
dockerd --config-file /lab/daemon.json "$@" &
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
    if let Some(agent) = &spec.agent {
        let bytes = std::fs::read(&agent.binary)
            .with_context(|| format!("reading the agent binary {}", agent.binary.display()))?;
        write("fogswarm-agent", &bytes, 0o755)?;
        write(
            "agent.json",
            &serde_json::to_vec_pretty(&agent.config)?,
            0o644,
        )?;
        write("provisioning.key", agent.provisioning_key.as_bytes(), 0o600)?;
        if !agent.hold {
            write("agent.enabled", b"", 0o644)?;
        }
    }
    Ok(())
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
