//! The lab's registry: Debian's docker-registry (CNCF distribution) as a host
//! process on the lab network's gateway address, kept running by
//! `fogswarm lab supervise`.
//!
//! A host process rather than a container because no registry image can be
//! pulled here, and devices reach the gateway address directly.

use super::state::{LabPaths, RegistryRecord};
use anyhow::{bail, Context, Result};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

pub const REGISTRY_PORT: u16 = 5000;

/// Writes the registry config and starts it under a supervisor; answers once
/// `GET /v2/` succeeds.
pub async fn start(
    paths: &LabPaths,
    lab: &str,
    gateway: Ipv4Addr,
    fogswarm_exe: &Path,
) -> Result<RegistryRecord> {
    let registry = super::tools::require_tool("docker-registry", "docker-registry")?;
    let dir = paths.registry_dir();
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let addr = format!("{gateway}:{REGISTRY_PORT}");
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(&storage, &addr))
        .with_context(|| format!("writing {}", config.display()))?;
    let log = dir.join("registry.log");
    let supervisor_pid = super::supervisor::spawn(
        fogswarm_exe,
        lab,
        &registry,
        [OsStr::new("serve"), config.as_os_str()],
        &log,
    )?;
    let record = RegistryRecord {
        addr: addr.clone(),
        supervisor_pid,
        storage,
        log: log.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if answers(&addr).await {
            return Ok(record);
        }
        if tokio::time::Instant::now() >= deadline {
            super::supervisor::stop(record.supervisor_pid, lab)?;
            bail!(
                "the registry did not answer on http://{addr}/v2/ within 20s; its log ends:\n{}",
                super::supervisor::tail(&log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config_yaml(storage: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}

/// True when `GET http://addr/v2/` answers 200.
pub async fn answers(addr: &str) -> bool {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let Ok(uri) = format!("http://{addr}/v2/").parse::<hyper::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await,
        Ok(Ok(response)) if response.status() == 200
    )
}
