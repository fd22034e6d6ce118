//! What shapes a service's containers beyond image and environment:
//! mounts, secrets and configs, the healthcheck, ulimits, logging. The
//! types follow Engine API 1.41's `ContainerSpec`, in the notation people
//! write on Docker's command line and in Compose files (durations as `30s`,
//! sizes as `64m`, modes in octal).

use super::{parse_duration, parse_memory_any};
use crate::validate::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    #[default]
    Volume,
    Tmpfs,
}

/// A mount, as `--mount type=...` describes it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MountSpec {
    #[serde(rename = "type", default)]
    pub kind: MountType,
    /// A host path (bind) or a volume name (absent: an anonymous volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Bind mounts: private, rprivate, shared, rshared, slave, rslave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_propagation: Option<String>,
    /// Volumes: the driver that makes the volume on each device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_labels: BTreeMap<String, String>,
    /// Volumes: do not copy the image's files into a new volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub volume_nocopy: bool,
    /// Tmpfs: size, like `64m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<String>,
    /// Tmpfs: permission bits, like 1777 (octal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
}

/// A secret or config given to the tasks as a file (`--secret`,
/// `--config`). The source names the server's secret or config, which the
/// leader agent turns into the swarm object of its current version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FileRef {
    pub source: String,
    /// Secrets: a file name under /run/secrets or an absolute path;
    /// configs: an absolute path. Defaults to the source's name
    /// (`/run/secrets/NAME`, `/NAME`), as Docker's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// Permission bits (octal in flags and Compose; 0444 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl FileRef {
    /// Where the file appears inside the task.
    pub fn target_or_default(&self, is_secret: bool) -> String {
        match (&self.target, is_secret) {
            (Some(t), _) => t.clone(),
            (None, true) => self.source.clone(),
            (None, false) => format!("/{}", self.source),
        }
    }
}

/// A container healthcheck (`--health-*`, Compose `healthcheck`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Healthcheck {
    /// `["CMD", ARG...]`, `["CMD-SHELL", "command"]`, or `["NONE"]` to
    /// switch off the image's own; empty keeps the image's test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The resource names `--ulimit` knows (setrlimit's, without RLIMIT_).
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// How the tasks' output is logged (`--log-driver`, `--log-opt`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDriver {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(field, message))
}

pub(super) fn validate_mounts(mounts: &[MountSpec]) -> Result<(), ValidationError> {
    let mut targets = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.target.starts_with('/') {
            return err(
                field,
                format!("target {:?} must be an absolute path", m.target),
            );
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return err(field, format!("target {} is mounted twice", m.target));
        }
        let volume_only = m.volume_driver.is_some()
            || !m.volume_options.is_empty()
            || !m.volume_labels.is_empty()
            || m.volume_nocopy;
        if volume_only && m.kind != MountType::Volume {
            return err(field, "volume options apply to type=volume only");
        }
        if m.bind_propagation.is_some() && m.kind != MountType::Bind {
            return err(field, "bind-propagation applies to type=bind only");
        }
        if (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some()) && m.kind != MountType::Tmpfs {
            return err(field, "tmpfs options apply to type=tmpfs only");
        }
        match m.kind {
            MountType::Bind => {
                match &m.source {
                    Some(s) if s.starts_with('/') => {}
                    Some(s) => {
                        return err(
                            field,
                            format!("bind source {s:?} must be an absolute path on the device"),
                        )
                    }
                    None => return err(field, "a bind mount needs a source path"),
                }
                if let Some(p) = &m.bind_propagation {
                    const MODES: &[&str] = &[
                        "private", "rprivate", "shared", "rshared", "slave", "rslave",
                    ];
                    if !MODES.contains(&p.as_str()) {
                        return err(
                            field,
                            format!("bind-propagation {p:?} is not one of {}", MODES.join(", ")),
                        );
                    }
                }
            }
            MountType::Volume => {
                if let Some(s) = &m.source {
                    if s.starts_with('/') {
                        return err(
                            field,
                            format!("volume source {s:?} is a path; use type=bind for host paths"),
                        );
                    }
                    super::validate_object_name(&field, "volume", s)?;
                }
            }
            MountType::Tmpfs => {
                if m.source.is_some() {
                    return err(field, "a tmpfs mount has no source");
                }
                if let Some(size) = &m.tmpfs_size {
                    parse_memory_any(size).map_err(|e| ValidationError::new(&field, e))?;
                }
                if m.tmpfs_mode.is_some_and(|mode| mode > 0o7777) {
                    return err(
                        field,
                        "tmpfs-mode must be octal permission bits, at most 7777",
                    );
                }
            }
        }
    }
    Ok(())
}

