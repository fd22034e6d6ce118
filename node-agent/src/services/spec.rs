//! The engine's service spec, built from fogswarm's, and the fingerprint
//! that tells a current task from a stale one.

use super::*;

/// A stable fingerprint (FNV-1a, 64 bits) of everything in a spec that
/// shapes its tasks. Only what changes a task changes it: a new replica
/// count, update policy or service label restarts nothing.
pub(super) fn template_fingerprint(want: &DesiredService, image: &str) -> String {
    let mut spec = want.spec.clone();
    spec.replicas = None;
    spec.max_concurrent = None;
    spec.update = UpdatePolicy::default();
    spec.rollback = None;
    spec.labels.clear();
    // Every part serialises in a fixed order (structs, BTreeMaps, Vecs).
    let mut shape = serde_json::json!([image, spec, want.secret_versions, want.config_versions]);
    // A new grant (the swarm's allow-list changed) restarts the tasks; no
    // grant leaves the fingerprints of services without hardware as they were.
    if let (Some(grant), Some(parts)) = (&want.grant, shape.as_array_mut()) {
        parts.push(grant.clone().into());
    }
    let shape = shape.to_string();
    let hash = shape.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A Docker duration (`30s`) in the engine's nanoseconds.
fn nanos(v: &Option<String>) -> Result<Option<i64>> {
    v.as_deref()
        .map(|d| {
            parse_duration(d)
                .map(|n| n as i64)
                .map_err(anyhow::Error::msg)
        })
        .transpose()
}

/// Translates a fogswarm spec into the engine's.
pub(super) fn engine_spec(
    swarm: &str,
    want: &DesiredService,
    image: &str,
    files: &SwarmFiles,
) -> Result<bollard::models::ServiceSpec> {
    let spec = &want.spec;
    let cpus = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|c| parse_nano_cpus(c).map_err(anyhow::Error::msg))
            .transpose()
    };
    let memory = |v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|m| {
                parse_memory(m)
                    .map(|b| b as i64)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    };
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_LABEL.to_string(), swarm.to_string());
    labels.insert(REVISION_LABEL.to_string(), want.revision.to_string());
    if let Some(stack) = &spec.stack {
        labels.insert(STACK_LABEL.to_string(), stack.clone());
    }
    let mut container_labels: HashMap<String, String> = spec
        .container_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(
        TEMPLATE_LABEL.to_string(),
        template_fingerprint(want, image),
    );
    if let Some(stack) = &spec.stack {
        container_labels.insert(STACK_LABEL.to_string(), stack.clone());
    }
    // The grant rides on every task's container, where the device's
    // runtime reads it; the service goes only where the server found the
    // hardware and the runtime (the placement label, which no node has
    // while the swarm does not allow what the service asks for).
    let mut constraints = spec.constraints.clone();
    if let Some(grant) = &want.grant {
        container_labels.insert(hardware::GRANT_LABEL.to_string(), grant.clone());
    }
    if spec.wants_hardware() {
        constraints.push(format!(
            "node.labels.{}==true",
            hardware::placement_label(&spec.name)
        ));
    }
    let replicas = spec.replicas.unwrap_or(1) as i64;
    let mode = match spec.mode {
        ServiceMode::Global => serde_json::json!({"Global": {}}),
        ServiceMode::Replicated => serde_json::json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::GlobalJob => serde_json::json!({"GlobalJob": {}}),
        ServiceMode::ReplicatedJob => serde_json::json!({"ReplicatedJob": {
            "TotalCompletions": replicas,
            "MaxConcurrent": spec.max_concurrent.map(|m| m as i64).unwrap_or(replicas),
        }}),
    };
    let policy = |u: &UpdatePolicy, failure: FailureAction| -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "Parallelism": u.parallelism,
            "Delay": nanos(&u.delay)?,
            "FailureAction": failure,
            "Monitor": nanos(&u.monitor)?,
            "Order": u.order,
        }))
    };
    let u = &spec.update;
    let update_config = policy(u, u.failure_action)?;
    // Without its own policy, a rollback goes back the way the update
    // came, and stops if that fails too.
    let rollback_config = match &spec.rollback {
        Some(r) => policy(r, r.failure_action)?,
        None => policy(u, FailureAction::Pause)?,
    };
    let r = &spec.restart;
    // Jobs must not restart once they succeed: Docker's default for them
    // is on-failure.
    let condition = match (spec.mode.is_job(), r.condition) {
        (true, RestartCondition::Any) => RestartCondition::OnFailure,
        (_, c) => c,
    };
    let restart_policy = serde_json::json!({
        "Condition": condition,
        "Delay": nanos(&r.delay)?,
        "MaxAttempts": r.max_attempts,
        "Window": nanos(&r.window)?,
    });
    let res = &spec.resources;
    let resources = serde_json::json!({
        "Limits": {
            "NanoCPUs": cpus(&res.limit_cpus)?,
            "MemoryBytes": memory(&res.limit_memory)?,
            "Pids": res.limit_pids,
        },
        "Reservations": {
            "NanoCPUs": cpus(&res.reserve_cpus)?,
            "MemoryBytes": memory(&res.reserve_memory)?,
        },
    });
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "Protocol": p.protocol,
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": p.mode,
            })
        })
        .collect();
    let mut engine = serde_json::json!({
        "Name": spec.name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container_spec(want, image, container_labels, files)?,
            "Resources": resources,
            "RestartPolicy": restart_policy,
            "Placement": {
                "Constraints": constraints,
                "Preferences": spec.placement_prefs
                    .iter()
                    .filter_map(|p| parse_placement_pref(p).ok())
                    .map(|d| serde_json::json!({"Spread": {"SpreadDescriptor": d}}))
                    .collect::<Vec<_>>(),
                "MaxReplicas": spec.max_replicas,
            },
            "Networks": spec.networks
                .iter()
                .map(|n| {
                    let mut aliases: Vec<&str> = spec.stack.as_ref().map(|_| spec.short_name()).into_iter().collect();
                    aliases.extend(spec.network_aliases.get(n).into_iter().flatten().map(String::as_str));
                    serde_json::json!({"Target": n, "Aliases": aliases})
                })
                .collect::<Vec<_>>(),
            "LogDriver": spec.log_driver.as_ref().map(|l| serde_json::json!({"Name": l.name, "Options": l.options})),
            "ForceUpdate": spec.force_update,
        },
        "Mode": mode,
        "EndpointSpec": {"Mode": spec.endpoint_mode, "Ports": ports},
    });
    // Swarm refuses update and rollback policies on jobs.
    if !spec.mode.is_job() {
        engine["UpdateConfig"] = update_config;
        engine["RollbackConfig"] = rollback_config;
    }
    strip_nulls(&mut engine);
    serde_json::from_value(engine).context("building the engine's service spec")
}

