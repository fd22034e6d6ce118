//! A swarm's secrets, configs and registry logins.
//!
//! Swarm's secrets and configs cannot change, so the server versions them:
//! a new value is a new version, every service naming it gets a new
//! revision (its managers roll it to the swarm object of the new version),
//! and the leader agent removes the old object once no task uses it.
//! Secret values and registry passwords are sealed (see [`crate::seal`])
//! before they reach the database; config values are stored plain.

use super::events::log_event;
use super::{bump, now, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Tx};
use crate::seal::Sealer;
use base64::Engine as _;
use fogswarm_protocol::secret::*;
use fogswarm_protocol::service::{DeployOutcome, ServiceSpec};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The `kind` column of a registry login.
const REGISTRY: &str = "registry";

fn context(swarm: &str, kind: &str, name: &str, version: u64) -> String {
    format!("{swarm}/{kind}/{name}/{version}")
}

fn not_found(swarm: &str, kind: &str, name: &str) -> StoreError {
    StoreError::NotFound(format!("{kind} {name} does not exist in swarm {swarm}"))
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Gives `services` one new revision, so the swarm's leader updates them
/// (to a new secret version, with a new registry login); answers the
/// swarm as touched when there were any.
fn roll(tx: &Tx<'_>, swarm: &str, services: &[String], at: i64) -> Result<Touched> {
    if services.is_empty() {
        return Ok(vec![]);
    }
    let revision = bump(tx, swarm)?;
    for service in services {
        tx.execute(
            "UPDATE services SET revision = $1, updated_at = $2 WHERE swarm = $3 AND name = $4",
            params![revision as i64, at, swarm, service],
        )?;
    }
    Ok(vec![swarm.to_string()])
}

impl Store {
    /// The ids of the keys the stored sealed values (secrets, registry
    /// passwords, swarms' grant keys) were sealed with: a restore checks
    /// that the key it is given opens them.
    pub fn sealed_key_ids(&self) -> Result<BTreeSet<String>> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT value FROM swarm_files WHERE kind IN ($1, $2)
                 UNION ALL SELECT grant_key FROM swarms WHERE grant_key IS NOT NULL",
                params![FileKind::Secret.as_str(), REGISTRY],
            )?;
            let mut ids = BTreeSet::new();
            for row in rows {
                let sealed: String = row.get(0)?;
                if let Some(id) = Sealer::key_id_of(&sealed) {
                    ids.insert(id.to_string());
                }
            }
            Ok(ids)
        })
    }
}

struct FileRow {
    version: u64,
    value: String,
    digest: String,
    detail: String,
    created_at: i64,
    updated_at: i64,
}

fn file_row(tx: &Tx<'_>, swarm: &str, kind: &str, name: &str) -> Result<Option<FileRow>> {
    tx.query_opt(
        "SELECT version, value, digest, detail, created_at, updated_at FROM swarm_files
         WHERE swarm = $1 AND kind = $2 AND name = $3",
        params![swarm, kind, name],
    )?
    .map(|r| {
        Ok(FileRow {
            version: r.get::<i64>(0)? as u64,
            value: r.get(1)?,
            digest: r.get(2)?,
            detail: r.get(3)?,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
        })
    })
    .transpose()
}

/// Every service of the swarm with its spec, for "used by" and rollouts.
fn service_specs(tx: &Tx<'_>, swarm: &str) -> Result<Vec<ServiceSpec>> {
    tx.query(
        "SELECT spec FROM services WHERE swarm = $1 ORDER BY name",
        params![swarm],
    )?
    .iter()
    .map(|r| super::from_json(&r.get::<String>(0)?))
    .collect()
}

