//! Backup and restore of a SQLite fleet. Everything a fleet is lives in
//! its database (devices' keys, join tokens, the CA, the admin and
//! provisioning hashes) except the secrets key, which seals secret values
//! and registry passwords and is kept out of the database on purpose: a
//! backup is the database copy and, beside it, a copy of that key
//! (`FILE.secrets-key`, 0600). A restore puts both in place, and refuses
//! when the fleet has sealed values and the key is missing or another.

use crate::seal::Sealer;
use crate::store::{ServerCredentials, Store};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a backup or restore carried.
pub struct Carried {
    pub swarms: usize,
    pub devices: u64,
    pub ca_fingerprint: Option<String>,
    /// Where the secrets key went (the copy beside a backup, the data
    /// directory's on restore); none when the fleet has no sealed value
    /// and no key yet.
    pub secrets_key: Option<PathBuf>,
}

/// Where a backup's secrets key is written, beside it.
pub fn key_beside(backup: &Path) -> PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".secrets-key");
    PathBuf::from(name)
}

fn carried(store: &Store, secrets_key: Option<PathBuf>) -> Result<Carried> {
    let status = store.status()?;
    let ca_fingerprint = match store.credential(ServerCredentials::CA)? {
        Some(ca) => Some(crate::tls::ca_fingerprint(&ca)?),
        None => None,
    };
    Ok(Carried {
        swarms: status.swarms.len(),
        devices: status.devices,
        ca_fingerprint,
        secrets_key,
    })
}

/// Creates `path` empty with mode 0600; refuses one that exists.
fn create_private(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Copies `key` to `to` (which must not exist), 0600, synced.
fn copy_key(key: &Path, to: &Path) -> Result<()> {
    use std::io::Write;
    let text = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let mut file = create_private(to)?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", to.display()))
}

/// Refuses a key that does not open the values `store` holds sealed.
fn key_opens(store: &Store, key: Option<(&Path, &Sealer)>, hint: &str) -> Result<()> {
    let sealed = store.sealed_key_ids()?;
    if sealed.is_empty() {
        return Ok(());
    }
    let ids = sealed.into_iter().collect::<Vec<_>>().join(", ");
    match key {
        Some((_, sealer)) if ids.split(", ").any(|id| id == sealer.id()) => Ok(()),
        Some((path, sealer)) => bail!(
            "{} holds key {}, but the fleet's secret values were sealed with key {ids}: {hint}",
            path.display(),
            sealer.id()
        ),
        None => bail!("the fleet has secret values sealed with key {ids}: {hint}"),
    }
}

/// Copies the database at `db` (a server may be running on it) to `to`,
/// and the secrets key `key` beside it (see [`key_beside`]). Leaves
/// nothing behind when it fails.
pub fn backup(db: &Path, key: &Path, to: &Path) -> Result<Carried> {
    let store = Store::open(db).with_context(|| format!("opening {}", db.display()))?;
    let sealer = match key.exists() {
        true => Some(Sealer::open_existing(key)?),
        false => None,
    };
    let key_copy = key_beside(to);
    if key_copy.exists() {
        bail!("{} already exists", key_copy.display());
    }
    create_private(to)?;
    let copied = store
        .database()
        .backup_to(to)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(Store::open(to)?))
        .with_context(|| format!("backing up to {}", to.display()))
        .and_then(|copy| {
            key_opens(
                &copy,
                sealer.as_ref().map(|s| (key, s)),
                "name the server's key with --secrets-key-file",
            )?;
            let copied = match sealer {
                Some(_) => {
                    copy_key(key, &key_copy)?;
                    Some(key_copy.clone())
                }
                None => None,
            };
            carried(&copy, copied)
        });
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
        let _ = std::fs::remove_file(&key_copy);
    }
    copied
}

/// Checks that `from` is a whole fogswarm database and puts a copy of it
/// in `data` as the fleet's database, and the secrets key (`key`, else
/// the one beside the backup) as `data`'s secrets.key. Refuses a data
/// directory that already has either, a missing key when the fleet has
/// sealed values, and a key that does not open them; leaves nothing
/// behind when it fails.
pub fn restore(from: &Path, key: Option<&Path>, data: &Path) -> Result<Carried> {
    let dest = data.join("fleet.db");
    let dest_key = data.join("secrets.key");
    for existing in [&dest, &dest_key] {
        if existing.exists() {
            bail!(
                "{} already exists: restore into a new data directory (or move it away first)",
                existing.display()
            );
        }
    }
    let key = key.map_or_else(|| key_beside(from), Path::to_path_buf);
    let sealer = match key.exists() {
        true => Some(Sealer::open_existing(&key)?),
        false => None,
    };
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
    let missing = format!(
        "the backup's secrets key {} is missing (fogswarm-server backup writes it beside the backup; --secrets-key names it elsewhere): without it no secret value or registry password can be read",
        key.display()
    );
    let restored = Store::open(from)
        .map_err(anyhow::Error::from)
        .and_then(|source| Ok(source.database().backup_to(&dest)?))
        .and_then(|()| Ok(Store::open(&dest)?))
        .with_context(|| format!("restoring {} into {}", from.display(), dest.display()))
        .and_then(|store| {
            let hint = match sealer {
                Some(_) => "is this the key from beside the backup?",
                None => &missing,
            };
            key_opens(&store, sealer.as_ref().map(|s| (key.as_path(), s)), hint)?;
            let placed = match sealer {
                Some(_) => {
                    copy_key(&key, &dest_key)?;
                    Some(dest_key.clone())
                }
                None => None,
            };
            carried(&store, placed)
        });
    if restored.is_err() {
        let _ = std::fs::remove_file(&dest);
        let _ = std::fs::remove_file(&dest_key);
    }
    restored
}
