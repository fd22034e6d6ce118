//! Named operators with roles. Each has API tokens (256-bit, stored as
//! SHA-256, expiring, revocable) and optionally a dashboard password
//! (argon2id: a person's password is low-entropy). The admin token the
//! server made at its first start stays a built-in admin named `admin`,
//! so nothing breaks on upgrade.

use super::events::log_event;
use super::{from_json, json_of, now, Actor, Result, Store, StoreError};
use crate::db::{params, Row, Tx};
use crate::secrets;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fogswarm_protocol::api::{
    Secret, UserCertificateView, UserCreate, UserRole, UserTokenCreated, UserTokenView, UserUpdate,
    UserView,
};
use fogswarm_protocol::validate;

/// How a user's token begins (`fsu_` and 64 hex digits).
pub const USER_TOKEN_PREFIX: &str = "fsu_";

/// The built-in admin's name (the admin token's holder); no user may take it.
pub const BUILTIN_ADMIN: &str = "admin";
const DEFAULT_TOKEN_SECS: u64 = 90 * 86_400;
const MAX_TOKEN_SECS: u64 = 10 * 365 * 86_400;
const MIN_PASSWORD: usize = 12;

/// Who is calling the operator API or the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub name: String,
    pub role: UserRole,
    /// For operators: the swarms they may change (empty: all).
    pub swarms: Vec<String>,
    /// The built-in admin (the server's admin token).
    pub builtin: bool,
}

impl Operator {
    pub fn builtin_admin() -> Operator {
        Operator {
            name: BUILTIN_ADMIN.into(),
            role: UserRole::Admin,
            swarms: Vec::new(),
            builtin: true,
        }
    }

    /// How events name this caller.
    pub fn actor(&self) -> Actor {
        if self.builtin {
            Actor::Admin
        } else {
            Actor::User(self.name.clone())
        }
    }

    /// Whether this caller may change swarm `swarm`.
    pub fn may_change(&self, swarm: &str) -> bool {
        match self.role {
            UserRole::Admin => true,
            UserRole::Operator => self.swarms.is_empty() || self.swarms.iter().any(|s| s == swarm),
            UserRole::Viewer => false,
        }
    }
}

impl Store {
    pub fn create_user(&self, actor: &Actor, req: &UserCreate) -> Result<UserView> {
        validate_user_name(&req.name)?;
        validate_swarms(&req.swarms)?;
        let password = req.password.as_ref().map(hash_password).transpose()?;
        self.write(|tx| {
            let exists = tx
                .query_opt("SELECT 1 FROM users WHERE name = $1", params![&req.name])?
                .is_some();
            if exists {
                return Err(StoreError::Conflict(format!("user {} already exists", req.name)));
            }
            tx.execute(
                "INSERT INTO users (name, role, swarms, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                params![&req.name, req.role.as_str(), json_of(&req.swarms), password, now()],
            )?;
            log_event(tx, actor, "user.add", &req.name, &format!("role={}{}", req.role, swarms_detail(&req.swarms)))?;
            user_view(tx, &req.name)
        })
    }

    pub fn update_user(&self, actor: &Actor, name: &str, req: &UserUpdate) -> Result<UserView> {
        if let Some(swarms) = &req.swarms {
            validate_swarms(swarms)?;
        }
        let password = req.password.as_ref().map(hash_password).transpose()?;
        self.write(|tx| {
            user_view(tx, name)?;
            let mut changed = Vec::new();
            if let Some(role) = req.role {
                tx.execute(
                    "UPDATE users SET role = $2 WHERE name = $1",
                    params![name, role.as_str()],
                )?;
                changed.push(format!("role={role}"));
            }
            if let Some(swarms) = &req.swarms {
                tx.execute(
                    "UPDATE users SET swarms = $2 WHERE name = $1",
                    params![name, json_of(swarms)],
                )?;
                changed.push(format!("swarms=[{}]", swarms.join(",")));
            }
            if let Some(hash) = &password {
                tx.execute(
                    "UPDATE users SET password_hash = $2 WHERE name = $1",
                    params![name, hash],
                )?;
                // A new password ends the sessions signed in with the old.
                tx.execute(
                    "DELETE FROM dashboard_sessions WHERE user_name = $1",
                    params![name],
                )?;
                changed.push("password".into());
            }
            if changed.is_empty() {
                return Err(StoreError::Invalid {
                    field: None,
                    message: "nothing to change: give role, swarms or password".into(),
                });
            }
            log_event(tx, actor, "user.update", name, &changed.join(" "))?;
            user_view(tx, name)
        })
    }

