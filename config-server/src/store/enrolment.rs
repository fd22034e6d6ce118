//! Enrolment and device identity. A device's id is bound to the public
//! key it enrolled with; every later request is checked against that key
//! (`http::auth`). What admits a device is the fleet's provisioning key or
//! an enrolment token, and neither can take over an enrolled device:
//! another key asking to be that device waits for an operator (or, in a
//! swarm set to `reimage: auto`, is taken as a re-image), while the
//! enrolled key keeps working.

use super::devices::validate_facts;
use super::events::log_event;
use super::{bump, from_json, json_of, now, Actor, Result, Store, StoreError, Touched};
use crate::db::{params, Row, Tx};
use crate::secrets;
use fogswarm_protocol::api::{
    DeviceState, EnrolTokenCreate, EnrolTokenCreated, EnrolTokenView, Facts, Reimage, Secret,
};
use fogswarm_protocol::identity::PublicKey;
use fogswarm_protocol::validate::{self, AutoEnrol, Labels, Role};
use fogswarm_protocol::DeviceId;

/// What admitted an enrolment request (checked before the store is asked,
/// except a token, which is checked and counted in the same transaction).
pub enum Admission<'a> {
    ProvisioningKey,
    Token(&'a Secret),
}

pub struct EnrolInput<'a> {
    pub id: &'a DeviceId,
    pub public_key: &'a PublicKey,
    pub admission: Admission<'a>,
    pub requested_swarm: Option<&'a str>,
    pub facts: &'a Facts,
    pub endorsement_key: Option<&'a str>,
}

/// What an enrolment decided.
pub struct Enrolment {
    pub swarm: String,
    pub role: Role,
    /// Held for an operator: a new device of a swarm that holds them, or
    /// another key for an enrolled device.
    pub pending: bool,
}

/// The keys a device's requests may be signed with.
pub struct DeviceKeys {
    pub enrolled: Option<PublicKey>,
    /// A re-enrolment waiting for approval: this key may only ask for its
    /// config (answered `wait`).
    pub pending: Option<PublicKey>,
}

/// Devices an enrolment token admits, and where.
struct TokenRow {
    id: String,
    swarm: String,
    labels: Labels,
    role: Role,
}

