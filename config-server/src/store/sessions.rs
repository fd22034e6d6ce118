//! Dashboard sessions: signing in with the admin token gives the browser a
//! random session id in an HttpOnly cookie; only its hash is stored, in
//! the database so that any replica recognizes it.

use super::users::Operator;
use super::{now, Result, Store};
use crate::db::params;

/// How long a session lasts after signing in.
pub const SESSION_SECS: i64 = 12 * 3600;

impl Store {
    /// Records a new session by the hash of its id, for `who`; drops
    /// expired ones.
    pub fn create_session(&self, id_hash: &str, who: &Operator) -> Result<()> {
        let user = (!who.builtin).then_some(who.name.as_str());
        let at = now();
        self.write(|tx| {
            tx.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at < $1",
                params![at],
            )?;
            tx.execute(
                "INSERT INTO dashboard_sessions (id_hash, created_at, expires_at, user_name) VALUES ($1, $2, $3, $4)",
                params![id_hash, at, at + SESSION_SECS, user],
            )?;
            Ok(())
        })
    }

    /// Who an open session with this id hash belongs to (as of now: a
    /// user's role may have changed since they signed in).
    pub fn session_operator(&self, id_hash: &str) -> Result<Option<Operator>> {
        let row: Option<Option<String>> = self.read(|tx| {
            match tx.query_opt(
                "SELECT user_name FROM dashboard_sessions WHERE id_hash = $1 AND expires_at >= $2",
                params![id_hash, now()],
            )? {
                Some(r) => Ok(Some(r.get::<Option<String>>(0)?)),
                None => Ok(None),
            }
        })?;
        match row {
            None => Ok(None),
            Some(None) => Ok(Some(Operator::builtin_admin())),
            Some(Some(name)) => self.operator(&name).map(Some),
        }
    }

    pub fn end_session(&self, id_hash: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM dashboard_sessions WHERE id_hash = $1",
                params![id_hash],
            )?;
            Ok(())
        })
    }
}
