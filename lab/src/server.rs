//! The lab's configuration server: `fogswarm-server` as a supervised host
//! process on the lab network's gateway address, with its own CA, and mDNS
//! limited to the lab's bridge.

use super::state::{LabPaths, ServerRecord};
use super::supervisor::{self, tail};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SERVER_PORT: u16 = 8443;

/// The server binary: `$FOGSWARM_SERVER_BIN`, else next to this fogswarm
/// binary (how cargo and packages lay them out), else on PATH.
pub fn find_binary(fogswarm_exe: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FOGSWARM_SERVER_BIN").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    if let Some(sibling) = fogswarm_exe
        .parent()
        .map(|d| d.join("fogswarm-server"))
        .filter(|p| p.exists())
    {
        return Ok(sibling);
    }
    super::tools::find_on_path("fogswarm-server").context(
        "fogswarm-server not found next to fogswarm, on PATH or in FOGSWARM_SERVER_BIN: build it with `cargo build -p fogswarm-server`",
    )
}

/// Starts the server and waits until it answers; answers its record.
pub async fn start(
    paths: &LabPaths,
    lab: &str,
    gateway: Ipv4Addr,
    bridge: &str,
    server_exe: &Path,
    fogswarm_exe: &Path,
) -> Result<ServerRecord> {
    let data = paths.dir.join("server");
    let log = paths.dir.join("server.log");
    let listen = format!("{gateway}:{SERVER_PORT}");
    let args: Vec<std::ffi::OsString> = vec![
        "--data".into(),
        data.clone().into(),
        "--listen".into(),
        listen.clone().into(),
        "--tls-self-signed".into(),
        "--mdns".into(),
        "--mdns-interface".into(),
        bridge.into(),
        // The lab registry speaks plain HTTP: signed-only swarms look
        // images up there.
        "--insecure-registry".into(),
        format!("{gateway}:{}", super::registry::REGISTRY_PORT).into(),
    ];
    let supervisor_pid = supervisor::spawn(fogswarm_exe, lab, server_exe, args, &log)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(fp) = text
            .lines()
            .find_map(|l| l.strip_prefix("CA fingerprint (sha256): "))
        {
            return Ok(ServerRecord {
                url: format!("https://{listen}"),
                ca_fingerprint: fp.trim().to_string(),
                supervisor_pid,
                data,
                log,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            supervisor::stop(supervisor_pid, lab)?;
            bail!(
                "the config server did not start within 20s; its log ends:\n{}",
                tail(&log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
