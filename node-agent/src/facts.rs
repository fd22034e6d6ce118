//! Detected facts: what a device is and what is plugged into it, read from
//! /proc, /sys and /dev. They become `fog.` labels, so services can target
//! "every arm64 device with a camera" without anyone typing labels.
//!
//! Every probe takes the root to read under, so tests point it at a fake
//! tree.

use fogswarm_protocol::api::Facts;
use fogswarm_protocol::hardware;
use std::path::Path;

/// All facts for the machine under `root` (`/` in production).
pub fn detect(root: &Path) -> Facts {
    let mut facts = Facts::new();
    facts.insert(
        "arch".into(),
        arch(std::env::consts::ARCH, root).to_string(),
    );
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            facts.insert(key.into(), v);
        }
    };
    put("cpus", cpus(root).map(|n| n.to_string()));
    put("memory_mb", memory_mb(root).map(|n| n.to_string()));
    put("model", model(root));
    put("os", os(root));
    put("kernel", kernel(root));
    // What people call the device; the dashboard lists it beside the id.
    put("hostname", read(root, "proc/sys/kernel/hostname"));
    for (class, dir, prefixes) in hardware::CLASSES {
        put(class, device_nodes(root, dir, prefixes));
    }
    put("w1_temperature", w1_temperature_sensors(root));
    facts
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .ok()
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        })
}

/// Docker's platform name for the running binary's architecture. 32-bit
/// arm is told apart by the CPU architecture in /proc/cpuinfo (v6 or v7).
pub fn arch(rust_arch: &str, root: &Path) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "riscv64" => "riscv64",
        "arm" => {
            let cpuinfo = read(root, "/proc/cpuinfo").unwrap_or_default();
            let v6 = cpuinfo
                .lines()
                .find(|l| l.starts_with("CPU architecture"))
                .and_then(|l| l.split(':').nth(1))
                .is_some_and(|v| v.trim() == "6");
            if v6 {
                "arm/v6"
            } else {
                "arm/v7"
            }
        }
        _ => "unknown",
    }
}

