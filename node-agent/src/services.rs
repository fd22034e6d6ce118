//! Service duty of the raft leader: make the swarm's managed services match
//! the server's, and report what runs where.
//!
//! Managed services carry `io.fogswarm.managed=<swarm>` and the server
//! revision they were made from; services without the label are never
//! changed, removed or reported. A service whose revision differs is
//! updated, except when swarm itself rolled that very revision back (or
//! paused it): retrying would loop through the same failure, so the agent
//! reports it and waits for a new revision.
//!
//! A rollback restores the old spec, labels included, and swarm keeps no
//! trace of the spec it left; so the agent remembers which revision it
//! applied last, and the server, told of the rollback, marks that revision
//! in the desired state so a new leader does not retry it either.

use anyhow::{Context, Result};
use bollard::auth::DockerCredentials;
use bollard::models::{
    NetworkCreateRequest, Node, NodeSpecAvailabilityEnum, NodeState, Task, TaskSpec, TaskState,
};
use fogswarm_client::engine::Engine;
use fogswarm_client::Client;
use fogswarm_protocol::api::DesiredNode;
use fogswarm_protocol::constraint::{Constraint, ConstraintKey};
use fogswarm_protocol::secret::{FileKind, FileVersion, ValuesRequest, FILE_SOURCE_LABEL};
use fogswarm_protocol::service::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Failed tasks kept per service in a report, newest first.
const FAILED_TASKS_REPORTED: usize = 5;

/// A managed service as the engine has it.
struct Managed {
    id: String,
    version: u64,
    revision: Option<u64>,
    update_state: Option<String>,
    update_message: Option<String>,
    image: Option<String>,
    replicas: Option<u64>,
    /// Fingerprint of the current task template (a container label): a
    /// task carrying it runs the current spec; one with another is still to
    /// be updated. (Comparing specs directly fails: the engine fills in
    /// defaults on the service's copy, not on the tasks'.)
    template: Option<String>,
    /// Placement constraints, to count the nodes a global service runs on.
    constraints: Vec<String>,
}

/// Container label carrying the task template's fingerprint.
const TEMPLATE_LABEL: &str = "io.fogswarm.template";

/// The template label of a task spec.
fn template_of(spec: Option<&TaskSpec>) -> Option<String> {
    spec?
        .container_spec
        .as_ref()?
        .labels
        .as_ref()?
        .get(TEMPLATE_LABEL)
        .cloned()
}

/// A stable fingerprint (FNV-1a, 64 bits) of everything in a spec that
/// shapes its tasks. Only what changes a task changes it: a new replica
/// count, update policy or service label restarts nothing.
fn template_fingerprint(want: &DesiredService, image: &str) -> String {
    let mut spec = want.spec.clone();
    spec.replicas = None;
    spec.max_concurrent = None;
    spec.update = UpdatePolicy::default();
    spec.rollback = None;
    spec.labels.clear();
    // Every part serialises in a fixed order (structs, BTreeMaps, Vecs).
    let shape =
        serde_json::json!([image, spec, want.secret_versions, want.config_versions]).to_string();
    let hash = shape.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// What one pass changed, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The raft leader's service duty, with its memory of what it applied.
#[derive(Default)]
pub struct ServiceDuty {
    /// Service name to the revision this agent last created or updated it
    /// to: after a rollback, the revision swarm rolled back from.
    applied: HashMap<String, u64>,
    /// Last pass's errors, so a failure that repeats is logged once.
    errors: BTreeMap<String, String>,
}

impl ServiceDuty {
    /// Makes the managed services match `desired`; answers what changed
    /// and, per service, the error that stopped it.
    pub async fn reconcile(
        &mut self,
        engine: &Engine,
        server: &Client,
        swarm: &str,
        desired: &[DesiredService],
    ) -> Result<(Changes, BTreeMap<String, String>)> {
        let mut changes = Changes::default();
        let mut errors = BTreeMap::new();
        let managed = list_managed(engine, swarm).await?;
        let files = ensure_files(engine, server, swarm, desired).await?;
        let mut logins = Logins::default();
        let wanted_networks: BTreeSet<&str> = desired
            .iter()
            .flat_map(|d| d.spec.networks.iter().map(String::as_str))
            .collect();
        let options: HashMap<&str, &BTreeMap<String, String>> = desired
            .iter()
            .flat_map(|d| d.spec.network_options.iter().map(|(n, o)| (n.as_str(), o)))
            .collect();
        let networks = ensure_networks(engine, swarm, &wanted_networks, &options).await;
        for want in desired {
            let name = &want.spec.name;
            if let Some(missing) = want
                .spec
                .networks
                .iter()
                .find_map(|n| networks.get(n.as_str()).and_then(|r| r.as_ref().err()))
            {
                errors.insert(name.clone(), missing.clone());
                continue;
            }
            let outcome = match managed.get(name) {
                None => create(
                    engine,
                    swarm,
                    want,
                    &files,
                    &mut logins.get(server, want).await,
                )
                .await
                .map(|_| changes.created.push(name.clone())),
                Some(have) if have.revision == Some(want.revision) => continue,
                Some(have) if self.swarm_gave_up_on(have, want) => continue,
                Some(have) => update(
                    engine,
                    swarm,
                    want,
                    have,
                    &files,
                    &mut logins.get(server, want).await,
                )
                .await
                .map(|_| changes.updated.push(name.clone())),
            };
            match outcome {
                Ok(()) => {
                    self.applied.insert(name.clone(), want.revision);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if self.errors.get(name) != Some(&error) {
                        tracing::warn!(service = %name, error = %error, "service not applied");
                    }
                    errors.insert(name.clone(), error);
                }
            }
        }
        let wanted: BTreeSet<&str> = desired.iter().map(|d| d.spec.name.as_str()).collect();
        for (name, have) in &managed {
            if wanted.contains(name.as_str()) {
                continue;
            }
            match engine.docker.delete_service(&have.id).await {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    self.applied.remove(name);
                    changes.removed.push(name.clone())
                }
                Err(e) => {
                    errors.insert(name.clone(), format!("removing: {e}"));
                }
            }
        }
        remove_unused_networks(engine, swarm, &wanted_networks).await;
        remove_unused_files(engine, swarm, &files).await;
        self.errors = errors.clone();
        Ok((changes, errors))
    }

    /// Whether swarm rolled back or paused the update to this revision:
    /// then the failure is reported, not retried.
    fn swarm_gave_up_on(&self, have: &Managed, want: &DesiredService) -> bool {
        let state = have.update_state.as_deref().unwrap_or_default();
        let rolled_back = state.starts_with("rollback")
            && (want.rolled_back || self.applied.get(&want.spec.name) == Some(&want.revision));
        let paused = state == "paused" && have.revision == Some(want.revision);
        rolled_back || paused
    }

    /// The revision swarm rolled `have` back from, if it is rolling back.
    fn rolled_back_from(&self, name: &str, have: &Managed) -> Option<u64> {
        let rolling_back = have
            .update_state
            .as_deref()
            .is_some_and(|s| s.starts_with("rollback"));
        self.applied
            .get(name)
            .copied()
            .filter(|r| rolling_back && have.revision != Some(*r))
    }
}

