//! `docker service create`'s flags, turned into a service spec, and
//! `docker service update`'s partial ones, applied to a spec.

use crate::fleet::bad;
use anyhow::Result;
use clap::Args;
use fogswarm_protocol::service::*;
use std::collections::BTreeMap;

/// Every flag that shapes a service, named as `docker service create`
/// names it.
#[derive(Args, Debug, Default)]
pub struct SpecArgs {
    #[arg(long)]
    pub image: String,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, default_value = "replicated", value_parser = parse_name::<ServiceMode>)]
    pub mode: ServiceMode,
    /// Tasks of a replicated service (completions of a replicated job)
    /// [default: 1].
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Replicated jobs: tasks at once [default: all].
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Tasks per node at most.
    #[arg(long)]
    pub max_replicas: Option<u64>,
    /// Replace the image's entrypoint (split like a shell line).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory inside the tasks.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// USER[:GROUP] or UID[:GID].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Supplementary group for the tasks' user.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Placement constraint, like node.labels.temperature_sensor==1.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement preference: spread=node.labels.KEY.
    #[arg(long = "placement-pref")]
    pub placement_prefs: Vec<String>,
    /// Environment variable K=V (K alone takes it from this shell).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Service label K=V.
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Container label K=V on every task.
    #[arg(long = "container-label")]
    pub container_labels: Vec<String>,
    /// Tasks' host name; {{.Node.Hostname}} names each after its device.
    #[arg(long)]
    pub hostname: Option<String>,
    /// type=bind|volume|tmpfs,source=..,target=..[,readonly][,volume-driver=..]...
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// NAME or source=NAME[,target=..][,uid=..][,gid=..][,mode=0400].
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// NAME or source=NAME[,target=/path][,uid=..][,gid=..][,mode=0444].
    #[arg(long = "config")]
    pub configs: Vec<String>,
    /// Command run to check health (as `sh -c`).
    #[arg(long)]
    pub health_cmd: Option<String>,
    #[arg(long)]
    pub health_interval: Option<String>,
    #[arg(long)]
    pub health_timeout: Option<String>,
    #[arg(long)]
    pub health_retries: Option<u64>,
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Switch off the image's healthcheck.
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
    /// A device node for the tasks, HOST[:CONTAINER[:PERMISSIONS]]; HOST
    /// may be a pattern like /dev/video*. The service runs only where the
    /// device is, and only if the swarm allows it (swarm update
    /// --allow-device).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Access by device number, like 'c 89:* rwm' (allowed per swarm too).
    #[arg(long = "device-cgroup-rule")]
    pub device_cgroup_rules: Vec<String>,
    /// Every capability and device (only in a swarm that allows it).
    #[arg(long)]
    pub privileged: bool,
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Kernel parameter K=V.
    #[arg(long = "sysctl")]
    pub sysctls: Vec<String>,
    /// NAME=SOFT[:HARD], like nofile=1024:2048.
    #[arg(long = "ulimit")]
    pub ulimits: Vec<String>,
    /// Run an init as PID 1 that reaps zombies and forwards signals.
    #[arg(long)]
    pub init: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Allocate a TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Time to wait after the stop signal before killing (10s).
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Name server.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    #[arg(long = "dns-option")]
    pub dns_options: Vec<String>,
    /// Extra /etc/hosts entry HOST:IP.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// [mode=host|ingress,]PUBLISHED:TARGET[/PROTO], or the long form
    /// published=P,target=T[,protocol=..][,mode=..]. Host mode by default.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Overlay network (created when missing): NAME or name=NAME,alias=A.
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// dnsrr (default; works without IPVS) or vip.
    #[arg(long, default_value = "dnsrr", value_parser = parse_name::<EndpointMode>)]
    pub endpoint_mode: EndpointMode,
    #[arg(long, default_value_t = 1)]
    pub update_parallelism: u64,
    /// Pause between update batches (10s, 1m30s).
    #[arg(long)]
    pub update_delay: Option<String>,
    /// pause, continue or rollback.
    #[arg(long, default_value = "pause", value_parser = parse_name::<FailureAction>)]
    pub update_failure_action: FailureAction,
    /// How long each updated task is watched for failure.
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long, default_value = "stop-first", value_parser = parse_name::<UpdateOrder>)]
    pub update_order: UpdateOrder,
    /// Tasks rolled back at once [default: as --update-parallelism].
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    #[arg(long)]
    pub rollback_delay: Option<String>,
    /// pause or continue.
    #[arg(long, value_parser = parse_name::<FailureAction>)]
    pub rollback_failure_action: Option<FailureAction>,
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    #[arg(long, value_parser = parse_name::<UpdateOrder>)]
    pub rollback_order: Option<UpdateOrder>,
    /// none, on-failure or any [default: any; on-failure for jobs].
    #[arg(long, value_parser = parse_name::<RestartCondition>)]
    pub restart_condition: Option<RestartCondition>,
    #[arg(long)]
    pub restart_delay: Option<String>,
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    #[arg(long)]
    pub restart_window: Option<String>,
    /// CPUs, like 0.5.
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Memory, like 128M.
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Processes per task at most.
    #[arg(long)]
    pub limit_pids: Option<u64>,
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// Logging driver for the tasks (json-file, local, syslog, ...).
    #[arg(long)]
    pub log_driver: Option<String>,
    /// Logging driver option K=V.
    #[arg(long = "log-opt")]
    pub log_opts: Vec<String>,
}

