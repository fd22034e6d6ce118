//! Validation rules for names, roles and labels.
//!
//! Errors name the field they are about, so the server can answer
//! `{"error": "invalid", "field": ..., "message": ...}` and the CLI can say
//! which flag or CSV column is wrong.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Labels as Docker keeps them: key to value, sorted for stable output.
pub type Labels = BTreeMap<String, String>;

/// Prefix of labels that fogswarm derives from detected facts; operators may
/// not set them, and the agent owns them on the node.
pub const FACT_PREFIX: &str = "fog.";

pub const MAX_LABEL_KEY_LEN: usize = 128;
pub const MAX_LABEL_VALUE_LEN: usize = 256;
pub const MAX_LABELS: usize = 64;
pub const MAX_SWARM_NAME_LEN: usize = 63;

/// A value that broke a rule, and which field it was in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A swarm's name: 1 to 63 lower-case letters, digits, '-' and '_',
/// starting with a letter or digit (it appears in file names, URLs and
/// Docker object names).
pub fn validate_swarm_name(name: &str) -> Result<(), ValidationError> {
    let field = "swarm";
    if name.is_empty() {
        return Err(ValidationError::new(field, "swarm name is empty"));
    }
    if name.len() > MAX_SWARM_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "swarm name is {} characters long; at most {MAX_SWARM_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(ValidationError::new(
            field,
            format!(
                "swarm name {name:?} has {c:?} at position {i}; allowed are a-z, 0-9, '-' and '_'"
            ),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ValidationError::new(
            field,
            format!("swarm name {name:?} must start with a letter or digit"),
        ));
    }
    Ok(())
}

/// A device's role in its swarm.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The manager that initializes the swarm (at most one per swarm).
    Leader,
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    /// Leaders are managers once the swarm exists.
    pub fn is_manager(self) -> bool {
        matches!(self, Role::Leader | Role::Manager)
    }

    pub fn parse(s: &str) -> Result<Role, ValidationError> {
        match s {
            "leader" => Ok(Role::Leader),
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            _ => Err(ValidationError::new(
                "role",
                format!("role {s:?} is not one of leader, manager, worker"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a swarm does with a device it does not know that enrols with a
/// valid provisioning key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoEnrol {
    /// Refuse it (the default: unknown devices are not trusted).
    #[default]
    Off,
    /// Take it as a worker.
    Worker,
    /// Take it as a worker, held pending until an operator approves it.
    Pending,
}

impl AutoEnrol {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoEnrol::Off => "off",
            AutoEnrol::Worker => "worker",
            AutoEnrol::Pending => "pending",
        }
    }

    pub fn parse(s: &str) -> Result<AutoEnrol, ValidationError> {
        match s {
            "off" => Ok(AutoEnrol::Off),
            "worker" => Ok(AutoEnrol::Worker),
            "pending" => Ok(AutoEnrol::Pending),
            _ => Err(ValidationError::new(
                "auto_enrol",
                format!("auto_enrol {s:?} is not one of off, worker, pending"),
            )),
        }
    }
}

/// A label key by Docker's rules for node labels: 1 to 128 characters of
/// letters, digits, '.', '-' and '_', starting and ending with a letter or
/// digit, without consecutive separators; Docker's reserved namespaces are
/// refused.
pub fn validate_label_key(key: &str) -> Result<(), ValidationError> {
    let field = format!("labels.{key}");
    if key.is_empty() {
        return Err(ValidationError::new("labels", "label key is empty"));
    }
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "label key is {} characters long; at most {MAX_LABEL_KEY_LEN} are allowed",
                key.len()
            ),
        ));
    }
    if let Some((i, c)) = key
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(ValidationError::new(
            field,
            format!("label key {key:?} has {c:?} at position {i}; allowed are letters, digits, '.', '-' and '_'"),
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !key.starts_with(alnum) || !key.ends_with(alnum) {
        return Err(ValidationError::new(
            field,
            format!("label key {key:?} must start and end with a letter or digit"),
        ));
    }
    if key.contains("..") || key.contains("--") || key.contains("__") {
        return Err(ValidationError::new(
            field,
            format!("label key {key:?} has consecutive separators"),
        ));
    }
    for reserved in ["com.docker.", "io.docker.", "org.dockerproject."] {
        if key.starts_with(reserved) {
            return Err(ValidationError::new(
                field,
                format!("label key {key:?} is in Docker's reserved namespace {reserved}*"),
            ));
        }
    }
    Ok(())
}

/// A label value: at most 256 characters, no control characters.
pub fn validate_label_value(key: &str, value: &str) -> Result<(), ValidationError> {
    let field = format!("labels.{key}");
    if value.chars().count() > MAX_LABEL_VALUE_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "label value is {} characters long; at most {MAX_LABEL_VALUE_LEN} are allowed",
                value.chars().count()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "label value has a control character",
        ));
    }
    Ok(())
}