async fn list_managed(engine: &Engine, swarm: &str) -> Result<BTreeMap<String, Managed>> {
    let options = bollard::query_parameters::ListServicesOptionsBuilder::default()
        .filters(&HashMap::from([(
            "label".to_string(),
            vec![format!("{MANAGED_LABEL}={swarm}")],
        )]))
        .build();
    let services = engine
        .docker
        .list_services(Some(options))
        .await
        .context("listing services")?;
    let mut out = BTreeMap::new();
    for service in services {
        let Some(spec) = service.spec else { continue };
        let (Some(name), Some(id)) = (spec.name.clone(), service.id) else {
            continue;
        };
        let labels = spec.labels.unwrap_or_default();
        let status = service.update_status.as_ref();
        out.insert(
            name,
            Managed {
                id,
                version: service.version.and_then(|v| v.index).unwrap_or_default(),
                revision: labels.get(REVISION_LABEL).and_then(|v| v.parse().ok()),
                update_state: status
                    .and_then(|s| s.state)
                    .map(|s| s.to_string())
                    .filter(|s| !s.is_empty()),
                update_message: status.and_then(|s| s.message.clone()),
                image: spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.clone()),
                replicas: spec
                    .mode
                    .and_then(|m| {
                        m.replicated
                            .and_then(|r| r.replicas)
                            .or(m.replicated_job.and_then(|j| j.total_completions))
                    })
                    .map(|r| r as u64),
                template: template_of(spec.task_template.as_ref()),
                constraints: spec
                    .task_template
                    .and_then(|t| t.placement)
                    .and_then(|p| p.constraints)
                    .unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Creates the named overlay networks that are missing; answers, per
/// network, whether it is usable.
async fn ensure_networks<'a>(
    engine: &Engine,
    swarm: &str,
    names: &BTreeSet<&'a str>,
    options: &HashMap<&str, &BTreeMap<String, String>>,
) -> HashMap<&'a str, std::result::Result<(), String>> {
    let existing: BTreeMap<String, String> = match engine.docker.list_networks(None).await {
        Ok(list) => list
            .into_iter()
            .filter_map(|n| Some((n.name?, n.driver.unwrap_or_default())))
            .collect(),
        Err(e) => {
            let why = format!("listing networks: {e}");
            return names.iter().map(|n| (*n, Err(why.clone()))).collect();
        }
    };
    let mut out = HashMap::new();
    for name in names {
        let result = match existing.get(*name) {
            Some(driver) if driver == "overlay" => Ok(()),
            Some(driver) => Err(format!(
                "network {name} exists with driver {driver}; services need an overlay network"
            )),
            None => engine
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("overlay".into()),
                    attachable: Some(true),
                    options: options
                        .get(*name)
                        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                    labels: Some(HashMap::from([(
                        MANAGED_LABEL.to_string(),
                        swarm.to_string(),
                    )])),
                    ..Default::default()
                })
                .await
                .map(|_| tracing::info!(network = %name, "created overlay network"))
                .map_err(|e| format!("creating network {name}: {e}")),
        };
        out.insert(*name, result);
    }
    out
}

/// Removes the overlay networks fogswarm created that no service names any
/// more. One still in use (tasks shutting down) is retried next pass.
async fn remove_unused_networks(engine: &Engine, swarm: &str, wanted: &BTreeSet<&str>) {
    let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
        .filters(&HashMap::from([(
            "label".to_string(),
            vec![format!("{MANAGED_LABEL}={swarm}")],
        )]))
        .build();
    let Ok(list) = engine.docker.list_networks(Some(options)).await else {
        return;
    };
    for network in list {
        let Some(name) = network.name else { continue };
        if !wanted.contains(name.as_str()) && engine.docker.remove_network(&name).await.is_ok() {
            tracing::info!(network = %name, "removed overlay network no service uses");
        }
    }
}

