//! The wire: what managers are told to run, what they observe, what
//! operators see.

use super::*;

/// A service as managers receive it: the spec and the swarm revision at
/// which it last changed, which the agent records in a label to tell
/// whether the running service is current.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DesiredService {
    pub revision: u64,
    /// Swarm rolled this revision back (as a manager reported): not to be
    /// tried again until the operator deploys a new one.
    #[serde(default)]
    pub rolled_back: bool,
    pub spec: ServiceSpec,
    /// The current version of each server secret the spec names: the
    /// leader runs the swarm secret of that version, and a new version
    /// rolls the service to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// The same for configs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_versions: BTreeMap<String, u64>,
    /// The registry host whose login the server keeps for this image: the
    /// leader fetches it and passes it on, so every node can pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<String>,
    /// The signed hardware grant (see [`crate::hardware`]): put on every
    /// task's container, and the service placed only on nodes labelled
    /// [`crate::hardware::placement_label`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// The swarm object holding version `version` of a server secret or
/// config: swarm's secrets cannot change, so each version is its own.
pub fn versioned_name(source: &str, version: u64) -> String {
    format!("{source}.v{version}")
}

/// One task as the raft leader sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskObserved {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The device whose node runs it, when the node is a known device's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's host name, as swarm knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub image: String,
    /// Swarm's task state: new, pending, assigned, preparing, starting,
    /// running, complete, shutdown, failed, rejected, orphaned, remove.
    pub state: String,
    pub desired_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the task last changed state (RFC 3339, the engine's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// One managed service as the raft leader sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceObserved {
    pub name: String,
    /// The server revision the running service was made from (absent when
    /// the service could not be created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The image the service runs now, as resolved (`REF@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tasks that should be running.
    pub desired_tasks: u64,
    /// Tasks that are running.
    pub running_tasks: u64,
    /// Jobs: tasks of the current spec that ran to completion.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completed_tasks: u64,
    /// Swarm's update state: updating, paused, completed, rollback_started,
    /// rollback_paused, rollback_completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_state: Option<String>,
    /// During or after a rollback: the revision swarm rolled back from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_revision: Option<u64>,
    /// Why the manager could not create or update the service this pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// The latest error: a refused create or update, an update's message,
    /// or the newest failed task's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub tasks: Vec<TaskObserved>,
}

/// What the raft leader's agent posts after each reconcile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedReport {
    pub services: Vec<ServiceObserved>,
    /// In a signed-only swarm: services made outside fogswarm (`docker
    /// service create` on a manager) whose image has no signature by one
    /// of the swarm's keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsigned: Vec<UnsignedService>,
}

/// A service running an image the swarm's keys did not sign.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedService {
    pub name: String,
    pub image: String,
    /// Why it does not verify (no signature, another key, no digest).
    pub problem: String,
}

/// Where a service stands, judged by the server from the spec and the
/// latest observation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// No manager has reported this revision yet.
    Pending,
    /// Running the current revision, but not every task runs.
    Converging,
    /// The current revision runs on every task it should.
    Running,
    /// Swarm is rolling the update out.
    Updating,
    /// The update failed and swarm went back to the previous revision.
    RolledBack,
    /// The update failed and swarm paused it.
    Paused,
    /// The service could not be created or updated (see `error`).
    Failed,
    /// A job whose every task ran to completion.
    Complete,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Pending => "pending",
            ServiceStatus::Converging => "converging",
            ServiceStatus::Running => "running",
            ServiceStatus::Updating => "updating",
            ServiceStatus::RolledBack => "rolled_back",
            ServiceStatus::Paused => "paused",
            ServiceStatus::Failed => "failed",
            ServiceStatus::Complete => "complete",
        }
    }

    /// Judges a service from its revision and what was observed.
    pub fn judge(revision: u64, observed: Option<&ServiceObserved>) -> ServiceStatus {
        let Some(o) = observed else {
            return ServiceStatus::Pending;
        };
        let state = o.update_state.as_deref().unwrap_or_default();
        if state.starts_with("rollback") && o.rolled_back_revision == Some(revision) {
            return ServiceStatus::RolledBack;
        }
        if o.apply_error.is_some() {
            return ServiceStatus::Failed;
        }
        if o.revision != Some(revision) {
            return ServiceStatus::Pending;
        }
        match state {
            "paused" => ServiceStatus::Paused,
            "updating" => ServiceStatus::Updating,
            _ if o.completed_tasks > 0 && o.completed_tasks >= o.desired_tasks => {
                ServiceStatus::Complete
            }
            _ if o.running_tasks >= o.desired_tasks => ServiceStatus::Running,
            _ => ServiceStatus::Converging,
        }
    }

    /// Whether the service has stopped moving: running, or given up.
    pub fn is_settled(self) -> bool {
        !matches!(
            self,
            ServiceStatus::Pending | ServiceStatus::Converging | ServiceStatus::Updating
        )
    }
}