/// Operator labels: valid keys and values, none under the `fog.` prefix
/// (those are facts the agent detects), at most 64 of them.
pub fn validate_operator_labels(labels: &Labels) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            "labels",
            format!("{} labels; at most {MAX_LABELS} are allowed", labels.len()),
        ));
    }
    for (key, value) in labels {
        validate_operator_label_key(key)?;
        validate_label_value(key, value)?;
    }
    Ok(())
}

/// A key an operator may set or unset.
pub fn validate_operator_label_key(key: &str) -> Result<(), ValidationError> {
    validate_label_key(key)?;
    if key.starts_with(FACT_PREFIX) {
        return Err(ValidationError::new(
            format!("labels.{key}"),
            format!("label key {key:?} is under {FACT_PREFIX}*, which holds detected facts; operators cannot set it"),
        ));
    }
    Ok(())
}

/// Parses `key=value` (or a bare `key`, value empty, as Docker does).
pub fn parse_label_assignment(s: &str) -> Result<(String, String), ValidationError> {
    let (key, value) = s.split_once('=').unwrap_or((s, ""));
    validate_operator_label_key(key)?;
    validate_label_value(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_names() {
        assert!(validate_swarm_name("hall-3_a").is_ok());
        assert!(validate_swarm_name("").is_err());
        assert!(validate_swarm_name("Hall")
            .expect_err("upper")
            .message
            .contains("'H'"));
        assert!(validate_swarm_name("-x").is_err());
        assert!(validate_swarm_name(&"a".repeat(64)).is_err());
        assert!(validate_swarm_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn label_keys_follow_docker() {
        for ok in [
            "temperature_sensor",
            "location",
            "zone.a",
            "io.fogswarm.x",
            "a",
        ] {
            assert!(validate_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "x.",
            "a..b",
            "a--b",
            "a b",
            "ключ",
            "com.docker.x",
            "a=b",
        ] {
            assert!(validate_label_key(bad).is_err(), "{bad}");
        }
        assert!(validate_label_key(&"k".repeat(129)).is_err());
    }

    #[test]
    fn operators_cannot_set_facts() {
        let err = validate_operator_label_key("fog.arch").expect_err("fact");
        assert_eq!(err.field, "labels.fog.arch");
        assert!(validate_label_key("fog.arch").is_ok());
    }

    #[test]
    fn label_values_are_bounded() {
        assert!(validate_label_value("k", &"v".repeat(256)).is_ok());
        assert!(validate_label_value("k", &"v".repeat(257)).is_err());
        assert!(validate_label_value("k", "a\nb").is_err());
    }

    #[test]
    fn label_assignments() {
        assert_eq!(
            parse_label_assignment("zone=a=b").expect("ok"),
            ("zone".into(), "a=b".into())
        );
        assert_eq!(
            parse_label_assignment("flag").expect("ok"),
            ("flag".into(), String::new())
        );
        assert!(parse_label_assignment("=x").is_err());
    }

    #[test]
    fn roles_and_auto_enrol() {
        assert_eq!(Role::parse("manager").expect("ok"), Role::Manager);
        assert!(Role::parse("boss").is_err());
        assert!(Role::Leader.is_manager());
        assert_eq!(AutoEnrol::parse("pending").expect("ok"), AutoEnrol::Pending);
        assert_eq!(serde_json_roundtrip(Role::Worker), "\"worker\"");
    }

    fn serde_json_roundtrip(role: Role) -> String {
        serde_json::to_string(&role).expect("ser")
    }
}