/// `K=V` pairs into a map; `what` names the flag in errors.
pub fn key_values(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad(format!("{flag} {item:?}: expected KEY=VALUE"))),
        })
        .collect()
}

/// `--env K=V`, or `K` alone taking the value from this shell.
pub fn env_pair(e: &str) -> Result<(String, String)> {
    Ok(match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (
            e.to_string(),
            std::env::var(e)
                .map_err(|_| bad(format!("--env {e}: no value given and {e} is not set here")))?,
        ),
    })
}

/// `--network NAME` or `name=NAME[,alias=A]...` (Docker's long form).
fn network(spec: &mut ServiceSpec, value: &str) -> Result<()> {
    if !value.contains('=') {
        spec.networks.push(value.to_string());
        return Ok(());
    }
    let mut name = None;
    let mut aliases = Vec::new();
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", n)) => name = Some(n.to_string()),
            Some(("alias", a)) => aliases.push(a.to_string()),
            Some(("driver-opt", _)) => {
                return Err(bad(format!(
                    "--network {value:?}: driver options belong to the network, not the service"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "--network {value:?}: expected NAME or name=NAME[,alias=ALIAS]"
                )))
            }
        }
    }
    let name = name.ok_or_else(|| bad(format!("--network {value:?}: no name")))?;
    if !aliases.is_empty() {
        spec.network_aliases.insert(name.clone(), aliases);
    }
    spec.networks.push(name);
    Ok(())
}

