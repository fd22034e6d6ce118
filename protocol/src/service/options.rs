//! Docker's option syntax, parsed once for the CLI, the server and the
//! agent: durations, memory sizes, CPUs, `--publish`, and enum names.

use super::*;
use std::fmt;

/// `spread=node.labels.KEY` (or `engine.labels.KEY`), the one placement
/// preference swarm has. Returns the descriptor.
pub fn parse_placement_pref(pref: &str) -> Result<&str, String> {
    let Some(descriptor) = pref.strip_prefix("spread=") else {
        return Err(format!(
            "placement preference {pref:?}: expected spread=node.labels.KEY"
        ));
    };
    let key = descriptor
        .strip_prefix("node.labels.")
        .or_else(|| descriptor.strip_prefix("engine.labels."));
    match key {
        Some(k) if !k.is_empty() => {
            crate::validate::validate_label_key(k).map_err(|e| e.message)?;
            Ok(descriptor)
        }
        _ => Err(format!(
            "placement preference {pref:?}: spread over node.labels.KEY or engine.labels.KEY"
        )),
    }
}

/// A Go-style duration (`1m30s`, `500ms`, `0s`) in nanoseconds, as Docker
/// accepts for update delays and restart windows.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "duration {s:?}: expected a number and a unit (ns, us, ms, s, m, h), like 10s or 1m30s"
        )
    };
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if total > 1e18 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(total as u64)
}

/// A memory size as Docker reads it (`512m`, `1G`, `1048576`, `64kb`):
/// binary multiples, case-insensitive, optional `b`. In bytes; at least
/// Docker's 4MiB minimum for container memory.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = parse_memory_any(s)?;
    if bytes < 4 * 1024 * 1024 {
        return Err(format!(
            "memory size {s:?} is below Docker's minimum of 4MiB"
        ));
    }
    Ok(bytes)
}

/// A size in Docker's notation without a minimum (tmpfs sizes).
pub fn parse_memory_any(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("memory size {s:?}: expected a number with an optional unit b, k, m, g (like 128M)")
    };
    let lower = s.trim().to_ascii_lowercase();
    let unit_at = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..unit_at].parse().map_err(|_| bad())?;
    let scale: f64 = match lower[unit_at..].trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    if lower[unit_at..].matches('b').count() > 1 {
        return Err(bad());
    }
    Ok((number * scale) as u64)
}

/// CPUs as a decimal (`0.5`, `2`), in Docker's nano-CPUs.
pub fn parse_nano_cpus(s: &str) -> Result<i64, String> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("CPUs {s:?}: expected a decimal number like 0.5"))?;
    if !(cpus > 0.0 && cpus <= 1024.0) {
        return Err(format!("CPUs {s:?}: must be above 0 and at most 1024"));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// Reads one of this module's enums by its wire name (`global`,
/// `on-failure`, `stop-first`): the serde renames are the one spelling the
/// API, the CLI's flags and Compose files share.
pub fn parse_name<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    use serde::de::{value::Error, IntoDeserializer};
    T::deserialize(IntoDeserializer::<Error>::into_deserializer(value)).map_err(|e| e.to_string())
}

/// `--publish` in Docker's short (`8080:80/udp`) or long
/// (`mode=host,published=8080,target=80,protocol=udp`) syntax; the short
/// form may be preceded by `mode=host,` as in `[mode=host,]8080:80`.
pub fn parse_publish(s: &str) -> Result<PortSpec, String> {
    let bad = |m: &str| format!("--publish {s:?}: {m}");
    let mut mode = PublishMode::default();
    let mut published = None;
    let mut target = None;
    let mut protocol = PortProtocol::default();
    let port = |v: &str| -> Result<u16, String> {
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!("port {v:?} is not 1 to 65535"))),
        }
    };
    let proto = |v: &str| parse_name(v).map_err(|e| bad(&format!("protocol: {e}")));
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("mode", v)) => mode = parse_name(v).map_err(|e| bad(&format!("mode: {e}")))?,
            Some(("published", v)) => published = Some(port(v)?),
            Some(("target", v)) => target = Some(port(v)?),
            Some(("protocol", v)) => protocol = proto(v)?,
            Some((k, _)) => {
                return Err(bad(&format!(
                    "unknown field {k:?}; expected mode, published, target or protocol"
                )))
            }
            None => {
                let (ports, p) = match part.split_once('/') {
                    Some((ports, p)) => (ports, proto(p)?),
                    None => (part, PortProtocol::Tcp),
                };
                let (pub_port, target_port) = ports
                    .split_once(':')
                    .ok_or_else(|| bad("expected PUBLISHED:TARGET[/PROTOCOL]"))?;
                published = Some(port(pub_port)?);
                target = Some(port(target_port)?);
                protocol = p;
            }
        }
    }
    Ok(PortSpec {
        published: published.ok_or_else(|| bad("no published port"))?,
        target: target.ok_or_else(|| bad("no target port"))?,
        protocol,
        mode,
    })
}

