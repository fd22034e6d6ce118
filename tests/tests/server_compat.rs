//! Upgrades from every earlier schema version (rerun on PostgreSQL by
//! scripts/test). Each fixture under tests/fixtures/schema was written by
//! the server of its time (`tests/fixtures/schema/generate` built it from
//! the last commit at that version and gave it a small fleet through its
//! API); here its rows are loaded into a database at that version and this
//! server migrates it and serves the fleet: the old admin token works,
//! devices keep their labels, services and secrets are there, and a
//! device enrolling as the swarm's leader gets the secret's value, sealed
//! by the old server.

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use fogswarm_client::Client;
use fogswarm_e2e::server::{device_key, on_postgres, secret_value, Admit, ServerProcess};
use fogswarm_protocol::api::{ConfigAnswer, Secret};
use fogswarm_server::db::{Database, PostgresOptions, Value};
use fogswarm_server::store::{StoreError, MIGRATIONS};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(serde::Deserialize, Clone)]
struct Fixture {
    schema_version: usize,
    commit: String,
    made: Vec<String>,
    admin_token: String,
    provisioning_key: String,
    secrets_key: Option<String>,
    tables: std::collections::BTreeMap<String, Table>,
}

#[derive(serde::Deserialize, Clone)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<serde_json::Value>>,
}

fn fixtures() -> Result<Vec<Fixture>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schema");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            all.push(
                serde_json::from_str::<Fixture>(&text)
                    .with_context(|| format!("{}", path.display()))?,
            );
        }
    }
    all.sort_by_key(|f| f.schema_version);
    Ok(all)
}

fn value(v: &serde_json::Value) -> Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => Value::Int(n.as_i64().context("a non-integer number")?),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => bail!("a fixture value of an unexpected kind: {other}"),
    })
}

/// A database at the fixture's schema version (this build's migrations up
/// to it: they are only ever appended), holding the fixture's rows.
fn load(fixture: &Fixture, sqlite: &Path, postgres: Option<&str>) -> Result<()> {
    let steps = &MIGRATIONS[..fixture.schema_version];
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            let db = match postgres {
                Some(url) => Database::open_postgres(url, &PostgresOptions::default(), steps)?,
                None => Database::open_sqlite(sqlite, steps)?,
            };
            db.write(|tx| -> Result<(), StoreError> {
                // Referenced tables first.
                let first = ["swarms", "users", "devices", "services", "log_requests"];
                let mut tables: Vec<_> = fixture.tables.iter().collect();
                tables.sort_by_key(|(name, _)| {
                    first
                        .iter()
                        .position(|f| f == name)
                        .unwrap_or(first.len())
                });
                for (name, table) in tables {
                    let columns = table.columns.join(", ");
                    let slots = (1..=table.columns.len())
                        .map(|i| format!("${i}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = format!("INSERT INTO {name} ({columns}) VALUES ({slots})");
                    for row in &table.rows {
                        let values = row
                            .iter()
                            .map(value)
                            .collect::<Result<Vec<_>>>()
                            .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
                        tx.execute(&sql, &values)?;
                    }
                }
                if postgres.is_some() {
                    // Rows came with their ids: new ones follow them.
                    tx.query(
                        "SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT COALESCE(MAX(id), 1) FROM events))",
                        &[],
                    )?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("loading the fixture panicked"))?
    })
}

const LEADER: &str = "02:c0:00:00:00:01";
const WORKER: &str = "02:c0:00:00:00:02";
/// A minute of telemetry history in the fixtures (within the default
/// day's retention of any run: it is placed relative to now).
static OLD_MINUTE: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    let now = fogswarm_protocol::time::unix_now();
    now - now % 60 - 3 * 3600
});

