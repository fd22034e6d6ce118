//! A software TPM for a lab device (Debian's swtpm), as a chip soldered to
//! its board: a host process under `lab supervise`, its state in the
//! device's host directory, so it outlives reboots and re-images (a fresh
//! disk, the same TPM). The device reaches it at `/lab/tpm/sock`.

use crate::tools::require_tool;
use anyhow::{Context, Result};
use std::path::Path;

/// Where the device's agent finds its TPM.
pub const DEVICE_SOCKET: &str = "/lab/tpm/sock";

/// Starts the device's TPM (state kept in `host_dir/tpm`); answers the
/// supervisor's pid once the TPM's socket is there.
pub fn start(fogswarm_exe: &Path, lab: &str, host_dir: &Path) -> Result<u32> {
    let swtpm = require_tool("swtpm", "swtpm")?;
    let dir = host_dir.join("tpm");
    std::fs::create_dir_all(dir.join("state"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("sock");
    let _ = std::fs::remove_file(&socket);
    let pid = crate::supervisor::spawn(
        fogswarm_exe,
        lab,
        &swtpm,
        [
            "socket".to_string(),
            "--tpm2".into(),
            "--flags".into(),
            "not-need-init,startup-clear".into(),
            "--tpmstate".into(),
            format!("dir={}", dir.join("state").display()),
            "--server".into(),
            format!("type=unixio,path={}", socket.display()),
            "--ctrl".into(),
            format!("type=unixio,path={}", dir.join("ctrl").display()),
        ],
        &dir.join("swtpm.log"),
    )?;
    for _ in 0..100 {
        if socket.exists() {
            return Ok(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!(
        "the software TPM did not open {} within 5 s (see {})",
        socket.display(),
        dir.join("swtpm.log").display()
    )
}