async fn create(
    engine: &Engine,
    swarm: &str,
    want: &DesiredService,
    files: &SwarmFiles,
    login: &mut Result<Option<DockerCredentials>>,
) -> Result<()> {
    let login = take_login(login)?;
    let image = resolve_image(engine, &want.spec.image, login.clone()).await;
    let spec = engine_spec(swarm, want, &image, files)?;
    engine
        .docker
        .create_service(spec, login)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "creating service {}: {}",
                want.spec.name,
                engine_message(&e)
            )
        })?;
    tracing::info!(service = %want.spec.name, revision = want.revision, image = %image, "created service");
    Ok(())
}

async fn update(
    engine: &Engine,
    swarm: &str,
    want: &DesiredService,
    have: &Managed,
    files: &SwarmFiles,
    login: &mut Result<Option<DockerCredentials>>,
) -> Result<()> {
    let login = take_login(login)?;
    let image = resolve_image(engine, &want.spec.image, login.clone()).await;
    let spec = engine_spec(swarm, want, &image, files)?;
    let options = bollard::query_parameters::UpdateServiceOptionsBuilder::default()
        .version(have.version as i32)
        .build();
    engine
        .docker
        .update_service(&have.id, spec, options, login)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "updating service {}: {}",
                want.spec.name,
                engine_message(&e)
            )
        })?;
    tracing::info!(service = %want.spec.name, revision = want.revision, image = %image, "updated service");
    Ok(())
}

fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

/// Pins a tag to the digest the registry has now, as `docker service
/// create` does, so every node runs the same image. When the registry
/// cannot be asked, the tag is used as it is and nodes resolve it.
async fn resolve_image(engine: &Engine, image: &str, login: Option<DockerCredentials>) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    match engine.docker.inspect_registry_image(image, login).await {
        Ok(inspect) => match inspect.descriptor.digest {
            Some(digest) => format!("{image}@{digest}"),
            None => image.to_string(),
        },
        Err(e) => {
            tracing::warn!(image = %image, error = %engine_message(&e), "could not resolve the image digest; nodes will resolve the tag");
            image.to_string()
        }
    }
}

/// The swarm secrets and configs fogswarm made, by name (the engine wants
/// their ids in a service spec), and the names the services want now.
#[derive(Default)]
struct SwarmFiles {
    secrets: HashMap<String, String>,
    configs: HashMap<String, String>,
    wanted: BTreeSet<String>,
}

/// Every secret and config version the desired services name.
fn wanted_files(desired: &[DesiredService]) -> BTreeSet<FileVersion> {
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

fn managed_filter(swarm: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{MANAGED_LABEL}={swarm}")],
    )])
}

