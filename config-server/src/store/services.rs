//! Each swarm's desired services, and what its raft leader last observed.
//!
//! A change to a service bumps the swarm's revision, and the service
//! records that revision: managers long-polling the desired state wake up,
//! and the agent tells a current service from a stale one by the revision
//! label it put on it. An unchanged spec deploys as a no-op.

use super::events::log_event;
use super::swarms::require_swarm;
use super::{bump, from_json, json_of, now, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Row, Tx};
use fogswarm_protocol::secret::{registry_of, FileKind};
use fogswarm_protocol::service::FileRef;
use fogswarm_protocol::service::{
    DeployOutcome, DesiredService, ObservedReport, ServiceObserved, ServiceSpec, ServiceStatus,
    ServiceView, StackDeploy, StackServiceOutcome, UnsignedService,
};
use std::collections::{BTreeMap, BTreeSet};

pub(super) struct ServiceRow {
    pub(super) spec: ServiceSpec,
    revision: u64,
    created_at: i64,
    updated_at: i64,
}

impl Store {
    /// Creates a service; refused when the name is taken.
    pub fn create_service(
        &self,
        actor: &Actor,
        swarm: &str,
        spec: &ServiceSpec,
    ) -> Result<(ServiceView, Touched)> {
        spec.validate()?;
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            super::files::check_files_exist(tx, swarm, &[spec])?;
            super::hardware::check_allowed(tx, swarm, &[spec])?;
            if service_row(tx, swarm, &spec.name)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "service {} already exists in swarm {swarm}",
                    spec.name
                )));
            }
            upsert(tx, actor, swarm, spec)?;
            Ok((
                service_view(tx, swarm, &spec.name)?,
                vec![swarm.to_string()],
            ))
        })
    }

    /// Creates or replaces a service (declarative: the spec is the whole
    /// truth). A stack's service is changed by deploying its stack.
    pub fn deploy_service(
        &self,
        actor: &Actor,
        swarm: &str,
        spec: &ServiceSpec,
    ) -> Result<(ServiceView, DeployOutcome, Touched)> {
        spec.validate()?;
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            super::files::check_files_exist(tx, swarm, &[spec])?;
            super::hardware::check_allowed(tx, swarm, &[spec])?;
            if let Some(existing) = service_row(tx, swarm, &spec.name)? {
                check_same_stack(&existing.spec, spec)?;
            }
            let deployed = upsert(tx, actor, swarm, spec)?;
            let touched = if deployed == DeployOutcome::Unchanged {
                vec![]
            } else {
                vec![swarm.to_string()]
            };
            Ok((service_view(tx, swarm, &spec.name)?, deployed, touched))
        })
    }

    /// Deploys a stack's services together: all are checked before any is
    /// written, so a refused stack changes nothing.
    pub fn deploy_stack(
        &self,
        actor: &Actor,
        swarm: &str,
        stack: &str,
        request: &StackDeploy,
    ) -> Result<(Vec<StackServiceOutcome>, Touched)> {
        let mut names = BTreeSet::new();
        for (i, spec) in request.services.iter().enumerate() {
            spec.validate().map_err(|e| StoreError::Invalid {
                field: Some(format!("services[{i}].{}", e.field)),
                message: e.message,
            })?;
            if spec.stack.as_deref() != Some(stack) {
                return Err(StoreError::Invalid {
                    field: Some(format!("services[{i}].stack")),
                    message: format!(
                        "service {} is not marked as part of stack {stack}",
                        spec.name
                    ),
                });
            }
            if !names.insert(spec.name.as_str()) {
                return Err(StoreError::Conflict(format!(
                    "service {} is named twice in stack {stack}",
                    spec.name
                )));
            }
        }
        if request.services.is_empty() {
            return Err(StoreError::Invalid {
                field: Some("services".into()),
                message: format!("stack {stack} has no services"),
            });
        }
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            let specs = request.services.iter().collect::<Vec<_>>();
            super::files::check_files_exist(tx, swarm, &specs)?;
            super::hardware::check_allowed(tx, swarm, &specs)?;
            for spec in &request.services {
                if let Some(existing) = service_row(tx, swarm, &spec.name)? {
                    check_same_stack(&existing.spec, spec)?;
                }
            }
            let mut outcome = Vec::new();
            for spec in &request.services {
                outcome.push(StackServiceOutcome {
                    name: spec.name.clone(),
                    outcome: upsert(tx, actor, swarm, spec)?,
                });
            }
            if request.prune {
                for row in list_rows(tx, swarm)? {
                    if row.spec.stack.as_deref() == Some(stack)
                        && !names.contains(row.spec.name.as_str())
                    {
                        delete(tx, actor, swarm, &row.spec.name)?;
                        outcome.push(StackServiceOutcome {
                            name: row.spec.name.clone(),
                            outcome: DeployOutcome::Removed,
                        });
                    }
                }
            }
            let changed = outcome
                .iter()
                .any(|o| o.outcome != DeployOutcome::Unchanged);
            let touched = if changed {
                vec![swarm.to_string()]
            } else {
                vec![]
            };
            Ok((outcome, touched))
        })
    }

    /// Swaps a service's spec with the one it had before its last change
    /// (so a second rollback undoes the first, as Docker's does).
    pub fn rollback_service(
        &self,
        actor: &Actor,
        swarm: &str,
        name: &str,
    ) -> Result<(ServiceView, Touched)> {
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            let current = service_row(tx, swarm, name)?.ok_or_else(|| not_found(swarm, name))?;
            let previous: Option<String> = tx
                .query_one(
                    "SELECT previous_spec FROM services WHERE swarm = $1 AND name = $2",
                    params![swarm, name],
                )?
                .get(0)?;
            let previous: ServiceSpec = match previous {
                Some(text) => from_json(&text)?,
                None => {
                    return Err(StoreError::Conflict(format!(
                        "service {name} has no previous spec to roll back to"
                    )))
                }
            };
            super::files::check_files_exist(tx, swarm, &[&previous])?;
            super::hardware::check_allowed(tx, swarm, &[&previous])?;
            let revision = bump(tx, swarm)?;
            tx.execute(
                "UPDATE services SET spec = $1, previous_spec = $2, revision = $3, updated_at = $4
                 WHERE swarm = $5 AND name = $6",
                params![
                    json_of(&previous),
                    json_of(&current.spec),
                    revision as i64,
                    now(),
                    swarm,
                    name
                ],
            )?;
            log_event(
                tx,
                actor,
                "service.rollback",
                &format!("{swarm}/{name}"),
                &format!("image={} revision={revision}", previous.image),
            )?;
            Ok((service_view(tx, swarm, name)?, vec![swarm.to_string()]))
        })
    }

    pub fn remove_service(&self, actor: &Actor, swarm: &str, name: &str) -> Result<Touched> {
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            if service_row(tx, swarm, name)?.is_none() {
                return Err(not_found(swarm, name));
            }
            delete(tx, actor, swarm, name)?;
            Ok(vec![swarm.to_string()])
        })
    }

    /// Removes every service of a stack.
    pub fn remove_stack(
        &self,
        actor: &Actor,
        swarm: &str,
        stack: &str,
    ) -> Result<(Vec<String>, Touched)> {
        self.write(|tx| {
            known_swarm(tx, swarm)?;
            let names: Vec<String> = list_rows(tx, swarm)?
                .into_iter()
                .filter(|r| r.spec.stack.as_deref() == Some(stack))
                .map(|r| r.spec.name)
                .collect();
            if names.is_empty() {
                return Err(StoreError::NotFound(format!(
                    "stack {stack} has no services in swarm {swarm}"
                )));
            }
            for name in &names {
                delete(tx, actor, swarm, name)?;
            }
            Ok((names, vec![swarm.to_string()]))
        })
    }

    pub fn list_services(&self, swarm: &str) -> Result<Vec<ServiceView>> {
        self.read(|tx| {
            known_swarm(tx, swarm)?;
            let (observed, at) = observed(tx, swarm)?;
            Ok(list_rows(tx, swarm)?
                .into_iter()
                .map(|row| view_of(swarm, row, &observed, at))
                .collect())
        })
    }

    pub fn get_service(&self, swarm: &str, name: &str) -> Result<ServiceView> {
        self.read(|tx| {
            known_swarm(tx, swarm)?;
            service_view(tx, swarm, name)
        })
    }

    /// Records what a manager of the swarm observed (the raft leader's agent
    /// is the one that posts); views show it for the services the server
    /// knows. An unsigned service made outside fogswarm, newly reported,
    /// is an event (`service.unsigned`).
    pub fn set_observed(&self, device: &str, report: &ObservedReport) -> Result<()> {
        let swarm = self.manager_swarm(device)?;
        self.write(|tx| {
            let before = observed_report(tx, &swarm)?.map(|(r, _)| r.unsigned);
            let actor = Actor::Device(device.into());
            for found in &report.unsigned {
                if before
                    .iter()
                    .flatten()
                    .any(|b| b.name == found.name && b.image == found.image)
                {
                    continue;
                }
                log_event(
                    tx,
                    &actor,
                    "service.unsigned",
                    &format!("{swarm}/{}", found.name),
                    &format!(
                        "made outside fogswarm with {}: {}",
                        found.image, found.problem
                    ),
                )?;
            }
            tx.execute(
                "INSERT INTO observed (swarm, report, device, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(swarm) DO UPDATE SET report = $2, device = $3, at = $4",
                params![swarm, json_of(report), device, now()],
            )?;
            Ok(())
        })
    }
}

