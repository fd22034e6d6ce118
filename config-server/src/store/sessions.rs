//! Dashboard sessions: signing in with the admin token gives the browser a
//! random session id in an HttpOnly cookie; only its hash is stored, in
//! the database so that any replica recognizes it.

use super::{now, Result, Store};
use crate::db::params;

/// How long a session lasts after signing in.
pub const SESSION_SECS: i64 = 12 * 3600;

impl Store {
    /// Records a new session by the hash of its id; drops expired ones.
    pub fn create_session(&self, id_hash: &str) -> Result<()> {
        let at = now();
        self.write(|tx| {
            tx.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at < $1",
                params![at],
            )?;
            tx.execute(
                "INSERT INTO dashboard_sessions (id_hash, created_at, expires_at) VALUES ($1, $2, $3)",
                params![id_hash, at, at + SESSION_SECS],
            )?;
            Ok(())
        })
    }

    /// Whether a session with this id hash is open.
    pub fn session_open(&self, id_hash: &str) -> Result<bool> {
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT 1 FROM dashboard_sessions WHERE id_hash = $1 AND expires_at >= $2",
                    params![id_hash, now()],
                )?
                .is_some())
        })
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
