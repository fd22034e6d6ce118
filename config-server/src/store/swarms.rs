//! Swarms: their settings, the leader lease that lets exactly one device
//! initialize each, the tokens its managers post, and the desired state
//! its managers follow.

use super::devices::{device_rows, device_view};
use super::events::log_event;
use super::{bump, from_json, json_of, now, services, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Tx};
use fogswarm_protocol::api::{
    Availability, ConfigAnswer, DesiredNode, DesiredState, DeviceState, Reimage, Secret,
    SwarmTokens, SwarmUpdate, SwarmView,
};
use fogswarm_protocol::validate::{self, AutoEnrol, Role, FACT_PREFIX};

/// How long a device may hold the leader lease before another init may be
/// granted: long enough for `swarm init` and posting the tokens.
pub const LEASE_SECS: u64 = 60;

impl Store {
    pub fn create_swarm(
        &self,
        actor: &Actor,
        name: &str,
        auto_enrol: AutoEnrol,
    ) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        self.write(|tx| {
            if swarm_exists(tx, name)? {
                return Err(StoreError::Conflict(format!("swarm {name} already exists")));
            }
            tx.execute(
                "INSERT INTO swarms (name, auto_enrol, created_at) VALUES ($1, $2, $3)",
                params![name, auto_enrol.as_str(), now()],
            )?;
            log_event(
                tx,
                actor,
                "swarm.create",
                name,
                &format!("auto_enrol={}", auto_enrol.as_str()),
            )?;
            swarm_view(tx, name)
        })
    }

    pub fn list_swarms(&self) -> Result<Vec<SwarmView>> {
        self.read(|tx| {
            let names = tx.query("SELECT name FROM swarms ORDER BY name", &[])?;
            names
                .iter()
                .map(|r| swarm_view(tx, &r.get::<String>(0)?))
                .collect()
        })
    }

    pub fn get_swarm(&self, name: &str) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        self.read(|tx| swarm_view(tx, name))
    }

    /// Changes what `update` names; `signing_keys` are its
    /// `require_signed` keys, checked by the caller.
    pub fn update_swarm(
        &self,
        actor: &Actor,
        name: &str,
        update: &SwarmUpdate,
        signing_keys: Option<&[SigningKeyText]>,
    ) -> Result<SwarmView> {
        validate::validate_swarm_name(name)?;
        super::hardware::validate_allow_list(update.allow_devices.as_deref())?;
        let auto_enrol = update.auto_enrol;
        self.write(|tx| {
            swarm_view(tx, name)?;
            super::hardware::set_policy(
                tx,
                actor,
                name,
                update.allow_devices.as_deref(),
                update.allow_privileged,
            )?;
            super::quorum::set_policy(
                tx,
                actor,
                name,
                update.managers,
                update.manager_grace_secs,
                update.spread_label.as_deref(),
                update.auto_recover_secs,
            )?;
            if let Some(keys) = signing_keys {
                let pems: Vec<&str> = keys.iter().map(|k| k.pem.as_str()).collect();
                tx.execute(
                    "UPDATE swarms SET signing_keys = $2 WHERE name = $1",
                    params![name, json_of(&pems)],
                )?;
                let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
                log_event(
                    tx,
                    actor,
                    "swarm.update",
                    name,
                    &format!("require_signed=[{}]", ids.join(",")),
                )?;
            }
            if let Some(r) = update.reimage {
                tx.execute(
                    "UPDATE swarms SET reimage = $2 WHERE name = $1",
                    params![name, r.as_str()],
                )?;
                log_event(
                    tx,
                    actor,
                    "swarm.update",
                    name,
                    &format!("reimage={}", r.as_str()),
                )?;
            }
            if let Some(a) = auto_enrol {
                tx.execute(
                    "UPDATE swarms SET auto_enrol = $2 WHERE name = $1",
                    params![name, a.as_str()],
                )?;
                log_event(
                    tx,
                    actor,
                    "swarm.update",
                    name,
                    &format!("auto_enrol={}", a.as_str()),
                )?;
            }
            swarm_view(tx, name)
        })
    }

    /// Removes a swarm; refused while it has devices unless `force`, which
    /// removes them too.
    pub fn remove_swarm(&self, actor: &Actor, name: &str, force: bool) -> Result<()> {
        validate::validate_swarm_name(name)?;
        self.write(|tx| {
            let view = swarm_view(tx, name)?;
            if view.devices > 0 && !force {
                return Err(StoreError::Conflict(format!(
                    "swarm {name} still has {} devices; remove them first or use force",
                    view.devices
                )));
            }
            tx.execute(
                "DELETE FROM log_lines WHERE request IN (SELECT id FROM log_requests WHERE swarm = $1)",
                params![name],
            )?;
            for table in ["device_telemetry", "telemetry_hours"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE device IN (SELECT id FROM devices WHERE swarm = $1)"),
                    params![name],
                )?;
            }
            for table in ["devices", "services", "observed", "swarm_files", "log_requests", "agent_rollouts", "agent_rollout_devices", "enrol_tokens"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE swarm = $1"),
                    params![name],
                )?;
            }
            tx.execute("DELETE FROM swarms WHERE name = $1", params![name])?;
            log_event(
                tx,
                actor,
                "swarm.remove",
                name,
                &format!("devices_removed={}", view.devices),
            )?;
            Ok(())
        })
    }

    /// Decides what a device does next. Most answers only read (the
    /// device's last-seen time is noted in memory, see [`Store::heard`]);
    /// a device that may initialize its swarm goes on to a write
    /// transaction in which the leader lease is checked and taken, so of
    /// any number of concurrent requests (on any replica) exactly one gets
    /// `init`.
    pub fn config_for(&self, device: &str) -> Result<(ConfigAnswer, bool)> {
        if let Decision::Answer(answer) = self.read(|tx| decide(tx, device))? {
            self.heard(device);
            return Ok((answer, false));
        }
        self.write(|tx| {
            tx.execute(
                "UPDATE devices SET last_seen = $2 WHERE id = $1",
                params![device, now()],
            )?;
            // Decided again: the swarm may have been initialized meanwhile.
            let swarm = match decide(tx, device)? {
                Decision::Answer(answer) => return Ok((answer, false)),
                Decision::MayInitialize(swarm) => swarm,
            };
            let t = now();
            let granted = tx.execute(
                "UPDATE swarms SET lease_holder = $2, lease_expires = $3
                 WHERE name = $1 AND worker_token IS NULL AND (lease_holder IS NULL OR lease_expires < $4)",
                params![&swarm, device, t + LEASE_SECS as i64, t],
            )?;
            if granted == 1 {
                log_event(
                    tx,
                    &Actor::Server,
                    "swarm.lease",
                    &swarm,
                    &format!("granted to {device} for {LEASE_SECS}s"),
                )?;
                return Ok((
                    ConfigAnswer::Init {
                        swarm,
                        lease_secs: LEASE_SECS,
                    },
                    true,
                ));
            }
            Ok((
                ConfigAnswer::Wait {
                    retry_after_secs: 3,
                    reason: format!("swarm {swarm} is being initialized"),
                },
                false,
            ))
        })
    }

    /// Records a swarm's cluster id, manager addresses and join tokens, from
    /// one of its managers. The first post must come from the lease holder;
    /// later ones (token rotation, new managers) must name the same cluster.
    pub fn set_tokens(&self, device: &str, tokens: &SwarmTokens) -> Result<Touched> {
        if tokens.cluster_id.is_empty() || tokens.cluster_id.len() > 128 {
            return Err(StoreError::Invalid {
                field: Some("cluster_id".into()),
                message: "cluster_id must be 1 to 128 characters".into(),
            });
        }
        for (field, token) in [
            ("worker_token", &tokens.worker_token),
            ("manager_token", &tokens.manager_token),
        ] {
            if !token.expose().starts_with("SWMTKN-") || token.expose().len() > 256 {
                return Err(StoreError::Invalid {
                    field: Some(field.into()),
                    message: format!("{field} is not a swarm join token"),
                });
            }
        }
        if tokens.manager_addrs.is_empty()
            || tokens
                .manager_addrs
                .iter()
                .any(|a| a.parse::<std::net::SocketAddr>().is_err())
        {
            return Err(StoreError::Invalid {
                field: Some("manager_addrs".into()),
                message: "manager_addrs must be one or more ip:port addresses".into(),
            });
        }
        self.write(|tx| {
            let view = device_view(tx, device)?;
            if !view.role.is_manager() {
                return Err(StoreError::Forbidden(format!(
                    "device {device} is a {} of swarm {}; only its managers may post tokens",
                    view.role, view.swarm
                )));
            }
            let row = tx.query_one(
                "SELECT cluster_id, lease_holder, tokens_generation FROM swarms WHERE name = $1",
                params![&view.swarm],
            )?;
            let cluster_id: Option<String> = row.get(0)?;
            let lease_holder: Option<String> = row.get(1)?;
            let stored_generation = row.get::<i64>(2)? as u64;
            if tokens.generation < stored_generation {
                // A late answer to an older rotation must not bring back
                // tokens a newer rotation retired.
                return Err(StoreError::Conflict(format!(
                    "these tokens answer rotation {}; swarm {} holds the tokens of rotation {stored_generation}",
                    tokens.generation, view.swarm
                )));
            }
            match &cluster_id {
                None if lease_holder.as_deref() != Some(device) => {
                    return Err(StoreError::Conflict(format!(
                        "swarm {} is not initialized and {device} does not hold its leader lease",
                        view.swarm
                    )))
                }
                Some(existing) if existing != &tokens.cluster_id => {
                    return Err(StoreError::Conflict(format!(
                        "swarm {} is cluster {existing}, not {}",
                        view.swarm, tokens.cluster_id
                    )))
                }
                _ => {}
            }
            tx.execute(
                "UPDATE swarms SET cluster_id = $2, manager_addrs = $3, worker_token = $4, manager_token = $5,
                 lease_holder = NULL, lease_expires = NULL,
                 tokens_generation = $6 WHERE name = $1",
                params![
                    &view.swarm,
                    &tokens.cluster_id,
                    json_of(&tokens.manager_addrs),
                    tokens.worker_token.expose(),
                    tokens.manager_token.expose(),
                    tokens.generation as i64
                ],
            )?;
            let action = match &cluster_id {
                None => "swarm.initialized",
                Some(_) if tokens.generation > stored_generation => "swarm.tokens-rotated",
                // The same tokens with the managers there are now.
                Some(_) => "swarm.tokens",
            };
            log_event(
                tx,
                &Actor::Device(device.into()),
                action,
                &view.swarm,
                &format!(
                    "cluster={} managers={}",
                    tokens.cluster_id,
                    tokens.manager_addrs.join(",")
                ),
            )?;
            bump(tx, &view.swarm)?;
            Ok(vec![view.swarm])
        })
    }

    /// The swarm a device belongs to.
    pub fn device_swarm(&self, device: &str) -> Result<String> {
        self.read(|tx| Ok(device_view(tx, device)?.swarm))
    }

    /// The swarm a manager device belongs to; refuses workers.
    pub fn manager_swarm(&self, device: &str) -> Result<String> {
        self.read(|tx| {
            let view = device_view(tx, device)?;
            if !view.role.is_manager() {
                return Err(StoreError::Forbidden(format!(
                    "device {device} is a {}; only managers may read the desired state",
                    view.role
                )));
            }
            Ok(view.swarm)
        })
    }

    pub fn desired_state(&self, swarm: &str) -> Result<DesiredState> {
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT revision, cluster_id, token_rotation, tokens_generation FROM swarms WHERE name = $1",
                params![swarm],
            )?;
            let revision: i64 = row.get(0)?;
            let cluster_id: Option<String> = row.get(1)?;
            let token_rotation = row.get::<i64>(2)? as u64;
            let tokens_generation = row.get::<i64>(3)? as u64;
            let mut nodes = Vec::new();
            for row in device_rows(tx, Some(swarm))? {
                let stale: Vec<String> = from_json(&row.stale_node_ids)?;
                let view = row.into_view()?;
                let mut labels = view.labels.clone();
                for (k, v) in &view.facts {
                    labels.insert(format!("{FACT_PREFIX}{k}"), v.clone());
                }
                let availability = match view.state {
                    DeviceState::Pending | DeviceState::Leaving => Availability::Drain,
                    _ => Availability::Active,
                };
                nodes.push(DesiredNode {
                    device_id: view.id,
                    node_id: view.node_id,
                    role: view.role,
                    labels,
                    availability,
                    stale_node_ids: stale,
                });
            }
            Ok(DesiredState {
                swarm: swarm.to_string(),
                revision: revision as u64,
                cluster_id,
                nodes,
                services: services::desired_services(tx, swarm)?,
                log_requests: super::logs::open_requests(tx, swarm)?,
                token_rotation,
                tokens_generation,
                managers: super::quorum::settings(tx, swarm)?.policy,
                recovery: super::quorum::recovery(tx, swarm)?,
                signing_keys: signing_keys(tx, swarm)?,
            })
        })
    }

    /// Asks the swarm's raft leader for new join tokens.
    pub fn rotate_tokens(&self, actor: &Actor, swarm: &str) -> Result<Touched> {
        validate::validate_swarm_name(swarm)?;
        self.write(|tx| {
            require_swarm(tx, swarm)?;
            request_rotation(tx, actor, swarm, "asked for")?;
            Ok(vec![swarm.to_string()])
        })
    }

    pub fn revision(&self, swarm: &str) -> Result<u64> {
        self.read(|tx| {
            let revision: i64 = tx
                .query_one(
                    "SELECT revision FROM swarms WHERE name = $1",
                    params![swarm],
                )?
                .get(0)?;
            Ok(revision as u64)
        })
    }
}