/// Services made outside fogswarm with unsigned images, as the swarm's
/// raft leader last reported them.
pub(super) fn unsigned_services(tx: &Tx<'_>, swarm: &str) -> Result<Vec<UnsignedService>> {
    Ok(observed_report(tx, swarm)?
        .map(|(r, _)| r.unsigned)
        .unwrap_or_default())
}

/// The services a swarm's managers should run, for the desired state.
pub(super) fn desired_services(tx: &Tx<'_>, swarm: &str) -> Result<Vec<DesiredService>> {
    let (observed, _) = observed(tx, swarm)?;
    let files = super::files::swarm_files(tx, swarm)?;
    let versions = |kind: FileKind, refs: &[FileRef]| -> BTreeMap<String, u64> {
        refs.iter()
            .filter_map(|r| {
                let v = files.versions.get(&(kind, r.source.clone()))?;
                Some((r.source.clone(), *v))
            })
            .collect()
    };
    Ok(list_rows(tx, swarm)?
        .into_iter()
        .map(|r| DesiredService {
            rolled_back: observed
                .get(&r.spec.name)
                .is_some_and(|o| o.rolled_back_revision == Some(r.revision)),
            revision: r.revision,
            secret_versions: versions(FileKind::Secret, &r.spec.secrets),
            config_versions: versions(FileKind::Config, &r.spec.configs),
            registry_auth: Some(registry_of(&r.spec.image).to_string())
                .filter(|host| files.registries.contains(host)),
            grant: None, // signed by the HTTP layer, which holds the sealer
            spec: r.spec,
        })
        .collect())
}

