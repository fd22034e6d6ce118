//! Secrets: generation, hashing, and the 0600 files they live in.
//!
//! Every secret is 256 random bits, so a plain SHA-256 is the right hash
//! for storing and comparing them (a slow password hash protects
//! low-entropy secrets; these are not).

use fogswarm_protocol::api::Secret;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A fresh random token, `PREFIX_` and 64 hex digits. The prefix says what
/// a token is when someone finds one (fsa admin, fsp provisioning, fsd
/// device).
pub fn random_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    // The OS random source failing is not something to serve through.
    if let Err(e) = getrandom::fill(&mut bytes) {
        panic!("the operating system's random source failed: {e}");
    }
    Secret::new(format!("{prefix}_{}", hex::encode(bytes)))
}

/// SHA-256 of a secret, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash. Both sides are hashed
/// first, so the comparison's timing says nothing about the secret.
pub fn matches(presented: &str, stored_hash: &str) -> bool {
    let presented = hash(presented);
    presented.len() == stored_hash.len()
        && presented
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Writes a secret file with mode 0600, atomically (temp file and rename),
/// so a crash never leaves a half-written key.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a secret file, or creates it with a new token.
pub fn load_or_create(path: &Path, prefix: &str) -> std::io::Result<Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Secret::new(text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_token(prefix);
            write_secret_file(path, secret.expose())?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = random_token("fsd");
        let b = random_token("fsd");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("fsd_"));
        assert_eq!(a.expose().len(), 4 + 64);
    }

    #[test]
    fn matching() {
        let h = hash("s3cret");
        assert!(matches("s3cret", &h));
        assert!(!matches("s3cret!", &h));
    }

    #[test]
    fn secret_files_are_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        let first = load_or_create(&path, "fsa").expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path, "fsa").expect("reuse"), first);
    }
}
