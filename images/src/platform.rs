//! Image platforms: Docker's names, the Rust targets that build static
//! binaries for them here, and the ELF machine a binary for them has.

use std::fmt;
use std::str::FromStr;

/// A platform as images name it (Go's names: amd64, arm64, arm/v7, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    Amd64,
    Arm64,
    ArmV7,
    I386,
    Riscv64,
}

pub const ALL: [Platform; 5] = [
    Platform::Amd64,
    Platform::Arm64,
    Platform::ArmV7,
    Platform::I386,
    Platform::Riscv64,
];
pub const DEFAULT: [Platform; 3] = [Platform::Amd64, Platform::Arm64, Platform::ArmV7];

impl Platform {
    pub fn os(self) -> &'static str {
        "linux"
    }

    /// `architecture` in configs and index entries.
    pub fn architecture(self) -> &'static str {
        match self {
            Platform::Amd64 => "amd64",
            Platform::Arm64 => "arm64",
            Platform::ArmV7 => "arm",
            Platform::I386 => "386",
            Platform::Riscv64 => "riscv64",
        }
    }

    /// `variant`: arm must say v7; the others say nothing.
    pub fn variant(self) -> Option<&'static str> {
        match self {
            Platform::ArmV7 => Some("v7"),
            _ => None,
        }
    }

    /// The Rust target that builds a static binary for it on these machines.
    pub fn rust_target(self) -> &'static str {
        match self {
            Platform::Amd64 => "x86_64-unknown-linux-musl",
            Platform::Arm64 => "aarch64-unknown-linux-musl",
            Platform::ArmV7 => "armv7-unknown-linux-gnueabihf",
            Platform::I386 => "i686-unknown-linux-musl",
            Platform::Riscv64 => "riscv64gc-unknown-linux-gnu",
        }
    }

    /// ELF class (32 or 64 bit) and machine (e_machine) of its binaries.
    pub fn elf(self) -> (u8, u16) {
        match self {
            Platform::Amd64 => (64, 62),
            Platform::Arm64 => (64, 183),
            Platform::ArmV7 => (32, 40),
            Platform::I386 => (32, 3),
            Platform::Riscv64 => (64, 243),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.variant() {
            Some(v) => write!(f, "{}/{}/{v}", self.os(), self.architecture()),
            None => write!(f, "{}/{}", self.os(), self.architecture()),
        }
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "linux/amd64" => Ok(Platform::Amd64),
            "linux/arm64" | "linux/arm64/v8" => Ok(Platform::Arm64),
            "linux/arm/v7" | "linux/arm" => Ok(Platform::ArmV7),
            "linux/386" => Ok(Platform::I386),
            "linux/riscv64" => Ok(Platform::Riscv64),
            other => Err(format!(
                "unknown platform {other:?}; known: {}",
                ALL.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// Parses a comma-separated list, refusing duplicates.
pub fn parse_list(s: &str) -> Result<Vec<Platform>, String> {
    let mut out = Vec::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let p: Platform = item.parse()?;
        if out.contains(&p) {
            return Err(format!("platform {p} is listed twice"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("no platform given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in ALL {
            assert_eq!(p.to_string().parse::<Platform>(), Ok(p));
        }
        assert_eq!("linux/arm".parse::<Platform>(), Ok(Platform::ArmV7));
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_list("linux/amd64,linux/arm/v7"),
            Ok(vec![Platform::Amd64, Platform::ArmV7])
        );
        assert!(parse_list("linux/amd64,linux/amd64")
            .expect_err("dup")
            .contains("twice"));
        assert!(parse_list("linux/s390x")
            .expect_err("unknown")
            .contains("unknown platform"));
        assert!(parse_list("").is_err());
    }
}
