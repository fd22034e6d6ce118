//! The bootstrap flow of DESIGN.md as one loop, run at every boot:
//!
//! ```text
//! find server -> enrol once (key made on the device, 0600) -> loop {
//!     look at the local node; ask the server for config:
//!       init  -> swarm init (drained), post cluster id and tokens
//!       join  -> already in that cluster? nothing : swarm join (drained)
//!       wait  -> report waiting, ask again held by the server until the
//!                answer changes; still wait: back off with full jitter
//!       leave -> demote, leave, report left
//!     report state (at once on change, else every heartbeat)
//!     as a manager, run manager duty alongside
//! }
//! ```
//!
//! Every pass is idempotent: a node already active in the expected cluster
//! is left alone; one in another cluster is reported as an error and never
//! touched.

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::state::{GrantKey, ServerRecord, StateDir, Status};
use crate::{discovery, facts, identity, manager, swarm, update};
use anyhow::{bail, Context, Result};
use fogswarm_client::engine::{Engine, EngineAddr};
use fogswarm_client::identity::DeviceSigner;
use fogswarm_client::{Client, ClientError, Endpoint};
use fogswarm_protocol::api::{
    ConfigAnswer, DeviceState, EnrolRequest, Facts, ReportRequest, Secret, SwarmTokens,
};
use fogswarm_protocol::{hardware, DeviceId};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// How long the server may hold a `wait` answer.
const CONFIG_HOLD: Duration = Duration::from_secs(25);

/// How long this swarm's node may stay stuck before the agent leaves it
/// and joins afresh: in the engine's `error` state, or told to be a
/// manager and still not one. Both are what a promotion whose raft join
/// went to a dead manager looks like: the engine dials that manager for
/// about half a minute, then stops its manager for good.
const STUCK_PATIENCE: Duration = Duration::from_secs(15);

/// What one pass of the loop concluded.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Active in the expected swarm.
    Active { manager: bool, node_id: String },
    /// Nothing to do yet; ask again after about this long.
    Wait(Duration),
    /// Left the swarm for good.
    Left,
    /// Something is wrong that the operator must see.
    Error(String),
}

pub struct Agent {
    config: AgentConfig,
    state: StateDir,
    device_id: DeviceId,
    engine: Engine,
    facts: Facts,
    status: Status,
    version: String,
    /// Since when this swarm's node has been stuck (see [`STUCK_PATIENCE`]).
    stuck_since: Option<std::time::Instant>,
    /// Reads the telemetry each report carries.
    telemetry: crate::telemetry::Sampler,
    /// Log requests being answered, by id (see `journal`).
    log_requests: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
    /// The device's identity key: every request is signed with it.
    signer: std::sync::Arc<dyn DeviceSigner>,
    /// Its TPM's endorsement key fingerprint, when the key is in a TPM.
    endorsement_key: Option<String>,
}

impl Agent {
    /// Everything that must hold before the loop: identity, state dir, and
    /// a local engine that answers (waited for: at boot it may start after us).
    pub async fn start(config: AgentConfig) -> Result<Agent> {
        let state = StateDir::open(&config.state_dir)?;
        let device_id = identity::device_id(Path::new("/"), config.device_id.as_deref())?;
        let addr = EngineAddr::socket(&config.docker_socket);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
        let engine = loop {
            match Engine::connect(&addr).await {
                Ok(e) => break e,
                Err(e) => {
                    tracing::warn!(error = %e, "local engine not answering yet");
                    tokio::time::sleep(backoff.next(None)).await;
                }
            }
        };
        let facts = facts::detect(Path::new("/"));
        if let Err(e) = update::settle_at_start(&state) {
            tracing::warn!(error = %format!("{e:#}"), "settling an agent update");
        }
        let status = Status {
            device_id: Some(device_id.to_string()),
            phase: "starting".into(),
            ..state.status().unwrap_or_default()
        };
        let version = crate::agent_version();
        let (signer, endorsement_key) = crate::keys::signer(&config, &state, device_id.as_str())?;
        tracing::info!(device = %device_id, %version, facts = ?facts, "agent starting");
        Ok(Agent {
            config,
            state,
            device_id,
            engine,
            facts,
            status,
            version,
            stuck_since: None,
            telemetry: Default::default(),
            log_requests: Default::default(),
            signer,
            endorsement_key,
        })
    }

