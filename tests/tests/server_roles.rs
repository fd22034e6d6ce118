//! Role changes and join-token rotation at the server (a real process over
//! real HTTP; rerun on PostgreSQL by scripts/test): a device's reported
//! manager flag becomes events when it changes, and rotations asked for
//! (by an operator, by a decommission) stay in the desired state until a
//! manager posts tokens answering them.

use anyhow::{ensure, Result};
use fogswarm_e2e::server::ServerProcess;
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::Role;

const LEADER: &str = "02:fe:00:00:00:01";
const WORKER: &str = "02:fe:00:00:00:02";

fn tokens(generation: u64) -> SwarmTokens {
    SwarmTokens {
        cluster_id: "c-roles".into(),
        manager_addrs: vec!["10.213.9.21:2377".into()],
        worker_token: Secret::new(format!("SWMTKN-1-roles-worker-{generation}")),
        manager_token: Secret::new(format!("SWMTKN-1-roles-manager-{generation}")),
        generation,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_reported_and_tokens_rotated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(
        &admin,
        "roles",
        &[(LEADER, Role::Leader), (WORKER, Role::Worker)],
    )
    .await?;
    let (leader, _) = server.enrol(LEADER, &[]).await?;
    let (worker, _) = server.enrol(WORKER, &[]).await?;
    ensure!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    // A waiting device's held config request is answered when the tokens
    // arrive, not when its hold runs out.
    let held = tokio::spawn({
        let worker = worker.clone();
        async move {
            let asked = std::time::Instant::now();
            (worker.config_wait(40).await, asked.elapsed())
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    ensure!(!held.is_finished(), "a wait answer was not held");
    leader.post_swarm_tokens(&tokens(0)).await?;
    let (answer, took) = held.await?;
    ensure!(
        matches!(answer?, ConfigAnswer::Join { .. }),
        "the held request should be told to join"
    );
    ensure!(
        took < std::time::Duration::from_secs(30),
        "answered only after {took:?}"
    );

    // The worker reports itself a worker, then (promoted) a manager, then
    // a worker again: two events, and the device view says what it is.
    for manager in [false, true, false] {
        worker
            .report(&ReportRequest {
                state: Some(DeviceState::Active),
                manager: Some(manager),
                ..Default::default()
            })
            .await?;
        ensure!(admin.get_device(WORKER).await?.manager == Some(manager));
    }
    let actions: Vec<String> = admin
        .events(0, 100, Some(WORKER))
        .await?
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("device.promoted") || a.starts_with("device.demoted"))
        .collect();
    ensure!(
        actions == ["device.promoted", "device.demoted"],
        "{actions:?}"
    );

    // Rotation asked for: the desired state says so until a manager posts
    // tokens answering it.
    let desired = leader.desired(None, 0).await?;
    ensure!(desired.token_rotation == desired.tokens_generation);
    admin.rotate_tokens("roles").await?;
    let desired = leader.desired(None, 0).await?;
    ensure!(
        desired.token_rotation == 1 && desired.tokens_generation == 0,
        "{} {}",
        desired.token_rotation,
        desired.tokens_generation
    );
    leader.post_swarm_tokens(&tokens(1)).await?;
    let desired = leader.desired(None, 0).await?;
    ensure!(desired.tokens_generation == 1);
    let ConfigAnswer::Join { token, .. } = worker.config().await? else {
        anyhow::bail!("the worker was not told to join");
    };
    ensure!(
        token.expose() == "SWMTKN-1-roles-worker-1",
        "new tokens are handed out"
    );
    // An older answer arriving late brings no retired token back.
    let late = leader
        .post_swarm_tokens(&tokens(0))
        .await
        .expect_err("a late answer to an older rotation");
    ensure!(late.status() == Some(409), "{late}");
    let ConfigAnswer::Join { token, .. } = worker.config().await? else {
        anyhow::bail!("the worker was not told to join");
    };
    ensure!(token.expose() == "SWMTKN-1-roles-worker-1");

    // A decommission asks for a rotation too; an unknown swarm is a 404.
    admin.remove_device(WORKER, false).await?;
    let desired = leader.desired(None, 0).await?;
    ensure!(desired.token_rotation == 2, "{}", desired.token_rotation);
    let events = admin.events(0, 200, Some("roles")).await?;
    ensure!(
        events
            .iter()
            .filter(|e| e.action == "swarm.rotate-tokens")
            .count()
            == 2
    );
    ensure!(events.iter().any(|e| e.action == "swarm.tokens-rotated"));
    let missing = admin
        .rotate_tokens("nowhere")
        .await
        .expect_err("no such swarm");
    ensure!(missing.status() == Some(404), "{missing}");
    // No token in any event.
    let all = admin.events(0, 1000, None).await?;
    ensure!(
        !all.iter().any(|e| e.detail.contains("SWMTKN")),
        "a join token in an event"
    );
    Ok(())
}
