//! Agent updates, A/B with a commit.
//!
//! The running agent (A) fetches the new binary through its own engine
//! (pull the rollout's image by digest, create a container, copy out the
//! file its entrypoint names), writes it beside itself as `NAME.next`, records the attempt and
//! execs it. The new agent (B) runs the normal loop from `NAME.next`; its
//! first successful pass commits it: `NAME` becomes `NAME.prev`, `NAME.next`
//! becomes `NAME`. If B dies before that, the init system starts `NAME`
//! again, which is still A: A finds the attempt unfinished and not its own,
//! removes `NAME.next` and reports the rollback. A B that runs but cannot
//! report by the deadline execs `NAME` (A) itself, to the same effect.
//! Outcomes are kept in the state dir until a report carried them.

use anyhow::{bail, Context, Result};
use fogswarm_client::engine::Engine;
use fogswarm_protocol::api::{AgentTarget, AgentUpdateOutcome};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// An update attempt as the state dir keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateRecord {
    pub rollout: u64,
    pub image: String,
    /// trying (B runs, not committed), done or failed.
    pub phase: String,
    #[serde(default)]
    pub detail: String,
    /// When B was started (seconds since the epoch).
    pub started_at: i64,
    pub deadline_secs: u64,
    /// Whether a report carried the outcome to the server.
    #[serde(default)]
    pub reported: bool,
}

impl UpdateRecord {
    /// The outcome to report, once the attempt ended and until reported.
    pub fn outcome(&self) -> Option<AgentUpdateOutcome> {
        (self.phase != "trying" && !self.reported).then(|| AgentUpdateOutcome {
            rollout: self.rollout,
            ok: self.phase == "done",
            detail: self.detail.clone(),
        })
    }
}

/// The committed binary's path, and whether this process runs the
/// candidate (`NAME.next`) rather than it.
pub fn paths() -> Result<(PathBuf, bool)> {
    let exe = std::env::current_exe().context("finding this agent's binary")?;
    let name = exe.to_string_lossy();
    match name.strip_suffix(".next") {
        Some(committed) => Ok((PathBuf::from(committed), true)),
        None => Ok((exe, false)),
    }
}

