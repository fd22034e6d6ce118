//! A device's identity: an ECDSA P-256 key pair made on the device (in a
//! file, or in its TPM), whose public half the server binds to the device
//! id at first enrolment. Every later request is signed with it, so a
//! device proves possession on every call and nothing a request carries
//! works as a bearer secret.
//!
//! P-256 because every TPM 2.0 has it (Ed25519 is not in the TPM's
//! algorithm set), so file keys and TPM keys are one kind to the server.
//!
//! The request a device signs:
//!
//! ```text
//! fogswarm-device-v1
//! DEVICE_ID
//! METHOD
//! PATH?QUERY
//! UNIX_SECONDS
//! SHA256_HEX(BODY)
//! ```
//!
//! sent as `Authorization: Fogswarm-Device DEVICE_ID UNIX_SECONDS SIG`
//! (SIG: base64url of the 64-byte r||s signature). The server accepts a
//! timestamp within [`MAX_SKEW_SECS`] of its clock; a device whose clock is
//! off learns the server's time from the `Fogswarm-Time` header of the 401.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

/// The authorization scheme of a signed device request.
pub const AUTH_SCHEME: &str = "Fogswarm-Device";
/// The header that tells a device the server's time (Unix seconds).
pub const TIME_HEADER: &str = "fogswarm-time";
/// How far a request's timestamp may be from the server's clock.
pub const MAX_SKEW_SECS: i64 = 300;
const KEY_PREFIX: &str = "p256:";

/// A device's public key as it travels and is stored: `p256:` and the
/// base64url (no padding) of the SEC1 uncompressed point (65 bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(s: &str) -> Result<PublicKey, IdentityError> {
        let point = s
            .strip_prefix(KEY_PREFIX)
            .ok_or(IdentityError::KeyFormat("it does not start with p256:"))?;
        let bytes = b64()
            .decode(point)
            .map_err(|_| IdentityError::KeyFormat("it is not base64url"))?;
        PublicKey::from_sec1(&bytes)
    }

    /// From the SEC1 uncompressed point (0x04, X, Y).
    pub fn from_sec1(point: &[u8]) -> Result<PublicKey, IdentityError> {
        if point.len() != 65 || point[0] != 4 {
            return Err(IdentityError::KeyFormat(
                "it is not an uncompressed P-256 point (65 bytes, 0x04 first)",
            ));
        }
        Ok(PublicKey(format!("{KEY_PREFIX}{}", b64().encode(point))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn point(&self) -> Vec<u8> {
        // Checked when made.
        b64()
            .decode(&self.0[KEY_PREFIX.len()..])
            .unwrap_or_default()
    }

    /// The key's SHA-256 over its point, first 16 hex digits: enough to
    /// tell keys apart in listings and events.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.point());
        hex16(digest.as_ref())
    }

    /// Whether `signature` (r||s) signs `message` with this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.point())
            .verify(message, signature)
            .is_ok()
    }
}

impl TryFrom<String> for PublicKey {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PublicKey::parse(&s)
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdentityError {
    #[error("the public key is not valid: {0}")]
    KeyFormat(&'static str),
    #[error("the Authorization header is not `Fogswarm-Device ID SECONDS SIGNATURE`")]
    HeaderFormat,
}

/// The bytes a device signs for one request.
pub fn signing_input(
    device_id: &str,
    method: &str,
    path_and_query: &str,
    unix_secs: i64,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    let mut hex = String::with_capacity(64);
    for b in body_hash.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("fogswarm-device-v1\n{device_id}\n{method}\n{path_and_query}\n{unix_secs}\n{hex}")
        .into_bytes()
}

/// The Authorization header's value for a signed request.
pub fn authorization(device_id: &str, unix_secs: i64, signature: &[u8]) -> String {
    format!(
        "{AUTH_SCHEME} {device_id} {unix_secs} {}",
        b64().encode(signature)
    )
}

/// A signed request's claims, as the header states them (not yet checked).
#[derive(Debug, PartialEq)]
pub struct SignedClaim {
    pub device_id: String,
    pub unix_secs: i64,
    pub signature: Vec<u8>,
}

/// Reads an Authorization header of the device scheme; `None` when it is
/// of another scheme.
pub fn parse_authorization(value: &str) -> Option<Result<SignedClaim, IdentityError>> {
    let rest = value.strip_prefix(AUTH_SCHEME)?.strip_prefix(' ')?;
    let mut parts = rest.split(' ');
    let claim = (|| {
        let device_id = parts.next().filter(|s| !s.is_empty())?.to_string();
        let unix_secs = parts.next()?.parse().ok()?;
        let signature = b64().decode(parts.next()?).ok()?;
        if parts.next().is_some() || signature.len() != 64 {
            return None;
        }
        Some(SignedClaim {
            device_id,
            unix_secs,
            signature,
        })
    })();
    Some(claim.ok_or(IdentityError::HeaderFormat))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn hex16(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key")
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let pair = key();
        let public = PublicKey::from_sec1(pair.public_key().as_ref()).expect("point");
        assert_eq!(PublicKey::parse(public.as_str()), Ok(public.clone()));
        let input = signing_input(
            "02:fb:0a:00:00:0b",
            "POST",
            "/v1/report",
            1_700_000_000,
            b"{}",
        );
        let sig = pair
            .sign(&SystemRandom::new(), &input)
            .expect("sign")
            .as_ref()
            .to_vec();
        assert!(public.verifies(&input, &sig));
        for other in [
            signing_input(
                "02:fb:0a:00:00:0c",
                "POST",
                "/v1/report",
                1_700_000_000,
                b"{}",
            ),
            signing_input(
                "02:fb:0a:00:00:0b",
                "GET",
                "/v1/report",
                1_700_000_000,
                b"{}",
            ),
            signing_input(
                "02:fb:0a:00:00:0b",
                "POST",
                "/v1/report?x",
                1_700_000_000,
                b"{}",
            ),
            signing_input(
                "02:fb:0a:00:00:0b",
                "POST",
                "/v1/report",
                1_700_000_001,
                b"{}",
            ),
            signing_input(
                "02:fb:0a:00:00:0b",
                "POST",
                "/v1/report",
                1_700_000_000,
                b"{ }",
            ),
        ] {
            assert!(!public.verifies(&other, &sig));
        }
        let header = authorization("02:fb:0a:00:00:0b", 1_700_000_000, &sig);
        let claim = parse_authorization(&header)
            .expect("scheme")
            .expect("claim");
        assert_eq!(claim.device_id, "02:fb:0a:00:00:0b");
        assert_eq!(claim.signature, sig);
    }

    #[test]
    fn malformed_keys_and_headers_are_refused() {
        assert!(PublicKey::parse("p256:AAAA").is_err());
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
        assert!(PublicKey::parse("p256:!!!").is_err());
        assert!(parse_authorization("Bearer abc").is_none());
        for bad in [
            "Fogswarm-Device ",
            "Fogswarm-Device id",
            "Fogswarm-Device id notanumber sig",
            "Fogswarm-Device id 1 c2ln",
            "Fogswarm-Device id 1 AAAA extra",
        ] {
            assert_eq!(
                parse_authorization(bad),
                Some(Err(IdentityError::HeaderFormat)),
                "{bad}"
            );
        }
    }
}
