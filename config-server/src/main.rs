//! `fogswarm-server`: see the library for what it serves. Also backs up
//! and restores a SQLite fleet.

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Parser, Subcommand};
use fogswarm_server::db::{Location, PostgresOptions};
use fogswarm_server::{ServerOptions, TlsMode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fogswarm-server",
    version,
    about = "The fogswarm fleet configuration server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the fleet's SQLite database, consistently, while the server
    /// runs (SQLite's online backup API), and its secrets key beside it
    /// as FILE.secrets-key. Both are written 0600: the copy holds the CA
    /// and join tokens, the key opens every secret. For PostgreSQL use
    /// pg_dump and copy the key yourself.
    Backup {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The key the server seals secrets with [default: DATA/secrets.key].
        #[arg(long, env = "FOGSWARM_SECRETS_KEY_FILE")]
        secrets_key_file: Option<PathBuf>,
        /// The file to write (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place as a data directory's database, and its
    /// secrets key as DATA/secrets.key. The server started on it serves
    /// the same fleet: devices keep their keys, the CA (and its
    /// fingerprint) is the same, secrets open.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The backup's secrets key [default: FROM.secrets-key].
        #[arg(long)]
        secrets_key: Option<PathBuf>,
        /// The data directory to restore into (must hold no database yet).
        #[arg(long, env = "FOGSWARM_DATA")]
        data: PathBuf,
    },
    /// Replace the admin token, with the server running or not: the new
    /// one is written to DATA/admin.token (0600) and the old one stops
    /// working at once, on every replica. Online, admins use
    /// `fogswarm admin-token rotate`.
    AdminToken {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Make a new admin token (the only thing this command does; the
        /// flag says so where it is run).
        #[arg(long, required = true)]
        rotate: bool,
    },
}

/// Where the fleet's database is.
#[derive(Args)]
struct DatabaseArgs {
    /// Data directory: database (by default), admin token, provisioning
    /// key, TLS files. Required.
    // Checked by hand: clap cannot require it of the server without also
    // requiring it beside a subcommand.
    #[arg(long, env = "FOGSWARM_DATA")]
    data: Option<PathBuf>,
    /// The database: a SQLite file (default DATA/fleet.db) or
    /// postgres://USER@HOST[:PORT]/DB, shared by several replicas. Never
    /// with a password: see --database-password-file.
    #[arg(long, env = "FOGSWARM_DATABASE")]
    database: Option<String>,
    /// File holding the PostgreSQL password (else PGPASSWORD, if set).
    #[arg(long, env = "FOGSWARM_DATABASE_PASSWORD_FILE")]
    database_password_file: Option<PathBuf>,
    /// PostgreSQL connections this replica keeps at most.
    #[arg(long, default_value_t = 16)]
    database_pool: usize,
}

impl DatabaseArgs {
    fn data(&self) -> anyhow::Result<PathBuf> {
        self.data
            .clone()
            .context("--data (or FOGSWARM_DATA) is required: the data directory")
    }

    fn location(&self) -> anyhow::Result<(Option<Location>, PostgresOptions)> {
        let location = match &self.database {
            Some(text) => Some(Location::parse(text).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let password = match &self.database_password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => std::env::var("PGPASSWORD").ok(),
        };
        Ok((
            location,
            PostgresOptions {
                password,
                pool_size: self.database_pool,
            },
        ))
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("tls").args(["tls_cert", "tls_self_signed"])))]
struct Serve {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Address and port to listen on.
    #[arg(long, env = "FOGSWARM_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (certbot's fullchain.pem). Read again on
    /// SIGHUP and when the file changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The root CA (PEM) presented after the chain, so clients can pin the
    /// root: a pin then survives renewals under another intermediate.
    /// Clients that trust the system's roots need no pin at all.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Generate (once per fleet: it is kept in the database) a CA and a
    /// server certificate signed by it.
    #[arg(long)]
    tls_self_signed: bool,
    /// Extra host name or IP for the self-signed server certificate.
    #[arg(long = "tls-san", requires = "tls_self_signed")]
    tls_sans: Vec<String>,
    /// Advertise the server as _fogswarm._tcp.local. over mDNS.
    #[arg(long)]
    mdns: bool,
    /// Advertise on this interface only.
    #[arg(long, requires = "mdns")]
    mdns_interface: Option<String>,
    /// The key that seals secret values and registry passwords at rest
    /// [default: DATA/secrets.key, created on first start]. Replicas of
    /// one PostgreSQL database must share it.
    #[arg(long, env = "FOGSWARM_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// A registry (HOST:PORT) the server reaches over plain HTTP when it
    /// checks a signed-only swarm's images, as dockerd's flag of the name.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// At most this many devices get per-device series on /metrics (the
    /// first by id; 8 series each). Fleet-wide counts are always there.
    #[arg(long, default_value_t = 1000)]
    metrics_device_limit: usize,
    /// A proxy or load balancer (address or CIDR) whose X-Forwarded-For
    /// names the client, for the failed-authentication limits; repeatable.
    /// Without it, the connection's address is the client's.
    #[arg(long = "trusted-proxy", value_parser = parse_cidr)]
    trusted_proxies: Vec<fogswarm_server::http::Cidr>,
    /// A file holding a token /metrics then requires as a bearer token
    /// (Prometheus's `authorization` setting sends it). Without it,
    /// /metrics is open.
    #[arg(long, env = "FOGSWARM_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// How long the event log is kept (`90d`, `12h`); older events are
    /// deleted every minute.
    #[arg(long, default_value = "90d", value_parser = parse_age)]
    retain_events: i64,
    /// How long per-minute telemetry history is kept.
    #[arg(long, default_value = "24h", value_parser = parse_age)]
    retain_telemetry: i64,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Log level (trace, debug, info, warn, error); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// An age in seconds from `90d`, `24h`, `30m` or `45s` (at least a minute).
fn parse_age(s: &str) -> Result<i64, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let scale = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "{s:?}: give a number and a unit (d, h, m or s), like 90d"
            ))
        }
    };
    let secs = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{s:?}: give a number and a unit (d, h, m or s), like 90d"))?;
    if secs < 60 {
        return Err(format!("{s:?}: keep at least a minute"));
    }
    Ok(secs)
}

