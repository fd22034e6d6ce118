//! The previous release beside this one, on real lab devices: its agents
//! with this server, and this build's agents with its server, each form
//! their swarm (the lab waits until every device is an active node) and
//! run a global service that answers on every device. With this server,
//! the previous agents (protocol 1.0, no version header) are served and
//! flagged for update. The previous release is built from git once into
//! target/compat (see `fogswarm_e2e::compat`).

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::compat;
use fogswarm_e2e::server::server_binary;
use fogswarm_e2e::{eventually, http_get, static_binary, Lab};
use std::path::Path;

async fn forms_and_serves(lab: &Lab, tag: &str) -> Result<()> {
    let registry = lab.status()?.registry.context("lab registry")?.addr;
    let image = lab.build_hello(&registry, tag, &[])?;
    lab.cli_ok(&[
        "service",
        "deploy",
        "hello",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--mode",
        "global",
        "--publish",
        "mode=host,8080:8080",
    ])?;
    let ips: Vec<String> = lab.status()?.devices.into_iter().map(|d| d.ip).collect();
    ensure!(ips.len() == 2);
    eventually(90, || async {
        for ip in &ips {
            let (status, body) = http_get(&format!("{ip}:8080"), "/")?;
            ensure!(status == 200 && body.contains(tag), "{ip}: {status} {body}");
        }
        Ok(())
    })
    .await
}

async fn case(name: &str, subnet: &str, server: &Path, agent: &Path, tag: &str) -> Result<Lab> {
    let lab = Lab::up_with(name, subnet, &["--devices", "2"], server, agent)?;
    forms_and_serves(&lab, tag).await?;
    Ok(lab)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_previous_release_and_this_one_form_and_run_a_service_together() -> Result<()> {
    let previous = compat::previous()?;
    let this_server = server_binary();
    let this_agent = static_binary("fogswarm-agent", "x86_64-unknown-linux-musl");

    let mut lab = case(
        "e2e-compat1",
        "10.213.249.0/24",
        &this_server,
        &previous.agent_amd64,
        "old-agents",
    )
    .await
    .context("the previous agents with this server")?;
    let status = lab.admin()?.status().await?;
    ensure!(
        status.outdated_agents.len() == 2
            && status.outdated_agents.iter().all(|a| a.protocol == "1.0"),
        "the previous agents are flagged: {:?}",
        status.outdated_agents
    );
    let shown = lab.cli_ok(&["device", "show", &status.outdated_agents[0].device])?;
    ensure!(
        shown
            .stdout
            .contains("protocol:    1.0 (older than the server's"),
        "{}",
        shown.stdout
    );
    lab.down();

    let mut lab = case(
        "e2e-compat2",
        "10.213.250.0/24",
        &previous.server,
        &this_agent,
        "old-server",
    )
    .await
    .context("this build's agents with the previous server")?;
    lab.down();
    Ok(())
}
