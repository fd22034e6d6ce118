//! Advertising the server as `_fogswarm._tcp.local.`, so agents started
//! without `--server` find it. The TXT record carries the API version,
//! whether TLS is on, and the CA fingerprint agents may check against the
//! one they were configured with.

use anyhow::{Context, Result};
use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use std::net::IpAddr;

pub const SERVICE_TYPE: &str = "_fogswarm._tcp.local.";

/// Registers the service; the daemon answers queries until dropped or shut
/// down. With `interface`, only that interface is used: a server must not
/// multicast onto networks it was not asked to serve.
pub fn advertise(
    port: u16,
    ip: IpAddr,
    fingerprint: Option<&str>,
    interface: Option<&str>,
) -> Result<ServiceDaemon> {
    let daemon = ServiceDaemon::new().context("starting the mDNS responder")?;
    if let Some(name) = interface {
        daemon
            .disable_interface(IfKind::All)
            .context("mDNS: disabling interfaces")?;
        daemon
            .enable_interface(IfKind::Name(name.to_string()))
            .with_context(|| format!("mDNS: enabling interface {name}"))?;
    }
    let host = hostname();
    let mut properties = vec![("api", fogswarm_protocol::api::API_VERSION.to_string())];
    properties.push((
        "tls",
        if fingerprint.is_some() { "1" } else { "0" }.to_string(),
    ));
    if let Some(fp) = fingerprint {
        properties.push(("ca", fp.to_string()));
    }
    let addrs: Vec<IpAddr> = if ip.is_unspecified() {
        Vec::new()
    } else {
        vec![ip]
    };
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        &format!("fogswarm-{host}-{port}"),
        &format!("{host}.local."),
        &addrs[..],
        port,
        &properties[..],
    )
    .context("building the mDNS service record")?;
    let info = if addrs.is_empty() {
        info.enable_addr_auto()
    } else {
        info
    };
    daemon
        .register(info)
        .context("registering the mDNS service")?;
    Ok(daemon)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "server".into())
}