/// Online CPUs, from /sys/devices/system/cpu/online ("0-3,5").
pub fn cpus(root: &Path) -> Option<usize> {
    let online = read(root, "/sys/devices/system/cpu/online")?;
    let mut n = 0;
    for range in online.split(',').filter(|r| !r.is_empty()) {
        match range.split_once('-') {
            Some((a, b)) => {
                n += b.trim().parse::<usize>().ok()? - a.trim().parse::<usize>().ok()? + 1
            }
            None => {
                range.trim().parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

pub fn memory_mb(root: &Path) -> Option<u64> {
    let meminfo = read(root, "/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The board: the device tree's model (Raspberry Pis, most ARM boards),
/// else DMI's vendor and product (x86).
pub fn model(root: &Path) -> Option<String> {
    if let Some(m) = read(root, "/proc/device-tree/model")
        .or_else(|| read(root, "/sys/firmware/devicetree/base/model"))
    {
        return Some(clean(&m));
    }
    let vendor = read(root, "/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    let product = read(root, "/sys/class/dmi/id/product_name").unwrap_or_default();
    let both = format!("{vendor} {product}");
    let both = both.trim();
    (!both.is_empty()).then(|| clean(both))
}

/// `ID-VERSION_ID` from os-release, like `debian-12`.
pub fn os(root: &Path) -> Option<String> {
    let text = read(root, "/etc/os-release").or_else(|| read(root, "/usr/lib/os-release"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    let id = field("ID")?;
    Some(match field("VERSION_ID") {
        Some(v) => format!("{id}-{v}"),
        None => id,
    })
}

pub fn kernel(root: &Path) -> Option<String> {
    read(root, "/proc/sys/kernel/osrelease")
}

/// The device nodes of one class (see [`hardware::CLASSES`]): names in
/// `dir` with one of the prefixes, sorted, joined by '.', so a label value
/// lists them (`i2c-0.i2c-1`); USB nodes, a level down, as `BUS-DEV`.
/// They say what a service can be granted, so placement follows the
/// hardware as it is plugged in (facts are read on every pass).
fn device_nodes(root: &Path, dir: &str, prefixes: &[&str]) -> Option<String> {
    let names_in = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let base = root.join(dir.trim_start_matches('/'));
    let mut names: Vec<String> = if prefixes == [""] {
        names_in(&base)
            .into_iter()
            .flat_map(|bus| {
                names_in(&base.join(&bus))
                    .into_iter()
                    .map(move |dev| format!("{bus}-{dev}"))
            })
            .collect()
    } else {
        names_in(&base)
            .into_iter()
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
            .collect()
    };
    names.sort();
    // A label value holds at most 256 characters: keep whole names.
    let mut value = String::new();
    for name in names {
        if value.len() + name.len() + 1 > fogswarm_protocol::validate::MAX_LABEL_VALUE_LEN {
            break;
        }
        if !value.is_empty() {
            value.push('.');
        }
        value.push_str(&name);
    }
    (!value.is_empty()).then_some(value)
}

/// 1-Wire temperature sensors (DS18B20 family 28, DS18S20 family 10): how
/// many are on the bus.
pub fn w1_temperature_sensors(root: &Path) -> Option<String> {
    let count = std::fs::read_dir(root.join("sys/bus/w1/devices"))
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("28-") || n.starts_with("10-")
        })
        .count();
    (count > 0).then(|| count.to_string())
}

/// A label value: printable, bounded.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let p = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        dir
    }

    #[test]
    fn raspberry_pi_like_tree() {
        let t = tree(&[
            (
                "/proc/device-tree/model",
                "Raspberry Pi 4 Model B Rev 1.4\0",
            ),
            (
                "/proc/meminfo",
                "MemTotal:        3884328 kB\nMemFree: 1 kB\n",
            ),
            ("/sys/devices/system/cpu/online", "0-3\n"),
            (
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
            ),
            ("/proc/sys/kernel/osrelease", "6.1.0-rpi7-rpi-v8\n"),
            ("/dev/i2c-1", ""),
            ("/dev/i2c-0", ""),
            ("/dev/video0", ""),
            ("/dev/ttyUSB0", ""),
            ("/dev/ttyACM1", ""),
            ("/dev/tty1", ""),
            ("/dev/gpiochip0", ""),
            ("/dev/spidev0.1", ""),
            ("/dev/bus/usb/001/001", ""),
            ("/dev/bus/usb/001/004", ""),
            ("/sys/bus/w1/devices/28-0316a2794b2f/temperature", "21500"),
            ("/sys/bus/w1/devices/28-0416a2794b30/temperature", "21000"),
            ("/sys/bus/w1/devices/w1_bus_master1/x", ""),
        ]);
        let f = detect(t.path());
        assert_eq!(
            f.get("model").map(String::as_str),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(f.get("memory_mb").map(String::as_str), Some("3793"));
        assert_eq!(f.get("cpus").map(String::as_str), Some("4"));
        assert_eq!(f.get("os").map(String::as_str), Some("debian-12"));
        assert_eq!(
            f.get("kernel").map(String::as_str),
            Some("6.1.0-rpi7-rpi-v8")
        );
        assert_eq!(f.get("i2c").map(String::as_str), Some("i2c-0.i2c-1"));
        assert_eq!(f.get("video").map(String::as_str), Some("video0"));
        assert_eq!(f.get("serial").map(String::as_str), Some("ttyACM1.ttyUSB0"));
        assert_eq!(f.get("gpio").map(String::as_str), Some("gpiochip0"));
        assert_eq!(f.get("spi").map(String::as_str), Some("spidev0.1"));
        assert_eq!(f.get("usb").map(String::as_str), Some("001-001.001-004"));
        // What the server reads back from the facts is the nodes' paths.
        let usb = hardware::paths_of("usb", &f["usb"]);
        assert_eq!(usb, ["/dev/bus/usb/001/001", "/dev/bus/usb/001/004"]);
        assert_eq!(f.get("w1_temperature").map(String::as_str), Some("2"));
    }

    #[test]
    fn x86_box_without_peripherals() {
        let t = tree(&[
            ("/sys/class/dmi/id/sys_vendor", "Intel Corporation\n"),
            ("/sys/class/dmi/id/product_name", "NUC7i5BNH\n"),
            ("/sys/devices/system/cpu/online", "0-1,3\n"),
            ("/dev/null", ""),
        ]);
        let f = detect(t.path());
        assert_eq!(
            f.get("model").map(String::as_str),
            Some("Intel Corporation NUC7i5BNH")
        );
        assert_eq!(f.get("cpus").map(String::as_str), Some("3"));
        for absent in [
            "i2c",
            "video",
            "serial",
            "w1_temperature",
            "memory_mb",
            "os",
        ] {
            assert!(!f.contains_key(absent), "{absent} should be absent");
        }
    }

    #[test]
    fn facts_are_valid_label_values_and_keys() {
        let f = detect(Path::new("/"));
        for (k, v) in &f {
            fogswarm_protocol::validate::validate_label_key(&format!("fog.{k}")).expect("key");
            fogswarm_protocol::validate::validate_label_value(k, v).expect("value");
        }
        assert!(f.contains_key("arch"));
    }

    #[test]
    fn arch_names_are_docker_platforms() {
        let v6 = tree(&[("/proc/cpuinfo", "processor : 0\nCPU architecture: 6\n")]);
        let v7 = tree(&[("/proc/cpuinfo", "processor : 0\nCPU architecture: 7\n")]);
        assert_eq!(arch("arm", v6.path()), "arm/v6");
        assert_eq!(arch("arm", v7.path()), "arm/v7");
        assert_eq!(arch("aarch64", v7.path()), "arm64");
        assert_eq!(arch("x86_64", v7.path()), "amd64");
        assert_eq!(arch("x86", v7.path()), "386");
        assert_eq!(arch("riscv64", v7.path()), "riscv64");
    }

    #[test]
    fn bad_cpu_lists_give_nothing() {
        let t = tree(&[("/sys/devices/system/cpu/online", "garbage")]);
        assert_eq!(cpus(t.path()), None);
    }
}
