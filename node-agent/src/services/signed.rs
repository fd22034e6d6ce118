//! A signed-only swarm's rule, checked again on the raft leader: the
//! server already refused unsigned images at deploy and stored them by
//! digest, but the leader verifies each image before it creates or
//! updates a service, so a desired state that reached it some other way
//! (a database edited by hand, a server bug) cannot put an unsigned image
//! on the devices. It also looks at the services made outside fogswarm
//! (`docker service create` on a manager) and reports the unsigned ones;
//! it does not remove them, they are not fogswarm's. An image outside
//! fogswarm that is not pinned to a digest counts as unsigned.
//!
//! The registry is asked as the engine would ask it: insecure (plain
//! HTTP) when the engine's own configuration says so, with the swarm's
//! login for that registry when the server holds one.

use bollard::auth::DockerCredentials;
use fogswarm_client::engine::Engine;
use fogswarm_images::auth::Credential;
use fogswarm_images::sign::{pin_signed, VerifyingKey};
use fogswarm_protocol::api::Secret;
use fogswarm_protocol::secret::registry_of;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A failed check is retried after this long (a signature may be pushed
/// after the image); a passed one is kept (a digest's content is fixed).
const RECHECK_FAILED: Duration = Duration::from_secs(60);
/// Verdicts kept at most; the cache starts afresh beyond.
const VERDICTS_KEPT: usize = 512;

/// The swarm's keys and what this agent already found about images.
pub(super) struct SignedOnly {
    pems: Vec<String>,
    /// The keys parsed, or why they do not parse.
    keys: Result<Vec<VerifyingKey>, String>,
    /// Image to its pinned form or why it does not verify, and when.
    verdicts: HashMap<String, (Result<String, String>, Instant)>,
}

impl Default for SignedOnly {
    fn default() -> Self {
        SignedOnly {
            pems: Vec::new(),
            keys: Ok(Vec::new()),
            verdicts: HashMap::new(),
        }
    }
}

impl SignedOnly {
    /// Takes the desired state's keys (parsed again only when they change).
    pub(super) fn set_keys(&mut self, pems: &[String]) {
        if self.pems == pems {
            return;
        }
        self.pems = pems.to_vec();
        self.keys = pems
            .iter()
            .map(|p| VerifyingKey::from_pem(p, "a swarm key"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the swarm's signing keys do not parse: {e}"));
        self.verdicts.clear();
    }

    pub(super) fn required(&self) -> bool {
        !self.pems.is_empty()
    }

    /// The verdict on `image` still good, if any (no registry asked).
    pub(super) fn known(&self, image: &str) -> Option<&Result<String, String>> {
        self.verdicts
            .get(image)
            .filter(|(v, at)| v.is_ok() || at.elapsed() < RECHECK_FAILED)
            .map(|(v, _)| v)
    }

    /// `image` pinned to a digest signed by one of the swarm's keys, or
    /// why not.
    pub(super) async fn pin(
        &mut self,
        engine: &Engine,
        image: &str,
        login: Option<&DockerCredentials>,
    ) -> Result<String, String> {
        if let Some(verdict) = self.known(image) {
            return verdict.clone();
        }
        let keys = self.keys.as_ref().map_err(Clone::clone)?;
        let insecure = insecure_for_engine(engine, registry_of(image)).await;
        let credential = login.and_then(|l| {
            Some(Credential {
                user: l.username.clone()?,
                secret: Secret::new(l.password.clone()?),
                source: "the swarm's registry login".into(),
            })
        });
        let verdict = pin_signed(image, keys, credential, insecure).await;
        if self.verdicts.len() >= VERDICTS_KEPT {
            self.verdicts.clear();
        }
        self.verdicts
            .insert(image.to_string(), (verdict.clone(), Instant::now()));
        verdict
    }
}

/// Whether the engine talks plain HTTP to `host`: named in its insecure
/// registries, or its address inside one of its insecure CIDRs (the
/// engine's default holds 127.0.0.0/8).
async fn insecure_for_engine(engine: &Engine, host: &str) -> bool {
    let Ok(info) = engine.docker.info().await else {
        return false;
    };
    let Some(config) = info.registry_config else {
        return false;
    };
    if config
        .index_configs
        .as_ref()
        .and_then(|c| c.get(host))
        .and_then(|i| i.secure)
        == Some(false)
    {
        return true;
    }
    let address = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let Ok(ip) = address.parse::<Ipv4Addr>() else {
        return false;
    };
    config
        .insecure_registry_cidrs
        .unwrap_or_default()
        .iter()
        .any(|cidr| in_cidr(ip, cidr))
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_as_the_engine_reads_them() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert!(in_cidr(ip("127.0.0.1"), "127.0.0.0/8"));
        assert!(in_cidr(ip("10.213.7.1"), "10.213.7.1/32"));
        assert!(!in_cidr(ip("10.213.7.2"), "10.213.7.1/32"));
        assert!(in_cidr(ip("192.168.1.9"), "0.0.0.0/0"));
        assert!(!in_cidr(ip("10.0.0.1"), "10.0.0.0/33"));
        assert!(!in_cidr(ip("10.0.0.1"), "fd00::/8"));
    }

    #[test]
    fn keys_that_do_not_parse_refuse_every_image() {
        let mut signed = SignedOnly::default();
        assert!(!signed.required());
        signed.set_keys(&["-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n".into()]);
        assert!(signed.required());
        assert!(signed.keys.is_err());
    }
}