    /// Runs until the device has left its swarm.
    pub async fn run(mut self) -> Result<()> {
        let server = self.server().await;
        self.status.server = Some(server.url.clone());
        let endpoint = Endpoint::new(&server.url, server.ca_fingerprint.as_deref())?;
        let anonymous = Client::new(&endpoint, None)?;
        let mut device = self.enrolled(&anonymous).await;
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut duty: Option<(String, tokio::task::JoinHandle<()>)> = None;
        loop {
            let outcome = match self.pass(&device).await {
                Ok(o) => o,
                Err(e) => match e
                    .downcast_ref::<ClientError>()
                    .and_then(ClientError::status)
                {
                    // The server no longer knows this key as this device
                    // (re-declared, or another key approved in its place):
                    // enrol again.
                    Some(401) => {
                        tracing::warn!("the server refused our key; enrolling again");
                        self.state.forget_enrolment()?;
                        device = self.enrolled(&anonymous).await;
                        continue;
                    }
                    _ => Outcome::Error(format!("{e:#}")),
                },
            };
            let wait = match &outcome {
                Outcome::Active { manager, node_id } => {
                    backoff.reset();
                    self.ensure_duty(&mut duty, *manager, node_id, &device);
                    self.config.heartbeat
                }
                Outcome::Wait(floor) => backoff.next(Some(*floor)),
                Outcome::Left => {
                    if let Some((_, task)) = duty.take() {
                        task.abort();
                    }
                    self.save_status("left", None);
                    tracing::info!("left the swarm: decommissioned");
                    return Ok(());
                }
                Outcome::Error(message) => {
                    tracing::warn!(error = %message, "formation pass failed");
                    self.save_status("error", Some(message.clone()));
                    let _ = self
                        .report(&device, DeviceState::Error, Some(message.clone()))
                        .await;
                    backoff.next(Some(Duration::from_secs(5)))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Where the server is: configured, else remembered from enrolment,
    /// else found over mDNS (retried until it is).
    async fn server(&self) -> ServerRecord {
        if let Some(url) = &self.config.server {
            return ServerRecord {
                url: url.clone(),
                ca_fingerprint: self.config.ca_fingerprint.clone(),
            };
        }
        if let Some(record) = self.state.server() {
            return record;
        }
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        loop {
            match discovery::find_server(
                self.config.ca_fingerprint.as_deref(),
                Duration::from_secs(5),
            )
            .await
            {
                Ok(found) => {
                    tracing::info!(url = %found.url, "found the server over mDNS");
                    return ServerRecord {
                        url: found.url,
                        ca_fingerprint: self.config.ca_fingerprint.clone().or(found.ca_fingerprint),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "looking for the server");
                    tokio::time::sleep(backoff.next(None)).await;
                }
            }
        }
    }

    /// A client that signs as this device, enrolling first if the server
    /// has not taken this device yet. Retries until enrolled: a device not
    /// declared yet may be declared later.
    async fn enrolled(&mut self, anonymous: &Client) -> Client {
        let device = anonymous.with_device(self.signer.clone());
        if self.state.enrolled() {
            return device;
        }
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        loop {
            match self.enrol(&device).await {
                Ok(()) => return device,
                Err(e) => {
                    let message = format!("enrolment: {e:#}");
                    tracing::warn!(error = %message, "not enrolled yet");
                    self.save_status("enrolling", Some(message));
                    tokio::time::sleep(backoff.next(Some(Duration::from_secs(5)))).await;
                }
            }
        }
    }

    /// Enrols with the enrolment token if there is one, else the fleet's
    /// provisioning key; the request is signed with the device's key.
    async fn enrol(&mut self, device: &Client) -> Result<()> {
        let read = |path: &std::path::Path, what: &str| -> Result<Secret> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the {what} from {}", path.display()))?;
            Ok(Secret::new(text.trim()))
        };
        let (provisioning_key, token) = match (
            &self.config.enrol_token_file,
            &self.config.provisioning_key_file,
        ) {
            (Some(path), _) => (None, Some(read(path, "enrolment token")?)),
            (None, Some(path)) => (Some(read(path, "provisioning key")?), None),
            (None, None) => bail!(
                "not enrolled, and neither an enrolment token nor a provisioning key file is given: give --enrol-token-file or --provisioning-key-file"
            ),
        };
        let response = device
            .enrol(&EnrolRequest {
                device_id: self.device_id.clone(),
                public_key: self.signer.public_key().clone(),
                provisioning_key,
                token,
                swarm: self.config.swarm.clone(),
                facts: self.facts.clone(),
                endorsement_key: self.endorsement_key.clone(),
            })
            .await?;
        self.state.save_enrolled()?;
        if let Some(url) = &self.status.server {
            self.state.save_server(&ServerRecord {
                url: url.clone(),
                ca_fingerprint: self
                    .config
                    .ca_fingerprint
                    .clone()
                    .or_else(|| self.state.server().and_then(|s| s.ca_fingerprint)),
            })?;
        }
        self.status.swarm = Some(response.swarm.clone());
        self.status.role = Some(response.role.to_string());
        tracing::info!(swarm = %response.swarm, role = %response.role, pending = response.pending, key = %self.signer.public_key().fingerprint(), "enrolled");
        Ok(())
    }

    /// One pass: look at the node, ask the server, act, report.
    async fn pass(&mut self, device: &Client) -> Result<Outcome> {
        update::give_up_if_late(&self.state)?;
        let node = swarm::local(&self.engine).await?;
        let mut agent_target = None;
        let mut answer = device.config().await?;
        if let ConfigAnswer::Wait { reason, .. } = &answer {
            tracing::info!(%reason, "waiting");
            self.save_status("waiting", None);
            self.report(device, DeviceState::Waiting, None).await?;
            // Asked again, held by the server until the answer changes (up
            // to CONFIG_HOLD): a waiting device joins the moment the
            // leader's tokens arrive, with one request in flight.
            answer = device.config_wait(CONFIG_HOLD.as_secs()).await?;
        }
        let node = match answer {
            ConfigAnswer::Wait {
                retry_after_secs, ..
            } => return Ok(Outcome::Wait(Duration::from_secs(retry_after_secs))),
            ConfigAnswer::Leave { swarm } => {
                tracing::info!(%swarm, "decommissioned: leaving the swarm");
                if node.active() || node.state == "pending" {
                    swarm::leave(&self.engine, &node).await?;
                }
                self.report(device, DeviceState::Left, None).await?;
                self.state.forget_enrolment()?;
                return Ok(Outcome::Left);
            }
            ConfigAnswer::Init { swarm, .. } => {
                self.status.swarm = Some(swarm.clone());
                let node = if node.active() {
                    // Initialized before and crashed before posting the
                    // tokens: post them now, from the swarm we made.
                    if !node.is_manager {
                        bail!("told to initialize swarm {swarm}, but this node is already a worker of cluster {}", node.cluster_id.unwrap_or_default());
                    }
                    node
                } else {
                    self.save_status("initializing", None);
                    self.report(device, DeviceState::Initializing, None).await?;
                    tracing::info!(%swarm, "initializing the swarm");
                    swarm::init(&self.engine, self.advertise()?).await?
                };
                let (cluster_id, worker, manager) = swarm::tokens(&self.engine).await?;
                let addr = node.node_addr.clone().unwrap_or_default();
                device
                    .post_swarm_tokens(&SwarmTokens {
                        cluster_id,
                        manager_addrs: vec![format!("{addr}:{}", swarm::SWARM_PORT)],
                        worker_token: Secret::new(worker),
                        manager_token: Secret::new(manager),
                        generation: 0,
                    })
                    .await?;
                node
            }
            ConfigAnswer::Join {
                swarm,
                cluster_id,
                node_id,
                role,
                managers,
                token,
                grant_key,
                removed_node_ids,
                agent_update,
                agent_logs,
            } => {
                agent_target = agent_update;
                self.answer_log_requests(device, agent_logs);
                // Kept even when the swarm has none: the runtime then
                // knows no grant can hold, rather than waiting for a key.
                self.state.save_grant_key(&GrantKey {
                    swarm: swarm.clone(),
                    public_key: grant_key,
                })?;
                self.status.swarm = Some(swarm.clone());
                self.status.role = Some(role.to_string());
                let node = match &node.node_id {
                    // A lost manager the swarm replaced and removed: its
                    // engine may still think itself a member. Leave that
                    // node and join afresh.
                    Some(id) if removed_node_ids.contains(id) => {
                        tracing::warn!(node = %id, "the swarm removed this node (a manager lost and replaced); leaving it to join again");
                        swarm::leave_removed(&self.engine).await?;
                        swarm::local(&self.engine).await?
                    }
                    _ => node,
                };
                // This swarm's node (the one this agent last had active),
                // stuck: see STUCK_PATIENCE.
                let ours = self.status.node_id.is_some()
                    && (self.status.node_id == node_id
                        || self
                            .status
                            .node_id
                            .as_ref()
                            .is_some_and(|id| removed_node_ids.contains(id)));
                let stuck = ours
                    && (node.state == "error"
                        || (node.active() && role.is_manager() && !node.is_manager));
                let node = if stuck {
                    let since = *self.stuck_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < STUCK_PATIENCE {
                        if node.state == "error" {
                            let message = format!(
                                "the engine's swarm state is error: {}",
                                node.error.unwrap_or_default()
                            );
                            self.report(device, DeviceState::Error, Some(message))
                                .await?;
                        }
                        return Ok(Outcome::Wait(STUCK_PATIENCE - since.elapsed()));
                    }
                    tracing::warn!(state = %node.state, error = ?node.error, %role, "this node stayed stuck; leaving to join again");
                    self.stuck_since = None;
                    swarm::leave_removed(&self.engine).await?;
                    swarm::local(&self.engine).await?
                } else {
                    self.stuck_since = None;
                    node
                };
                if node.active() || node.state == "locked" {
                    if node.in_swarm(cluster_id.as_deref(), node_id.as_deref(), &managers) {
                        node // every later boot: nothing to do
                    } else {
                        let theirs = match (&node.cluster_id, node.remote_managers.first()) {
                            (Some(c), _) => format!("cluster {c}"),
                            (None, Some(m)) => format!("the swarm managed from {m}"),
                            (None, None) => "another swarm".into(),
                        };
                        return Ok(Outcome::Error(format!(
                            "this node is in {theirs}, not in swarm {swarm} (cluster {}); left alone",
                            cluster_id.unwrap_or_else(|| "?".into())
                        )));
                    }
                } else {
                    self.save_status("joining", None);
                    self.report(device, DeviceState::Joining, None).await?;
                    tracing::info!(%swarm, %role, managers = ?managers, "joining the swarm");
                    // The engine joins through the first address only: a
                    // different one first at each attempt, so one dead
                    // manager cannot keep a device out.
                    let mut managers = managers;
                    let count = managers.len();
                    let first = (crate::backoff::random_unit() * count as f64) as usize;
                    managers.rotate_left(first.min(count.saturating_sub(1)));
                    let joined =
                        swarm::join(&self.engine, &managers, token.expose(), self.advertise()?)
                            .await?;
                    if role.is_manager() != joined.is_manager {
                        tracing::warn!(%role, "joined with a role other than declared");
                    }
                    joined
                }
            }
        };
        let node_id = node
            .node_id
            .clone()
            .context("an active node without an id")?;
        self.status.node_id = Some(node_id.clone());
        self.status.cluster_id = node.cluster_id.clone();
        self.save_status("active", None);
        self.report(device, DeviceState::Active, None).await?;
        // A new agent that got this far is healthy: it commits itself,
        // and says so at once.
        if self
            .state
            .agent_update()
            .is_some_and(|r| r.phase == "trying")
        {
            update::commit_if_candidate(&self.state)?;
            self.report(device, DeviceState::Active, None).await?;
        }
        if let Some(target) = agent_target.filter(|t| update::wanted(&self.state, t)) {
            // Execs the new agent; returns only when it could not start.
            if let Err(e) = update::start(&self.engine, &self.state, &target).await {
                tracing::warn!(error = %format!("{e:#}"), rollout = target.rollout, "agent update failed");
                self.report(device, DeviceState::Active, None).await?;
            }
        }
        Ok(Outcome::Active {
            manager: node.is_manager,
            node_id,
        })
    }

    fn advertise(&self) -> Result<Ipv4Addr> {
        identity::advertise_addr(Path::new("/"), self.config.advertise_addr.as_deref())
    }

    /// Reports the device's state; every pass reports, so in steady state
    /// the pass interval is the heartbeat.
    async fn report(
        &mut self,
        device: &Client,
        state: DeviceState,
        error: Option<String>,
    ) -> Result<()> {
        // An error report names no node: the node may belong to another
        // swarm, whose ids are not this device's.
        let node = swarm::local(&self.engine).await.ok();
        // Facts are read afresh: a camera plugged in since, or the runtime
        // registered by `fogswarm-agent install`, moves placement.
        self.facts = facts::detect(Path::new("/"));
        if node.as_ref().and_then(|n| n.default_runtime.as_deref()) == Some(hardware::RUNTIME_NAME)
        {
            self.facts
                .insert(hardware::RUNTIME_FACT.into(), hardware::RUNTIME_NAME.into());
        }
        if let Some(key) = self.state.grant_key().and_then(|k| k.public_key) {
            self.facts
                .insert(hardware::KEY_FACT.into(), hardware::key_id(&key));
        }
        let telemetry = self.telemetry.sample(
            Path::new("/"),
            node.as_ref().and_then(|n| n.docker_root_dir.as_deref()),
            node.as_ref().and_then(|n| n.containers_running),
        );
        let node = node.filter(|_| state != DeviceState::Error);
        // The last raft leader has the freshest log: what a quorum
        // recovery needs to know.
        // (None from a manager: no raft leader answers, the quorum may be
        // lost.)
        let raft = match node.as_ref() {
            Some(n) if n.is_manager => match &n.node_id {
                Some(id) => Some(manager::raft_leader(&self.engine, id).await),
                None => None,
            },
            _ => None,
        };
        let raft_leader = match raft {
            Some(leader) => leader,
            None => node.as_ref().map(|_| false),
        };
        let grant_refusals = self.state.pending_refusals();
        let update_record = self.state.agent_update();
        let report = ReportRequest {
            state: Some(state),
            node_id: node.as_ref().and_then(|n| n.node_id.clone()),
            cluster_id: node.as_ref().and_then(|n| n.cluster_id.clone()),
            manager: node.as_ref().map(|n| n.is_manager),
            engine_version: node.map(|n| n.engine_version),
            facts: Some(self.facts.clone()),
            error,
            grant_refusals,
            raft_leader,
            agent_version: Some(self.version.clone()),
            quorum: raft.map(|r| r.is_some()),
            agent_update: update_record.as_ref().and_then(|r| r.outcome()),
            telemetry: Some(telemetry),
            heartbeat_secs: Some(self.config.heartbeat.as_secs()),
        };
        device.report(&report).await?;
        if let Some(mut record) = update_record.filter(|r| r.outcome().is_some()) {
            record.reported = true;
            self.state.save_agent_update(&record)?;
        }
        self.state.refusals_reported();
        Ok(())
    }

    fn save_status(&mut self, phase: &str, error: Option<String>) {
        self.status.phase = phase.into();
        self.status.last_error = error;
        self.status.updated_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Err(e) = self.state.save_status(&self.status) {
            tracing::warn!(error = %e, "saving the status file");
        }
    }

    /// Manager duty runs while the node is a manager, restarted if the node
    /// id changed.
    /// Starts answering the log requests not answered yet; forgets the
    /// finished ones.
    fn answer_log_requests(
        &mut self,
        device: &Client,
        requests: Vec<fogswarm_protocol::logs::AgentLogRequest>,
    ) {
        self.log_requests.retain(|_, task| !task.is_finished());
        for request in requests {
            if !self.log_requests.contains_key(&request.id) {
                let id = request.id.clone();
                let task = tokio::spawn(crate::journal::ship(device.clone(), request));
                self.log_requests.insert(id, task);
            }
        }
    }

    fn ensure_duty(
        &self,
        duty: &mut Option<(String, tokio::task::JoinHandle<()>)>,
        manager: bool,
        node_id: &str,
        device: &Client,
    ) {
        let running = duty
            .as_ref()
            .is_some_and(|(id, task)| id == node_id && !task.is_finished());
        if manager && !running {
            if let Some((_, old)) = duty.take() {
                old.abort();
            }
            tracing::info!("manager duty started");
            let task = tokio::spawn(manager::duty(
                self.engine.clone(),
                device.clone(),
                self.device_id.clone(),
                node_id.to_string(),
            ));
            *duty = Some((node_id.to_string(), task));
        } else if !manager {
            if let Some((_, task)) = duty.take() {
                task.abort();
            }
        }
    }
}
