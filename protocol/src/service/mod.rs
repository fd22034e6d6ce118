//! Services: what operators ask a swarm to run, what the managers see it
//! running, and the Docker-style option syntax (`--publish`, durations,
//! memory sizes, CPUs) parsed once for the CLI, the server and the agent.
//!
//! Defaults differ from Docker's in one place, on purpose: ports publish in
//! host mode and services use DNS round robin (`dnsrr`) unless told
//! otherwise. Fog devices often run kernels without IPVS, where Docker's
//! routing mesh and virtual IPs do not work at all, and a device answering
//! on its own port is what a fleet of sensors wants anyway.

use crate::constraint::Constraint;
use crate::validate::ValidationError;
use crate::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod options;
mod task;
mod wire;
pub use options::*;
pub use task::*;
pub use wire::*;

/// Service label marking what fogswarm manages; its value is the swarm name.
/// The agent changes and removes only services carrying it.
pub const MANAGED_LABEL: &str = "io.fogswarm.managed";
/// Service label holding the server revision a service was last made from.
pub const REVISION_LABEL: &str = "io.fogswarm.revision";
/// Docker's own stack label, so `docker stack ls` on a device shows stacks
/// deployed through fogswarm.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

const MAX_NAME_LEN: usize = 63;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
    /// Runs `replicas` tasks to completion (`max_concurrent` at a time):
    /// one-off work on a fleet, like collecting data.
    ReplicatedJob,
    /// Runs one task to completion on every eligible node (flash firmware).
    GlobalJob,
}

impl ServiceMode {
    /// Jobs run to completion instead of being kept running.
    pub fn is_job(self) -> bool {
        matches!(self, ServiceMode::ReplicatedJob | ServiceMode::GlobalJob)
    }

