//! From Compose files on disk to one YAML tree, as `docker stack deploy`
//! prepares it: YAML anchors and merge keys resolved, `${VAR}`
//! interpolated from the environment and a `.env` beside the first file,
//! `x-` extension fields dropped, keys swarm ignores dropped with one
//! warning each, and several `-c` files merged in order.

use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;

/// Service keys swarm stacks do not use: accepted with a warning naming
/// each, as `docker stack deploy` does ("Ignoring unsupported options").
pub const IGNORED_SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cgroup",
    "cgroup_parent",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "develop",
    "domainname",
    "expose",
    "extends",
    "external_links",
    "ipc",
    "isolation",
    "links",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "platform",
    "post_start",
    "pre_stop",
    "profiles",
    "pull_policy",
    "restart",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// Keys under `deploy` swarm has no use for (or fogswarm does not pass on).
const IGNORED_DEPLOY_KEYS: &[(&str, &str)] = &[
    ("resources.reservations", "devices"),
    ("resources.reservations", "generic_resources"),
    ("update_config", "max_failure_ratio"),
    ("rollback_config", "max_failure_ratio"),
];

/// Top-level network keys swarm's overlay networks ignore here.
const IGNORED_NETWORK_KEYS: &[&str] = &["ipam", "enable_ipv6", "internal"];

/// One Compose file as read.
pub struct Source {
    pub path: String,
    pub text: String,
}

/// Loads and merges `sources`; answers the tree and the warnings.
pub fn load(
    sources: &[Source],
    env: &BTreeMap<String, String>,
) -> Result<(Value, Vec<String>), String> {
    let mut merged = Value::Null;
    let mut warnings = Vec::new();
    for source in sources {
        within_budget(&source.text).map_err(|e| format!("{}: {e}", source.path))?;
        let mut value: Value =
            serde_norway::from_str(&source.text).map_err(|e| match e.location() {
                Some(l) => format!("{}:{}:{}: {e}", source.path, l.line(), l.column()),
                None => format!("{}: {e}", source.path),
            })?;
        value
            .apply_merge()
            .map_err(|e| format!("{}: merge key: {e}", source.path))?;
        drop_extensions(&mut value);
        interpolate(&mut value, env, "").map_err(|e| format!("{}: {e}", source.path))?;
        normalise(&mut value);
        merged = merge(merged, value);
    }
    drop_ignored(&mut merged, &mut warnings);
    Ok((merged, warnings))
}

/// Values a Compose file may expand to, aliases followed: far above any
/// real stack, far below what hurts a server (a few MB).
pub const MAX_NODES: usize = 100_000;

/// Refuses a file whose aliases expand past [`MAX_NODES`] values (a
/// "billion laughs" of nested anchors), counting as the parser expands
/// and stopping there: nothing is built before the file is known small.
fn within_budget(text: &str) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    #[derive(Clone, Copy)]
    struct Budget<'a>(&'a Cell<usize>);

    impl Budget<'_> {
        fn spend<E: Error>(self) -> Result<(), E> {
            let used = self.0.get() + 1;
            self.0.set(used);
            if used > MAX_NODES {
                return Err(E::custom(format!(
                    "the file expands to more than {MAX_NODES} values (nested YAML aliases?)"
                )));
            }
            Ok(())
        }
    }

    impl<'de> DeserializeSeed<'de> for Budget<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    macro_rules! leaf {
        ($($name:ident: $t:ty),*) => {$(
            fn $name<E: Error>(self, _: $t) -> Result<(), E> { self.spend() }
        )*};
    }

    impl<'de> Visitor<'de> for Budget<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any YAML value")
        }
        leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            self.spend()
        }
        fn visit_none<E: Error>(self) -> Result<(), E> {
            self.spend()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.deserialize(d)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.spend()?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.spend()?;
            while map.next_key_seed(self)?.is_some() {
                map.next_value_seed(self)?;
            }
            Ok(())
        }
        fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            use serde::de::VariantAccess;
            let (_, variant) = data.variant_seed(self)?;
            variant.newtype_variant_seed(self)
        }
    }

    let used = Cell::new(0);
    match Budget(&used).deserialize(serde_norway::Deserializer::from_str(text)) {
        // A syntax error is the real parse's to report, with its place.
        Err(e) if used.get() > MAX_NODES => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Removes `x-` keys from every mapping: extension fields are for YAML
/// anchors and tools, never for the engine.
fn drop_extensions(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
            map.values_mut().for_each(drop_extensions);
        }
        Value::Sequence(items) => items.iter_mut().for_each(drop_extensions),
        _ => {}
    }
}

