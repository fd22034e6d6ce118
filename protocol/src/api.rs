//! Request and response bodies of the server's HTTP API (version 1).
//!
//! Types that carry a secret (credentials, join tokens, the provisioning
//! key) wrap it in [`Secret`], whose `Debug` and `Display` print
//! `[redacted]`, so logging a request or a response can never leak it.

use crate::validate::{AutoEnrol, Labels, Role};
use crate::DeviceId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The API version the server speaks and advertises over mDNS.
pub const API_VERSION: &str = "v1";

/// A secret string. Serialises as itself (it has to cross the wire) but
/// never shows in `Debug` or `Display`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that has to use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Detected facts, keyed without the `fog.` prefix (`arch`, `cpus`, ...);
/// the server adds the prefix when it turns them into labels.
pub type Facts = Labels;

/// The body of every 4xx and 5xx answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    /// Machine-readable code: invalid, not_found, conflict, unauthorized,
    /// forbidden, too_large, unsupported, internal.
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
    /// The field (or CSV/JSON row) the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- device API ----

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub device_id: DeviceId,
    /// The key the device made; the request is signed with its private
    /// half (see `identity`), and every later request too.
    pub public_key: crate::identity::PublicKey,
    /// What admits the device: the fleet-wide provisioning key, or
    #[serde(default)]
    pub provisioning_key: Option<Secret>,
    /// an enrolment token (`fogswarm enrol-token create`), which also
    /// names the swarm and labels.
    #[serde(default)]
    pub token: Option<Secret>,
    /// The swarm to auto-enrol into, for a device the server does not know.
    #[serde(default)]
    pub swarm: Option<String>,
    #[serde(default)]
    pub facts: Facts,
    /// The fingerprint of the device's TPM endorsement key, when its
    /// identity key lives in a TPM: recorded, shown to operators.
    #[serde(default)]
    pub endorsement_key: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub device_id: DeviceId,
    pub swarm: String,
    pub role: Role,
    /// Held until an operator approves the device (a new device of a
    /// swarm that holds them, or another key for an enrolled device).
    pub pending: bool,
}

/// A device replaces its key, signing the request with the current one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRotation {
    pub public_key: crate::identity::PublicKey,
}

/// What the server tells a device to do next.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "lowercase")]
// One answer per poll, decoded and dropped: boxing `Join` would only
// complicate every match on it.
#[allow(clippy::large_enum_variant)]
pub enum ConfigAnswer {
    /// This device holds the swarm's leader lease: initialize the swarm and
    /// post the tokens before the lease runs out.
    Init { swarm: String, lease_secs: u64 },
    /// Join the swarm with this role (and availability drain).
    Join {
        swarm: String,
        /// The swarm's cluster id: a node already in this cluster skips
        /// joining; one in another cluster is left alone and reported.
        cluster_id: Option<String>,
        /// The node id this device last reported: a worker cannot see the
        /// cluster id, but can see its own node id.
        #[serde(default)]
        node_id: Option<String>,
        role: Role,
        /// Every known manager address (host:port).
        managers: Vec<String>,
        token: Secret,
        /// The swarm's public key for hardware grants (Ed25519, base64):
        /// the device's runtime honours only grants it verifies.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_key: Option<String>,
        /// Nodes of this device the swarm removed (a lost manager, replaced):
        /// an engine still on one of them leaves and joins afresh.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed_node_ids: Vec<String>,
        /// An agent update this device's wave is in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_update: Option<AgentTarget>,
        /// Open requests for this agent's own recent log lines (`fogswarm
        /// device logs`): it posts them to `/v1/logs/{id}`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        agent_logs: Vec<crate::logs::AgentLogRequest>,
    },
    /// Nothing to do yet; ask again after about this long.
    Wait {
        retry_after_secs: u64,
        reason: String,
    },
    /// The device was decommissioned: leave the swarm.
    Leave { swarm: String },
}

