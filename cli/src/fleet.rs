//! The operator's commands: swarms, devices, fleet status and events,
//! through the server's operator API.

use crate::lab::BadInput;
use crate::table::Table;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fogswarm_client::{Client, Endpoint};
use fogswarm_protocol::api::*;
use fogswarm_protocol::validate::{self, AutoEnrol, Labels, Role};
use fogswarm_protocol::DeviceId;
use serde::Deserialize;
use std::path::PathBuf;

/// Where the server is and how to authenticate: flags, then environment,
/// then the config file.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Server URL, like https://10.0.0.2:8443, or several replicas'
    /// separated by commas (failed over in turn).
    #[arg(long, env = "FOGSWARM_SERVER", global = true)]
    pub server: Option<String>,
    /// File holding the admin token (the server prints its path at start).
    #[arg(long, env = "FOGSWARM_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's CA, as the server printed it.
    #[arg(long, env = "FOGSWARM_CA_FINGERPRINT", global = true)]
    pub ca_fingerprint: Option<String>,
    /// Config file with server, token_file and ca_fingerprint
    /// [default: ~/.config/fogswarm/cli.json]. (Not `--config`: that is
    /// Docker's flag for a service's config files.)
    #[arg(long = "client-config", env = "FOGSWARM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Output JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    token_file: Option<PathBuf>,
    ca_fingerprint: Option<String>,
}

impl Connection {
    /// A client for the operator API. The admin token is read from the
    /// token file (or `FOGSWARM_TOKEN`), never taken as a flag: flags end
    /// up in shell history and process lists.
    pub fn client(&self) -> Result<Client> {
        let default_config =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/fogswarm/cli.json"));
        let config_path = self.config.clone().or(default_config);
        let file: ConfigFile = match &config_path {
            Some(path) if path.exists() => serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a valid fogswarm CLI config", path.display()))?,
            Some(path) if self.config.is_some() => {
                return Err(
                    BadInput(format!("config file {} does not exist", path.display())).into(),
                )
            }
            _ => ConfigFile::default(),
        };
        let server = self.server.clone().or(file.server).ok_or_else(|| {
            BadInput("no server given: use --server, FOGSWARM_SERVER or the config file".into())
        })?;
        let fingerprint = self.ca_fingerprint.clone().or(file.ca_fingerprint);
        let token = match std::env::var("FOGSWARM_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            Some(t) => Secret::new(t),
            None => {
                let path = self.token_file.clone().or(file.token_file).ok_or_else(|| {
                    BadInput("no admin token: use --token-file, FOGSWARM_TOKEN_FILE, FOGSWARM_TOKEN or the config file".into())
                })?;
                Secret::new(
                    std::fs::read_to_string(&path)
                        .with_context(|| {
                            format!("reading the admin token from {}", path.display())
                        })?
                        .trim(),
                )
            }
        };
        let endpoint =
            Endpoint::new(&server, fingerprint.as_deref()).map_err(|e| BadInput(e.to_string()))?;
        Ok(Client::new(&endpoint, Some(token))?)
    }
}

