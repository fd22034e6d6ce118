//! Hardware for swarm services, end to end on one lab (issue 13): real
//! engines in the lab's devices, the real server, the static agent as
//! each device's runtime (set up by `fogswarm-agent install` at boot, as
//! a device image would), fog-hello from the image builder.
//!
//! The lab gives dev2, dev3 and dev4 a character device the engine's
//! default rules deny: the host's /dev/fuse (10:229) as /dev/ttyACM0, a
//! sensor on a serial port. dev4 boots without the runtime registered.
//! dev5 is in a second swarm, `other`, whose grants must not work in `fog`.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::{eventually, http_get, Lab, Run};
use fogswarm_protocol::service::TaskObserved;
use std::collections::BTreeSet;
use std::process::Command;

const FUSE: (u32, u32) = (10, 229);
const SENSOR: &str = "/dev/ttyACM0";

struct Ctx {
    lab: Lab,
    ips: std::collections::BTreeMap<String, String>,
}

impl Ctx {
    fn cli(&self, args: &[&str]) -> Result<Run> {
        self.lab.cli_ok(args)
    }

    fn tasks(&self, swarm: &str, name: &str) -> Result<Vec<TaskObserved>> {
        let run = self.cli(&["service", "ps", name, "--swarm", swarm, "--json"])?;
        Ok(serde_json::from_str(&run.stdout)?)
    }

