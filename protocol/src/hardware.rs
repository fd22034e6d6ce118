//! Hardware for swarm services: the device nodes a service asks for, the
//! classes of device node the agents report as facts, and the signed
//! grant that lets a device's runtime hand them to a task.
//!
//! Swarm has no `--device`. fogswarm's answer: the server signs what an
//! operator allowed a service to get (a [`Grant`], bound to swarm and
//! service name) with the swarm's Ed25519 key; the leader puts the signed
//! grant in a container label of the service's tasks; the runtime in
//! front of runc on each device checks the signature with the swarm's
//! public key before adding the nodes to the container's OCI spec.
//! Nothing else a container carries (its ENV, an image label without a
//! valid signature) can widen what it gets.

use crate::api::Facts;
use crate::validate::ValidationError;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The container label carrying a service's signed grant.
pub const GRANT_LABEL: &str = "io.fogswarm.grant";

/// The fact an agent reports when its engine runs containers through
/// fogswarm's runtime (the only way a grant takes effect).
pub const RUNTIME_FACT: &str = "device_runtime";

/// The fact naming the grant key a device holds ([`key_id`]): the server
/// places hardware services only where it is the swarm's, so a task never
/// starts where its grant cannot be checked yet.
pub const KEY_FACT: &str = "grant_key";

/// A short, public id of a grant key (as [`public_key_text`] writes it):
/// the first 16 hex digits of the SHA-256 of the text.
pub fn key_id(public_key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The runtime's name in the engine's daemon.json.
pub const RUNTIME_NAME: &str = "fogswarm";

/// The node label (under the facts' `fog.` prefix) the server sets on
/// every node that has what a hardware service asks for; the service's
/// implicit constraint.
pub fn placement_label(service: &str) -> String {
    format!("fog.grant.{service}")
}

/// The classes of device node the agents report, as
/// `(fact key, directory, name prefixes)`. USB nodes live one level down
/// (`/dev/bus/usb/BUS/DEV`) and are reported as `BUS-DEV`.
pub const CLASSES: &[(&str, &str, &[&str])] = &[
    ("serial", "/dev", &["ttyUSB", "ttyACM", "ttyAMA"]),
    ("video", "/dev", &["video"]),
    ("i2c", "/dev", &["i2c-"]),
    ("gpio", "/dev", &["gpiochip"]),
    ("spi", "/dev", &["spidev"]),
    ("usb", "/dev/bus/usb", &[""]),
];

/// The class a device path (or pattern) belongs to, by its literal start.
pub fn class_of(path: &str) -> Option<&'static str> {
    CLASSES.iter().find_map(|(class, dir, prefixes)| {
        let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
        prefixes
            .iter()
            .any(|p| !p.is_empty() && rest.starts_with(p) || p.is_empty() && !rest.is_empty())
            .then_some(*class)
    })
}

/// The device paths a fact value names for a class (the inverse of how
/// the agent writes them: names joined by '.', USB as `BUS-DEV`).
pub fn paths_of(class: &str, value: &str) -> Vec<String> {
    let names = value.split('.').filter(|n| !n.is_empty());
    match class {
        "usb" => names
            .filter_map(|n| n.split_once('-'))
            .map(|(bus, dev)| format!("/dev/bus/usb/{bus}/{dev}"))
            .collect(),
        // spidev names hold a dot themselves (spidev0.1): rejoin pairs.
        "spi" => {
            let parts: Vec<&str> = value.split('.').collect();
            parts
                .chunks(2)
                .map(|c| format!("/dev/{}", c.join(".")))
                .collect()
        }
        _ => names.map(|n| format!("/dev/{n}")).collect(),
    }
}

/// Shell-style matching of one path against a pattern: `*` any run of
/// characters but '/', `?` one such character; everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => t.first().is_some_and(|c| *c != '/') && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

pub fn is_pattern(path: &str) -> bool {
    path.contains(['*', '?'])
}

/// One `--device HOST[:CONTAINER[:PERMISSIONS]]`, as `docker run` takes it;
/// HOST may be a pattern (`/dev/video*`), whose matches keep their paths.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Some of `rwm` (read, write, mknod); Docker's default is all three.
    #[serde(default = "all_permissions")]
    pub permissions: String,
}

fn all_permissions() -> String {
    "rwm".into()
}

fn valid_permissions(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 3
        && p.chars().all(|c| "rwm".contains(c))
        && p.chars().collect::<std::collections::BTreeSet<_>>().len() == p.len()
}

