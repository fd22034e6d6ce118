//! The Compose file format as swarm stacks use it, typed: every key
//! `docker stack deploy` honours, each unknown one refused
//! (`deny_unknown_fields`). Written for serde; `super` turns it into specs.

use fogswarm_protocol::service::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComposeFile {
    #[serde(default)]
    #[allow(dead_code)] // accepted and ignored, as Docker does
    pub(super) version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // the stack's name comes from the command line
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, Service>,
    #[serde(default)]
    pub(super) networks: BTreeMap<String, Option<Network>>,
    #[serde(default)]
    pub(super) volumes: BTreeMap<String, Option<Volume>>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, FileDef>,
    #[serde(default)]
    pub(super) configs: BTreeMap<String, FileDef>,
}

/// `external: true` or (older files) `external: {name: N}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum External {
    Flag(bool),
    Named { name: String },
}

impl External {
    pub(super) fn is_external(e: &Option<External>) -> bool {
        matches!(e, Some(External::Flag(true)) | Some(External::Named { .. }))
    }

    pub(super) fn name(e: &Option<External>) -> Option<String> {
        match e {
            Some(External::Named { name }) => Some(name.clone()),
            _ => None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Network {
    #[serde(default)]
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub(super) attachable: Option<bool>,
    #[serde(default)]
    pub(super) external: Option<External>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // labels on the network object: not kept
    pub(super) labels: Option<serde_norway::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Volume {
    #[serde(default)]
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub(super) external: Option<External>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    #[serde(default)]
    pub(super) file: Option<PathBuf>,
    #[serde(default)]
    pub(super) environment: Option<String>,
    #[serde(default)]
    pub(super) content: Option<String>,
    #[serde(default)]
    pub(super) external: Option<External>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) labels: Option<serde_norway::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) template_driver: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Service {
    pub(super) image: Option<String>,
    #[serde(default)]
    pub(super) command: Option<Words>,
    #[serde(default)]
    pub(super) entrypoint: Option<Words>,
    #[serde(default)]
    pub(super) deploy: Deploy,
    #[serde(default)]
    pub(super) ports: Vec<Port>,
    #[serde(default)]
    pub(super) networks: Option<ServiceNetworks>,
    #[serde(default)]
    pub(super) environment: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    pub(super) env_file: Option<EnvFiles>,
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    pub(super) volumes: Vec<ServiceVolume>,
    #[serde(default)]
    pub(super) tmpfs: Option<OneOrMany>,
    #[serde(default)]
    pub(super) secrets: Vec<FileUse>,
    #[serde(default)]
    pub(super) configs: Vec<FileUse>,
    #[serde(default)]
    pub(super) healthcheck: Option<ComposeHealthcheck>,
    #[serde(default)]
    pub(super) user: Option<Scalar>,
    #[serde(default)]
    pub(super) group_add: Vec<Scalar>,
    #[serde(default)]
    pub(super) working_dir: Option<String>,
    #[serde(default)]
    pub(super) devices: Vec<ComposeDevice>,
    #[serde(default)]
    pub(super) device_cgroup_rules: Vec<String>,
    #[serde(default)]
    pub(super) privileged: bool,
    #[serde(default)]
    pub(super) cap_add: Vec<String>,
    #[serde(default)]
    pub(super) cap_drop: Vec<String>,
    #[serde(default)]
    pub(super) sysctls: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    pub(super) ulimits: BTreeMap<String, ComposeUlimit>,
    #[serde(default)]
    pub(super) init: Option<bool>,
    #[serde(default)]
    pub(super) read_only: bool,
    #[serde(default)]
    pub(super) tty: bool,
    #[serde(default)]
    pub(super) stop_grace_period: Option<String>,
    #[serde(default)]
    pub(super) stop_signal: Option<String>,
    #[serde(default)]
    pub(super) dns: Option<OneOrMany>,
    #[serde(default)]
    pub(super) dns_search: Option<OneOrMany>,
    #[serde(default)]
    pub(super) dns_opt: Vec<String>,
    #[serde(default)]
    pub(super) extra_hosts: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    pub(super) logging: Option<Logging>,
    #[serde(default)]
    pub(super) pids_limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Words {
    Line(String),
    List(Vec<Scalar>),
}

impl Words {
    pub(super) fn words(&self) -> Result<Vec<String>, String> {
        match self {
            Words::Line(l) => split_command(l),
            Words::List(items) => Ok(items.iter().map(Scalar::text).collect()),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum EnvFiles {
    One(String),
    Many(Vec<EnvFile>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum EnvFile {
    Path(String),
    Long {
        path: String,
        #[serde(default = "yes")]
        required: bool,
    },
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceNetwork {
    #[serde(default)]
    pub(super) aliases: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // swarm assigns addresses itself
    pub(super) ipv4_address: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) ipv6_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ServiceVolume {
    Short(String),
    Long(LongVolume),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongVolume {
    #[serde(rename = "type")]
    pub(super) kind: MountType,
    #[serde(default)]
    pub(super) source: Option<String>,
    pub(super) target: String,
    #[serde(default)]
    pub(super) read_only: bool,
    #[serde(default)]
    #[allow(dead_code)] // macOS only
    pub(super) consistency: Option<String>,
    #[serde(default)]
    pub(super) bind: Option<BindOptions>,
    #[serde(default)]
    pub(super) volume: Option<VolumeOptions>,
    #[serde(default)]
    pub(super) tmpfs: Option<TmpfsOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindOptions {
    #[serde(default)]
    pub(super) propagation: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) create_host_path: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VolumeOptions {
    #[serde(default)]
    pub(super) nocopy: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) subpath: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TmpfsOptions {
    #[serde(default)]
    pub(super) size: Option<Scalar>,
    #[serde(default)]
    pub(super) mode: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum FileUse {
    Short(String),
    Long(LongFileUse),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongFileUse {
    pub(super) source: String,
    #[serde(default)]
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) uid: Option<Scalar>,
    #[serde(default)]
    pub(super) gid: Option<Scalar>,
    #[serde(default)]
    pub(super) mode: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComposeHealthcheck {
    #[serde(default)]
    pub(super) test: Option<Words>,
    #[serde(default)]
    pub(super) interval: Option<String>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) retries: Option<u64>,
    #[serde(default)]
    pub(super) start_period: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // API 1.44; older engines refuse it
    pub(super) start_interval: Option<String>,
    #[serde(default)]
    pub(super) disable: bool,
}

/// `devices:` entries: `HOST[:CONTAINER[:PERMISSIONS]]`, or the long form.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ComposeDevice {
    Short(String),
    Long {
        source: String,
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        permissions: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ComposeUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Logging {
    #[serde(default)]
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Deploy {
    pub(super) mode: Option<ServiceMode>,
    pub(super) replicas: Option<u64>,
    pub(super) endpoint_mode: Option<EndpointMode>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    pub(super) placement: Placement,
    pub(super) update_config: Option<UpdateConfig>,
    pub(super) rollback_config: Option<UpdateConfig>,
    #[serde(default)]
    pub(super) resources: ComposeResources,
    pub(super) restart_policy: Option<ComposeRestart>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Placement {
    #[serde(default)]
    pub(super) constraints: Vec<String>,
    #[serde(default)]
    pub(super) preferences: Vec<Preference>,
    #[serde(default)]
    pub(super) max_replicas_per_node: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Preference {
    pub(super) spread: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateConfig {
    pub(super) parallelism: Option<u64>,
    pub(super) delay: Option<String>,
    pub(super) failure_action: Option<FailureAction>,
    pub(super) monitor: Option<String>,
    pub(super) order: Option<UpdateOrder>,
}

impl UpdateConfig {
    pub(super) fn policy(&self) -> UpdatePolicy {
        UpdatePolicy {
            parallelism: self.parallelism.unwrap_or(1),
            delay: self.delay.clone(),
            failure_action: self.failure_action.unwrap_or_default(),
            monitor: self.monitor.clone(),
            order: self.order.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ComposeResources {
    #[serde(default)]
    pub(super) limits: Amounts,
    #[serde(default)]
    pub(super) reservations: Amounts,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Amounts {
    pub(super) cpus: Option<Scalar>,
    pub(super) memory: Option<Scalar>,
    pub(super) pids: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComposeRestart {
    pub(super) condition: Option<RestartCondition>,
    pub(super) delay: Option<String>,
    pub(super) max_attempts: Option<u64>,
    pub(super) window: Option<String>,
}

/// A YAML scalar written as a number or a string (`cpus: 0.5`, `'0.5'`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Integer(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }

    /// A file mode: YAML 1.2 reads `0440` as the integer 440, so an
    /// integer whose digits are octal is read as octal, as Compose files
    /// mean it.
    pub(super) fn mode(&self) -> Result<u32, String> {
        let text = self.text();
        parse_octal(&text).or_else(|_| {
            text.parse::<u32>()
                .map_err(|_| format!("mode {text:?} is not an octal mode like 0440"))
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Port {
    Short(Scalar),
    Long(LongPort),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongPort {
    pub(super) target: u16,
    pub(super) published: Option<Scalar>,
    #[serde(default)]
    pub(super) protocol: PortProtocol,
    #[serde(default)]
    pub(super) mode: PublishMode,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) host_ip: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) name: Option<String>,
}
