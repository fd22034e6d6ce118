//! The server's own credentials, kept in the database so that every
//! replica shares them and a backup carries them: the admin token's and
//! the provisioning key's hashes (never the secrets), and the CA that
//! signs the server certificates agents pin.

use super::{Result, Store};
use crate::db::params;

/// The names under which the server keeps what it shares.
pub struct ServerCredentials;

impl ServerCredentials {
    pub const ADMIN_TOKEN_HASH: &'static str = "admin_token_hash";
    pub const PROVISIONING_KEY_HASH: &'static str = "provisioning_key_hash";
    /// JSON `{"cert": PEM, "key": PEM}`.
    pub const CA: &'static str = "ca";
}

impl Store {
    /// The stored value of `name`, if any.
    pub fn credential(&self, name: &str) -> Result<Option<String>> {
        self.read(|tx| {
            match tx.query_opt(
                "SELECT value FROM server_credentials WHERE name = $1",
                params![name],
            )? {
                Some(row) => Ok(Some(row.get(0)?)),
                None => Ok(None),
            }
        })
    }

    /// The stored value of `name`; when there is none, `make()`'s is
    /// stored and answered. Of replicas starting together exactly one
    /// stores its value (writes are serialised); the others get that one.
    pub fn credential_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<String> {
        // make() may fail (a file it reads): its error is answered after the
        // transaction, which then wrote nothing.
        self.write(|tx| {
            if let Some(row) = tx.query_opt(
                "SELECT value FROM server_credentials WHERE name = $1",
                params![name],
            )? {
                return Ok(Ok(row.get(0)?));
            }
            let value = match make() {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "INSERT INTO server_credentials (name, value) VALUES ($1, $2)",
                params![name, &value],
            )?;
            Ok(Ok(value))
        })?
    }

    /// Replaces `name`'s value (a rotated provisioning key's hash).
    pub fn set_credential(&self, name: &str, value: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO server_credentials (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = $2",
                params![name, value],
            )?;
            Ok(())
        })
    }
}
