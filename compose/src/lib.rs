//! Compose files as `docker stack deploy` reads them, turned into
//! service specs plus the secrets and configs the stack brings: every key
//! swarm honours, at the same versions. Keys swarm ignores are dropped
//! with a warning each (see [`yaml`]); any other unknown key, a typo, is
//! refused by name with its line.
//!
//! As `docker stack deploy` does, services, networks, volumes, secrets and
//! configs are named `STACK_NAME` (external ones keep their names), a
//! service without networks joins `STACK_default`, and each service is
//! reachable by its short name on its networks.

mod model;
pub mod yaml;

use model::*;

use fogswarm_protocol::secret::FileKind;
use fogswarm_protocol::service::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a stack deploy sends: the services, and the secrets and configs
/// the file defines (written to the server before the services).
#[derive(Debug, Default)]
pub struct Project {
    pub services: Vec<ServiceSpec>,
    pub files: Vec<StackFile>,
    pub warnings: Vec<String>,
}

/// A secret or config defined by the stack's file (`file:`,
/// `environment:` or `content:`); external ones must exist already.
#[derive(Debug)]
pub struct StackFile {
    pub kind: FileKind,
    pub name: String,
    pub data: Vec<u8>,
}

/// Where the files of a stack are: their directory anchors `file:`,
/// `env_file` and `.env`.
pub struct Input {
    pub sources: Vec<yaml::Source>,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Whether `file:` secrets and configs and `env_file` may be read: not
    /// for a file pasted into the server's dashboard, which must never
    /// read the server's own files.
    pub reads_files: bool,
}

impl Input {
    /// Reads the files and the environment: this process's variables over
    /// a `.env` beside the first file.
    pub fn read(paths: &[PathBuf]) -> Result<Input, String> {
        let mut sources = Vec::new();
        for p in paths {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            sources.push(yaml::Source {
                path: p.display().to_string(),
                text,
            });
        }
        let dir = paths
            .first()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut env = match std::fs::read_to_string(dir.join(".env")) {
            Ok(text) => yaml::read_dotenv(&text),
            Err(_) => BTreeMap::new(),
        };
        env.extend(std::env::vars());
        Ok(Input {
            sources,
            dir,
            env,
            reads_files: true,
        })
    }
}

impl Input {
    /// One file's text with nothing beside it (no directory for `file:` or
    /// `env_file`, no environment): a stack pasted into the dashboard.
    pub fn pasted(text: &str) -> Input {
        Input {
            sources: vec![yaml::Source {
                path: "compose file".into(),
                text: text.into(),
            }],
            dir: PathBuf::new(),
            env: BTreeMap::new(),
            reads_files: false,
        }
    }
}

/// A pasted Compose file's size at most: a real stack is a few KiB.
pub const MAX_PASTED_BYTES: usize = 256 * 1024;

/// The refusal for a file read asked of a pasted Compose file.
fn no_files(at: &str) -> String {
    format!("{at}: a pasted Compose file cannot read files; deploy it with `fogswarm stack deploy`")
}

/// Reads a Compose file text into the specs of stack `stack` (no files or
/// environment beside it): for tests and simple uses.
pub fn parse(text: &str, stack: &str) -> Result<Vec<ServiceSpec>, String> {
    Ok(load(&Input::pasted(text), stack)?.services)
}