    /// Host names of the devices running a task of the service.
    fn running_on(&self, name: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .tasks("fog", name)?
            .into_iter()
            .filter(|t| t.state == "running")
            .filter_map(|t| t.hostname)
            .collect())
    }

    /// What fog-hello on a device's host-mode port says about opening PATH.
    fn open(&self, device: &str, port: u16, path: &str) -> Result<serde_json::Value> {
        let (status, body) = http_get(
            &format!("{}:{port}", self.ips[device]),
            &format!("/open{path}"),
        )?;
        ensure!(status == 200, "{device}:{port} answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until the task on `device` answers and can open the sensor.
    async fn opens(&self, device: &str, port: u16) -> Result<()> {
        eventually(120, || async {
            let answer = self.open(device, port, SENSOR)?;
            ensure!(answer["opened"] == true, "{device}: {answer}");
            Ok(())
        })
        .await
        .with_context(|| format!("{device}:{port} opening {SENSOR}"))
    }

    /// Waits until the task on `device` answers, and answers what opening
    /// the sensor gave.
    async fn open_result(&self, device: &str, port: u16) -> Result<serde_json::Value> {
        eventually(120, || async { self.open(device, port, SENSOR) })
            .await
            .with_context(|| format!("{device}:{port} never answered"))
    }

    fn events(&self) -> Result<String> {
        Ok(self.cli(&["events", "--limit", "1000", "--json"])?.stdout)
    }

    /// `docker` against a device's engine, as someone with access to it
    /// would make a service by hand.
    fn docker(&self, device: &str, args: &[&str]) -> Result<String> {
        let socket = self.lab.device(device)?.socket;
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "docker {args:?} on {device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn fleet_file(dir: &std::path::Path) -> Result<String> {
    let sensor = serde_json::json!([[SENSOR, FUSE.0, FUSE.1]]);
    let fleet = serde_json::json!({
        "swarm": "fog",
        "devices": {
            "dev1": {"role": "leader"},
            "dev2": {"device_nodes": sensor},
            "dev3": {"device_nodes": sensor},
            "dev4": {"device_nodes": sensor, "runtime": false},
        }
    });
    let path = dir.join("fleet.json");
    std::fs::write(&path, fleet.to_string())?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_services_get_devices_only_as_granted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(dir.path())?;
    let lab = Lab::up(
        "e2e-hw",
        "10.213.242.0/24",
        &["--devices", "5", "--fleet", &fleet],
    )?;
    let status = lab.status()?;
    let ips = status
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.ip.clone()))
        .collect();
    let dev5_mac = status
        .devices
        .iter()
        .find(|d| d.name == "dev5")
        .map(|d| d.mac.clone())
        .context("dev5")?;
    let ctx = Ctx { lab, ips };
    // dev5 leads a swarm of its own.
    ctx.cli(&["swarm", "create", "other"])?;
    ctx.cli(&[
        "device", "add", &dev5_mac, "--swarm", "other", "--role", "leader",
    ])?;
    let registry = status.registry.context("lab registry")?.addr;
    let image = ctx.lab.build_hello(&registry, "hw", &["--sbom=false"])?;

    // 3. Outside the swarm's allowed patterns: refused at deploy, nothing
    // stored.
    ctx.cli(&["swarm", "update", "fog", "--allow-device", "/dev/ttyACM*"])?;
    let refused = ctx.lab.cli(
        &[
            "service",
            "deploy",
            "usb",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--mode",
            "global",
            "--device",
            "/dev/ttyUSB0",
        ],
        None,
    )?;
    ensure!(refused.code != 0, "a device outside the list was accepted");
    ensure!(
        refused.stderr.contains("devices[0]")
            && refused
                .stderr
                .contains("/dev/ttyUSB0 is not allowed in swarm fog"),
        "{}",
        refused.stderr
    );
    ensure!(
        !ctx.cli(&["service", "ls", "--swarm", "fog"])?
            .stdout
            .contains("usb"),
        "the refused service was stored"
    );

    // 1. A global service with --device runs on exactly the devices that
    // have the node and the runtime (dev2, dev3), and each task opens it.
    ctx.cli(&[
        "service",
        "deploy",
        "reader",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--mode",
        "global",
        "--device",
        SENSOR,
        "--publish",
        "mode=host,8101:8080",
        "--timeout",
        "150s",
    ])?;
    for dev in ["dev2", "dev3"] {
        ctx.opens(dev, 8101).await?;
    }
    // The server hears of the tasks with the leader's next report.
    eventually(60, || async {
        let on = ctx.running_on("reader")?;
        ensure!(
            on == BTreeSet::from(["dev2".into(), "dev3".into()]),
            "reader runs on {on:?}"
        );
        Ok(())
    })
    .await?;
    // The same image bind-mounting the node without --device: EPERM.
    ctx.cli(&[
        "service",
        "deploy",
        "plain",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--mode",
        "global",
        "--constraint",
        "node.labels.fog.serial==ttyACM0",
        "--mount",
        "type=bind,source=/dev/ttyACM0,target=/dev/ttyACM0",
        "--publish",
        "mode=host,8102:8080",
        "--timeout",
        "150s",
    ])?;
    let denied = ctx.open_result("dev2", 8102).await?;
    ensure!(
        denied["opened"] == false && denied["errno"] == 1,
        "without --device the engine's rules must deny it: {denied}"
    );
    ctx.cli(&["service", "rm", "plain", "--swarm", "fog"])?;

    // 7. A Compose file with `devices:` deploys the same way.
    let compose = dir.path().join("sensors.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  probe:\n    image: {image}\n    devices:\n      - \"{SENSOR}:{SENSOR}:rw\"\n    ports:\n      - target: 8080\n        published: 8103\n        mode: host\n    deploy:\n      mode: global\n"
        ),
    )?;
    ctx.cli(&[
        "stack",
        "deploy",
        "sensors",
        "--swarm",
        "fog",
        "--compose-file",
        &compose.display().to_string(),
        "--timeout",
        "150s",
    ])?;
    ctx.opens("dev3", 8103).await.context("the stack's task")?;
    ctx.cli(&["stack", "rm", "sensors", "--swarm", "fog"])?;

    // --privileged only where the swarm allows it; then the task may open
    // a device it did not name.
    let refused = ctx.lab.cli(
        &[
            "service",
            "deploy",
            "root",
            "--swarm",
            "fog",
            "--image",
            &image,
            "--privileged",
        ],
        None,
    )?;
    ensure!(
        refused.code != 0 && refused.stderr.contains("--allow-privileged"),
        "{}",
        refused.stderr
    );
    ctx.cli(&["swarm", "update", "fog", "--allow-privileged", "true"])?;
    ctx.cli(&[
        "service",
        "deploy",
        "root",
        "--swarm",
        "fog",
        "--image",
        &image,
        "--privileged",
        "--constraint",
        "node.hostname==dev2",
        "--publish",
        "mode=host,8106:8080",
        "--timeout",
        "150s",
    ])?;
    ctx.opens("dev2", 8106)
        .await
        .context("a privileged task opening a device it did not name")?;
    ctx.cli(&["service", "rm", "root", "--swarm", "fog"])?;

    // 2a. An image whose own LABEL and ENV carry a grant (a real one, for
    // another service) gets no device, and the device reports it.
    let grant = ctx.docker(
        "dev1",
        &[
            "service",
            "inspect",
            "reader",
            "--format",
            "{{index .Spec.TaskTemplate.ContainerSpec.Labels \"io.fogswarm.grant\"}}",
        ],
    )?;
    ensure!(grant.contains('.'), "reader's grant label: {grant:?}");
    let forged = ctx.lab.build_hello(
        &registry,
        "forged",
        &[
            "--sbom=false",
            "--label",
            &format!("io.fogswarm.grant={grant}"),
            "--env",
            &format!("FOGSWARM_GRANT={grant}"),
        ],
    )?;
    ctx.cli(&[
        "service",
        "deploy",
        "forger",
        "--swarm",
        "fog",
        "--image",
        &forged,
        "--constraint",
        "node.hostname==dev2",
        "--mount",
        "type=bind,source=/dev/ttyACM0,target=/dev/ttyACM0",
        "--publish",
        "mode=host,8104:8080",
        "--timeout",
        "150s",
    ])?;
    let forger = ctx.open_result("dev2", 8104).await?;
    ensure!(
        forger["opened"] == false,
        "a forged image got the device: {forger}"
    );

    // 2b. A service made by hand on the engine with a grant copied from
    // swarm `other`: no device, reported.
    ctx.cli(&["swarm", "update", "other", "--allow-device", "/dev/ttyACM*"])?;
    ctx.cli(&[
        "service", "deploy", "reader", "--swarm", "other", "--image", &image, "--device", SENSOR,
        "--detach",
    ])?;
    let other_grant = eventually(120, || async {
        ctx.docker(
            "dev5",
            &[
                "service",
                "inspect",
                "reader",
                "--format",
                "{{index .Spec.TaskTemplate.ContainerSpec.Labels \"io.fogswarm.grant\"}}",
            ],
        )
    })
    .await
    .context("swarm other's grant")?;
    ctx.docker(
        "dev1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "handmade",
            "--constraint",
            "node.hostname==dev3",
            "--container-label",
            &format!("io.fogswarm.grant={other_grant}"),
            "--mount",
            "type=bind,source=/dev/ttyACM0,target=/dev/ttyACM0",
            "--publish",
            "mode=host,published=8105,target=8080",
            &image,
        ],
    )?;
    let handmade = ctx.open_result("dev3", 8105).await?;
    ensure!(
        handmade["opened"] == false,
        "a copied grant gave the device: {handmade}"
    );
    let events = eventually(60, || async {
        let events = ctx.events()?;
        ensure!(
            events.contains("forger") && events.contains("handmade"),
            "no refusal events yet"
        );
        Ok(events)
    })
    .await
    .context("both refusals reported")?;
    ensure!(events.contains("grant.refused"), "{events}");
    ensure!(
        events.contains("does not verify with swarm fog"),
        "the copied grant is refused for its signature"
    );
    ctx.docker("dev1", &["service", "rm", "handmade"])?;
    ctx.cli(&["service", "rm", "forger", "--swarm", "fog"])?;

    // 4. dev4 has the sensor but not the runtime: no task there. Once
    // `fogswarm-agent install` runs on it, it gets one.
    ensure!(!ctx.running_on("reader")?.contains("dev4"));
    ctx.lab.exec("dev4", &["sh", "/lab/install.sh"])?;
    // 5. A sensor plugged into dev1 later shows in its facts and the
    // waiting global service starts there.
    ctx.lab
        .exec("dev1", &["mknod", "-m", "0660", SENSOR, "c", "10", "229"])?;
    for dev in ["dev4", "dev1"] {
        ctx.opens(dev, 8101).await?;
    }
    let dev1 = ctx
        .cli(&["device", "ls", "--swarm", "fog", "--json"])?
        .stdout;
    ensure!(dev1.contains("ttyACM0"), "{dev1}");

    // 6. install again changes nothing; --uninstall restores the engine's
    // daemon.json as the install found it.
    let again = ctx.lab.exec("dev2", &["sh", "/lab/install.sh", "--json"])?;
    let steps: Vec<serde_json::Value> = serde_json::from_str(&again)?;
    ensure!(
        steps.iter().all(|s| s["outcome"] == "unchanged"),
        "a second install changed something: {again}"
    );
    let backup = std::fs::read_to_string(
        ctx.lab
            .device_dir("dev2")
            .join("daemon.json.fogswarm-backup"),
    )?;
    ensure!(!backup.contains("fogswarm"), "{backup}");
    ctx.lab
        .exec("dev2", &["sh", "/lab/install.sh", "--uninstall"])?;
    let restored = std::fs::read_to_string(ctx.lab.device_dir("dev2").join("daemon.json"))?;
    ensure!(
        restored == backup,
        "daemon.json after --uninstall:\n{restored}"
    );
    Ok(())
}