/// Permission bits written in octal (`0440`, `440`, `1777`).
pub fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode like 0440"))
}

/// Docker's comma-separated `key=value` option lists, as `--mount` and
/// `--secret` take them; a bare word is a key without a value.
fn csv_fields(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (p.trim(), None),
        })
}

fn bool_field(flag: &str, key: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("{flag}: {key}={v}: expected true or false")),
    }
}

/// `--mount` in Docker's long syntax:
/// `type=bind|volume|tmpfs,source=..,target=..[,readonly][,volume-driver=..]
/// [,volume-opt=K=V][,volume-label=K=V][,volume-nocopy][,bind-propagation=..]
/// [,tmpfs-size=..][,tmpfs-mode=..]`.
pub fn parse_mount(s: &str) -> Result<MountSpec, String> {
    let flag = format!("--mount {s:?}");
    let mut m = MountSpec::default();
    let mut target = None;
    for (key, value) in csv_fields(s) {
        let need = || value.ok_or_else(|| format!("{flag}: {key} needs a value"));
        match key {
            "type" => m.kind = parse_name(need()?).map_err(|e| format!("{flag}: type: {e}"))?,
            "source" | "src" => m.source = Some(need()?.to_string()).filter(|s| !s.is_empty()),
            "target" | "destination" | "dst" => target = Some(need()?.to_string()),
            "readonly" | "ro" => m.read_only = bool_field(&flag, key, value)?,
            "consistency" => {} // macOS only; Linux engines ignore it too
            "bind-propagation" => m.bind_propagation = Some(need()?.to_string()),
            "volume-driver" => m.volume_driver = Some(need()?.to_string()),
            "volume-nocopy" => m.volume_nocopy = bool_field(&flag, key, value)?,
            "volume-opt" | "volume-label" => {
                let (k, v) = need()?
                    .split_once('=')
                    .ok_or_else(|| format!("{flag}: {key} expects KEY=VALUE"))?;
                let map = if key == "volume-opt" {
                    &mut m.volume_options
                } else {
                    &mut m.volume_labels
                };
                map.insert(k.to_string(), v.to_string());
            }
            "tmpfs-size" => m.tmpfs_size = Some(need()?.to_string()),
            "tmpfs-mode" => m.tmpfs_mode = Some(parse_octal(need()?).map_err(|e| format!("{flag}: {e}"))?),
            other => {
                return Err(format!(
                    "{flag}: unknown field {other:?}; expected type, source, target, readonly, bind-propagation, volume-driver, volume-opt, volume-label, volume-nocopy, tmpfs-size or tmpfs-mode"
                ))
            }
        }
    }
    m.target = target.ok_or_else(|| format!("{flag}: no target"))?;
    Ok(m)
}

/// `--secret` / `--config`: `NAME` or
/// `source=NAME[,target=PATH][,uid=N][,gid=N][,mode=0440]`.
pub fn parse_file_ref(flag: &str, s: &str) -> Result<FileRef, String> {
    let flag = format!("{flag} {s:?}");
    if !s.contains('=') {
        return Ok(FileRef {
            source: s.to_string(),
            ..Default::default()
        });
    }
    let mut r = FileRef::default();
    for (key, value) in csv_fields(s) {
        let value = value
            .ok_or_else(|| format!("{flag}: {key} needs a value"))?
            .to_string();
        match key {
            "source" | "src" => r.source = value,
            "target" => r.target = Some(value),
            "uid" => r.uid = Some(value),
            "gid" => r.gid = Some(value),
            "mode" => r.mode = Some(parse_octal(&value).map_err(|e| format!("{flag}: {e}"))?),
            other => {
                return Err(format!(
                    "{flag}: unknown field {other:?}; expected source, target, uid, gid or mode"
                ))
            }
        }
    }
    if r.source.is_empty() {
        return Err(format!("{flag}: no source"));
    }
    Ok(r)
}

/// `--ulimit NAME=SOFT[:HARD]` (-1 for unlimited).
pub fn parse_ulimit(s: &str) -> Result<Ulimit, String> {
    let bad = || format!("--ulimit {s:?}: expected NAME=SOFT[:HARD], like nofile=1024:2048");
    let (name, limits) = s.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    Ok(Ulimit {
        name: name.to_string(),
        soft: soft.parse().map_err(|_| bad())?,
        hard: hard.parse().map_err(|_| bad())?,
    })
}