/// A device's own account of itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Declared by an operator, never seen.
    Declared,
    /// Enrolled, held until an operator approves it.
    Pending,
    /// Enrolled, has not reported since.
    Enrolled,
    Waiting,
    Initializing,
    Joining,
    /// An active node of the expected swarm.
    Active,
    Error,
    /// Decommissioned; told to leave.
    Leaving,
    Left,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Declared => "declared",
            DeviceState::Pending => "pending",
            DeviceState::Enrolled => "enrolled",
            DeviceState::Waiting => "waiting",
            DeviceState::Initializing => "initializing",
            DeviceState::Joining => "joining",
            DeviceState::Active => "active",
            DeviceState::Error => "error",
            DeviceState::Leaving => "leaving",
            DeviceState::Left => "left",
        }
    }

    pub const ALL: [DeviceState; 10] = [
        DeviceState::Declared,
        DeviceState::Pending,
        DeviceState::Enrolled,
        DeviceState::Waiting,
        DeviceState::Initializing,
        DeviceState::Joining,
        DeviceState::Active,
        DeviceState::Error,
        DeviceState::Leaving,
        DeviceState::Left,
    ];

    pub fn parse(s: &str) -> Option<DeviceState> {
        DeviceState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
    }

    /// States an agent may report (the others are the server's).
    pub fn reportable(self) -> bool {
        matches!(
            self,
            DeviceState::Waiting
                | DeviceState::Initializing
                | DeviceState::Joining
                | DeviceState::Active
                | DeviceState::Error
                | DeviceState::Left
        )
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ReportRequest {
    pub state: Option<DeviceState>,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub engine_version: Option<String>,
    /// When present, replaces the device's facts.
    #[serde(default)]
    pub facts: Option<Facts>,
    /// The device's current error; absent or null clears it.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the device's node is a swarm manager now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<bool>,
    /// Containers the device's runtime gave nothing because their grant
    /// did not hold, since the last report (each becomes an event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_refusals: Vec<GrantRefusal>,
    /// Whether the device's node is the raft leader now: the last leader
    /// holds the freshest raft log, which is what `swarm recover` needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_leader: Option<bool>,
    /// The agent's version and the digest of its binary (`0.1.0
    /// sha256:0123abcd`): two builds of one version differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// On a manager: whether its engine reaches a raft leader (false: the
    /// swarm may have lost its quorum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<bool>,
    /// How an agent update ended on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_update: Option<AgentUpdateOutcome>,
    /// What the device measures of itself (see `telemetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// How often this agent reports: the server calls it offline after
    /// three intervals without a word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
}

/// The agent a device should run: the binary `image`'s entrypoint names
/// (a digest reference; the engine pulls its own platform's), running and
/// reporting within `deadline_secs`, or rolled back.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentTarget {
    pub rollout: u64,
    pub image: String,
    pub deadline_secs: u64,
}

/// A device's word on an agent update: the new agent reported healthy
/// (`ok`), or it was rolled back (why in `detail`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentUpdateOutcome {
    pub rollout: u64,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// `agent rollout`: the agent image (a digest reference) and the waves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentRolloutCreate {
    pub image: String,
    /// Devices in the first wave (1 to 10).
    #[serde(default = "one")]
    pub canary: u32,
    /// Share of the remaining devices in the second wave (1 to 100); the
    /// third takes the rest.
    #[serde(default = "fifty")]
    pub wave_percent: u32,
    /// How long a device has to run and report the new agent.
    #[serde(default = "two_minutes")]
    pub deadline_secs: u64,
}

fn one() -> u32 {
    1
}
fn fifty() -> u32 {
    50
}
fn two_minutes() -> u64 {
    120
}

/// A swarm's agent rollout and where each device is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRolloutView {
    pub swarm: String,
    pub rollout: u64,
    pub image: String,
    /// running, done or failed.
    pub state: String,
    /// The wave being rolled out (0-based).
    pub wave: u32,
    pub waves: Vec<Vec<AgentRolloutDevice>>,
    pub deadline_secs: u64,
    pub started_at: i64,
    pub wave_started_at: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRolloutDevice {
    pub device: String,
    /// pending (its wave has not come), updating, done or failed.
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

/// A container whose hardware grant the runtime refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantRefusal {
    pub container: String,
    /// The swarm service the container belongs to, when it is a task.
    #[serde(default)]
    pub service: Option<String>,
    pub reason: String,
}

/// What a manager knows of its swarm: posted by the device that initialized
/// it (which releases its lease) and by managers after token rotation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmTokens {
    pub cluster_id: String,
    pub manager_addrs: Vec<String>,
    pub worker_token: Secret,
    pub manager_token: Secret,
    /// The token rotation these answer (see [`DesiredState::token_rotation`]);
    /// 0 for the tokens of a new swarm.
    #[serde(default)]
    pub generation: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Drain,
    Pause,
}

/// What one node of a swarm should look like.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DesiredNode {
    pub device_id: DeviceId,
    pub node_id: Option<String>,
    pub role: Role,
    /// Operator labels merged with facts under `fog.`.
    pub labels: Labels,
    pub availability: Availability,
    /// Node ids this device had before (re-imaged): to be removed once the
    /// new node is active.
    #[serde(default)]
    pub stale_node_ids: Vec<String>,
}

