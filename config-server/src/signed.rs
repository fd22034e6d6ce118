//! Signed-only swarms: a swarm that names public keys runs only images
//! signed by one of them. At deploy the server resolves each image's tag
//! to its digest in the registry, checks that a signature of that digest
//! verifies with one of the swarm's keys (cosign's layout, as `fogswarm
//! image sign` writes it), and stores the service by digest, so a tag
//! pushed over later changes nothing on the devices until a new deploy.
//! A refusal names the image and the key ids tried; nothing is stored.

use crate::http::{ApiFailure, AppState};
use crate::store::{SigningKeyText, StoreError};
use fogswarm_images::auth::Credential;
use fogswarm_images::sign::VerifyingKey;
use fogswarm_protocol::secret::registry_of;
use fogswarm_protocol::service::ServiceSpec;

/// Parses PEM public keys (422 naming the bad one).
pub fn checked_keys(pems: &[String]) -> Result<Vec<SigningKeyText>, ApiFailure> {
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            let field = format!("require_signed[{i}]");
            let key = VerifyingKey::from_pem(pem, &field).map_err(|e| {
                ApiFailure::invalid(&field, format!("not an ECDSA P-256 public key in PEM: {e}"))
            })?;
            Ok(SigningKeyText {
                pem: pem.clone(),
                id: key.key_id()[..16].to_string(),
            })
        })
        .collect()
}

/// Pins every spec's image to a digest signed by one of the swarm's keys;
/// does nothing for a swarm without keys.
pub async fn pin_signed(
    state: &AppState,
    swarm: &str,
    specs: &mut [ServiceSpec],
) -> Result<(), ApiFailure> {
    let pems = state.store.signing_keys(swarm)?;
    if pems.is_empty() {
        return Ok(());
    }
    let keys = pems
        .iter()
        .map(|p| VerifyingKey::from_pem(p, "a swarm key"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("a stored signing key does not parse: {e}")))?;
    let one = specs.len() == 1;
    for (i, spec) in specs.iter_mut().enumerate() {
        let field = if one {
            "image".to_string()
        } else {
            format!("services[{i}].image")
        };
        spec.image = pinned(state, swarm, &spec.image, &keys)
            .await
            .map_err(|m| ApiFailure::invalid(&field, m))?;
    }
    Ok(())
}

/// `image` as `REF@sha256:...` once a signature of that digest verifies,
/// with the swarm's login for its registry.
async fn pinned(
    state: &AppState,
    swarm: &str,
    image: &str,
    keys: &[VerifyingKey],
) -> Result<String, String> {
    let host = registry_of(image);
    let credential = state
        .store
        .registry_login(swarm, host, &state.sealer)
        .map_err(|e| format!("reading the login for {host}: {e}"))?
        .map(|(user, password)| Credential {
            user,
            secret: password,
            source: format!("swarm {swarm}'s registry login"),
        });
    let insecure = state.insecure_registries.iter().any(|r| r == host);
    fogswarm_images::sign::pin_signed(image, keys, credential, insecure)
        .await
        .map_err(|e| format!("{e}; swarm {swarm} runs only images signed by its keys"))
}