impl SpecArgs {
    /// The spec these flags describe for service `name` running
    /// `command` (the words after the image), checked as the server will.
    pub fn spec(&self, name: &str, command: &[String]) -> Result<ServiceSpec> {
        let mut spec = ServiceSpec::new(name, self.image.clone());
        spec.mode = self.mode;
        spec.replicas = self.replicas;
        spec.max_concurrent = self.max_concurrent;
        spec.max_replicas = self.max_replicas;
        spec.command = command.to_vec();
        if let Some(e) = &self.entrypoint {
            spec.entrypoint = split_command(e).map_err(|m| bad(format!("--entrypoint: {m}")))?;
        }
        spec.workdir = self.workdir.clone();
        spec.user = self.user.clone();
        spec.groups = self.groups.clone();
        spec.constraints = self.constraints.clone();
        spec.placement_prefs = self.placement_prefs.clone();
        for e in &self.env {
            let (k, v) = env_pair(e)?;
            spec.env.insert(k, v);
        }
        spec.labels = key_values("--label", &self.labels)?;
        spec.container_labels = key_values("--container-label", &self.container_labels)?;
        spec.hostname = self.hostname.clone();
        for m in &self.mounts {
            spec.mounts.push(parse_mount(m).map_err(bad)?);
        }
        for s in &self.secrets {
            spec.secrets
                .push(parse_file_ref("--secret", s).map_err(bad)?);
        }
        for c in &self.configs {
            spec.configs
                .push(parse_file_ref("--config", c).map_err(bad)?);
        }
        let timing = self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if self.no_healthcheck {
            spec.healthcheck = Some(Healthcheck {
                test: vec!["NONE".into()],
                ..Default::default()
            });
        } else if self.health_cmd.is_some() || timing {
            spec.healthcheck = Some(Healthcheck {
                test: self
                    .health_cmd
                    .iter()
                    .flat_map(|c| ["CMD-SHELL".to_string(), c.clone()])
                    .collect(),
                interval: self.health_interval.clone(),
                timeout: self.health_timeout.clone(),
                retries: self.health_retries,
                start_period: self.health_start_period.clone(),
            });
        }
        for d in &self.devices {
            spec.devices
                .push(fogswarm_protocol::hardware::parse_device(d).map_err(bad)?);
        }
        spec.device_cgroup_rules = self.device_cgroup_rules.clone();
        spec.privileged = self.privileged;
        spec.cap_add = self.cap_add.clone();
        spec.cap_drop = self.cap_drop.clone();
        spec.sysctls = key_values("--sysctl", &self.sysctls)?;
        for u in &self.ulimits {
            spec.ulimits.push(parse_ulimit(u).map_err(bad)?);
        }
        spec.init = self.init.then_some(true);
        spec.read_only = self.read_only;
        spec.tty = self.tty;
        spec.stop_grace_period = self.stop_grace_period.clone();
        spec.stop_signal = self.stop_signal.clone();
        spec.dns = self.dns.clone();
        spec.dns_search = self.dns_search.clone();
        spec.dns_options = self.dns_options.clone();
        spec.hosts = self.hosts.clone();
        for p in &self.publish {
            spec.ports.push(parse_publish(p).map_err(bad)?);
        }
        for n in &self.networks {
            network(&mut spec, n)?;
        }
        spec.endpoint_mode = self.endpoint_mode;
        spec.update = UpdatePolicy {
            parallelism: self.update_parallelism,
            delay: self.update_delay.clone(),
            failure_action: self.update_failure_action,
            monitor: self.update_monitor.clone(),
            order: self.update_order,
        };
        let rollback_given = self.rollback_parallelism.is_some()
            || self.rollback_delay.is_some()
            || self.rollback_failure_action.is_some()
            || self.rollback_monitor.is_some()
            || self.rollback_order.is_some();
        if rollback_given {
            spec.rollback = Some(UpdatePolicy {
                parallelism: self.rollback_parallelism.unwrap_or(self.update_parallelism),
                delay: self.rollback_delay.clone(),
                failure_action: self.rollback_failure_action.unwrap_or_default(),
                monitor: self.rollback_monitor.clone(),
                order: self.rollback_order.unwrap_or_default(),
            });
        }
        spec.restart = RestartPolicy {
            condition: self.restart_condition.unwrap_or(if self.mode.is_job() {
                RestartCondition::OnFailure
            } else {
                RestartCondition::Any
            }),
            delay: self.restart_delay.clone(),
            max_attempts: self.restart_max_attempts,
            window: self.restart_window.clone(),
        };
        spec.resources = Resources {
            limit_cpus: self.limit_cpu.clone(),
            limit_memory: self.limit_memory.clone(),
            reserve_cpus: self.reserve_cpu.clone(),
            reserve_memory: self.reserve_memory.clone(),
            limit_pids: self.limit_pids,
        };
        if let Some(driver) = &self.log_driver {
            spec.log_driver = Some(LogDriver {
                name: driver.clone(),
                options: key_values("--log-opt", &self.log_opts)?,
            });
        } else if !self.log_opts.is_empty() {
            return Err(bad("--log-opt needs --log-driver"));
        }
        check(&spec)?;
        Ok(spec)
    }
}

