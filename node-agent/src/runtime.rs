//! `fogswarm-agent runtime`: the engine's default runtime on a device, in
//! front of runc. Swarm cannot give a task a device; this can. At
//! `create` it reads the task's container labels (which the engine wrote
//! before calling the runtime), and when one carries a hardware grant
//! that verifies with the swarm's key and names the container's own
//! service, it adds the granted device nodes and cgroup rules to the
//! bundle's OCI spec. Then, and for every other call, it becomes runc with
//! the arguments unchanged.
//!
//! A grant that does not hold changes nothing (the engine's defaults
//! stay) and is recorded for the agent's next report. The container's
//! environment is never read: an image's ENV cannot grant anything.

use crate::state::StateDir;
use anyhow::{anyhow, bail, Context, Result};
use fogswarm_protocol::api::GrantRefusal;
use fogswarm_protocol::hardware::{self, Grant, GrantError, GRANT_LABEL};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the runtime finds what it needs (from the engine's runtimeArgs,
/// which `fogswarm-agent install` writes).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOptions {
    /// The agent's state dir (grant key, refusals).
    #[arg(long, default_value = "/var/lib/fogswarm-agent")]
    pub state_dir: PathBuf,
    /// The engine's data root (where containers/ID/config.v2.json is).
    #[arg(long, default_value = "/var/lib/docker")]
    pub engine_root: PathBuf,
    /// runc [default: the first runc in /usr/bin, /usr/sbin, /usr/local/bin,
    /// /usr/local/sbin].
    #[arg(long)]
    pub runc: Option<PathBuf>,
}

/// Swarm's container label naming the task's service.
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// What a runc command line says about a `create`.
#[derive(Debug, PartialEq)]
struct Create {
    bundle: PathBuf,
    id: String,
}

/// Runc's global options that take a value (before the verb).
const VALUED_GLOBALS: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

fn parse_create(args: &[String]) -> Option<Create> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if VALUED_GLOBALS.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        if a != "create" {
            return None;
        }
        let rest = &args[i + 1..];
        let id = rest.last()?.clone();
        let mut bundle = None;
        let mut j = 0;
        while j < rest.len() {
            match rest[j].as_str() {
                "--bundle" | "-b" => bundle = rest.get(j + 1).cloned(),
                other => {
                    if let Some(b) = other.strip_prefix("--bundle=") {
                        bundle = Some(b.to_string());
                    }
                }
            }
            j += 1;
        }
        let bundle = bundle
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())?;
        return Some(Create { bundle, id });
    }
    None
}

/// Runs the runtime: grants, then runc. Returns only when runc cannot be
/// started.
pub fn run(options: &RuntimeOptions, args: Vec<OsString>) -> Result<()> {
    let strings: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // A container whose grant does not hold starts with the engine's
    // defaults. Only a device that cannot judge yet (no key for its swarm)
    // fails the create: swarm starts the task again shortly, by when the
    // agent has the key, instead of leaving it running without its device.
    if let Some(create) = parse_create(&strings) {
        match StateDir::open(&options.state_dir) {
            Ok(state) => match grant(options, &state, &create) {
                Ok(()) => {}
                Err(Refused::Invalid(refusal)) => record(&state, &refusal),
                Err(Refused::NoKey(refusal)) => {
                    record(&state, &refusal);
                    bail!("{}; the task is started again once it has", refusal.reason);
                }
            },
            Err(e) => eprintln!("fogswarm runtime: {e:#}"),
        }
    }
    let runc = match &options.runc {
        Some(r) => r.clone(),
        None => find_runc().ok_or_else(|| anyhow!("no runc found"))?,
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&runc).args(&args).exec();
    Err(anyhow!("cannot run {}: {error}", runc.display()))
}

fn record(state: &StateDir, refusal: &GrantRefusal) {
    if let Err(e) = state.record_refusal(refusal) {
        eprintln!("fogswarm runtime: cannot record a refusal: {e:#}");
    }
}

/// Why a grant was not applied.
enum Refused {
    /// It does not hold: the container starts with the engine's defaults.
    Invalid(GrantRefusal),
    /// This device cannot check it yet.
    NoKey(GrantRefusal),
}

fn find_runc() -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join("runc"))
        .find(|p| p.exists())
}

