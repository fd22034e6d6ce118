//! qemu user emulation through binfmt_misc, for arm64 devices on an x86 host.
//!
//! With the handler registered (flag F: the kernel keeps the interpreter
//! open), foreign binaries run anywhere, including inside containers and the
//! debootstrap chroot.

use super::image::DevicePlatform;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

fn handler(platform: DevicePlatform) -> &'static str {
    match platform {
        DevicePlatform::Arm64 => "qemu-aarch64",
        DevicePlatform::Amd64 => "qemu-x86_64",
    }
}

fn conf_file_of(handler: &str) -> PathBuf {
    Path::new("/usr/lib/binfmt.d").join(format!("{handler}.conf"))
}

fn conf_file(platform: DevicePlatform) -> PathBuf {
    conf_file_of(handler(platform))
}

fn registered_handler(handler: &str) -> bool {
    std::fs::read_to_string(Path::new(BINFMT_DIR).join(handler))
        .map(|s| s.lines().next() == Some("enabled"))
        .unwrap_or(false)
}

fn registered(platform: DevicePlatform) -> bool {
    registered_handler(handler(platform))
}

/// Fails with the package to install when emulation cannot be set up.
pub fn check_available(platform: DevicePlatform) -> Result<()> {
    if registered(platform) || conf_file(platform).exists() {
        return Ok(());
    }
    bail!(
        "{} emulation is not available ({} missing): install it with `apt-get install qemu-user-static`",
        platform.docker_name(),
        conf_file(platform).display()
    )
}

/// Registers the qemu handler for `platform` unless it already is, mounting
/// binfmt_misc first where needed.
pub fn ensure_registered(platform: DevicePlatform) -> Result<()> {
    check_available(platform)?;
    ensure_handler(handler(platform))
}

/// Registers a qemu handler by name (`qemu-aarch64`, `qemu-arm`, ...) from
/// qemu-user-static's binfmt.d file, unless it already is.
pub fn ensure_handler(handler: &str) -> Result<()> {
    if registered_handler(handler) {
        return Ok(());
    }
    let conf_path = conf_file_of(handler);
    if !conf_path.exists() {
        bail!(
            "{} missing: install it with `apt-get install qemu-user-static`",
            conf_path.display()
        );
    }
    if !Path::new(BINFMT_DIR).join("register").exists() {
        let status = std::process::Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
            .status()
            .context("running mount for binfmt_misc")?;
        if !status.success() {
            bail!("cannot mount binfmt_misc on {BINFMT_DIR} (needs root)");
        }
    }
    let conf = std::fs::read_to_string(&conf_path)
        .with_context(|| format!("reading {}", conf_path.display()))?;
    let rule = conf
        .lines()
        .find(|l| l.starts_with(':'))
        .with_context(|| format!("no binfmt rule in {}", conf_path.display()))?;
    std::fs::write(Path::new(BINFMT_DIR).join("register"), rule)
        .with_context(|| format!("registering {handler} with binfmt_misc (needs root)"))?;
    if !registered_handler(handler) {
        bail!("{handler} did not register with binfmt_misc");
    }
    Ok(())
}