/// The fixture with what the generator's API calls could not make (they
/// need enrolled agents): two minutes of the worker's telemetry history
/// and a rollout in its second wave, as rows of the tables of the time,
/// where its schema has them.
fn with_history(fixture: &Fixture) -> Result<Fixture> {
    let mut tables = fixture.tables.clone();
    let mut add = |name: &str, fields: &[(&str, serde_json::Value)]| -> Result<()> {
        let Some(table) = tables.get_mut(name) else {
            return Ok(());
        };
        let row = table
            .columns
            .iter()
            .map(|c| {
                fields
                    .iter()
                    .find(|(f, _)| f == c)
                    .map(|(_, v)| v.clone())
                    .with_context(|| format!("{name}.{c}: no value for the column"))
            })
            .collect::<Result<Vec<_>>>()?;
        table.rows.push(row);
        Ok(())
    };
    let minute = *OLD_MINUTE;
    for (at, cpu, temperature) in [
        (minute, serde_json::json!(125), serde_json::json!(485)),
        (
            minute + 60,
            serde_json::Value::Null,
            serde_json::Value::Null,
        ),
    ] {
        add(
            "telemetry_history",
            &[
                ("device", WORKER.into()),
                ("minute", at.into()),
                ("cpu_tenths", cpu),
                ("load1_hundredths", serde_json::Value::Null),
                ("memory_used_mb", 300.into()),
                ("disk_free_mb", serde_json::Value::Null),
                ("temperature_tenths", temperature),
            ],
        )?;
    }
    let plan = serde_json::json!([
        [{"device": WORKER, "state": "done", "detail": ""}],
        [{"device": LEADER, "state": "updating", "detail": ""}],
    ]);
    add(
        "agent_rollouts",
        &[
            ("swarm", "plant".into()),
            ("rollout", 1.into()),
            ("image", "registry.example:5000/agent@sha256:00".into()),
            ("state", "running".into()),
            ("wave", 1.into()),
            ("waves", plan.to_string().into()),
            ("deadline_secs", 3600.into()),
            ("started_at", minute.into()),
            (
                "wave_started_at",
                fogswarm_protocol::time::unix_now().into(),
            ),
        ],
    )?;
    Ok(Fixture {
        tables,
        ..fixture.clone()
    })
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, format!("{text}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_earlier_schema_migrates_and_serves() -> Result<()> {
    let fixtures = fixtures()?;
    let versions: Vec<usize> = fixtures.iter().map(|f| f.schema_version).collect();
    ensure!(
        versions == (3..MIGRATIONS.len()).collect::<Vec<_>>(),
        "a fixture for every earlier schema version from 3 (the first released), found {versions:?}; run tests/fixtures/schema/generate"
    );
    for fixture in &fixtures {
        let v = fixture.schema_version;
        let checked = check(fixture).await;
        checked.map_err(|e| anyhow::anyhow!("schema {v} (commit {}): {e:?}", fixture.commit))?;
    }
    Ok(())
}

async fn check(fixture: &Fixture) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    write_secret(&data.join("admin.token"), &fixture.admin_token)?;
    write_secret(&data.join("provisioning.key"), &fixture.provisioning_key)?;
    if let Some(key) = &fixture.secrets_key {
        write_secret(&data.join("secrets.key"), key)?;
    }
    let url = if on_postgres() {
        Some(fogswarm_e2e::postgres::shared().create_database()?)
    } else {
        None
    };
    let fixture = &with_history(fixture)?;
    load(fixture, &data.join("fleet.db"), url.as_deref())?;
    let mut args = vec![];
    if let Some(url) = &url {
        args = vec!["--database", url.as_str()];
    }
    let server = ServerProcess::start(&data, &args)?;
    let admin = Client::new(
        &server.endpoint(),
        Some(Secret::new(fixture.admin_token.clone())),
    )?;
    let made = |what: &str| fixture.made.iter().any(|m| m == what);
    ensure!(made("swarm") && made("leader") && made("worker"));
    let swarm = admin.get_swarm("plant").await?;
    ensure!(swarm.devices == 2, "{swarm:?}");
    let worker = admin.get_device(WORKER).await?;
    ensure!(
        worker.labels.get("sensor").map(String::as_str) == Some("temp"),
        "{:?}",
        worker.labels
    );
    if made("service") {
        let web = admin.get_service("plant", "web").await?;
        ensure!(web.spec.image == "registry.example:5000/web:1");
    }
    // The leader enrols with the fleet's provisioning key of the time.
    let key = device_key(LEADER)?;
    server
        .enrol_with(
            &key,
            Admit::Key(Secret::new(fixture.provisioning_key.clone())),
            &[],
        )
        .await?;
    let leader = server.anonymous().with_device(key);
    ensure!(
        matches!(leader.config().await?, ConfigAnswer::Init { .. }),
        "the leader is not told to init"
    );
    if made("secret") {
        let value = secret_value(&leader, "db_password", 1).await?;
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("fixture-secret-{}", fixture.schema_version));
        ensure!(
            value.expose().trim() == expected.trim(),
            "the secret sealed by the old server does not open"
        );
    }
    // Telemetry history and a rollout plan as the server of the time
    // stored them (see `with_history`) read the same after the migration
    // reshaped them (issue 26: rows per device and hour, per device).
    if fixture.tables.contains_key("telemetry_history") {
        let view = admin.device_telemetry(WORKER).await?;
        let cpu: Vec<_> = view.history.iter().map(|p| (p.at, p.cpu_percent)).collect();
        ensure!(
            cpu == [(*OLD_MINUTE, Some(12.5)), (*OLD_MINUTE + 60, None)],
            "{cpu:?}"
        );
        ensure!(view.history[0].temperature_c == Some(48.5), "{view:?}");
    }
    if fixture.tables.contains_key("agent_rollouts") {
        let rollout = admin.rollout("plant").await?;
        let waves: Vec<Vec<(&str, &str)>> = rollout
            .waves
            .iter()
            .map(|w| {
                w.iter()
                    .map(|d| (d.device.as_str(), d.state.as_str()))
                    .collect()
            })
            .collect();
        ensure!(
            waves == [vec![(WORKER, "done")], vec![(LEADER, "updating")]]
                && rollout.wave == 1
                && rollout.state == "running",
            "{rollout:?}"
        );
    }
    // Old events are kept; new writes work.
    let events = admin.events(0, 100, Some("plant")).await?;
    ensure!(!events.is_empty(), "the old events are gone");
    admin
        .change_labels(
            WORKER,
            &fogswarm_protocol::api::LabelChange {
                set: [("migrated".to_string(), "yes".to_string())].into(),
                unset: vec![],
            },
        )
        .await?;
    Ok(())
}