/// The whole stack: services, its secrets and configs, and warnings.
pub fn load(input: &Input, stack: &str) -> Result<Project, String> {
    if !input.reads_files {
        for source in &input.sources {
            if source.text.len() > MAX_PASTED_BYTES {
                return Err(format!(
                    "{}: {} bytes; a pasted Compose file may have at most {MAX_PASTED_BYTES}",
                    source.path,
                    source.text.len()
                ));
            }
        }
    }
    let (value, warnings) = yaml::load(&input.sources, &input.env)?;
    let file: ComposeFile = serde_norway::from_value(value).map_err(|e| {
        let message = e.to_string();
        let at = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field") || message.contains("unknown field"))
            .and_then(|key| yaml::find_key(&input.sources, key));
        match at {
            Some(at) => format!("{at}: {message}"),
            None => message,
        }
    })?;
    if file.services.is_empty() {
        return Err("the file has no services".into());
    }
    let mut project = Project {
        warnings,
        ..Default::default()
    };
    let names = StackNames::new(&file, stack)?;
    for (kind, defs) in [
        (FileKind::Secret, &file.secrets),
        (FileKind::Config, &file.configs),
    ] {
        // As Docker does, only those a service uses are read and created.
        let used: std::collections::BTreeSet<&str> = file
            .services
            .values()
            .flat_map(|s| match kind {
                FileKind::Secret => &s.secrets,
                FileKind::Config => &s.configs,
            })
            .map(|u| match u {
                FileUse::Short(key) => key.as_str(),
                FileUse::Long(l) => l.source.as_str(),
            })
            .collect();
        for (key, def) in defs.iter().filter(|(k, _)| used.contains(k.as_str())) {
            if let Some(data) = file_data(kind, key, def, input)? {
                project.files.push(StackFile {
                    kind,
                    name: names.file(kind, key)?,
                    data,
                });
            }
        }
    }
    for (short, service) in &file.services {
        let spec = service_spec(short, service, stack, &names, &file, input)
            .map_err(|m| format!("services.{short}.{m}"))?;
        project.services.push(spec);
    }
    Ok(project)
}

/// The names the stack's objects get in the swarm.
struct StackNames<'a> {
    stack: &'a str,
    file: &'a ComposeFile,
}

impl<'a> StackNames<'a> {
    fn new(file: &'a ComposeFile, stack: &'a str) -> Result<Self, String> {
        for (name, net) in &file.networks {
            let net = net.as_ref();
            if let Some(driver) = net.and_then(|n| n.driver.as_deref()) {
                if driver != "overlay" {
                    return Err(format!(
                        "networks.{name}.driver: {driver:?} is not supported; stacks use overlay networks"
                    ));
                }
            }
            if net.and_then(|n| n.attachable) == Some(false) {
                return Err(format!(
                    "networks.{name}.attachable: fogswarm creates attachable overlay networks only"
                ));
            }
        }
        Ok(StackNames { stack, file })
    }

    fn network(&self, n: &str) -> Result<String, String> {
        match self.file.networks.get(n) {
            Some(Some(net)) if External::is_external(&net.external) => Ok(net
                .name
                .clone()
                .or_else(|| External::name(&net.external))
                .unwrap_or_else(|| n.into())),
            Some(Some(Network {
                name: Some(name), ..
            })) => Ok(name.clone()),
            Some(_) => Ok(format!("{}_{n}", self.stack)),
            None if n == "default" => Ok(format!("{}_default", self.stack)),
            None => Err(format!(
                "networks: network {n:?} is not declared under the top-level networks key"
            )),
        }
    }

    fn volume(&self, v: &str) -> Result<(String, Option<&Volume>), String> {
        match self.file.volumes.get(v) {
            Some(Some(vol)) if External::is_external(&vol.external) => Ok((
                vol.name
                    .clone()
                    .or_else(|| External::name(&vol.external))
                    .unwrap_or_else(|| v.into()),
                None,
            )),
            Some(Some(vol)) => Ok((
                vol.name
                    .clone()
                    .unwrap_or_else(|| format!("{}_{v}", self.stack)),
                Some(vol),
            )),
            Some(None) => Ok((format!("{}_{v}", self.stack), None)),
            None => Err(format!(
                "volumes: volume {v:?} is not declared under the top-level volumes key"
            )),
        }
    }

    fn file(&self, kind: FileKind, key: &str) -> Result<String, String> {
        let defs = match kind {
            FileKind::Secret => &self.file.secrets,
            FileKind::Config => &self.file.configs,
        };
        let def = defs.get(key).ok_or_else(|| {
            format!(
                "{}: {} {key:?} is not declared under the top-level {} key",
                kind.plural(),
                kind.as_str(),
                kind.plural()
            )
        })?;
        Ok(match (&def.name, External::is_external(&def.external)) {
            (Some(name), _) => name.clone(),
            (None, true) => External::name(&def.external).unwrap_or_else(|| key.to_string()),
            (None, false) => format!("{}_{key}", self.stack),
        })
    }
}

