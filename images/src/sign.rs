//! Image signatures in the format cosign and containers/image read: a
//! simple-signing payload naming the repository and the manifest digest,
//! signed with ECDSA P-256 over SHA-256 (ASN.1 DER signature), stored as a
//! layer of an OCI manifest tagged `sha256-HEX.sig` beside the image, the
//! signature in the layer's `dev.cosignproject.cosign/signature`
//! annotation. So `cosign verify --key` and a containers policy with
//! `sigstoreSigned` verify what fogswarm signed.
//!
//! Keys: the private key is PKCS#8 PEM (`PRIVATE KEY`, written 0600), the
//! public key SubjectPublicKeyInfo PEM (`PUBLIC KEY`), which is what cosign
//! and skopeo take as `--key` / `keyPath`.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte
/// uncompressed point (id-ecPublicKey, prime256v1).
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// The registry could not be read, or no signature verifies.
    #[error("{0}")]
    Unverified(String),
}

type Result<T> = std::result::Result<T, SignError>;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(label: &str, text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split(&begin).nth(1)?.split(&end).next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A new key pair: the private key's PEM and the public key's PEM.
pub fn generate() -> Result<(String, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| SignError::Invalid("generating a P-256 key failed".into()))?;
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| SignError::Invalid("loading the new key failed".into()))?;
    let mut spki = SPKI_P256_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

/// A signing key read from a PKCS#8 PEM file.
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey> {
        let bad = |reason: &str| SignError::Key {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
        let der = unpem("PRIVATE KEY", &text).ok_or_else(|| {
            bad("not a PEM \"PRIVATE KEY\" (PKCS#8), as fogswarm image keygen writes")
        })?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map_err(|_| bad("not an ECDSA P-256 private key"))?;
        Ok(SigningKey { pair })
    }

    /// The key id: SHA-256 of the public key's DER, as hex (short forms
    /// name it in messages).
    pub fn key_id(&self) -> String {
        let mut spki = SPKI_P256_PREFIX.to_vec();
        spki.extend_from_slice(self.pair.public_key().as_ref());
        hex::encode(Sha256::digest(&spki))
    }

    /// The base64 DER signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> Result<String> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), payload)
            .map_err(|_| SignError::Invalid("signing failed".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
    }
}

/// A verifying key read from a SubjectPublicKeyInfo PEM.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    point: Vec<u8>,
    /// Where it came from, for messages.
    pub name: String,
}