/// A swarm's desired state, for its managers. `revision` grows with every
/// change, so a manager can long-poll for the next one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DesiredState {
    pub swarm: String,
    pub revision: u64,
    pub cluster_id: Option<String>,
    pub nodes: Vec<DesiredNode>,
    /// The services the swarm should run (the agent manages these only).
    #[serde(default)]
    pub services: Vec<crate::service::DesiredService>,
    /// Open `service logs` requests the raft leader should answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_requests: Vec<crate::logs::LogRequest>,
    /// Join-token rotations asked for (a decommission, `swarm
    /// rotate-tokens`): while greater than `tokens_generation`, the raft
    /// leader rotates both tokens and posts the new ones with this number.
    #[serde(default)]
    pub token_rotation: u64,
    #[serde(default)]
    pub tokens_generation: u64,
    /// How the raft leader keeps the manager count (off while `target` is 0).
    #[serde(default)]
    pub managers: ManagerPolicy,
    /// A quorum recovery asked for: the named device forces a new cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// Public keys (PEM) of a signed-only swarm: the raft leader checks
    /// each image again before it creates or updates a service, and
    /// reports services made outside fogswarm whose image is unsigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
}

/// A swarm's manager target and how long a manager may be unreachable
/// before it is replaced.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ManagerPolicy {
    /// Managers the swarm keeps; 0: roles stay as the operator set them.
    pub target: u32,
    pub grace_secs: u64,
}

/// A quorum recovery in progress: `device_id` runs `swarm init
/// --force-new-cluster` and posts [`Recovered`] with `generation`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recovery {
    pub generation: u64,
    pub device_id: DeviceId,
    pub started_at: i64,
}

/// The raft leader's word that a manager node has been unreachable for
/// longer than the swarm's grace period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManagerLost {
    pub node_id: String,
    pub unreachable_secs: u64,
}

/// What the server made of a lost manager: the device demoted (its node
/// to be removed) and the worker promoted in its place, if any.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManagerReplaced {
    pub lost: Option<DeviceId>,
    pub promoted: Vec<DeviceId>,
    /// Why nothing (more) was done, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Posted by the recovering device once its forced cluster has a leader.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recovered {
    pub generation: u64,
}

// ---- operator API ----

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmCreate {
    pub name: String,
    #[serde(default)]
    pub auto_enrol: AutoEnrol,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SwarmUpdate {
    #[serde(default)]
    pub auto_enrol: Option<AutoEnrol>,
    /// Public keys (PEM, ECDSA P-256 as `fogswarm image keygen` writes
    /// them) one of which must have signed every image the swarm runs;
    /// an empty list lets unsigned images run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signed: Option<Vec<String>>,
    /// Replaces what the swarm's services may be given: device path
    /// patterns under /dev (`/dev/ttyACM*`) and cgroup rules written
    /// exactly (`c 89:* rwm`). Empty: no hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_devices: Option<Vec<String>>,
    /// Whether services may be `--privileged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privileged: Option<bool>,
    /// Managers to keep (0 turns keeping off; otherwise odd, 1 to 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managers: Option<u32>,
    /// Seconds a manager may be unreachable before it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_grace_secs: Option<u64>,
    /// A label no two managers may share a value of (`location`); empty
    /// clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_label: Option<String>,
    /// Recover the quorum by itself once no manager has reached a raft
    /// leader for this many seconds (0: only `swarm recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_recover_secs: Option<u64>,
    /// What an enrolled device enrolling again with another key gets:
    /// held for approval (the default), or taken as a re-image at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reimage: Option<Reimage>,
}

/// What an enrolled device enrolling again with another key gets.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reimage {
    /// Held as a pending re-enrolment until `device approve`; the
    /// enrolled key keeps working meanwhile.
    #[default]
    Approve,
    /// Accepted at once as a re-image (labs; a fleet that trusts its
    /// provisioning secrets more than its devices' keys).
    Auto,
}