fn parse_cidr(s: &str) -> Result<fogswarm_server::http::Cidr, String> {
    fogswarm_server::http::Cidr::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Backup {
            database,
            secrets_key_file,
            to,
        }) => backup(&database, secrets_key_file, &to),
        Some(Command::Restore {
            from,
            secrets_key,
            data,
        }) => restore(&from, secrets_key.as_deref(), &data),
        Some(Command::AdminToken { database, rotate }) => {
            debug_assert!(rotate);
            rotate_admin_token(&database)
        }
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Serve) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},hyper=info,mdns_sd=warn", args.log_level))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let tls = match (args.tls_cert, args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => TlsMode::Files(fogswarm_server::tls::TlsFiles {
            cert,
            key,
            ca: args.tls_ca,
        }),
        (_, _, true) => TlsMode::SelfSigned {
            names: args.tls_sans,
        },
        _ => TlsMode::Off,
    };
    let (database, postgres) = args.database.location()?;
    let opts = ServerOptions {
        data: args.database.data()?,
        listen: args.listen,
        tls,
        mdns: args.mdns,
        mdns_interface: args.mdns_interface,
        database,
        postgres,
        secrets_key: args.secrets_key_file,
        insecure_registries: args.insecure_registries,
        metrics_device_limit: args.metrics_device_limit,
        trusted_proxies: args.trusted_proxies,
        metrics_token_file: args.metrics_token_file,
        retention: fogswarm_server::store::Retention {
            events_secs: args.retain_events,
            telemetry_secs: args.retain_telemetry,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(fogswarm_server::run(opts))
}

fn backup(args: &DatabaseArgs, key: Option<PathBuf>, to: &Path) -> anyhow::Result<()> {
    let (database, _) = args.location()?;
    let path = match database {
        None => args.data()?.join("fleet.db"),
        Some(Location::Sqlite(path)) => path,
        Some(Location::Postgres(_)) => bail!(
            "a PostgreSQL fleet is backed up with pg_dump --format=custom and restored with pg_restore (see README, Backup and restore)"
        ),
    };
    if !path.exists() {
        bail!("there is no database at {}", path.display());
    }
    let key = match key {
        Some(key) => key,
        None => args.data()?.join("secrets.key"),
    };
    let stored = fogswarm_server::backup::backup(&path, &key, to)?;
    println!(
        "backed up {} devices in {} swarms to {}",
        stored.devices,
        stored.swarms,
        to.display()
    );
    match stored.secrets_key {
        Some(copy) => println!(
            "secrets key copied to {}: it opens every secret and registry password in the backup; keep it as safe as the fleet, and apart from the backup where you can (a restore needs both)",
            copy.display()
        ),
        None => println!("no secrets key yet (the fleet has no sealed value): the backup alone restores it"),
    }
    Ok(())
}

fn restore(from: &Path, key: Option<&Path>, data: &Path) -> anyhow::Result<()> {
    let stored = fogswarm_server::backup::restore(from, key, data)?;
    println!(
        "restored {} devices in {} swarms into {}",
        stored.devices,
        stored.swarms,
        data.join("fleet.db").display()
    );
    if let Some(key) = stored.secrets_key {
        println!("secrets key: {}", key.display());
    }
    if let Some(fp) = stored.ca_fingerprint {
        println!("CA fingerprint (sha256): {fp}");
    }
    Ok(())
}

fn rotate_admin_token(args: &DatabaseArgs) -> anyhow::Result<()> {
    let data = args.data()?;
    let (database, postgres) = args.location()?;
    let location = database.unwrap_or_else(|| Location::Sqlite(data.join("fleet.db")));
    if let Location::Sqlite(path) = &location {
        if !path.exists() {
            bail!("there is no database at {}", path.display());
        }
    }
    let store = fogswarm_server::store::Store::open_location(&location, &postgres)?;
    let file = data.join("admin.token");
    fogswarm_server::rotate_shared_secret(
        &store,
        fogswarm_server::store::ServerCredentials::ADMIN_TOKEN_HASH,
        &file,
        "fsa",
    )?;
    println!(
        "new admin token written to {}; the old one no longer works",
        file.display()
    );
    Ok(())
}