#[derive(Subcommand, Debug)]
pub enum SwarmCommand {
    /// Declare a swarm.
    Create {
        name: String,
        /// What to do with unknown devices that enrol: off, worker, pending.
        #[arg(long, default_value = "off")]
        auto_enrol: String,
    },
    /// List swarms.
    Ls,
    /// Show one swarm.
    Show { name: String },
    /// Change a swarm's settings: auto-enrolment, signed-only images.
    Update {
        name: String,
        #[arg(long)]
        auto_enrol: Option<String>,
        /// Run only images signed by this public key (PEM, from `fogswarm
        /// image keygen`); repeat for several keys. Replaces the list.
        #[arg(long = "require-signed", value_name = "KEYFILE")]
        require_signed: Vec<PathBuf>,
        /// Let unsigned images run again (forget the swarm's keys).
        #[arg(long, conflicts_with = "require_signed")]
        allow_unsigned: bool,
        /// Let services be given devices matching this pattern
        /// (/dev/ttyACM*), or this exact cgroup rule ('c 89:* rwm').
        /// Adds to the list; repeatable.
        #[arg(long = "allow-device", value_name = "PATTERN")]
        allow_device: Vec<String>,
        /// Take a pattern or rule off the list.
        #[arg(long = "allow-device-rm", value_name = "PATTERN")]
        allow_device_rm: Vec<String>,
        /// Let services be --privileged (true) or not (false).
        #[arg(long, value_name = "BOOL")]
        allow_privileged: Option<bool>,
        /// Managers to keep: a manager unreachable past the grace period
        /// is replaced by the best eligible worker (1, 3, 5 or 7; 0: off).
        #[arg(long, value_name = "N")]
        managers: Option<u32>,
        /// How long a manager may be unreachable before it is replaced
        /// (Go-style duration: 60s, 2m) [server default: 60s].
        #[arg(long, value_name = "DURATION")]
        manager_grace: Option<String>,
        /// A node label no two managers may share a value of (location);
        /// '' clears it.
        #[arg(long, value_name = "LABEL")]
        spread_label: Option<String>,
        /// Recover the quorum without an operator once no manager has
        /// reached a raft leader for this long (at least the manager grace
        /// period; 0: only `swarm recover`).
        #[arg(long, value_name = "DURATION")]
        auto_recover: Option<String>,
        /// What an enrolled device enrolling again with another key gets:
        /// approve (held until `device approve`, the default) or auto
        /// (taken as a re-image at once).
        #[arg(long, value_name = "approve|auto")]
        reimage: Option<String>,
    },
    /// Have the swarm's raft leader rotate both join tokens, so an old one
    /// can no longer join (done on every decommission too).
    RotateTokens { name: String },
    /// Recover a swarm that lost its raft quorum: the surviving manager
    /// with the freshest raft log forces a new cluster (services kept),
    /// then workers are promoted back to the manager target.
    Recover { name: String },
    /// Remove a swarm (with --force, its devices too).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Declare a device by identity (MAC address or id).
    Add {
        id: String,
        #[arg(long)]
        swarm: String,
        /// leader, manager or worker.
        #[arg(long, default_value = "worker")]
        role: String,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Declare many devices from a CSV (id,swarm,role,labels with labels as
    /// k=v;k=v) or JSON file: all rows or none.
    Import {
        file: PathBuf,
        /// csv or json [default: from the file's extension].
        #[arg(long)]
        format: Option<String>,
    },
    /// List devices.
    Ls {
        #[arg(long)]
        swarm: Option<String>,
    },
    /// Show one device: facts, labels, presence and telemetry.
    Show { id: String },
    /// The device agent's recent log lines (it keeps the last 1000 in
    /// memory and sends them at its next report, no inbound connection).
    Logs {
        id: String,
        /// Keep streaming new lines until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<u64>,
    },
    /// Set labels: KEY=VALUE...
    Label {
        id: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Remove labels: KEY...
    Unlabel {
        id: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Change a device's role (or move it to another swarm).
    Update {
        id: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        swarm: Option<String>,
        /// Never promote this device to replace a lost manager (true), or
        /// let it be (false).
        #[arg(long, value_name = "BOOL")]
        never_manager: Option<bool>,
    },
    /// Approve a device held pending.
    Approve { id: String },
    /// Decommission a device (it leaves the swarm); --force removes it now.
    Rm {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

/// Input the CLI refuses itself (exit 2).
pub(crate) fn bad(e: impl std::fmt::Display) -> anyhow::Error {
    BadInput(e.to_string()).into()
}

fn check_device_id(id: &str) -> Result<String> {
    Ok(DeviceId::parse(id)
        .map_err(|e| bad(format!("device id {id:?}: {e}")))?
        .to_string())
}

fn parse_labels(args: &[String]) -> Result<Labels> {
    args.iter()
        .map(|a| validate::parse_label_assignment(a).map_err(bad))
        .collect()
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn swarm(conn: &Connection, command: SwarmCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        SwarmCommand::Create { name, auto_enrol } => {
            validate::validate_swarm_name(&name).map_err(bad)?;
            let auto_enrol = AutoEnrol::parse(&auto_enrol).map_err(bad)?;
            let view = client
                .create_swarm(&SwarmCreate { name, auto_enrol })
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "swarm {} created (auto-enrol {})",
                view.name,
                view.auto_enrol.as_str()
            );
        }
        SwarmCommand::Ls => {
            let swarms = client.list_swarms().await?;
            if conn.json {
                return print_json(&swarms);
            }
            let mut table =
                Table::new(&["NAME", "INITIALIZED", "DEVICES", "AUTO-ENROL", "MANAGERS"]);
            for s in &swarms {
                table.row([
                    s.name.clone(),
                    yes_no(s.initialized),
                    s.devices.to_string(),
                    s.auto_enrol.as_str().into(),
                    s.managers.join(","),
                ]);
            }
            table.print();
        }
        SwarmCommand::Show { name } => {
            let s = client.get_swarm(&name).await?;
            if conn.json {
                return print_json(&s);
            }
            println!("name:        {}", s.name);
            println!("initialized: {}", yes_no(s.initialized));
            println!("cluster id:  {}", s.cluster_id.as_deref().unwrap_or("-"));
            println!(
                "managers:    {}",
                if s.managers.is_empty() {
                    "-".into()
                } else {
                    s.managers.join(", ")
                }
            );
            println!("devices:     {}", s.devices);
            println!("auto-enrol:  {}", s.auto_enrol.as_str());
            if !s.signing_keys.is_empty() {
                println!("signed by:   {}", s.signing_keys.join(", "));
            }
            for u in &s.unsigned_services {
                println!(
                    "UNSIGNED:    service {} (made outside fogswarm) runs {}: {}",
                    u.name, u.image, u.problem
                );
            }
            if !s.allowed_devices.is_empty() {
                println!("hardware:    {} allowed", s.allowed_devices.join(", "));
            }
            if s.allow_privileged {
                println!("privileged:  allowed");
            }
            if let Some(holder) = &s.lease_holder {
                println!("initializing: {holder} holds the leader lease");
            }
            println!("{}", managers_kept(&s));
            println!(
                "re-image:    {}",
                match s.reimage {
                    Reimage::Approve =>
                        "another key for an enrolled device waits for `device approve`",
                    Reimage::Auto =>
                        "another key for an enrolled device is taken as a re-image at once",
                }
            );
            if let Some(r) = &s.recovery {
                println!(
                    "recovering:  recovery {} by {} (asked {})",
                    r.generation,
                    r.device_id,
                    ago(r.started_at)
                );
            }
        }
        SwarmCommand::Update {
            name,
            auto_enrol,
            require_signed,
            allow_unsigned,
            allow_device,
            allow_device_rm,
            allow_privileged,
            managers,
            manager_grace,
            spread_label,
            auto_recover,
            reimage,
        } => {
            let reimage = reimage
                .map(|r| {
                    Reimage::parse(&r)
                        .ok_or_else(|| bad(format!("--reimage {r:?}: give approve or auto")))
                })
                .transpose()?;
            let seconds = |flag: &str, d: Option<String>| {
                d.map(|d| {
                    fogswarm_protocol::service::parse_duration(&d)
                        .map(|ns| ns / 1_000_000_000)
                        .map_err(|m| bad(format!("--{flag}: {m}")))
                })
                .transpose()
            };
            let manager_grace_secs = seconds("manager-grace", manager_grace)?;
            let auto_recover_secs = seconds("auto-recover", auto_recover)?;
            let auto_enrol = auto_enrol
                .map(|a| AutoEnrol::parse(&a).map_err(bad))
                .transpose()?;
            let mut keys = Vec::new();
            for path in &require_signed {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("--require-signed {}: {e}", path.display())))?;
                fogswarm_images::sign::VerifyingKey::from_pem(&pem, &path.display().to_string())
                    .map_err(|e| bad(format!("--require-signed: {e}")))?;
                keys.push(pem);
            }
            let require_signed = (allow_unsigned || !keys.is_empty()).then_some(keys);
            for p in &allow_device {
                fogswarm_protocol::hardware::validate_allow_entry(p)
                    .map_err(|m| bad(format!("--allow-device: {m}")))?;
            }
            let allow_devices = if allow_device.is_empty() && allow_device_rm.is_empty() {
                None
            } else {
                let mut list = client.get_swarm(&name).await?.allowed_devices;
                list.retain(|p| !allow_device_rm.contains(p));
                for p in allow_device {
                    if !list.contains(&p) {
                        list.push(p);
                    }
                }
                Some(list)
            };
            if auto_enrol.is_none()
                && require_signed.is_none()
                && allow_devices.is_none()
                && allow_privileged.is_none()
                && managers.is_none()
                && manager_grace_secs.is_none()
                && spread_label.is_none()
                && auto_recover_secs.is_none()
                && reimage.is_none()
            {
                return Err(bad(
                    "nothing to change: give --auto-enrol, --require-signed, --allow-unsigned, --allow-device, --allow-device-rm, --allow-privileged, --managers, --manager-grace, --spread-label, --auto-recover or --reimage",
                ));
            }
            let view = client
                .update_swarm(
                    &name,
                    &SwarmUpdate {
                        auto_enrol,
                        require_signed,
                        allow_devices,
                        allow_privileged,
                        managers,
                        manager_grace_secs,
                        spread_label,
                        auto_recover_secs,
                        reimage,
                    },
                )
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "swarm {} auto-enrol {}; {}",
                view.name,
                view.auto_enrol.as_str(),
                if view.signing_keys.is_empty() {
                    "unsigned images allowed".to_string()
                } else {
                    format!(
                        "images must be signed by {}",
                        view.signing_keys.join(" or ")
                    )
                }
            );
            println!(
                "devices allowed: {}{}",
                if view.allowed_devices.is_empty() {
                    "none".to_string()
                } else {
                    view.allowed_devices.join(", ")
                },
                if view.allow_privileged {
                    "; privileged services allowed"
                } else {
                    ""
                }
            );
            println!("{}", managers_kept(&view));
        }
        SwarmCommand::Recover { name } => {
            let recovery = client.recover_swarm(&name).await?;
            if conn.json {
                return print_json(&recovery);
            }
            println!(
                "swarm {name}: recovery {} asked of {}, which forces a new cluster; then workers are promoted to the manager target (fogswarm events --subject {name})",
                recovery.generation, recovery.device_id
            );
        }
        SwarmCommand::RotateTokens { name } => {
            client.rotate_tokens(&name).await?;
            if !conn.json {
                println!("swarm {name}: the raft leader's agent rotates its join tokens");
            }
        }
        SwarmCommand::Rm { name, force } => {
            client.remove_swarm(&name, force).await?;
            if !conn.json {
                println!("swarm {name} removed");
            }
        }
    }
    Ok(())
}

/// The swarm's manager keeping, in a line.
fn managers_kept(s: &SwarmView) -> String {
    let recovery = match (s.auto_recover_secs, s.quorum_lost_at) {
        (_, Some(at)) => format!("; NO QUORUM since {}", ago(at)),
        (0, None) => String::new(),
        (secs, None) => format!("; quorum recovered after {secs}s without"),
    };
    if s.managers_target == 0 {
        return format!("managers kept: off (fogswarm swarm update NAME --managers 3){recovery}");
    }
    format!(
        "managers kept: {}, replaced after {}s unreachable{}{recovery}",
        s.managers_target,
        s.manager_grace_secs,
        s.spread_label
            .as_ref()
            .map(|l| format!(", at most one per {l}"))
            .unwrap_or_default()
    )
}

pub async fn device(conn: &Connection, command: DeviceCommand) -> Result<()> {
    // Validate before asking the server, with the same rules it uses.
    let client = conn.client()?;
    match command {
        DeviceCommand::Add {
            id,
            swarm,
            role,
            labels,
        } => {
            let spec = DeviceCreate {
                id: check_device_id(&id)?,
                swarm,
                role: Role::parse(&role).map_err(bad)?,
                labels: parse_labels(&labels)?,
            };
            validate::validate_swarm_name(&spec.swarm).map_err(bad)?;
            let view = client.create_device(&spec).await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "device {} added to swarm {} as {}",
                view.id, view.swarm, view.role
            );
        }
        DeviceCommand::Import { file, format } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let format = format.unwrap_or_else(|| {
                file.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default()
            });
            let content_type = match format.as_str() {
                "csv" => "text/csv",
                "json" => "application/json",
                other => {
                    return Err(bad(format!(
                        "import format {other:?} is not csv or json (use --format)"
                    )))
                }
            };
            let result = client.import_devices(content_type, bytes).await?;
            if conn.json {
                return print_json(&result);
            }
            println!(
                "imported {} devices from {}",
                result.created,
                file.display()
            );
        }
        DeviceCommand::Ls { swarm } => {
            let devices = client.list_devices(swarm.as_deref()).await?;
            if conn.json {
                return print_json(&devices);
            }
            let mut table = Table::new(&[
                "ID",
                "SWARM",
                "ROLE",
                "STATE",
                "NODE",
                "AGENT",
                "LAST SEEN",
                "LABELS",
            ]);
            for d in &devices {
                table.row([
                    d.id.to_string(),
                    d.swarm.clone(),
                    d.role.to_string(),
                    match d.offline_since {
                        Some(_) => format!("{} (offline)", d.state),
                        None => d.state.to_string(),
                    },
                    d.node_id
                        .as_deref()
                        .map(|n| n.chars().take(12).collect())
                        .unwrap_or_else(|| "-".into()),
                    d.agent_version.clone().unwrap_or_else(|| "-".into()),
                    d.last_seen.map(ago).unwrap_or_else(|| "never".into()),
                    join_labels(&d.labels),
                ]);
            }
            table.print();
        }
        DeviceCommand::Show { id } => {
            let id = check_device_id(&id)?;
            let d = client.get_device(&id).await?;
            if conn.json {
                return print_json(&d);
            }
            print_device(&d);
            if d.telemetry.is_some() {
                print_telemetry(&client.device_telemetry(&id).await?);
            }
        }
        DeviceCommand::Logs { id, follow, tail } => {
            let id = check_device_id(&id)?;
            let options = fogswarm_protocol::logs::LogOptions {
                follow,
                tail,
                ..Default::default()
            };
            options
                .validate()
                .map_err(|e| bad(format!("--{}: {}", e.field, e.message)))?;
            // The device sees the request at its next report: allow a few
            // of its intervals.
            let every = client.get_device(&id).await?.heartbeat_secs.unwrap_or(30);
            let patience = std::time::Duration::from_secs(3 * every + 10);
            crate::logs::print_logs(
                &client,
                &fogswarm_client::LogSource::Agent { device: id.clone() },
                &options,
                patience,
                &format!(
                    "device {id} did not answer within {}s (it reports every {every}s); is its agent running?",
                    patience.as_secs()
                ),
            )
            .await?;
        }
        DeviceCommand::Label { id, labels } => {
            let change = LabelChange {
                set: parse_labels(&labels)?,
                unset: Vec::new(),
            };
            let view = client
                .change_labels(&check_device_id(&id)?, &change)
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!("device {} labels: {}", view.id, join_labels(&view.labels));
        }
        DeviceCommand::Unlabel { id, keys } => {
            for key in &keys {
                validate::validate_operator_label_key(key).map_err(bad)?;
            }
            let change = LabelChange {
                set: Labels::new(),
                unset: keys,
            };
            let view = client
                .change_labels(&check_device_id(&id)?, &change)
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!("device {} labels: {}", view.id, join_labels(&view.labels));
        }
        DeviceCommand::Update {
            id,
            role,
            swarm,
            never_manager,
        } => {
            let update = DeviceUpdate {
                swarm,
                role: role.as_deref().map(Role::parse).transpose().map_err(bad)?,
                labels: None,
                never_manager,
            };
            let view = client
                .update_device(&check_device_id(&id)?, &update)
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "device {} is a {} of swarm {}{}",
                view.id,
                view.role,
                view.swarm,
                if view.never_manager {
                    " (never promoted)"
                } else {
                    ""
                }
            );
        }
        DeviceCommand::Approve { id } => {
            let view = client.approve_device(&check_device_id(&id)?).await?;
            if conn.json {
                return print_json(&view);
            }
            println!("device {} approved", view.id);
        }
        DeviceCommand::Rm { id, force } => {
            let id = check_device_id(&id)?;
            let left = client.remove_device(&id, force).await?;
            if conn.json {
                return print_json(&left);
            }
            match left {
                Some(_) => println!("device {id} is told to leave; it is removed once it has"),
                None => println!("device {id} removed"),
            }
        }
    }
    Ok(())
}