impl Store {
    /// Enrols a device: a new one (declared, auto-enrolled, or admitted by
    /// a token), or an enrolled one again. The same key is the same device
    /// (a device that lost its state but kept its TPM); another key is a
    /// re-enrolment, held for approval unless the swarm takes re-images.
    pub fn enrol(&self, input: EnrolInput<'_>) -> Result<(Enrolment, Touched)> {
        validate_facts(input.facts)?;
        if let Some(s) = input.requested_swarm {
            validate::validate_swarm_name(s)?;
        }
        if let Some(ek) = input.endorsement_key {
            if ek.len() > 128 || !ek.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(StoreError::Invalid {
                    field: Some("endorsement_key".into()),
                    message: "the endorsement key's fingerprint must be hex digits".into(),
                });
            }
        }
        let id = input.id.as_str();
        let key = input.public_key.as_str();
        self.write(|tx| {
            let token = match input.admission {
                Admission::Token(secret) => Some(token_for(tx, secret)?),
                Admission::ProvisioningKey => None,
            };
            let existing = tx.query_opt(
                "SELECT swarm, role, state, public_key, credential_hash IS NOT NULL FROM devices WHERE id = $1",
                params![id],
            )?;
            let Some(row) = existing else {
                return admit_new(tx, &input, token.as_ref());
            };
            let swarm: String = row.get(0)?;
            let role = Role::parse(&row.get::<String>(1)?)?;
            let state = parse_state(&row.get::<String>(2)?)?;
            let enrolled_key: Option<String> = row.get(3)?;
            let had_credential: bool = row.get(4)?;
            if let Some(token) = &token {
                if token.swarm != swarm {
                    return Err(StoreError::Forbidden(format!(
                        "device {id} is declared in swarm {swarm}; this token admits devices into swarm {}",
                        token.swarm
                    )));
                }
            }
            match enrolled_key {
                // The device itself, enrolling again (its state was lost,
                // or it is re-imaged and its key lives in its TPM).
                Some(k) if k == key => {
                    let new_state = match state {
                        DeviceState::Pending | DeviceState::Leaving => state,
                        _ => DeviceState::Enrolled,
                    };
                    tx.execute(
                        "UPDATE devices SET facts = $2, state = $3, last_seen = $4 WHERE id = $1",
                        params![id, json_of(input.facts), new_state.as_str(), now()],
                    )?;
                    log_event(tx, &Actor::Device(id.into()), "device.enrol", id, &format!("swarm={swarm} key={}", input.public_key.fingerprint()))?;
                    bump(tx, &swarm)?;
                    Ok((Enrolment { swarm: swarm.clone(), role, pending: state == DeviceState::Pending }, vec![swarm]))
                }
                // Declared, never enrolled: the first key binds.
                None if !had_credential => {
                    if let Some(token) = &token {
                        use_token(tx, token, id)?;
                        merge_labels(tx, id, &token.labels)?;
                    }
                    let new_state = if state == DeviceState::Pending { state } else { DeviceState::Enrolled };
                    tx.execute(
                        "UPDATE devices SET public_key = $2, endorsement_key = $3, facts = $4, state = $5, last_seen = $6 WHERE id = $1",
                        params![id, key, input.endorsement_key, json_of(input.facts), new_state.as_str(), now()],
                    )?;
                    log_event(tx, &Actor::Device(id.into()), "device.enrol", id, &format!("swarm={swarm} key={}{}", input.public_key.fingerprint(), via(token.as_ref())))?;
                    bump(tx, &swarm)?;
                    Ok((Enrolment { swarm: swarm.clone(), role, pending: new_state == DeviceState::Pending }, vec![swarm]))
                }
                // Another key for an enrolled device (or a device enrolled
                // by an earlier version, before keys): a re-image, or a
                // copied card. Never taken over silently.
                _ => reenrol(tx, &input, &swarm, role, &token),
            }
        })
    }

    /// The keys that may sign `id`'s requests.
    pub fn device_keys(&self, id: &str) -> Result<Option<DeviceKeys>> {
        self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT public_key, pending_key FROM devices WHERE id = $1",
                params![id],
            )?
            else {
                return Ok(None);
            };
            let key = |i: usize| -> Result<Option<PublicKey>> {
                row.get::<Option<String>>(i)?
                    .map(|k| PublicKey::parse(&k).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()
            };
            Ok(Some(DeviceKeys {
                enrolled: key(0)?,
                pending: key(1)?,
            }))
        })
    }

    /// A device replaces its own key (the request was signed with the
    /// current one): credentials rotate without enrolling again.
    pub fn rotate_device_key(&self, id: &str, new: &PublicKey) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE devices SET public_key = $2 WHERE id = $1",
                params![id, new.as_str()],
            )?;
            log_event(
                tx,
                &Actor::Device(id.into()),
                "device.key_rotated",
                id,
                &format!("key={}", new.fingerprint()),
            )
        })
    }

    // ---- enrolment tokens ----

    pub fn create_enrol_token(
        &self,
        actor: &Actor,
        req: &EnrolTokenCreate,
    ) -> Result<EnrolTokenCreated> {
        validate::validate_swarm_name(&req.swarm)?;
        validate::validate_operator_labels(&req.labels)?;
        if req.role == Role::Leader {
            return Err(StoreError::Invalid {
                field: Some("role".into()),
                message: "a token admits workers or managers; a swarm's one leader is declared"
                    .into(),
            });
        }
        if req.uses == Some(0) {
            return Err(StoreError::Invalid {
                field: Some("uses".into()),
                message: "a token must admit at least one device".into(),
            });
        }
        let expires_at = match req.expires_in_secs {
            Some(0) => {
                return Err(StoreError::Invalid {
                    field: Some("expires_in_secs".into()),
                    message: "a token must live at least a second".into(),
                })
            }
            Some(secs) => Some(now().saturating_add(secs.min(100 * 365 * 86_400) as i64)),
            None => None,
        };
        let token = secrets::random_token("fset");
        let id = token_id();
        self.write(|tx| {
            super::swarms::require_swarm(tx, &req.swarm)?;
            tx.execute(
                "INSERT INTO enrol_tokens (id, hash, swarm, labels, role, uses, expires_at, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                params![&id, secrets::hash(token.expose()), &req.swarm, json_of(&req.labels), req.role.as_str(), req.uses.map(i64::from), expires_at, actor.as_string(), now()],
            )?;
            log_event(tx, actor, "enrol_token.create", &id, &format!("swarm={}", req.swarm))?;
            Ok(EnrolTokenCreated {
                view: token_view(tx, &id)?,
                token: token.clone(),
            })
        })
    }

    pub fn list_enrol_tokens(&self, swarm: Option<&str>) -> Result<Vec<EnrolTokenView>> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {TOKEN_COLUMNS} FROM enrol_tokens WHERE (CAST($1 AS TEXT) IS NULL OR swarm = $1) ORDER BY created_at, id"),
                params![swarm],
            )?
            .iter()
            .map(token_of)
            .collect()
        })
    }

    /// Revokes a token at once: the next enrolment with it is refused.
    pub fn remove_enrol_token(&self, actor: &Actor, id: &str) -> Result<EnrolTokenView> {
        self.write(|tx| {
            let view = token_view(tx, id)?;
            tx.execute("DELETE FROM enrol_tokens WHERE id = $1", params![id])?;
            log_event(
                tx,
                actor,
                "enrol_token.remove",
                id,
                &format!("swarm={}", view.swarm),
            )?;
            Ok(view)
        })
    }

    /// The swarm a token admits into (the operator API checks roles by it).
    pub fn enrol_token_swarm(&self, id: &str) -> Result<String> {
        self.read(|tx| Ok(token_view(tx, id)?.swarm))
    }
}