/// The value a top-level secret or config brings, or None when external.
fn file_data(
    kind: FileKind,
    key: &str,
    def: &FileDef,
    input: &Input,
) -> Result<Option<Vec<u8>>, String> {
    let at = format!("{}.{key}", kind.plural());
    let given = [
        def.file.is_some(),
        def.environment.is_some(),
        def.content.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if External::is_external(&def.external) {
        if given > 0 {
            return Err(format!(
                "{at}: an external {} has no file, environment or content",
                kind.as_str()
            ));
        }
        return Ok(None);
    }
    if given != 1 {
        return Err(format!(
            "{at}: give exactly one of file, environment{} or external",
            if kind == FileKind::Config {
                ", content"
            } else {
                ""
            }
        ));
    }
    if let Some(path) = &def.file {
        if !input.reads_files {
            return Err(no_files(&format!("{at}.file")));
        }
        let path = input.dir.join(path);
        return std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("{at}.file: reading {}: {e}", path.display()));
    }
    if let Some(var) = &def.environment {
        return input
            .env
            .get(var)
            .map(|v| Some(v.clone().into_bytes()))
            .ok_or_else(|| format!("{at}.environment: {var} is not set"));
    }
    if kind == FileKind::Secret {
        return Err(format!(
            "{at}.content: secrets take a file or an environment variable, not inline content"
        ));
    }
    Ok(def.content.clone().map(String::into_bytes))
}

fn scalar_map(map: &BTreeMap<String, Option<Scalar>>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(Scalar::text).unwrap_or_default()))
        .collect()
}

