//! What the agent keeps between boots, under its state dir: the device's
//! identity key (0600, the only secret; or none, when it lives in a TPM), the server it enrolled with (so a
//! server found by mDNS stays pinned), and a status file for
//! `fogswarm-agent status`.

use anyhow::{Context, Result};
use fogswarm_protocol::api::GrantRefusal;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerRecord {
    pub url: String,
    pub ca_fingerprint: Option<String>,
}

/// What the agent knows, for people: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Status {
    pub server: Option<String>,
    pub device_id: Option<String>,
    pub swarm: Option<String>,
    pub role: Option<String>,
    pub phase: String,
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state dir {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The device's identity key (0600), made on first use. Kept when
    /// the device leaves: the same device enrolling again is itself.
    pub fn device_key(&self, device_id: &str) -> Result<fogswarm_client::identity::FileKey> {
        fogswarm_client::identity::FileKey::load_or_create(device_id, &self.dir.join("device.key"))
            .map_err(anyhow::Error::msg)
    }

    /// Where a rotation keeps the next key until the server has it.
    pub fn next_key_path(&self) -> PathBuf {
        self.dir.join("device.key.next")
    }

    /// The next key takes the current one's place (a rename: the state
    /// dir holds one or the other whole).
    pub fn promote_next_key(&self) -> Result<()> {
        std::fs::rename(self.next_key_path(), self.dir.join("device.key"))
            .context("putting the next key in place")
    }

    /// Whether the server took this device's enrolment.
    pub fn enrolled(&self) -> bool {
        self.dir.join("enrolled").exists()
    }

    pub fn save_enrolled(&self) -> Result<()> {
        write_private(&self.dir.join("enrolled"), b"")
    }

    /// Enrol again at the next start (decommissioned, or refused).
    pub fn forget_enrolment(&self) -> Result<()> {
        for name in ["enrolled", "credential"] {
            match std::fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn server(&self) -> Option<ServerRecord> {
        serde_json::from_slice(&std::fs::read(self.dir.join("server.json")).ok()?).ok()
    }

    pub fn save_server(&self, record: &ServerRecord) -> Result<()> {
        write_private(
            &self.dir.join("server.json"),
            &serde_json::to_vec_pretty(record)?,
        )
    }

    pub fn status(&self) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(self.dir.join("status.json")).ok()?).ok()
    }

    pub fn save_status(&self, status: &Status) -> Result<()> {
        write_private(
            &self.dir.join("status.json"),
            &serde_json::to_vec_pretty(status)?,
        )
    }

    /// The swarm's grant key as the runtime reads it; written only when
    /// it changed.
    pub fn save_grant_key(&self, key: &GrantKey) -> Result<()> {
        if self.grant_key().as_ref() == Some(key) {
            return Ok(());
        }
        write_private(&self.dir.join(GRANT_KEY_FILE), &serde_json::to_vec(key)?)
    }

    /// The agent update in progress or last ended (see `update`).
    pub fn agent_update(&self) -> Option<crate::update::UpdateRecord> {
        serde_json::from_slice(&std::fs::read(self.dir.join("agent-update.json")).ok()?).ok()
    }

    pub fn save_agent_update(&self, record: &crate::update::UpdateRecord) -> Result<()> {
        write_private(
            &self.dir.join("agent-update.json"),
            &serde_json::to_vec_pretty(record)?,
        )
    }

    pub fn grant_key(&self) -> Option<GrantKey> {
        serde_json::from_slice(&std::fs::read(self.dir.join(GRANT_KEY_FILE)).ok()?).ok()
    }

    /// Appends a refusal for the agent's next report (called by the
    /// runtime, in another process: one line per append).
    pub fn record_refusal(&self, refusal: &GrantRefusal) -> Result<()> {
        let mut line = serde_json::to_vec(refusal)?;
        line.push(b'\n');
        let path = self.dir.join(REFUSALS_FILE);
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| format!("appending to {}", path.display()))
    }

    /// Refusals not reported yet. Moved aside first, so lines the runtime
    /// appends meanwhile wait for the next report; `done` removes them.
    pub fn pending_refusals(&self) -> Vec<GrantRefusal> {
        let sending = self.dir.join(format!("{REFUSALS_FILE}.sending"));
        if !sending.exists() {
            let _ = std::fs::rename(self.dir.join(REFUSALS_FILE), &sending);
        }
        std::fs::read_to_string(&sending)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(100)
            .collect()
    }

    pub fn refusals_reported(&self) {
        let _ = std::fs::remove_file(self.dir.join(format!("{REFUSALS_FILE}.sending")));
    }
}

const GRANT_KEY_FILE: &str = "grant-key.json";
const REFUSALS_FILE: &str = "grant-refusals.jsonl";

/// The public key hardware grants of this device's swarm are signed with,
/// as the server last said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrantKey {
    pub swarm: String,
    /// Ed25519, base64; none while the swarm allows no hardware.
    pub public_key: Option<String>,
}

/// Atomic write with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_private_and_survives_leaving() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(&dir.path().join("s")).expect("open");
        assert!(!state.enrolled());
        let key = state.device_key("dev1").expect("key");
        state.save_enrolled().expect("save");
        assert!(state.enrolled());
        let mode = std::fs::metadata(dir.path().join("s/device.key"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("s"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        state.forget_enrolment().expect("forget");
        assert!(!state.enrolled());
        use fogswarm_client::identity::DeviceSigner;
        let again = state.device_key("dev1").expect("key");
        assert_eq!(key.public_key(), again.public_key());
    }
}