impl VerifyingKey {
    pub fn from_pem(text: &str, name: &str) -> Result<VerifyingKey> {
        let bad = |reason: &str| SignError::Key {
            path: name.to_string(),
            reason: reason.to_string(),
        };
        let der = unpem("PUBLIC KEY", text).ok_or_else(|| bad("not a PEM \"PUBLIC KEY\""))?;
        let point = der
            .strip_prefix(&SPKI_P256_PREFIX[..])
            .filter(|p| p.len() == 65)
            .ok_or_else(|| bad("not an ECDSA P-256 public key"))?;
        Ok(VerifyingKey {
            point: point.to_vec(),
            name: name.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<VerifyingKey> {
        let text = std::fs::read_to_string(path).map_err(|e| SignError::Key {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// SHA-256 of the public key's DER, hex.
    pub fn key_id(&self) -> String {
        let mut spki = SPKI_P256_PREFIX.to_vec();
        spki.extend_from_slice(&self.point);
        hex::encode(Sha256::digest(&spki))
    }

    /// Whether `signature_b64` is this key's signature of `payload`.
    pub fn verifies(&self, payload: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
            return false;
        };
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(payload, &sig)
            .is_ok()
    }
}

/// The simple-signing payload for `repository` (registry/name) at
/// `digest`.
pub fn payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap_or_default()
}

/// The digest a payload vouches for, and the repository it names.
pub fn payload_claims(payload: &[u8]) -> Result<(String, String)> {
    let doc: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| SignError::Invalid(format!("a signature payload is not JSON: {e}")))?;
    let digest = doc["critical"]["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| SignError::Invalid("a signature payload names no manifest digest".into()))?;
    let repository = doc["critical"]["identity"]["docker-reference"]
        .as_str()
        .unwrap_or_default();
    Ok((digest.to_string(), repository.to_string()))
}

/// The tag a digest's signatures are stored under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// `registry/name`, the identity a signature names.
pub fn repository(reference: &crate::Reference) -> String {
    format!("{}/{}", reference.registry, reference.name)
}

/// What verification found.
pub struct Verified {
    pub image: String,
    pub key_id: String,
}

/// Checks that some signature stored for the digest `reference` names is
/// a signature of that digest and repository by one of `keys`.
pub async fn verify_with(
    client: &crate::RegistryClient,
    reference: &crate::Reference,
    digest: &str,
    keys: &[VerifyingKey],
) -> Result<Verified> {
    let image = format!("{}@{digest}", repository(reference));
    let signatures = client
        .signatures(&reference.name, digest)
        .await
        .map_err(|e| SignError::Unverified(format!("reading the signatures of {image}: {e}")))?;
    let mut problems = Vec::new();
    for (payload, signature) in &signatures {
        let (claimed, identity) = match payload_claims(payload) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if claimed != digest || identity != repository(reference) {
            continue;
        }
        if let Some(key) = keys.iter().find(|k| k.verifies(payload, signature)) {
            return Ok(Verified {
                image,
                key_id: key.key_id(),
            });
        }
    }
    let tried: Vec<String> = keys.iter().map(|k| k.key_id()[..16].to_string()).collect();
    Err(SignError::Unverified(format!(
        "{image} has no signature by key {}: {} signature(s) found{}",
        tried.join(", "),
        signatures.len(),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        }
    )))
}

/// The rule of a signed-only swarm, applied by the server at deploy and by
/// the raft leader's agent before it creates or updates a service: answers
/// `image` pinned as `REPOSITORY@sha256:...` once a signature of that
/// digest verifies with one of `keys`; a tag is resolved to the digest
/// the registry has now. The error names the image and the key ids tried.
pub async fn pin_signed(
    image: &str,
    keys: &[VerifyingKey],
    credential: Option<crate::auth::Credential>,
    insecure: bool,
) -> std::result::Result<String, String> {
    let (base, digest) = match image.split_once('@') {
        Some((b, d)) => (b, Some(d.to_string())),
        None => (image, None),
    };
    let reference = crate::Reference::parse(base)
        .map_err(|e| format!("{e} (a signed-only swarm checks images in their registry)"))?;
    let client = crate::RegistryClient::new(&reference.registry, insecure, credential)
        .map_err(|e| e.to_string())?;
    let digest = match digest {
        Some(d) => d,
        None => {
            client
                .get_manifest(&reference.name, &reference.tag)
                .await
                .map_err(|e| format!("resolving {image}: {e}"))?
                .digest
        }
    };
    verify_with(&client, &reference, &digest, keys)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{base}@{digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_tampering_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = generate().expect("keys");
        std::fs::write(dir.path().join("k.key"), &private).expect("write");
        let key = SigningKey::load(&dir.path().join("k.key")).expect("load");
        let verifying = VerifyingKey::from_pem(&public, "k.pub").expect("public");
        assert_eq!(key.key_id(), verifying.key_id());
        let p = payload("reg/app", "sha256:abc");
        let sig = key.sign(&p).expect("sign");
        assert!(verifying.verifies(&p, &sig));
        assert!(!verifying.verifies(&payload("reg/app", "sha256:abd"), &sig));
        let (other, _) = generate().expect("keys");
        std::fs::write(dir.path().join("o.key"), &other).expect("write");
        let other = SigningKey::load(&dir.path().join("o.key")).expect("load");
        assert!(!verifying.verifies(&p, &other.sign(&p).expect("sign")));
        assert_eq!(payload_claims(&p).expect("claims").0, "sha256:abc");
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = SigningKey::load(&path).err().expect("refused");
        assert!(e.to_string().contains("bad.key"), "{e}");
        assert!(VerifyingKey::from_pem("nope", "x.pub").is_err());
    }
}