fn service_spec(
    short: &str,
    service: &Service,
    stack: &str,
    names: &StackNames<'_>,
    file: &ComposeFile,
    input: &Input,
) -> Result<ServiceSpec, String> {
    let image = service.image.clone().ok_or_else(|| {
        "image: swarm services need an image (build is not used by stacks)".to_string()
    })?;
    let mut spec = ServiceSpec::new(format!("{stack}_{short}"), image);
    spec.stack = Some(stack.to_string());
    spec.hostname = service.hostname.clone();
    if let Some(c) = &service.command {
        spec.command = c.words().map_err(|m| format!("command: {m}"))?;
    }
    if let Some(e) = &service.entrypoint {
        spec.entrypoint = e.words().map_err(|m| format!("entrypoint: {m}"))?;
    }
    let deploy = &service.deploy;
    spec.mode = deploy.mode.unwrap_or_default();
    spec.replicas = deploy.replicas;
    spec.endpoint_mode = deploy.endpoint_mode.unwrap_or_default();
    spec.labels = scalar_map(&deploy.labels);
    spec.constraints = deploy.placement.constraints.clone();
    spec.placement_prefs = deploy
        .placement
        .preferences
        .iter()
        .map(|p| format!("spread={}", p.spread))
        .collect();
    spec.max_replicas = deploy.placement.max_replicas_per_node;
    if let Some(u) = &deploy.update_config {
        spec.update = u.policy();
    }
    spec.rollback = deploy.rollback_config.as_ref().map(UpdateConfig::policy);
    let r = &deploy.resources;
    spec.resources = Resources {
        limit_cpus: r.limits.cpus.as_ref().map(Scalar::text),
        limit_memory: r.limits.memory.as_ref().map(Scalar::text),
        reserve_cpus: r.reservations.cpus.as_ref().map(Scalar::text),
        reserve_memory: r.reservations.memory.as_ref().map(Scalar::text),
        limit_pids: r.limits.pids.or(service.pids_limit),
    };
    if let Some(rp) = &deploy.restart_policy {
        spec.restart = RestartPolicy {
            condition: rp.condition.unwrap_or_default(),
            delay: rp.delay.clone(),
            max_attempts: rp.max_attempts,
            window: rp.window.clone(),
        };
    } else if spec.mode.is_job() {
        spec.restart.condition = RestartCondition::OnFailure;
    }
    for port in &service.ports {
        spec.ports
            .push(port_spec(port).map_err(|m| format!("ports: {m}"))?);
    }
    // Networks, with aliases and the driver options of those the stack
    // creates.
    let networks: Vec<(String, Vec<String>)> = match &service.networks {
        None => vec![("default".into(), vec![])],
        Some(ServiceNetworks::List(list)) => list.iter().map(|n| (n.clone(), vec![])).collect(),
        Some(ServiceNetworks::Map(map)) => map
            .iter()
            .map(|(n, o)| {
                (
                    n.clone(),
                    o.as_ref().map(|o| o.aliases.clone()).unwrap_or_default(),
                )
            })
            .collect(),
    };
    for (n, aliases) in networks {
        let name = names.network(&n)?;
        if !aliases.is_empty() {
            spec.network_aliases.insert(name.clone(), aliases);
        }
        if let Some(Some(net)) = file.networks.get(&n) {
            if !net.driver_opts.is_empty() && !External::is_external(&net.external) {
                spec.network_options.insert(
                    name.clone(),
                    net.driver_opts
                        .iter()
                        .map(|(k, v)| (k.clone(), v.text()))
                        .collect(),
                );
            }
        }
        spec.networks.push(name);
    }
    // env_file first, environment over it, as Compose does.
    let env_files: Vec<(String, bool)> = match &service.env_file {
        None => vec![],
        Some(EnvFiles::One(p)) => vec![(p.clone(), true)],
        Some(EnvFiles::Many(list)) => list
            .iter()
            .map(|f| match f {
                EnvFile::Path(p) => (p.clone(), true),
                EnvFile::Long { path, required } => (path.clone(), *required),
            })
            .collect(),
    };
    for (path, required) in env_files {
        if !input.reads_files {
            return Err(no_files("env_file"));
        }
        let full = input.dir.join(&path);
        match std::fs::read_to_string(&full) {
            Ok(text) => spec.env.extend(yaml::read_dotenv(&text)),
            Err(_) if !required => {}
            Err(e) => return Err(format!("env_file: reading {}: {e}", full.display())),
        }
    }
    for (k, v) in &service.environment {
        // `KEY` without a value takes it from the deploying shell.
        let value = match v {
            Some(v) => v.text(),
            None => input.env.get(k).cloned().unwrap_or_default(),
        };
        spec.env.insert(k.clone(), value);
    }
    spec.container_labels = scalar_map(&service.labels);
    for (i, v) in service.volumes.iter().enumerate() {
        spec.mounts
            .push(mount(v, names, input).map_err(|m| format!("volumes[{i}]: {m}"))?);
    }
    for t in service.tmpfs.iter().flat_map(OneOrMany::list) {
        let (target, size) = match t.split_once(':') {
            Some((target, opts)) => (
                target.to_string(),
                opts.split(',')
                    .find_map(|o| o.strip_prefix("size="))
                    .map(String::from),
            ),
            None => (t.clone(), None),
        };
        spec.mounts.push(MountSpec {
            kind: MountType::Tmpfs,
            target,
            tmpfs_size: size,
            ..Default::default()
        });
    }
    for (kind, uses, out) in [
        (FileKind::Secret, &service.secrets, &mut spec.secrets),
        (FileKind::Config, &service.configs, &mut spec.configs),
    ] {
        for (i, u) in uses.iter().enumerate() {
            let at = |m: String| format!("{}[{i}]: {m}", kind.plural());
            out.push(match u {
                FileUse::Short(key) => FileRef {
                    source: names.file(kind, key).map_err(at)?,
                    target: Some(if kind == FileKind::Secret {
                        key.clone()
                    } else {
                        format!("/{key}")
                    }),
                    ..Default::default()
                },
                FileUse::Long(l) => FileRef {
                    source: names.file(kind, &l.source).map_err(at)?,
                    target: Some(l.target.clone().unwrap_or_else(|| {
                        if kind == FileKind::Secret {
                            l.source.clone()
                        } else {
                            format!("/{}", l.source)
                        }
                    })),
                    uid: l.uid.as_ref().map(Scalar::text),
                    gid: l.gid.as_ref().map(Scalar::text),
                    mode: l.mode.as_ref().map(Scalar::mode).transpose().map_err(at)?,
                },
            });
        }
    }
    if let Some(h) = &service.healthcheck {
        spec.healthcheck = Some(if h.disable {
            Healthcheck {
                test: vec!["NONE".into()],
                ..Default::default()
            }
        } else {
            Healthcheck {
                test: match &h.test {
                    None => vec![],
                    // A string is a shell command, as CMD-SHELL.
                    Some(Words::Line(l)) => vec!["CMD-SHELL".into(), l.clone()],
                    Some(w) => w.words().map_err(|m| format!("healthcheck.test: {m}"))?,
                },
                interval: h.interval.clone(),
                timeout: h.timeout.clone(),
                retries: h.retries,
                start_period: h.start_period.clone(),
            }
        });
    }
    spec.user = service.user.as_ref().map(Scalar::text);
    spec.groups = service.group_add.iter().map(Scalar::text).collect();
    spec.workdir = service.working_dir.clone();
    for (i, d) in service.devices.iter().enumerate() {
        let text = match d {
            ComposeDevice::Short(s) => s.clone(),
            ComposeDevice::Long {
                source,
                target,
                permissions,
            } => [Some(source), target.as_ref(), permissions.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(":"),
        };
        spec.devices.push(
            fogswarm_protocol::hardware::parse_device(&text)
                .map_err(|m| format!("devices[{i}]: {m}"))?,
        );
    }
    spec.device_cgroup_rules = service.device_cgroup_rules.clone();
    spec.privileged = service.privileged;
    spec.cap_add = service.cap_add.clone();
    spec.cap_drop = service.cap_drop.clone();
    spec.sysctls = scalar_map(&service.sysctls);
    for (name, u) in &service.ulimits {
        let (soft, hard) = match u {
            ComposeUlimit::Single(n) => (*n, *n),
            ComposeUlimit::Pair { soft, hard } => (*soft, *hard),
        };
        spec.ulimits.push(Ulimit {
            name: name.clone(),
            soft,
            hard,
        });
    }
    spec.init = service.init;
    spec.read_only = service.read_only;
    spec.tty = service.tty;
    spec.stop_grace_period = service.stop_grace_period.clone();
    spec.stop_signal = service.stop_signal.clone();
    spec.dns = service.dns.iter().flat_map(OneOrMany::list).collect();
    spec.dns_search = service
        .dns_search
        .iter()
        .flat_map(OneOrMany::list)
        .collect();
    spec.dns_options = service.dns_opt.clone();
    spec.hosts = scalar_map(&service.extra_hosts)
        .into_iter()
        .map(|(host, ip)| format!("{host}:{ip}"))
        .collect();
    if let Some(l) = &service.logging {
        if let Some(driver) = &l.driver {
            spec.log_driver = Some(LogDriver {
                name: driver.clone(),
                options: l
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.text()))
                    .collect(),
            });
        }
    }
    spec.validate()
        .map_err(|e| format!("{}: {}", e.field, e.message))?;
    Ok(spec)
}

