//! The device's own measurements for each report (see
//! `fogswarm_protocol::telemetry`): a few files under /proc and /sys and
//! one statvfs, read from a root that is `/` on a device and a fake tree
//! in unit tests. CPU use needs two readings, so the sampler keeps the
//! previous one; the first report has none.

use fogswarm_protocol::telemetry::Telemetry;
use std::path::Path;

/// Reads telemetry; remembers the last CPU counters.
#[derive(Default)]
pub struct Sampler {
    /// (busy, total) jiffies at the previous sample.
    last_cpu: Option<(u64, u64)>,
}

impl Sampler {
    /// One sample. `engine_root` is where the engine keeps its data (its
    /// `DockerRootDir`), `containers_running` the engine's count.
    pub fn sample(
        &mut self,
        root: &Path,
        engine_root: Option<&str>,
        containers_running: Option<u64>,
    ) -> Telemetry {
        let cpu = read(root, "proc/stat").and_then(|s| cpu_counters(&s));
        let cpu_percent = match (self.last_cpu, cpu) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 && b1 >= b0 => {
                Some(round1(100.0 * (b1 - b0) as f64 / (t1 - t0) as f64))
            }
            _ => None,
        };
        self.last_cpu = cpu.or(self.last_cpu);
        let memory = read(root, "proc/meminfo").map(|s| memory_mb(&s));
        let disk = engine_root.and_then(|p| disk_mb(&root.join(p.trim_start_matches('/'))));
        Telemetry {
            cpu_percent,
            load: read(root, "proc/loadavg").and_then(|s| load(&s)),
            memory_used_mb: memory.and_then(|(used, _)| used),
            memory_total_mb: memory.and_then(|(_, total)| total),
            disk_free_mb: disk.map(|(free, _)| free),
            disk_total_mb: disk.map(|(_, total)| total),
            temperature_c: hottest_zone(root),
            uptime_secs: read(root, "proc/uptime")
                .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                .map(|u| u as u64),
            containers_running,
        }
    }
}

fn read(root: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join(file)).ok()
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// (busy, total) jiffies from the `cpu` line of /proc/stat: idle and
/// iowait are not busy.
fn cpu_counters(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (used, total) MiB from /proc/meminfo: used is total minus available,
/// as `free` counts it.
fn memory_mb(meminfo: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    let used = match (total, available) {
        (Some(t), Some(a)) => Some(t.saturating_sub(a) / 1024),
        _ => None,
    };
    (used, total.map(|t| t / 1024))
}

fn load(loadavg: &str) -> Option<[f64; 3]> {
    let mut it = loadavg.split_whitespace().map(|n| n.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The hottest of /sys/class/thermal/thermal_zone*/temp (millidegrees).
fn hottest_zone(root: &Path) -> Option<f64> {
    std::fs::read_dir(root.join("sys/class/thermal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<i64>().ok())
        .map(|m| round1(m as f64 / 1000.0))
        .filter(|c| (-100.0..=250.0).contains(c))
        .reduce(f64::max)
}

/// (free, total) MiB of the filesystem holding `path` (free as an
/// unprivileged writer sees it, like `df`'s "Avail").
fn disk_mb(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let mib = |blocks: u64| blocks.saturating_mul(stat.f_frsize) / (1024 * 1024);
    Some((mib(stat.f_bavail), mib(stat.f_blocks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_fake_device_reads_as_its_files_say() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "proc/stat",
            "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n",
        );
        write(
            root,
            "proc/meminfo",
            "MemTotal:        4096000 kB\nMemFree:  100 kB\nMemAvailable:    3072000 kB\n",
        );
        write(root, "proc/loadavg", "0.52 0.40 0.31 2/300 4242\n");
        write(root, "proc/uptime", "12345.67 20000.00\n");
        write(root, "sys/class/thermal/thermal_zone0/temp", "48250\n");
        write(root, "sys/class/thermal/thermal_zone1/temp", "51000\n");
        write(root, "sys/class/thermal/cooling_device0/temp", "99000\n");
        std::fs::create_dir_all(root.join("var/lib/docker")).expect("mkdir");
        let mut sampler = Sampler::default();
        let first = sampler.sample(root, Some("/var/lib/docker"), Some(3));
        assert_eq!(first.cpu_percent, None, "one reading gives no rate");
        assert_eq!(first.memory_total_mb, Some(4000));
        assert_eq!(first.memory_used_mb, Some(1000));
        assert_eq!(first.load, Some([0.52, 0.40, 0.31]));
        assert_eq!(first.uptime_secs, Some(12345));
        assert_eq!(first.temperature_c, Some(51.0), "the hottest zone");
        assert_eq!(first.containers_running, Some(3));
        let (free, total) = (
            first.disk_free_mb.expect("free"),
            first.disk_total_mb.expect("total"),
        );
        assert!(free <= total && total > 0);
        // 300 more jiffies, 100 of them busy: 33.3 %.
        write(root, "proc/stat", "cpu  150 0 150 900 100 0 0 0 0 0\n");
        let second = sampler.sample(root, None, None);
        assert_eq!(second.cpu_percent, Some(33.3));
        assert_eq!(second.disk_free_mb, None);
    }

    #[test]
    fn a_device_without_the_files_sends_nothing_rather_than_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Sampler::default().sample(dir.path(), Some("/nope"), None);
        assert_eq!(t, Telemetry::default());
    }
}