/// `HOST`, `HOST:CONTAINER`, `HOST:PERMISSIONS` or
/// `HOST:CONTAINER:PERMISSIONS`, as Docker reads `--device`.
pub fn parse_device(s: &str) -> Result<DeviceRequest, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [h] => (*h, None, all_permissions()),
        [h, p] if valid_permissions(p) => (*h, None, p.to_string()),
        [h, c] => (*h, Some(c.to_string()), all_permissions()),
        [h, c, p] => (*h, Some(c.to_string()), p.to_string()),
        _ => {
            return Err(format!(
                "{s:?}: expected HOST[:CONTAINER[:PERMISSIONS]], like /dev/ttyUSB0:/dev/ttyUSB0:rwm"
            ))
        }
    };
    let request = DeviceRequest {
        host: host.to_string(),
        container,
        permissions,
    };
    request.validate().map_err(|e| format!("{s:?}: {e}"))?;
    Ok(request)
}

impl DeviceRequest {
    pub fn validate(&self) -> Result<(), String> {
        let host = &self.host;
        if !host.starts_with("/dev/") || host.contains("/../") || host.ends_with("/..") {
            return Err(format!("{host} must be a path under /dev"));
        }
        let Some(class) = class_of(host) else {
            return Err(format!(
                "{host} is not a device node fogswarm tracks, so it cannot place the service by it; tracked: {}",
                tracked()
            ));
        };
        if class == "usb" && host.trim_start_matches("/dev/bus/usb/").split('/').count() != 2 {
            return Err(format!("{host}: USB nodes are /dev/bus/usb/BUS/DEVICE"));
        }
        if let Some(c) = &self.container {
            if !c.starts_with('/') || c.contains(['*', '?']) {
                return Err(format!("container path {c} must be an absolute path"));
            }
            if is_pattern(host) {
                return Err(format!(
                    "{host} is a pattern: its matches keep their paths, so give no container path"
                ));
            }
        }
        if !valid_permissions(&self.permissions) {
            return Err(format!(
                "permissions {:?} must be some of r, w, m (read, write, mknod)",
                self.permissions
            ));
        }
        Ok(())
    }

    /// Whether a device with these facts has what this asks for: a node of
    /// its class that matches.
    pub fn present_in(&self, facts: &Facts) -> bool {
        let Some(class) = class_of(&self.host) else {
            return false;
        };
        facts
            .get(class)
            .is_some_and(|v| paths_of(class, v).iter().any(|p| glob_match(&self.host, p)))
    }
}

fn tracked() -> String {
    CLASSES
        .iter()
        .map(|(class, dir, prefixes)| {
            let paths: Vec<String> = prefixes
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        format!("{dir}/*/*")
                    } else {
                        format!("{dir}/{p}*")
                    }
                })
                .collect();
            format!("{class} ({})", paths.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `--device-cgroup-rule` (`c 89:* rwm`): access to device numbers
/// without a node, for devices that come and go (a USB device's minor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRule {
    /// `a` (all), `b` (block) or `c` (char).
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

pub fn parse_cgroup_rule(s: &str) -> Result<CgroupRule, String> {
    let bad = || format!("{s:?}: expected TYPE MAJOR:MINOR ACCESS, like 'c 89:* rwm'");
    let fields: Vec<&str> = s.split_whitespace().collect();
    let [kind, numbers, access] = fields.as_slice() else {
        return Err(bad());
    };
    let kind = match *kind {
        "a" | "b" | "c" => kind.chars().next().ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
    let number = |n: &str| -> Result<Option<i64>, String> {
        match n {
            "*" => Ok(None),
            n => n.parse::<u32>().map(|v| Some(v as i64)).map_err(|_| bad()),
        }
    };
    if !valid_permissions(access) {
        return Err(bad());
    }
    Ok(CgroupRule {
        kind,
        major: number(major)?,
        minor: number(minor)?,
        access: access.to_string(),
    })
}

/// Whether an operator's allow-list (path patterns, and cgroup rules
/// written exactly) covers a requested device or rule. A requested
/// pattern is covered only by an allowed pattern that matches it as text,
/// so `/dev/video*` allows `/dev/video*` and `/dev/video0`, and `/dev/*`
/// allows neither a USB node nor `/dev/bus/*`.
pub fn allowed(allow: &[String], requested: &str) -> bool {
    allow.iter().any(|a| {
        if a.starts_with('/') {
            glob_match(a, requested)
        } else {
            normalized_rule(a) == normalized_rule(requested)
        }
    })
}

fn normalized_rule(rule: &str) -> String {
    rule.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One allow-list entry, checked: a device path pattern under /dev or a
/// cgroup rule.
pub fn validate_allow_entry(entry: &str) -> Result<(), String> {
    if entry.starts_with('/') {
        if !entry.starts_with("/dev/") {
            return Err(format!("{entry}: device patterns are paths under /dev"));
        }
        Ok(())
    } else {
        parse_cgroup_rule(entry).map(|_| ())
    }
}

/// What a service may be given on a device, as the server signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub swarm: String,
    /// The swarm service name the grant is for: the runtime compares it
    /// with the name swarm itself puts on the task's container.
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_rules: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
}

/// Why a grant label was not honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("the grant is not of the form PAYLOAD.SIGNATURE")]
    Malformed,
    #[error("the grant's signature does not verify with swarm {0}'s key")]
    BadSignature(String),
    #[error("the grant is for swarm {granted}, this device is in swarm {local}")]
    OtherSwarm { granted: String, local: String },
    #[error("the grant is for service {granted}, the container belongs to {actual}")]
    OtherService { granted: String, actual: String },
}

/// A swarm's public grant key as the server hands it to devices.
pub fn public_key_text(key: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair;
    base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref())
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Grant {
    /// `PAYLOAD.SIGNATURE`, both base64url: the label value. Ed25519
    /// signatures are deterministic, so the same grant signs to the same
    /// label and a task is not restarted by re-signing.
    pub fn sign(&self, key: &ring::signature::Ed25519KeyPair) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let signature = key.sign(&payload);
        format!(
            "{}.{}",
            b64().encode(&payload),
            b64().encode(signature.as_ref())
        )
    }

    /// The grant in `label`, if its signature verifies with `public_key`
    /// (the swarm's, as [`public_key_text`] wrote it) and it names `swarm`.
    pub fn open(label: &str, public_key: &str, swarm: &str) -> Result<Grant, GrantError> {
        let public_key = base64::engine::general_purpose::STANDARD
            .decode(public_key)
            .map_err(|_| GrantError::BadSignature(swarm.to_string()))?;
        let (payload, signature) = label.split_once('.').ok_or(GrantError::Malformed)?;
        let payload = b64().decode(payload).map_err(|_| GrantError::Malformed)?;
        let signature = b64().decode(signature).map_err(|_| GrantError::Malformed)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
            .verify(&payload, &signature)
            .map_err(|_| GrantError::BadSignature(swarm.to_string()))?;
        let grant: Grant = serde_json::from_slice(&payload).map_err(|_| GrantError::Malformed)?;
        if grant.swarm != swarm {
            return Err(GrantError::OtherSwarm {
                granted: grant.swarm,
                local: swarm.to_string(),
            });
        }
        Ok(grant)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.cgroup_rules.is_empty() && !self.privileged
    }
}

