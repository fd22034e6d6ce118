//! Agent rollouts at the server (a real process over real HTTP; rerun on
//! PostgreSQL by scripts/test): waves, each device told its target while
//! its wave is on, a failure or a silent device stopping the rollout.

use anyhow::{bail, ensure, Result};
use fogswarm_client::Client;
use fogswarm_e2e::server::ServerProcess;
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::Role;

const L: &str = "02:fc:00:00:00:01";
const W: [&str; 4] = [
    "02:fc:00:00:00:11",
    "02:fc:00:00:00:12",
    "02:fc:00:00:00:13",
    "02:fc:00:00:00:14",
];
const IMAGE: &str =
    "10.213.9.1:5000/fogswarm-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn target(client: &Client) -> Result<Option<AgentTarget>> {
    match client.config().await? {
        ConfigAnswer::Join { agent_update, .. } => Ok(agent_update),
        other => bail!("not told to join: {other:?}"),
    }
}

async fn outcome(client: &Client, rollout: u64, ok: bool, detail: &str) -> Result<()> {
    client
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            agent_update: Some(AgentUpdateOutcome {
                rollout,
                ok,
                detail: detail.into(),
            }),
            ..Default::default()
        })
        .await?;
    Ok(())
}

fn states(view: &AgentRolloutView) -> Vec<Vec<&str>> {
    view.waves
        .iter()
        .map(|w| w.iter().map(|d| d.state.as_str()).collect())
        .collect()
}

fn create(image: &str, deadline_secs: u64) -> AgentRolloutCreate {
    AgentRolloutCreate {
        image: image.into(),
        canary: 1,
        wave_percent: 50,
        deadline_secs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_go_in_waves_and_stop_at_a_failure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    let mut fleet = vec![(L, Role::Leader)];
    fleet.extend(W.iter().map(|w| (*w, Role::Worker)));
    fogswarm_e2e::server::declare(&admin, "roll", &fleet).await?;
    let leader = server.enrol(L, &[]).await?.0;
    ensure!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    leader
        .post_swarm_tokens(&SwarmTokens {
            cluster_id: "c-roll".into(),
            manager_addrs: vec!["10.213.9.2:2377".into()],
            worker_token: Secret::new("SWMTKN-1-roll-worker"),
            manager_token: Secret::new("SWMTKN-1-roll-manager"),
            generation: 0,
        })
        .await?;
    let mut workers = Vec::new();
    for (i, id) in W.iter().enumerate() {
        let client = server.enrol(id, &[]).await?.0;
        client
            .report(&ReportRequest {
                state: Some(DeviceState::Active),
                node_id: Some(format!("node-w{i}")),
                ..Default::default()
            })
            .await?;
        workers.push(client);
    }
    leader
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            node_id: Some("node-l".into()),
            ..Default::default()
        })
        .await?;

    // Bad requests name the field; nothing starts.
    for (req, field) in [
        (create("10.213.9.1:5000/fogswarm-agent:v2", 60), "image"),
        (
            AgentRolloutCreate {
                canary: 0,
                ..create(IMAGE, 60)
            },
            "canary",
        ),
        (create(IMAGE, 5), "deadline_secs"),
    ] {
        let e = admin
            .start_rollout("roll", &req)
            .await
            .expect_err("refused");
        ensure!(
            e.status() == Some(422) && e.to_string().contains(field),
            "{e}"
        );
    }
    ensure!(admin.rollout("roll").await.expect_err("none").status() == Some(404));

    // Waves of 1, 2 and 2; the canary is a worker, the leader goes last.
    let view = admin.start_rollout("roll", &create(IMAGE, 60)).await?;
    ensure!(states(&view) == [vec!["updating"], vec!["pending"; 2], vec!["pending"; 2]]);
    ensure!(view.waves[0][0].device == W[0], "{:?}", view.waves);
    ensure!(view.waves[2][1].device == L, "{:?}", view.waves);
    let busy = admin
        .start_rollout("roll", &create(IMAGE, 60))
        .await
        .expect_err("one at a time");
    ensure!(busy.status() == Some(409), "{busy}");
    let t = target(&workers[0]).await?;
    ensure!(
        t.as_ref()
            .is_some_and(|t| t.rollout == 1 && t.image == IMAGE),
        "{t:?}"
    );
    ensure!(
        target(&workers[1]).await?.is_none(),
        "wave 2 told too early"
    );
    outcome(&workers[0], 1, true, "runs v2").await?;
    ensure!(target(&workers[0]).await?.is_none());
    let view = admin.rollout("roll").await?;
    ensure!(view.wave == 1 && states(&view)[1] == ["updating", "updating"]);
    ensure!(target(&workers[1]).await?.is_some() && target(&workers[2]).await?.is_some());
    // An outcome for another rollout changes nothing.
    outcome(&workers[1], 7, false, "stale").await?;
    ensure!(admin.rollout("roll").await?.state == "running");
    outcome(&workers[1], 1, true, "").await?;
    outcome(&workers[2], 1, true, "").await?;
    outcome(&workers[3], 1, true, "").await?;
    outcome(&leader, 1, true, "").await?;
    let view = admin.rollout("roll").await?;
    ensure!(view.state == "done", "{view:?}");

    // Rollout 2: the canary fails; later waves never start.
    let view = admin.start_rollout("roll", &create(IMAGE, 60)).await?;
    ensure!(view.rollout == 2);
    outcome(&workers[0], 2, false, "the new agent stopped; rolled back").await?;
    let view = admin.rollout("roll").await?;
    ensure!(view.state == "failed" && view.wave == 0, "{view:?}");
    ensure!(view.waves[0][0].detail.contains("rolled back"));
    ensure!(states(&view)[1..].iter().flatten().all(|s| *s == "pending"));
    ensure!(target(&workers[1]).await?.is_none());

    // Rollout 3: a canary silent past the deadline fails it.
    admin.start_rollout("roll", &create(IMAGE, 10)).await?;
    let view = fogswarm_e2e::eventually(30, || async {
        let view = admin.rollout("roll").await?;
        ensure!(view.state != "running", "still running");
        Ok(view)
    })
    .await?;
    ensure!(
        view.state == "failed"
            && view.waves[0][0]
                .detail
                .contains("no healthy report within 10s"),
        "{view:?}"
    );
    let events = admin.events(0, 500, None).await?;
    let count = |action: &str| events.iter().filter(|e| e.action == action).count();
    ensure!(count("agent.rollout") == 3 && count("agent.rollout-done") == 1);
    ensure!(count("agent.rollout-failed") == 2 && count("agent.rollout-wave") == 2);
    ensure!(count("agent.updated") == 5 && count("agent.update-failed") == 1);
    Ok(())
}