/// A service's `volumes:` entry in the short (`SRC:DST[:MODE]`) or long
/// syntax; named volumes take the stack's prefix and their top-level
/// driver and options.
fn mount(v: &ServiceVolume, names: &StackNames<'_>, input: &Input) -> Result<MountSpec, String> {
    let named = |m: &mut MountSpec, source: &str| -> Result<(), String> {
        let (name, def) = names.volume(source)?;
        m.source = Some(name);
        if let Some(def) = def {
            m.volume_driver = def.driver.clone();
            m.volume_options = def
                .driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.text()))
                .collect();
            m.volume_labels = def
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.text()))
                .collect();
        }
        Ok(())
    };
    let is_path = |s: &str| s.starts_with(['/', '.', '~']);
    match v {
        ServiceVolume::Short(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            let mut m = MountSpec::default();
            match parts.as_slice() {
                [target] => {
                    m.kind = MountType::Volume;
                    m.target = target.to_string();
                }
                [source, target, ..] => {
                    m.target = target.to_string();
                    if is_path(source) {
                        m.kind = MountType::Bind;
                        m.source = Some(host_path(source, input));
                    } else {
                        m.kind = MountType::Volume;
                        named(&mut m, source)?;
                    }
                }
                [] => return Err("empty volume".into()),
            }
            if let Some(modes) = parts.get(2) {
                for mode in modes.split(',') {
                    match mode {
                        "ro" => m.read_only = true,
                        "rw" | "z" | "Z" | "cached" | "delegated" | "consistent" => {}
                        "nocopy" => m.volume_nocopy = true,
                        p
                        @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave") => {
                            m.bind_propagation = Some(p.to_string())
                        }
                        other => return Err(format!("{text:?}: unknown mode {other:?}")),
                    }
                }
            }
            if parts.len() > 3 {
                return Err(format!("{text:?}: expected [SOURCE:]TARGET[:MODE]"));
            }
            Ok(m)
        }
        ServiceVolume::Long(l) => {
            let mut m = MountSpec {
                kind: l.kind,
                target: l.target.clone(),
                read_only: l.read_only,
                ..Default::default()
            };
            match (l.kind, &l.source) {
                (MountType::Volume, Some(s)) => named(&mut m, s)?,
                (MountType::Bind, Some(s)) => m.source = Some(host_path(s, input)),
                (_, source) => m.source = source.clone(),
            }
            if let Some(b) = &l.bind {
                m.bind_propagation = b.propagation.clone();
            }
            if let Some(v) = &l.volume {
                m.volume_nocopy = v.nocopy;
            }
            if let Some(t) = &l.tmpfs {
                m.tmpfs_size = t.size.as_ref().map(Scalar::text);
                m.tmpfs_mode = t.mode.as_ref().map(Scalar::mode).transpose()?;
            }
            Ok(m)
        }
    }
}