/// The container part of a task: command, mounts, files, healthcheck and
/// the rest of Engine API 1.41's ContainerSpec.
fn container_spec(
    want: &DesiredService,
    image: &str,
    labels: HashMap<String, String>,
    files: &SwarmFiles,
) -> Result<serde_json::Value> {
    let spec = &want.spec;
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let mounts = spec
        .mounts
        .iter()
        .map(|m| -> Result<serde_json::Value> {
            Ok(serde_json::json!({
                "Type": m.kind,
                "Source": m.source,
                "Target": m.target,
                "ReadOnly": m.read_only,
                "BindOptions": m.bind_propagation.as_ref().map(|p| serde_json::json!({"Propagation": p})),
                "VolumeOptions": (m.kind == MountType::Volume).then(|| serde_json::json!({
                    "NoCopy": m.volume_nocopy,
                    "Labels": m.volume_labels,
                    "DriverConfig": m.volume_driver.as_ref().map(|d| serde_json::json!({
                        "Name": d,
                        "Options": m.volume_options,
                    })).or_else(|| (!m.volume_options.is_empty()).then(|| serde_json::json!({
                        "Options": m.volume_options,
                    }))),
                })),
                "TmpfsOptions": (m.kind == MountType::Tmpfs).then(|| -> Result<serde_json::Value> {
                    Ok(serde_json::json!({
                        "SizeBytes": m.tmpfs_size.as_deref().map(parse_memory_any).transpose().map_err(anyhow::Error::msg)?,
                        "Mode": m.tmpfs_mode,
                    }))
                }).transpose()?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let file_refs = |refs: &[FileRef],
                     versions: &BTreeMap<String, u64>,
                     ids: &HashMap<String, String>,
                     is_secret: bool|
     -> Result<Vec<serde_json::Value>> {
        let kind = if is_secret { "secret" } else { "config" };
        refs.iter()
            .map(|r| {
                let version = versions.get(&r.source).with_context(|| {
                    format!("the server named no version of {kind} {}", r.source)
                })?;
                let name = versioned_name(&r.source, *version);
                let id = ids
                    .get(&name)
                    .with_context(|| format!("{kind} {name} is missing from the swarm"))?;
                let (id_key, name_key) = if is_secret {
                    ("SecretID", "SecretName")
                } else {
                    ("ConfigID", "ConfigName")
                };
                Ok(serde_json::json!({
                    "File": {
                        "Name": r.target_or_default(is_secret),
                        "UID": r.uid.clone().unwrap_or_else(|| "0".into()),
                        "GID": r.gid.clone().unwrap_or_else(|| "0".into()),
                        "Mode": r.mode.unwrap_or(0o444),
                    },
                    id_key: id,
                    name_key: name,
                }))
            })
            .collect()
    };
    let healthcheck = spec
        .healthcheck
        .as_ref()
        .map(|h| -> Result<serde_json::Value> {
            Ok(serde_json::json!({
                "Test": non_empty(&h.test),
                "Interval": nanos(&h.interval)?,
                "Timeout": nanos(&h.timeout)?,
                "Retries": h.retries,
                "StartPeriod": nanos(&h.start_period)?,
            }))
        })
        .transpose()?;
    let hosts: Vec<String> = spec
        .hosts
        .iter()
        .filter_map(|h| parse_host_entry(h).ok())
        .map(|(host, ip)| format!("{ip} {host}"))
        .collect();
    let dns = (!spec.dns.is_empty() || !spec.dns_search.is_empty() || !spec.dns_options.is_empty())
        .then(|| {
            serde_json::json!({
                "Nameservers": spec.dns,
                "Search": spec.dns_search,
                "Options": spec.dns_options,
            })
        });
    Ok(serde_json::json!({
        "Image": image,
        "Labels": labels,
        "Command": non_empty(&spec.entrypoint),
        "Args": non_empty(&spec.command),
        "Hostname": spec.hostname,
        "Env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Dir": spec.workdir,
        "User": spec.user,
        "Groups": non_empty(&spec.groups),
        "TTY": spec.tty,
        "ReadOnly": spec.read_only,
        "Mounts": mounts,
        "StopSignal": spec.stop_signal,
        "StopGracePeriod": nanos(&spec.stop_grace_period)?,
        "HealthCheck": healthcheck,
        "Hosts": (!hosts.is_empty()).then_some(hosts),
        "DNSConfig": dns,
        "Secrets": file_refs(&spec.secrets, &want.secret_versions, &files.secrets, true)?,
        "Configs": file_refs(&spec.configs, &want.config_versions, &files.configs, false)?,
        "Init": spec.init,
        "Sysctls": (!spec.sysctls.is_empty()).then_some(&spec.sysctls),
        "CapabilityAdd": non_empty(&spec.cap_add),
        "CapabilityDrop": non_empty(&spec.cap_drop),
        "Ulimits": spec.ulimits.iter().map(|u| serde_json::json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect::<Vec<_>>(),
    }))
}

/// Drops JSON nulls, so a field left out stays out of the engine's spec
/// (and takes the engine's default) instead of arriving as null.
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(spec: ServiceSpec) -> DesiredService {
        DesiredService {
            revision: 7,
            spec,
            ..Default::default()
        }
    }

    #[test]
    fn spec_translation_carries_every_field() {
        let mut spec = ServiceSpec::new("shop_web", "reg:5000/fog-hello:v1");
        spec.stack = Some("shop".into());
        spec.mode = ServiceMode::Global;
        spec.constraints = vec!["node.labels.temperature_sensor==1".into()];
        spec.placement_prefs = vec!["spread=node.labels.location".into()];
        spec.env.insert("FOG_LABELS".into(), "a=b".into());
        spec.ports = vec![parse_publish("mode=host,8080:8080").expect("port")];
        spec.networks = vec!["shop_backend".into()];
        spec.update.parallelism = 2;
        spec.update.delay = Some("1s".into());
        spec.update.failure_action = FailureAction::Rollback;
        spec.resources.limit_memory = Some("64M".into());
        spec.resources.limit_cpus = Some("0.5".into());
        let engine = engine_spec(
            "fog",
            &desired(spec),
            "reg:5000/fog-hello:v1@sha256:ab",
            &SwarmFiles::default(),
        )
        .expect("spec");
        let json = serde_json::to_value(&engine).expect("json");
        assert_eq!(json["Labels"][MANAGED_LABEL], "fog");
        assert_eq!(json["Labels"][REVISION_LABEL], "7");
        assert_eq!(json["Labels"][STACK_LABEL], "shop");
        assert_eq!(json["Mode"]["Global"], serde_json::json!({}));
        let task = &json["TaskTemplate"];
        assert_eq!(
            task["ContainerSpec"]["Image"],
            "reg:5000/fog-hello:v1@sha256:ab"
        );
        assert_eq!(
            task["ContainerSpec"]["Env"],
            serde_json::json!(["FOG_LABELS=a=b"])
        );
        assert_eq!(
            task["Placement"]["Constraints"][0],
            "node.labels.temperature_sensor==1"
        );
        assert_eq!(
            task["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.labels.location"
        );
        assert_eq!(task["Networks"][0]["Target"], "shop_backend");
        assert_eq!(task["Networks"][0]["Aliases"], serde_json::json!(["web"]));
        assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
        assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
        assert_eq!(json["UpdateConfig"]["Parallelism"], 2);
        assert_eq!(json["UpdateConfig"]["Delay"], 1_000_000_000i64);
        assert_eq!(json["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    }

    #[test]
    fn replicated_defaults_to_one_task() {
        let engine = engine_spec(
            "fog",
            &desired(ServiceSpec::new("w", "x")),
            "x",
            &SwarmFiles::default(),
        )
        .expect("spec");
        assert_eq!(
            engine
                .mode
                .and_then(|m| m.replicated)
                .and_then(|r| r.replicas),
            Some(1)
        );
    }

    #[test]
    fn the_template_fingerprint_follows_what_shapes_tasks_only() {
        let spec = desired(ServiceSpec::new("web", "x:1"));
        let base = template_fingerprint(&spec, "x:1@sha256:aa");
        assert_eq!(base, template_fingerprint(&spec.clone(), "x:1@sha256:aa"));
        let mut scaled = spec.clone();
        scaled.spec.replicas = Some(5);
        scaled.spec.update.parallelism = 3;
        scaled.spec.labels.insert("team".into(), "a".into());
        assert_eq!(template_fingerprint(&scaled, "x:1@sha256:aa"), base);
        assert_ne!(template_fingerprint(&spec, "x:1@sha256:bb"), base);
        let mut env = spec.clone();
        env.spec.env.insert("A".into(), "1".into());
        assert_ne!(template_fingerprint(&env, "x:1@sha256:aa"), base);
        let mut rotated = spec.clone();
        rotated.secret_versions.insert("db".into(), 2);
        assert_ne!(template_fingerprint(&rotated, "x:1@sha256:aa"), base);
        let mut forced = spec;
        forced.spec.force_update = 1;
        assert_ne!(template_fingerprint(&forced, "x:1@sha256:aa"), base);
    }

    #[test]
    fn container_fields_reach_the_engine_spec() {
        let mut spec = ServiceSpec::new("job", "x");
        spec.mode = ServiceMode::ReplicatedJob;
        spec.replicas = Some(4);
        spec.max_concurrent = Some(2);
        spec.entrypoint = vec!["/fog-hello".into()];
        spec.command = vec!["once".into(), "--fast".into()];
        spec.workdir = Some("/srv".into());
        spec.user = Some("1000:1000".into());
        spec.mounts = vec![
            parse_mount(
                "type=volume,source=data,target=/data,volume-driver=local,volume-opt=o=bind",
            )
            .expect("m"),
            parse_mount("type=tmpfs,target=/tmp,tmpfs-size=1m").expect("m"),
        ];
        spec.secrets = vec![parse_file_ref("--secret", "source=db,mode=0400").expect("s")];
        spec.configs =
            vec![parse_file_ref("--config", "source=conf,target=/etc/app.conf").expect("c")];
        spec.healthcheck = Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Some("2s".into()),
            retries: Some(3),
            ..Default::default()
        });
        spec.cap_add = vec!["NET_ADMIN".into()];
        spec.sysctls
            .insert("net.core.somaxconn".into(), "1024".into());
        spec.ulimits = vec![parse_ulimit("nofile=1024:2048").expect("u")];
        spec.init = Some(true);
        spec.read_only = true;
        spec.stop_grace_period = Some("3s".into());
        spec.hosts = vec!["db:10.0.0.2".into()];
        spec.dns = vec!["10.0.0.53".into()];
        spec.resources.limit_pids = Some(64);
        spec.log_driver = Some(LogDriver {
            name: "json-file".into(),
            options: BTreeMap::from([("max-size".into(), "1m".into())]),
        });
        let mut want = desired(spec);
        want.secret_versions.insert("db".into(), 3);
        want.config_versions.insert("conf".into(), 1);
        let files = SwarmFiles {
            secrets: HashMap::from([("db.v3".into(), "sid".into())]),
            configs: HashMap::from([("conf.v1".into(), "cid".into())]),
            wanted: BTreeSet::new(),
        };
        let engine = engine_spec("fog", &want, "x", &files).expect("spec");
        let json = serde_json::to_value(&engine).expect("json");
        assert_eq!(json["Mode"]["ReplicatedJob"]["TotalCompletions"], 4);
        assert_eq!(json["Mode"]["ReplicatedJob"]["MaxConcurrent"], 2);
        assert!(
            json.get("UpdateConfig").is_none(),
            "jobs take no update policy"
        );
        let task = &json["TaskTemplate"];
        assert_eq!(task["RestartPolicy"]["Condition"], "on-failure");
        let c = &task["ContainerSpec"];
        assert_eq!(c["Command"], serde_json::json!(["/fog-hello"]));
        assert_eq!(c["Args"], serde_json::json!(["once", "--fast"]));
        assert_eq!(c["Dir"], "/srv");
        assert_eq!(c["User"], "1000:1000");
        assert_eq!(
            c["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"]["o"],
            "bind"
        );
        assert_eq!(c["Mounts"][1]["TmpfsOptions"]["SizeBytes"], 1 << 20);
        assert_eq!(c["Secrets"][0]["SecretID"], "sid");
        assert_eq!(c["Secrets"][0]["SecretName"], "db.v3");
        assert_eq!(c["Secrets"][0]["File"]["Name"], "db");
        assert_eq!(c["Secrets"][0]["File"]["Mode"], 0o400);
        assert_eq!(c["Configs"][0]["ConfigID"], "cid");
        assert_eq!(c["Configs"][0]["File"]["Name"], "/etc/app.conf");
        assert_eq!(
            c["HealthCheck"]["Test"],
            serde_json::json!(["CMD-SHELL", "true"])
        );
        assert_eq!(c["HealthCheck"]["Interval"], 2_000_000_000i64);
        assert_eq!(c["CapabilityAdd"], serde_json::json!(["NET_ADMIN"]));
        assert_eq!(c["Sysctls"]["net.core.somaxconn"], "1024");
        assert_eq!(c["Ulimits"][0]["Hard"], 2048);
        assert_eq!(c["Init"], true);
        assert_eq!(c["ReadOnly"], true);
        assert_eq!(c["StopGracePeriod"], 3_000_000_000i64);
        assert_eq!(c["Hosts"], serde_json::json!(["10.0.0.2 db"]));
        assert_eq!(
            c["DNSConfig"]["Nameservers"],
            serde_json::json!(["10.0.0.53"])
        );
        assert_eq!(task["Resources"]["Limits"]["Pids"], 64);
        assert_eq!(task["LogDriver"]["Options"]["max-size"], "1m");
        // A secret whose version the swarm lacks is an error, not a
        // silently missing file.
        let e = engine_spec("fog", &want, "x", &SwarmFiles::default()).expect_err("missing");
        assert!(format!("{e:#}").contains("db.v3"), "{e:#}");
    }
}