fn parse_state(s: &str) -> Result<DeviceState> {
    DeviceState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("state {s}")))
}

fn via(token: Option<&TokenRow>) -> String {
    match token {
        Some(t) => format!(" token={}", t.id),
        None => String::new(),
    }
}

/// A device the server does not know: admitted by a token into its swarm,
/// or with the provisioning key into a swarm that auto-enrols.
fn admit_new(
    tx: &Tx<'_>,
    input: &EnrolInput<'_>,
    token: Option<&TokenRow>,
) -> Result<(Enrolment, Touched)> {
    let id = input.id.as_str();
    let (swarm, role, labels, pending) = match token {
        Some(token) => {
            use_token(tx, token, id)?;
            (token.swarm.clone(), token.role, token.labels.clone(), false)
        }
        None => {
            let (swarm, mode) = auto_enrol_swarm(tx, input.requested_swarm)?.ok_or_else(|| {
                StoreError::Forbidden(format!(
                    "device {id} is not declared{}",
                    match input.requested_swarm {
                        Some(s) => format!(" and swarm {s} does not auto-enrol"),
                        None => " and no swarm auto-enrols unknown devices".into(),
                    }
                ))
            })?;
            (
                swarm,
                Role::Worker,
                Labels::new(),
                mode == AutoEnrol::Pending,
            )
        }
    };
    let state = if pending {
        DeviceState::Pending
    } else {
        DeviceState::Enrolled
    };
    tx.execute(
        "INSERT INTO devices (id, swarm, role, labels, facts, state, public_key, endorsement_key, last_seen, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        params![id, &swarm, role.as_str(), json_of(&labels), json_of(input.facts), state.as_str(), input.public_key.as_str(), input.endorsement_key, now()],
    )?;
    log_event(
        tx,
        &Actor::Server,
        "device.auto_enrol",
        id,
        &format!("swarm={swarm} pending={pending}{}", via(token)),
    )?;
    log_event(
        tx,
        &Actor::Device(id.into()),
        "device.enrol",
        id,
        &format!("swarm={swarm} key={}", input.public_key.fingerprint()),
    )?;
    bump(tx, &swarm)?;
    Ok((
        Enrolment {
            swarm: swarm.clone(),
            role,
            pending,
        },
        vec![swarm],
    ))
}

/// Another key asks to be an enrolled device.
fn reenrol(
    tx: &Tx<'_>,
    input: &EnrolInput<'_>,
    swarm: &str,
    role: Role,
    token: &Option<TokenRow>,
) -> Result<(Enrolment, Touched)> {
    let id = input.id.as_str();
    let reimage: String = tx
        .query_one("SELECT reimage FROM swarms WHERE name = $1", params![swarm])?
        .get(0)?;
    let detail = format!(
        "key={}{}{}",
        input.public_key.fingerprint(),
        via(token.as_ref()),
        input
            .endorsement_key
            .map(|ek| format!(" endorsement_key={ek}"))
            .unwrap_or_default()
    );
    if Reimage::parse(&reimage) == Some(Reimage::Auto) {
        // Taken as a re-image: the new key replaces the old; its node
        // becomes stale once the new one reports.
        tx.execute(
            "UPDATE devices SET public_key = $2, endorsement_key = $3, credential_hash = NULL, pending_key = NULL,
                    pending_endorsement_key = NULL, pending_since = NULL, facts = $4, state = 'enrolled', last_seen = $5
             WHERE id = $1",
            params![id, input.public_key.as_str(), input.endorsement_key, json_of(input.facts), now()],
        )?;
        log_event(tx, &Actor::Server, "device.reimaged", id, &detail)?;
        bump(tx, swarm)?;
        return Ok((
            Enrolment {
                swarm: swarm.into(),
                role,
                pending: false,
            },
            vec![swarm.into()],
        ));
    }
    tx.execute(
        "UPDATE devices SET pending_key = $2, pending_endorsement_key = $3, pending_since = $4 WHERE id = $1",
        params![id, input.public_key.as_str(), input.endorsement_key, now()],
    )?;
    log_event(tx, &Actor::Server, "device.reenrol_requested", id, &detail)?;
    bump(tx, swarm)?;
    Ok((
        Enrolment {
            swarm: swarm.into(),
            role,
            pending: true,
        },
        vec![swarm.into()],
    ))
}