/// Replaces `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` in every
/// string value; `$$` is a literal `$`.
fn interpolate(
    value: &mut Value,
    env: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), String> {
    match value {
        Value::String(s) => {
            *s = interpolate_str(s, env).map_err(|e| {
                if path.is_empty() {
                    e
                } else {
                    format!("{path}: {e}")
                }
            })?
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().map(String::from).unwrap_or_default();
                let at = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate(v, env, &at)?;
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                interpolate(v, env, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn interpolate_str(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("{s:?}: unclosed ${{ in an interpolation"))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            out.push_str(&expand(expr, env, s)?);
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 {
                return Err(format!("{s:?}: a lone $ (write $$ for a dollar sign)"));
            }
            out.push_str(env.get(&rest[..len]).map(String::as_str).unwrap_or(""));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(expr: &str, env: &BTreeMap<String, String>, whole: &str) -> Result<String, String> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() {
        return Err(format!("{whole:?}: ${{{expr}}} names no variable"));
    }
    let value = env.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let own = || value.cloned().unwrap_or_default();
    Ok(match op {
        "" => own(),
        _ if op.starts_with(":-") => {
            if non_empty {
                own()
            } else {
                op[2..].to_string()
            }
        }
        _ if op.starts_with('-') => {
            if set {
                own()
            } else {
                op[1..].to_string()
            }
        }
        _ if op.starts_with(":+") => {
            if non_empty {
                op[2..].to_string()
            } else {
                String::new()
            }
        }
        _ if op.starts_with('+') => {
            if set {
                op[1..].to_string()
            } else {
                String::new()
            }
        }
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let unset_or_empty = if op.starts_with(':') {
                !non_empty
            } else {
                !set
            };
            if unset_or_empty {
                let message = op.trim_start_matches(':')[1..].to_string();
                return Err(format!(
                    "required variable {name} is not set: {}",
                    if message.is_empty() {
                        "no message"
                    } else {
                        &message
                    }
                ));
            }
            own()
        }
        _ => {
            return Err(format!(
                "{whole:?}: ${{{expr}}} is not a known interpolation"
            ))
        }
    })
}

/// Puts list forms that mean mappings (`environment`, `labels`,
/// `sysctls`, `extra_hosts`) into mappings, so files merge by key.
fn normalise(root: &mut Value) {
    let Some(services) = root.get_mut("services").and_then(Value::as_mapping_mut) else {
        return;
    };
    for service in services.values_mut() {
        let Some(service) = service.as_mapping_mut() else {
            continue;
        };
        for (key, sep) in [
            ("environment", '='),
            ("labels", '='),
            ("sysctls", '='),
            ("extra_hosts", ':'),
        ] {
            list_to_map(service.get_mut(key), sep);
        }
        if let Some(deploy) = service.get_mut("deploy").and_then(Value::as_mapping_mut) {
            list_to_map(deploy.get_mut("labels"), '=');
        }
    }
}

fn list_to_map(value: Option<&mut Value>, sep: char) {
    let Some(value) = value else { return };
    let Value::Sequence(items) = value else {
        return;
    };
    let mut map = Mapping::new();
    for item in items.iter() {
        let Some(text) = item.as_str() else { return };
        let (k, v) = match text.split_once(sep) {
            Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
            // `KEY` alone: from the environment at deploy, or empty.
            None => (text.to_string(), Value::Null),
        };
        map.insert(Value::String(k), v);
    }
    *value = Value::Mapping(map);
}

/// Docker's merge of a later file over an earlier one: mappings merge key
/// by key, lists of ports, volumes and the like add up (without
/// duplicates), and scalars and commands are replaced.
fn merge(base: Value, over: Value) -> Value {
    merge_at(base, over, "")
}

fn merge_at(base: Value, over: Value, key: &str) -> Value {
    const REPLACED: &[&str] = &["command", "entrypoint", "test"];
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let name = k.as_str().unwrap_or_default().to_string();
                let merged = match b.remove(&k) {
                    Some(existing) => merge_at(existing, v, &name),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (Value::Sequence(mut b), Value::Sequence(o)) if !REPLACED.contains(&key) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
            Value::Sequence(b)
        }
        (_, over) => over,
    }
}

fn drop_ignored(root: &mut Value, warnings: &mut Vec<String>) {
    if let Some(services) = root.get_mut("services").and_then(Value::as_mapping_mut) {
        for (name, service) in services.iter_mut() {
            let name = name.as_str().unwrap_or_default().to_string();
            let Some(service) = service.as_mapping_mut() else {
                continue;
            };
            let mut ignored: Vec<String> = Vec::new();
            service.retain(|k, _| {
                let key = k.as_str().unwrap_or_default();
                let drop = IGNORED_SERVICE_KEYS.contains(&key);
                if drop {
                    ignored.push(key.to_string());
                }
                !drop
            });
            if let Some(deploy) = service.get_mut("deploy") {
                for (parent, key) in IGNORED_DEPLOY_KEYS {
                    let mut node = Some(&mut *deploy);
                    for part in parent.split('.') {
                        node = node.and_then(|n| n.get_mut(part));
                    }
                    if let Some(map) = node.and_then(Value::as_mapping_mut) {
                        if map.remove(*key).is_some() {
                            ignored.push(format!("deploy.{parent}.{key}"));
                        }
                    }
                }
            }
            for key in ignored {
                warnings.push(format!("Ignoring unsupported option services.{name}.{key}"));
            }
        }
    }
    if let Some(networks) = root.get_mut("networks").and_then(Value::as_mapping_mut) {
        for (name, network) in networks.iter_mut() {
            let name = name.as_str().unwrap_or_default().to_string();
            if let Some(map) = network.as_mapping_mut() {
                for key in IGNORED_NETWORK_KEYS {
                    if map.remove(*key).is_some() {
                        warnings.push(format!("Ignoring unsupported option networks.{name}.{key}"));
                    }
                }
            }
        }
    }
}

/// The `file:line` where `key:` first appears, to point at a typo.
pub fn find_key(sources: &[Source], key: &str) -> Option<String> {
    for source in sources {
        for (i, line) in source.text.lines().enumerate() {
            let trimmed = line.trim_start().trim_start_matches("- ");
            let bare = trimmed
                .strip_prefix(key)
                .or_else(|| trimmed.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| trimmed.strip_prefix(&format!("'{key}'")));
            if bare.is_some_and(|rest| rest.trim_start().starts_with(':')) {
                return Some(format!("{}:{}", source.path, i + 1));
            }
        }
    }
    None
}

/// Reads a `.env` file: `KEY=VALUE` lines, `#` comments, optional quotes.
pub fn read_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {

    /// Nested aliases that would expand to ten million values are refused
    /// at once, having built nothing; ordinary anchors still work.
    #[test]
    fn an_alias_bomb_is_refused_and_anchors_still_work() {
        // Within serde_norway's own limit on alias jumps (a few thousand
        // here), but each jump copies a thousand values: ten million in all.
        let leaf = vec!["lol"; 1000].join(",");
        let mut bomb = format!("a: &a [{leaf}]\n");
        let names = ["a", "b", "c", "d", "e"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 10].join(",");
            bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        bomb.push_str("services: {}\n");
        let started = std::time::Instant::now();
        let sources = [Source {
            path: "bomb.yml".into(),
            text: bomb,
        }];
        let err = load(&sources, &BTreeMap::new()).expect_err("refused");
        assert!(
            err.contains("bomb.yml") && err.contains("nested YAML aliases"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let fine = [Source {
            path: "fine.yml".into(),
            text: "x-base: &base\n  image: a\n  environment: [A=1]\nservices:\n  one: *base\n  two:\n    <<: *base\n    image: b\n".into(),
        }];
        let (value, _) = load(&fine, &BTreeMap::new()).expect("anchors");
        assert_eq!(value["services"]["two"]["image"].as_str(), Some("b"));
        assert_eq!(value["services"]["one"]["image"].as_str(), Some("a"));
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation_as_compose_does_it() {
        let e = env(&[("TAG", "v2"), ("EMPTY", "")]);
        let i = |s: &str| interpolate_str(s, &e);
        assert_eq!(i("img:${TAG}").as_deref(), Ok("img:v2"));
        assert_eq!(i("img:$TAG-x").as_deref(), Ok("img:v2-x"));
        assert_eq!(i("${NOPE:-dflt}").as_deref(), Ok("dflt"));
        assert_eq!(i("${EMPTY:-dflt}").as_deref(), Ok("dflt"));
        assert_eq!(i("${EMPTY-dflt}").as_deref(), Ok(""));
        assert_eq!(i("${TAG:+set}").as_deref(), Ok("set"));
        assert_eq!(i("${NOPE+set}").as_deref(), Ok(""));
        assert_eq!(i("cost $$5").as_deref(), Ok("cost $5"));
        let err = i("${NOPE:?give me NOPE}").expect_err("required");
        assert!(
            err.contains("NOPE") && err.contains("give me NOPE"),
            "{err}"
        );
        assert!(i("${TAG").is_err());
        assert!(i("a $ b").is_err());
    }

    #[test]
    fn files_merge_anchors_resolve_extensions_go() {
        let a = Source {
            path: "a.yml".into(),
            text: r#"
x-common: &common
  image: reg/app:${TAG:-v1}
  environment: [A=1, B=2]
services:
  web:
    <<: *common
    ports: ["80:80"]
    build: .
    x-note: hello
"#
            .into(),
        };
        let b = Source {
            path: "b.yml".into(),
            text: "services:\n  web:\n    environment: {B: '3'}\n    ports: [\"443:443\"]\n    command: [serve]\n".into(),
        };
        let (value, warnings) = load(&[a, b], &env(&[])).expect("loads");
        let web = &value["services"]["web"];
        assert_eq!(web["image"], "reg/app:v1");
        assert_eq!(web["environment"]["A"], "1");
        assert_eq!(web["environment"]["B"], "3");
        assert_eq!(web["ports"].as_sequence().map(Vec::len), Some(2));
        assert!(web.get("x-note").is_none() && value.get("x-common").is_none());
        assert!(web.get("build").is_none());
        assert_eq!(warnings, ["Ignoring unsupported option services.web.build"]);
    }

    #[test]
    fn dotenv_and_key_lines() {
        let e = read_dotenv("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n");
        assert_eq!(e, env(&[("A", "1"), ("B", "two words"), ("C", "x")]));
        let sources = [Source {
            path: "s.yml".into(),
            text: "services:\n  web:\n    imgae: x\n".into(),
        }];
        assert_eq!(find_key(&sources, "imgae").as_deref(), Some("s.yml:3"));
    }
}