/// Applies the container's grant, if it has one. On `Err` the spec is
/// left as it was.
fn grant(options: &RuntimeOptions, state: &StateDir, create: &Create) -> Result<(), Refused> {
    let labels = container_labels(&options.engine_root, &create.id).unwrap_or_default();
    let Some(label) = labels.get(GRANT_LABEL) else {
        return Ok(());
    };
    let service = labels.get(SERVICE_NAME_LABEL).cloned();
    let refusal = |reason: String| GrantRefusal {
        container: create.id.chars().take(12).collect(),
        service: service.clone(),
        reason,
    };
    let refuse = |reason: String| Refused::Invalid(refusal(reason));
    let Some(actual) = &service else {
        return Err(refuse(
            "the container is not a swarm task; grants are for services".into(),
        ));
    };
    // No word from the server yet: wait for it (swarm retries the task).
    // The server said the swarm has no key: no grant can hold (an image
    // carrying a grant label still runs, with the engine's defaults).
    let key = state.grant_key().ok_or_else(|| {
        Refused::NoKey(refusal(
            "this device has no grant key for its swarm yet".into(),
        ))
    })?;
    let public_key = key.public_key.as_deref().ok_or_else(|| {
        refuse(format!(
            "swarm {} allows no hardware (it has no grant key)",
            key.swarm
        ))
    })?;
    let grant = Grant::open(label, public_key, &key.swarm).map_err(|e| refuse(e.to_string()))?;
    if grant.service != *actual {
        return Err(refuse(
            GrantError::OtherService {
                granted: grant.service,
                actual: actual.clone(),
            }
            .to_string(),
        ));
    }
    apply(&create.bundle, &grant).map_err(|e| refuse(format!("{e:#}")))
}

/// The container's labels, as the engine recorded them at create.
fn container_labels(
    engine_root: &Path,
    id: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    if id.contains('/') || id.contains("..") {
        bail!("container id {id:?}");
    }
    let path = engine_root
        .join("containers")
        .join(id)
        .join("config.v2.json");
    let config: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(serde_json::from_value(config["Config"]["Labels"].clone()).unwrap_or_default())
}

/// Adds what the grant gives to the bundle's config.json.
fn apply(bundle: &Path, grant: &Grant) -> Result<()> {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut nodes = Vec::new();
    for request in &grant.devices {
        let found = expand(&request.host);
        if found.is_empty() {
            bail!("device {} is not on this device", request.host);
        }
        for host in found {
            let container = match &request.container {
                Some(c) => PathBuf::from(c),
                None => host.clone(),
            };
            nodes.push((host, container, request.permissions.clone()));
        }
    }
    let mut rules = Vec::new();
    for rule in &grant.cgroup_rules {
        let r = hardware::parse_cgroup_rule(rule).map_err(anyhow::Error::msg)?;
        rules.push(json!({
            "allow": true,
            "type": r.kind.to_string(),
            "major": r.major,
            "minor": r.minor,
            "access": r.access,
        }));
    }
    if grant.privileged {
        privileged(&mut spec);
        for host in all_device_nodes(Path::new("/dev")) {
            nodes.push((host.clone(), host, "rwm".into()));
        }
    }
    let linux = spec
        .as_object_mut()
        .context("config.json is not an object")?
        .entry("linux")
        .or_insert_with(|| json!({}));
    for (host, container, permissions) in nodes {
        let meta = std::fs::metadata(&host).with_context(|| format!("{}", host.display()))?;
        let kind = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else {
            bail!("{} is not a device node", host.display());
        };
        let (major, minor) = split_dev(meta.rdev());
        let devices = array_at(linux, "devices")?;
        let target = container.to_string_lossy().into_owned();
        devices.retain(|d| d["path"] != json!(target));
        devices.push(json!({
            "path": target,
            "type": kind,
            "major": major,
            "minor": minor,
            "fileMode": meta.mode() & 0o7777,
            "uid": meta.uid(),
            "gid": meta.gid(),
        }));
        rules.push(json!({
            "allow": true,
            "type": kind,
            "major": major,
            "minor": minor,
            "access": permissions,
        }));
    }
    let resources = linux
        .as_object_mut()
        .context("linux is not an object")?
        .entry("resources")
        .or_insert_with(|| json!({}));
    array_at(resources, "devices")?.extend(rules);
    let tmp = bundle.join("config.json.fogswarm");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
}

fn array_at<'a>(value: &'a mut Value, key: &str) -> Result<&'a mut Vec<Value>> {
    value
        .as_object_mut()
        .context("not an object")?
        .entry(key)
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .with_context(|| format!("{key} is not a list"))
}