/// Validates a spec, naming the flag behind a bad field.
pub fn check(spec: &ServiceSpec) -> Result<()> {
    spec.validate()
        .map_err(|e| bad(format!("{}: {}", flag_of(&e.field), e.message)))
}

/// The flag a spec field comes from, for error messages.
pub fn flag_of(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    let flag = match base {
        "name" => "NAME",
        "command" => "COMMAND",
        "constraints" => "--constraint",
        "placement_prefs" => "--placement-pref",
        "ports" => "--publish",
        "networks" | "network_aliases" => "--network",
        "mounts" => "--mount",
        "secrets" => "--secret",
        "configs" => "--config",
        "labels" => "--label",
        "container_labels" => "--container-label",
        "sysctls" => "--sysctl",
        "ulimits" => "--ulimit",
        "devices" => "--device",
        "device_cgroup_rules" => "--device-cgroup-rule",
        "privileged" => "--privileged",
        "hosts" => "--host",
        "groups" => "--group",
        "healthcheck.test" => "--health-cmd",
        "healthcheck.interval" => "--health-interval",
        "healthcheck.timeout" => "--health-timeout",
        "healthcheck.start_period" => "--health-start-period",
        "log_driver" => "--log-driver",
        "update.delay" => "--update-delay",
        "update.monitor" => "--update-monitor",
        "update.parallelism" => "--update-parallelism",
        "rollback.delay" => "--rollback-delay",
        "rollback.monitor" => "--rollback-monitor",
        "rollback.parallelism" => "--rollback-parallelism",
        "restart.delay" => "--restart-delay",
        "restart.window" => "--restart-window",
        "resources.limit_cpus" => "--limit-cpu",
        "resources.limit_memory" => "--limit-memory",
        "resources.limit_pids" => "--limit-pids",
        "resources.reserve_cpus" => "--reserve-cpu",
        "resources.reserve_memory" => "--reserve-memory",
        other => &format!("--{}", other.replace('_', "-")),
    };
    match field.find('[') {
        Some(i) => format!("{flag}{}", &field[i..]),
        None => flag.to_string(),
    }
}

/// `docker service update`'s partial flags: each changes one part of the
/// spec the server has and leaves the rest.
#[derive(Args, Debug, Default)]
pub struct UpdateArgs {
    #[arg(long)]
    pub image: Option<String>,
    /// Replace the command (the words after the image), split like a shell line.
    #[arg(long)]
    pub args: Option<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(long)]
    pub replicas: Option<u64>,
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    #[arg(long = "container-label-add")]
    pub container_label_add: Vec<String>,
    #[arg(long = "container-label-rm")]
    pub container_label_rm: Vec<String>,
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    #[arg(long = "publish-add")]
    pub publish_add: Vec<String>,
    /// A published port (PORT or PORT/PROTO) to stop publishing.
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    #[arg(long = "mount-add")]
    pub mount_add: Vec<String>,
    /// The target path of a mount to remove.
    #[arg(long = "mount-rm")]
    pub mount_rm: Vec<String>,
    #[arg(long = "secret-add")]
    pub secret_add: Vec<String>,
    #[arg(long = "secret-rm")]
    pub secret_rm: Vec<String>,
    #[arg(long = "config-add")]
    pub config_add: Vec<String>,
    #[arg(long = "config-rm")]
    pub config_rm: Vec<String>,
    #[arg(long = "network-add")]
    pub network_add: Vec<String>,
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    #[arg(long)]
    pub health_cmd: Option<String>,
    #[arg(long, value_parser = parse_name::<FailureAction>)]
    pub update_failure_action: Option<FailureAction>,
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    #[arg(long)]
    pub update_delay: Option<String>,
    #[arg(long)]
    pub update_monitor: Option<String>,
    #[arg(long)]
    pub limit_cpu: Option<String>,
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Restart every task even when nothing else changes.
    #[arg(long)]
    pub force: bool,
}