/// A bind source as `docker stack deploy` resolves it: relative to the
/// Compose file's directory, `~` to the deploying user's home. (The path
/// must then exist on the devices; Docker does the same.)
fn host_path(source: &str, input: &Input) -> String {
    if let Some(rest) = source.strip_prefix('~') {
        let home = input.env.get("HOME").cloned().unwrap_or_default();
        return format!("{home}{rest}");
    }
    // Absolute, or relative with no file's directory to anchor it (left
    // as written: the spec's check refuses it by name).
    if source.starts_with('/') || !input.reads_files {
        return source.to_string();
    }
    let dir = std::path::absolute(&input.dir).unwrap_or_else(|_| input.dir.clone());
    let joined = dir.join(source);
    // Lexically drop `.` parts; `..` stays for the engine to resolve.
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect::<PathBuf>()
        .display()
        .to_string()
}

fn port_spec(port: &Port) -> Result<PortSpec, String> {
    match port {
        Port::Short(s) => parse_publish(&s.text()),
        Port::Long(l) => Ok(PortSpec {
            target: l.target,
            published: match &l.published {
                Some(p) => p
                    .text()
                    .parse()
                    .map_err(|_| format!("published port {:?} is not a number", p.text()))?,
                None => {
                    return Err(format!(
                        "port {}: fogswarm publishes in host mode and needs a published port",
                        l.target
                    ))
                }
            },
            protocol: l.protocol,
            mode: l.mode,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
version: "3.8"
services:
  api:
    image: reg:5000/fog-hello:v1
    networks: [backend]
    environment:
      PORT: 8080
      MODE: fast
    deploy:
      replicas: 2
      placement:
        constraints: ["node.labels.location==hall1"]
        preferences:
          - spread: node.labels.location
      update_config: {parallelism: 1, delay: 2s, failure_action: rollback}
      resources:
        limits: {cpus: 0.5, memory: 64M}
      restart_policy: {condition: on-failure, max_attempts: 3}
  front:
    image: reg:5000/fog-hello:v1
    ports: ["mode=host,8081:8080", {target: 8080, published: 8082, protocol: udp}]
    networks: [backend]
    environment: ["FOG_LABELS=a=b"]
    deploy: {mode: global}
  solo:
    image: reg:5000/fog-hello:v1
networks:
  backend:
    driver: overlay
"#;

    #[test]
    fn a_stack_becomes_prefixed_specs() {
        let specs = parse(STACK, "shop").expect("parsed");
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop_api", "shop_front", "shop_solo"]);
        let api = &specs[0];
        assert_eq!(api.replicas, Some(2));
        assert_eq!(api.networks, ["shop_backend"]);
        assert_eq!(api.env.get("PORT").map(String::as_str), Some("8080"));
        assert_eq!(api.placement_prefs, ["spread=node.labels.location"]);
        assert_eq!(api.update.failure_action, FailureAction::Rollback);
        assert_eq!(api.resources.limit_cpus.as_deref(), Some("0.5"));
        assert_eq!(api.restart.condition, RestartCondition::OnFailure);
        assert_eq!(api.short_name(), "api");
        let front = &specs[1];
        assert_eq!(front.mode, ServiceMode::Global);
        assert_eq!(front.ports.len(), 2);
        assert_eq!(front.ports[1].protocol, PortProtocol::Udp);
        assert_eq!(front.env.get("FOG_LABELS").map(String::as_str), Some("a=b"));
        assert_eq!(specs[2].networks, ["shop_default"]);
    }

    #[test]
    fn typos_are_refused_by_name_and_line_ignored_keys_warned() {
        let with = |extra: &str| {
            parse(&format!("services:\n  web:\n    image: x\n{extra}"), "s").expect_err("refused")
        };
        let e = with("    comand: [run]\n");
        assert!(e.contains("comand") && e.contains(":4"), "{e}");
        let e = with("    deploy:\n      lables: {a: b}\n");
        assert!(e.contains("lables") && e.contains(":5"), "{e}");
        let e = with("    networks: [nowhere]\n");
        assert!(e.contains("nowhere"), "{e}");
        let e = with("    volumes: [\"data:/data\"]\n");
        assert!(e.contains("volumes[0]") && e.contains("data"), "{e}");
        let e = with("    volumes: [\"/srv:rel\"]\n");
        assert!(e.contains("mounts[0]") && e.contains("absolute"), "{e}");
        let e = with("    deploy:\n      placement:\n        constraints: [\"node.labels.a=1\"]\n");
        assert!(
            e.contains("services.web.constraints[0]") && e.contains("column"),
            "{e}"
        );
        let e = parse(
            "services:\n  web:\n    image: x\n  web:\n    image: y\n",
            "s",
        )
        .expect_err("duplicate");
        assert!(e.contains("duplicate"), "{e}");
        let e = with("    secrets: [db]\n");
        assert!(e.contains("secrets[0]") && e.contains("db"), "{e}");
        let input = Input {
            sources: vec![yaml::Source {
                path: "c.yml".into(),
                text: "services:\n  web:\n    image: x\n    build: .\n    restart: always\n".into(),
            }],
            dir: PathBuf::new(),
            env: BTreeMap::new(),
            reads_files: true,
        };
        let project = load(&input, "s").expect("ignored keys are accepted");
        assert_eq!(project.warnings.len(), 2, "{:?}", project.warnings);
        assert!(project.warnings[0].contains("services.web.build"));
    }

    #[test]
    fn every_swarm_key_reaches_the_spec() {
        let dir = std::env::temp_dir().join(format!("fogswarm-compose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("db.txt"), "s3cret").expect("write");
        std::fs::write(dir.join("app.env"), "FROM_FILE=1\nOVER=file\n").expect("write");
        let text = r#"
version: "3.9"
x-defaults: &defaults
  logging: {driver: json-file, options: {max-size: 1m}}
services:
  app:
    <<: *defaults
    image: reg/app:${TAG:-v1}
    command: serve --port 80
    entrypoint: ["/init"]
    env_file: app.env
    environment: {OVER: env}
    labels: [team=fog]
    user: "1000"
    working_dir: /srv
    volumes:
      - data:/data
      - /etc/ssl:/etc/ssl:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 1048576}
    secrets:
      - db
      - source: db
        target: /run/other
        mode: 0400
    configs: [conf]
    healthcheck: {test: "curl -f localhost", interval: 10s, retries: 3}
    cap_add: [NET_ADMIN]
    sysctls: {net.core.somaxconn: 1024}
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    init: true
    read_only: true
    stop_grace_period: 5s
    dns: 10.0.0.53
    extra_hosts: ["db:10.0.0.2"]
    networks:
      back: {aliases: [api]}
    deploy:
      mode: replicated-job
      replicas: 3
      labels: {tier: back}
      placement: {max_replicas_per_node: 1}
      rollback_config: {parallelism: 2, order: start-first}
      resources: {limits: {pids: 100}}
    x-ignored: true
networks:
  back:
    driver_opts: {encrypted: ""}
volumes:
  data:
    driver: local
    driver_opts: {type: tmpfs, device: tmpfs}
secrets:
  db: {file: ./db.txt}
configs:
  conf: {content: "hello"}
"#;
        let input = Input {
            sources: vec![yaml::Source {
                path: "c.yml".into(),
                text: text.into(),
            }],
            dir: dir.clone(),
            env: BTreeMap::from([("TAG".to_string(), "v7".to_string())]),
            reads_files: true,
        };
        let project = load(&input, "shop").expect("loads");
        std::fs::remove_dir_all(&dir).ok();
        let s = &project.services[0];
        assert_eq!(s.image, "reg/app:v7");
        assert_eq!(s.command, ["serve", "--port", "80"]);
        assert_eq!(s.entrypoint, ["/init"]);
        assert_eq!(s.env.get("FROM_FILE").map(String::as_str), Some("1"));
        assert_eq!(s.env.get("OVER").map(String::as_str), Some("env"));
        assert_eq!(
            s.container_labels.get("team").map(String::as_str),
            Some("fog")
        );
        assert_eq!(s.labels.get("tier").map(String::as_str), Some("back"));
        assert_eq!(s.mounts[0].source.as_deref(), Some("shop_data"));
        assert_eq!(s.mounts[0].volume_driver.as_deref(), Some("local"));
        assert_eq!(
            s.mounts[0].volume_options.get("type").map(String::as_str),
            Some("tmpfs")
        );
        assert_eq!(
            (s.mounts[1].kind, s.mounts[1].read_only),
            (MountType::Bind, true)
        );
        assert_eq!(s.mounts[2].kind, MountType::Tmpfs);
        assert_eq!(s.secrets[0].source, "shop_db");
        assert_eq!(s.secrets[0].target.as_deref(), Some("db"));
        assert_eq!(s.secrets[1].mode, Some(0o400));
        assert_eq!(s.configs[0].target.as_deref(), Some("/conf"));
        assert_eq!(
            s.healthcheck.as_ref().map(|h| h.test.clone()),
            Some(vec!["CMD-SHELL".into(), "curl -f localhost".into()])
        );
        assert_eq!(
            s.ulimits.iter().find(|u| u.name == "nproc").map(|u| u.hard),
            Some(512)
        );
        assert_eq!(s.hosts, ["db:10.0.0.2"]);
        assert_eq!(s.dns, ["10.0.0.53"]);
        assert_eq!(
            s.network_aliases.get("shop_back"),
            Some(&vec!["api".to_string()])
        );
        assert!(s.network_options.contains_key("shop_back"));
        assert_eq!(s.mode, ServiceMode::ReplicatedJob);
        assert_eq!(s.max_replicas, Some(1));
        assert_eq!(
            s.rollback.as_ref().map(|r| r.order),
            Some(UpdateOrder::StartFirst)
        );
        assert_eq!(s.resources.limit_pids, Some(100));
        assert_eq!(
            s.log_driver.as_ref().map(|l| l.name.as_str()),
            Some("json-file")
        );
        assert_eq!(s.restart.condition, RestartCondition::OnFailure);
        let files: Vec<(&str, &[u8])> = project
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.data.as_slice()))
            .collect();
        assert_eq!(
            files,
            [
                ("shop_db", b"s3cret".as_slice()),
                ("shop_conf", b"hello".as_slice())
            ]
        );
    }

    #[test]
    fn a_pasted_file_reads_no_file() {
        let secret = "services:\n  a:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    file: /etc/hostname\n";
        let e = parse(secret, "p").expect_err("a server file");
        assert!(
            e.contains("secrets.s.file") && e.contains("cannot read files"),
            "{e}"
        );
        let env = "services:\n  a:\n    image: x\n    env_file: ../admin.token\n";
        let e = parse(env, "p").expect_err("a server file");
        assert!(
            e.contains("env_file") && e.contains("cannot read files"),
            "{e}"
        );
    }
}
