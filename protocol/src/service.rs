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
use std::fmt;

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
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_memory: Option<String>,
}

/// What an operator wants a swarm to run under one name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub mode: ServiceMode,
    /// Replicated services only; 1 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Docker placement constraints (`node.labels.sensor==1`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `spread=node.labels.KEY`.
    #[serde(default)]
    pub placement_prefs: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The tasks' host name; Docker's templates work, so
    /// `{{.Node.Hostname}}` names each task after its device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Overlay networks, created when missing.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub update: UpdatePolicy,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub resources: Resources,
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
            mode: ServiceMode::default(),
            replicas: None,
            constraints: vec![],
            placement_prefs: vec![],
            env: BTreeMap::new(),
            hostname: None,
            ports: vec![],
            endpoint_mode: EndpointMode::default(),
            networks: vec![],
            update: UpdatePolicy::default(),
            restart: RestartPolicy::default(),
            resources: Resources::default(),
            stack: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_service_name(&self.name)?;
        validate_image(&self.image)?;
        if self.mode == ServiceMode::Global && self.replicas.is_some() {
            return Err(ValidationError::new(
                "replicas",
                "replicas is for replicated services; a global service runs one task on every eligible node",
            ));
        }
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
        if self.update.parallelism > 1000 {
            return Err(ValidationError::new(
                "update.parallelism",
                "at most 1000 tasks at once",
            ));
        }
        for (field, value) in [
            ("update.delay", &self.update.delay),
            ("update.monitor", &self.update.monitor),
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

    /// The name within its stack (`web` for `shop_web`), by which other
    /// services of the stack reach it.
    pub fn short_name(&self) -> &str {
        self.stack
            .as_deref()
            .and_then(|s| self.name.strip_prefix(s)?.strip_prefix('_'))
            .unwrap_or(&self.name)
    }
}

/// A service name as swarmkit accepts it: 1 to 63 letters and digits, with
/// single runs of '-' or '_' inside.
pub fn validate_service_name(name: &str) -> Result<(), ValidationError> {
    validate_object_name("name", "service", name)
}

fn validate_object_name(field: &str, what: &str, name: &str) -> Result<(), ValidationError> {
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

/// `spread=node.labels.KEY` (or `engine.labels.KEY`), the one placement
/// preference swarm has. Returns the descriptor.
pub fn parse_placement_pref(pref: &str) -> Result<&str, String> {
    let Some(descriptor) = pref.strip_prefix("spread=") else {
        return Err(format!(
            "placement preference {pref:?}: expected spread=node.labels.KEY"
        ));
    };
    let key = descriptor
        .strip_prefix("node.labels.")
        .or_else(|| descriptor.strip_prefix("engine.labels."));
    match key {
        Some(k) if !k.is_empty() => {
            crate::validate::validate_label_key(k).map_err(|e| e.message)?;
            Ok(descriptor)
        }
        _ => Err(format!(
            "placement preference {pref:?}: spread over node.labels.KEY or engine.labels.KEY"
        )),
    }
}

/// A Go-style duration (`1m30s`, `500ms`, `0s`) in nanoseconds, as Docker
/// accepts for update delays and restart windows.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "duration {s:?}: expected a number and a unit (ns, us, ms, s, m, h), like 10s or 1m30s"
        )
    };
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if total > 1e18 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(total as u64)
}

/// A memory size as Docker reads it (`512m`, `1G`, `1048576`, `64kb`):
/// binary multiples, case-insensitive, optional `b`. In bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("memory size {s:?}: expected a number with an optional unit b, k, m, g (like 128M)")
    };
    let lower = s.trim().to_ascii_lowercase();
    let unit_at = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..unit_at].parse().map_err(|_| bad())?;
    let scale: f64 = match lower[unit_at..].trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    if lower[unit_at..].matches('b').count() > 1 {
        return Err(bad());
    }
    let bytes = number * scale;
    if bytes < 4.0 * 1024.0 * 1024.0 {
        return Err(format!(
            "memory size {s:?} is below Docker's minimum of 4MiB"
        ));
    }
    Ok(bytes as u64)
}

/// CPUs as a decimal (`0.5`, `2`), in Docker's nano-CPUs.
pub fn parse_nano_cpus(s: &str) -> Result<i64, String> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("CPUs {s:?}: expected a decimal number like 0.5"))?;
    if !(cpus > 0.0 && cpus <= 1024.0) {
        return Err(format!("CPUs {s:?}: must be above 0 and at most 1024"));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// Reads one of this module's enums by its wire name (`global`,
/// `on-failure`, `stop-first`): the serde renames are the one spelling the
/// API, the CLI's flags and Compose files share.
pub fn parse_name<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    use serde::de::{value::Error, IntoDeserializer};
    T::deserialize(IntoDeserializer::<Error>::into_deserializer(value)).map_err(|e| e.to_string())
}

