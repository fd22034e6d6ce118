//! Host programs the lab runs, found on PATH before anything is created, so
//! a missing one is reported with the package that provides it.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The path of `program` on PATH, or an error naming the Debian package to
/// install.
pub fn require_tool(program: &str, package: &str) -> Result<PathBuf> {
    match find_on_path(program) {
        Some(path) => Ok(path),
        None => bail!("{program} not found on PATH: install it with `apt-get install {package}`"),
    }
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
