//! Hardware for services at the server (a real process over real HTTP, on
//! SQLite and, rerun by scripts/test, on PostgreSQL): the swarm's
//! allow-list, deploys refused outside it with nothing stored, grants
//! signed for what is allowed and verified with the key devices are
//! given, placement labels only on nodes with the device and the runtime,
//! and refusals reported by devices becoming events.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::server::{db_fingerprint, ServerProcess};
use fogswarm_protocol::api::*;
use fogswarm_protocol::hardware::{self, Grant};
use fogswarm_protocol::service::{ServiceMode, ServiceSpec, StackDeploy};
use fogswarm_protocol::validate::Role;

const LEADER: &str = "02:fd:00:00:00:01";
const WITH_DEVICE: &str = "02:fd:00:00:00:02";
const NO_RUNTIME: &str = "02:fd:00:00:00:03";

fn reader(devices: &[&str]) -> Result<ServiceSpec> {
    let mut spec = ServiceSpec::new("reader", "registry.example/reader:1");
    spec.mode = ServiceMode::Global;
    for d in devices {
        spec.devices
            .push(hardware::parse_device(d).map_err(anyhow::Error::msg)?);
    }
    Ok(spec)
}

fn facts(pairs: &[(&str, &str)]) -> Facts {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn report(client: &fogswarm_client::Client, facts: Facts) -> Result<()> {
    client
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            facts: Some(facts),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_granted_only_as_the_swarm_allows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--log-level", "trace"])?;
    let admin = server.admin();
    fogswarm_e2e::server::declare(
        &admin,
        "plant",
        &[
            (LEADER, Role::Leader),
            (WITH_DEVICE, Role::Worker),
            (NO_RUNTIME, Role::Worker),
        ],
    )
    .await?;
    let (leader, _) = server.enrol(LEADER, &[]).await?;
    let (with_device, _) = server.enrol(WITH_DEVICE, &[]).await?;
    let (no_runtime, _) = server.enrol(NO_RUNTIME, &[]).await?;
    // The swarm is initialized (the leader posts its tokens), so the
    // workers are told to join: the answer that carries the grant key.
    ensure!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    leader
        .post_swarm_tokens(&SwarmTokens {
            cluster_id: "c-plant".into(),
            manager_addrs: vec!["10.213.9.11:2377".into()],
            worker_token: Secret::new("SWMTKN-1-plant-worker-worker-worker"),
            manager_token: Secret::new("SWMTKN-1-plant-manager-manager-mgr"),
            generation: 0,
        })
        .await?;
    let runtime = (hardware::RUNTIME_FACT, hardware::RUNTIME_NAME);
    report(&leader, facts(&[runtime])).await?;
    report(
        &with_device,
        facts(&[runtime, ("serial", "ttyACM0.ttyUSB3")]),
    )
    .await?;
    report(&no_runtime, facts(&[("serial", "ttyACM0")])).await?;

    // Nothing is allowed by default: refused, naming the field and the way
    // to allow it, and nothing stored.
    let before = db_fingerprint(&data)?;
    let refused = admin
        .create_service("plant", &reader(&["/dev/ttyACM0"])?)
        .await
        .expect_err("not allowed");
    ensure!(refused.status() == Some(422), "{refused}");
    let text = refused.to_string();
    ensure!(
        text.contains("devices[0]")
            && text.contains("/dev/ttyACM0 is not allowed in swarm plant")
            && text.contains("--allow-device"),
        "{text}"
    );
    let mut privileged = ServiceSpec::new("root", "registry.example/root:1");
    privileged.privileged = true;
    let refused = admin
        .create_service("plant", &privileged)
        .await
        .expect_err("privileged not allowed");
    ensure!(
        refused.to_string().contains("--allow-privileged"),
        "{refused}"
    );
    let mut web = ServiceSpec::new("line_web", "registry.example/web:1");
    web.stack = Some("line".into());
    let mut stack_spec = reader(&["/dev/ttyACM0"])?;
    stack_spec.name = "line_reader".into();
    stack_spec.stack = Some("line".into());
    let refused = admin
        .deploy_stack(
            "plant",
            "line",
            &StackDeploy {
                services: vec![web, stack_spec],
                prune: false,
            },
        )
        .await
        .expect_err("a stack with one refused service stores none");
    ensure!(refused.to_string().contains("line_reader"), "{refused}");
    ensure!(admin.list_services("plant").await?.is_empty());
    ensure!(
        db_fingerprint(&data)? == before,
        "a refusal changed the database"
    );

    // Allow-list entries are checked.
    for bad in ["/etc/*", "x 1:2 rwm"] {
        let e = admin
            .update_swarm(
                "plant",
                &SwarmUpdate {
                    allow_devices: Some(vec![bad.into()]),
                    ..Default::default()
                },
            )
            .await
            .expect_err(bad);
        ensure!(
            e.status() == Some(422) && e.to_string().contains("allow_devices[0]"),
            "{bad}: {e}"
        );
    }
    let view = admin
        .update_swarm(
            "plant",
            &SwarmUpdate {
                allow_devices: Some(vec!["/dev/ttyACM*".into(), "c 166:* rwm".into()]),
                ..Default::default()
            },
        )
        .await?;
    ensure!(view.allowed_devices == ["/dev/ttyACM*", "c 166:* rwm"]);
    ensure!(!view.allow_privileged);
    let mut spec = reader(&["/dev/ttyACM0"])?;
    spec.device_cgroup_rules = vec!["c 166:* rwm".into()];
    admin.create_service("plant", &spec).await?;
    // Outside the patterns: still refused.
    let e = admin
        .deploy_service("plant", &reader(&["/dev/ttyUSB3"])?)
        .await
        .expect_err("ttyUSB not allowed");
    ensure!(
        e.to_string().contains("allowed: /dev/ttyACM*, c 166:* rwm"),
        "{e}"
    );

    // The leader's desired state: a grant that verifies with the key every
    // device of the swarm is given, for exactly this service and swarm, and
    // the placement label only where the device and the runtime are.
    let desired = leader.desired(None, 0).await?;
    let service = desired
        .services
        .iter()
        .find(|s| s.spec.name == "reader")
        .context("reader in the desired state")?;
    let label = service.grant.clone().context("a grant")?;
    let ConfigAnswer::Join { grant_key, .. } = with_device.config().await? else {
        anyhow::bail!("the worker was not told to join");
    };
    let key = grant_key.context("the join answer carries the grant key")?;
    let grant = Grant::open(&label, &key, "plant").map_err(anyhow::Error::msg)?;
    ensure!(grant.service == "reader" && grant.devices == spec.devices);
    ensure!(grant.cgroup_rules == ["c 166:* rwm"]);
    ensure!(
        Grant::open(&label, &key, "other").is_err(),
        "a grant names its swarm"
    );
    // No device holds the key yet: no node can honour the grant. Once a
    // device reports the key it was given, it can.
    let placement = hardware::placement_label("reader");
    ensure!(
        !desired
            .nodes
            .iter()
            .any(|n| n.labels.contains_key(&placement)),
        "a node labelled before any device held the key"
    );
    let held = (hardware::KEY_FACT, hardware::key_id(&key));
    report(
        &with_device,
        facts(&[runtime, ("serial", "ttyACM0.ttyUSB3"), (held.0, &held.1)]),
    )
    .await?;
    let desired = leader.desired(None, 0).await?;
    let labelled: Vec<String> = desired
        .nodes
        .iter()
        .filter(|n| n.labels.get(&placement).map(String::as_str) == Some("true"))
        .map(|n| n.device_id.to_string())
        .collect();
    ensure!(
        labelled == [WITH_DEVICE],
        "only the device with the node, the runtime and the key: {labelled:?}"
    );
    ensure!(
        desired
            .services
            .iter()
            .all(|s| s.spec.name == "reader" || s.grant.is_none()),
        "services without hardware get no grant"
    );

    // The device gains the runtime (and the key): the label follows its facts.
    report(&no_runtime, facts(&[runtime, ("serial", "ttyACM0")])).await?;
    ensure!(
        leader
            .desired(None, 0)
            .await?
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(&placement))
            .count()
            == 1,
        "the runtime without the key is not enough"
    );
    report(
        &no_runtime,
        facts(&[runtime, ("serial", "ttyACM0"), (held.0, &held.1)]),
    )
    .await?;
    let desired = leader.desired(None, 0).await?;
    let labelled = desired
        .nodes
        .iter()
        .filter(|n| n.labels.contains_key(&placement))
        .count();
    ensure!(labelled == 2, "{:?}", desired.nodes);

    // Taking the pattern off the list takes the grant away (and gives the
    // service a new revision, so the leader re-applies it) but keeps the
    // service; same grant, same label: signing is deterministic.
    let again = leader.desired(None, 0).await?;
    ensure!(again.services[0].grant.as_deref() == Some(label.as_str()));
    let revision = again.services[0].revision;
    admin
        .update_swarm(
            "plant",
            &SwarmUpdate {
                allow_devices: Some(vec![]),
                ..Default::default()
            },
        )
        .await?;
    let after = leader.desired(None, 0).await?;
    ensure!(after.services[0].grant.is_none());
    ensure!(after.services[0].revision > revision);
    ensure!(!after
        .nodes
        .iter()
        .any(|n| n.labels.contains_key(&placement)));

    // A device's report of a refused grant becomes an event.
    with_device
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            grant_refusals: vec![GrantRefusal {
                container: "0123456789ab".into(),
                service: Some("intruder".into()),
                reason: "the grant's signature does not verify with swarm plant's key".into(),
            }],
            ..Default::default()
        })
        .await?;
    let events = admin.events(0, 500, Some(WITH_DEVICE)).await?;
    let refusal = events
        .iter()
        .find(|e| e.action == "grant.refused")
        .context("a grant.refused event")?;
    ensure!(refusal.detail.contains("intruder") && refusal.detail.contains("signature"));

    // The grant key's private half is sealed: not in the server's log.
    let log = server.log_text();
    ensure!(!log.contains(&label), "a grant label in the server log");
    Ok(())
}