pub(super) fn validate_file_refs(
    list: &str,
    refs: &[FileRef],
    is_secret: bool,
) -> Result<(), ValidationError> {
    let mut targets = BTreeSet::new();
    for (i, r) in refs.iter().enumerate() {
        let field = format!("{list}[{i}]");
        let what = if is_secret { "secret" } else { "config" };
        super::validate_object_name(&field, what, &r.source)?;
        let target = r.target_or_default(is_secret);
        if target.is_empty() || target.contains('\0') || target.split('/').any(|c| c == "..") {
            return err(
                field,
                format!("target {target:?} is not a usable file path"),
            );
        }
        if !is_secret && !target.starts_with('/') {
            return err(
                field,
                format!("config target {target:?} must be an absolute path"),
            );
        }
        if !targets.insert(target.clone()) {
            return err(field, format!("target {target} is used twice"));
        }
        for (name, id) in [("uid", &r.uid), ("gid", &r.gid)] {
            if let Some(id) = id {
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                    return err(field, format!("{name} {id:?} must be a number"));
                }
            }
        }
        if r.mode.is_some_and(|m| m > 0o777) {
            return err(field, "mode must be octal permission bits, at most 0777");
        }
    }
    Ok(())
}

pub(super) fn validate_healthcheck(h: &Healthcheck) -> Result<(), ValidationError> {
    match h.test.first().map(String::as_str) {
        None | Some("NONE") if h.test.len() <= 1 => {}
        Some("CMD") | Some("CMD-SHELL") if h.test.len() >= 2 => {}
        _ => {
            return err(
                "healthcheck.test",
                format!(
                    "{:?}: expected [\"CMD\", ARG...], [\"CMD-SHELL\", COMMAND] or [\"NONE\"]",
                    h.test
                ),
            )
        }
    }
    for (field, value) in [
        ("healthcheck.interval", &h.interval),
        ("healthcheck.timeout", &h.timeout),
        ("healthcheck.start_period", &h.start_period),
    ] {
        if let Some(v) = value {
            let nanos = parse_duration(v).map_err(|m| ValidationError::new(field, m))?;
            // The engine's own floor for these.
            if nanos != 0 && nanos < 1_000_000 {
                return err(field, format!("{v} is below the engine's minimum of 1ms"));
            }
        }
    }
    Ok(())
}

pub(super) fn validate_ulimits(ulimits: &[Ulimit]) -> Result<(), ValidationError> {
    let mut names = BTreeSet::new();
    for (i, u) in ulimits.iter().enumerate() {
        let field = format!("ulimits[{i}]");
        if !ULIMIT_NAMES.contains(&u.name.as_str()) {
            return err(
                field,
                format!(
                    "unknown ulimit {:?}; known are {}",
                    u.name,
                    ULIMIT_NAMES.join(", ")
                ),
            );
        }
        if u.soft > u.hard && u.hard >= 0 {
            return err(
                field,
                format!(
                    "{}: soft limit {} is above hard limit {}",
                    u.name, u.soft, u.hard
                ),
            );
        }
        if !names.insert(&u.name) {
            return err(field, format!("ulimit {} is given twice", u.name));
        }
    }
    Ok(())
}

/// A Linux capability as Docker takes it: `NET_ADMIN`, `CAP_NET_ADMIN` or
/// `ALL`.
pub(super) fn validate_capability(field: &str, cap: &str) -> Result<(), ValidationError> {
    let name = cap.strip_prefix("CAP_").unwrap_or(cap);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return err(
            field,
            format!("capability {cap:?} must be upper case, like NET_ADMIN or CAP_SYS_TIME"),
        );
    }
    Ok(())
}

/// `--host HOST:IP` (Docker's extra hosts); answers (host, ip).
pub fn parse_host_entry(entry: &str) -> Result<(&str, std::net::IpAddr), String> {
    let (host, ip) = entry
        .split_once(':')
        .ok_or_else(|| format!("host entry {entry:?}: expected HOST:IP"))?;
    let ip = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("host entry {entry:?}: {ip:?} is not an IP address"))?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "host entry {entry:?}: the host name is empty or has spaces"
        ));
    }
    Ok((host, ip))
}

/// A stop signal: a name (`SIGTERM`, `TERM`) or a number.
pub(super) fn validate_signal(signal: &str) -> Result<(), ValidationError> {
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    let ok = (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'))
        || signal.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
    if ok {
        Ok(())
    } else {
        err(
            "stop_signal",
            format!("{signal:?} is not a signal name (SIGTERM) or number"),
        )
    }
}
