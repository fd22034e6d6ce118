//! The device's side of key-bound identity (see
//! `fogswarm_protocol::identity`): something that holds the private key
//! and signs requests with it. The file key lives here; the agent adds a
//! TPM-held one.

use fogswarm_protocol::identity::PublicKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Signs a device's requests. The private key never leaves it.
pub trait DeviceSigner: Send + Sync {
    fn device_id(&self) -> &str;
    fn public_key(&self) -> &PublicKey;
    /// An ECDSA P-256 SHA-256 signature of `message`, as r||s (64 bytes).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// A P-256 key in a PKCS#8 file (0600), made on the device.
pub struct FileKey {
    device_id: String,
    pair: EcdsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
}

impl FileKey {
    /// A new key held only in memory (the load generator's devices).
    pub fn generate(device_id: &str) -> Result<FileKey, String> {
        let pkcs8 = new_pkcs8()?;
        FileKey::from_pkcs8(device_id, &pkcs8)
    }

    /// The key in `path`, made (0600, written whole or not at all) when
    /// there is none yet.
    pub fn load_or_create(device_id: &str, path: &Path) -> Result<FileKey, String> {
        match std::fs::read(path) {
            Ok(pkcs8) => FileKey::from_pkcs8(device_id, &pkcs8)
                .map_err(|e| format!("the device key in {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pkcs8 = new_pkcs8()?;
                write_private(path, &pkcs8)
                    .map_err(|e| format!("writing the device key {}: {e}", path.display()))?;
                FileKey::from_pkcs8(device_id, &pkcs8)
            }
            Err(e) => Err(format!("reading the device key {}: {e}", path.display())),
        }
    }

    fn from_pkcs8(device_id: &str, pkcs8: &[u8]) -> Result<FileKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| "not a P-256 PKCS#8 key".to_string())?;
        let public = PublicKey::from_sec1(pair.public_key().as_ref()).map_err(|e| e.to_string())?;
        Ok(FileKey {
            device_id: device_id.to_string(),
            pair,
            public,
            rng,
        })
    }
}

impl DeviceSigner for FileKey {
    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| "signing failed".to_string())
    }
}

fn new_pkcs8() -> Result<Vec<u8>, String> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| "making a key failed".to_string())
}

/// Writes `bytes` to a new 0600 file beside `path`, then renames it into
/// place: a crash leaves the old file or the new one, never half of one.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_private_and_loads_as_the_same_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("device.key");
        let made = FileKey::load_or_create("dev", &path).expect("made");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = FileKey::load_or_create("dev", &path).expect("loaded");
        assert_eq!(made.public_key(), loaded.public_key());
        let sig = loaded.sign(b"hello").expect("sign");
        assert!(made.public_key().verifies(b"hello", &sig));
        std::fs::write(&path, b"garbage").expect("write");
        assert!(FileKey::load_or_create("dev", &path).is_err());
    }
}