/// A pattern's matches (the directory part is literal), or the path.
fn expand(pattern: &str) -> Vec<PathBuf> {
    if !hardware::is_pattern(pattern) {
        return if Path::new(pattern).exists() {
            vec![pattern.into()]
        } else {
            vec![]
        };
    }
    let path = Path::new(pattern);
    let Some(dir) = path.parent() else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| hardware::glob_match(pattern, &p.to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Linux's device number split as glibc's major()/minor() do.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Linux's capabilities, in bit order (CAP_CHOWN is bit 0).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities this process may hand on (its bounding set, from
/// /proc/self/status): a container cannot get more, and asking for more
/// fails the create (an engine that itself runs without some, as a lab
/// device may).
fn bounding_caps(status: &str) -> Vec<&'static str> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// What `docker run --privileged` changes, applied to an OCI spec: every
/// capability the engine has, no seccomp or AppArmor profile, nothing
/// masked or read-only, every device allowed.
fn privileged(spec: &mut Value) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = json!(bounding_caps(&status));
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    if let Some(p) = spec["process"].as_object_mut() {
        p.remove("apparmorProfile");
    }
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("seccomp");
        linux.insert("maskedPaths".into(), json!([]));
        linux.insert("readonlyPaths".into(), json!([]));
        linux
            .entry("resources")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|r| r.insert("devices".into(), json!([{"allow": true, "access": "rwm"}])));
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts {
            let dest = m["destination"].as_str().unwrap_or_default().to_string();
            if dest == "/sys" || dest.starts_with("/sys/fs/cgroup") {
                if let Some(options) = m["options"].as_array_mut() {
                    options.retain(|o| o != "ro");
                    options.push(json!("rw"));
                }
            }
        }
    }
}