impl Reimage {
    pub fn as_str(self) -> &'static str {
        match self {
            Reimage::Approve => "approve",
            Reimage::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Reimage> {
        match s {
            "approve" => Some(Reimage::Approve),
            "auto" => Some(Reimage::Auto),
            _ => None,
        }
    }
}

/// A swarm as operators see it: never its join tokens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwarmView {
    pub name: String,
    pub auto_enrol: AutoEnrol,
    pub initialized: bool,
    pub cluster_id: Option<String>,
    pub managers: Vec<String>,
    pub devices: u64,
    /// The device holding the leader lease, while one does.
    pub lease_holder: Option<String>,
    /// Ids of the keys images must be signed by (none: unsigned run).
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// Device patterns and cgroup rules services may be given.
    #[serde(default)]
    pub allowed_devices: Vec<String>,
    #[serde(default)]
    pub allow_privileged: bool,
    /// Managers kept (0: off), the grace period and the spread label.
    #[serde(default)]
    pub managers_target: u32,
    #[serde(default)]
    pub manager_grace_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_label: Option<String>,
    /// Automatic recovery after this long without quorum (0: off).
    #[serde(default)]
    pub auto_recover_secs: u64,
    /// Since when no manager has reached a raft leader, while so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_lost_at: Option<i64>,
    /// A quorum recovery not finished yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// In a signed-only swarm: services made outside fogswarm whose image
    /// its keys did not sign, as the raft leader last reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsigned_services: Vec<crate::service::UnsignedService>,
    /// What a re-enrolment with another key gets.
    #[serde(default)]
    pub reimage: Reimage,
    pub created_at: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCreate {
    pub id: String,
    pub swarm: String,
    #[serde(default = "default_role")]
    pub role: Role,
    #[serde(default)]
    pub labels: Labels,
}

fn default_role() -> Role {
    Role::Worker
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    #[serde(default)]
    pub swarm: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    /// Replaces all operator labels.
    #[serde(default)]
    pub labels: Option<Labels>,
    /// Never promote this device to replace a lost manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_manager: Option<bool>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A device as operators see it: never its credential.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceView {
    pub id: DeviceId,
    pub swarm: String,
    pub role: Role,
    pub labels: Labels,
    pub facts: Facts,
    pub state: DeviceState,
    pub enrolled: bool,
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub engine_version: Option<String>,
    pub last_seen: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    /// Whether its node is a swarm manager, as it last reported (the role
    /// above is what the operator wants; the raft leader's agent makes it so).
    #[serde(default)]
    pub manager: Option<bool>,
    /// Skipped when a lost manager is replaced.
    #[serde(default)]
    pub never_manager: bool,
    /// Whether its node is the raft leader, as it last reported.
    #[serde(default)]
    pub raft_leader: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The protocol version its agent speaks (`1.0` for agents that
    /// predate versioning), as of its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// On a manager: whether its engine reached a raft leader, as it last
    /// reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<bool>,
    /// Since when the device has not been heard for three of its report
    /// intervals (absent while it reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<i64>,
    /// Its latest telemetry sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// How often its agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// The fingerprint of the key its identity is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where the key lives: `file`, or `tpm` with the fingerprint of the
    /// TPM's endorsement key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
    /// Another key asked to enrol as this device and waits for `device
    /// approve` (a re-image, or a copied card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenrol_pending: Option<ReenrolPending>,
}

/// A re-enrolment waiting for an operator: the newcomer's key and when it
/// asked. The enrolled key keeps working meanwhile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReenrolPending {
    pub key: String,
    pub since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
}

/// `POST /v1/enrol-tokens`: a token that admits new devices into one swarm.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolTokenCreate {
    pub swarm: String,
    /// Labels every device it admits gets.
    #[serde(default)]
    pub labels: Labels,
    /// Devices it may admit (none: unbounded until it expires).
    #[serde(default)]
    pub uses: Option<u32>,
    /// Seconds until it expires (none: never).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// The role the devices it admits get (worker or manager).
    #[serde(default = "default_role")]
    pub role: Role,
}

/// An enrolment token as listed: never the token itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrolTokenView {
    pub id: String,
    pub swarm: String,
    pub labels: Labels,
    pub role: Role,
    /// Devices admitted so far, and at most.
    pub used: u32,
    pub uses: Option<u32>,
    pub expires_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

