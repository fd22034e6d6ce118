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
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, NetworkCreateRequest, Node,
    NodeSpecAvailabilityEnum, NodeState, ResourceObject, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use fogswarm_client::engine::Engine;
use fogswarm_protocol::api::DesiredNode;
use fogswarm_protocol::constraint::{Constraint, ConstraintKey};
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
/// count restarts nothing.
fn template_fingerprint(spec: &ServiceSpec, image: &str) -> String {
    // Every part serialises in a fixed order (structs, BTreeMaps, Vecs).
    let shape = serde_json::json!([
        image,
        spec.env,
        spec.hostname,
        spec.constraints,
        spec.placement_prefs,
        spec.resources,
        spec.restart,
        spec.networks,
        spec.short_name(),
    ])
    .to_string();
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
        swarm: &str,
        desired: &[DesiredService],
    ) -> Result<(Changes, BTreeMap<String, String>)> {
        let mut changes = Changes::default();
        let mut errors = BTreeMap::new();
        let managed = list_managed(engine, swarm).await?;
        let wanted_networks: BTreeSet<&str> = desired
            .iter()
            .flat_map(|d| d.spec.networks.iter().map(String::as_str))
            .collect();
        let networks = ensure_networks(engine, swarm, &wanted_networks).await;
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
                None => create(engine, swarm, want)
                    .await
                    .map(|_| changes.created.push(name.clone())),
                Some(have) if have.revision == Some(want.revision) => continue,
                Some(have) if self.swarm_gave_up_on(have, want) => continue,
                Some(have) => update(engine, swarm, want, have)
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
                    .and_then(|m| m.replicated)
                    .and_then(|r| r.replicas)
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

async fn create(engine: &Engine, swarm: &str, want: &DesiredService) -> Result<()> {
    let image = resolve_image(engine, &want.spec.image).await;
    let spec = engine_spec(swarm, want, &image)?;
    engine
        .docker
        .create_service(spec, None)
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

async fn update(engine: &Engine, swarm: &str, want: &DesiredService, have: &Managed) -> Result<()> {
    let image = resolve_image(engine, &want.spec.image).await;
    let spec = engine_spec(swarm, want, &image)?;
    let options = bollard::query_parameters::UpdateServiceOptionsBuilder::default()
        .version(have.version as i32)
        .build();
    engine
        .docker
        .update_service(&have.id, spec, options, None)
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
async fn resolve_image(engine: &Engine, image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    match engine.docker.inspect_registry_image(image, None).await {
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

/// Translates a fogswarm spec into the engine's.
fn engine_spec(
    swarm: &str,
    want: &DesiredService,
    image: &str,
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
    let mut labels = HashMap::from([
        (MANAGED_LABEL.to_string(), swarm.to_string()),
        (REVISION_LABEL.to_string(), want.revision.to_string()),
    ]);
    if let Some(stack) = &spec.stack {
        labels.insert(STACK_LABEL.to_string(), stack.clone());
    }
    let aliases = spec
        .stack
        .as_ref()
        .map(|_| vec![spec.short_name().to_string()]);
    let mode = match spec.mode {
        ServiceMode::Global => ServiceSpecMode {
            global: Some(HashMap::new()),
            ..Default::default()
        },
        ServiceMode::Replicated => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(spec.replicas.unwrap_or(1) as i64),
            }),
            ..Default::default()
        },
    };
    let u = &spec.update;
    let update_config = ServiceSpecUpdateConfig {
        parallelism: Some(u.parallelism as i64),
        delay: nanos(&u.delay)?,
        failure_action: Some(match u.failure_action {
            FailureAction::Pause => ServiceSpecUpdateConfigFailureActionEnum::PAUSE,
            FailureAction::Continue => ServiceSpecUpdateConfigFailureActionEnum::CONTINUE,
            FailureAction::Rollback => ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK,
        }),
        monitor: nanos(&u.monitor)?,
        order: Some(match u.order {
            UpdateOrder::StopFirst => ServiceSpecUpdateConfigOrderEnum::STOP_FIRST,
            UpdateOrder::StartFirst => ServiceSpecUpdateConfigOrderEnum::START_FIRST,
        }),
        ..Default::default()
    };
    // A rollback goes back the way the update came, and stops if that
    // fails too.
    let rollback_config = ServiceSpecRollbackConfig {
        parallelism: Some(u.parallelism as i64),
        delay: nanos(&u.delay)?,
        failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
        monitor: nanos(&u.monitor)?,
        order: Some(match u.order {
            UpdateOrder::StopFirst => ServiceSpecRollbackConfigOrderEnum::STOP_FIRST,
            UpdateOrder::StartFirst => ServiceSpecRollbackConfigOrderEnum::START_FIRST,
        }),
        ..Default::default()
    };
    let r = &spec.restart;
    let restart_policy = TaskSpecRestartPolicy {
        condition: Some(match r.condition {
            RestartCondition::None => TaskSpecRestartPolicyConditionEnum::NONE,
            RestartCondition::OnFailure => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
            RestartCondition::Any => TaskSpecRestartPolicyConditionEnum::ANY,
        }),
        delay: nanos(&r.delay)?,
        max_attempts: r.max_attempts.map(|n| n as i64),
        window: nanos(&r.window)?,
    };
    let res = &spec.resources;
    let resources = TaskSpecResources {
        limits: Some(Limit {
            nano_cpus: cpus(&res.limit_cpus)?,
            memory_bytes: memory(&res.limit_memory)?,
            pids: None,
        }),
        reservations: Some(ResourceObject {
            nano_cpus: cpus(&res.reserve_cpus)?,
            memory_bytes: memory(&res.reserve_memory)?,
            generic_resources: None,
        }),
        ..Default::default()
    };
    let ports = spec
        .ports
        .iter()
        .map(|p| EndpointPortConfig {
            protocol: Some(match p.protocol {
                PortProtocol::Tcp => EndpointPortConfigProtocolEnum::TCP,
                PortProtocol::Udp => EndpointPortConfigProtocolEnum::UDP,
                PortProtocol::Sctp => EndpointPortConfigProtocolEnum::SCTP,
            }),
            target_port: Some(p.target as i64),
            published_port: Some(p.published as i64),
            publish_mode: Some(match p.mode {
                PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
                PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
            }),
            ..Default::default()
        })
        .collect();
    Ok(bollard::models::ServiceSpec {
        name: Some(spec.name.clone()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                hostname: spec.hostname.clone(),
                labels: Some(HashMap::from([(
                    TEMPLATE_LABEL.to_string(),
                    template_fingerprint(spec, image),
                )])),
                ..Default::default()
            }),
            resources: Some(resources),
            restart_policy: Some(restart_policy),
            placement: Some(TaskSpecPlacement {
                constraints: Some(spec.constraints.clone()),
                preferences: Some(
                    spec.placement_prefs
                        .iter()
                        .filter_map(|p| parse_placement_pref(p).ok())
                        .map(|d| TaskSpecPlacementPreferences {
                            spread: Some(TaskSpecPlacementSpread {
                                spread_descriptor: Some(d.to_string()),
                            }),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            networks: Some(
                spec.networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: Some(n.clone()),
                        aliases: aliases.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        mode: Some(mode),
        update_config: Some(update_config),
        rollback_config: Some(rollback_config),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(match spec.endpoint_mode {
                EndpointMode::Vip => EndpointSpecModeEnum::VIP,
                EndpointMode::Dnsrr => EndpointSpecModeEnum::DNSRR,
            }),
            ports: Some(ports),
        }),
        ..Default::default()
    })
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
        let current = |t: &Task| {
            matches!(
                t.desired_state,
                Some(TaskState::RUNNING | TaskState::READY | TaskState::ACCEPTED)
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
            rolled_back: false,
            spec,
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
        let engine =
            engine_spec("fog", &desired(spec), "reg:5000/fog-hello:v1@sha256:ab").expect("spec");
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
        let engine = engine_spec("fog", &desired(ServiceSpec::new("w", "x")), "x").expect("spec");
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
        let spec = ServiceSpec::new("web", "x:1");
        let base = template_fingerprint(&spec, "x:1@sha256:aa");
        assert_eq!(base, template_fingerprint(&spec.clone(), "x:1@sha256:aa"));
        let mut scaled = spec.clone();
        scaled.replicas = Some(5);
        scaled.update.parallelism = 3;
        assert_eq!(template_fingerprint(&scaled, "x:1@sha256:aa"), base);
        assert_ne!(template_fingerprint(&spec, "x:1@sha256:bb"), base);
        let mut env = spec;
        env.env.insert("A".into(), "1".into());
        assert_ne!(template_fingerprint(&env, "x:1@sha256:aa"), base);
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