/// A service as operators see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub swarm: String,
    pub spec: ServiceSpec,
    pub revision: u64,
    pub status: ServiceStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// The latest observation, if a manager has reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ServiceObserved>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<i64>,
}

/// What a deploy did to one service.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployOutcome {
    Created,
    Updated,
    /// The spec was the same: nothing changed, no rollout.
    Unchanged,
    /// Pruned from its stack.
    Removed,
}

impl DeployOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployOutcome::Created => "created",
            DeployOutcome::Updated => "updated",
            DeployOutcome::Unchanged => "unchanged",
            DeployOutcome::Removed => "removed",
        }
    }
}

/// The answer to a service deploy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDeployed {
    pub outcome: DeployOutcome,
    pub service: ServiceView,
}

/// One service's part of a stack deploy or removal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackServiceOutcome {
    pub name: String,
    pub outcome: DeployOutcome,
}

/// `stack deploy`: every service of a stack, created or updated together.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackDeploy {
    pub services: Vec<ServiceSpec>,
    /// Remove services of the stack that the file no longer names.
    #[serde(default)]
    pub prune: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_judgement() {
        let observed = |revision, running, desired, update: Option<&str>| ServiceObserved {
            name: "web".into(),
            revision,
            image: None,
            desired_tasks: desired,
            running_tasks: running,
            completed_tasks: 0,
            update_state: update.map(String::from),
            rolled_back_revision: None,
            apply_error: None,
            error: None,
            tasks: vec![],
        };
        use ServiceStatus::*;
        let judge = |o: ServiceObserved| ServiceStatus::judge(3, Some(&o));
        assert_eq!(ServiceStatus::judge(3, None), Pending);
        assert_eq!(judge(observed(Some(2), 1, 1, None)), Pending);
        assert_eq!(judge(observed(Some(3), 1, 2, None)), Converging);
        assert_eq!(judge(observed(Some(3), 2, 2, None)), Running);
        assert_eq!(judge(observed(Some(3), 0, 0, None)), Running);
        assert_eq!(judge(observed(Some(3), 2, 2, Some("updating"))), Updating);
        assert_eq!(judge(observed(Some(3), 2, 2, Some("paused"))), Paused);
        // A rollback of an older revision says nothing of this one.
        let mut old_rollback = observed(Some(2), 2, 2, Some("rollback_completed"));
        old_rollback.rolled_back_revision = Some(1);
        assert_eq!(judge(old_rollback.clone()), Pending);
        old_rollback.rolled_back_revision = Some(3);
        assert_eq!(judge(old_rollback), RolledBack);
        let mut refused = observed(None, 0, 0, None);
        refused.apply_error = Some("no such network".into());
        assert_eq!(judge(refused), Failed);
        assert!(Running.is_settled() && RolledBack.is_settled() && !Updating.is_settled());
        let mut job = observed(Some(3), 0, 4, None);
        job.completed_tasks = 3;
        assert_eq!(judge(job.clone()), Converging);
        job.completed_tasks = 4;
        assert_eq!(judge(job), Complete);
    }
}
