//! The lab network's address plan: subnet, gateway, device addresses and the
//! MAC each device gets.
//!
//! Addresses are fixed by position so a device keeps its identity across
//! `lab down` / `lab up`: devN is always the same IP and MAC for a given
//! subnet, which later issues declare in the fleet by MAC.

use fogswarm_protocol::MacAddress;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Host offsets below this are kept for the lab's own services (gateway and
/// registry at .1, config server and friends at .2 to .10).
pub const FIRST_DEVICE_OFFSET: u32 = 11;

/// An IPv4 subnet the lab owns, /16 to /28.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The default subnet for a lab name: 10.213.X.0/24 with X from the
    /// name, so differently named labs usually get different subnets and the
    /// same name always the same one.
    pub fn default_for(name: &str) -> Subnet {
        // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
        let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Subnet {
            network: Ipv4Addr::new(10, 213, (hash % 256) as u8, 0),
            prefix: 24,
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Address of device `index` (1-based: dev1, dev2, ...).
    pub fn device_ip(&self, index: u32) -> Ipv4Addr {
        self.host(FIRST_DEVICE_OFFSET + index - 1)
    }

    /// How many devices fit between the first device offset and broadcast.
    pub fn device_capacity(&self) -> u32 {
        let hosts = (1u32 << (32 - u32::from(self.prefix))) - 2;
        hosts.saturating_sub(FIRST_DEVICE_OFFSET - 1)
    }

    fn host(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?} is not in CIDR form (like 10.213.7.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("subnet {s:?}: prefix {prefix:?} is not a number"))?;
        if !(16..=28).contains(&prefix) {
            return Err(format!(
                "subnet {s:?}: prefix /{prefix} is outside /16 to /28"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "subnet {s:?} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Subnet {
            network: addr,
            prefix,
        })
    }
}

/// The MAC of a device: locally administered `02:fb` followed by its IPv4
/// address, so it is distinct within a lab and across labs on distinct
/// subnets, and stable for a given address.
pub fn device_mac(ip: Ipv4Addr) -> MacAddress {
    let o = ip.octets();
    MacAddress([0x02, 0xfb, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_of_a_24() {
        let s: Subnet = "10.213.7.0/24".parse().expect("valid");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 7, 1));
        assert_eq!(s.device_ip(1), Ipv4Addr::new(10, 213, 7, 11));
        assert_eq!(s.device_capacity(), 244);
        assert_eq!(s.device_ip(244), Ipv4Addr::new(10, 213, 7, 254));
        assert_eq!(device_mac(s.device_ip(1)).to_string(), "02:fb:0a:d5:07:0b");
    }

    #[test]
    fn small_and_large_subnets() {
        assert_eq!(
            "10.0.0.0/28"
                .parse::<Subnet>()
                .expect("ok")
                .device_capacity(),
            4
        );
        assert_eq!(
            "10.0.0.0/16"
                .parse::<Subnet>()
                .expect("ok")
                .device_capacity(),
            65524
        );
    }

    #[test]
    fn bad_subnets_say_why() {
        let err = |s: &str| s.parse::<Subnet>().expect_err(s);
        assert!(err("10.0.0.0").contains("CIDR"));
        assert!(err("10.0.0.300/24").contains("not an IPv4"));
        assert!(err("10.0.0.0/8").contains("outside /16 to /28"));
        assert!(err("10.0.0.5/24").contains("did you mean 10.0.0.0/24"));
    }

    #[test]
    fn default_subnet_is_stable_per_name() {
        assert_eq!(Subnet::default_for("fog"), Subnet::default_for("fog"));
        assert_ne!(Subnet::default_for("fog"), Subnet::default_for("fog2"));
    }
}
