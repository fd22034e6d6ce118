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
use fogswarm_protocol::api::{DesiredNode, DesiredState};
use fogswarm_protocol::constraint::{Constraint, ConstraintKey};
use fogswarm_protocol::hardware;
use fogswarm_protocol::secret::{
    registry_of, FileKind, FileVersion, ValuesRequest, FILE_SOURCE_LABEL,
};
use fogswarm_protocol::service::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod files;
mod signed;
mod spec;
use files::*;
use signed::SignedOnly;
use spec::*;

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
    /// A signed-only swarm's keys and the images checked against them.
    signed: SignedOnly,
    /// The logins fetched this pass, by registry host.
    logins: Logins,
}

impl ServiceDuty {
    /// Makes the managed services match `desired`; answers what changed
    /// and, per service, the error that stopped it.
    pub async fn reconcile(
        &mut self,
        engine: &Engine,
        server: &Client,
        state: &DesiredState,
    ) -> Result<(Changes, BTreeMap<String, String>)> {
        let (swarm, desired) = (state.swarm.as_str(), state.services.as_slice());
        self.signed.set_keys(&state.signing_keys);
        self.logins = Logins::default();
        let mut changes = Changes::default();
        let mut errors = BTreeMap::new();
        let managed = list_managed(engine, swarm).await?;
        let files = ensure_files(engine, server, swarm, desired).await?;
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
            let have = managed.get(name);
            if have.is_some_and(|h| {
                h.revision == Some(want.revision) || self.swarm_gave_up_on(h, want)
            }) {
                continue;
            }
            match self.apply(engine, server, swarm, want, have, &files).await {
                Ok(()) => {
                    self.applied.insert(name.clone(), want.revision);
                    match have {
                        None => changes.created.push(name.clone()),
                        Some(_) => changes.updated.push(name.clone()),
                    }
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

/// Name and image of each service not managed by fogswarm for `swarm`.
async fn unmanaged_images(engine: &Engine, swarm: &str) -> Result<Vec<(String, String)>> {
    let services = engine
        .docker
        .list_services(None::<bollard::query_parameters::ListServicesOptions>)
        .await
        .context("listing services")?;
    Ok(services
        .into_iter()
        .filter_map(|service| {
            let spec = service.spec?;
            let managed = spec
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .is_some_and(|s| s == swarm);
            let image = spec.task_template?.container_spec?.image?;
            (!managed).then_some((spec.name?, image))
        })
        .collect())
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

impl ServiceDuty {
    /// Creates the service (`have` None) or updates it to `want`, with the
    /// image pinned to a digest: in a signed-only swarm, one signed by the
    /// swarm's keys or nothing is done.
    async fn apply(
        &mut self,
        engine: &Engine,
        server: &Client,
        swarm: &str,
        want: &DesiredService,
        have: Option<&Managed>,
        files: &SwarmFiles,
    ) -> Result<()> {
        let name = &want.spec.name;
        let login = self.logins.get(server, want).await?;
        let image = if self.signed.required() {
            self.signed
                .pin(engine, &want.spec.image, login.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("refused by the swarm's signature rule: {e}"))?
        } else {
            resolve_image(engine, &want.spec.image, login.clone()).await
        };
        let spec = engine_spec(swarm, want, &image, files)?;
        let done = match have {
            None => engine.docker.create_service(spec, login).await.map(drop),
            Some(have) => {
                let options = bollard::query_parameters::UpdateServiceOptionsBuilder::default()
                    .version(have.version as i32)
                    .build();
                engine
                    .docker
                    .update_service(&have.id, spec, options, login)
                    .await
                    .map(drop)
            }
        };
        let verb = if have.is_some() { "updat" } else { "creat" };
        done.map_err(|e| anyhow::anyhow!("{verb}ing service {name}: {}", engine_message(&e)))?;
        tracing::info!(service = %name, revision = want.revision, image = %image, "{verb}ed service");
        Ok(())
    }

    /// Services made outside fogswarm whose image is unsigned, in a
    /// signed-only swarm. The registry is read with the swarm's login for
    /// it when one of the swarm's services uses that login, else
    /// anonymously.
    pub async fn unsigned_unmanaged(
        &mut self,
        engine: &Engine,
        server: &Client,
        state: &DesiredState,
    ) -> Result<Vec<UnsignedService>> {
        if !self.signed.required() {
            return Ok(Vec::new());
        }
        let with_login: BTreeSet<&str> = state
            .services
            .iter()
            .filter_map(|s| s.registry_auth.as_deref())
            .collect();
        let mut out = Vec::new();
        for (name, image) in unmanaged_images(engine, &state.swarm).await? {
            let problem = if !image.contains('@') {
                Some(
                    "not pinned to a digest, so no signature can vouch for what nodes pull"
                        .to_string(),
                )
            } else {
                let host = registry_of(&image);
                let login = match with_login.contains(host) && self.signed.known(&image).is_none() {
                    true => self.logins.for_host(server, host).await.ok(),
                    false => None,
                };
                self.signed.pin(engine, &image, login.as_ref()).await.err()
            };
            if let Some(problem) = problem {
                out.push(UnsignedService {
                    name,
                    image,
                    problem,
                });
            }
        }
        Ok(out)
    }
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
        Ok(ObservedReport {
            services,
            unsigned: Vec::new(),
        })
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
