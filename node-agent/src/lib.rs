//! fogswarm-agent: the small static program on every device that turns a
//! generic image into an active, labelled swarm node, and keeps it so.

pub mod backoff;
pub mod config;
pub mod discovery;
pub mod facts;
pub mod flow;
pub mod identity;
pub mod install;
pub mod journal;
pub mod keys;
pub mod logs;
pub mod manager;
pub mod quorum;
pub mod runtime;
pub mod services;
pub mod state;
pub mod swarm;
pub mod telemetry;
pub mod tpm;
pub mod update;

/// This agent's version and the SHA-256 of its own binary (first 12 hex
/// digits): what `device ls` shows, and what tells two builds of one
/// version apart.
pub fn agent_version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match std::fs::read("/proc/self/exe") {
        Ok(bytes) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let hex: String = digest.as_ref()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{version} sha256:{hex}")
        }
        Err(_) => version.to_string(),
    }
}