fn next_of(committed: &Path) -> PathBuf {
    PathBuf::from(format!("{}.next", committed.display()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// At start: an attempt left `trying` while this process is the committed
/// binary means the candidate died before committing. Roll it back.
pub fn settle_at_start(state: &crate::state::StateDir) -> Result<()> {
    let Some(mut record) = state.agent_update() else {
        return Ok(());
    };
    let (committed, candidate) = paths()?;
    if record.phase != "trying" || candidate {
        return Ok(());
    }
    let _ = std::fs::remove_file(next_of(&committed));
    record.phase = "failed".into();
    record.detail = format!(
        "the new agent from {} stopped before reporting healthy; rolled back",
        record.image
    );
    record.reported = false;
    tracing::warn!(rollout = record.rollout, "{}", record.detail);
    state.save_agent_update(&record)
}

/// After a successful pass: a candidate commits itself.
pub fn commit_if_candidate(state: &crate::state::StateDir) -> Result<()> {
    let (committed, candidate) = paths()?;
    let Some(mut record) = state.agent_update() else {
        return Ok(());
    };
    if !candidate || record.phase != "trying" {
        return Ok(());
    }
    let prev = PathBuf::from(format!("{}.prev", committed.display()));
    std::fs::rename(&committed, &prev)
        .with_context(|| format!("keeping the previous agent as {}", prev.display()))?;
    std::fs::rename(next_of(&committed), &committed)
        .with_context(|| format!("committing the new agent as {}", committed.display()))?;
    record.phase = "done".into();
    record.detail = format!("runs {} ({})", record.image, crate::agent_version());
    record.reported = false;
    tracing::info!(rollout = record.rollout, "agent update committed");
    state.save_agent_update(&record)
}

/// A candidate past its deadline without committing hands back to the
/// committed binary (which rolls back).
pub fn give_up_if_late(state: &crate::state::StateDir) -> Result<()> {
    let (committed, candidate) = paths()?;
    let Some(record) = state.agent_update() else {
        return Ok(());
    };
    if candidate
        && record.phase == "trying"
        && now() > record.started_at + record.deadline_secs as i64
    {
        tracing::warn!(
            rollout = record.rollout,
            "the new agent did not report healthy in time; handing back"
        );
        let err = std::process::Command::new(&committed)
            .args(std::env::args_os().skip(1))
            .exec();
        bail!("exec {}: {err}", committed.display());
    }
    Ok(())
}

/// Whether `target` still needs an attempt on this device.
pub fn wanted(state: &crate::state::StateDir, target: &AgentTarget) -> bool {
    state
        .agent_update()
        .is_none_or(|r| r.rollout != target.rollout)
}

/// Fetches the target's binary, and execs it as the candidate (never
/// returns then). A binary identical to this one is done at once.
pub async fn start(
    engine: &Engine,
    state: &crate::state::StateDir,
    target: &AgentTarget,
) -> Result<()> {
    let (committed, _) = paths()?;
    let next = next_of(&committed);
    let mut record = UpdateRecord {
        rollout: target.rollout,
        image: target.image.clone(),
        phase: "failed".into(),
        detail: String::new(),
        started_at: now(),
        deadline_secs: target.deadline_secs,
        reported: false,
    };
    let bytes = match fetch(engine, &target.image).await {
        Ok(b) => b,
        Err(e) => {
            record.detail = format!("fetching {}: {e:#}", target.image);
            state.save_agent_update(&record)?;
            return Err(e);
        }
    };
    let current = std::fs::read(&committed).unwrap_or_default();
    if current == bytes {
        record.phase = "done".into();
        record.detail = format!("already runs {}", target.image);
        return state.save_agent_update(&record);
    }
    std::fs::write(&next, &bytes).with_context(|| format!("writing {}", next.display()))?;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755))?;
    record.phase = "trying".into();
    state.save_agent_update(&record)?;
    tracing::info!(rollout = target.rollout, image = %target.image, "starting the new agent");
    let err = std::process::Command::new(&next)
        .args(std::env::args_os().skip(1))
        .exec();
    // Not started at all: no candidate ran, so nothing to roll back.
    let _ = std::fs::remove_file(&next);
    record.phase = "failed".into();
    record.detail = format!("starting the new agent: {err}");
    state.save_agent_update(&record)?;
    bail!("exec {}: {err}", next.display())
}

/// The image's agent binary, for this device's platform, through the
/// engine.
async fn fetch(engine: &Engine, image: &str) -> Result<Vec<u8>> {
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut pull = engine.docker.create_image(Some(options), None, None);
    while let Some(progress) = pull.next().await {
        progress.with_context(|| format!("pulling {image}"))?;
    }
    // The binary is what the image's entrypoint runs (`/fogswarm-agent`
    // as `scripts/images` builds it).
    let path = engine
        .docker
        .inspect_image(image)
        .await
        .with_context(|| format!("inspecting {image}"))?
        .config
        .and_then(|c| c.entrypoint)
        .and_then(|e| e.into_iter().next())
        .filter(|p| p.starts_with('/'))
        .with_context(|| format!("{image} has no entrypoint naming the agent binary"))?;
    let created = engine
        .docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(image.to_string()),
                ..Default::default()
            },
        )
        .await
        .context("creating a container to copy the agent out of")?;
    let copied = copy_file(engine, &created.id, &path).await;
    let _ = engine
        .docker
        .remove_container(
            &created.id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    copied
}

async fn copy_file(engine: &Engine, container: &str, path: &str) -> Result<Vec<u8>> {
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = engine
        .docker
        .download_from_container(container, Some(options));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.with_context(|| format!("copying {path} out"))?);
        if tar.len() > 256 << 20 {
            bail!("{path} is larger than 256 MiB");
        }
    }
    first_file(&tar)
}

/// The first regular file of an uncompressed tar archive (what the
/// engine's archive endpoint sends for one path).
fn first_file(tar: &[u8]) -> Result<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let size_field = std::str::from_utf8(&header[124..136])
            .context("a tar header's size is not text")?
            .trim_matches(|c: char| c == '\0' || c == ' ');
        let size = usize::from_str_radix(size_field, 8)
            .with_context(|| format!("a tar header's size {size_field:?}"))?;
        let data = at + 512;
        if data + size > tar.len() {
            bail!("the archive ends inside a file");
        }
        if matches!(header[156], b'0' | 0) {
            return Ok(tar[data..data + size].to_vec());
        }
        at = data + size.div_ceil(512) * 512;
    }
    bail!("the archive holds no file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = kind;
        let mut out = header;
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn the_first_regular_file_after_extended_headers() {
        let mut tar = entry("PaxHeaders/app", b'x', b"30 mtime=1700000000.000000000\n");
        tar.extend(entry("app", b'0', b"\x7fELF binary"));
        tar.extend(vec![0u8; 1024]);
        assert_eq!(first_file(&tar).expect("file"), b"\x7fELF binary");
    }

    #[test]
    fn archives_without_a_file_or_cut_short_are_refused() {
        assert!(first_file(&[0u8; 1024]).is_err());
        let mut tar = entry("app", b'0', &[1u8; 600]);
        tar.truncate(700);
        assert!(format!("{:#}", first_file(&tar).expect_err("cut short")).contains("ends inside"));
    }
}
