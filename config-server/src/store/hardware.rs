//! Hardware for services: what each swarm lets its services be given, and
//! the swarm's grant key. Deploys asking for more are refused in the same
//! transaction that would store them; grants are signed for what is
//! allowed now, so taking an entry off the list takes the hardware away
//! from the next task instead of leaving an old grant valid.

use super::events::log_event;
use super::{from_json, json_of, Actor, Result, Store, StoreError};
use crate::db::{params, Tx};
use crate::seal::Sealer;
use fogswarm_protocol::api::DesiredState;
use fogswarm_protocol::hardware::{self, Grant, RUNTIME_FACT};
use fogswarm_protocol::service::ServiceSpec;
use fogswarm_protocol::validate::FACT_PREFIX;
use ring::signature::Ed25519KeyPair;

/// What a swarm's services may be given.
pub struct HardwarePolicy {
    pub allowed_devices: Vec<String>,
    pub allow_privileged: bool,
}

pub(super) fn policy(tx: &Tx<'_>, swarm: &str) -> Result<HardwarePolicy> {
    let row = tx
        .query_opt(
            "SELECT allowed_devices, allow_privileged FROM swarms WHERE name = $1",
            params![swarm],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} does not exist")))?;
    Ok(HardwarePolicy {
        allowed_devices: from_json(&row.get::<String>(0)?)?,
        allow_privileged: row.get::<i64>(1)? != 0,
    })
}

/// Refuses (422, naming the service's field) a spec asking for hardware
/// the swarm does not allow.
pub(super) fn check_allowed(tx: &Tx<'_>, swarm: &str, specs: &[&ServiceSpec]) -> Result<()> {
    if !specs.iter().any(|s| s.wants_hardware()) {
        return Ok(());
    }
    let policy = policy(tx, swarm)?;
    for spec in specs {
        hardware::check_allowed(
            &spec.devices,
            &spec.device_cgroup_rules,
            spec.privileged,
            &policy.allowed_devices,
            policy.allow_privileged,
            swarm,
        )
        .map_err(|e| StoreError::Invalid {
            field: Some(e.field),
            message: format!("service {}: {}", spec.name, e.message),
        })?;
    }
    Ok(())
}

/// Checks allow-list entries before anything is written.
pub(super) fn validate_allow_list(list: Option<&[String]>) -> Result<()> {
    for (i, entry) in list.unwrap_or_default().iter().enumerate() {
        hardware::validate_allow_entry(entry).map_err(|m| StoreError::Invalid {
            field: Some(format!("allow_devices[{i}]")),
            message: m,
        })?;
    }
    Ok(())
}

/// Sets what the swarm's services may be given (what is `Some`), with an
/// event each, and has the hardware services re-granted.
pub(super) fn set_policy(
    tx: &Tx<'_>,
    actor: &Actor,
    swarm: &str,
    allow_devices: Option<&[String]>,
    allow_privileged: Option<bool>,
) -> Result<()> {
    if let Some(list) = allow_devices {
        tx.execute(
            "UPDATE swarms SET allowed_devices = $2 WHERE name = $1",
            params![swarm, json_of(&list)],
        )?;
        let detail = format!("allow_devices=[{}]", list.join(","));
        log_event(tx, actor, "swarm.update", swarm, &detail)?;
    }
    if let Some(privileged) = allow_privileged {
        tx.execute(
            "UPDATE swarms SET allow_privileged = $2 WHERE name = $1",
            params![swarm, privileged as i64],
        )?;
        let detail = format!("allow_privileged={privileged}");
        log_event(tx, actor, "swarm.update", swarm, &detail)?;
    }
    if allow_devices.is_some() || allow_privileged.is_some() {
        regrant(tx, swarm)?;
    }
    Ok(())
}

/// After the allow-list changed: gives every service asking for hardware
/// a new revision, so the leader re-applies it with the grant signed for
/// what is allowed now (or none).
fn regrant(tx: &Tx<'_>, swarm: &str) -> Result<()> {
    let revision = super::bump(tx, swarm)?;
    for row in super::services::list_rows(tx, swarm)? {
        if row.spec.wants_hardware() {
            tx.execute(
                "UPDATE services SET revision = $3 WHERE swarm = $1 AND name = $2",
                params![swarm, &row.spec.name, revision as i64],
            )?;
        }
    }
    Ok(())
}