/// Creates the swarm secrets and configs the desired services need and
/// the swarm lacks, with values fetched from the server for just those
/// (a value never touches the disk or the log here).
async fn ensure_files(
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
async fn remove_unused_files(engine: &Engine, swarm: &str, files: &SwarmFiles) {
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
struct Logins(HashMap<String, std::result::Result<DockerCredentials, String>>);

impl Logins {
    async fn get(
        &mut self,
        server: &Client,
        want: &DesiredService,
    ) -> Result<Option<DockerCredentials>> {
        let Some(host) = &want.registry_auth else {
            return Ok(None);
        };
        if !self.0.contains_key(host) {
            let fetched = server
                .values(&ValuesRequest {
                    files: vec![],
                    registries: vec![host.clone()],
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
            self.0.insert(host.clone(), fetched);
        }
        match self.0.get(host) {
            Some(Ok(c)) => Ok(Some(c.clone())),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Ok(None),
        }
    }
}

fn take_login(login: &mut Result<Option<DockerCredentials>>) -> Result<Option<DockerCredentials>> {
    std::mem::replace(login, Ok(None))
}

/// Translates a fogswarm spec into the engine's.
fn engine_spec(
    swarm: &str,
    want: &DesiredService,
    image: &str,
    files: &SwarmFiles,
) -> Result<bollard::models::ServiceSpec> {
    let spec = &want.spec;
    let nanos = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|d| {
                parse_duration(d)
                    .map(|n| n as i64)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    };
    let cpus = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|c| parse_nano_cpus(c).map_err(anyhow::Error::msg))
            .transpose()
    };
    let memory = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|m| {
                parse_memory(m)
                    .map(|b| b as i64)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    };
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_LABEL.to_string(), swarm.to_string());
    labels.insert(REVISION_LABEL.to_string(), want.revision.to_string());
    if let Some(stack) = &spec.stack {
        labels.insert(STACK_LABEL.to_string(), stack.clone());
    }
    let mut container_labels: HashMap<String, String> = spec
        .container_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(
        TEMPLATE_LABEL.to_string(),
        template_fingerprint(want, image),
    );
    if let Some(stack) = &spec.stack {
        container_labels.insert(STACK_LABEL.to_string(), stack.clone());
    }
    let replicas = spec.replicas.unwrap_or(1) as i64;
    let mode = match spec.mode {
        ServiceMode::Global => serde_json::json!({"Global": {}}),
        ServiceMode::Replicated => serde_json::json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::GlobalJob => serde_json::json!({"GlobalJob": {}}),
        ServiceMode::ReplicatedJob => serde_json::json!({"ReplicatedJob": {
            "TotalCompletions": replicas,
            "MaxConcurrent": spec.max_concurrent.map(|m| m as i64).unwrap_or(replicas),
        }}),
    };
    let policy = |u: &UpdatePolicy, failure: FailureAction| -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "Parallelism": u.parallelism,
            "Delay": nanos(&u.delay)?,
            "FailureAction": failure,
            "Monitor": nanos(&u.monitor)?,
            "Order": u.order,
        }))
    };
    let u = &spec.update;
    let update_config = policy(u, u.failure_action)?;
    // Without its own policy, a rollback goes back the way the update
    // came, and stops if that fails too.
    let rollback_config = match &spec.rollback {
        Some(r) => policy(r, r.failure_action)?,
        None => policy(u, FailureAction::Pause)?,
    };
    let r = &spec.restart;
    // Jobs must not restart once they succeed: Docker's default for them
    // is on-failure.
    let condition = match (spec.mode.is_job(), r.condition) {
        (true, RestartCondition::Any) => RestartCondition::OnFailure,
        (_, c) => c,
    };
    let restart_policy = serde_json::json!({
        "Condition": condition,
        "Delay": nanos(&r.delay)?,
        "MaxAttempts": r.max_attempts,
        "Window": nanos(&r.window)?,
    });
    let res = &spec.resources;
    let resources = serde_json::json!({
        "Limits": {
            "NanoCPUs": cpus(&res.limit_cpus)?,
            "MemoryBytes": memory(&res.limit_memory)?,
            "Pids": res.limit_pids,
        },
        "Reservations": {
            "NanoCPUs": cpus(&res.reserve_cpus)?,
            "MemoryBytes": memory(&res.reserve_memory)?,
        },
    });
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "Protocol": p.protocol,
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": p.mode,
            })
        })
        .collect();
    let mut engine = serde_json::json!({
        "Name": spec.name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container_spec(want, image, container_labels, files)?,
            "Resources": resources,
            "RestartPolicy": restart_policy,
            "Placement": {
                "Constraints": spec.constraints,
                "Preferences": spec.placement_prefs
                    .iter()
                    .filter_map(|p| parse_placement_pref(p).ok())
                    .map(|d| serde_json::json!({"Spread": {"SpreadDescriptor": d}}))
                    .collect::<Vec<_>>(),
                "MaxReplicas": spec.max_replicas,
            },
            "Networks": spec.networks
                .iter()
                .map(|n| {
                    let mut aliases: Vec<&str> = spec.stack.as_ref().map(|_| spec.short_name()).into_iter().collect();
                    aliases.extend(spec.network_aliases.get(n).into_iter().flatten().map(String::as_str));
                    serde_json::json!({"Target": n, "Aliases": aliases})
                })
                .collect::<Vec<_>>(),
            "LogDriver": spec.log_driver.as_ref().map(|l| serde_json::json!({"Name": l.name, "Options": l.options})),
            "ForceUpdate": spec.force_update,
        },
        "Mode": mode,
        "EndpointSpec": {"Mode": spec.endpoint_mode, "Ports": ports},
    });
    // Swarm refuses update and rollback policies on jobs.
    if !spec.mode.is_job() {
        engine["UpdateConfig"] = update_config;
        engine["RollbackConfig"] = rollback_config;
    }
    strip_nulls(&mut engine);
    serde_json::from_value(engine).context("building the engine's service spec")
}