/// What a device's config request comes to, as far as reading can tell.
// Made and matched once per poll (see `ConfigAnswer`).
#[allow(clippy::large_enum_variant)]
enum Decision {
    Answer(ConfigAnswer),
    /// The swarm is not initialized and this device may do it: a write
    /// transaction decides who holds the lease.
    MayInitialize(String),
}

fn decide(tx: &Tx<'_>, device: &str) -> Result<Decision> {
    let view = device_view(tx, device)?;
    let swarm = view.swarm;
    match view.state {
        DeviceState::Leaving => return Ok(Decision::Answer(ConfigAnswer::Leave { swarm })),
        DeviceState::Pending => {
            return Ok(Decision::Answer(ConfigAnswer::Wait {
                retry_after_secs: 30,
                reason: "waiting for an operator to approve this device".into(),
            }))
        }
        _ => {}
    }
    let row = tx.query_one(
        "SELECT worker_token, manager_token, manager_addrs, cluster_id FROM swarms WHERE name = $1",
        params![&swarm],
    )?;
    let worker_token: Option<String> = row.get(0)?;
    let manager_token: Option<String> = row.get(1)?;
    if let (Some(worker), Some(manager)) = (worker_token, manager_token) {
        let token = if view.role.is_manager() {
            manager
        } else {
            worker
        };
        let grant_key = super::hardware::public_key(tx, &swarm)?;
        let agent_update = super::rollouts::target_for(tx, &swarm, device)?;
        let removed = super::devices::stale_node_ids(tx, device)?;
        return Ok(Decision::Answer(ConfigAnswer::Join {
            swarm,
            cluster_id: row.get(3)?,
            node_id: view.node_id,
            role: view.role,
            managers: from_json(&row.get::<String>(2)?)?,
            token: Secret::new(token),
            grant_key,
            removed_node_ids: removed,
            agent_update,
            agent_logs: super::logs::agent_requests(tx, device)?,
        }));
    }
    // Not initialized. Who may initialize: the declared leader, or, in a
    // swarm without one, any manager.
    let has_leader: bool = tx
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM devices WHERE swarm = $1 AND role = 'leader')",
            params![&swarm],
        )?
        .get(0)?;
    if view.role == Role::Leader || (!has_leader && view.role == Role::Manager) {
        return Ok(Decision::MayInitialize(swarm));
    }
    Ok(Decision::Answer(ConfigAnswer::Wait {
        retry_after_secs: 5,
        reason: format!("swarm {swarm} is not initialized yet"),
    }))
}