/// The parts of a service spec that ask for hardware, checked against the
/// swarm's allow-list; the error names the field.
pub fn check_allowed(
    devices: &[DeviceRequest],
    cgroup_rules: &[String],
    privileged: bool,
    allow: &[String],
    allow_privileged: bool,
    swarm: &str,
) -> Result<(), ValidationError> {
    let how = format!(
        "an operator allows it with `fogswarm swarm update {swarm} --allow-device PATTERN`"
    );
    for (i, d) in devices.iter().enumerate() {
        if !allowed(allow, &d.host) {
            return Err(ValidationError::new(
                format!("devices[{i}]"),
                format!(
                    "device {} is not allowed in swarm {swarm} (allowed: {}); {how}",
                    d.host,
                    list_or_none(allow)
                ),
            ));
        }
    }
    for (i, r) in cgroup_rules.iter().enumerate() {
        if !allowed(allow, r) {
            return Err(ValidationError::new(
                format!("device_cgroup_rules[{i}]"),
                format!(
                    "device cgroup rule {r:?} is not allowed in swarm {swarm} (allowed: {}); {how}",
                    list_or_none(allow)
                ),
            ));
        }
    }
    if privileged && !allow_privileged {
        return Err(ValidationError::new(
            "privileged",
            format!("swarm {swarm} does not allow privileged services; an operator allows them with `fogswarm swarm update {swarm} --allow-privileged`"),
        ));
    }
    Ok(())
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_docker_reads_them() {
        let d = parse_device("/dev/ttyUSB0").expect("plain");
        assert_eq!((d.container, d.permissions.as_str()), (None, "rwm"));
        let d = parse_device("/dev/ttyUSB0:r").expect("perms");
        assert_eq!((d.container, d.permissions.as_str()), (None, "r"));
        let d = parse_device("/dev/ttyUSB0:/dev/gps:rw").expect("all");
        assert_eq!(d.container.as_deref(), Some("/dev/gps"));
        assert_eq!(d.permissions, "rw");
        assert!(parse_device("/dev/video*").is_ok());
        for bad in [
            "ttyUSB0",
            "/etc/passwd",
            "/dev/sda",
            "/dev/../etc/shadow",
            "/dev/ttyUSB0:/dev/x:rwx",
            "/dev/video*:/dev/cam",
            "/dev/ttyUSB0:rel:rw",
            "/dev/bus/usb/001",
            "a:b:c:d",
        ] {
            assert!(parse_device(bad).is_err(), "{bad} should be refused");
        }
        let e = parse_device("/dev/sda").expect_err("untracked");
        assert!(e.contains("serial (/dev/ttyUSB*"), "{e}");
    }

    #[test]
    fn classes_and_presence_follow_the_facts() {
        assert_eq!(class_of("/dev/ttyACM0"), Some("serial"));
        assert_eq!(class_of("/dev/video*"), Some("video"));
        assert_eq!(class_of("/dev/bus/usb/001/004"), Some("usb"));
        assert_eq!(class_of("/dev/spidev0.1"), Some("spi"));
        assert_eq!(class_of("/dev/tty1"), None);
        let facts = Facts::from([
            ("serial".to_string(), "ttyACM0.ttyUSB1".to_string()),
            ("usb".to_string(), "001-004".to_string()),
            ("spi".to_string(), "spidev0.0.spidev0.1".to_string()),
        ]);
        let has = |p: &str| parse_device(p).expect(p).present_in(&facts);
        assert!(has("/dev/ttyACM0"));
        assert!(has("/dev/ttyUSB*"));
        assert!(!has("/dev/ttyUSB0"));
        assert!(!has("/dev/video*"));
        assert!(has("/dev/bus/usb/001/004"));
        assert!(has("/dev/spidev0.1"));
        assert!(!has("/dev/spidev1.0"));
    }

    #[test]
    fn globs_do_not_cross_directories() {
        assert!(glob_match("/dev/video*", "/dev/video0"));
        assert!(glob_match("/dev/video*", "/dev/video*"));
        assert!(!glob_match("/dev/tty?0", "/dev/ttyS10"));
        assert!(glob_match("/dev/tty???0", "/dev/ttyUSB0"));
        assert!(!glob_match("/dev/*", "/dev/bus/usb"));
        assert!(glob_match("/dev/bus/usb/*/*", "/dev/bus/usb/001/002"));
    }

    #[test]
    fn allow_lists_cover_paths_patterns_and_exact_rules() {
        let allow = vec!["/dev/ttyACM*".to_string(), "c 89:* rwm".to_string()];
        assert!(allowed(&allow, "/dev/ttyACM0"));
        assert!(allowed(&allow, "/dev/ttyACM*"));
        assert!(!allowed(&allow, "/dev/tty*"));
        assert!(!allowed(&allow, "/dev/ttyUSB0"));
        assert!(allowed(&allow, "c  89:*  rwm"));
        assert!(!allowed(&allow, "c *:* rwm"));
        let err = check_allowed(
            &[parse_device("/dev/ttyUSB0").expect("d")],
            &[],
            false,
            &allow,
            false,
            "fog",
        )
        .expect_err("refused");
        assert_eq!(err.field, "devices[0]");
        assert!(err.message.contains("--allow-device"), "{}", err.message);
        assert!(check_allowed(&[], &[], true, &allow, false, "fog").is_err());
        assert!(check_allowed(&[], &[], true, &allow, true, "fog").is_ok());
    }

    #[test]
    fn cgroup_rules_parse() {
        let r = parse_cgroup_rule("c 89:* rwm").expect("rule");
        assert_eq!((r.kind, r.major, r.minor), ('c', Some(89), None));
        for bad in ["c 89 rwm", "x 1:2 r", "c 1:2 rwx", "c a:2 r", ""] {
            assert!(parse_cgroup_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_verify_only_with_their_swarms_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let other = ring::signature::Ed25519KeyPair::from_pkcs8(
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .expect("key")
                .as_ref(),
        )
        .expect("key");
        let grant = Grant {
            swarm: "fog".into(),
            service: "reader".into(),
            devices: vec![parse_device("/dev/ttyACM0").expect("d")],
            cgroup_rules: vec![],
            privileged: false,
        };
        let label = grant.sign(&key);
        assert_eq!(label, grant.sign(&key), "deterministic");
        let public = &public_key_text(&key);
        assert_eq!(Grant::open(&label, public, "fog"), Ok(grant.clone()));
        assert!(matches!(
            Grant::open(&label, &public_key_text(&other), "fog"),
            Err(GrantError::BadSignature(_))
        ));
        assert!(matches!(
            Grant::open(&label, public, "plant"),
            Err(GrantError::OtherSwarm { .. })
        ));
        // A payload widened after signing no longer verifies.
        let (_, sig) = label.split_once('.').expect("dot");
        let mut wider = grant.clone();
        wider.privileged = true;
        let forged = format!(
            "{}.{sig}",
            b64().encode(serde_json::to_vec(&wider).expect("json"))
        );
        assert!(matches!(
            Grant::open(&forged, public, "fog"),
            Err(GrantError::BadSignature(_))
        ));
        assert_eq!(
            Grant::open("nonsense", public, "fog"),
            Err(GrantError::Malformed)
        );
    }
}
