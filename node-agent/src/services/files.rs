//! The swarm secrets and configs the services name, made from the
//! server's values, and the registry logins passed on with a create or
//! update.

use super::*;

/// The swarm secrets and configs fogswarm made, by name (the engine wants
/// their ids in a service spec), and the names the services want now.
#[derive(Default)]
pub(super) struct SwarmFiles {
    pub(super) secrets: HashMap<String, String>,
    pub(super) configs: HashMap<String, String>,
    pub(super) wanted: BTreeSet<String>,
}

/// Every secret and config version the desired services name.
pub(super) fn wanted_files(desired: &[DesiredService]) -> BTreeSet<FileVersion> {
    let mut out = BTreeSet::new();
    for d in desired {
        for (kind, refs, versions) in [
            (FileKind::Secret, &d.spec.secrets, &d.secret_versions),
            (FileKind::Config, &d.spec.configs, &d.config_versions),
        ] {
            for r in refs {
                if let Some(v) = versions.get(&r.source) {
                    out.insert(FileVersion {
                        kind,
                        name: r.source.clone(),
                        version: *v,
                    });
                }
            }
        }
    }
    out
}

pub(super) fn managed_filter(swarm: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{MANAGED_LABEL}={swarm}")],
    )])
}

/// Creates the swarm secrets and configs the desired services need and
/// the swarm lacks, with values fetched from the server for just those
/// (a value never touches the disk or the log here).
pub(super) async fn ensure_files(
    engine: &Engine,
    server: &Client,
    swarm: &str,
    desired: &[DesiredService],
) -> Result<SwarmFiles> {
    let mut files = SwarmFiles::default();
    let secrets = engine
        .docker
        .list_secrets(Some(
            bollard::query_parameters::ListSecretsOptionsBuilder::default()
                .filters(&managed_filter(swarm))
                .build(),
        ))
        .await
        .context("listing swarm secrets")?;
    for s in secrets {
        if let (Some(id), Some(name)) = (s.id, s.spec.and_then(|s| s.name)) {
            files.secrets.insert(name, id);
        }
    }
    let configs = engine
        .docker
        .list_configs(Some(
            bollard::query_parameters::ListConfigsOptionsBuilder::default()
                .filters(&managed_filter(swarm))
                .build(),
        ))
        .await
        .context("listing swarm configs")?;
    for c in configs {
        if let (Some(id), Some(name)) = (c.id, c.spec.and_then(|s| s.name)) {
            files.configs.insert(name, id);
        }
    }
    let wanted = wanted_files(desired);
    files.wanted = wanted
        .iter()
        .map(|f| versioned_name(&f.name, f.version))
        .collect();
    let missing: Vec<FileVersion> = wanted
        .into_iter()
        .filter(|f| {
            let have = match f.kind {
                FileKind::Secret => &files.secrets,
                FileKind::Config => &files.configs,
            };
            !have.contains_key(&versioned_name(&f.name, f.version))
        })
        .collect();
    if missing.is_empty() {
        return Ok(files);
    }
    // A version the server no longer has (it moved on meanwhile) is
    // asked for again next pass, with the new desired state.
    let answer = server
        .values(&ValuesRequest {
            files: missing,
            registries: vec![],
        })
        .await
        .context("fetching secret and config values from the server")?;
    for value in answer.files {
        let f = &value.file;
        let name = versioned_name(&f.name, f.version);
        let labels = Some(HashMap::from([
            (MANAGED_LABEL.to_string(), swarm.to_string()),
            (FILE_SOURCE_LABEL.to_string(), f.name.clone()),
        ]));
        let data = Some(value.data.expose().to_string());
        let created = match f.kind {
            FileKind::Secret => engine
                .docker
                .create_secret(bollard::models::SecretSpec {
                    name: Some(name.clone()),
                    labels,
                    data,
                    ..Default::default()
                })
                .await
                .map(|r| files.secrets.insert(name.clone(), r.id)),
            FileKind::Config => engine
                .docker
                .create_config(bollard::models::ConfigSpec {
                    name: Some(name.clone()),
                    labels,
                    data,
                    ..Default::default()
                })
                .await
                .map(|r| files.configs.insert(name.clone(), r.id)),
        };
        match created {
            Ok(_) => {
                tracing::info!(kind = f.kind.as_str(), name = %name, "created swarm {}", f.kind.as_str())
            }
            Err(e) => {
                tracing::warn!(kind = f.kind.as_str(), name = %name, error = %engine_message(&e), "could not create the swarm {}", f.kind.as_str())
            }
        }
    }
    Ok(files)
}

/// Removes the swarm secrets and configs fogswarm made that no desired
/// service names any more; one a task still uses (an update in progress)
/// is refused by the engine and retried next pass.
pub(super) async fn remove_unused_files(engine: &Engine, swarm: &str, files: &SwarmFiles) {
    for (name, id) in &files.secrets {
        if !files.wanted.contains(name) && engine.docker.delete_secret(id).await.is_ok() {
            tracing::info!(swarm = %swarm, name = %name, "removed a swarm secret nothing uses");
        }
    }
    for (name, id) in &files.configs {
        if !files.wanted.contains(name) && engine.docker.delete_config(id).await.is_ok() {
            tracing::info!(swarm = %swarm, name = %name, "removed a swarm config nothing uses");
        }
    }
}

/// Registry logins fetched this pass, by host: asked of the server only
/// for services being created or updated, once per host.
#[derive(Default)]
pub(super) struct Logins(HashMap<String, std::result::Result<DockerCredentials, String>>);

impl Logins {
    /// The login `want` names, if it names one.
    pub(super) async fn get(
        &mut self,
        server: &Client,
        want: &DesiredService,
    ) -> Result<Option<DockerCredentials>> {
        match &want.registry_auth {
            Some(host) => self.for_host(server, host).await.map(Some),
            None => Ok(None),
        }
    }

    /// The swarm's login for `host`, asked of the server once per pass.
    pub(super) async fn for_host(
        &mut self,
        server: &Client,
        host: &str,
    ) -> Result<DockerCredentials> {
        if !self.0.contains_key(host) {
            let fetched = server
                .values(&ValuesRequest {
                    files: vec![],
                    registries: vec![host.to_string()],
                })
                .await
                .map_err(|e| format!("fetching the login for registry {host}: {e}"))
                .and_then(|a| {
                    a.registries
                        .into_iter()
                        .next()
                        .ok_or_else(|| format!("the server has no login for registry {host}"))
                })
                .map(|c| DockerCredentials {
                    username: Some(c.username),
                    password: Some(c.password.expose().to_string()),
                    serveraddress: Some(c.host),
                    ..Default::default()
                });
            self.0.insert(host.to_string(), fetched);
        }
        match self.0.get(host) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!("no login for registry {host}")),
        }
    }
}
