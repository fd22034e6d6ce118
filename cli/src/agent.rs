//! `fogswarm agent`: agent rollouts in waves.

use crate::fleet::{ago, bad, print_json, Connection};
use crate::image::RegistryAuth;
use crate::table::Table;
use anyhow::Result;
use clap::{Args, Subcommand};
use fogswarm_images::registry::Reference;
use fogswarm_protocol::api::{AgentRolloutCreate, AgentRolloutView};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Roll a new agent out to a swarm's devices: one canary, then a share
    /// of the rest, then all; a failed wave stops the rollout. `status`
    /// shows the latest one.
    Rollout(RolloutArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: Option<RolloutCommand>,
    #[arg(long)]
    swarm: Option<String>,
    /// The agent image (`scripts/images` builds it: the binary its
    /// entrypoint names, one per platform). A tag is resolved to its digest here, so every
    /// device runs the same build.
    #[arg(long)]
    image: Option<String>,
    /// Devices in the first wave.
    #[arg(long, default_value_t = 1)]
    canary: u32,
    /// Share of the remaining devices in the second wave (%).
    #[arg(long, default_value_t = 50)]
    wave_percent: u32,
    /// How long each device has to run the new agent and report healthy.
    #[arg(long, default_value = "2m")]
    deadline: String,
    /// Plain HTTP to the registry (to resolve the tag).
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    auth: RegistryAuth,
    /// Return once started instead of following the waves.
    #[arg(long, short)]
    detach: bool,
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// The swarm's latest rollout, device by device.
    Status {
        #[arg(long)]
        swarm: String,
    },
}

pub async fn agent(conn: &Connection, command: AgentCommand) -> Result<()> {
    let AgentCommand::Rollout(args) = command;
    let client = conn.client()?;
    if let Some(RolloutCommand::Status { swarm }) = &args.command {
        let view = client.rollout(swarm).await?;
        if conn.json {
            return print_json(&view);
        }
        print_rollout(&view);
        return Ok(());
    }
    let (Some(swarm), Some(image)) = (&args.swarm, &args.image) else {
        return Err(bad(
            "give --swarm and --image (or `agent rollout status --swarm S`)",
        ));
    };
    let deadline_secs = fogswarm_protocol::service::parse_duration(&args.deadline)
        .map_err(|m| bad(format!("--deadline: {m}")))?
        / 1_000_000_000;
    let image = pinned(image, args.insecure, &args.auth).await?;
    let mut view = client
        .start_rollout(
            swarm,
            &AgentRolloutCreate {
                image,
                canary: args.canary,
                wave_percent: args.wave_percent,
                deadline_secs,
            },
        )
        .await?;
    if !args.detach {
        // Progress on stderr, wave by wave, until the rollout ends.
        let mut shown = String::new();
        while view.state == "running" {
            let line = progress(&view);
            if line != shown {
                eprintln!("{line}");
                shown = line;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            view = client.rollout(swarm).await?;
        }
    }
    if conn.json {
        print_json(&view)?;
    } else {
        print_rollout(&view);
    }
    if view.state == "failed" {
        anyhow::bail!(
            "rollout {} of swarm {swarm} failed in wave {}; the other devices keep their agent",
            view.rollout,
            view.wave + 1
        );
    }
    Ok(())
}

/// The image by digest: as given when it is one, else its tag resolved.
async fn pinned(image: &str, insecure: bool, auth: &RegistryAuth) -> Result<String> {
    let reference = Reference::parse(image).map_err(|e| bad(format!("--image: {e}")))?;
    if reference.tag.starts_with("sha256:") {
        return Ok(image.to_string());
    }
    let client = auth.client(&reference.registry, insecure)?;
    let top = client.get_manifest(&reference.name, &reference.tag).await?;
    Ok(format!(
        "{}/{}@{}",
        reference.registry, reference.name, top.digest
    ))
}

fn progress(view: &AgentRolloutView) -> String {
    let wave = &view.waves[view.wave as usize];
    let done = wave.iter().filter(|d| d.state == "done").count();
    format!(
        "rollout {}: wave {} of {}: {done}/{} devices updated",
        view.rollout,
        view.wave + 1,
        view.waves.len(),
        wave.len()
    )
}

fn print_rollout(view: &AgentRolloutView) {
    println!(
        "rollout {} of swarm {}: {} ({}, wave {} of {}, started {})",
        view.rollout,
        view.swarm,
        view.state,
        view.image,
        view.wave + 1,
        view.waves.len(),
        ago(view.started_at)
    );
    let mut table = Table::new(&["WAVE", "DEVICE", "STATE", "DETAIL"]);
    for (i, wave) in view.waves.iter().enumerate() {
        for d in wave {
            table.row([
                (i + 1).to_string(),
                d.device.clone(),
                d.state.clone(),
                d.detail.clone(),
            ]);
        }
    }
    table.print();
}