/// Every device node under /dev, as `--privileged` gives them (runc's own
/// list: not the pseudo-terminals, shared memory and message queues the
/// container has its own of, nor the console runc sets up itself).
fn all_device_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            if !["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"]
                .contains(&name.as_ref())
            {
                out.extend(all_device_nodes(&path));
            }
        } else if name != "console" && (kind.is_char_device() || kind.is_block_device()) {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn create_is_told_from_other_verbs() {
        let args = strings(&[
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/run/x/b",
            "--pid-file",
            "/run/x/pid",
            "abc123",
        ]);
        assert_eq!(
            parse_create(&args),
            Some(Create {
                bundle: "/run/x/b".into(),
                id: "abc123".into()
            })
        );
        let args = strings(&["--root", "create", "start", "abc"]);
        assert_eq!(
            parse_create(&args),
            None,
            "'create' as a value is not the verb"
        );
        assert_eq!(parse_create(&strings(&["delete", "--force", "abc"])), None);
        assert_eq!(
            parse_create(&strings(&["create", "--bundle=/b", "id"])),
            Some(Create {
                bundle: "/b".into(),
                id: "id".into()
            })
        );
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // /dev/fuse is 10:229; a large minor spills into the high bits.
        assert_eq!(split_dev((10 << 8) | 229), (10, 229));
        let dev = (259u64 << 8) | ((300u64 & !0xff) << 12) | (300 & 0xff);
        assert_eq!(split_dev(dev), (259, 300));
    }

    /// An engine's files for one container (labels in config.v2.json, the
    /// bundle's config.json), and a state dir: what the runtime reads.
    fn container(labels: serde_json::Value) -> (tempfile::TempDir, RuntimeOptions, Create) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = "c0ffee";
        let config = dir.path().join("engine/containers").join(id);
        std::fs::create_dir_all(&config).expect("mkdir");
        std::fs::write(
            config.join("config.v2.json"),
            json!({"Config": {"Labels": labels}}).to_string(),
        )
        .expect("write");
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).expect("mkdir");
        std::fs::write(bundle.join("config.json"), "{}").expect("write");
        let options = RuntimeOptions {
            state_dir: dir.path().join("state"),
            engine_root: dir.path().join("engine"),
            runc: None,
        };
        let create = Create {
            bundle,
            id: id.into(),
        };
        (dir, options, create)
    }

    #[test]
    fn grants_are_judged_by_key_swarm_and_service() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let signed = Grant {
            swarm: "fog".into(),
            service: "reader".into(),
            devices: vec![],
            cgroup_rules: vec!["c 89:* rwm".into()],
            privileged: false,
        }
        .sign(&key);
        let labels = |service: &str| json!({GRANT_LABEL: signed, SERVICE_NAME_LABEL: service});
        let outcome = |labels: serde_json::Value, key: Option<Option<String>>| {
            let (_dir, options, create) = container(labels);
            let state = StateDir::open(&options.state_dir).expect("state");
            if let Some(public_key) = key {
                state
                    .save_grant_key(&crate::state::GrantKey {
                        swarm: "fog".into(),
                        public_key,
                    })
                    .expect("save");
            }
            let result = grant(&options, &state, &create);
            let spec = std::fs::read_to_string(create.bundle.join("config.json")).expect("read");
            (result, spec)
        };
        let public = Some(fogswarm_protocol::hardware::public_key_text(&key));
        let (ok, spec) = outcome(labels("reader"), Some(public.clone()));
        assert!(ok.is_ok());
        assert!(spec.contains("\"major\":89"), "{spec}");
        // Another service's grant, a device with no word of a key yet, a
        // swarm with no key, a container that is not a task.
        let (other, spec) = outcome(labels("intruder"), Some(public.clone()));
        assert!(matches!(other, Err(Refused::Invalid(r)) if r.reason.contains("service reader")));
        assert_eq!(spec, "{}", "nothing granted");
        assert!(matches!(
            outcome(labels("reader"), None).0,
            Err(Refused::NoKey(_))
        ));
        assert!(matches!(
            outcome(labels("reader"), Some(None)).0,
            Err(Refused::Invalid(r)) if r.reason.contains("allows no hardware")
        ));
        let (plain, _) = outcome(json!({GRANT_LABEL: signed}), Some(public));
        assert!(matches!(plain, Err(Refused::Invalid(r)) if r.reason.contains("not a swarm task")));
        // No grant label: nothing to do, whatever the state.
        assert!(outcome(json!({"other": "label"}), None).0.is_ok());
    }

    #[test]
    fn capabilities_follow_the_bounding_set() {
        // A lab device without CAP_SYS_RESOURCE (bit 24).
        let caps = bounding_caps("Name:\tx\nCapBnd:\t0000003ffeffffff\n");
        assert!(!caps.contains(&"CAP_SYS_RESOURCE"));
        assert!(caps.contains(&"CAP_SYS_ADMIN") && caps.contains(&"CAP_AUDIT_READ"));
        assert_eq!(caps.len(), 37);
        assert_eq!(bounding_caps("").len(), ALL_CAPS.len());
        assert_eq!(ALL_CAPS[24], "CAP_SYS_RESOURCE");
        assert_eq!(ALL_CAPS[40], "CAP_CHECKPOINT_RESTORE");
    }

    #[test]
    fn privileged_is_what_docker_run_privileged_does() {
        let mut spec = json!({
            "process": {"capabilities": {"bounding": ["CAP_CHOWN"]}, "apparmorProfile": "docker-default"},
            "linux": {
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            },
            "mounts": [{"destination": "/sys", "options": ["nosuid", "ro"]}],
        });
        privileged(&mut spec);
        let caps = spec["process"]["capabilities"]["effective"]
            .as_array()
            .expect("caps");
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")) && caps.len() > 30);
        assert!(spec["process"].get("apparmorProfile").is_none());
        assert!(spec["linux"].get("seccomp").is_none());
        assert_eq!(spec["linux"]["maskedPaths"], json!([]));
        assert_eq!(spec["linux"]["readonlyPaths"], json!([]));
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(spec["mounts"][0]["options"], json!(["nosuid", "rw"]));
    }

    #[test]
    fn a_grant_adds_nodes_and_rules_and_nothing_else() {
        let bundle = tempfile::tempdir().expect("tempdir");
        let original = json!({
            "process": {"env": ["FOGSWARM_GRANT=forged"]},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        });
        std::fs::write(bundle.path().join("config.json"), original.to_string()).expect("write");
        let grant = Grant {
            swarm: "fog".into(),
            service: "reader".into(),
            // /dev/null is on every machine the tests run on (char 1:3).
            devices: vec![fogswarm_protocol::hardware::DeviceRequest {
                host: "/dev/null".into(),
                container: Some("/dev/ttyACM0".into()),
                permissions: "rw".into(),
            }],
            cgroup_rules: vec!["c 89:* rwm".into()],
            privileged: false,
        };
        apply(bundle.path(), &grant).expect("apply");
        let spec: Value = serde_json::from_slice(
            &std::fs::read(bundle.path().join("config.json")).expect("read"),
        )
        .expect("json");
        let device = &spec["linux"]["devices"][0];
        assert_eq!(device["path"], "/dev/ttyACM0");
        assert_eq!(
            (device["major"].as_u64(), device["minor"].as_u64()),
            (Some(1), Some(3))
        );
        let rules = spec["linux"]["resources"]["devices"]
            .as_array()
            .expect("rules");
        assert_eq!(
            rules[0]["allow"], false,
            "the engine's deny-all stays first"
        );
        assert!(rules.contains(
            &json!({"allow": true, "type": "c", "major": 89, "minor": null, "access": "rwm"})
        ));
        assert!(rules.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
        ));
        assert_eq!(
            spec["process"], original["process"],
            "the process is untouched"
        );
    }
}
