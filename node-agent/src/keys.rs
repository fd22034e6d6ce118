//! The device's identity key: in its TPM where it has one, else a 0600
//! file in the state dir; and the file key's rotation, which the server
//! accepts signed by the key it replaces (no enrolment, no operator).

use crate::config::AgentConfig;
use crate::state::StateDir;
use anyhow::{bail, Context, Result};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, Endpoint};
use std::sync::Arc;

/// The key this device signs with, and its TPM's endorsement key
/// fingerprint when the key is in a TPM.
pub fn signer(
    config: &AgentConfig,
    state: &StateDir,
    device_id: &str,
) -> Result<(Arc<dyn DeviceSigner>, Option<String>)> {
    match crate::tpm::configured(config.tpm.as_deref()) {
        Some(path) => {
            let key = crate::tpm::TpmKey::open(device_id, &path)?;
            tracing::info!(tpm = %path.display(), key = %key.public_key().fingerprint(), endorsement_key = key.endorsement(), "identity key in the TPM");
            let ek = key.endorsement().to_string();
            Ok((Arc::new(key), Some(ek)))
        }
        None => Ok((Arc::new(state.device_key(device_id)?), None)),
    }
}

/// Replaces the device's file key: makes the next key (kept beside the
/// current one until the server has it), tells the server with a request
/// signed by the current key, then puts the next key in its place. Run
/// again after a crash, it finishes what the first run began. Answers the
/// new key's fingerprint.
pub async fn rotate(config: &AgentConfig, device_id: &str) -> Result<String> {
    if crate::tpm::configured(config.tpm.as_deref()).is_some() {
        bail!("this device's key lives in its TPM: it is derived from the TPM, not stored, so it does not rotate");
    }
    let state = StateDir::open(&config.state_dir)?;
    if !state.enrolled() {
        bail!("this device is not enrolled yet: its first key is the one it enrols with");
    }
    let server = match (&config.server, state.server()) {
        (Some(url), _) => (url.clone(), config.ca_fingerprint.clone()),
        (None, Some(record)) => (record.url, record.ca_fingerprint),
        (None, None) => bail!("no server is configured or remembered"),
    };
    let endpoint = Endpoint::new(&server.0, server.1.as_deref())?;
    let anonymous = Client::new(&endpoint, None)?;
    let current = state.device_key(device_id)?;
    let next =
        FileKey::load_or_create(device_id, &state.next_key_path()).map_err(anyhow::Error::msg)?;
    let fingerprint = next.public_key().fingerprint();
    let next_key = next.public_key().clone();
    // A run that crashed after the server took the next key: it works.
    let next_client = anonymous.with_device(Arc::new(next));
    if next_client.config().await.is_err() {
        anonymous
            .with_device(Arc::new(current))
            .rotate_device_key(&next_key)
            .await
            .context("telling the server the next key")?;
    }
    state.promote_next_key()?;
    Ok(fingerprint)
}
