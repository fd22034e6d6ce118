//! Finding the server over mDNS (`_fogswarm._tcp.local.`).
//!
//! With a CA fingerprint configured, a server is used only if its TXT
//! record names that CA (and the TLS connection then proves it). Without
//! one, the agent trusts the first server it finds on its link and pins the
//! CA it advertises from then on (trust on first use, kept in the state
//! dir): the price of zero-touch on a network nobody configured.

use anyhow::{bail, Context, Result};
use mdns_sd::{ServiceDaemon, ServiceEvent};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const SERVICE_TYPE: &str = "_fogswarm._tcp.local.";

#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// One URL, or several separated by commas.
    pub url: String,
    pub ca_fingerprint: Option<String>,
}

/// How long to keep listening for more replicas after the first answer.
const GATHER: Duration = Duration::from_secs(1);

/// Browses for up to `timeout`; answers the first acceptable server, with
/// the other replicas of its fleet that answer soon after (`url` is then
/// a comma-separated list).
pub async fn find_server(expected_fingerprint: Option<&str>, timeout: Duration) -> Result<Found> {
    let expected = expected_fingerprint
        .map(|f| fogswarm_client::pin::normalize_fingerprint(f).unwrap_or_else(|| f.to_string()));
    let daemon = ServiceDaemon::new().context("starting mDNS")?;
    let events = daemon.browse(SERVICE_TYPE).context("browsing mDNS")?;
    let mut deadline = Instant::now() + timeout;
    let mut rejected = Vec::new();
    // Every replica of the server advertises itself: after the first
    // answer, the others of the same fleet (same CA) are gathered for a
    // moment, so the agent can fail over among them.
    let mut found: Vec<Found> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let event = match tokio::time::timeout(left, events.recv_async()).await {
            Ok(Ok(e)) => e,
            _ => break,
        };
        let ServiceEvent::ServiceResolved(info) = event else {
            continue;
        };
        let tls = info.get_property_val_str("tls") == Some("1");
        let ca = info.get_property_val_str("ca").map(str::to_string);
        if let Some(expected) = &expected {
            if ca.as_deref() != Some(expected.as_str()) {
                rejected.push(info.get_fullname().to_string());
                continue;
            }
        }
        let Some(ip) = info
            .get_addresses()
            .iter()
            .find(|a| matches!(a, IpAddr::V4(_)))
            .copied()
        else {
            continue;
        };
        let scheme = if tls { "https" } else { "http" };
        let this = Found {
            url: format!("{scheme}://{ip}:{}", info.get_port()),
            ca_fingerprint: ca.filter(|_| tls),
        };
        match found.first() {
            None => {
                deadline = deadline.min(Instant::now() + GATHER);
                found.push(this);
            }
            Some(first)
                if first.ca_fingerprint == this.ca_fingerprint
                    && !found.iter().any(|f| f.url == this.url) =>
            {
                found.push(this);
            }
            Some(_) => {}
        }
    }
    let result = found.first().map(|first| Found {
        url: found
            .iter()
            .map(|f| f.url.as_str())
            .collect::<Vec<_>>()
            .join(","),
        ca_fingerprint: first.ca_fingerprint.clone(),
    });
    let _ = daemon.shutdown();
    match result {
        Some(found) => Ok(found),
        None if !rejected.is_empty() => bail!(
            "found {} over mDNS, but none advertises the configured CA fingerprint",
            rejected.join(", ")
        ),
        None => bail!(
            "no {SERVICE_TYPE} server answered over mDNS within {}s",
            timeout.as_secs()
        ),
    }
}
