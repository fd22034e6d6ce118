//! Checking that a prebuilt binary fits the platform it is given for: an
//! ELF executable of the right class and machine, statically linked (a
//! scratch image has no dynamic loader). A header check needs a few dozen
//! lines, not an object-file library.

use crate::platform::Platform;
use std::path::Path;

const PT_INTERP: u32 = 3;

/// What a binary is, as far as the check needs.
#[derive(Debug, PartialEq)]
pub struct ElfInfo {
    pub class: u8,
    pub machine: u16,
    pub dynamic: bool,
}

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "x86 (386)",
        40 => "ARM (32-bit)",
        62 => "x86-64 (amd64)",
        183 => "AArch64 (arm64)",
        243 => "RISC-V",
        _ => "another machine",
    }
}

/// Reads the ELF header and program headers.
pub fn inspect(bytes: &[u8]) -> Result<ElfInfo, String> {
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let class = match bytes[4] {
        1 => 32,
        2 => 64,
        c => return Err(format!("has an unknown ELF class {c}")),
    };
    if bytes[5] != 1 {
        return Err("is big-endian; only little-endian platforms are supported".into());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let bad = || "has a truncated ELF header".to_string();
    let machine = u16_at(18).ok_or_else(bad)?;
    let (phoff, phentsize, phnum) = if class == 64 {
        (
            u64_at(32).ok_or_else(bad)? as usize,
            u16_at(54).ok_or_else(bad)? as usize,
            u16_at(56).ok_or_else(bad)? as usize,
        )
    } else {
        (
            u32_at(28).ok_or_else(bad)? as usize,
            u16_at(42).ok_or_else(bad)? as usize,
            u16_at(44).ok_or_else(bad)? as usize,
        )
    };
    let mut dynamic = false;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(bad)?;
        if p_type == PT_INTERP {
            dynamic = true;
        }
    }
    Ok(ElfInfo {
        class,
        machine,
        dynamic,
    })
}

/// Refuses a binary that would not run in a scratch image of `platform`.
pub fn check(path: &Path, platform: Platform) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let info = inspect(&bytes).map_err(|e| format!("{} {e}", path.display()))?;
    let (class, machine) = platform.elf();
    if info.machine != machine || info.class != class {
        return Err(format!(
            "{} is a {}-bit {} binary, not one for {platform}",
            path.display(),
            info.class,
            machine_name(info.machine)
        ));
    }
    if info.dynamic {
        return Err(format!(
            "{} is dynamically linked (it names an interpreter); a scratch image needs a static binary",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_x86_64() {
        let exe = std::env::current_exe().expect("exe");
        let info = inspect(&std::fs::read(&exe).expect("read")).expect("elf");
        if cfg!(target_arch = "x86_64") {
            assert_eq!((info.class, info.machine), (64, 62));
            let err = check(&exe, Platform::Arm64).expect_err("wrong platform");
            assert!(
                err.contains("x86-64 (amd64) binary, not one for linux/arm64"),
                "{err}"
            );
        }
        if cfg!(target_env = "gnu") {
            assert!(info.dynamic);
            assert!(check(&exe, Platform::Amd64)
                .expect_err("dynamic")
                .contains("dynamically linked"));
        }
    }

    #[test]
    fn non_elf_is_refused() {
        assert!(inspect(b"#!/bin/sh\necho hi\n")
            .expect_err("script")
            .contains("not an ELF"));
    }
}
