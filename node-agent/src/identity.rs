//! Who this device is and where it is reached: the MAC address of the
//! interface that carries the default route (else the first physical one),
//! and that interface's IPv4 address for the swarm to advertise.
//!
//! Reads /proc/net/route and /sys/class/net under a root, so tests use a
//! fake tree.

use anyhow::{bail, Context, Result};
use fogswarm_protocol::{DeviceId, MacAddress};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// The interface of the default route (destination 0.0.0.0), from
/// /proc/net/route.
pub fn default_route_interface(root: &Path) -> Option<String> {
    let routes = std::fs::read_to_string(root.join("proc/net/route")).ok()?;
    routes.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let iface = fields.next()?;
        let destination = fields.next()?;
        let _gateway = fields.next()?;
        let mask = fields.nth(4)?;
        (destination == "00000000" && mask == "00000000").then(|| iface.to_string())
    })
}

/// Physical interfaces (those backed by a device), sorted.
pub fn physical_interfaces(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/net"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The interface that identifies and carries this device.
pub fn primary_interface(root: &Path) -> Result<String> {
    if let Some(iface) = default_route_interface(root) {
        return Ok(iface);
    }
    physical_interfaces(root).into_iter().next().context(
        "no default route and no physical network interface: give --device-id and --advertise-addr",
    )
}

pub fn mac_of(root: &Path, iface: &str) -> Result<MacAddress> {
    let path = root.join("sys/class/net").join(iface).join("address");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mac = MacAddress::parse(text.trim())
        .with_context(|| format!("{} holds no MAC address", path.display()))?;
    if mac.0 == [0; 6] || mac.is_multicast() {
        bail!("interface {iface} has MAC {mac}, which cannot identify a device");
    }
    Ok(mac)
}

/// The device's identity: the given id, else the primary interface's MAC.
pub fn device_id(root: &Path, given: Option<&str>) -> Result<DeviceId> {
    match given {
        Some(id) => DeviceId::parse(id).map_err(|e| anyhow::anyhow!("--device-id {id:?}: {e}")),
        None => {
            let iface = primary_interface(root)?;
            Ok(mac_of(root, &iface)?.into())
        }
    }
}

/// The IPv4 address to advertise to the swarm: the flag (an IP, or an
/// interface name), else the primary interface's first IPv4 address.
pub fn advertise_addr(root: &Path, given: Option<&str>) -> Result<Ipv4Addr> {
    let iface = match given {
        Some(g) => match g.parse::<Ipv4Addr>() {
            Ok(ip) => return Ok(ip),
            Err(_) => g.to_string(),
        },
        None => primary_interface(root)?,
    };
    let addrs = if_addrs::get_if_addrs().context("listing network interfaces")?;
    addrs
        .iter()
        .filter(|a| a.name == iface)
        .find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .with_context(|| format!("interface {iface} has no IPv4 address to advertise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        dir
    }

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t00000000\t01D50D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t00D50D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn identity_is_the_default_route_interface_mac() {
        let t = tree(&[
            ("proc/net/route", ROUTES),
            ("sys/class/net/eth0/address", "02:FB:0A:D5:07:0B\n"),
            ("sys/class/net/docker0/address", "02:42:00:00:00:01\n"),
        ]);
        assert_eq!(default_route_interface(t.path()).as_deref(), Some("eth0"));
        assert_eq!(
            device_id(t.path(), None).expect("id").as_str(),
            "02:fb:0a:d5:07:0b"
        );
    }

    #[test]
    fn without_a_default_route_the_first_physical_interface() {
        let t = tree(&[
            ("proc/net/route", "Iface\tDestination\n"),
            ("sys/class/net/wlan0/device/x", ""),
            ("sys/class/net/wlan0/address", "b8:27:eb:00:00:02\n"),
            ("sys/class/net/eth1/device/x", ""),
            ("sys/class/net/eth1/address", "b8:27:eb:00:00:01\n"),
            ("sys/class/net/lo/address", "00:00:00:00:00:00\n"),
        ]);
        assert_eq!(
            device_id(t.path(), None).expect("id").as_str(),
            "b8:27:eb:00:00:01"
        );
    }

    #[test]
    fn given_ids_win_and_are_validated() {
        let t = tree(&[]);
        assert_eq!(
            device_id(t.path(), Some("GW-07")).expect("id").as_str(),
            "GW-07"
        );
        assert!(device_id(t.path(), Some("bad id")).is_err());
        assert!(device_id(t.path(), None).is_err(), "nothing to read");
    }

    #[test]
    fn a_zero_mac_is_refused() {
        let t = tree(&[
            ("proc/net/route", ROUTES),
            ("sys/class/net/eth0/address", "00:00:00:00:00:00\n"),
        ]);
        assert!(device_id(t.path(), None).is_err());
    }

    #[test]
    fn advertise_addr_takes_an_ip_as_given() {
        let t = tree(&[]);
        assert_eq!(
            advertise_addr(t.path(), Some("10.1.2.3")).expect("ip"),
            Ipv4Addr::new(10, 1, 2, 3)
        );
        assert!(advertise_addr(t.path(), Some("no-such-iface0")).is_err());
    }
}
