//! Agent updates in waves (issue 15, test 6), end to end on a 5-device
//! lab: agent images pushed to the lab's registry by the image builder,
//! pulled by each device's own engine, swapped in and committed by the
//! real agent.
//!
//! v1 is the lab's agent; v2 is the same build with bytes appended (a
//! different binary, so a different digest and version, that runs the
//! same); v3 is a broken agent: a tiny static x86-64 executable that exits
//! with status 3 at once.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::{eventually, static_binary, Lab};
use fogswarm_protocol::api::{AgentRolloutView, DeviceView, Event};
use sha2::{Digest, Sha256};

/// The version an agent reports for a binary.
fn version_of(binary: &[u8]) -> String {
    let digest = Sha256::digest(binary);
    format!(
        "{} sha256:{}",
        env!("CARGO_PKG_VERSION"),
        hex::encode(&digest[..6])
    )
}

/// A static x86-64 ELF executable that exits with status 3: `mov edi, 3;
/// mov eax, 60 (exit); syscall`, loaded at 0x400000.
fn exits_at_once() -> Vec<u8> {
    let code: [u8; 12] = [
        0xbf, 0x03, 0x00, 0x00, 0x00, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05,
    ];
    let size = (64 + 56 + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // executable
    elf.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(0x400000u64 + 120).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for word in [0u64, 0x400000, 0x400000, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    elf
}

/// Waits until all 5 devices report running `version`.
async fn all_report(lab: &Lab, version: &str) -> Result<()> {
    eventually(60, || async {
        let devices: Vec<DeviceView> =
            serde_json::from_str(&lab.cli_ok(&["device", "ls", "--json"])?.stdout)?;
        let versions: Vec<Option<&str>> =
            devices.iter().map(|d| d.agent_version.as_deref()).collect();
        ensure!(
            versions.len() == 5 && versions.iter().all(|v| *v == Some(version)),
            "{versions:?}"
        );
        Ok(())
    })
    .await
}

fn rollout(lab: &Lab) -> Result<AgentRolloutView> {
    Ok(serde_json::from_str(
        &lab.cli_ok(&["agent", "rollout", "status", "--swarm", "fog", "--json"])?
            .stdout,
    )?)
}

/// Builds an agent image from `binary` and pushes it; answers the tag.
fn agent_image(lab: &Lab, registry: &str, tag: &str, binary: &[u8]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fogswarm-agent");
    std::fs::write(&path, binary)?;
    let reference = format!("{registry}/fogswarm-agent:{tag}");
    lab.push_binary(&path, &reference, &["--sbom=false"])?;
    Ok(reference)
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_update_in_waves_and_a_broken_canary_rolls_back() -> Result<()> {
    let lab = Lab::up("e2e-roll", "10.213.244.0/24", &["--devices", "5"])?;
    let registry = lab.status()?.registry.context("lab registry")?.addr;
    let v1 = std::fs::read(static_binary("fogswarm-agent", "x86_64-unknown-linux-musl"))?;
    let mut v2 = v1.clone();
    v2.extend_from_slice(b"\nfogswarm e2e: agent v2\n");
    let (v1_version, v2_version) = (version_of(&v1), version_of(&v2));
    all_report(&lab, &v1_version).await?;

    // v1 -> v2: a canary, then two waves; every device reports v2.
    let image = agent_image(&lab, &registry, "v2", &v2)?;
    let run = lab.cli_ok(&[
        "agent",
        "rollout",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--insecure",
    ])?;
    ensure!(
        run.stderr.contains("wave 1 of 3"),
        "no progress: {}",
        run.stderr
    );
    let done = rollout(&lab)?;
    ensure!(done.state == "done", "{done:?}");
    ensure!(
        done.image.contains("@sha256:"),
        "not pinned: {}",
        done.image
    );
    ensure!(
        done.waves.iter().map(Vec::len).collect::<Vec<_>>() == [1, 2, 2],
        "{:?}",
        done.waves
    );
    all_report(&lab, &v2_version).await?;
    // The previous binary is kept beside the committed one.
    let kept = lab.exec(
        "dev1",
        &[
            "sh",
            "-c",
            "cmp -s /lab/fogswarm-agent.prev /lab/fogswarm-agent && echo same || echo differs",
        ],
    )?;
    ensure!(kept.trim() == "differs", "no previous binary kept: {kept}");

    // v3 exits at start: the canary rolls back by itself, the rollout stops
    // after it, the others stay on v2.
    let broken = agent_image(&lab, &registry, "v3", &exits_at_once())?;
    let run = lab.cli(
        &[
            "agent",
            "rollout",
            "--swarm",
            "fog",
            "--image",
            &broken,
            "--insecure",
        ],
        None,
    )?;
    ensure!(run.code != 0, "a failed rollout exited 0: {}", run.stdout);
    ensure!(run.stderr.contains("failed in wave 1"), "{}", run.stderr);
    let failed = rollout(&lab)?;
    ensure!(failed.state == "failed" && failed.wave == 0, "{failed:?}");
    let canary = &failed.waves[0][0];
    ensure!(
        canary.state == "failed" && canary.detail.contains("rolled back"),
        "{canary:?}"
    );
    ensure!(
        failed.waves[1..]
            .iter()
            .flatten()
            .all(|d| d.state == "pending"),
        "later waves started: {:?}",
        failed.waves
    );
    all_report(&lab, &v2_version).await?;
    let events: Vec<Event> =
        serde_json::from_str(&lab.cli_ok(&["events", "--limit", "500", "--json"])?.stdout)?;
    let count = |action: &str| events.iter().filter(|e| e.action == action).count();
    ensure!(count("agent.updated") == 5, "{}", count("agent.updated"));
    ensure!(count("agent.rollout-done") == 1 && count("agent.rollout-failed") == 1);
    ensure!(count("agent.update-failed") == 1);
    // A second rollout while none runs is accepted; a bad reference is not.
    let bad = lab.cli(
        &["agent", "rollout", "--swarm", "fog", "--image", "not a ref"],
        None,
    )?;
    ensure!(
        bad.code == 2 && bad.stderr.contains("--image"),
        "{}",
        bad.stderr
    );
    Ok(())
}
