//! Group commit, as a real server process over real HTTP (rerun on
//! PostgreSQL by scripts/test): hundreds of devices enrolling at once share
//! commits; the server killed mid-batch leaves each enrolment complete or
//! absent, never half; a device that was answered is in the database; and
//! the devices' retries complete the rest.

use anyhow::{ensure, Context, Result};
use fogswarm_client::identity::DeviceSigner;
use fogswarm_e2e::server::{db_query, device_key, enrol_request, Admit, ServerProcess};
use fogswarm_protocol::api::SwarmCreate;
use fogswarm_protocol::validate::AutoEnrol;
use fogswarm_server::db::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const DEVICES: usize = 600;
/// Answers the first server gets before it is killed.
const KILL_AFTER: usize = 40;

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Enrols every device at once; answers the ids that were answered 200.
/// `answered` counts them as they come.
fn enrol_all(
    server: &ServerProcess,
    keys: &[Arc<fogswarm_client::identity::FileKey>],
    answered: Arc<AtomicUsize>,
) -> impl std::future::Future<Output = Vec<String>> {
    let anonymous = server.anonymous();
    let key = server.provisioning_key();
    let tasks: Vec<_> = keys
        .iter()
        .map(|k| {
            let client = anonymous.with_device(k.clone());
            let request = enrol_request(k, Admit::Key(key.clone()), &[("arch", "x86_64")]);
            let answered = answered.clone();
            let id = k.device_id().to_string();
            tokio::spawn(async move {
                let ok = client.enrol(&request.ok()?).await.is_ok();
                if ok {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                ok.then_some(id)
            })
        })
        .collect::<Vec<_>>();
    async move {
        let mut ids = Vec::new();
        for t in tasks {
            if let Ok(Some(id)) = t.await {
                ids.push(id);
            }
        }
        ids
    }
}

/// What the database holds of the enrolments: each device's key, and
/// the enrolment events per device.
struct Stored {
    keys: BTreeMap<String, String>,
    enrol_events: BTreeMap<String, usize>,
    auto_enrol_events: BTreeMap<String, usize>,
}

fn stored(data: &std::path::Path) -> Result<Stored> {
    let keys = db_query(data, "SELECT id, public_key FROM devices")?
        .iter()
        .map(|r| (text(&r[0]), text(&r[1])))
        .collect();
    let mut enrol_events = BTreeMap::new();
    let mut auto_enrol_events = BTreeMap::new();
    for r in db_query(
        data,
        "SELECT subject, action FROM events WHERE action IN ('device.enrol', 'device.auto_enrol')",
    )? {
        let map = if text(&r[1]) == "device.enrol" {
            &mut enrol_events
        } else {
            &mut auto_enrol_events
        };
        *map.entry(text(&r[0])).or_default() += 1;
    }
    Ok(Stored {
        keys,
        enrol_events,
        auto_enrol_events,
    })
}

fn metric(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("{name} is not on /metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolments_killed_mid_batch_are_whole_or_absent_and_retries_complete_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[])?;
    server
        .admin()
        .create_swarm(&SwarmCreate {
            name: "burst".into(),
            auto_enrol: AutoEnrol::Worker,
        })
        .await?;
    let keys = (0..DEVICES)
        .map(|i| device_key(&format!("02:9c:00:00:{:02x}:{:02x}", i / 256, i % 256)))
        .collect::<Result<Vec<_>>>()?;
    let by_id: BTreeMap<String, String> = keys
        .iter()
        .map(|k| {
            (
                k.device_id().to_string(),
                k.public_key().as_str().to_string(),
            )
        })
        .collect();

    // Every device at once; SIGKILL once a few have been answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let first = {
        let enrolling = enrol_all(&server, &keys, answered.clone());
        tokio::pin!(enrolling);
        loop {
            tokio::select! {
                ids = &mut enrolling => break ids,
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                    if answered.load(Ordering::SeqCst) >= KILL_AFTER {
                        server.child.kill()?;
                    }
                }
            }
        }
    };
    server.child.wait()?;
    ensure!(
        first.len() >= KILL_AFTER && first.len() < DEVICES,
        "the kill was to come mid-way: {} of {DEVICES} answered",
        first.len()
    );

    // Each enrolment whole or absent; every answered one present.
    let s = stored(&data)?;
    for id in &first {
        ensure!(
            s.keys.get(id) == by_id.get(id),
            "device {id} was answered but its enrolment is not stored (or under another key)"
        );
    }
    for (id, key) in &s.keys {
        ensure!(
            by_id.get(id) == Some(key),
            "{id} is stored with a key it never sent"
        );
        ensure!(
            s.enrol_events.get(id) == Some(&1) && s.auto_enrol_events.get(id) == Some(&1),
            "{id} is stored without exactly one of each of its enrolment's events"
        );
    }
    for id in s.enrol_events.keys().chain(s.auto_enrol_events.keys()) {
        ensure!(
            s.keys.contains_key(id),
            "an enrolment event names {id}, which is not stored: half an enrolment"
        );
    }
    let half_way = s.keys.len();

    // The devices retry against the restarted server: all complete, none
    // twice.
    let server = ServerProcess::start(&data, &[])?;
    let again = enrol_all(&server, &keys, Arc::new(AtomicUsize::new(0))).await;
    ensure!(
        again.len() == DEVICES,
        "{} of {DEVICES} retries succeeded",
        again.len()
    );
    let s = stored(&data)?;
    ensure!(
        s.keys == by_id,
        "every device is stored under its own key after the retries"
    );
    ensure!(
        s.auto_enrol_events.values().all(|n| *n == 1) && s.auto_enrol_events.len() == DEVICES,
        "each device was admitted exactly once"
    );
    let enrolled_twice: BTreeSet<&String> = s
        .enrol_events
        .iter()
        .filter(|(_, n)| **n == 2)
        .map(|(id, _)| id)
        .collect();
    ensure!(
        enrolled_twice.len() == half_way,
        "the {half_way} devices stored before the kill enrolled again, the rest once ({} twice)",
        enrolled_twice.len()
    );

    eprintln!(
        "answered before the kill: {}, stored: {half_way}",
        first.len()
    );
    // Writes arriving together shared commits.
    let (status, metrics) = server.raw_get("/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let commits = metric(&metrics, "fogswarm_db_commits_total")?;
    let writes = metric(&metrics, "fogswarm_db_writes_total")?;
    eprintln!("{writes} writes in {commits} commits");
    ensure!(
        writes >= DEVICES as u64 && commits < writes,
        "{DEVICES} enrolments at once took {commits} commits for {writes} writes"
    );
    Ok(())
}
