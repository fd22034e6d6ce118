//! Encryption at rest for secret values and registry passwords:
//! AES-256-GCM (ring) under a key kept in a file beside the database, not
//! in it, so a copy of the database (a backup, a dump) holds no readable
//! secret. Replicas sharing one PostgreSQL database share the key file.
//!
//! A sealed value is `v1:KEYID:BASE64(nonce || ciphertext || tag)`; the
//! key id (the first 8 hex digits of the key's SHA-256) makes "sealed with
//! another key" a clear error instead of a failed tag. The associated data
//! binds a value to its row (swarm, kind, name, version), so a value cannot
//! be moved to another secret in the database and still open.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secrets key {path}: {message}")]
    Key { path: String, message: String },
    #[error("a stored value was sealed with key {stored}, but this server has key {ours} (copy the data directory's secrets.key from the server that wrote it)")]
    WrongKey { stored: String, ours: String },
    #[error("a stored value does not open: it is damaged or was moved from another row")]
    Damaged,
}

pub struct Sealer {
    key: LessSafeKey,
    id: String,
}

impl Sealer {
    /// Reads the key file, creating it (0600, 32 random bytes in hex) when
    /// it does not exist yet.
    pub fn open_or_create(path: &Path) -> Result<Sealer, SealError> {
        let fail = |message: String| SealError::Key {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| fail(format!("no randomness: {e}")))?;
            crate::secrets::write_secret_file(path, &hex::encode(bytes))
                .map_err(|e| fail(e.to_string()))?;
        }
        Sealer::open_existing(path)
    }

    /// Reads an existing key file (a restore's, say), never creating one.
    pub fn open_existing(path: &Path) -> Result<Sealer, SealError> {
        let fail = |message: String| SealError::Key {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| fail("expected 64 hex digits (a 256-bit key)".into()))?;
        Sealer::from_key(&bytes).map_err(fail)
    }

    fn from_key(bytes: &[u8]) -> Result<Sealer, String> {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        let key =
            UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "not an AES-256 key".to_string())?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// The key's id, as sealed values name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of the key `sealed` was sealed with, if it is a sealed value.
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        let mut parts = sealed.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("v1"), Some(id), Some(_)) => Some(id),
            _ => None,
        }
    }

    /// Encrypts `plain` bound to `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = getrandom::fill(&mut nonce) {
            panic!("the operating system's random source failed: {e}");
        }
        let mut buffer = plain.to_vec();
        // Sealing in place fails only for inputs beyond GCM's 64 GiB.
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .is_err()
        {
            panic!("AES-GCM refused a value of {} bytes", plain.len());
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        format!(
            "v1:{}:{}",
            self.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Decrypts what [`Sealer::seal`] made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Damaged);
        };
        if id != self.id {
            return Err(SealError::WrongKey {
                stored: id.to_string(),
                ours: self.id.clone(),
            });
        }
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| SealError::Damaged)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_and_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        let path = dir.join("secrets.key");
        let sealer = Sealer::open_or_create(&path).expect("key");
        let sealed = sealer.seal("fog/secret/db/1", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            sealer.open("fog/secret/db/1", &sealed).expect("opens"),
            b"hunter2"
        );
        assert!(matches!(
            sealer.open("fog/secret/db/2", &sealed),
            Err(SealError::Damaged)
        ));
        // The same file again: the same key.
        let again = Sealer::open_or_create(&path).expect("key");
        assert_eq!(
            again.open("fog/secret/db/1", &sealed).expect("opens"),
            b"hunter2"
        );
        let other = Sealer::open_or_create(&dir.join("other.key")).expect("key");
        assert!(matches!(
            other.open("fog/secret/db/1", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.expect("meta"), 0o600);
        std::fs::write(dir.join("bad.key"), "short").expect("write");
        assert!(Sealer::open_or_create(&dir.join("bad.key")).is_err());
    }
}