/// `--publish` in Docker's short (`8080:80/udp`) or long
/// (`mode=host,published=8080,target=80,protocol=udp`) syntax; the short
/// form may be preceded by `mode=host,` as in `[mode=host,]8080:80`.
pub fn parse_publish(s: &str) -> Result<PortSpec, String> {
    let bad = |m: &str| format!("--publish {s:?}: {m}");
    let mut mode = PublishMode::default();
    let mut published = None;
    let mut target = None;
    let mut protocol = PortProtocol::default();
    let port = |v: &str| -> Result<u16, String> {
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!("port {v:?} is not 1 to 65535"))),
        }
    };
    let proto = |v: &str| parse_name(v).map_err(|e| bad(&format!("protocol: {e}")));
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("mode", v)) => mode = parse_name(v).map_err(|e| bad(&format!("mode: {e}")))?,
            Some(("published", v)) => published = Some(port(v)?),
            Some(("target", v)) => target = Some(port(v)?),
            Some(("protocol", v)) => protocol = proto(v)?,
            Some((k, _)) => {
                return Err(bad(&format!(
                    "unknown field {k:?}; expected mode, published, target or protocol"
                )))
            }
            None => {
                let (ports, p) = match part.split_once('/') {
                    Some((ports, p)) => (ports, proto(p)?),
                    None => (part, PortProtocol::Tcp),
                };
                let (pub_port, target_port) = ports
                    .split_once(':')
                    .ok_or_else(|| bad("expected PUBLISHED:TARGET[/PROTOCOL]"))?;
                published = Some(port(pub_port)?);
                target = Some(port(target_port)?);
                protocol = p;
            }
        }
    }
    Ok(PortSpec {
        published: published.ok_or_else(|| bad("no published port"))?,
        target: target.ok_or_else(|| bad("no target port"))?,
        protocol,
        mode,
    })
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        };
        let mode = match self.mode {
            PublishMode::Host => "host",
            PublishMode::Ingress => "ingress",
        };
        write!(f, "{mode}:{}->{}/{proto}", self.published, self.target)
    }
}

// ---- the wire: desired and observed ----

/// A service as managers receive it: the spec and the swarm revision at
/// which it last changed, which the agent records in a label to tell
/// whether the running service is current.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredService {
    pub revision: u64,
    /// Swarm rolled this revision back (as a manager reported): not to be
    /// tried again until the operator deploys a new one.
    #[serde(default)]
    pub rolled_back: bool,
    pub spec: ServiceSpec,
}

/// One task as the raft leader sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskObserved {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The device whose node runs it, when the node is a known device's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub image: String,
    /// Swarm's task state: new, pending, assigned, preparing, starting,
    /// running, complete, shutdown, failed, rejected, orphaned, remove.
    pub state: String,
    pub desired_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the task last changed state (RFC 3339, the engine's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// One managed service as the raft leader sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceObserved {
    pub name: String,
    /// The server revision the running service was made from (absent when
    /// the service could not be created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The image the service runs now, as resolved (`REF@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tasks that should be running.
    pub desired_tasks: u64,
    /// Tasks that are running.
    pub running_tasks: u64,
    /// Swarm's update state: updating, paused, completed, rollback_started,
    /// rollback_paused, rollback_completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_state: Option<String>,
    /// During or after a rollback: the revision swarm rolled back from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_revision: Option<u64>,
    /// Why the manager could not create or update the service this pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// The latest error: a refused create or update, an update's message,
    /// or the newest failed task's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub tasks: Vec<TaskObserved>,
}

/// What the raft leader's agent posts after each reconcile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedReport {
    pub services: Vec<ServiceObserved>,
}

/// Where a service stands, judged by the server from the spec and the
/// latest observation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// No manager has reported this revision yet.
    Pending,
    /// Running the current revision, but not every task runs.
    Converging,
    /// The current revision runs on every task it should.
    Running,
    /// Swarm is rolling the update out.
    Updating,
    /// The update failed and swarm went back to the previous revision.
    RolledBack,
    /// The update failed and swarm paused it.
    Paused,
    /// The service could not be created or updated (see `error`).
    Failed,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Pending => "pending",
            ServiceStatus::Converging => "converging",
            ServiceStatus::Running => "running",
            ServiceStatus::Updating => "updating",
            ServiceStatus::RolledBack => "rolled_back",
            ServiceStatus::Paused => "paused",
            ServiceStatus::Failed => "failed",
        }
    }

    /// Judges a service from its revision and what was observed.
    pub fn judge(revision: u64, observed: Option<&ServiceObserved>) -> ServiceStatus {
        let Some(o) = observed else {
            return ServiceStatus::Pending;
        };
        let state = o.update_state.as_deref().unwrap_or_default();
        if state.starts_with("rollback") && o.rolled_back_revision == Some(revision) {
            return ServiceStatus::RolledBack;
        }
        if o.apply_error.is_some() {
            return ServiceStatus::Failed;
        }
        if o.revision != Some(revision) {
            return ServiceStatus::Pending;
        }
        match state {
            "paused" => ServiceStatus::Paused,
            "updating" => ServiceStatus::Updating,
            _ if o.running_tasks >= o.desired_tasks => ServiceStatus::Running,
            _ => ServiceStatus::Converging,
        }
    }

    /// Whether the service has stopped moving: running, or given up.
    pub fn is_settled(self) -> bool {
        !matches!(
            self,
            ServiceStatus::Pending | ServiceStatus::Converging | ServiceStatus::Updating
        )
    }
}