/// Accepts a waiting re-enrolment as a re-image: the newcomer's key
/// replaces the enrolled one (which stops working), and the device's
/// current node becomes stale once the new one reports.
pub(super) fn accept_reenrolment(tx: &Tx<'_>, actor: &Actor, id: &str) -> Result<bool> {
    let changed = tx.execute(
        "UPDATE devices SET public_key = pending_key, endorsement_key = pending_endorsement_key, credential_hash = NULL,
                pending_key = NULL, pending_endorsement_key = NULL, pending_since = NULL, state = 'enrolled'
         WHERE id = $1 AND pending_key IS NOT NULL",
        params![id],
    )?;
    if changed > 0 {
        log_event(tx, actor, "device.reenrol_approved", id, "")?;
    }
    Ok(changed > 0)
}

fn auto_enrol_swarm(tx: &Tx<'_>, requested: Option<&str>) -> Result<Option<(String, AutoEnrol)>> {
    let rows = tx.query(
        "SELECT name, auto_enrol FROM swarms WHERE auto_enrol != 'off' AND (CAST($1 AS TEXT) IS NULL OR name = $1)",
        params![requested],
    )?;
    // Without a requested swarm, auto-enrolment must be unambiguous.
    match rows.as_slice() {
        [row] => Ok(Some((
            row.get(0)?,
            AutoEnrol::parse(&row.get::<String>(1)?)?,
        ))),
        _ => Ok(None),
    }
}

/// The token a device presented, if it is valid now: known (by hash),
/// not expired, not used up. Every refusal reads the same, so a caller
/// learns nothing about which tokens exist.
fn token_for(tx: &Tx<'_>, secret: &Secret) -> Result<TokenRow> {
    let refused = || StoreError::Unauthorized("the enrolment token is not valid".into());
    let row = tx
        .query_opt(
            "SELECT id, swarm, labels, role, uses, used, expires_at FROM enrol_tokens WHERE hash = $1",
            params![secrets::hash(secret.expose())],
        )?
        .ok_or_else(refused)?;
    let uses: Option<i64> = row.get(4)?;
    let used: i64 = row.get(5)?;
    let expires_at: Option<i64> = row.get(6)?;
    if expires_at.is_some_and(|at| at <= now()) || uses.is_some_and(|u| used >= u) {
        return Err(refused());
    }
    Ok(TokenRow {
        id: row.get(0)?,
        swarm: row.get(1)?,
        labels: from_json(&row.get::<String>(2)?)?,
        role: Role::parse(&row.get::<String>(3)?)?,
    })
}

/// Counts one admission against a token, refusing one past its uses
/// (two devices racing for the last use: one gets it).
fn use_token(tx: &Tx<'_>, token: &TokenRow, device: &str) -> Result<()> {
    let changed = tx.execute(
        "UPDATE enrol_tokens SET used = used + 1 WHERE id = $1 AND (uses IS NULL OR used < uses)",
        params![&token.id],
    )?;
    if changed == 0 {
        return Err(StoreError::Unauthorized(
            "the enrolment token is not valid".into(),
        ));
    }
    log_event(
        tx,
        &Actor::Device(device.into()),
        "enrol_token.use",
        &token.id,
        &format!("device={device}"),
    )
}

/// A token's labels on a declared device, where the declaration does not
/// set the key already (the operator's own declaration wins).
fn merge_labels(tx: &Tx<'_>, id: &str, labels: &Labels) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let mut current: Labels = from_json(
        &tx.query_one("SELECT labels FROM devices WHERE id = $1", params![id])?
            .get::<String>(0)?,
    )?;
    for (k, v) in labels {
        current.entry(k.clone()).or_insert_with(|| v.clone());
    }
    tx.execute(
        "UPDATE devices SET labels = $2 WHERE id = $1",
        params![id, json_of(&current)],
    )?;
    Ok(())
}

const TOKEN_COLUMNS: &str =
    "id, swarm, labels, role, used, uses, expires_at, created_by, created_at";

fn token_of(r: &Row) -> Result<EnrolTokenView> {
    Ok(EnrolTokenView {
        id: r.get(0)?,
        swarm: r.get(1)?,
        labels: from_json(&r.get::<String>(2)?)?,
        role: Role::parse(&r.get::<String>(3)?)?,
        used: r.get::<i64>(4)? as u32,
        uses: r.get::<Option<i64>>(5)?.map(|u| u as u32),
        expires_at: r.get(6)?,
        created_by: r.get(7)?,
        created_at: r.get(8)?,
    })
}

fn token_view(tx: &Tx<'_>, id: &str) -> Result<EnrolTokenView> {
    let row = tx
        .query_opt(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrol_tokens WHERE id = $1"),
            params![id],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("enrolment token {id} does not exist")))?;
    token_of(&row)
}

/// A token's public id: 12 hex digits, shown in listings and events.
fn token_id() -> String {
    let token = secrets::random_token("t");
    token.expose()[2..14].to_string()
}
