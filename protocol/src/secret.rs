//! Secrets, configs and registry logins a swarm's services use, kept by
//! the server. Values travel base64-encoded inside [`Secret`] (whose Debug
//! and Display redact), and only two ways: from the operator to the
//! server, and from the server to the manager agent that must create the
//! swarm object or pass a login on.

use crate::api::Secret;
use crate::validate::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Swarm's own limit for a secret or config (500 KiB).
pub const MAX_FILE_BYTES: usize = 500 * 1024;
/// Room for the version suffix within swarm's 64-character names.
pub const MAX_FILE_NAME_LEN: usize = 56;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Encrypted at rest, never shown again.
    Secret,
    /// Plain text, shown by `config inspect`.
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// The path segment of the API: `secrets`, `configs`.
    pub fn plural(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }
}

/// `POST /v1/swarms/{swarm}/secrets|configs`, and `PUT .../{name}` (a new
/// value: a new version, to which the services using it roll).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWrite {
    pub name: String,
    /// The value, base64.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub data: Secret,
}

/// A secret or config as operators see it: never the value of a secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    pub swarm: String,
    pub kind: FileKind,
    pub name: String,
    /// Starts at 1; every new value adds one.
    pub version: u64,
    /// SHA-256 of a config's value (secrets: absent, as a hash of a
    /// low-entropy secret would leak it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The services whose spec names it.
    pub used_by: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What writing a value did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWritten {
    /// created, updated (a new version) or unchanged (the same value).
    pub outcome: crate::service::DeployOutcome,
    pub file: FileView,
    /// Services that roll to the new version.
    pub rolled: Vec<String>,
}

/// `PUT /v1/swarms/{swarm}/registries/{host}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub password: Secret,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryView {
    pub swarm: String,
    pub host: String,
    pub username: String,
    pub updated_at: i64,
}

/// One version of a secret or config.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct FileVersion {
    pub kind: FileKind,
    pub name: String,
    pub version: u64,
}

/// `POST /v1/values` (a manager device): the values it needs to create
/// swarm secrets and configs and to pass registry logins on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValuesRequest {
    #[serde(default)]
    pub files: Vec<FileVersion>,
    #[serde(default)]
    pub registries: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileValue {
    pub file: FileVersion,
    /// base64.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub data: Secret,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryCredential {
    pub host: String,
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub password: Secret,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValuesAnswer {
    pub files: Vec<FileValue>,
    pub registries: Vec<RegistryCredential>,
}

/// Labels a swarm secret or config made by the leader agent carries.
pub const FILE_SOURCE_LABEL: &str = "io.fogswarm.source";

/// A secret or config name: as a service name, at most
/// [`MAX_FILE_NAME_LEN`] characters.
pub fn validate_file_name(kind: FileKind, name: &str) -> Result<(), ValidationError> {
    crate::service::validate_object_name("name", kind.as_str(), name)?;
    if name.len() > MAX_FILE_NAME_LEN {
        return Err(ValidationError::new(
            "name",
            format!(
                "{} name is {} characters long; at most {MAX_FILE_NAME_LEN} are allowed",
                kind.as_str(),
                name.len()
            ),
        ));
    }
    Ok(())
}

/// A registry host as image references name it: `HOST[:PORT]`.
pub fn validate_registry_host(host: &str) -> Result<(), ValidationError> {
    let (h, port) = host.split_once(':').unwrap_or((host, ""));
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && port.chars().all(|c| c.is_ascii_digit())
        && (port.is_empty() != host.contains(':'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "host",
            format!("registry {host:?} is not HOST[:PORT]"),
        ))
    }
}

/// The registry host of an image reference, as Docker decides it: the
/// first component when it has a dot or a port or is `localhost`, else
/// Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Names every secret and config the specs refer to, by kind.
pub fn referenced_files<'a>(
    specs: impl IntoIterator<Item = &'a crate::service::ServiceSpec>,
) -> BTreeMap<(FileKind, String), Vec<String>> {
    let mut out: BTreeMap<(FileKind, String), Vec<String>> = BTreeMap::new();
    for spec in specs {
        for (kind, refs) in [
            (FileKind::Secret, &spec.secrets),
            (FileKind::Config, &spec.configs),
        ] {
            for r in refs {
                out.entry((kind, r.source.clone()))
                    .or_default()
                    .push(spec.name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_images() {
        assert_eq!(registry_of("10.90.0.1:5000/fog-hello:v1"), "10.90.0.1:5000");
        assert_eq!(registry_of("ghcr.io/a/b"), "ghcr.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("library/alpine"), "docker.io");
        assert_eq!(registry_of("alpine"), "docker.io");
        assert!(validate_registry_host("reg.example.com:5000").is_ok());
        for bad in ["", "a b", "host:", "host:port", "a/b"] {
            assert!(validate_registry_host(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(57);
        assert!(validate_file_name(FileKind::Secret, &long).is_err());
        assert!(validate_file_name(FileKind::Secret, "db_password").is_ok());
    }
}