/// Splits a command line the way a POSIX shell splits words (quotes and
/// backslashes, no expansion), as Docker splits `--entrypoint` and Compose
/// a `command:` string.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("{line:?}: unclosed single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("{line:?}: unclosed double quote")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("{line:?}: unclosed double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("{line:?}: ends with a backslash")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        };
        let mode = match self.mode {
            PublishMode::Host => "host",
            PublishMode::Ingress => "ingress",
        };
        write!(f, "{mode}:{}->{}/{proto}", self.published, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(10_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        for bad in ["", "10", "s", "10x", "1m-3s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("128M"), Ok(128 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("64mb"), Ok(64 << 20));
        assert_eq!(parse_memory("8388608"), Ok(8 << 20));
        for bad in ["", "12x", "1M extra", "1kbb", "1k"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_the_wire_spelling() {
        assert_eq!(parse_name("on-failure"), Ok(RestartCondition::OnFailure));
        assert_eq!(parse_name("start-first"), Ok(UpdateOrder::StartFirst));
        assert_eq!(parse_name("global"), Ok(ServiceMode::Global));
        let e = parse_name::<ServiceMode>("everywhere").expect_err("refused");
        assert!(e.contains("everywhere") && e.contains("global"), "{e}");
    }

    #[test]
    fn mounts_secrets_ulimits() {
        let m = parse_mount("type=volume,source=data,target=/data,volume-driver=local,volume-opt=type=tmpfs,volume-nocopy").expect("mount");
        assert_eq!(m.kind, MountType::Volume);
        assert_eq!(m.source.as_deref(), Some("data"));
        assert_eq!(
            m.volume_options.get("type").map(String::as_str),
            Some("tmpfs")
        );
        assert!(m.volume_nocopy && !m.read_only);
        let m = parse_mount("type=bind,src=/srv,dst=/srv,readonly").expect("bind");
        assert!(m.read_only && m.kind == MountType::Bind);
        let m = parse_mount("type=tmpfs,target=/tmp,tmpfs-size=1m,tmpfs-mode=1777").expect("tmpfs");
        assert_eq!(m.tmpfs_mode, Some(0o1777));
        for bad in [
            "type=nfs,target=/x",
            "source=x",
            "type=bind,target=/x,readonly=maybe",
            "target=/x,colour=red",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        let r = parse_file_ref("--secret", "source=db,target=pw,uid=10,mode=0400").expect("ref");
        assert_eq!(
            (r.target.as_deref(), r.uid.as_deref(), r.mode),
            (Some("pw"), Some("10"), Some(0o400))
        );
        assert_eq!(
            parse_file_ref("--config", "cfg").expect("short").source,
            "cfg"
        );
        assert!(parse_file_ref("--secret", "target=x").is_err());
        assert!(parse_file_ref("--secret", "source=x,mode=9").is_err());
        assert_eq!(
            parse_ulimit("nofile=1024:2048").map(|u| (u.soft, u.hard)),
            Ok((1024, 2048))
        );
        assert_eq!(parse_ulimit("core=-1").map(|u| u.hard), Ok(-1));
        assert!(parse_ulimit("nofile").is_err());
        assert_eq!(parse_host_entry("db:10.0.0.2").map(|(h, _)| h), Ok("db"));
        assert!(parse_host_entry("db:nowhere").is_err());
    }

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(
            split_command(r#"sh -c 'echo "a b"' "c d" e\ f"#),
            Ok(vec![
                "sh".into(),
                "-c".into(),
                "echo \"a b\"".into(),
                "c d".into(),
                "e f".into()
            ])
        );
        assert_eq!(split_command("  "), Ok(vec![]));
        assert_eq!(split_command("''"), Ok(vec![String::new()]));
        assert!(split_command("echo 'open").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert!(parse_nano_cpus("0").is_err());
        assert!(parse_nano_cpus("half").is_err());
    }

    #[test]
    fn publish_short_and_long() {
        assert_eq!(
            parse_publish("mode=host,8080:80"),
            Ok(PortSpec {
                published: 8080,
                target: 80,
                protocol: PortProtocol::Tcp,
                mode: PublishMode::Host
            })
        );
        assert_eq!(
            parse_publish("9000:90/udp").map(|p| (p.protocol, p.mode)),
            Ok((PortProtocol::Udp, PublishMode::Host))
        );
        assert_eq!(
            parse_publish("mode=ingress,published=1,target=2,protocol=sctp").map(|p| (
                p.published,
                p.target,
                p.protocol,
                p.mode
            )),
            Ok((1, 2, PortProtocol::Sctp, PublishMode::Ingress))
        );
        for bad in [
            "80",
            "0:80",
            "a:80",
            "80:80/icmp",
            "mode=x,1:2",
            "foo=1",
            "target=1",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
