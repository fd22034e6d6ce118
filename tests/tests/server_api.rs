//! The configuration server as a real process over real HTTP: every
//! endpoint's happy path, a table of bad inputs that must change nothing,
//! the leader lease under concurrency, restarts, secrets in logs, and TLS.

use anyhow::{ensure, Context, Result};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, ClientError, Endpoint};
use fogswarm_e2e::server::{
    db_fingerprint, device_key, enrol_request, signed_authorization, Admit, ServerProcess,
};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{AutoEnrol, Labels, Role};
use std::time::{Duration, Instant};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn device(id: &str, swarm: &str, role: Role, l: &[(&str, &str)]) -> DeviceCreate {
    DeviceCreate {
        id: id.into(),
        swarm: swarm.into(),
        role,
        labels: labels(l),
    }
}

fn tokens(cluster: &str) -> SwarmTokens {
    SwarmTokens {
        cluster_id: cluster.into(),
        manager_addrs: vec!["10.213.9.11:2377".into()],
        worker_token: Secret::new(format!("SWMTKN-1-{cluster}-workerworkerworker")),
        manager_token: Secret::new(format!("SWMTKN-1-{cluster}-managermanagermanager")),
        generation: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_happy_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    let http = fogswarm_e2e::http();

    let health: serde_json::Value = http
        .get(format!("{}/healthz", server.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok");

    // Swarms.
    let hall = admin
        .create_swarm(&SwarmCreate {
            name: "hall1".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    assert!(!hall.initialized);
    admin
        .create_swarm(&SwarmCreate {
            name: "yard".into(),
            auto_enrol: AutoEnrol::Worker,
        })
        .await?;
    assert_eq!(admin.list_swarms().await?.len(), 2);
    let updated = admin
        .update_swarm(
            "yard",
            &SwarmUpdate {
                auto_enrol: Some(AutoEnrol::Pending),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(updated.auto_enrol, AutoEnrol::Pending);
    assert_eq!(
        admin.get_swarm("yard").await?.auto_enrol,
        AutoEnrol::Pending
    );

    // Devices: one at a time, JSON import, CSV import.
    let leader = admin
        .create_device(&device(
            "02:FB:00:00:00:01",
            "hall1",
            Role::Leader,
            &[("location", "hall1")],
        ))
        .await?;
    assert_eq!(
        leader.id.as_str(),
        "02:fb:00:00:00:01",
        "MACs are normalised"
    );
    assert_eq!(leader.state, DeviceState::Declared);
    let imported = admin
        .import_devices(
            "application/json",
            serde_json::to_vec(&[device(
                "02:fb:00:00:00:02",
                "hall1",
                Role::Manager,
                &[("location", "hall1")],
            )])?,
        )
        .await?;
    assert_eq!(imported.created, 1);
    let csv = "id,swarm,role,labels\n02:fb:00:00:00:03,hall1,worker,location=hall1;temperature_sensor=1\n02-fb-00-00-00-04,hall1,,location=hall1\n";
    assert_eq!(
        admin
            .import_devices("text/csv", csv.as_bytes().to_vec())
            .await?
            .created,
        2
    );
    let all = admin.list_devices(Some("hall1")).await?;
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].role, Role::Worker, "CSV role defaults to worker");
    assert_eq!(
        all[2].labels,
        labels(&[("location", "hall1"), ("temperature_sensor", "1")])
    );
    let patched = admin
        .update_device(
            "02:fb:00:00:00:04",
            &DeviceUpdate {
                labels: Some(labels(&[("location", "hall2")])),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(patched.labels, labels(&[("location", "hall2")]));
    let relabelled = admin
        .change_labels(
            "02:fb:00:00:00:04",
            &LabelChange {
                set: labels(&[("zone", "b")]),
                unset: vec!["location".into()],
            },
        )
        .await?;
    assert_eq!(relabelled.labels, labels(&[("zone", "b")]));

    // Bootstrap: enrol, one init, waits, tokens, joins.
    let (leader_c, enrolled) = server
        .enrol("02:fb:00:00:00:01", &[("arch", "amd64"), ("cpus", "2")])
        .await?;
    assert_eq!(
        (enrolled.swarm.as_str(), enrolled.role, enrolled.pending),
        ("hall1", Role::Leader, false)
    );
    let (manager_c, _) = server.enrol("02:fb:00:00:00:02", &[]).await?;
    let (worker_c, _) = server
        .enrol("02:fb:00:00:00:03", &[("arch", "arm64")])
        .await?;
    assert!(matches!(
        worker_c.config().await?,
        ConfigAnswer::Wait { .. }
    ));
    assert_eq!(
        leader_c.config().await?,
        ConfigAnswer::Init {
            swarm: "hall1".into(),
            lease_secs: 60
        }
    );
    assert!(
        matches!(leader_c.config().await?, ConfigAnswer::Wait { .. }),
        "the lease is held: no second init"
    );
    assert_eq!(
        admin.get_swarm("hall1").await?.lease_holder.as_deref(),
        Some("02:fb:00:00:00:01")
    );
    leader_c.post_swarm_tokens(&tokens("c1")).await?;
    match worker_c.config().await? {
        ConfigAnswer::Join {
            role,
            managers,
            token,
            ..
        } => {
            assert_eq!(role, Role::Worker);
            assert_eq!(managers, ["10.213.9.11:2377"]);
            assert!(token.expose().contains("worker"));
        }
        other => panic!("worker should join, got {other:?}"),
    }
    match manager_c.config().await? {
        ConfigAnswer::Join { token, .. } => assert!(token.expose().contains("manager")),
        other => panic!("manager should join, got {other:?}"),
    }
    let swarm = admin.get_swarm("hall1").await?;
    assert!(swarm.initialized);
    assert_eq!(swarm.cluster_id.as_deref(), Some("c1"));
    assert_eq!(swarm.lease_holder, None);

    // Reports and the desired state, long-polled.
    worker_c
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            node_id: Some("node-w".into()),
            cluster_id: Some("c1".into()),
            engine_version: Some("20.10.24".into()),
            facts: Some(labels(&[("arch", "arm64"), ("cpus", "4")])),
            error: None,
            grant_refusals: vec![],
            manager: None,
            raft_leader: None,
            agent_version: None,
            quorum: None,
            agent_update: None,
            telemetry: None,
            heartbeat_secs: None,
        })
        .await?;
    let w = admin.get_device("02:fb:00:00:00:03").await?;
    assert_eq!(
        (w.state, w.node_id.as_deref(), w.engine_version.as_deref()),
        (DeviceState::Active, Some("node-w"), Some("20.10.24"))
    );
    let desired = manager_c.desired(None, 0).await?;
    let node = desired
        .nodes
        .iter()
        .find(|n| n.device_id.as_str() == "02:fb:00:00:00:03")
        .context("worker in desired")?;
    assert_eq!(
        node.labels,
        labels(&[
            ("fog.arch", "arm64"),
            ("fog.cpus", "4"),
            ("location", "hall1"),
            ("temperature_sensor", "1")
        ])
    );
    assert_eq!(node.availability, Availability::Active);
    let since = desired.revision;
    let poller = {
        let manager_c = manager_c.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let next = manager_c.desired(Some(since), 20).await;
            (next, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .change_labels(
            "02:fb:00:00:00:03",
            &LabelChange {
                set: labels(&[("zone", "a")]),
                unset: vec![],
            },
        )
        .await?;
    let (next, waited) = poller.await?;
    let next = next?;
    assert!(next.revision > since);
    assert!(
        waited < Duration::from_secs(5),
        "long poll woke after {waited:?}"
    );
    assert!(next
        .nodes
        .iter()
        .any(|n| n.labels.get("zone").map(String::as_str) == Some("a")));
    // A re-imaged device reports a new node id: the old one is stale.
    worker_c
        .report(&ReportRequest {
            node_id: Some("node-w2".into()),
            ..Default::default()
        })
        .await?;
    let desired = manager_c.desired(None, 0).await?;
    let node = desired
        .nodes
        .iter()
        .find(|n| n.device_id.as_str() == "02:fb:00:00:00:03")
        .context("worker")?;
    assert_eq!(node.stale_node_ids, ["node-w"]);

    // Auto-enrolment held pending, then approved.
    let (pending_c, pending) = {
        let key = device_key("02:fb:00:00:00:99")?;
        let mut request = enrol_request(&key, Admit::Key(server.provisioning_key()), &[])?;
        request.swarm = Some("yard".into());
        let client = server.anonymous().with_device(key);
        let response = client.enrol(&request).await?;
        (client, response)
    };
    assert!(pending.pending);
    assert_eq!(pending.role, Role::Worker);
    assert!(
        matches!(pending_c.config().await?, ConfigAnswer::Wait { ref reason, .. } if reason.contains("approve"))
    );
    assert_eq!(
        admin.approve_device("02:fb:00:00:00:99").await?.state,
        DeviceState::Enrolled
    );

    // Provisioning key rotation: old refused, new accepted, file updated.
    let old_key = server.provisioning_key();
    let rotated = admin.rotate_provisioning_key().await?;
    assert_ne!(rotated.provisioning_key, old_key);
    assert_eq!(server.provisioning_key(), rotated.provisioning_key);
    let refused = server
        .enrol_with(&device_key("02:fb:00:00:00:04")?, Admit::Key(old_key), &[])
        .await;
    assert_eq!(
        refused
            .err()
            .and_then(|e| e.downcast::<fogswarm_client::ClientError>().ok())
            .and_then(|e| e.status()),
        Some(401)
    );
    server.enrol("02:fb:00:00:00:04", &[]).await?;

    // Status, events, metrics, OpenAPI.
    let status = admin.status().await?;
    assert_eq!(status.devices, 5);
    let hall1 = status
        .swarms
        .iter()
        .find(|s| s.name == "hall1")
        .context("hall1")?;
    assert_eq!(hall1.by_state.get("active"), Some(&1));
    let events = admin.events(0, 1000, None).await?;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for expected in [
        "swarm.create",
        "device.create",
        "device.import",
        "device.enrol",
        "swarm.lease",
        "swarm.initialized",
        "device.label",
        "device.approve",
        "provisioning_key.rotate",
    ] {
        assert!(
            actions.contains(&expected),
            "no {expected} event in {actions:?}"
        );
    }
    assert!(admin
        .events(0, 100, Some("02:fb:00:00:00:03"))
        .await?
        .iter()
        .all(|e| e.subject == "02:fb:00:00:00:03"));
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("fogswarm_lease_grants_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fogswarm_devices{state=\"active\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fogswarm_enrolments_total{result=\"accepted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/config\",status=\"200\""),
        "{metrics}"
    );
    let openapi: serde_json::Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await?
        .json()
        .await?;
    for path in [
        "/v1/enrol",
        "/v1/config",
        "/v1/report",
        "/v1/device/swarm",
        "/v1/desired",
        "/v1/swarms/{name}",
        "/v1/devices/import",
        "/v1/events",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    assert!(openapi["components"]["schemas"]
        .get("ConfigAnswer")
        .is_some());

    // Decommission: told to leave, removed once it has.
    let leaving = admin
        .remove_device("02:fb:00:00:00:03", false)
        .await?
        .context("leaving view")?;
    assert_eq!(leaving.state, DeviceState::Leaving);
    assert_eq!(
        worker_c.config().await?,
        ConfigAnswer::Leave {
            swarm: "hall1".into()
        }
    );
    worker_c
        .report(&ReportRequest {
            state: Some(DeviceState::Left),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        admin
            .get_device("02:fb:00:00:00:03")
            .await
            .err()
            .and_then(|e| e.status()),
        Some(404)
    );
    assert_eq!(admin.remove_device("02:fb:00:00:00:99", true).await?, None);

    // Swarm removal: refused with devices, forced removes them.
    assert_eq!(
        admin
            .remove_swarm("hall1", false)
            .await
            .err()
            .and_then(|e| e.status()),
        Some(409)
    );
    admin.remove_swarm("hall1", true).await?;
    admin.remove_swarm("yard", false).await?;
    assert!(admin.list_swarms().await?.is_empty());
    assert!(admin.list_devices(None).await?.is_empty());
    Ok(())
}

/// Who sends a bad request.
#[derive(Clone, Copy)]
enum Auth {
    None,
    Admin,
    WrongAdmin,
    Leader,
    Manager,
    Worker,
    BogusDevice,
    /// A new device: the body gets the public key of a key made for the
    /// body's device id, and the request is signed with it.
    Enrolling,
}

struct Bad {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Auth,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    /// Expected in the message (or the field).
    mentions: &'static str,
}

// Row constructors: one argument per column of the table below.
#[allow(clippy::too_many_arguments)]
fn bad(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Auth,
    body: serde_json::Value,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Bad {
    Bad {
        what,
        method,
        path,
        auth,
        content_type: "application/json",
        body: if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
        status,
        code,
        mentions,
    }
}

#[allow(clippy::too_many_arguments)]
fn raw(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Auth,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Bad {
    Bad {
        what,
        method,
        path,
        auth,
        content_type,
        body,
        status,
        code,
        mentions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_change_nothing() -> Result<()> {
    use serde_json::json;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[])?;
    let admin = server.admin();
    admin
        .create_swarm(&SwarmCreate {
            name: "s1".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    admin
        .create_swarm(&SwarmCreate {
            name: "s2".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    admin
        .create_device(&device("02:fb:00:00:01:01", "s1", Role::Leader, &[]))
        .await?;
    admin
        .create_device(&device("02:fb:00:00:01:02", "s1", Role::Manager, &[]))
        .await?;
    admin
        .create_device(&device("02:fb:00:00:01:03", "s1", Role::Worker, &[]))
        .await?;
    admin
        .create_device(&device("02:fb:00:00:02:01", "s2", Role::Worker, &[]))
        .await?;
    let [leader, manager, worker, bogus] = [
        "02:fb:00:00:01:01",
        "02:fb:00:00:01:02",
        "02:fb:00:00:01:03",
        "02:fb:00:00:01:01",
    ]
    .map(device_key);
    let (leader, manager, worker, bogus) = (leader?, manager?, worker?, bogus?);
    for key in [&leader, &manager, &worker] {
        server
            .enrol_with(key, Admit::Key(server.provisioning_key()), &[])
            .await?;
    }
    let key = server.provisioning_key();

    let long = "x".repeat(300);
    let many_labels: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let good_tokens = json!({"cluster_id": "c1", "manager_addrs": ["10.0.0.1:2377"], "worker_token": "SWMTKN-1-a-w", "manager_token": "SWMTKN-1-a-m"});
    let cases = vec![
        bad(
            "no token",
            "POST",
            "/v1/swarms",
            Auth::None,
            json!({"name": "x"}),
            401,
            "unauthorized",
            "admin token",
        ),
        bad(
            "wrong admin token",
            "POST",
            "/v1/swarms",
            Auth::WrongAdmin,
            json!({"name": "x"}),
            401,
            "unauthorized",
            "not valid",
        ),
        bad(
            "device signature on operator API",
            "GET",
            "/v1/swarms",
            Auth::Worker,
            json!(null),
            401,
            "unauthorized",
            "admin token",
        ),
        bad(
            "swarm name with a space",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "Bad Name"}),
            422,
            "invalid",
            "swarm",
        ),
        bad(
            "empty swarm name",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": ""}),
            422,
            "invalid",
            "empty",
        ),
        bad(
            "swarm name too long",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "a".repeat(64)}),
            422,
            "invalid",
            "at most 63",
        ),
        bad(
            "swarm name starting with -",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "-x"}),
            422,
            "invalid",
            "start with",
        ),
        bad(
            "duplicate swarm",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "s1"}),
            409,
            "conflict",
            "already exists",
        ),
        bad(
            "unknown auto_enrol",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "x", "auto_enrol": "sometimes"}),
            422,
            "invalid",
            "sometimes",
        ),
        bad(
            "misspelt field",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            json!({"name": "x", "auto_enroll": "worker"}),
            422,
            "invalid",
            "auto_enroll",
        ),
        raw(
            "body not JSON",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            "application/json",
            "{name:".into(),
            400,
            "bad_json",
            "not valid JSON",
        ),
        raw(
            "wrong content type",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            "text/plain",
            "{\"name\":\"x\"}".into(),
            415,
            "unsupported",
            "application/json",
        ),
        raw(
            "oversized body",
            "POST",
            "/v1/swarms",
            Auth::Admin,
            "application/json",
            format!("{{\"name\":\"{}\"}}", "x".repeat(100_000)),
            413,
            "too_large",
            "too large",
        ),
        bad(
            "device id with a space",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "bad id", "swarm": "s1"}),
            422,
            "invalid",
            "' ' at position 3",
        ),
        bad(
            "device id too long",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d".repeat(65), "swarm": "s1"}),
            422,
            "invalid",
            "at most 64",
        ),
        bad(
            "device in unknown swarm",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d1", "swarm": "nope"}),
            404,
            "not_found",
            "swarm nope",
        ),
        bad(
            "duplicate device in another spelling",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "02-FB-00-00-01-03", "swarm": "s1"}),
            409,
            "conflict",
            "already exists",
        ),
        bad(
            "second leader",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d2", "swarm": "s1", "role": "leader"}),
            409,
            "conflict",
            "already has a leader",
        ),
        bad(
            "unknown role",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d3", "swarm": "s1", "role": "boss"}),
            422,
            "invalid",
            "boss",
        ),
        bad(
            "fact label set by operator",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d4", "swarm": "s1", "labels": {"fog.arch": "x"}}),
            422,
            "invalid",
            "fog.arch",
        ),
        bad(
            "label key with double dot",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d5", "swarm": "s1", "labels": {"a..b": "x"}}),
            422,
            "invalid",
            "consecutive",
        ),
        bad(
            "label key in Docker's namespace",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d6", "swarm": "s1", "labels": {"com.docker.x": "1"}}),
            422,
            "invalid",
            "reserved",
        ),
        bad(
            "label value too long",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d7", "swarm": "s1", "labels": {"k": long}}),
            422,
            "invalid",
            "at most 256",
        ),
        bad(
            "label value with a newline",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d8", "swarm": "s1", "labels": {"k": "a\nb"}}),
            422,
            "invalid",
            "control",
        ),
        bad(
            "too many labels",
            "POST",
            "/v1/devices",
            Auth::Admin,
            json!({"id": "d9", "swarm": "s1", "labels": many_labels}),
            422,
            "invalid",
            "at most 64",
        ),
        bad(
            "worker promoted to second leader",
            "PATCH",
            "/v1/devices/02:fb:00:00:01:03",
            Auth::Admin,
            json!({"role": "leader"}),
            409,
            "conflict",
            "already has a leader",
        ),
        bad(
            "device moved to unknown swarm",
            "PATCH",
            "/v1/devices/02:fb:00:00:01:03",
            Auth::Admin,
            json!({"swarm": "nope"}),
            404,
            "not_found",
            "nope",
        ),
        bad(
            "update of unknown device",
            "PATCH",
            "/v1/devices/02:fb:00:00:09:09",
            Auth::Admin,
            json!({"role": "worker"}),
            404,
            "not_found",
            "does not exist",
        ),
        bad(
            "unset of a fact label",
            "POST",
            "/v1/devices/02:fb:00:00:01:03/labels",
            Auth::Admin,
            json!({"unset": ["fog.arch"]}),
            422,
            "invalid",
            "fog.arch",
        ),
        bad(
            "approve a device that is not pending",
            "POST",
            "/v1/devices/02:fb:00:00:01:03/approve",
            Auth::Admin,
            json!(null),
            409,
            "conflict",
            "not pending",
        ),
        bad(
            "show with a bad id",
            "GET",
            "/v1/devices/bad%20id",
            Auth::Admin,
            json!(null),
            422,
            "invalid",
            "position",
        ),
        bad(
            "remove a swarm with devices",
            "DELETE",
            "/v1/swarms/s1",
            Auth::Admin,
            json!(null),
            409,
            "conflict",
            "still has 3 devices",
        ),
        bad(
            "import with a bad second row",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            json!([{"id": "i1", "swarm": "s1"}, {"id": "bad id", "swarm": "s1"}]),
            422,
            "invalid",
            "row 2",
        ),
        raw(
            "CSV import with a duplicate in row 3",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            "text/csv",
            "id,swarm\ni2,s1\ni3,s1\ni2,s1\n".into(),
            409,
            "conflict",
            "row 3",
        ),
        raw(
            "CSV import without an id column",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            "text/csv",
            "mac,swarm\ni4,s1\n".into(),
            422,
            "invalid",
            "id and swarm",
        ),
        raw(
            "CSV import with a bad label",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            "text/csv",
            "id,swarm,role,labels\ni5,s1,worker,fog.x=1\n".into(),
            422,
            "invalid",
            "row 1",
        ),
        bad(
            "empty import",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            json!([]),
            422,
            "invalid",
            "no rows",
        ),
        raw(
            "import as XML",
            "POST",
            "/v1/devices/import",
            Auth::Admin,
            "application/xml",
            "<devices/>".into(),
            415,
            "unsupported",
            "text/csv",
        ),
        bad(
            "enrol with a wrong provisioning key",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:01:03", "provisioning_key": "fsp_wrong"}),
            401,
            "unauthorized",
            "provisioning key",
        ),
        bad(
            "enrol without a signature",
            "POST",
            "/v1/enrol",
            Auth::None,
            json!({"device_id": "02:fb:00:00:07:09", "provisioning_key": key.expose(), "public_key": "p256:BAAA"}),
            422,
            "invalid",
            "public key",
        ),
        bad(
            "enrol signed but without a key in the body",
            "POST",
            "/v1/enrol",
            Auth::Worker,
            json!({"device_id": "02:fb:00:00:01:03", "provisioning_key": key.expose()}),
            422,
            "invalid",
            "public_key",
        ),
        bad(
            "enrol with both a provisioning key and a token",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:07:10", "provisioning_key": key.expose(), "token": "fset_x"}),
            422,
            "invalid",
            "exactly one",
        ),
        bad(
            "enrol with neither",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:07:11"}),
            422,
            "invalid",
            "exactly one",
        ),
        bad(
            "enrol with a token that does not exist",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:07:12", "token": "fset_not-a-token"}),
            401,
            "unauthorized",
            "token",
        ),
        bad(
            "enrol of an unknown device",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:07:07", "provisioning_key": key.expose()}),
            403,
            "forbidden",
            "not declared",
        ),
        bad(
            "enrol into a swarm without auto-enrolment",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:07:08", "provisioning_key": key.expose(), "swarm": "s2"}),
            403,
            "forbidden",
            "does not auto-enrol",
        ),
        bad(
            "enrol with a bad device id",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "bad id", "provisioning_key": key.expose()}),
            422,
            "invalid",
            "position",
        ),
        bad(
            "enrol with a bad fact key",
            "POST",
            "/v1/enrol",
            Auth::Enrolling,
            json!({"device_id": "02:fb:00:00:01:03", "provisioning_key": key.expose(), "facts": {"a b": "1"}}),
            422,
            "invalid",
            "facts.a b",
        ),
        bad(
            "config without a signature",
            "GET",
            "/v1/config",
            Auth::None,
            json!(null),
            401,
            "unauthorized",
            "signed with the device's key",
        ),
        bad(
            "config signed with a key never enrolled",
            "GET",
            "/v1/config",
            Auth::BogusDevice,
            json!(null),
            401,
            "unauthorized",
            "not signed by a key enrolled",
        ),
        bad(
            "worker posts join tokens",
            "POST",
            "/v1/device/swarm",
            Auth::Worker,
            good_tokens.clone(),
            403,
            "forbidden",
            "only its managers",
        ),
        bad(
            "manager posts tokens without the lease",
            "POST",
            "/v1/device/swarm",
            Auth::Manager,
            good_tokens.clone(),
            409,
            "conflict",
            "does not hold its leader lease",
        ),
        bad(
            "tokens that are not join tokens",
            "POST",
            "/v1/device/swarm",
            Auth::Leader,
            json!({"cluster_id": "c", "manager_addrs": ["10.0.0.1:2377"], "worker_token": "x", "manager_token": "y"}),
            422,
            "invalid",
            "worker_token",
        ),
        bad(
            "tokens with a bad manager address",
            "POST",
            "/v1/device/swarm",
            Auth::Leader,
            json!({"cluster_id": "c", "manager_addrs": ["nowhere"], "worker_token": "SWMTKN-1-a", "manager_token": "SWMTKN-1-b"}),
            422,
            "invalid",
            "manager_addrs",
        ),
        bad(
            "worker reads the desired state",
            "GET",
            "/v1/desired",
            Auth::Worker,
            json!(null),
            403,
            "forbidden",
            "only managers",
        ),
        bad(
            "report of a server-only state",
            "POST",
            "/v1/report",
            Auth::Worker,
            json!({"state": "declared"}),
            422,
            "invalid",
            "server's to set",
        ),
        bad(
            "report with an absurd node id",
            "POST",
            "/v1/report",
            Auth::Worker,
            json!({"node_id": "n".repeat(200)}),
            422,
            "invalid",
            "node_id",
        ),
        bad(
            "report of an unknown state",
            "POST",
            "/v1/report",
            Auth::Worker,
            json!({"state": "dancing"}),
            422,
            "invalid",
            "dancing",
        ),
        bad(
            "unknown endpoint",
            "GET",
            "/v1/nothing",
            Auth::Admin,
            json!(null),
            404,
            "not_found",
            "no such endpoint",
        ),
        bad(
            "wrong method",
            "PUT",
            "/v1/status",
            Auth::Admin,
            json!(null),
            405,
            "method_not_allowed",
            "method",
        ),
        bad(
            "non-numeric event limit",
            "GET",
            "/v1/events?limit=abc",
            Auth::Admin,
            json!(null),
            400,
            "bad_query",
            "limit",
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let http = fogswarm_e2e::http();
    let before = db_fingerprint(&data)?;
    let events_before = admin.events(0, 1000, None).await?.len();
    for case in &cases {
        let mut body = case.body.clone();
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        let signed = |key: &FileKey, body: &str| {
            Some(signed_authorization(
                key,
                case.method,
                case.path,
                body.as_bytes(),
            ))
        };
        let authorization = match case.auth {
            Auth::Enrolling => {
                let mut json: serde_json::Value = serde_json::from_str(&body)?;
                // An id the header can carry even when the body's is bad.
                let id = json["device_id"].as_str().unwrap_or("x").replace(' ', "");
                let key = device_key(&id)?;
                json["public_key"] = key.public_key().as_str().into();
                body = json.to_string();
                signed(&key, &body)
            }
            _ => None,
        };
        let authorization = authorization.or(match case.auth {
            Auth::None | Auth::Enrolling => None,
            Auth::Admin => bearer(server.admin_token().expose()),
            Auth::WrongAdmin => bearer("fsa_not-the-token"),
            Auth::Leader => signed(&leader, &body),
            Auth::Manager => signed(&manager, &body),
            Auth::Worker => signed(&worker, &body),
            // The leader's id, signed with a key it never enrolled.
            Auth::BogusDevice => signed(&bogus, &body),
        });
        let mut request =
            http.request(case.method.parse()?, format!("{}{}", server.url, case.path));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        if !body.is_empty() {
            request = request
                .header("content-type", case.content_type)
                .body(body.clone());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        assert_eq!(status, case.status, "{}: status; body {text}", case.what);
        let body: ApiError = serde_json::from_str(&text)
            .with_context(|| format!("{}: body is not an API error: {text}", case.what))?;
        assert_eq!(body.error, case.code, "{}: {text}", case.what);
        let said = format!("{} {}", body.message, body.field.unwrap_or_default());
        assert!(
            said.contains(case.mentions),
            "{}: expected {:?} in {said:?}",
            case.what,
            case.mentions
        );
        assert_eq!(
            db_fingerprint(&data)?,
            before,
            "{}: the database changed",
            case.what
        );
    }
    assert_eq!(
        admin.events(0, 1000, None).await?.len(),
        events_before,
        "refused requests logged events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_init_under_concurrency() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    admin
        .create_swarm(&SwarmCreate {
            name: "rush".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    let mut rows = vec![device("leader-0", "rush", Role::Leader, &[])];
    rows.extend((1..5).map(|i| DeviceCreate {
        id: format!("manager-{i}"),
        swarm: "rush".into(),
        role: Role::Manager,
        labels: Labels::new(),
    }));
    rows.extend((5..100).map(|i| DeviceCreate {
        id: format!("worker-{i}"),
        swarm: "rush".into(),
        role: Role::Worker,
        labels: Labels::new(),
    }));
    admin
        .import_devices("application/json", serde_json::to_vec(&rows)?)
        .await?;
    let mut clients = Vec::new();
    for row in &rows {
        clients.push((row.id.clone(), server.enrol(&row.id, &[]).await?.0));
    }
    // 100 devices at once, the leader with 20 extra concurrent requests.
    let mut requests: Vec<(String, Client)> = clients.clone();
    for _ in 0..20 {
        requests.push(clients[0].clone());
    }
    let answers = futures_util::future::join_all(
        requests
            .into_iter()
            .map(|(id, c)| async move { (id, c.config().await) }),
    )
    .await;
    let mut inits = Vec::new();
    for (id, answer) in answers {
        match answer? {
            ConfigAnswer::Init { .. } => inits.push(id),
            ConfigAnswer::Wait { .. } => {}
            other => panic!("{id}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        inits,
        ["leader-0"],
        "exactly one init, to the declared leader"
    );

    // Without a declared leader, managers race: still exactly one.
    admin
        .create_swarm(&SwarmCreate {
            name: "noleader".into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    let managers: Vec<DeviceCreate> = (0..10)
        .map(|i| DeviceCreate {
            id: format!("m-{i}"),
            swarm: "noleader".into(),
            role: Role::Manager,
            labels: Labels::new(),
        })
        .collect();
    admin
        .import_devices("application/json", serde_json::to_vec(&managers)?)
        .await?;
    let mut clients = Vec::new();
    for m in &managers {
        clients.push(server.enrol(&m.id, &[]).await?.0);
    }
    let answers = futures_util::future::join_all(clients.iter().map(|c| c.config())).await;
    let inits = answers
        .into_iter()
        .filter(|a| matches!(a, Ok(ConfigAnswer::Init { .. })))
        .count();
    assert_eq!(inits, 1);
    let metrics = fogswarm_e2e::http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("fogswarm_lease_grants_total 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_fleet_credentials_and_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--tls-self-signed"])?;
    let fingerprint = server.fingerprint.clone().context("fingerprint")?;
    let admin_token = server.admin_token();
    let admin = server.admin();
    admin
        .create_swarm(&SwarmCreate {
            name: "keep".into(),
            auto_enrol: AutoEnrol::Pending,
        })
        .await?;
    admin
        .create_device(&device(
            "02:fb:00:00:03:01",
            "keep",
            Role::Leader,
            &[("room", "a")],
        ))
        .await?;
    admin
        .create_device(&device("02:fb:00:00:03:02", "keep", Role::Worker, &[]))
        .await?;
    let (leader, _) = server
        .enrol("02:fb:00:00:03:01", &[("arch", "amd64")])
        .await?;
    let (worker, _) = server.enrol("02:fb:00:00:03:02", &[]).await?;
    assert!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    leader.post_swarm_tokens(&tokens("ckeep")).await?;
    let devices_before = admin.list_devices(None).await?;
    let url = server.url.clone();
    server.stop()?;

    let listen = url.trim_start_matches("https://").to_string();
    let again = ServerProcess::start_on(&data, &listen, &["--tls-self-signed"])?;
    assert_eq!(
        again.fingerprint.as_deref(),
        Some(fingerprint.as_str()),
        "the CA survives restarts"
    );
    assert_eq!(again.admin_token(), admin_token);
    let admin = again.admin();
    assert_eq!(admin.list_devices(None).await?, devices_before);
    let swarm = admin.get_swarm("keep").await?;
    assert!(swarm.initialized);
    assert_eq!(swarm.auto_enrol, AutoEnrol::Pending);
    // The worker's key from before the restart still works (same
    // address, same CA).
    assert!(matches!(worker.config().await?, ConfigAnswer::Join { .. }));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_events_metrics_or_openapi() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--log-level", "trace", "--tls-self-signed"])?;
    let admin = server.admin();
    let mut secrets = vec![
        server.admin_token().expose().to_string(),
        server.provisioning_key().expose().to_string(),
    ];
    admin
        .create_swarm(&SwarmCreate {
            name: "quiet".into(),
            auto_enrol: AutoEnrol::Worker,
        })
        .await?;
    admin
        .create_device(&device("02:fb:00:00:04:01", "quiet", Role::Leader, &[]))
        .await?;
    let (leader, l) = server
        .enrol("02:fb:00:00:04:01", &[("arch", "amd64")])
        .await?;
    let (worker, _) = server.enrol("02:fb:00:00:04:02", &[]).await?;
    let _ = l;
    assert!(matches!(leader.config().await?, ConfigAnswer::Init { .. }));
    let t = tokens("cquiet");
    secrets.push(t.worker_token.expose().to_string());
    secrets.push(t.manager_token.expose().to_string());
    leader.post_swarm_tokens(&t).await?;
    assert!(matches!(worker.config().await?, ConfigAnswer::Join { .. }));
    leader
        .report(&ReportRequest {
            state: Some(DeviceState::Active),
            node_id: Some("n1".into()),
            ..Default::default()
        })
        .await?;
    leader.desired(None, 0).await?;
    // Failures that carry secrets in their requests.
    let wrong = server
        .enrol_with(
            &device_key("02:fb:00:00:04:03")?,
            Admit::Key(Secret::new("fsp_guess-that-is-secret")),
            &[],
        )
        .await;
    assert!(wrong.is_err());
    secrets.push("fsp_guess-that-is-secret".into());
    let rotated = admin.rotate_provisioning_key().await?;
    secrets.push(rotated.provisioning_key.expose().to_string());

    let log = server.log_text();
    assert!(
        log.contains("request"),
        "debug request logging should be on: {log}"
    );
    let events = serde_json::to_string(&admin.events(0, 1000, None).await?)?;
    let status = serde_json::to_string(&admin.status().await?)?;
    let swarms = serde_json::to_string(&admin.list_swarms().await?)?;
    let devices = serde_json::to_string(&admin.list_devices(None).await?)?;
    fogswarm_client::ensure_crypto_provider();
    let plain = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build();
    let (metrics, openapi) = match plain {
        Ok(c) => (
            c.get(format!("{}/metrics", server.url))
                .send()
                .await?
                .text()
                .await?,
            c.get(format!("{}/openapi.json", server.url))
                .send()
                .await?
                .text()
                .await?,
        ),
        Err(_) => (String::new(), String::new()),
    };
    ensure!(
        !metrics.is_empty() && !openapi.is_empty(),
        "metrics and openapi fetched"
    );
    for secret in &secrets {
        for (place, text) in [
            ("log", &log),
            ("events", &events),
            ("status", &status),
            ("swarms", &swarms),
            ("devices", &devices),
            ("metrics", &metrics),
            ("openapi", &openapi),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret appears in the {place}"
            );
        }
        // Nor any long part of it.
        assert!(
            !log.contains(&secret[secret.len().saturating_sub(24)..]),
            "a secret's tail appears in the log"
        );
    }
    let db_files: Vec<_> = std::fs::read_dir(&data)?
        .flatten()
        .map(|e| {
            (
                e.file_name(),
                e.metadata()
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777),
            )
        })
        .collect();
    for (name, mode) in db_files {
        let mode = mode?;
        if name.to_string_lossy().starts_with("fleet.db")
            || name.to_string_lossy().ends_with(".key")
            || name.to_string_lossy().ends_with(".token")
        {
            assert_eq!(mode, 0o600, "{name:?} is {mode:o}");
        }
    }
    let dir_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data)?.permissions()) & 0o777;
    assert_eq!(dir_mode, 0o700);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pinning_accepts_the_printed_fingerprint_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--tls-self-signed", "--tls-san", "fog.example"],
    )?;
    let fingerprint = server.fingerprint.clone().context("fingerprint printed")?;
    assert!(server.url.starts_with("https://"));
    let good = Client::new(
        &Endpoint::new(&server.url, Some(&fingerprint.to_uppercase()))?,
        Some(server.admin_token()),
    )?;
    assert!(good.list_swarms().await?.is_empty());
    let other = "0".repeat(64);
    let bad = Client::new(
        &Endpoint::new(&server.url, Some(&other))?,
        Some(server.admin_token()),
    )?;
    match bad.list_swarms().await {
        Err(ClientError::Unreachable { reason, .. }) => {
            assert!(reason.contains("pinned CA fingerprint"), "{reason}")
        }
        other => panic!("a wrong pin must be refused, got {other:?}"),
    }
    // Plain HTTP to the TLS port gets nowhere.
    let plain = Client::new(
        &Endpoint::new(&server.url.replace("https://", "http://"), None)?,
        Some(server.admin_token()),
    )?;
    assert!(plain.list_swarms().await.is_err());
    // The fingerprint is the CA's, as kept in the data dir.
    let ca_pem = std::fs::read_to_string(server.data.join("tls/ca.pem"))?;
    let der: Vec<u8> = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())?.to_vec()
    };
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&der)), fingerprint);
    Ok(())
}
