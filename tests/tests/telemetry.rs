//! Telemetry and offline detection on a lab: real agents on real device
//! engines report what they measure; the values the server shows match
//! what the device reads (memory from its /proc/meminfo, temperature from
//! the lab's thermal zone, which the test changes); a device whose
//! container is paused turns offline (first in `fogswarm status`, an
//! event), and online again when it resumes. `fogswarm device logs` shows
//! an agent's last lines (the same its own log file has), and `--follow`
//! streams the ones it writes afterwards. Debian's Prometheus, configured
//! with the monitoring kit, scrapes the lab's server over TLS and has a
//! device's temperature.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::prometheus::Prometheus;
use fogswarm_e2e::{docker, eventually, serial, Lab};
use fogswarm_protocol::api::{Event, FleetStatus};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn actions_of(lab: &Lab, id: &str) -> Result<Vec<String>> {
    let events: Vec<Event> = serde_json::from_str(
        &lab.cli_ok(&["events", "--limit", "500", "--subject", id, "--json"])?
            .stdout,
    )?;
    Ok(events.into_iter().map(|e| e.action).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_report_what_they_measure_and_a_paused_one_goes_offline() -> Result<()> {
    let _serial = serial().await;
    let lab = Lab::up("e2e-tele", "10.213.247.0/24", &["--devices", "3"])?;
    let dev2 = lab.device("dev2")?;
    let dev3 = lab.device("dev3")?;

    // What dev2 reads itself.
    let meminfo = lab.exec("dev2", &["cat", "/proc/meminfo"])?;
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("MemTotal")?;
    let temp_file = dev2
        .socket
        .parent()
        .context("device dir")?
        .join("thermal/thermal_zone0/temp");
    let millidegrees: f64 = lab
        .exec("dev2", &["cat", "/sys/class/thermal/thermal_zone0/temp"])?
        .trim()
        .parse()?;
    let view = eventually(30, || async {
        let view = lab.device_view(&dev2.mac)?;
        let t = view.telemetry.clone().context("no telemetry yet")?;
        ensure!(t.cpu_percent.is_some(), "cpu needs a second sample: {t:?}");
        Ok(view)
    })
    .await?;
    let t = view.telemetry.context("telemetry")?;
    ensure!(
        t.memory_total_mb == Some(total_kb / 1024),
        "{t:?} vs {total_kb} kB"
    );
    let used = t.memory_used_mb.context("memory used")?;
    ensure!(used > 0 && used < total_kb / 1024, "{t:?}");
    ensure!(
        t.temperature_c == Some(millidegrees / 1000.0),
        "{t:?} vs {millidegrees}"
    );
    ensure!(
        t.disk_free_mb.is_some_and(|f| f > 0) && t.uptime_secs.is_some() && t.load.is_some(),
        "{t:?}"
    );
    ensure!(t.containers_running.is_some(), "{t:?}");
    ensure!(view.heartbeat_secs == Some(5), "{:?}", view.heartbeat_secs);

    // The SoC warms up: the next reports say so, and `device show` prints it.
    std::fs::write(&temp_file, "63000\n")?;
    eventually(20, || async {
        let t = lab.device_view(&dev2.mac)?.telemetry;
        ensure!(
            t.as_ref().and_then(|t| t.temperature_c) == Some(63.0),
            "{t:?}"
        );
        Ok(())
    })
    .await?;
    let shown = lab.cli_ok(&["device", "show", &dev2.mac])?.stdout;
    ensure!(
        shown.contains("63.0 °C") && shown.contains(&format!("of {} MiB", total_kb / 1024)),
        "{shown}"
    );

    // Prometheus, with the monitoring kit's configuration over TLS to the
    // lab's server (trusting the fleet CA), has the same temperature.
    let server = lab.status()?.server.context("lab server")?;
    let ca = server
        .admin_token_file
        .parent()
        .context("the server's data directory")?
        .join("tls/ca.pem");
    let target = server.url.strip_prefix("https://").context("https")?;
    let scratch = tempfile::tempdir()?;
    let prometheus = Prometheus::start(scratch.path(), target, Some(&ca))?;
    let expr = format!(
        "fogswarm_device_temperature_celsius{{device=\"{}\"}}",
        dev2.mac
    );
    let value = eventually(60, || async {
        prometheus.query(&expr).await?.context("no sample yet")
    })
    .await
    .with_context(|| prometheus.log())?;
    ensure!(value == "63", "Prometheus has {value}");
    drop(prometheus);

    // dev3 paused: offline (three 5 s intervals and the batching), first
    // in the status; resumed: online. Both are events.
    docker(&["pause", &dev3.container])?;
    let paused = eventually(60, || async {
        let status: FleetStatus = serde_json::from_str(&lab.cli_ok(&["status", "--json"])?.stdout)?;
        let offline: Vec<&str> = status.offline.iter().map(|o| o.device.as_str()).collect();
        ensure!(offline == [dev3.mac.as_str()], "offline: {offline:?}");
        Ok(())
    })
    .await;
    if paused.is_err() {
        docker(&["unpause", &dev3.container])?;
    }
    paused?;
    let table = lab.cli_ok(&["status"])?.stdout;
    ensure!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("OFFLINE DEVICE"))
            && table.contains(&dev3.mac)
            && table.contains("1 offline"),
        "{table}"
    );
    ensure!(
        lab.cli_ok(&["device", "ls"])?.stdout.contains("(offline)"),
        "device ls does not show it"
    );
    ensure!(actions_of(&lab, &dev3.mac)?.contains(&"device.offline".to_string()));
    docker(&["unpause", &dev3.container])?;
    eventually(30, || async {
        ensure!(lab.device_view(&dev3.mac)?.offline_since.is_none());
        ensure!(actions_of(&lab, &dev3.mac)?.contains(&"device.online".to_string()));
        Ok(())
    })
    .await?;

    // The leader's agent's last lines, as its own log file has them.
    let dev1 = lab.device("dev1")?;
    let tail = lab
        .cli_ok(&["device", "logs", &dev1.mac, "--tail", "5"])?
        .stdout;
    let file = std::fs::read_to_string(dev1.socket.parent().context("dir")?.join("agent.log"))?;
    let shown: Vec<&str> = tail.lines().collect();
    ensure!(!shown.is_empty() && shown.len() <= 5, "{tail}");
    // Each layer stamps its own time: compare what follows it.
    let unstamped = |l: &str| l.split_once(' ').map(|(_, rest)| rest.to_string());
    for line in &shown {
        ensure!(
            file.lines().any(|l| unstamped(l) == unstamped(line)),
            "not in agent.log: {line}"
        );
    }
    ensure!(!tail.contains("SWMTKN-1-"), "{tail}");

    // --follow: a label change on dev2 makes the leader's agent log, and
    // the line arrives while the command runs.
    let mut follow = Command::new(fogswarm_e2e::fogswarm())
        .args(["device", "logs", &dev1.mac, "--follow", "--tail", "1"])
        .envs(lab.cli_env()?)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = follow.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The agent picks the request up at its next report: its last line
    // arrives first; only then is anything new.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .context("no line within 30s")?;
    lab.cli_ok(&["device", "label", &dev2.mac, "follow=me"])?;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut seen = vec![first];
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                let hit = line.contains("applied labels") && line.contains(&dev2.mac);
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    ensure!(found, "no label line streamed; saw:\n{}", seen.join("\n"));
    Ok(())
}
