//! The part of the Compose file format that swarm stacks use, turned into
//! service specs. Every key outside that part is refused by name (with its
//! line), never silently ignored: a stack that deploys without the `build`
//! or `volumes` its author wrote would be a different stack.
//!
//! As `docker stack deploy` does, services and networks are named
//! `STACK_NAME`, a service without networks joins `STACK_default`, and
//! each service is reachable by its short name on its networks.

use fogswarm_protocol::service::{
    parse_publish, EndpointMode, FailureAction, PortProtocol, PortSpec, PublishMode, Resources,
    RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, UpdateOrder, UpdatePolicy,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeFile {
    #[serde(default)]
    #[allow(dead_code)] // accepted and ignored, as Docker does
    version: Option<String>,
    #[serde(deserialize_with = "unique_keys")]
    services: BTreeMap<String, Service>,
    #[serde(default)]
    networks: BTreeMap<String, Option<Network>>,
}

/// A mapping whose keys must be unique: YAML parsers keep the last of two
/// equal keys, which would drop a service without a word.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of service names")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate service name {key:?}"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Network {
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    attachable: Option<bool>,
    #[serde(default)]
    external: bool,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    image: String,
    #[serde(default)]
    deploy: Deploy,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Deploy {
    mode: Option<ServiceMode>,
    replicas: Option<u64>,
    endpoint_mode: Option<EndpointMode>,
    #[serde(default)]
    placement: Placement,
    update_config: Option<UpdateConfig>,
    #[serde(default)]
    resources: ComposeResources,
    restart_policy: Option<ComposeRestart>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    preferences: Vec<Preference>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preference {
    spread: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateConfig {
    parallelism: Option<u64>,
    delay: Option<String>,
    failure_action: Option<FailureAction>,
    monitor: Option<String>,
    order: Option<UpdateOrder>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ComposeResources {
    #[serde(default)]
    limits: Amounts,
    #[serde(default)]
    reservations: Amounts,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Amounts {
    cpus: Option<Scalar>,
    memory: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeRestart {
    condition: Option<RestartCondition>,
    delay: Option<String>,
    max_attempts: Option<u64>,
    window: Option<String>,
}

/// A YAML scalar written as a number or a string (`cpus: 0.5`, `'0.5'`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Integer(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Short(Scalar),
    Long(LongPort),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    target: u16,
    published: Scalar,
    #[serde(default)]
    protocol: PortProtocol,
    #[serde(default)]
    mode: PublishMode,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Environment {
    List(Vec<String>),
    Map(BTreeMap<String, Option<Scalar>>),
}

/// Reads a Compose file into the specs of stack `stack`. Errors name the
/// service and key at fault.
pub fn parse(text: &str, stack: &str) -> Result<Vec<ServiceSpec>, String> {
    let file: ComposeFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if file.services.is_empty() {
        return Err("the file has no services".into());
    }
    let network_name = |service: &str, n: &str| -> Result<String, String> {
        match file.networks.get(n) {
            Some(Some(net)) if net.external => Ok(net.name.clone().unwrap_or_else(|| n.into())),
            Some(_) => Ok(format!("{stack}_{n}")),
            None if n == "default" => Ok(format!("{stack}_default")),
            None => Err(format!(
                "services.{service}.networks: network {n:?} is not declared under the top-level networks key"
            )),
        }
    };
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
    let mut specs = Vec::new();
    for (short, service) in &file.services {
        let at = |key: &str, m: String| format!("services.{short}.{key}: {m}");
        let mut spec = ServiceSpec::new(format!("{stack}_{short}"), service.image.clone());
        spec.stack = Some(stack.to_string());
        spec.hostname = service.hostname.clone();
        let deploy = &service.deploy;
        spec.mode = deploy.mode.unwrap_or_default();
        spec.replicas = deploy.replicas;
        spec.endpoint_mode = deploy.endpoint_mode.unwrap_or_default();
        spec.constraints = deploy.placement.constraints.clone();
        spec.placement_prefs = deploy
            .placement
            .preferences
            .iter()
            .map(|p| format!("spread={}", p.spread))
            .collect();
        if let Some(u) = &deploy.update_config {
            spec.update = UpdatePolicy {
                parallelism: u.parallelism.unwrap_or(1),
                delay: u.delay.clone(),
                failure_action: u.failure_action.unwrap_or_default(),
                monitor: u.monitor.clone(),
                order: u.order.unwrap_or_default(),
            };
        }
        let r = &deploy.resources;
        spec.resources = Resources {
            limit_cpus: r.limits.cpus.as_ref().map(Scalar::text),
            limit_memory: r.limits.memory.as_ref().map(Scalar::text),
            reserve_cpus: r.reservations.cpus.as_ref().map(Scalar::text),
            reserve_memory: r.reservations.memory.as_ref().map(Scalar::text),
        };
        if let Some(rp) = &deploy.restart_policy {
            spec.restart = RestartPolicy {
                condition: rp.condition.unwrap_or_default(),
                delay: rp.delay.clone(),
                max_attempts: rp.max_attempts,
                window: rp.window.clone(),
            };
        }
        for port in &service.ports {
            spec.ports
                .push(port_spec(port).map_err(|m| at("ports", m))?);
        }
        let networks: Vec<&str> = if service.networks.is_empty() {
            vec!["default"]
        } else {
            service.networks.iter().map(String::as_str).collect()
        };
        for n in networks {
            spec.networks.push(network_name(short, n)?);
        }
        match &service.environment {
            None => {}
            Some(Environment::List(items)) => {
                for item in items {
                    let (k, v) = item
                        .split_once('=')
                        .ok_or_else(|| at("environment", format!("{item:?} is not KEY=VALUE")))?;
                    spec.env.insert(k.to_string(), v.to_string());
                }
            }
            Some(Environment::Map(map)) => {
                for (k, v) in map {
                    spec.env
                        .insert(k.clone(), v.as_ref().map(Scalar::text).unwrap_or_default());
                }
            }
        }
        spec.validate().map_err(|e| at(&e.field, e.message))?;
        specs.push(spec);
    }
    Ok(specs)
}

fn port_spec(port: &Port) -> Result<PortSpec, String> {
    match port {
        Port::Short(s) => parse_publish(&s.text()),
        Port::Long(l) => {
            Ok(PortSpec {
                target: l.target,
                published: l.published.text().parse().map_err(|_| {
                    format!("published port {:?} is not a number", l.published.text())
                })?,
                protocol: l.protocol,
                mode: l.mode,
            })
        }
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
    fn unsupported_keys_are_refused_by_name() {
        let with = |extra: &str| {
            parse(&format!("services:\n  web:\n    image: x\n{extra}"), "s").expect_err("refused")
        };
        let e = with("    build: .\n");
        assert!(e.contains("build"), "{e}");
        let e = with("    deploy:\n      labels: {a: b}\n");
        assert!(e.contains("labels"), "{e}");
        let e = with("    volumes: [\"/data:/data\"]\n");
        assert!(e.contains("volumes"), "{e}");
        let e = with("    networks: [nowhere]\n");
        assert!(e.contains("nowhere"), "{e}");
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
        let e = parse("secrets: {}\nservices:\n  web:\n    image: x\n", "s").expect_err("secrets");
        assert!(e.contains("secrets"), "{e}");
    }
}