pub async fn status(conn: &Connection) -> Result<()> {
    let status = conn.client()?.status().await?;
    if conn.json {
        return print_json(&status);
    }
    let mut table = Table::new(&["SWARM", "INITIALIZED", "DEVICES", "BY STATE"]);
    for s in &status.swarms {
        table.row([
            s.name.clone(),
            yes_no(s.initialized),
            s.devices.to_string(),
            s.by_state
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    if !status.offline.is_empty() {
        let mut offline = Table::new(&["OFFLINE DEVICE", "SWARM", "SINCE", "LAST SEEN"]);
        for o in &status.offline {
            offline.row([
                o.device.clone(),
                o.swarm.clone(),
                ago(o.since),
                o.last_seen.map(ago).unwrap_or_else(|| "never".into()),
            ]);
        }
        offline.print();
        println!();
    }
    table.print();
    println!(
        "{} devices in {} swarms{}",
        status.devices,
        status.swarms.len(),
        match status.offline.len() {
            0 => String::new(),
            n => format!(", {n} offline"),
        }
    );
    if !status.outdated_agents.is_empty() {
        println!();
        println!(
            "agents older than this server (protocol {}): served, but update them (fogswarm agent rollout) before the next server release",
            fogswarm_protocol::version::PROTOCOL
        );
        let mut outdated = Table::new(&["DEVICE", "SWARM", "PROTOCOL", "AGENT"]);
        for a in &status.outdated_agents {
            outdated.row([
                a.device.clone(),
                a.swarm.clone(),
                a.protocol.clone(),
                a.agent_version.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        outdated.print();
    }
    if !status.problems.is_empty() {
        println!();
        let mut problems = Table::new(&["DEVICE", "SWARM", "ERROR"]);
        for p in &status.problems {
            problems.row([p.device.clone(), p.swarm.clone(), p.error.clone()]);
        }
        problems.print();
    }
    Ok(())
}

pub async fn events(
    conn: &Connection,
    since: i64,
    limit: u32,
    subject: Option<String>,
) -> Result<()> {
    let events = conn
        .client()?
        .events(since, limit, subject.as_deref())
        .await?;
    if conn.json {
        return print_json(&events);
    }
    let mut table = Table::new(&["ID", "WHEN", "ACTOR", "ACTION", "SUBJECT", "DETAIL"]);
    for e in &events {
        table.row([
            e.id.to_string(),
            ago(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.subject.clone(),
            e.detail.clone(),
        ]);
    }
    table.print();
    Ok(())
}

fn print_device(d: &DeviceView) {
    println!("id:          {}", d.id);
    println!("swarm:       {}", d.swarm);
    println!(
        "role:        {}{}{}",
        d.role,
        match d.manager {
            Some(true) if d.raft_leader => " (swarm manager, raft leader)",
            Some(true) => " (swarm manager)",
            Some(false) => " (swarm worker)",
            None => "",
        },
        if d.never_manager {
            "; never promoted"
        } else {
            ""
        }
    );
    println!("state:       {}", d.state);
    if let Some(since) = d.offline_since {
        println!(
            "OFFLINE:     since {} (not heard for three report intervals of {}s)",
            ago(since),
            d.heartbeat_secs.unwrap_or(30)
        );
    }
    println!("enrolled:    {}", yes_no(d.enrolled));
    if let Some(key) = &d.key {
        println!(
            "key:         {key}{}",
            d.endorsement_key
                .as_ref()
                .map(|ek| format!(" (in a TPM, endorsement key {ek})"))
                .unwrap_or_else(|| " (file)".into())
        );
    }
    if let Some(p) = &d.reenrol_pending {
        println!(
            "RE-ENROLMENT: another key ({}) asked {} to be this device; `fogswarm device approve {}` accepts it as a re-image",
            p.key,
            ago(p.since),
            d.id
        );
    }
    println!("node id:     {}", d.node_id.as_deref().unwrap_or("-"));
    println!("cluster id:  {}", d.cluster_id.as_deref().unwrap_or("-"));
    println!(
        "engine:      {}",
        d.engine_version.as_deref().unwrap_or("-")
    );
    println!("agent:       {}", d.agent_version.as_deref().unwrap_or("-"));
    if let Some(protocol) = &d.protocol {
        if fogswarm_protocol::version::behind(protocol) {
            println!(
                "protocol:    {protocol} (older than the server's {}: update the agent)",
                fogswarm_protocol::version::PROTOCOL
            );
        } else {
            println!("protocol:    {protocol}");
        }
    }
    println!(
        "last seen:   {}",
        d.last_seen.map(ago).unwrap_or_else(|| "never".into())
    );
    println!("labels:      {}", join_labels(&d.labels));
    println!(
        "facts:       {}",
        d.facts
            .iter()
            .map(|(k, v)| format!("fog.{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(e) = &d.last_error {
        println!("error:       {e}");
    }
}

/// The latest sample, and the last hour as sparklines.
fn print_telemetry(t: &fogswarm_protocol::telemetry::TelemetryView) {
    let Some(latest) = &t.latest else { return };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "telemetry:   {}",
        t.latest_at.map(ago).unwrap_or_else(|| "-".into())
    );
    println!(
        "  cpu        {}   load {}",
        or_dash(latest.cpu_percent.map(|c| format!("{c:.1}%"))),
        or_dash(
            latest
                .load
                .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
        )
    );
    println!(
        "  memory     {} of {} MiB",
        or_dash(latest.memory_used_mb.map(|m| m.to_string())),
        or_dash(latest.memory_total_mb.map(|m| m.to_string()))
    );
    println!(
        "  disk free  {} of {} MiB (engine data)",
        or_dash(latest.disk_free_mb.map(|m| m.to_string())),
        or_dash(latest.disk_total_mb.map(|m| m.to_string()))
    );
    println!(
        "  temp       {}",
        or_dash(latest.temperature_c.map(|c| format!("{c:.1} °C")))
    );
    println!(
        "  uptime     {}   containers running {}",
        or_dash(
            latest
                .uptime_secs
                .map(|u| format!("{}h{:02}m", u / 3600, u / 60 % 60))
        ),
        or_dash(latest.containers_running.map(|c| c.to_string()))
    );
    let hour: Vec<_> = t.history.iter().rev().take(60).rev().collect();
    if hour.len() > 1 {
        let line = |f: &dyn Fn(&fogswarm_protocol::telemetry::TelemetryPoint) -> Option<f64>| {
            sparkline(&hour.iter().map(|p| f(p)).collect::<Vec<_>>())
        };
        println!("  last hour (one mark a minute):");
        println!("    cpu     {}", line(&|p| p.cpu_percent));
        println!(
            "    memory  {}",
            line(&|p| p.memory_used_mb.map(|m| m as f64))
        );
        println!("    temp    {}", line(&|p| p.temperature_c));
    }
}

/// Values as block characters scaled between their minimum and maximum; a
/// gap where a minute has none.
fn sparkline(values: &[Option<f64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    let (lo, hi) = known
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    values
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(_) if hi <= lo => BARS[0],
            Some(v) => BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize],
        })
        .collect()
}

fn join_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
pub(crate) fn ago(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(at);
    let s = (now - at).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}
