//! Managers kept and quorum recovered, at the server (a real process over
//! real HTTP; rerun on PostgreSQL by scripts/test): who is promoted when
//! the raft leader reports a manager lost, what the lost device is told,
//! and that a recovery is asked of one device at a time.

use anyhow::{bail, ensure, Result};
use fogswarm_client::Client;
use fogswarm_e2e::server::ServerProcess;
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::Role;

const L: &str = "02:fd:00:00:00:01";
const M2: &str = "02:fd:00:00:00:02";
const M3: &str = "02:fd:00:00:00:03";
const W1: &str = "02:fd:00:00:00:11";
const W2: &str = "02:fd:00:00:00:12";
const W3: &str = "02:fd:00:00:00:13";
const W4: &str = "02:fd:00:00:00:14";
const W5: &str = "02:fd:00:00:00:15";

/// Each device: role, location (if any), memory in MB.
const FLEET: [(&str, Role, Option<&str>, u32); 8] = [
    (L, Role::Leader, Some("hall1"), 4000),
    (M2, Role::Manager, Some("hall2"), 4000),
    (M3, Role::Manager, Some("hall3"), 4000),
    // Most memory, but hall1 has a manager.
    (W1, Role::Worker, Some("hall1"), 8000),
    (W2, Role::Worker, Some("hall2"), 4000),
    // No location: after those on a free one.
    (W3, Role::Worker, None, 2000),
    (W4, Role::Worker, Some("hall4"), 1000),
    // Marked never-manager.
    (W5, Role::Worker, Some("hall5"), 3000),
];

fn node(id: &str) -> String {
    format!("node-{}", id.replace(':', ""))
}

async fn report(client: &Client, id: &str, memory: u32, manager: bool, leader: bool) -> Result<()> {
    client
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            node_id: Some(node(id)),
            cluster_id: Some("c-quorum".into()),
            facts: Some([("memory_mb".to_string(), memory.to_string())].into()),
            manager: Some(manager),
            raft_leader: Some(leader),
            ..Default::default()
        })
        .await?;
    Ok(())
}

fn role_of(desired: &DesiredState, id: &str) -> Option<Role> {
    desired
        .nodes
        .iter()
        .find(|n| n.device_id.as_str() == id)
        .map(|n| n.role)
}