    pub fn list_users(&self) -> Result<Vec<UserView>> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"),
                &[],
            )?
            .iter()
            .map(user_of)
            .collect()
        })
    }

    /// Removes a user with its tokens and sessions: all stop working at once.
    pub fn remove_user(&self, actor: &Actor, name: &str) -> Result<UserView> {
        self.write(|tx| {
            let view = user_view(tx, name)?;
            tx.execute(
                "DELETE FROM user_tokens WHERE user_name = $1",
                params![name],
            )?;
            tx.execute(
                "DELETE FROM dashboard_sessions WHERE user_name = $1",
                params![name],
            )?;
            tx.execute("DELETE FROM users WHERE name = $1", params![name])?;
            log_event(tx, actor, "user.remove", name, "")?;
            Ok(view)
        })
    }

    pub fn create_user_token(
        &self,
        actor: &Actor,
        user: &str,
        expires_in_secs: Option<u64>,
    ) -> Result<UserTokenCreated> {
        let secs = expires_in_secs.unwrap_or(DEFAULT_TOKEN_SECS);
        if secs == 0 || secs > MAX_TOKEN_SECS {
            return Err(StoreError::Invalid {
                field: Some("expires_in_secs".into()),
                message: format!("a token lives 1 second to {} days", MAX_TOKEN_SECS / 86_400),
            });
        }
        let token = secrets::random_token(USER_TOKEN_PREFIX.trim_end_matches('_'));
        let id = token.expose()[4..16].to_string();
        self.write(|tx| {
            user_view(tx, user)?;
            tx.execute(
                "INSERT INTO user_tokens (id, user_name, hash, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
                params![&id, user, secrets::hash(token.expose()), now() + secs as i64, now()],
            )?;
            log_event(tx, actor, "token.create", &id, &format!("user={user}"))?;
            Ok(UserTokenCreated {
                view: token_view(tx, &id)?,
                token: token.clone(),
            })
        })
    }

    pub fn list_user_tokens(&self, user: Option<&str>) -> Result<Vec<UserTokenView>> {
        self.read(|tx| {
            tx.query(
                "SELECT id, user_name, expires_at, created_at FROM user_tokens
                 WHERE (CAST($1 AS TEXT) IS NULL OR user_name = $1) ORDER BY created_at, id",
                params![user],
            )?
            .iter()
            .map(token_of)
            .collect()
        })
    }

    /// A token's holder (for the caller's right to revoke it).
    pub fn user_token(&self, id: &str) -> Result<UserTokenView> {
        self.read(|tx| token_view(tx, id))
    }

    pub fn remove_user_token(&self, actor: &Actor, id: &str) -> Result<UserTokenView> {
        self.write(|tx| {
            let view = token_view(tx, id)?;
            tx.execute("DELETE FROM user_tokens WHERE id = $1", params![id])?;
            log_event(
                tx,
                actor,
                "token.remove",
                id,
                &format!("user={}", view.user),
            )?;
            Ok(view)
        })
    }

    /// The user a bearer token belongs to, if it is a live user token.
    pub fn authenticate_user_token(&self, token: &str) -> Result<Option<Operator>> {
        let hash = secrets::hash(token);
        self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT user_name FROM user_tokens WHERE hash = $1 AND expires_at > $2",
                params![hash, now()],
            )?
            else {
                return Ok(None);
            };
            operator(tx, &row.get::<String>(0)?).map(Some)
        })
    }

    /// The user, if `password` is theirs.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Option<Operator>> {
        let stored = self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT password_hash FROM users WHERE name = $1",
                    params![name],
                )?
                .map(|r| r.get::<Option<String>>(0))
                .transpose()?
                .flatten())
        })?;
        let Some(stored) = stored else {
            // The same work as a real check, so timing does not tell
            // which names exist.
            let _ = hash_password(&Secret::new(password));
            return Ok(None);
        };
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| StoreError::Corrupt(format!("password hash of {name}: {e}")))?;
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Ok(None);
        }
        self.read(|tx| operator(tx, name)).map(Some)
    }

    /// Records a client certificate issued to `user` (its fingerprint: the
    /// certificate itself is the user's).
    pub fn record_user_certificate(
        &self,
        actor: &Actor,
        user: &str,
        fingerprint: &str,
        days: u32,
    ) -> Result<UserCertificateView> {
        let id = fingerprint[..12].to_string();
        self.write(|tx| {
            user_view(tx, user)?;
            tx.execute(
                "INSERT INTO user_certificates (fingerprint, id, user_name, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
                params![fingerprint, &id, user, now() + i64::from(days) * 86_400, now()],
            )?;
            log_event(tx, actor, "certificate.create", &id, &format!("user={user}"))?;
            certificate_view(tx, &id)
        })
    }

    pub fn list_user_certificates(&self, user: Option<&str>) -> Result<Vec<UserCertificateView>> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {CERT_COLUMNS} FROM user_certificates WHERE (CAST($1 AS TEXT) IS NULL OR user_name = $1) ORDER BY created_at, id"),
                params![user],
            )?
            .iter()
            .map(certificate_of)
            .collect()
        })
    }

    pub fn user_certificate(&self, id: &str) -> Result<UserCertificateView> {
        self.read(|tx| certificate_view(tx, id))
    }

    /// Revokes a certificate at once: the next connection presenting it
    /// is nobody.
    pub fn remove_user_certificate(&self, actor: &Actor, id: &str) -> Result<UserCertificateView> {
        self.write(|tx| {
            let view = certificate_view(tx, id)?;
            tx.execute("DELETE FROM user_certificates WHERE id = $1", params![id])?;
            log_event(
                tx,
                actor,
                "certificate.remove",
                id,
                &format!("user={}", view.user),
            )?;
            Ok(view)
        })
    }

    /// The user a verified client certificate (by fingerprint) names, if
    /// it is recorded and not expired.
    pub fn authenticate_certificate(&self, fingerprint: &str) -> Result<Option<Operator>> {
        self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT user_name FROM user_certificates WHERE fingerprint = $1 AND expires_at > $2",
                params![fingerprint, now()],
            )?
            else {
                return Ok(None);
            };
            operator(tx, &row.get::<String>(0)?).map(Some)
        })
    }

    /// The operator a stored user is now (role and swarms as of now).
    pub fn operator(&self, name: &str) -> Result<Operator> {
        self.read(|tx| operator(tx, name))
    }
}

