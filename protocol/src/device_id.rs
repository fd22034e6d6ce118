//! Device identity: a MAC address in one canonical form, or a free-form id.
//!
//! A device's identity is, by default, the MAC address of its primary
//! interface. MACs arrive in many spellings (`AA-BB-..`, `aabb.ccdd.eeff`,
//! upper case), so they are normalised to lower-case colon form before they
//! are compared or stored; otherwise one device could be declared twice.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest free-form device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a device id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {0} characters long; at most {MAX_DEVICE_ID_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "device id has {0:?} at position {1}; allowed are letters, digits, '.', '_', '-' and ':'"
    )]
    BadChar(char, usize),
    #[error("device id must start with a letter or digit")]
    BadStart,
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` or
    /// `aabbccddeeff`, in any case. `None` when `s` is not a MAC in any of
    /// these spellings.
    pub fn parse(s: &str) -> Option<Self> {
        let hex: String = match s.len() {
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return None;
                }
                let groups: Vec<&str> = s.split(sep as char).collect();
                if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
                    return None;
                }
                groups.concat()
            }
            14 => {
                let groups: Vec<&str> = s.split('.').collect();
                if groups.len() != 3 || groups.iter().any(|g| g.len() != 4) {
                    return None;
                }
                groups.concat()
            }
            12 => s.to_string(),
            _ => return None,
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 6];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(MacAddress(bytes))
    }

    /// True for a locally administered address (second bit of the first
    /// octet), the kind a lab or a VM invents rather than a vendor burns in.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True for a multicast address, which can never identify one device.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A device's identity in canonical form.
///
/// Anything that parses as a MAC address becomes one (lower-case, colon
/// separated); anything else must be a bounded free-form id of letters,
/// digits, `.`, `_`, `-` and `:`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        let s = s.trim();
        if let Some(mac) = MacAddress::parse(s) {
            return Ok(DeviceId(mac.to_string()));
        }
        if s.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong(len));
        }
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(DeviceIdError::BadChar(c, i));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(DeviceIdError::BadStart);
        }
        Ok(DeviceId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The MAC address, when this id is one.
    pub fn mac(&self) -> Option<MacAddress> {
        MacAddress::parse(&self.0)
    }
}

impl From<MacAddress> for DeviceId {
    fn from(mac: MacAddress) -> Self {
        DeviceId(mac.to_string())
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::parse(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeviceId::parse(&s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings_normalise_to_one_form() {
        for s in [
            "02:FB:0A:4D:00:0B",
            "02-fb-0a-4d-00-0b",
            "02fb.0a4d.000b",
            "02FB0A4D000B",
            "  02:fb:0a:4d:00:0b ",
        ] {
            assert_eq!(
                DeviceId::parse(s).expect(s).as_str(),
                "02:fb:0a:4d:00:0b",
                "{s}"
            );
        }
    }

    #[test]
    fn near_macs_are_free_form_or_refused() {
        // Mixed separators are not a MAC; ':' and '-' are allowed characters,
        // so this is a (strange but valid) free-form id, kept verbatim.
        let id = DeviceId::parse("02:fb-0a:4d:00:0b").expect("free-form");
        assert_eq!(id.mac(), None);
        assert!(matches!(
            DeviceId::parse("02:fb:0a:4d:00:0g"),
            Ok(ref id) if id.mac().is_none()
        ));
    }

    #[test]
    fn free_form_ids() {
        assert_eq!(
            DeviceId::parse("gw-07.hall3").expect("ok").as_str(),
            "gw-07.hall3"
        );
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::parse("a b"), Err(DeviceIdError::BadChar(' ', 1)));
        assert_eq!(DeviceId::parse("-x"), Err(DeviceIdError::BadStart));
        assert_eq!(
            DeviceId::parse(&"x".repeat(65)),
            Err(DeviceIdError::TooLong(65))
        );
        assert!(DeviceId::parse(&"x".repeat(64)).is_ok());
        assert!(matches!(
            DeviceId::parse("dev/1"),
            Err(DeviceIdError::BadChar('/', 3))
        ));
    }

    #[test]
    fn serde_validates() {
        let id: DeviceId = serde_json::from_str("\"AA-BB-CC-DD-EE-FF\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&id).expect("ser"),
            "\"aa:bb:cc:dd:ee:ff\""
        );
        assert!(serde_json::from_str::<DeviceId>("\"bad id\"").is_err());
    }

    #[test]
    fn mac_bits() {
        let lab = MacAddress::parse("02:fb:0a:4d:00:0b").expect("mac");
        assert!(lab.is_locally_administered());
        assert!(!lab.is_multicast());
        assert!(MacAddress::parse("01:00:5e:00:00:fb")
            .expect("mac")
            .is_multicast());
    }
}