/// The answer to creating a token: shown once, never again.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolTokenCreated {
    #[serde(flatten)]
    pub view: EnrolTokenView,
    pub token: Secret,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportResult {
    pub created: usize,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisioningKeyRotated {
    pub provisioning_key: Secret,
    pub file: String,
}

/// A new admin token: shown once, and written to `file` on the replica
/// that made it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminTokenRotated {
    pub admin_token: Secret,
    pub file: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwarmSummary {
    pub name: String,
    pub initialized: bool,
    pub devices: u64,
    pub by_state: std::collections::BTreeMap<String, u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceProblem {
    pub device: String,
    pub swarm: String,
    pub error: String,
}

/// The fleet at a glance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetStatus {
    pub swarms: Vec<SwarmSummary>,
    pub devices: u64,
    /// Devices not heard for three of their report intervals, longest
    /// silent first: the first thing an operator should see.
    #[serde(default)]
    pub offline: Vec<OfflineDevice>,
    pub problems: Vec<DeviceProblem>,
    /// Devices whose agent speaks an older protocol than the server: still
    /// served, to be updated before the next server release.
    #[serde(default)]
    pub outdated_agents: Vec<OutdatedAgent>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutdatedAgent {
    pub device: String,
    pub swarm: String,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfflineDevice {
    pub device: String,
    pub swarm: String,
    pub since: i64,
    pub last_seen: Option<i64>,
}

/// One entry of the append-only event log. Never holds a secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    /// `admin`, `device:<id>` or `server`.
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let answer = ConfigAnswer::Join {
            swarm: "s".into(),
            cluster_id: Some("c".into()),
            node_id: None,
            role: Role::Worker,
            managers: vec!["10.0.0.1:2377".into()],
            token: Secret::new("SWMTKN-1-abc"),
            grant_key: None,
            removed_node_ids: vec![],
            agent_update: None,
            agent_logs: vec![],
        };
        let debug = format!("{answer:?}");
        assert!(!debug.contains("SWMTKN"), "{debug}");
        assert!(debug.contains("[redacted]"));
        let json = serde_json::to_string(&answer).expect("ser");
        assert!(json.contains("\"action\":\"join\""), "{json}");
        assert!(json.contains("SWMTKN-1-abc"), "the wire carries it: {json}");
    }

    #[test]
    fn config_answers_are_tagged() {
        let wait: ConfigAnswer = serde_json::from_str(
            r#"{"action":"wait","retry_after_secs":3,"reason":"no tokens yet"}"#,
        )
        .expect("de");
        assert_eq!(
            wait,
            ConfigAnswer::Wait {
                retry_after_secs: 3,
                reason: "no tokens yet".into()
            }
        );
    }

    #[test]
    fn states() {
        assert_eq!(DeviceState::parse("active"), Some(DeviceState::Active));
        assert_eq!(DeviceState::parse("nope"), None);
        assert!(!DeviceState::Declared.reportable());
        assert!(DeviceState::Joining.reportable());
    }
}

// ---- users ----

/// What a named operator may do: viewers read everything and change
/// nothing; operators change their swarms (all, when none are named);
/// admins manage users, keys and swarms too.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Viewer,
    Operator,
    Admin,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Viewer => "viewer",
            UserRole::Operator => "operator",
            UserRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        match s {
            "viewer" => Some(UserRole::Viewer),
            "operator" => Some(UserRole::Operator),
            "admin" => Some(UserRole::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for UserRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: String,
    pub role: UserRole,
    /// For operators: the swarms they may change (none: every swarm).
    #[serde(default)]
    pub swarms: Vec<String>,
    /// For signing in to the dashboard (at least 12 characters).
    #[serde(default)]
    pub password: Option<Secret>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    pub role: Option<UserRole>,
    #[serde(default)]
    pub swarms: Option<Vec<String>>,
    #[serde(default)]
    pub password: Option<Secret>,
}

/// A user as listed: never a password or token.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserView {
    pub name: String,
    pub role: UserRole,
    pub swarms: Vec<String>,
    pub has_password: bool,
    pub created_at: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserTokenCreate {
    /// Whose token (admins only; default: the caller's own).
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds until it expires (default 90 days; at most 10 years).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserTokenView {
    pub id: String,
    pub user: String,
    pub expires_at: i64,
    pub created_at: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserTokenCreated {
    #[serde(flatten)]
    pub view: UserTokenView,
    pub token: Secret,
}

/// Who the caller is, as the server sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhoAmI {
    pub name: String,
    pub role: UserRole,
    pub swarms: Vec<String>,
}

/// `POST /v1/certificates`: a client certificate for a user, from the
/// fleet's CA (what a Docker context presents).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserCertificateCreate {
    /// Whose (admins only; default: the caller's own).
    #[serde(default)]
    pub user: Option<String>,
    /// Days it is valid (default 365, at most 3650).
    #[serde(default)]
    pub days: Option<u32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserCertificateView {
    pub id: String,
    pub user: String,
    /// SHA-256 of the certificate (DER), hex.
    pub fingerprint: String,
    pub expires_at: i64,
    pub created_at: i64,
}

/// A new client certificate with its private key (shown once) and the
/// fleet's CA certificate (to trust the server by).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserCertificateIssued {
    #[serde(flatten)]
    pub view: UserCertificateView,
    pub certificate: String,
    pub key: Secret,
    pub ca: String,
}