fn check_same_stack(existing: &ServiceSpec, new: &ServiceSpec) -> Result<()> {
    if existing.stack == new.stack {
        return Ok(());
    }
    let owner = |s: &Option<String>| match s {
        Some(stack) => format!("stack {stack}"),
        None => "no stack (it was deployed on its own)".to_string(),
    };
    Err(StoreError::Conflict(format!(
        "service {} already exists and belongs to {}; it cannot be taken over by {}",
        existing.name,
        owner(&existing.stack),
        owner(&new.stack)
    )))
}

/// A valid swarm name of a swarm that exists.
fn known_swarm(tx: &Tx<'_>, swarm: &str) -> Result<()> {
    fogswarm_protocol::validate::validate_swarm_name(swarm)?;
    require_swarm(tx, swarm)
}

fn not_found(swarm: &str, name: &str) -> StoreError {
    StoreError::NotFound(format!("service {name} does not exist in swarm {swarm}"))
}

/// Inserts or replaces; an identical spec changes nothing (no revision).
fn upsert(tx: &Tx<'_>, actor: &Actor, swarm: &str, spec: &ServiceSpec) -> Result<DeployOutcome> {
    let existing = service_row(tx, swarm, &spec.name)?;
    if existing.as_ref().is_some_and(|e| &e.spec == spec) {
        return Ok(DeployOutcome::Unchanged);
    }
    let revision = bump(tx, swarm)?;
    let at = now();
    let previous = existing.as_ref().map(|e| json_of(&e.spec));
    tx.execute(
        "INSERT INTO services (swarm, name, stack, spec, revision, created_at, updated_at, previous_spec)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
         ON CONFLICT(swarm, name) DO UPDATE SET stack = $3, spec = $4, revision = $5, updated_at = $6, previous_spec = $7",
        params![swarm, &spec.name, &spec.stack, json_of(spec), revision as i64, at, previous],
    )?;
    let (action, deployed) = if existing.is_some() {
        ("service.update", DeployOutcome::Updated)
    } else {
        ("service.create", DeployOutcome::Created)
    };
    // Environment values may hold credentials: the event names the image
    // and the shape, never the env.
    log_event(
        tx,
        actor,
        action,
        &format!("{swarm}/{}", spec.name),
        &format!(
            "image={} mode={} revision={revision}",
            spec.image,
            spec.mode.describe(spec.replicas).replace(' ', "/")
        ),
    )?;
    Ok(deployed)
}

