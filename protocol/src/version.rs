//! The protocol version agents and servers speak, sent by each on every
//! request and answer (`Fogswarm-Protocol: MAJOR.MINOR`). A server serves
//! peers of its major version down to one minor version older, and tells
//! the older ones that they must be updated; a new minor version only adds
//! fields and endpoints, and the types that travel from server to agent
//! and back accept fields they do not know. A peer that sends no version
//! predates versioning: it speaks 1.0.

use std::fmt;

/// This build's protocol version.
pub const PROTOCOL: &str = "1.1";

/// What a peer that sends no version speaks.
pub const UNVERSIONED: &str = "1.0";

/// The header each side names its protocol version in.
pub const HEADER: &str = "fogswarm-protocol";

/// `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

impl ProtocolVersion {
    /// This build's: [`PROTOCOL`] (the test checks that they agree).
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

    /// A peer's that sends none: [`UNVERSIONED`].
    pub const UNVERSIONED: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

    /// How a server of this build serves a peer speaking `self`.
    pub fn support(self) -> Support {
        let ours = ProtocolVersion::CURRENT;
        if self.major != ours.major {
            Support::Unsupported
        } else if self.minor >= ours.minor {
            Support::Current
        } else if self.minor + 1 == ours.minor {
            Support::Outdated
        } else {
            Support::Unsupported
        }
    }
}

/// Whether a stored version (a device's last report) is older than this
/// build's: its agent must be updated. Unreadable text is not flagged.
pub fn behind(version: &str) -> bool {
    version
        .parse::<ProtocolVersion>()
        .is_ok_and(|v| v.support() != Support::Current)
}

/// How a peer is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Its version or newer.
    Current,
    /// One minor version older: served, and told to update.
    Outdated,
    /// Another major version or older still: refused (426).
    Unsupported,
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("protocol version {s:?}: expected MAJOR.MINOR, like {PROTOCOL}");
        let (major, minor) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(ProtocolVersion {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_minor_version_older_is_served_and_flagged() {
        let v = |s: &str| s.parse::<ProtocolVersion>().expect(s);
        let current: ProtocolVersion = PROTOCOL.parse().expect("PROTOCOL parses");
        assert_eq!(current, ProtocolVersion::CURRENT);
        assert_eq!(v(UNVERSIONED), ProtocolVersion::UNVERSIONED);
        assert!(behind(UNVERSIONED) && !behind(PROTOCOL) && !behind("nonsense"));
        assert_eq!(current.support(), Support::Current);
        let newer = ProtocolVersion {
            minor: current.minor + 1,
            ..current
        };
        assert_eq!(newer.support(), Support::Current);
        assert_eq!(v(UNVERSIONED).support(), Support::Outdated);
        assert_eq!(v("2.0").support(), Support::Unsupported);
        assert_eq!(v("0.9").support(), Support::Unsupported);
        for bad in ["1", "1.x", "", "one.two"] {
            assert!(bad.parse::<ProtocolVersion>().is_err(), "{bad}");
        }
    }
}