fn view(swarm: &str, kind: FileKind, name: &str, row: &FileRow, used_by: Vec<String>) -> FileView {
    FileView {
        swarm: swarm.to_string(),
        kind,
        name: name.to_string(),
        version: row.version,
        digest: (kind == FileKind::Config).then(|| format!("sha256:{}", row.digest)),
        used_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

impl Store {
    /// Stores a value: a new secret or config (refused when it exists and
    /// `create_only`), or a new version of one, to which every service
    /// using it rolls. The same value again changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn write_file(
        &self,
        actor: &Actor,
        swarm: &str,
        kind: FileKind,
        name: &str,
        data: &[u8],
        create_only: bool,
        sealer: &Sealer,
    ) -> Result<(FileWritten, Touched)> {
        validate_file_name(kind, name)?;
        if data.len() > MAX_FILE_BYTES {
            return Err(StoreError::Invalid {
                field: Some("data".into()),
                message: format!(
                    "{} {name} is {} bytes; swarm takes at most {MAX_FILE_BYTES}",
                    kind.as_str(),
                    data.len()
                ),
            });
        }
        let k = kind.as_str();
        let digest = hex::encode(Sha256::digest(data));
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let existing = file_row(tx, swarm, k, name)?;
            let specs = service_specs(tx, swarm)?;
            let used_by = referenced_files(&specs)
                .remove(&(kind, name.to_string()))
                .unwrap_or_default();
            if let Some(row) = &existing {
                if create_only {
                    return Err(StoreError::Conflict(format!(
                        "{k} {name} already exists in swarm {swarm}; `fogswarm {k} update` gives it a new value"
                    )));
                }
                let same = match kind {
                    FileKind::Config => row.digest == digest,
                    FileKind::Secret => {
                        sealer
                            .open(&context(swarm, k, name, row.version), &row.value)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?
                            == data
                    }
                };
                if same {
                    let file = view(swarm, kind, name, row, used_by);
                    return Ok((
                        FileWritten {
                            outcome: DeployOutcome::Unchanged,
                            file,
                            rolled: vec![],
                        },
                        vec![],
                    ));
                }
            }
            let version = existing.as_ref().map_or(1, |r| r.version + 1);
            let value = match kind {
                FileKind::Secret => sealer.seal(&context(swarm, k, name, version), data),
                FileKind::Config => b64(data),
            };
            let at = now();
            tx.execute(
                "INSERT INTO swarm_files (swarm, kind, name, version, value, digest, detail, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, '', $7, $7)
                 ON CONFLICT(swarm, kind, name) DO UPDATE SET version = $4, value = $5, digest = $6, updated_at = $7",
                params![swarm, k, name, version as i64, value, &digest, at],
            )?;
            // The services using it roll to the new version: one new
            // revision for all of them.
            let rolled = if existing.is_some() {
                roll(tx, swarm, &used_by, at)?;
                used_by.clone()
            } else {
                vec![]
            };
            // Never the value, never its hash for a secret.
            let action = if existing.is_some() { "update" } else { "create" };
            log_event(
                tx,
                actor,
                &format!("{k}.{action}"),
                &format!("{swarm}/{name}"),
                &format!("version={version} rolled={}", rolled.join(",")),
            )?;
            let row = file_row(tx, swarm, k, name)?.ok_or_else(|| not_found(swarm, k, name))?;
            let outcome = if existing.is_some() {
                DeployOutcome::Updated
            } else {
                DeployOutcome::Created
            };
            let touched = if rolled.is_empty() {
                vec![]
            } else {
                vec![swarm.to_string()]
            };
            Ok((
                FileWritten {
                    outcome,
                    file: view(swarm, kind, name, &row, used_by),
                    rolled,
                },
                touched,
            ))
        })
    }

    pub fn list_files(&self, swarm: &str, kind: FileKind) -> Result<Vec<FileView>> {
        self.read(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let mut used = referenced_files(&service_specs(tx, swarm)?);
            let names: Vec<String> = tx
                .query(
                    "SELECT name FROM swarm_files WHERE swarm = $1 AND kind = $2 ORDER BY name",
                    params![swarm, kind.as_str()],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<std::result::Result<_, _>>()?;
            let mut out = Vec::new();
            for name in names {
                if let Some(row) = file_row(tx, swarm, kind.as_str(), &name)? {
                    let used_by = used.remove(&(kind, name.clone())).unwrap_or_default();
                    out.push(view(swarm, kind, &name, &row, used_by));
                }
            }
            Ok(out)
        })
    }

    /// One secret or config; for a config, its value too.
    pub fn get_file(
        &self,
        swarm: &str,
        kind: FileKind,
        name: &str,
    ) -> Result<(FileView, Option<Vec<u8>>)> {
        self.read(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let row = file_row(tx, swarm, kind.as_str(), name)?
                .ok_or_else(|| not_found(swarm, kind.as_str(), name))?;
            let used_by = referenced_files(&service_specs(tx, swarm)?)
                .remove(&(kind, name.to_string()))
                .unwrap_or_default();
            let data = match kind {
                FileKind::Config => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(&row.value)
                        .map_err(|e| StoreError::Corrupt(format!("config {name}: {e}")))?,
                ),
                FileKind::Secret => None,
            };
            Ok((view(swarm, kind, name, &row, used_by), data))
        })
    }

    /// Removes a secret or config no service uses.
    pub fn remove_file(
        &self,
        actor: &Actor,
        swarm: &str,
        kind: FileKind,
        name: &str,
    ) -> Result<()> {
        let k = kind.as_str();
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            file_row(tx, swarm, k, name)?.ok_or_else(|| not_found(swarm, k, name))?;
            if let Some(users) =
                referenced_files(&service_specs(tx, swarm)?).get(&(kind, name.to_string()))
            {
                return Err(StoreError::Conflict(format!(
                    "{k} {name} is in use by service {}; remove or change those first",
                    users.join(", ")
                )));
            }
            tx.execute(
                "DELETE FROM swarm_files WHERE swarm = $1 AND kind = $2 AND name = $3",
                params![swarm, k, name],
            )?;
            log_event(
                tx,
                actor,
                &format!("{k}.remove"),
                &format!("{swarm}/{name}"),
                "",
            )
        })
    }

    /// Stores (or replaces) a registry login for a swarm's pulls.
    pub fn put_registry(
        &self,
        actor: &Actor,
        swarm: &str,
        host: &str,
        login: &RegistryLogin,
        sealer: &Sealer,
    ) -> Result<(RegistryView, Touched)> {
        validate_registry_host(host)?;
        if login.username.is_empty() || login.username.contains(char::is_control) {
            return Err(StoreError::Invalid {
                field: Some("username".into()),
                message: "the user name is empty or has control characters".into(),
            });
        }
        if login.password.is_empty() {
            return Err(StoreError::Invalid {
                field: Some("password".into()),
                message: "the password is empty".into(),
            });
        }
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let version = file_row(tx, swarm, REGISTRY, host)?.map_or(1, |r| r.version + 1);
            let sealed = sealer.seal(
                &context(swarm, REGISTRY, host, version),
                login.password.expose().as_bytes(),
            );
            let at = now();
            tx.execute(
                "INSERT INTO swarm_files (swarm, kind, name, version, value, digest, detail, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, '', $6, $7, $7)
                 ON CONFLICT(swarm, kind, name) DO UPDATE SET version = $4, value = $5, detail = $6, updated_at = $7",
                params![swarm, REGISTRY, host, version as i64, sealed, &login.username, at],
            )?;
            // Services pulling from it get a new revision, so the leader
            // passes the login on (a pull error goes away without a deploy).
            let pulling: Vec<String> = service_specs(tx, swarm)?
                .into_iter()
                .filter(|s| registry_of(&s.image) == host)
                .map(|s| s.name)
                .collect();
            let touched = roll(tx, swarm, &pulling, at)?;
            log_event(
                tx,
                actor,
                "registry.login",
                &format!("{swarm}/{host}"),
                &format!("user={} services={}", login.username, pulling.join(",")),
            )?;
            Ok((
                RegistryView {
                    swarm: swarm.to_string(),
                    host: host.to_string(),
                    username: login.username.clone(),
                    updated_at: at,
                },
                touched,
            ))
        })
    }

    /// A swarm's login for `host`, opened: for the server's own lookups
    /// (signed-only swarms).
    pub fn registry_login(
        &self,
        swarm: &str,
        host: &str,
        sealer: &Sealer,
    ) -> Result<Option<(String, fogswarm_protocol::api::Secret)>> {
        self.read(|tx| {
            let Some(row) = file_row(tx, swarm, REGISTRY, host)? else {
                return Ok(None);
            };
            let password = sealer
                .open(&context(swarm, REGISTRY, host, row.version), &row.value)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(Some((
                row.detail,
                fogswarm_protocol::api::Secret::new(
                    String::from_utf8_lossy(&password).into_owned(),
                ),
            )))
        })
    }

    pub fn list_registries(&self, swarm: &str) -> Result<Vec<RegistryView>> {
        self.read(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            tx.query(
                "SELECT name, detail, updated_at FROM swarm_files WHERE swarm = $1 AND kind = $2 ORDER BY name",
                params![swarm, REGISTRY],
            )?
            .iter()
            .map(|r| {
                Ok(RegistryView {
                    swarm: swarm.to_string(),
                    host: r.get(0)?,
                    username: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })
            .collect()
        })
    }

    pub fn remove_registry(&self, actor: &Actor, swarm: &str, host: &str) -> Result<()> {
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            file_row(tx, swarm, REGISTRY, host)?
                .ok_or_else(|| not_found(swarm, "registry login for", host))?;
            tx.execute(
                "DELETE FROM swarm_files WHERE swarm = $1 AND kind = $2 AND name = $3",
                params![swarm, REGISTRY, host],
            )?;
            log_event(tx, actor, "registry.logout", &format!("{swarm}/{host}"), "")
        })
    }

    /// The values a manager of the swarm asks for: the current version of
    /// each secret or config (an older one is gone: its swarm object
    /// exists already or is no longer wanted), and registry logins.
    pub fn values_for(
        &self,
        device: &str,
        request: &ValuesRequest,
        sealer: &Sealer,
    ) -> Result<ValuesAnswer> {
        let swarm = self.manager_swarm(device)?;
        self.read(|tx| {
            let mut answer = ValuesAnswer::default();
            for f in &request.files {
                let k = f.kind.as_str();
                let row = file_row(tx, &swarm, k, &f.name)?
                    .filter(|r| r.version == f.version)
                    .ok_or_else(|| {
                        StoreError::NotFound(format!(
                            "{k} {} version {} is not the current one in swarm {swarm}",
                            f.name, f.version
                        ))
                    })?;
                let data = match f.kind {
                    FileKind::Secret => b64(&sealer
                        .open(&context(&swarm, k, &f.name, f.version), &row.value)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?),
                    FileKind::Config => row.value,
                };
                answer.files.push(FileValue {
                    file: f.clone(),
                    data: fogswarm_protocol::api::Secret::new(data),
                });
            }
            for host in &request.registries {
                let row = file_row(tx, &swarm, REGISTRY, host)?
                    .ok_or_else(|| not_found(&swarm, "registry login for", host))?;
                let password = sealer
                    .open(&context(&swarm, REGISTRY, host, row.version), &row.value)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                answer.registries.push(RegistryCredential {
                    host: host.clone(),
                    username: row.detail,
                    password: fogswarm_protocol::api::Secret::new(
                        String::from_utf8_lossy(&password).into_owned(),
                    ),
                });
            }
            Ok(answer)
        })
    }
}