/// The base64 public key devices verify grants with, once the swarm has one.
pub(super) fn public_key(tx: &Tx<'_>, swarm: &str) -> Result<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT grant_public_key FROM swarms WHERE name = $1",
            params![swarm],
        )?
        .map(|row| row.get::<Option<String>>(0))
        .transpose()?
        .flatten())
}

fn key_context(swarm: &str) -> String {
    format!("grant-key/{swarm}")
}

impl Store {
    /// The swarm's grant key, made on first use. Replicas racing to make
    /// it agree: only the first write lands, and everyone reads it back.
    pub fn grant_key(&self, swarm: &str, sealer: &Sealer) -> Result<Ed25519KeyPair> {
        let stored = |tx: &Tx<'_>| -> Result<Option<String>> {
            Ok(tx
                .query_opt(
                    "SELECT grant_key FROM swarms WHERE name = $1",
                    params![swarm],
                )?
                .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} does not exist")))?
                .get::<Option<String>>(0)?)
        };
        let sealed = match self.read(|tx| stored(tx))? {
            Some(sealed) => sealed,
            None => self.write(|tx| {
                if let Some(sealed) = stored(tx)? {
                    return Ok(sealed);
                }
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| StoreError::Corrupt("cannot generate a grant key".into()))?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| StoreError::Corrupt("generated grant key unreadable".into()))?;
                let sealed = sealer.seal(&key_context(swarm), pkcs8.as_ref());
                tx.execute(
                    "UPDATE swarms SET grant_key = $2, grant_public_key = $3 WHERE name = $1 AND grant_key IS NULL",
                    params![swarm, &sealed, hardware::public_key_text(&pair)],
                )?;
                Ok(sealed)
            })?,
        };
        let pkcs8 = sealer
            .open(&key_context(swarm), &sealed)
            .map_err(|e| StoreError::Corrupt(format!("swarm {swarm}'s grant key: {e}")))?;
        Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| StoreError::Corrupt(format!("swarm {swarm}'s grant key is not a key")))
    }

    /// Signs a grant for each service asking for hardware the swarm still
    /// allows, and labels the nodes that can honour it (the runtime
    /// registered, the swarm's key held, every device present) with its
    /// placement label.
    pub fn sign_grants(&self, desired: &mut DesiredState, sealer: &Sealer) -> Result<()> {
        if !desired.services.iter().any(|s| s.spec.wants_hardware()) {
            return Ok(());
        }
        let swarm = desired.swarm.clone();
        let policy = self.read(|tx| policy(tx, &swarm))?;
        let key = self.grant_key(&swarm, sealer)?;
        let key_id = hardware::key_id(&hardware::public_key_text(&key));
        for service in &mut desired.services {
            let spec = &service.spec;
            if !spec.wants_hardware()
                || hardware::check_allowed(
                    &spec.devices,
                    &spec.device_cgroup_rules,
                    spec.privileged,
                    &policy.allowed_devices,
                    policy.allow_privileged,
                    &swarm,
                )
                .is_err()
            {
                continue;
            }
            let grant = Grant {
                swarm: swarm.clone(),
                service: spec.name.clone(),
                devices: spec.devices.clone(),
                cgroup_rules: spec.device_cgroup_rules.clone(),
                privileged: spec.privileged,
            };
            service.grant = Some(grant.sign(&key));
            let label = hardware::placement_label(&spec.name);
            for node in &mut desired.nodes {
                let facts: fogswarm_protocol::api::Facts = node
                    .labels
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_prefix(FACT_PREFIX)?.to_string(), v.clone()))
                    })
                    .collect();
                let can = facts.contains_key(RUNTIME_FACT)
                    && facts.get(hardware::KEY_FACT) == Some(&key_id)
                    && spec.devices.iter().all(|d| d.present_in(&facts));
                if can {
                    node.labels.insert(label.clone(), "true".into());
                }
            }
        }
        Ok(())
    }
}
