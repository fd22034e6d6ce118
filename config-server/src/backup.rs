//! Backup and restore of a SQLite fleet. Everything a fleet is lives in
//! its database (devices' credential hashes, join tokens, the CA, the
//! admin and provisioning hashes), so the copy is the fleet: a server
//! started on a restored copy serves the same devices under the same CA.

use crate::store::{ServerCredentials, Store};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// What a backup or restore carried.
pub struct Carried {
    pub swarms: usize,
    pub devices: u64,
    pub ca_fingerprint: Option<String>,
}

fn carried(store: &Store) -> Result<Carried> {
    let status = store.status()?;
    let ca_fingerprint = match store.credential(ServerCredentials::CA)? {
        Some(ca) => Some(crate::tls::ca_fingerprint(&ca)?),
        None => None,
    };
    Ok(Carried {
        swarms: status.swarms.len(),
        devices: status.devices,
        ca_fingerprint,
    })
}

/// Creates `path` empty with mode 0600; refuses one that exists.
fn create_private(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Copies the database at `db` (a server may be running on it) to `to`.
pub fn backup(db: &Path, to: &Path) -> Result<Carried> {
    let store = Store::open(db).with_context(|| format!("opening {}", db.display()))?;
    create_private(to)?;
    if let Err(e) = store.database().backup_to(to) {
        let _ = std::fs::remove_file(to);
        return Err(e).context(format!("backing up to {}", to.display()));
    }
    let copy = Store::open(to).with_context(|| format!("checking {}", to.display()))?;
    carried(&copy)
}

/// Checks that `from` is a whole fogswarm database and puts a copy of it
/// in `data` as the fleet's database. Refuses a data directory that
/// already has one, and leaves nothing behind when it fails.
pub fn restore(from: &Path, data: &Path) -> Result<Carried> {
    let dest = data.join("fleet.db");
    if dest.exists() {
        bail!(
            "{} already exists: restore into a new data directory (or move it away first)",
            dest.display()
        );
    }
    {
        let source =
            rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("opening {}", from.display()))?;
        let integrity: String = source
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .with_context(|| format!("{} is not a SQLite database", from.display()))?;
        if integrity != "ok" {
            bail!("{} is damaged: {integrity}", from.display());
        }
        let fleet: bool = source
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE name = 'server_credentials')",
                [],
                |r| r.get(0),
            )
            .context("reading the backup's schema")?;
        if !fleet {
            bail!("{} is not a fogswarm backup", from.display());
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .with_context(|| format!("creating {}", data.display()))?;
    create_private(&dest)?;
    let copied = Store::open(from)
        .map_err(anyhow::Error::from)
        .and_then(|source| Ok(source.database().backup_to(&dest)?))
        .and_then(|()| Ok(Store::open(&dest)?));
    match copied {
        Ok(store) => carried(&store),
        Err(e) => {
            let _ = std::fs::remove_file(&dest);
            Err(e.context(format!(
                "restoring {} into {}",
                from.display(),
                dest.display()
            )))
        }
    }
}
