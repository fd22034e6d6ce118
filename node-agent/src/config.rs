//! The agent's settings: flags, then environment (both through clap), then
//! the config file (`/etc/fogswarm/agent.json` unless told otherwise).

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct Flags {
    /// Server URL, or the URLs of several replicas separated by commas
    /// (failed over in turn); without it the agent looks for
    /// _fogswarm._tcp over mDNS.
    #[arg(long, env = "FOGSWARM_SERVER")]
    pub server: Option<String>,
    /// SHA-256 fingerprint of the server's CA.
    #[arg(long, env = "FOGSWARM_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// File holding the fleet's provisioning key (needed to enrol once).
    #[arg(long, env = "FOGSWARM_PROVISIONING_KEY_FILE")]
    pub provisioning_key_file: Option<PathBuf>,
    /// File holding an enrolment token (`fogswarm enrol-token create`),
    /// used instead of the provisioning key to enrol once.
    #[arg(long, env = "FOGSWARM_ENROL_TOKEN_FILE")]
    pub enrol_token_file: Option<PathBuf>,
    /// The TPM holding the device's identity key: a device path or a
    /// software TPM's socket; `none` keeps the key in a 0600 file
    /// [default: /dev/tpmrm0 where it exists, else the file].
    #[arg(long, env = "FOGSWARM_TPM")]
    pub tpm: Option<String>,
    /// Device identity [default: MAC of the default-route interface].
    #[arg(long, env = "FOGSWARM_DEVICE_ID")]
    pub device_id: Option<String>,
    /// Where the agent keeps its key and status.
    #[arg(long, env = "FOGSWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address (IP or interface) to advertise to the swarm.
    #[arg(long, env = "FOGSWARM_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// The local engine [default: unix:///var/run/docker.sock].
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Swarm to auto-enrol into, for a device the server does not know.
    #[arg(long, env = "FOGSWARM_SWARM")]
    pub swarm: Option<String>,
    /// Config file [default: /etc/fogswarm/agent.json].
    #[arg(long, env = "FOGSWARM_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    server: Option<ServerUrls>,
    ca_fingerprint: Option<String>,
    provisioning_key_file: Option<PathBuf>,
    enrol_token_file: Option<PathBuf>,
    tpm: Option<String>,
    device_id: Option<String>,
    state_dir: Option<PathBuf>,
    advertise_addr: Option<String>,
    docker_host: Option<String>,
    swarm: Option<String>,
    heartbeat_secs: Option<u64>,
}

/// `"server"` in agent.json: one URL (or a comma-separated list), or a
/// list of the replicas' URLs.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum ServerUrls {
    One(String),
    Many(Vec<String>),
}

impl ServerUrls {
    fn joined(self) -> String {
        match self {
            ServerUrls::One(url) => url,
            ServerUrls::Many(urls) => urls.join(","),
        }
    }
}

/// The merged settings the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: Option<String>,
    pub ca_fingerprint: Option<String>,
    pub provisioning_key_file: Option<PathBuf>,
    pub enrol_token_file: Option<PathBuf>,
    /// The TPM setting as given (see [`crate::tpm::configured`]).
    pub tpm: Option<String>,
    pub device_id: Option<String>,
    pub state_dir: PathBuf,
    pub advertise_addr: Option<String>,
    pub docker_socket: PathBuf,
    pub swarm: Option<String>,
    pub heartbeat: std::time::Duration,
}

impl AgentConfig {
    pub fn load(flags: &Flags) -> Result<AgentConfig> {
        let path = flags
            .config
            .clone()
            .unwrap_or_else(|| "/etc/fogswarm/agent.json".into());
        let file: File = if path.exists() {
            serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a valid agent config", path.display()))?
        } else if flags.config.is_some() {
            anyhow::bail!("config file {} does not exist", path.display());
        } else {
            File::default()
        };
        let docker_host = flags
            .docker_host
            .clone()
            .or(file.docker_host)
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let docker_socket = docker_host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .with_context(|| format!("docker host {docker_host} is not a unix:// socket; the agent only talks to its local engine"))?;
        Ok(AgentConfig {
            server: flags.server.clone().or(file.server.map(ServerUrls::joined)),
            ca_fingerprint: flags.ca_fingerprint.clone().or(file.ca_fingerprint),
            provisioning_key_file: flags
                .provisioning_key_file
                .clone()
                .or(file.provisioning_key_file),
            enrol_token_file: flags.enrol_token_file.clone().or(file.enrol_token_file),
            tpm: flags.tpm.clone().or(file.tpm),
            device_id: flags.device_id.clone().or(file.device_id),
            state_dir: flags
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/fogswarm-agent".into()),
            advertise_addr: flags.advertise_addr.clone().or(file.advertise_addr),
            docker_socket,
            swarm: flags.swarm.clone().or(file.swarm),
            heartbeat: std::time::Duration::from_secs(
                file.heartbeat_secs.unwrap_or(30).clamp(5, 3600),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.json");
        std::fs::write(
            &path,
            r#"{"server": "https://file:8443", "state_dir": "/tmp/s", "heartbeat_secs": 1}"#,
        )
        .expect("write");
        let flags = Flags {
            server: Some("https://flag:8443".into()),
            config: Some(path),
            ..Default::default()
        };
        let c = AgentConfig::load(&flags).expect("load");
        assert_eq!(c.server.as_deref(), Some("https://flag:8443"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.heartbeat, std::time::Duration::from_secs(5), "clamped");
        assert_eq!(c.docker_socket, PathBuf::from("/var/run/docker.sock"));
    }

    #[test]
    fn several_servers_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.json");
        std::fs::write(&path, r#"{"server": ["http://a:1", "http://b:2"]}"#).expect("write");
        let flags = Flags {
            config: Some(path),
            ..Default::default()
        };
        let c = AgentConfig::load(&flags).expect("load");
        assert_eq!(c.server.as_deref(), Some("http://a:1,http://b:2"));
    }

    #[test]
    fn bad_files_and_hosts_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.json");
        std::fs::write(&path, r#"{"sever": "typo"}"#).expect("write");
        let flags = Flags {
            config: Some(path),
            ..Default::default()
        };
        assert!(AgentConfig::load(&flags).is_err());
        let flags = Flags {
            docker_host: Some("tcp://1.2.3.4:2375".into()),
            config: Some(dir.path().join("none.json")),
            ..Default::default()
        };
        assert!(AgentConfig::load(&flags).is_err());
    }
}