/// Asks for a join-token rotation (an operator's, or a decommission's: the
/// device leaving still knows the tokens).
pub(super) fn request_rotation(tx: &Tx<'_>, actor: &Actor, swarm: &str, why: &str) -> Result<()> {
    tx.execute(
        "UPDATE swarms SET token_rotation = token_rotation + 1 WHERE name = $1",
        params![swarm],
    )?;
    bump(tx, swarm)?;
    log_event(tx, actor, "swarm.rotate-tokens", swarm, why)
}

/// Refuses (404) a swarm that does not exist.
pub(super) fn require_swarm(tx: &Tx<'_>, name: &str) -> Result<()> {
    if swarm_exists(tx, name)? {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("swarm {name} does not exist")))
    }
}

fn swarm_exists(tx: &Tx<'_>, name: &str) -> Result<bool> {
    Ok(tx
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM swarms WHERE name = $1)",
            params![name],
        )?
        .get(0)?)
}

/// A key's id: the first 16 hex digits of the SHA-256 of its PEM text's
/// DER body, as `fogswarm image verify` prints it.
pub fn key_id(pem: &str) -> String {
    fogswarm_images::sign::VerifyingKey::from_pem(pem, "stored key")
        .map(|k| k.key_id()[..16].to_string())
        .unwrap_or_else(|_| "invalid".into())
}