/// The container part of a task: command, mounts, files, healthcheck and
/// the rest of Engine API 1.41's ContainerSpec.
fn container_spec(
    want: &DesiredService,
    image: &str,
    labels: HashMap<String, String>,
    files: &SwarmFiles,
) -> Result<serde_json::Value> {
    let spec = &want.spec;
    let nanos = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|d| {
                parse_duration(d)
                    .map(|n| n as i64)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    };
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let mounts = spec
        .mounts
        .iter()
        .map(|m| -> Result<serde_json::Value> {
            Ok(serde_json::json!({
                "Type": m.kind,
                "Source": m.source,
                "Target": m.target,
                "ReadOnly": m.read_only,
                "BindOptions": m.bind_propagation.as_ref().map(|p| serde_json::json!({"Propagation": p})),
                "VolumeOptions": (m.kind == MountType::Volume).then(|| serde_json::json!({
                    "NoCopy": m.volume_nocopy,
                    "Labels": m.volume_labels,
                    "DriverConfig": m.volume_driver.as_ref().map(|d| serde_json::json!({
                        "Name": d,
                        "Options": m.volume_options,
                    })).or_else(|| (!m.volume_options.is_empty()).then(|| serde_json::json!({
                        "Options": m.volume_options,
                    }))),
                })),
                "TmpfsOptions": (m.kind == MountType::Tmpfs).then(|| -> Result<serde_json::Value> {
                    Ok(serde_json::json!({
                        "SizeBytes": m.tmpfs_size.as_deref().map(parse_memory_any).transpose().map_err(anyhow::Error::msg)?,
                        "Mode": m.tmpfs_mode,
                    }))
                }).transpose()?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let file_refs = |refs: &[FileRef],
                     versions: &BTreeMap<String, u64>,
                     ids: &HashMap<String, String>,
                     is_secret: bool|
     -> Result<Vec<serde_json::Value>> {
        let kind = if is_secret { "secret" } else { "config" };
        refs.iter()
            .map(|r| {
                let version = versions.get(&r.source).with_context(|| {
                    format!("the server named no version of {kind} {}", r.source)
                })?;
                let name = versioned_name(&r.source, *version);
                let id = ids
                    .get(&name)
                    .with_context(|| format!("{kind} {name} is missing from the swarm"))?;
                let (id_key, name_key) = if is_secret {
                    ("SecretID", "SecretName")
                } else {
                    ("ConfigID", "ConfigName")
                };
                Ok(serde_json::json!({
                    "File": {
                        "Name": r.target_or_default(is_secret),
                        "UID": r.uid.clone().unwrap_or_else(|| "0".into()),
                        "GID": r.gid.clone().unwrap_or_else(|| "0".into()),
                        "Mode": r.mode.unwrap_or(0o444),
                    },
                    id_key: id,
                    name_key: name,
                }))
            })
            .collect()
    };
    let healthcheck = spec
        .healthcheck
        .as_ref()
        .map(|h| -> Result<serde_json::Value> {
            Ok(serde_json::json!({
                "Test": non_empty(&h.test),
                "Interval": nanos(&h.interval)?,
                "Timeout": nanos(&h.timeout)?,
                "Retries": h.retries,
                "StartPeriod": nanos(&h.start_period)?,
            }))
        })
        .transpose()?;
    let hosts: Vec<String> = spec
        .hosts
        .iter()
        .filter_map(|h| parse_host_entry(h).ok())
        .map(|(host, ip)| format!("{ip} {host}"))
        .collect();
    let dns = (!spec.dns.is_empty() || !spec.dns_search.is_empty() || !spec.dns_options.is_empty())
        .then(|| {
            serde_json::json!({
                "Nameservers": spec.dns,
                "Search": spec.dns_search,
                "Options": spec.dns_options,
            })
        });
    Ok(serde_json::json!({
        "Image": image,
        "Labels": labels,
        "Command": non_empty(&spec.entrypoint),
        "Args": non_empty(&spec.command),
        "Hostname": spec.hostname,
        "Env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Dir": spec.workdir,
        "User": spec.user,
        "Groups": non_empty(&spec.groups),
        "TTY": spec.tty,
        "ReadOnly": spec.read_only,
        "Mounts": mounts,
        "StopSignal": spec.stop_signal,
        "StopGracePeriod": nanos(&spec.stop_grace_period)?,
        "HealthCheck": healthcheck,
        "Hosts": (!hosts.is_empty()).then_some(hosts),
        "DNSConfig": dns,
        "Secrets": file_refs(&spec.secrets, &want.secret_versions, &files.secrets, true)?,
        "Configs": file_refs(&spec.configs, &want.config_versions, &files.configs, false)?,
        "Init": spec.init,
        "Sysctls": (!spec.sysctls.is_empty()).then_some(&spec.sysctls),
        "CapabilityAdd": non_empty(&spec.cap_add),
        "CapabilityDrop": non_empty(&spec.cap_drop),
        "Ulimits": spec.ulimits.iter().map(|u| serde_json::json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect::<Vec<_>>(),
    }))
}

/// Drops JSON nulls, so a field left out stays out of the engine's spec
/// (and takes the engine's default) instead of arriving as null.
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

impl ServiceDuty {
    /// What the managed services run now, with the errors of this pass.
    pub async fn observe(
        &self,
        engine: &Engine,
        swarm: &str,
        desired: &[DesiredService],
        nodes: &[DesiredNode],
        errors: &BTreeMap<String, String>,
    ) -> Result<ObservedReport> {
        let managed = list_managed(engine, swarm).await?;
        let tasks = engine
            .docker
            .list_tasks(None::<bollard::query_parameters::ListTasksOptions>)
            .await
            .context("listing tasks")?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for task in tasks {
            if let Some(id) = task.service_id.clone() {
                by_service.entry(id).or_default().push(task);
            }
        }
        let devices: HashMap<&str, &DesiredNode> = nodes
            .iter()
            .filter_map(|n| Some((n.node_id.as_deref()?, n)))
            .collect();
        let swarm_nodes = engine
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .context("listing nodes")?;
        let mut services = Vec::new();
        for want in desired {
            let name = &want.spec.name;
            let Some(have) = managed.get(name) else {
                services.push(ServiceObserved {
                    name: name.clone(),
                    revision: None,
                    image: None,
                    desired_tasks: 0,
                    running_tasks: 0,
                    completed_tasks: 0,
                    update_state: None,
                    rolled_back_revision: None,
                    apply_error: errors.get(name).cloned(),
                    error: errors.get(name).cloned(),
                    tasks: vec![],
                });
                continue;
            };
            let tasks = by_service.remove(&have.id).unwrap_or_default();
            services.push(self.observe_service(
                name,
                have,
                tasks,
                &devices,
                &swarm_nodes,
                errors.get(name),
            ));
        }
        Ok(ObservedReport { services })
    }

    fn observe_service(
        &self,
        name: &str,
        have: &Managed,
        mut tasks: Vec<Task>,
        devices: &HashMap<&str, &DesiredNode>,
        nodes: &[Node],
        apply_error: Option<&String>,
    ) -> ServiceObserved {
        let state = |t: &Task| t.status.as_ref().and_then(|s| s.state);
        // Jobs' tasks are meant to end: COMPLETE is their desired state.
        let current = |t: &Task| {
            matches!(
                t.desired_state,
                Some(
                    TaskState::RUNNING
                        | TaskState::READY
                        | TaskState::ACCEPTED
                        | TaskState::COMPLETE
                )
            )
        };
        // Newest first, so the kept failures are the latest.
        tasks.sort_by(|a, b| {
            let at = |t: &Task| {
                t.status
                    .as_ref()
                    .and_then(|s| s.timestamp.clone())
                    .map(|d| d.to_string())
            };
            at(b).cmp(&at(a))
        });
        // Running the current spec: right after an update, old tasks still run
        // and must not count.
        let running = tasks
            .iter()
            .filter(|t| {
                current(t)
                    && state(t) == Some(TaskState::RUNNING)
                    && template_of(t.spec.as_ref()) == have.template
            })
            .count() as u64;
        let completed = tasks
            .iter()
            .filter(|t| {
                state(t) == Some(TaskState::COMPLETE)
                    && template_of(t.spec.as_ref()) == have.template
            })
            .count() as u64;
        let desired = match have.replicas {
            Some(r) => r,
            None => eligible_nodes(nodes, &have.constraints),
        };
        let failed: Vec<&Task> = tasks
            .iter()
            .filter(|t| {
                !current(t) && matches!(state(t), Some(TaskState::FAILED | TaskState::REJECTED))
            })
            .take(FAILED_TASKS_REPORTED)
            .collect();
        let update_failed = have
            .update_state
            .as_deref()
            .is_some_and(|s| s == "paused" || s.starts_with("rollback"));
        let error = apply_error
            .cloned()
            .or_else(|| have.update_message.clone().filter(|_| update_failed))
            .or_else(|| failed.first().and_then(|t| t.status.as_ref()?.err.clone()));
        let mut reported: Vec<TaskObserved> = tasks
            .iter()
            .filter(|t| current(t))
            .chain(failed.iter().copied())
            .map(|t| {
                let node_id = t.node_id.clone().filter(|n| !n.is_empty());
                TaskObserved {
                    id: t.id.clone().unwrap_or_default(),
                    slot: t.slot.map(|s| s as u64),
                    device: node_id
                        .as_deref()
                        .and_then(|n| devices.get(n))
                        .map(|d| d.device_id.clone()),
                    hostname: node_id.as_deref().and_then(|n| {
                        nodes
                            .iter()
                            .find(|node| node.id.as_deref() == Some(n))?
                            .description
                            .as_ref()?
                            .hostname
                            .clone()
                    }),
                    node_id,
                    image: t
                        .spec
                        .as_ref()
                        .and_then(|s| s.container_spec.as_ref())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default(),
                    state: state(t).map(|s| s.to_string()).unwrap_or_default(),
                    desired_state: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
                    error: t.status.as_ref().and_then(|s| s.err.clone()),
                    since: t
                        .status
                        .as_ref()
                        .and_then(|s| s.timestamp.clone())
                        .map(|d| d.to_string()),
                }
            })
            .collect();
        reported.sort_by(|a, b| {
            (
                a.desired_state != "running",
                a.slot,
                a.device.as_ref().map(|d| d.to_string()),
            )
                .cmp(&(
                    b.desired_state != "running",
                    b.slot,
                    b.device.as_ref().map(|d| d.to_string()),
                ))
        });
        ServiceObserved {
            name: name.to_string(),
            revision: have.revision,
            image: have.image.clone(),
            desired_tasks: desired,
            running_tasks: running,
            completed_tasks: completed,
            update_state: have.update_state.clone(),
            rolled_back_revision: self.rolled_back_from(name, have),
            apply_error: apply_error.cloned(),
            error,
            tasks: reported,
        }
    }
}

/// How many ready, active nodes satisfy every constraint: the tasks a
/// global service should have.
fn eligible_nodes(nodes: &[Node], constraints: &[String]) -> u64 {
    let parsed: Vec<Constraint> = constraints
        .iter()
        .filter_map(|c| Constraint::parse(c).ok())
        .collect();
    nodes
        .iter()
        .filter(|n| {
            let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
            let spec = n.spec.as_ref();
            let active =
                spec.and_then(|s| s.availability) == Some(NodeSpecAvailabilityEnum::ACTIVE);
            ready
                && active
                && parsed
                    .iter()
                    .all(|c| c.matches(node_value(n, &c.key).as_deref()))
        })
        .count() as u64
}

/// A node's value for a constraint key, as swarm sees it.
fn node_value(node: &Node, key: &ConstraintKey) -> Option<String> {
    let description = node.description.as_ref();
    let spec = node.spec.as_ref();
    match key {
        ConstraintKey::NodeId => node.id.clone(),
        ConstraintKey::NodeHostname => description?.hostname.clone(),
        ConstraintKey::NodeRole => spec?.role.map(|r| r.to_string()),
        ConstraintKey::PlatformOs => description?.platform.as_ref()?.os.clone(),
        ConstraintKey::PlatformArch => description?.platform.as_ref()?.architecture.clone(),
        ConstraintKey::NodeLabel(k) => spec?.labels.as_ref()?.get(k).cloned(),
        ConstraintKey::EngineLabel(k) => description?
            .engine
            .as_ref()?
            .labels
            .as_ref()?
            .get(k)
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(spec: ServiceSpec) -> DesiredService {
        DesiredService {
            revision: 7,
            spec,
            ..Default::default()
        }
    }

    #[test]
    fn spec_translation_carries_every_field() {
        let mut spec = ServiceSpec::new("shop_web", "reg:5000/fog-hello:v1");
        spec.stack = Some("shop".into());
        spec.mode = ServiceMode::Global;
        spec.constraints = vec!["node.labels.temperature_sensor==1".into()];
        spec.placement_prefs = vec!["spread=node.labels.location".into()];
        spec.env.insert("FOG_LABELS".into(), "a=b".into());
        spec.ports = vec![parse_publish("mode=host,8080:8080").expect("port")];
        spec.networks = vec!["shop_backend".into()];
        spec.update.parallelism = 2;
        spec.update.delay = Some("1s".into());
        spec.update.failure_action = FailureAction::Rollback;
        spec.resources.limit_memory = Some("64M".into());
        spec.resources.limit_cpus = Some("0.5".into());
        let engine = engine_spec(
            "fog",
            &desired(spec),
            "reg:5000/fog-hello:v1@sha256:ab",
            &SwarmFiles::default(),
        )
        .expect("spec");
        let json = serde_json::to_value(&engine).expect("json");
        assert_eq!(json["Labels"][MANAGED_LABEL], "fog");
        assert_eq!(json["Labels"][REVISION_LABEL], "7");
        assert_eq!(json["Labels"][STACK_LABEL], "shop");
        assert_eq!(json["Mode"]["Global"], serde_json::json!({}));
        let task = &json["TaskTemplate"];
        assert_eq!(
            task["ContainerSpec"]["Image"],
            "reg:5000/fog-hello:v1@sha256:ab"
        );
        assert_eq!(
            task["ContainerSpec"]["Env"],
            serde_json::json!(["FOG_LABELS=a=b"])
        );
        assert_eq!(
            task["Placement"]["Constraints"][0],
            "node.labels.temperature_sensor==1"
        );
        assert_eq!(
            task["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.labels.location"
        );
        assert_eq!(task["Networks"][0]["Target"], "shop_backend");
        assert_eq!(task["Networks"][0]["Aliases"], serde_json::json!(["web"]));
        assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
        assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
        assert_eq!(json["UpdateConfig"]["Parallelism"], 2);
        assert_eq!(json["UpdateConfig"]["Delay"], 1_000_000_000i64);
        assert_eq!(json["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    }

    #[test]
    fn replicated_defaults_to_one_task() {
        let engine = engine_spec(
            "fog",
            &desired(ServiceSpec::new("w", "x")),
            "x",
            &SwarmFiles::default(),
        )
        .expect("spec");
        assert_eq!(
            engine
                .mode
                .and_then(|m| m.replicated)
                .and_then(|r| r.replicas),
            Some(1)
        );
    }

    fn managed(revision: u64, state: Option<&str>) -> Managed {
        Managed {
            id: "s".into(),
            version: 1,
            revision: Some(revision),
            update_state: state.map(String::from),
            update_message: None,
            image: None,
            replicas: None,
            template: None,
            constraints: vec![],
        }
    }

    fn want(revision: u64, rolled_back: bool) -> DesiredService {
        DesiredService {
            revision,
            rolled_back,
            spec: ServiceSpec::new("web", "x"),
            ..Default::default()
        }
    }

    #[test]
    fn a_rolled_back_revision_is_not_retried_but_a_newer_one_is() {
        let mut duty = ServiceDuty::default();
        duty.applied.insert("web".into(), 5);
        let rolled_back = managed(3, Some("rollback_completed"));
        assert!(duty.swarm_gave_up_on(&rolled_back, &want(5, false)));
        assert_eq!(duty.rolled_back_from("web", &rolled_back), Some(5));
        assert!(!duty.swarm_gave_up_on(&rolled_back, &want(6, false)));
        // A new leader knows of the rollback from the server only.
        let fresh = ServiceDuty::default();
        assert!(!fresh.swarm_gave_up_on(&rolled_back, &want(5, false)));
        assert!(fresh.swarm_gave_up_on(&rolled_back, &want(5, true)));
        assert_eq!(fresh.rolled_back_from("web", &rolled_back), None);
        assert!(duty.swarm_gave_up_on(&managed(5, Some("paused")), &want(5, false)));
        assert!(!duty.swarm_gave_up_on(&managed(3, Some("completed")), &want(5, false)));
    }

    #[test]
    fn the_template_fingerprint_follows_what_shapes_tasks_only() {
        let spec = desired(ServiceSpec::new("web", "x:1"));
        let base = template_fingerprint(&spec, "x:1@sha256:aa");
        assert_eq!(base, template_fingerprint(&spec.clone(), "x:1@sha256:aa"));
        let mut scaled = spec.clone();
        scaled.spec.replicas = Some(5);
        scaled.spec.update.parallelism = 3;
        scaled.spec.labels.insert("team".into(), "a".into());
        assert_eq!(template_fingerprint(&scaled, "x:1@sha256:aa"), base);
        assert_ne!(template_fingerprint(&spec, "x:1@sha256:bb"), base);
        let mut env = spec.clone();
        env.spec.env.insert("A".into(), "1".into());
        assert_ne!(template_fingerprint(&env, "x:1@sha256:aa"), base);
        let mut rotated = spec.clone();
        rotated.secret_versions.insert("db".into(), 2);
        assert_ne!(template_fingerprint(&rotated, "x:1@sha256:aa"), base);
        let mut forced = spec;
        forced.spec.force_update = 1;
        assert_ne!(template_fingerprint(&forced, "x:1@sha256:aa"), base);
    }

    #[test]
    fn container_fields_reach_the_engine_spec() {
        let mut spec = ServiceSpec::new("job", "x");
        spec.mode = ServiceMode::ReplicatedJob;
        spec.replicas = Some(4);
        spec.max_concurrent = Some(2);
        spec.entrypoint = vec!["/fog-hello".into()];
        spec.command = vec!["once".into(), "--fast".into()];
        spec.workdir = Some("/srv".into());
        spec.user = Some("1000:1000".into());
        spec.mounts = vec![
            parse_mount(
                "type=volume,source=data,target=/data,volume-driver=local,volume-opt=o=bind",
            )
            .expect("m"),
            parse_mount("type=tmpfs,target=/tmp,tmpfs-size=1m").expect("m"),
        ];
        spec.secrets = vec![parse_file_ref("--secret", "source=db,mode=0400").expect("s")];
        spec.configs =
            vec![parse_file_ref("--config", "source=conf,target=/etc/app.conf").expect("c")];
        spec.healthcheck = Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Some("2s".into()),
            retries: Some(3),
            ..Default::default()
        });
        spec.cap_add = vec!["NET_ADMIN".into()];
        spec.sysctls
            .insert("net.core.somaxconn".into(), "1024".into());
        spec.ulimits = vec![parse_ulimit("nofile=1024:2048").expect("u")];
        spec.init = Some(true);
        spec.read_only = true;
        spec.stop_grace_period = Some("3s".into());
        spec.hosts = vec!["db:10.0.0.2".into()];
        spec.dns = vec!["10.0.0.53".into()];
        spec.resources.limit_pids = Some(64);
        spec.log_driver = Some(LogDriver {
            name: "json-file".into(),
            options: BTreeMap::from([("max-size".into(), "1m".into())]),
        });
        let mut want = desired(spec);
        want.secret_versions.insert("db".into(), 3);
        want.config_versions.insert("conf".into(), 1);
        let files = SwarmFiles {
            secrets: HashMap::from([("db.v3".into(), "sid".into())]),
            configs: HashMap::from([("conf.v1".into(), "cid".into())]),
            wanted: BTreeSet::new(),
        };
        let engine = engine_spec("fog", &want, "x", &files).expect("spec");
        let json = serde_json::to_value(&engine).expect("json");
        assert_eq!(json["Mode"]["ReplicatedJob"]["TotalCompletions"], 4);
        assert_eq!(json["Mode"]["ReplicatedJob"]["MaxConcurrent"], 2);
        assert!(
            json.get("UpdateConfig").is_none(),
            "jobs take no update policy"
        );
        let task = &json["TaskTemplate"];
        assert_eq!(task["RestartPolicy"]["Condition"], "on-failure");
        let c = &task["ContainerSpec"];
        assert_eq!(c["Command"], serde_json::json!(["/fog-hello"]));
        assert_eq!(c["Args"], serde_json::json!(["once", "--fast"]));
        assert_eq!(c["Dir"], "/srv");
        assert_eq!(c["User"], "1000:1000");
        assert_eq!(
            c["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"]["o"],
            "bind"
        );
        assert_eq!(c["Mounts"][1]["TmpfsOptions"]["SizeBytes"], 1 << 20);
        assert_eq!(c["Secrets"][0]["SecretID"], "sid");
        assert_eq!(c["Secrets"][0]["SecretName"], "db.v3");
        assert_eq!(c["Secrets"][0]["File"]["Name"], "db");
        assert_eq!(c["Secrets"][0]["File"]["Mode"], 0o400);
        assert_eq!(c["Configs"][0]["ConfigID"], "cid");
        assert_eq!(c["Configs"][0]["File"]["Name"], "/etc/app.conf");
        assert_eq!(
            c["HealthCheck"]["Test"],
            serde_json::json!(["CMD-SHELL", "true"])
        );
        assert_eq!(c["HealthCheck"]["Interval"], 2_000_000_000i64);
        assert_eq!(c["CapabilityAdd"], serde_json::json!(["NET_ADMIN"]));
        assert_eq!(c["Sysctls"]["net.core.somaxconn"], "1024");
        assert_eq!(c["Ulimits"][0]["Hard"], 2048);
        assert_eq!(c["Init"], true);
        assert_eq!(c["ReadOnly"], true);
        assert_eq!(c["StopGracePeriod"], 3_000_000_000i64);
        assert_eq!(c["Hosts"], serde_json::json!(["10.0.0.2 db"]));
        assert_eq!(
            c["DNSConfig"]["Nameservers"],
            serde_json::json!(["10.0.0.53"])
        );
        assert_eq!(task["Resources"]["Limits"]["Pids"], 64);
        assert_eq!(task["LogDriver"]["Options"]["max-size"], "1m");
        // A secret whose version the swarm lacks is an error, not a
        // silently missing file.
        let e = engine_spec("fog", &want, "x", &SwarmFiles::default()).expect_err("missing");
        assert!(format!("{e:#}").contains("db.v3"), "{e:#}");
    }

    #[test]
    fn eligible_nodes_are_ready_active_and_match() {
        let node = |host: &str, labels: &[(&str, &str)], active: bool, ready: bool| {
            serde_json::from_value::<Node>(serde_json::json!({
                "ID": host,
                "Spec": {
                    "Role": "worker",
                    "Availability": if active { "active" } else { "drain" },
                    "Labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
                },
                "Description": {"Hostname": host, "Platform": {"OS": "linux", "Architecture": "x86_64"}},
                "Status": {"State": if ready { "ready" } else { "down" }},
            }))
            .expect("node")
        };
        let nodes = vec![
            node("dev1", &[("temperature_sensor", "1")], true, true),
            node("dev2", &[("temperature_sensor", "1")], false, true),
            node("dev3", &[("temperature_sensor", "1")], true, false),
            node("dev4", &[], true, true),
        ];
        let sensor = vec!["node.labels.temperature_sensor==1".to_string()];
        assert_eq!(eligible_nodes(&nodes, &sensor), 1);
        assert_eq!(eligible_nodes(&nodes, &[]), 2);
        let not_dev1 = vec![
            "node.hostname!=dev1".to_string(),
            "node.platform.arch==x86_64".to_string(),
        ];
        assert_eq!(eligible_nodes(&nodes, &not_dev1), 1);
    }
}