/// The current version of every secret and config of a swarm, and the
/// registries it has logins for: what the desired state refers to.
pub(super) struct SwarmFiles {
    pub versions: BTreeMap<(FileKind, String), u64>,
    pub registries: BTreeSet<String>,
}

pub(super) fn swarm_files(tx: &Tx<'_>, swarm: &str) -> Result<SwarmFiles> {
    let mut out = SwarmFiles {
        versions: BTreeMap::new(),
        registries: BTreeSet::new(),
    };
    for r in tx.query(
        "SELECT kind, name, version FROM swarm_files WHERE swarm = $1",
        params![swarm],
    )? {
        let (kind, name, version): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        match kind.as_str() {
            "secret" => {
                out.versions
                    .insert((FileKind::Secret, name), version as u64);
            }
            "config" => {
                out.versions
                    .insert((FileKind::Config, name), version as u64);
            }
            _ => {
                out.registries.insert(name);
            }
        }
    }
    Ok(out)
}

/// Refuses a spec naming a secret or config the swarm does not have.
pub(super) fn check_files_exist(tx: &Tx<'_>, swarm: &str, specs: &[&ServiceSpec]) -> Result<()> {
    let files = swarm_files(tx, swarm)?;
    for ((kind, name), users) in referenced_files(specs.iter().copied()) {
        if !files.versions.contains_key(&(kind, name.clone())) {
            return Err(StoreError::Invalid {
                field: Some(kind.plural().into()),
                message: format!(
                    "service {} uses {} {name}, which swarm {swarm} does not have; create it with `fogswarm {} create`",
                    users.join(", "),
                    kind.as_str(),
                    kind.as_str()
                ),
            });
        }
    }
    Ok(())
}