fn delete(tx: &Tx<'_>, actor: &Actor, swarm: &str, name: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM services WHERE swarm = $1 AND name = $2",
        params![swarm, name],
    )?;
    bump(tx, swarm)?;
    log_event(tx, actor, "service.remove", &format!("{swarm}/{name}"), "")
}

fn service_row(tx: &Tx<'_>, swarm: &str, name: &str) -> Result<Option<ServiceRow>> {
    tx.query_opt(
        "SELECT spec, revision, created_at, updated_at FROM services WHERE swarm = $1 AND name = $2",
        params![swarm, name],
    )?
    .as_ref()
    .map(row_of)
    .transpose()
}

pub(super) fn list_rows(tx: &Tx<'_>, swarm: &str) -> Result<Vec<ServiceRow>> {
    tx.query(
        "SELECT spec, revision, created_at, updated_at FROM services WHERE swarm = $1 ORDER BY name",
        params![swarm],
    )?
    .iter()
    .map(row_of)
    .collect()
}

fn row_of(row: &Row) -> Result<ServiceRow> {
    Ok(ServiceRow {
        spec: from_json(&row.get::<String>(0)?)?,
        revision: row.get::<i64>(1)? as u64,
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
    })
}

/// The raft leader's latest report and when it came.
fn observed_report(tx: &Tx<'_>, swarm: &str) -> Result<Option<(ObservedReport, i64)>> {
    let Some(row) = tx.query_opt(
        "SELECT report, at FROM observed WHERE swarm = $1",
        params![swarm],
    )?
    else {
        return Ok(None);
    };
    Ok(Some((from_json(&row.get::<String>(0)?)?, row.get(1)?)))
}

fn observed(tx: &Tx<'_>, swarm: &str) -> Result<(BTreeMap<String, ServiceObserved>, Option<i64>)> {
    let Some((report, at)) = observed_report(tx, swarm)? else {
        return Ok((BTreeMap::new(), None));
    };
    Ok((
        report
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        Some(at),
    ))
}

fn view_of(
    swarm: &str,
    row: ServiceRow,
    observed: &BTreeMap<String, ServiceObserved>,
    at: Option<i64>,
) -> ServiceView {
    let seen = observed.get(&row.spec.name).cloned();
    ServiceView {
        swarm: swarm.to_string(),
        status: ServiceStatus::judge(row.revision, seen.as_ref()),
        observed_at: seen.as_ref().and(at),
        observed: seen,
        revision: row.revision,
        created_at: row.created_at,
        updated_at: row.updated_at,
        spec: row.spec,
    }
}

fn service_view(tx: &Tx<'_>, swarm: &str, name: &str) -> Result<ServiceView> {
    let row = service_row(tx, swarm, name)?.ok_or_else(|| not_found(swarm, name))?;
    let (observed, at) = observed(tx, swarm)?;
    Ok(view_of(swarm, row, &observed, at))
}