fn operator(tx: &Tx<'_>, name: &str) -> Result<Operator> {
    let view = user_view(tx, name)?;
    Ok(Operator {
        name: view.name,
        role: view.role,
        swarms: view.swarms,
        builtin: false,
    })
}

fn hash_password(password: &Secret) -> Result<String> {
    let text = password.expose();
    if text.chars().count() < MIN_PASSWORD {
        return Err(StoreError::Invalid {
            field: Some("password".into()),
            message: format!("a password has at least {MIN_PASSWORD} characters"),
        });
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Corrupt(format!("the OS random source failed: {e}")))?;
    let salt =
        SaltString::encode_b64(&bytes).map_err(|e| StoreError::Corrupt(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(text.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Corrupt(format!("hashing a password: {e}")))
}

fn validate_user_name(name: &str) -> Result<()> {
    validate::validate_swarm_name(name).map_err(|e| StoreError::Invalid {
        field: Some("name".into()),
        message: e.message.replace("swarm name", "user name"),
    })?;
    if name == BUILTIN_ADMIN {
        return Err(StoreError::Invalid {
            field: Some("name".into()),
            message: "admin is the built-in admin (the server's admin token); choose another name"
                .into(),
        });
    }
    Ok(())
}

fn validate_swarms(swarms: &[String]) -> Result<()> {
    for s in swarms {
        validate::validate_swarm_name(s)?;
    }
    Ok(())
}

fn swarms_detail(swarms: &[String]) -> String {
    if swarms.is_empty() {
        String::new()
    } else {
        format!(" swarms=[{}]", swarms.join(","))
    }
}

const USER_COLUMNS: &str = "name, role, swarms, password_hash IS NOT NULL, created_at";

fn user_of(r: &Row) -> Result<UserView> {
    let role: String = r.get(1)?;
    Ok(UserView {
        name: r.get(0)?,
        role: UserRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
        swarms: from_json(&r.get::<String>(2)?)?,
        has_password: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn user_view(tx: &Tx<'_>, name: &str) -> Result<UserView> {
    let row = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"),
            params![name],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("user {name} does not exist")))?;
    user_of(&row)
}

fn token_of(r: &Row) -> Result<UserTokenView> {
    Ok(UserTokenView {
        id: r.get(0)?,
        user: r.get(1)?,
        expires_at: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn token_view(tx: &Tx<'_>, id: &str) -> Result<UserTokenView> {
    let row = tx
        .query_opt(
            "SELECT id, user_name, expires_at, created_at FROM user_tokens WHERE id = $1",
            params![id],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("token {id} does not exist")))?;
    token_of(&row)
}

const CERT_COLUMNS: &str = "id, user_name, fingerprint, expires_at, created_at";

fn certificate_of(r: &Row) -> Result<UserCertificateView> {
    Ok(UserCertificateView {
        id: r.get(0)?,
        user: r.get(1)?,
        fingerprint: r.get(2)?,
        expires_at: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn certificate_view(tx: &Tx<'_>, id: &str) -> Result<UserCertificateView> {
    let row = tx
        .query_opt(
            &format!("SELECT {CERT_COLUMNS} FROM user_certificates WHERE id = $1"),
            params![id],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("certificate {id} does not exist")))?;
    certificate_of(&row)
}
