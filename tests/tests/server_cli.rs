//! The `fogswarm` CLI drives a real server (TLS, pinned CA) through a whole
//! fleet set-up: swarms, devices one by one and in bulk, labels, approval,
//! status, events, removal; table output for people, JSON for scripts.

use anyhow::Result;
use fogswarm_e2e::server::{device_key, enrol_request, Admit, ServerProcess};
use fogswarm_e2e::{fogswarm, Run};
use fogswarm_protocol::api::*;
use std::path::Path;
use std::process::Command;

struct Cli<'a> {
    server: &'a ServerProcess,
    config: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Run {
        Command::new(fogswarm())
            .args(args)
            .env("FOGSWARM_CONFIG", self.config)
            .env_remove("FOGSWARM_SERVER")
            .env_remove("FOGSWARM_TOKEN")
            .env_remove("FOGSWARM_TOKEN_FILE")
            .env_remove("FOGSWARM_CA_FINGERPRINT")
            .output()
            .expect("running fogswarm")
            .into()
    }

    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, 0, "fogswarm {args:?} failed: {}", run.stderr);
        run.stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("fogswarm {args:?} --json: {e}: {out}"))
    }

    fn fails(&self, args: &[&str], code: i32, message: &str) {
        let run = self.run(args);
        assert_eq!(run.code, code, "fogswarm {args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(message),
            "fogswarm {args:?}: expected {message:?} in {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one line: {}",
            run.stderr
        );
        let _ = self.server;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sets_up_a_whole_fleet() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--tls-self-signed"])?;
    // The config file the operator writes once: server, token file, pin.
    let config = dir.path().join("cli.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({
            "server": server.url,
            "token_file": server.data.join("admin.token"),
            "ca_fingerprint": server.fingerprint,
        }))?,
    )?;
    let cli = Cli {
        server: &server,
        config: &config,
    };

    assert!(cli
        .ok(&["swarm", "create", "factory"])
        .contains("swarm factory created"));
    cli.ok(&["swarm", "create", "lab", "--auto-enrol", "pending"]);
    let table = cli.ok(&["swarm", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("lab ") && l.contains("pending")),
        "{table}"
    );

    cli.ok(&[
        "device",
        "add",
        "02:FB:0A:00:00:0B",
        "--swarm",
        "factory",
        "--role",
        "leader",
        "--label",
        "location=hall1",
    ]);
    cli.ok(&[
        "device",
        "add",
        "02:fb:0a:00:00:0c",
        "--swarm",
        "factory",
        "--role",
        "manager",
        "--label",
        "location=hall1",
    ]);
    let csv = dir.path().join("fleet.csv");
    std::fs::write(
        &csv,
        "id,swarm,role,labels\n02:fb:0a:00:00:0d,factory,worker,location=hall2;temperature_sensor=1\n02:fb:0a:00:00:0e,factory,worker,location=hall2\n",
    )?;
    assert!(cli
        .ok(&["device", "import", csv.to_str().unwrap_or_default()])
        .contains("imported 2 devices"));
    let json_file = dir.path().join("more.json");
    std::fs::write(
        &json_file,
        r#"[{"id": "gw-07", "swarm": "factory", "labels": {"location": "yard"}}]"#,
    )?;
    cli.ok(&["device", "import", json_file.to_str().unwrap_or_default()]);

    let devices = cli.json(&["device", "ls", "--swarm", "factory"]);
    let devices = devices.as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 5);
    assert_eq!(devices[0]["id"], "02:fb:0a:00:00:0b");
    assert_eq!(devices[0]["role"], "leader");

    cli.ok(&[
        "device",
        "label",
        "02:fb:0a:00:00:0e",
        "temperature_sensor=1",
        "zone=b",
    ]);
    cli.ok(&["device", "unlabel", "02:fb:0a:00:00:0e", "zone"]);
    let shown = cli.json(&["device", "show", "02-FB-0A-00-00-0E"]);
    assert_eq!(
        shown["labels"],
        serde_json::json!({"location": "hall2", "temperature_sensor": "1"})
    );
    let text = cli.ok(&["device", "show", "02:fb:0a:00:00:0e"]);
    assert!(text.contains("state:       declared"), "{text}");

    // A device auto-enrols into the pending swarm; the operator approves it.
    let key = device_key("02:fb:0a:00:00:20")?;
    let mut request = enrol_request(
        &key,
        Admit::Key(server.provisioning_key()),
        &[("arch", "arm64")],
    )?;
    request.swarm = Some("lab".into());
    server.anonymous().with_device(key).enrol(&request).await?;
    assert_eq!(
        cli.json(&["device", "show", "02:fb:0a:00:00:20"])["state"],
        "pending"
    );
    cli.ok(&["device", "approve", "02:fb:0a:00:00:20"]);
    assert_eq!(
        cli.json(&["device", "show", "02:fb:0a:00:00:20"])["state"],
        "enrolled"
    );

    let status = cli.ok(&["status"]);
    assert!(status.contains("6 devices in 2 swarms"), "{status}");
    let status: FleetStatus = serde_json::from_value(cli.json(&["status"]))?;
    assert_eq!(status.devices, 6);
    let events = cli.ok(&["events", "--limit", "100"]);
    assert!(events.contains("device.approve"), "{events}");
    assert!(events.contains("device.import"), "{events}");

    // Refusals: one line, exit 2 for bad input, 1 for the rest.
    cli.fails(
        &["device", "add", "bad id", "--swarm", "factory"],
        2,
        "device id \"bad id\"",
    );
    cli.fails(
        &[
            "device",
            "add",
            "x1",
            "--swarm",
            "factory",
            "--label",
            "fog.arch=arm",
        ],
        2,
        "fog.arch",
    );
    cli.fails(
        &[
            "device", "add", "x2", "--swarm", "factory", "--role", "leader",
        ],
        1,
        "already has a leader",
    );
    cli.fails(
        &["device", "add", "x3", "--swarm", "nowhere"],
        1,
        "swarm nowhere does not exist",
    );
    cli.fails(&["swarm", "create", "Factory"], 2, "'F' at position 0");
    cli.fails(&["swarm", "rm", "factory"], 1, "still has 5 devices");
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, "id,swarm\nok-1,factory\nbad id,factory\n")?;
    cli.fails(
        &["device", "import", bad_csv.to_str().unwrap_or_default()],
        2,
        "row 2",
    );
    assert_eq!(
        cli.json(&["device", "ls"]).as_array().map(Vec::len),
        Some(6),
        "the bad import added nothing"
    );
    let wrong_pin = dir.path().join("wrong.json");
    std::fs::write(
        &wrong_pin,
        serde_json::to_vec(
            &serde_json::json!({"server": server.url, "token_file": server.data.join("admin.token"), "ca_fingerprint": "ab".repeat(32)}),
        )?,
    )?;
    let run = Command::new(fogswarm())
        .args(["swarm", "ls"])
        .env("FOGSWARM_CONFIG", &wrong_pin)
        .output()?;
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("pinned CA fingerprint"));
    // Flags beat the config file.
    let run = Command::new(fogswarm())
        .args(["swarm", "ls", "--ca-fingerprint"])
        .arg(server.fingerprint.clone().unwrap_or_default())
        .env("FOGSWARM_CONFIG", &wrong_pin)
        .output()?;
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Decommission and removal.
    assert!(
        cli.ok(&["device", "rm", "gw-07"]).contains("removed"),
        "never enrolled: removed at once"
    );
    assert!(cli
        .ok(&["device", "rm", "02:fb:0a:00:00:20"])
        .contains("told to leave"));
    cli.ok(&["device", "rm", "02:fb:0a:00:00:20", "--force"]);
    cli.ok(&["swarm", "rm", "factory", "--force"]);
    cli.ok(&["swarm", "rm", "lab"]);
    assert_eq!(cli.json(&["swarm", "ls"]), serde_json::json!([]));
    Ok(())
}
