//! The stack files under tests/fixtures/stacks (renditions of public
//! projects' swarm stacks, see its README) all load as `fogswarm stack
//! deploy` loads them, with what each one relies on checked.

use anyhow::{ensure, Context, Result};
use fogswarm::compose::{load, Input, Project};
use fogswarm_protocol::secret::FileKind;
use fogswarm_protocol::service::{MountType, ServiceMode, ServiceSpec};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stacks")
}

fn stack(dir: &str, file: &str) -> Result<Project> {
    let mut input = Input::read(&[fixtures().join(dir).join(file)]).map_err(anyhow::Error::msg)?;
    // As on a CI machine that sets none of the stacks' variables.
    input.env.retain(|k, _| k == "HOME");
    load(&input, dir).map_err(|e| anyhow::anyhow!("{dir}/{file}: {e}"))
}

fn service<'a>(p: &'a Project, name: &str) -> Result<&'a ServiceSpec> {
    p.services
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no service {name}"))
}

#[test]
fn every_fixture_loads() -> Result<()> {
    let all = [
        ("monitoring", "docker-compose.yml", 6),
        ("voting", "docker-stack.yml", 5),
        ("shop", "docker-stack.yml", 5),
        ("proxy", "docker-compose.yml", 1),
        ("broker-arm", "docker-compose.yml", 2),
        ("storage", "minio-server.yml", 1),
        ("logging", "docker-compose.yml", 2),
        ("wordpress", "docker-compose.yml", 3),
        ("iot", "iot-stack.yml", 4),
        ("management", "portainer-agent-stack.yml", 2),
        ("elk", "docker-stack.yml", 3),
    ];
    let on_disk = std::fs::read_dir(fixtures())?
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    ensure!(
        on_disk == all.len(),
        "{on_disk} fixture directories, {} checked",
        all.len()
    );
    for (dir, file, services) in all {
        let p = stack(dir, file)?;
        ensure!(
            p.services.len() == services,
            "{dir}: {} services",
            p.services.len()
        );
        for s in &p.services {
            s.validate()
                .map_err(|e| anyhow::anyhow!("{dir}: {}: {e}", s.name))?;
            ensure!(s.name.starts_with(&format!("{dir}_")), "{}", s.name);
        }
    }
    Ok(())
}

#[test]
fn what_each_stack_relies_on_arrives() -> Result<()> {
    // Monitoring: a config from a file, `$$` kept as one dollar, defaults.
    let p = stack("monitoring", "docker-compose.yml")?;
    let caddy = service(&p, "monitoring_caddy")?;
    ensure!(caddy.mode == ServiceMode::Global);
    ensure!(caddy.configs[0].source == "monitoring_caddy_config");
    ensure!(
        p.files.len() == 1 && p.files[0].kind == FileKind::Config,
        "only used configs are read"
    );
    let exporter = service(&p, "monitoring_node-exporter")?;
    ensure!(
        exporter.command[1].contains("($|/)"),
        "{:?}",
        exporter.command
    );
    ensure!(exporter.env["NODE_ID"] == "{{.Node.ID}}");
    let grafana = service(&p, "monitoring_grafana")?;
    ensure!(grafana.env["GF_SECURITY_ADMIN_USER"] == "admin");
    ensure!(grafana.mounts[0].source.as_deref() == Some("monitoring_grafana"));
    // Voting: unquoted ports, prefixed networks and volumes.
    let p = stack("voting", "docker-stack.yml")?;
    let vote = service(&p, "voting_vote")?;
    ensure!(vote.ports[0].published == 5000 && vote.ports[0].target == 80);
    ensure!(service(&p, "voting_worker")?.networks == ["voting_frontend", "voting_backend"]);
    // Shop: external secrets keep their names; the encrypted network.
    let p = stack("shop", "docker-stack.yml")?;
    let gateway = service(&p, "shop_payment_gateway")?;
    ensure!(gateway.secrets[0].source == "staging_token");
    ensure!(gateway.secrets[0].target.as_deref() == Some("payment_token"));
    ensure!(gateway.network_options["shop_payment"]["encrypted"] == "yes");
    ensure!(service(&p, "shop_visualizer")?.stop_grace_period.as_deref() == Some("1m30s"));
    ensure!(p.files.is_empty(), "external secrets are not created");
    // Proxy: a quoted command line, an external network.
    let p = stack("proxy", "docker-compose.yml")?;
    let traefik = service(&p, "proxy_traefik")?;
    ensure!(traefik.command.last().map(String::as_str) == Some("--accesslog.format=json"));
    ensure!(traefik.networks == ["appnet"]);
    // Storage: the long bind syntax.
    let p = stack("storage", "minio-server.yml")?;
    let minio = service(&p, "storage_minio")?;
    ensure!(minio.mounts[0].kind == MountType::Bind && minio.command == ["server", "/data"]);
    // Logging: deploy labels as a list, a log driver with options, udp.
    let p = stack("logging", "docker-compose.yml")?;
    let kibana = service(&p, "logging_kibana")?;
    ensure!(kibana.labels["traefik.port"] == "5601");
    let log = kibana.log_driver.as_ref().context("log driver")?;
    ensure!(log.name == "fluentd" && log.options["fluentd-max-retries"] == "30");
    ensure!(service(&p, "logging_fluentd")?.ports.len() == 2);
    ensure!(p.warnings.is_empty(), "{:?}", p.warnings);
    // WordPress: depends_on is ignored with a warning; limits arrive.
    let p = stack("wordpress", "docker-compose.yml")?;
    ensure!(
        p.warnings
            .iter()
            .any(|w| w.contains("wordpress_wordpress")
                || w.contains("services.wordpress.depends_on")),
        "{:?}",
        p.warnings
    );
    ensure!(
        service(&p, "wordpress_db")?
            .resources
            .limit_memory
            .as_deref()
            == Some("256M")
    );
    // IoT: two configs from files, a relative bind resolved beside the file.
    let p = stack("iot", "iot-stack.yml")?;
    ensure!(
        p.files.len() == 2,
        "{:?}",
        p.files.iter().map(|f| &f.name).collect::<Vec<_>>()
    );
    let grafana = service(&p, "iot_grafana")?;
    let bind = grafana
        .mounts
        .iter()
        .find(|m| m.kind == MountType::Bind)
        .context("bind")?;
    let expected = fixtures().join("iot").join("grafana-provisioning");
    ensure!(
        bind.source.as_deref().map(|s| s.trim_end_matches('/')) == expected.to_str(),
        "{:?}",
        bind.source
    );
    // Management: an NFS volume through driver options.
    let p = stack("management", "portainer-agent-stack.yml")?;
    let portainer = service(&p, "management_portainer")?;
    ensure!(portainer.mounts[0].volume_options["type"] == "nfs4");
    // ELK: configs from nested paths, dotted environment keys.
    let p = stack("elk", "docker-stack.yml")?;
    ensure!(p.files.len() == 4);
    ensure!(service(&p, "elk_elasticsearch")?.env["discovery.type"] == "single-node");
    Ok(())
}
