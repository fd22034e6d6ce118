//! What `lab up` created, written down so `lab down` removes exactly that.
//!
//! The state file is rewritten after every step of `up`, so even an `up`
//! that failed half-way (or was killed) leaves a record `down` can clean up.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Docker label on every object a lab creates; its value is the lab name.
pub const LAB_LABEL: &str = "io.fogswarm.lab";

/// How device containers get the rights to run an engine inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// `--privileged`, where the host allows it.
    Privileged,
    /// All capabilities but CAP_SYS_RESOURCE, seccomp and AppArmor off: for
    /// VMs whose bounding set lacks CAP_SYS_RESOURCE.
    Capabilities,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    pub name: String,
    pub container: String,
    pub ip: String,
    pub mac: String,
    /// Docker platform name of the device's userland: amd64 or arm64.
    pub platform: String,
    pub image: String,
    /// The device engine's socket on the host (bind-mounted from the device).
    pub socket: PathBuf,
    /// Whether the device boots the agent.
    #[serde(default)]
    pub agent: bool,
    /// The supervisor of its software TPM, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_supervisor: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistryRecord {
    /// host:port devices pull from (the network's gateway).
    pub addr: String,
    /// The supervisor process that keeps docker-registry running.
    pub supervisor_pid: u32,
    pub storage: PathBuf,
    pub log: PathBuf,
}

/// The lab's configuration server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerRecord {
    pub url: String,
    pub ca_fingerprint: String,
    pub supervisor_pid: u32,
    pub data: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    pub network: Option<String>,
    /// The bridge interface on the host (for mDNS).
    #[serde(default)]
    pub bridge: Option<String>,
    pub run_mode: Option<RunMode>,
    pub registry: Option<RegistryRecord>,
    #[serde(default)]
    pub server: Option<ServerRecord>,
    #[serde(default)]
    pub fleet: Option<super::fleet::Fleet>,
    #[serde(default)]
    pub dockerd_args: Vec<String>,
    pub devices: Vec<DeviceRecord>,
}

impl LabState {
    pub fn new(name: &str, subnet: String, gateway: String) -> Self {
        LabState {
            name: name.to_string(),
            subnet,
            gateway,
            network: None,
            bridge: None,
            run_mode: None,
            registry: None,
            server: None,
            fleet: None,
            dockerd_args: Vec::new(),
            devices: Vec::new(),
        }
    }
}

/// Where labs keep their files: `$FOGSWARM_LAB_DIR`, else
/// /var/lib/fogswarm/labs for root, else ~/.local/state/fogswarm/labs.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FOGSWARM_LAB_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        return "/var/lib/fogswarm/labs".into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/fogswarm/labs")
}

/// The files of one lab under the root.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(root: &Path, name: &str) -> Self {
        LabPaths {
            dir: root.join(name),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    pub fn device_dir(&self, device: &str) -> PathBuf {
        self.dir.join("devices").join(device)
    }

    pub fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }

    pub fn load(&self) -> Result<Option<LabState>> {
        let path = self.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("reading lab state {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading lab state {}", path.display())),
        }
    }

    /// Writes the state atomically (temp file and rename).
    pub fn save(&self, state: &LabState) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.state_file())
            .with_context(|| format!("writing {}", self.state_file().display()))
    }
}