fn managers(desired: &DesiredState) -> Vec<String> {
    desired
        .nodes
        .iter()
        .filter(|n| n.role.is_manager())
        .map(|n| n.device_id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_managers_are_replaced_and_quorum_recovered_one_device_at_a_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    let roles: Vec<(&str, Role)> = FLEET.iter().map(|(id, role, ..)| (*id, *role)).collect();
    fogswarm_e2e::server::declare(&admin, "heal", &roles).await?;
    let mut clients = std::collections::HashMap::new();
    for (id, _, location, _) in FLEET {
        if let Some(l) = location {
            admin
                .change_labels(
                    id,
                    &LabelChange {
                        set: [("location".to_string(), l.to_string())].into(),
                        unset: vec![],
                    },
                )
                .await?;
        }
        clients.insert(id, server.enrol(id, &[]).await?.0);
    }
    ensure!(matches!(
        clients[L].config().await?,
        ConfigAnswer::Init { .. }
    ));
    clients[L]
        .post_swarm_tokens(&SwarmTokens {
            cluster_id: "c-quorum".into(),
            manager_addrs: vec!["10.213.9.1:2377".into()],
            worker_token: Secret::new("SWMTKN-1-quorum-worker"),
            manager_token: Secret::new("SWMTKN-1-quorum-manager"),
            generation: 0,
        })
        .await?;
    for (id, role, _, memory) in FLEET {
        report(&clients[id], id, memory, role.is_manager(), id == L).await?;
    }

    // Bad settings name what is wrong and change nothing.
    for (update, field) in [
        (
            SwarmUpdate {
                managers: Some(2),
                ..Default::default()
            },
            "managers",
        ),
        (
            SwarmUpdate {
                manager_grace_secs: Some(5),
                ..Default::default()
            },
            "manager_grace_secs",
        ),
        (
            SwarmUpdate {
                spread_label: Some("no spaces".into()),
                ..Default::default()
            },
            "spread_label",
        ),
    ] {
        let e = admin
            .update_swarm("heal", &update)
            .await
            .expect_err("bad manager settings");
        ensure!(e.status() == Some(422), "{e}");
        ensure!(e.to_string().contains(field), "{e}");
    }
    ensure!(admin.get_swarm("heal").await?.managers_target == 0);
    // Keeping off: a loss report is refused.
    let off = clients[L]
        .manager_lost(&ManagerLost {
            node_id: node(M3),
            unreachable_secs: 600,
        })
        .await
        .expect_err("no target yet");
    ensure!(off.status() == Some(409), "{off}");

    admin
        .update_device(
            W5,
            &DeviceUpdate {
                never_manager: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let view = admin
        .update_swarm(
            "heal",
            &SwarmUpdate {
                managers: Some(3),
                manager_grace_secs: Some(20),
                spread_label: Some("location".into()),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        view.managers_target == 3
            && view.manager_grace_secs == 20
            && view.spread_label.as_deref() == Some("location"),
        "{view:?}"
    );
    let desired = clients[L].desired(None, 0).await?;
    ensure!(
        desired.managers.target == 3 && desired.managers.grace_secs == 20,
        "{:?}",
        desired.managers
    );
    ensure!(
        managers(&desired) == [L, M2, M3],
        "three already: nobody promoted"
    );

    // Only managers report losses, and only past the grace period.
    let e = clients[W1]
        .manager_lost(&ManagerLost {
            node_id: node(M3),
            unreachable_secs: 60,
        })
        .await
        .expect_err("a worker");
    ensure!(e.status() == Some(403), "{e}");
    let e = clients[L]
        .manager_lost(&ManagerLost {
            node_id: node(M3),
            unreachable_secs: 19,
        })
        .await
        .expect_err("within the grace period");
    ensure!(e.status() == Some(409), "{e}");
    ensure!(managers(&clients[L].desired(None, 0).await?) == [L, M2, M3]);

    // M3 lost: W4 replaces it (W1 shares hall1 with L, W2 hall2 with M2,
    // W5 is never-manager, W3 has no location).
    let replaced = clients[L]
        .manager_lost(&ManagerLost {
            node_id: node(M3),
            unreachable_secs: 25,
        })
        .await?;
    ensure!(
        replaced.lost.as_ref().map(|d| d.as_str()) == Some(M3)
            && replaced
                .promoted
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                == [W4],
        "{replaced:?}"
    );
    let desired = clients[L].desired(None, 0).await?;
    ensure!(
        managers(&desired) == [L, M2, W4],
        "{:?}",
        managers(&desired)
    );
    let lost = desired
        .nodes
        .iter()
        .find(|n| n.device_id.as_str() == M3)
        .expect("M3 in the desired state");
    ensure!(
        lost.node_id.is_none() && lost.stale_node_ids == [node(M3)],
        "the lost node is to be removed: {lost:?}"
    );
    // The lost device, back, is told to leave that node and join as a
    // worker; reporting the old node does not bring it back.
    let ConfigAnswer::Join {
        role,
        removed_node_ids,
        ..
    } = clients[M3].config().await?
    else {
        bail!("M3 should be told to join");
    };
    ensure!(role == Role::Worker && removed_node_ids == [node(M3)]);
    report(&clients[M3], M3, 4000, true, false).await?;
    ensure!(admin.get_device(M3).await?.node_id.is_none());
    // The same loss again changes nothing.
    let again = clients[L]
        .manager_lost(&ManagerLost {
            node_id: node(M3),
            unreachable_secs: 40,
        })
        .await?;
    ensure!(
        again.lost.is_none() && again.promoted.is_empty(),
        "{again:?}"
    );
    ensure!(managers(&clients[L].desired(None, 0).await?) == [L, M2, W4]);
    let events = admin.events(0, 500, None).await?;
    let of = |action: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.action == action)
            .map(|e| e.subject.clone())
            .collect()
    };
    ensure!(of("manager.lost") == [M3], "{:?}", of("manager.lost"));
    ensure!(
        of("manager.promoted") == [W4],
        "{:?}",
        of("manager.promoted")
    );

    // Recovery: asked of the last raft leader, one device at a time.
    let recovery = admin.recover_swarm("heal").await?;
    ensure!(recovery.device_id.as_str() == L, "{recovery:?}");
    let busy = admin
        .recover_swarm("heal")
        .await
        .expect_err("a second recovery");
    ensure!(
        busy.status() == Some(409) && busy.to_string().contains(L),
        "{busy}"
    );
    let desired = clients[M2].desired(None, 0).await?;
    ensure!(desired.recovery.as_ref() == Some(&recovery));
    ensure!(admin.get_swarm("heal").await?.recovery == Some(recovery.clone()));
    let e = clients[M2]
        .recovered(&Recovered {
            generation: recovery.generation,
        })
        .await
        .expect_err("not asked of M2");
    ensure!(e.status() == Some(403), "{e}");
    let e = clients[L]
        .recovered(&Recovered {
            generation: recovery.generation + 1,
        })
        .await
        .expect_err("no such recovery");
    ensure!(e.status() == Some(409), "{e}");
    clients[L]
        .recovered(&Recovered {
            generation: recovery.generation,
        })
        .await?;
    // The other managers are out of the raft: replaced by W2 (hall2 is free
    // now) and W3; M2 and W4 lost their nodes, so are not eligible.
    let desired = clients[L].desired(None, 0).await?;
    ensure!(desired.recovery.is_none());
    ensure!(
        managers(&desired) == [L, W2, W3],
        "{:?}",
        managers(&desired)
    );
    ensure!(role_of(&desired, M2) == Some(Role::Worker));
    let events = admin.events(0, 500, Some("heal")).await?;
    ensure!(events.iter().any(|e| e.action == "swarm.recover"));
    ensure!(events.iter().any(|e| e.action == "swarm.recovered"));
    // Finished: another recovery may be asked again.
    ensure!(admin.recover_swarm("heal").await?.generation == recovery.generation + 1);
    let e = admin
        .recover_swarm("nowhere")
        .await
        .expect_err("no such swarm");
    ensure!(e.status() == Some(404), "{e}");
    Ok(())
}

/// A manager's quorum report, as its agent sends it.
async fn quorum(client: &Client, reaches_leader: bool) -> Result<()> {
    client
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            manager: Some(true),
            quorum: Some(reaches_leader),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_that_allows_it_recovers_by_itself() -> Result<()> {
    const A: [&str; 4] = [L, M2, M3, W1];
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(
        &admin,
        "auto",
        &[
            (L, Role::Leader),
            (M2, Role::Manager),
            (M3, Role::Manager),
            (W1, Role::Worker),
        ],
    )
    .await?;
    let mut clients = Vec::new();
    for id in A {
        clients.push(server.enrol(id, &[]).await?.0);
    }
    ensure!(matches!(
        clients[0].config().await?,
        ConfigAnswer::Init { .. }
    ));
    clients[0]
        .post_swarm_tokens(&SwarmTokens {
            cluster_id: "c-auto".into(),
            manager_addrs: vec!["10.213.9.1:2377".into()],
            worker_token: Secret::new("SWMTKN-1-auto-worker"),
            manager_token: Secret::new("SWMTKN-1-auto-manager"),
            generation: 0,
        })
        .await?;
    for (i, id) in A.iter().enumerate() {
        report(&clients[i], id, 1000, i < 3, i == 0).await?;
        if i < 3 {
            quorum(&clients[i], true).await?;
        }
    }
    // Automatic recovery waits at least the manager grace period.
    let short = admin
        .update_swarm(
            "auto",
            &SwarmUpdate {
                manager_grace_secs: Some(10),
                auto_recover_secs: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect_err("shorter than the grace period");
    ensure!(
        short.status() == Some(422) && short.to_string().contains("auto_recover_secs"),
        "{short}"
    );
    admin
        .update_swarm(
            "auto",
            &SwarmUpdate {
                managers: Some(3),
                manager_grace_secs: Some(10),
                auto_recover_secs: Some(10),
                ..Default::default()
            },
        )
        .await?;
    // One manager cut off while the others reach a leader: no quorum loss.
    quorum(&clients[1], false).await?;
    ensure!(admin.get_swarm("auto").await?.quorum_lost_at.is_none());
    // All three: lost, and recovered by the server after 10 s.
    quorum(&clients[0], false).await?;
    quorum(&clients[2], false).await?;
    let lost_at = admin
        .get_swarm("auto")
        .await?
        .quorum_lost_at
        .ok_or_else(|| anyhow::anyhow!("the quorum loss was not noticed"))?;
    ensure!(
        admin.get_swarm("auto").await?.recovery.is_none(),
        "too early"
    );
    let recovery = fogswarm_e2e::eventually(40, || async {
        admin
            .get_swarm("auto")
            .await?
            .recovery
            .ok_or_else(|| anyhow::anyhow!("no recovery started yet"))
    })
    .await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let waited = now.as_secs() as i64 - lost_at;
    ensure!(waited >= 10, "recovered after {waited}s, before 10s");
    ensure!(recovery.device_id.as_str() == L, "{recovery:?}");
    let events = admin.events(0, 200, Some("auto")).await?;
    let recover = events
        .iter()
        .find(|e| e.action == "swarm.recover")
        .ok_or_else(|| anyhow::anyhow!("no swarm.recover event"))?;
    ensure!(recover.actor == "server", "{recover:?}");
    ensure!(events.iter().any(|e| e.action == "swarm.quorum-lost"));
    // W1, heard within the grace period, is eligible to refill the managers.
    report(&clients[3], W1, 1000, false, false).await?;
    clients[0]
        .recovered(&Recovered {
            generation: recovery.generation,
        })
        .await?;
    let view = admin.get_swarm("auto").await?;
    ensure!(
        view.quorum_lost_at.is_none() && view.recovery.is_none(),
        "{view:?}"
    );
    let desired = clients[0].desired(None, 0).await?;
    ensure!(managers(&desired) == [L, W1], "{:?}", managers(&desired));
    Ok(())
}
