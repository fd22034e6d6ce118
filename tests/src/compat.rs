//! The previous release's binaries, for tests that run them beside this
//! build's: its source taken from git (`git archive` of [`PREVIOUS`]) and
//! built once into `target/compat/`, whose target directory starts as a
//! hard-linked copy of this build's so only the workspace's own crates
//! compile (a couple of minutes on 2 cores, then cached).

use crate::{target_dir, workspace_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The last commit of the release before protocol versioning (1.0: its
/// agents and servers send no version).
pub const PREVIOUS: &str = "de9075e";

/// The previous release's server (debug) and static x86_64 agent.
pub struct Previous {
    pub server: PathBuf,
    pub agent_amd64: PathBuf,
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let out = command.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Builds (once, then cached) and answers the previous release's binaries.
pub fn previous() -> Result<Previous> {
    static BUILT: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((server, agent)) = built.as_ref() {
        return Ok(Previous {
            server: server.clone(),
            agent_amd64: agent.clone(),
        });
    }
    let root = target_dir().join("compat").join(PREVIOUS);
    let src = root.join("src");
    let target = root.join("target");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src)?;
        let archive = root.join("src.tar");
        run(
            Command::new("git")
                .current_dir(workspace_root())
                .args(["archive", "--format=tar", "-o"])
                .arg(&archive)
                .arg(PREVIOUS),
            &format!(
                "git archive {PREVIOUS} (the previous release must be in this clone's history)"
            ),
        )?;
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&src),
            "unpacking the previous release",
        )?;
        std::fs::remove_file(&archive)?;
    }
    if !target.exists() {
        std::fs::create_dir_all(&target)?;
        for dir in ["debug", "x86_64-unknown-linux-musl"] {
            let from = target_dir().join(dir);
            if from.exists() {
                // Hard links: instant, and no space until one side changes.
                run(
                    Command::new("cp").arg("-al").arg(&from).arg(&target),
                    "seeding the previous release's target dir",
                )?;
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = |args: &[&str], what: &str| {
        run(
            Command::new(&cargo)
                .current_dir(&src)
                .env("CARGO_TARGET_DIR", &target)
                .args(["build", "--quiet", "--locked"])
                .args(args),
            what,
        )
    };
    build(&["-p", "fogswarm-server"], "building the previous server")?;
    build(
        &[
            "-p",
            "fogswarm-agent",
            "--profile",
            "release-small",
            "--target",
            "x86_64-unknown-linux-musl",
        ],
        "building the previous agent",
    )?;
    let server = target.join("debug/fogswarm-server");
    let agent = target.join("x86_64-unknown-linux-musl/release-small/fogswarm-agent");
    for binary in [&server, &agent] {
        ensure_exists(binary)?;
    }
    *built = Some((server.clone(), agent.clone()));
    Ok(Previous {
        server,
        agent_amd64: agent,
    })
}

fn ensure_exists(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(())
}