/// A service as operators see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub swarm: String,
    pub spec: ServiceSpec,
    pub revision: u64,
    pub status: ServiceStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// The latest observation, if a manager has reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ServiceObserved>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<i64>,
}

/// What a deploy did to one service.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployOutcome {
    Created,
    Updated,
    /// The spec was the same: nothing changed, no rollout.
    Unchanged,
    /// Pruned from its stack.
    Removed,
}

impl DeployOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployOutcome::Created => "created",
            DeployOutcome::Updated => "updated",
            DeployOutcome::Unchanged => "unchanged",
            DeployOutcome::Removed => "removed",
        }
    }
}

/// The answer to a service deploy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDeployed {
    pub outcome: DeployOutcome,
    pub service: ServiceView,
}

/// One service's part of a stack deploy or removal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackServiceOutcome {
    pub name: String,
    pub outcome: DeployOutcome,
}

/// `stack deploy`: every service of a stack, created or updated together.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackDeploy {
    pub services: Vec<ServiceSpec>,
    /// Remove services of the stack that the file no longer names.
    #[serde(default)]
    pub prune: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(10_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        for bad in ["", "10", "s", "10x", "1m-3s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("128M"), Ok(128 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("64mb"), Ok(64 << 20));
        assert_eq!(parse_memory("8388608"), Ok(8 << 20));
        for bad in ["", "12x", "1M extra", "1kbb", "1k"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_the_wire_spelling() {
        assert_eq!(parse_name("on-failure"), Ok(RestartCondition::OnFailure));
        assert_eq!(parse_name("start-first"), Ok(UpdateOrder::StartFirst));
        assert_eq!(parse_name("global"), Ok(ServiceMode::Global));
        let e = parse_name::<ServiceMode>("everywhere").expect_err("refused");
        assert!(e.contains("everywhere") && e.contains("global"), "{e}");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert!(parse_nano_cpus("0").is_err());
        assert!(parse_nano_cpus("half").is_err());
    }

    #[test]
    fn publish_short_and_long() {
        assert_eq!(
            parse_publish("mode=host,8080:80"),
            Ok(PortSpec {
                published: 8080,
                target: 80,
                protocol: PortProtocol::Tcp,
                mode: PublishMode::Host
            })
        );
        assert_eq!(
            parse_publish("9000:90/udp").map(|p| (p.protocol, p.mode)),
            Ok((PortProtocol::Udp, PublishMode::Host))
        );
        assert_eq!(
            parse_publish("mode=ingress,published=1,target=2,protocol=sctp").map(|p| (
                p.published,
                p.target,
                p.protocol,
                p.mode
            )),
            Ok((1, 2, PortProtocol::Sctp, PublishMode::Ingress))
        );
        for bad in [
            "80",
            "0:80",
            "a:80",
            "80:80/icmp",
            "mode=x,1:2",
            "foo=1",
            "target=1",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

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

    #[test]
    fn status_judgement() {
        let observed = |revision, running, desired, update: Option<&str>| ServiceObserved {
            name: "web".into(),
            revision,
            image: None,
            desired_tasks: desired,
            running_tasks: running,
            update_state: update.map(String::from),
            rolled_back_revision: None,
            apply_error: None,
            error: None,
            tasks: vec![],
        };
        use ServiceStatus::*;
        let judge = |o: ServiceObserved| ServiceStatus::judge(3, Some(&o));
        assert_eq!(ServiceStatus::judge(3, None), Pending);
        assert_eq!(judge(observed(Some(2), 1, 1, None)), Pending);
        assert_eq!(judge(observed(Some(3), 1, 2, None)), Converging);
        assert_eq!(judge(observed(Some(3), 2, 2, None)), Running);
        assert_eq!(judge(observed(Some(3), 0, 0, None)), Running);
        assert_eq!(judge(observed(Some(3), 2, 2, Some("updating"))), Updating);
        assert_eq!(judge(observed(Some(3), 2, 2, Some("paused"))), Paused);
        // A rollback of an older revision says nothing of this one.
        let mut old_rollback = observed(Some(2), 2, 2, Some("rollback_completed"));
        old_rollback.rolled_back_revision = Some(1);
        assert_eq!(judge(old_rollback.clone()), Pending);
        old_rollback.rolled_back_revision = Some(3);
        assert_eq!(judge(old_rollback), RolledBack);
        let mut refused = observed(None, 0, 0, None);
        refused.apply_error = Some("no such network".into());
        assert_eq!(judge(refused), Failed);
        assert!(Running.is_settled() && RolledBack.is_settled() && !Updating.is_settled());
    }
}