    /// One task per eligible node rather than a count.
    pub fn is_global(self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Replicated => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// `global`, `replicated 3`, `replicated-job 5`: as tables show it.
    pub fn describe(self, replicas: Option<u64>) -> String {
        if self.is_global() {
            self.as_str().to_string()
        } else {
            format!("{} {}", self.as_str(), replicas.unwrap_or(1))
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Vip,
    /// The default here (Docker's is vip): works without IPVS.
    #[default]
    Dnsrr,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// The default here (Docker's is ingress): each task's device answers on
    /// the published port itself.
    #[default]
    Host,
    Ingress,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// A published port.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
    #[serde(default)]
    pub mode: PublishMode,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// How a change rolls out: Docker's update config.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Tasks updated at once; 0 means all at once.
    #[serde(default = "one")]
    pub parallelism: u64,
    /// Pause between batches, as a duration (`10s`, `1m30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long each new task is watched for failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default)]
    pub order: UpdateOrder,
}

fn one() -> u64 {
    1
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            parallelism: 1,
            delay: None,
            failure_action: FailureAction::default(),
            monitor: None,
            order: UpdateOrder::default(),
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartPolicy {
    #[serde(default)]
    pub condition: RestartCondition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// Limits and reservations, in Docker's notation: CPUs as a decimal
/// (`0.5`), memory as a size (`128M`, `1g`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_memory: Option<String>,
    /// At most this many processes per task (`--limit-pids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_pids: Option<u64>,
}

/// What an operator wants a swarm to run under one name: Engine API
/// 1.41's service spec in Docker's notation. Fields left out take Docker's
/// defaults (or the image's, for command, user, healthcheck and the like).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub mode: ServiceMode,
    /// Replicated services and jobs only; 1 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Replicated jobs: tasks running at once (default: all replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Replaces the image's entrypoint (`--entrypoint`, Compose
    /// `entrypoint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Replaces the image's command: the arguments after the image
    /// (Compose `command`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `USER[:GROUP]` or numeric ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Supplementary groups (`--group`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Docker placement constraints (`node.labels.sensor==1`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `spread=node.labels.KEY`.
    #[serde(default)]
    pub placement_prefs: Vec<String>,
    /// Tasks per node at most (`--max-replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Service labels (`--label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels on every task's container (`--container-label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// The tasks' host name; Docker's templates work, so
    /// `{{.Node.Hostname}}` names each task after its device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// Run an init process as PID 1 (reaps zombies, forwards signals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Time between the stop signal and SIGKILL (Docker's default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Name servers (`--dns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// Extra /etc/hosts entries as `HOST:IP` (`--host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Overlay networks, created when missing.
    #[serde(default)]
    pub networks: Vec<String>,
    /// More names per network for the tasks (`--network name=N,alias=A`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_aliases: BTreeMap<String, Vec<String>>,
    /// Driver options for networks the leader creates for this service
    /// (Compose `networks.NAME.driver_opts`); a network that exists keeps
    /// its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_options: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub update: UpdatePolicy,
    /// How a failed update is undone; when absent, it goes back the way
    /// the update came and pauses if that fails too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<UpdatePolicy>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
    /// Device nodes the tasks get (`--device`), which swarm itself cannot
    /// give: granted by fogswarm's runtime on the devices, only where the
    /// swarm allows them (see [`crate::hardware`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::hardware::DeviceRequest>,
    /// `--device-cgroup-rule`: access by device number (`c 89:* rwm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// Every capability and device, no seccomp or AppArmor profile: only
    /// in a swarm that allows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Bumped by `service update --force` to restart every task with an
    /// otherwise unchanged spec.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub force_update: u64,
    /// Set by `stack deploy`: the stack this service belongs to. Within a
    /// stack, a service is also reachable by its name without the
    /// `STACK_` prefix, as with `docker stack deploy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl ServiceSpec {
    /// A replicated service of one task with every default.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            image: image.into(),
            ..Default::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_service_name(&self.name)?;
        validate_image(&self.image)?;
        if self.mode.is_global() && self.replicas.is_some() {
            return Err(ValidationError::new(
                "replicas",
                "replicas is for replicated services; a global service runs one task on every eligible node",
            ));
        }
        if self.max_concurrent.is_some() && self.mode != ServiceMode::ReplicatedJob {
            return Err(ValidationError::new(
                "max_concurrent",
                "max-concurrent is for replicated jobs (--mode replicated-job)",
            ));
        }
        if self.max_replicas.is_some() && self.mode.is_global() {
            return Err(ValidationError::new(
                "max_replicas",
                "max-replicas limits replicated services; a global one runs one task per node",
            ));
        }
        self.validate_container()?;
        for (i, c) in self.constraints.iter().enumerate() {
            Constraint::parse(c)
                .map_err(|e| ValidationError::new(format!("constraints[{i}]"), e.to_string()))?;
        }
        for (i, p) in self.placement_prefs.iter().enumerate() {
            parse_placement_pref(p)
                .map_err(|m| ValidationError::new(format!("placement_prefs[{i}]"), m))?;
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "env",
                    format!("environment variable name {key:?} must be non-empty, without '=' or control characters"),
                ));
            }
        }
        if let Some(h) = &self.hostname {
            if h.is_empty()
                || h.len() > 253
                || h.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ValidationError::new(
                    "hostname",
                    "hostname must be 1 to 253 characters without spaces",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let field = format!("ports[{i}]");
            if p.published == 0 || p.target == 0 {
                return Err(ValidationError::new(field, "ports must be 1 to 65535"));
            }
            if !seen.insert((p.published, p.protocol as u8)) {
                return Err(ValidationError::new(
                    field,
                    format!("port {} is published twice", p.published),
                ));
            }
            if p.mode == PublishMode::Ingress && self.endpoint_mode == EndpointMode::Dnsrr {
                return Err(ValidationError::new(
                    field,
                    "ingress publishing needs endpoint mode vip; use mode=host with dnsrr",
                ));
            }
        }
        let mut networks = std::collections::BTreeSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            validate_object_name(&format!("networks[{i}]"), "network", n)?;
            if !networks.insert(n) {
                return Err(ValidationError::new(
                    format!("networks[{i}]"),
                    format!("network {n} is named twice"),
                ));
            }
        }
        validate_update_policy("update", &self.update)?;
        for (field, value) in [
            ("restart.delay", &self.restart.delay),
            ("restart.window", &self.restart.window),
        ] {
            if let Some(v) = value {
                parse_duration(v).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        for (field, value) in [
            ("resources.limit_cpus", &self.resources.limit_cpus),
            ("resources.reserve_cpus", &self.resources.reserve_cpus),
        ] {
            if let Some(v) = value {
                parse_nano_cpus(v).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        for (field, value) in [
            ("resources.limit_memory", &self.resources.limit_memory),
            ("resources.reserve_memory", &self.resources.reserve_memory),
        ] {
            if let Some(v) = value {
                parse_memory(v).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        for (network, aliases) in &self.network_aliases {
            if !self.networks.contains(network) {
                return Err(ValidationError::new(
                    "network_aliases",
                    format!("aliases given for network {network}, which the service does not join"),
                ));
            }
            for a in aliases {
                validate_object_name("network_aliases", "alias", a)?;
            }
        }
        if let Some(r) = &self.rollback {
            validate_update_policy("rollback", r)?;
        }
        if let Some(log) = &self.log_driver {
            if log.name.is_empty() || log.name.chars().any(|c| c.is_whitespace()) {
                return Err(ValidationError::new(
                    "log_driver",
                    format!("log driver {:?} is not a driver name", log.name),
                ));
            }
        }
        if let Some(stack) = &self.stack {
            validate_object_name("stack", "stack", stack)?;
            if !self.name.starts_with(&format!("{stack}_")) {
                return Err(ValidationError::new(
                    "name",
                    format!("a service of stack {stack} is named {stack}_NAME"),
                ));
            }
        }
        Ok(())
    }

    /// Everything about the containers themselves.
    fn validate_container(&self) -> Result<(), ValidationError> {
        let no_empty =
            |field: &str, list: &[String]| match list.iter().position(|a| a.contains('\0')) {
                Some(i) => Err(ValidationError::new(
                    format!("{field}[{i}]"),
                    "contains a NUL character",
                )),
                None => Ok(()),
            };
        no_empty("entrypoint", &self.entrypoint)?;
        no_empty("command", &self.command)?;
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(ValidationError::new(
                    "workdir",
                    format!("{w:?} must be an absolute path"),
                ));
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.contains(char::is_whitespace) {
                return Err(ValidationError::new(
                    "user",
                    format!("{u:?}: expected USER[:GROUP] or UID[:GID]"),
                ));
            }
        }
        for (field, map) in [
            ("labels", &self.labels),
            ("container_labels", &self.container_labels),
            ("sysctls", &self.sysctls),
        ] {
            if let Some(k) = map.keys().find(|k| k.is_empty() || k.contains(['=', ' '])) {
                return Err(ValidationError::new(
                    field,
                    format!("key {k:?} must be non-empty, without '=' or spaces"),
                ));
            }
        }
        if let Some(k) = self.labels.keys().find(|k| k.starts_with("io.fogswarm.")) {
            return Err(ValidationError::new(
                "labels",
                format!("label {k} is fogswarm's own; choose another prefix"),
            ));
        }
        validate_mounts(&self.mounts)?;
        validate_file_refs("secrets", &self.secrets, true)?;
        validate_file_refs("configs", &self.configs, false)?;
        if let Some(h) = &self.healthcheck {
            validate_healthcheck(h)?;
        }
        for (list, caps) in [("cap_add", &self.cap_add), ("cap_drop", &self.cap_drop)] {
            for (i, c) in caps.iter().enumerate() {
                validate_capability(&format!("{list}[{i}]"), c)?;
            }
        }
        validate_ulimits(&self.ulimits)?;
        if let Some(g) = &self.stop_grace_period {
            parse_duration(g).map_err(|m| ValidationError::new("stop_grace_period", m))?;
        }
        if let Some(signal) = &self.stop_signal {
            validate_signal(signal)?;
        }
        for (i, ns) in self.dns.iter().enumerate() {
            if ns.parse::<std::net::IpAddr>().is_err() {
                return Err(ValidationError::new(
                    format!("dns[{i}]"),
                    format!("{ns:?} is not an IP address"),
                ));
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            parse_host_entry(h).map_err(|m| ValidationError::new(format!("hosts[{i}]"), m))?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            d.validate()
                .map_err(|m| ValidationError::new(format!("devices[{i}]"), m))?;
        }
        for (i, r) in self.device_cgroup_rules.iter().enumerate() {
            crate::hardware::parse_cgroup_rule(r)
                .map_err(|m| ValidationError::new(format!("device_cgroup_rules[{i}]"), m))?;
        }
        if self.resources.limit_pids == Some(0) {
            return Err(ValidationError::new(
                "resources.limit_pids",
                "a limit of 0 processes would stop every task; leave it out for no limit",
            ));
        }
        Ok(())
    }

    /// Whether the tasks need a grant from fogswarm's runtime.
    pub fn wants_hardware(&self) -> bool {
        !self.devices.is_empty() || !self.device_cgroup_rules.is_empty() || self.privileged
    }

    /// The name within its stack (`web` for `shop_web`), by which other
    /// services of the stack reach it.
    pub fn short_name(&self) -> &str {
        self.stack
            .as_deref()
            .and_then(|s| self.name.strip_prefix(s)?.strip_prefix('_'))
            .unwrap_or(&self.name)
    }
}

fn validate_update_policy(prefix: &str, u: &UpdatePolicy) -> Result<(), ValidationError> {
    if u.parallelism > 1000 {
        return Err(ValidationError::new(
            format!("{prefix}.parallelism"),
            "at most 1000 tasks at once",
        ));
    }
    for (field, value) in [("delay", &u.delay), ("monitor", &u.monitor)] {
        if let Some(v) = value {
            parse_duration(v).map_err(|m| ValidationError::new(format!("{prefix}.{field}"), m))?;
        }
    }
    Ok(())
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A service name as swarmkit accepts it: 1 to 63 letters and digits, with
/// single runs of '-' or '_' inside.
pub fn validate_service_name(name: &str) -> Result<(), ValidationError> {
    validate_object_name("name", "service", name)
}

pub(crate) fn validate_object_name(
    field: &str,
    what: &str,
    name: &str,
) -> Result<(), ValidationError> {
    let err = |m: String| Err(ValidationError::new(field, m));
    if name.is_empty() {
        return err(format!("{what} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return err(format!(
            "{what} name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return err(format!(
            "{what} name {name:?} has {c:?} at position {i}; allowed are letters, digits, '-', '_' and '.'"
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return err(format!(
            "{what} name {name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// An image reference by the distribution grammar:
/// `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`, path components in lower case.
pub fn validate_image(image: &str) -> Result<(), ValidationError> {
    let err = |m: String| Err(ValidationError::new("image", m));
    if image.is_empty() {
        return err("image is empty".into());
    }
    if image.len() > 255 {
        return err("image reference is longer than 255 characters".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return err(format!(
                "image {image:?}: digest {d:?} is not ALGORITHM:HEX (sha256:...)"
            ));
        }
    }
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return err(format!(
                "image {image:?}: tag {t:?} must be letters, digits, '_', '.' and '-', at most 128"
            ));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let host = components.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, ""));
        let host_ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            && port.chars().all(|c| c.is_ascii_digit());
        if !host_ok {
            return err(format!(
                "image {image:?}: registry host {host:?} is not valid"
            ));
        }
    }
    for c in components {
        let ok = !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            });
        if !ok {
            return err(format!(
                "image {image:?}: repository component {c:?} must be lower-case letters, digits and '.', '_', '-' inside"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images() {
        for good in [
            "fog-hello",
            "library/alpine:3.20",
            "10.90.0.1:5000/fog-hello:v1",
            "localhost/x/y_z:latest",
            "reg.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(validate_image(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Fog",
            "a b",
            "x:",
            "x:-t",
            "reg:5000/",
            "a//b",
            "x@sha256:zz",
        ] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let ok = ServiceSpec::new("web", "fog-hello:v1");
        assert_eq!(ok.validate(), Ok(()));
        let field = |s: ServiceSpec| s.validate().expect_err("refused").field;
        let mut s = ok.clone();
        s.constraints = vec!["node.labels.a==1".into(), "node.labels.b=1".into()];
        assert_eq!(field(s), "constraints[1]");
        let mut s = ok.clone();
        s.mode = ServiceMode::Global;
        s.replicas = Some(2);
        assert_eq!(field(s), "replicas");
        let mut s = ok.clone();
        s.placement_prefs = vec!["pack=node.labels.x".into()];
        assert_eq!(field(s), "placement_prefs[0]");
        let mut s = ok.clone();
        s.ports = vec![parse_publish("mode=ingress,80:80").expect("port")];
        assert_eq!(field(s), "ports[0]");
        let mut s = ok.clone();
        s.update.delay = Some("soon".into());
        assert_eq!(field(s), "update.delay");
        let mut s = ok.clone();
        s.resources.limit_memory = Some("lots".into());
        assert_eq!(field(s), "resources.limit_memory");
        let mut s = ok.clone();
        s.name = "-web".into();
        assert_eq!(field(s), "name");
        let mut s = ok.clone();
        s.stack = Some("shop".into());
        assert_eq!(field(s), "name");
        let mut s = ok;
        s.name = "shop_web".into();
        s.stack = Some("shop".into());
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.short_name(), "web");
    }
}