/// A public key a swarm's images must be signed by, checked: its PEM and
/// its id (as `fogswarm image verify` prints it).
pub struct SigningKeyText {
    pub pem: String,
    pub id: String,
}

impl Store {
    /// The PEM public keys a swarm's images must be signed by.
    pub fn signing_keys(&self, swarm: &str) -> Result<Vec<String>> {
        self.read(|tx| signing_keys(tx, swarm))
    }
}

fn signing_keys(tx: &Tx<'_>, swarm: &str) -> Result<Vec<String>> {
    let row = tx
        .query_opt(
            "SELECT signing_keys FROM swarms WHERE name = $1",
            params![swarm],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} does not exist")))?;
    from_json(&row.get::<String>(0)?)
}

fn swarm_view(tx: &Tx<'_>, name: &str) -> Result<SwarmView> {
    let row = tx
        .query_opt(
            "SELECT s.name, s.auto_enrol, s.worker_token IS NOT NULL, s.cluster_id, s.manager_addrs,
                    (SELECT COUNT(*) FROM devices d WHERE d.swarm = s.name), s.lease_holder, s.lease_expires, s.created_at,
                    s.signing_keys, s.allowed_devices, s.allow_privileged, s.reimage
             FROM swarms s WHERE s.name = $1",
            params![name],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {name} does not exist")))?;
    let managers = super::quorum::settings(tx, name)?;
    let lease_expires: Option<i64> = row.get(7)?;
    let lease_live = lease_expires.is_some_and(|expires| expires >= now());
    let lease_holder: Option<String> = row.get(6)?;
    Ok(SwarmView {
        name: row.get(0)?,
        auto_enrol: AutoEnrol::parse(&row.get::<String>(1)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        initialized: row.get(2)?,
        cluster_id: row.get(3)?,
        managers: from_json(&row.get::<String>(4)?)?,
        devices: row.get::<i64>(5)? as u64,
        lease_holder: lease_holder.filter(|_| lease_live),
        signing_keys: from_json::<Vec<String>>(&row.get::<String>(9)?)?
            .iter()
            .map(|pem| key_id(pem))
            .collect(),
        allowed_devices: from_json(&row.get::<String>(10)?)?,
        allow_privileged: row.get::<i64>(11)? != 0,
        managers_target: managers.policy.target,
        manager_grace_secs: managers.policy.grace_secs,
        spread_label: managers.spread_label,
        auto_recover_secs: managers.auto_recover_secs,
        quorum_lost_at: managers.quorum_lost_at,
        recovery: super::quorum::recovery(tx, name)?,
        unsigned_services: services::unsigned_services(tx, name)?,
        reimage: Reimage::parse(&row.get::<String>(12)?)
            .ok_or_else(|| StoreError::Corrupt("swarm reimage setting".into()))?,
        created_at: row.get(8)?,
    })
}