impl UpdateArgs {
    /// Applies the changes to `spec`; answers the new spec, checked.
    pub fn apply(&self, mut spec: ServiceSpec) -> Result<ServiceSpec> {
        if let Some(image) = &self.image {
            spec.image = image.clone();
        }
        if let Some(args) = &self.args {
            spec.command = split_command(args).map_err(|m| bad(format!("--args: {m}")))?;
        }
        if let Some(e) = &self.entrypoint {
            spec.entrypoint = split_command(e).map_err(|m| bad(format!("--entrypoint: {m}")))?;
        }
        if let Some(r) = self.replicas {
            if spec.mode.is_global() {
                return Err(bad(format!(
                    "--replicas: service {} is {}; it runs one task per eligible node",
                    spec.name,
                    spec.mode.as_str()
                )));
            }
            spec.replicas = Some(r);
        }
        for k in &self.env_rm {
            spec.env.remove(k);
        }
        for e in &self.env_add {
            let (k, v) = env_pair(e)?;
            spec.env.insert(k, v);
        }
        for k in &self.label_rm {
            spec.labels.remove(k);
        }
        spec.labels
            .extend(key_values("--label-add", &self.label_add)?);
        for k in &self.container_label_rm {
            spec.container_labels.remove(k);
        }
        spec.container_labels.extend(key_values(
            "--container-label-add",
            &self.container_label_add,
        )?);
        spec.constraints.retain(|c| !self.constraint_rm.contains(c));
        for c in &self.constraint_add {
            if !spec.constraints.contains(c) {
                spec.constraints.push(c.clone());
            }
        }
        for p in &self.publish_rm {
            let (port, proto) = match p.split_once('/') {
                Some((port, proto)) => (
                    port,
                    Some(
                        parse_name::<PortProtocol>(proto)
                            .map_err(|e| bad(format!("--publish-rm {p:?}: {e}")))?,
                    ),
                ),
                None => (p.as_str(), None),
            };
            let port: u16 = port
                .parse()
                .map_err(|_| bad(format!("--publish-rm {p:?}: expected PORT[/PROTOCOL]")))?;
            spec.ports
                .retain(|s| !(s.published == port && proto.is_none_or(|pr| pr == s.protocol)));
        }
        for p in &self.publish_add {
            let port = parse_publish(p).map_err(bad)?;
            spec.ports
                .retain(|s| !(s.published == port.published && s.protocol == port.protocol));
            spec.ports.push(port);
        }
        spec.mounts.retain(|m| !self.mount_rm.contains(&m.target));
        for m in &self.mount_add {
            let mount = parse_mount(m).map_err(bad)?;
            spec.mounts.retain(|x| x.target != mount.target);
            spec.mounts.push(mount);
        }
        spec.secrets.retain(|s| !self.secret_rm.contains(&s.source));
        for s in &self.secret_add {
            spec.secrets
                .push(parse_file_ref("--secret-add", s).map_err(bad)?);
        }
        spec.configs.retain(|c| !self.config_rm.contains(&c.source));
        for c in &self.config_add {
            spec.configs
                .push(parse_file_ref("--config-add", c).map_err(bad)?);
        }
        spec.networks.retain(|n| !self.network_rm.contains(n));
        spec.network_aliases
            .retain(|n, _| !self.network_rm.contains(n));
        for n in &self.network_add {
            network(&mut spec, n)?;
        }
        if let Some(cmd) = &self.health_cmd {
            let mut h = spec.healthcheck.take().unwrap_or_default();
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
            spec.healthcheck = Some(h);
        }
        if let Some(a) = self.update_failure_action {
            spec.update.failure_action = a;
        }
        if let Some(p) = self.update_parallelism {
            spec.update.parallelism = p;
        }
        if let Some(d) = &self.update_delay {
            spec.update.delay = Some(d.clone());
        }
        if let Some(m) = &self.update_monitor {
            spec.update.monitor = Some(m.clone());
        }
        if let Some(c) = &self.limit_cpu {
            spec.resources.limit_cpus = Some(c.clone());
        }
        if let Some(m) = &self.limit_memory {
            spec.resources.limit_memory = Some(m.clone());
        }
        if self.force {
            spec.force_update += 1;
        }
        check(&spec)?;
        Ok(spec)
    }
}
