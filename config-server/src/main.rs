//! `fogswarm-server`: see the library for what it serves.

use clap::{ArgGroup, Parser};
use fogswarm_server::{ServerOptions, TlsMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fogswarm-server",
    version,
    about = "The fogswarm fleet configuration server"
)]
#[command(group(ArgGroup::new("tls").args(["tls_cert", "tls_self_signed"])))]
struct Args {
    /// Data directory: database, admin token, provisioning key, TLS files.
    #[arg(long, env = "FOGSWARM_DATA")]
    data: PathBuf,
    /// Address and port to listen on.
    #[arg(long, env = "FOGSWARM_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (with the CA last, to pin the CA).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Generate (once) a CA under the data directory and a server
    /// certificate signed by it.
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
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Log level (trace, debug, info, warn, error); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
        (Some(cert), Some(key), _) => TlsMode::Files { cert, key },
        (_, _, true) => TlsMode::SelfSigned {
            names: args.tls_sans,
        },
        _ => TlsMode::Off,
    };
    let opts = ServerOptions {
        data: args.data,
        listen: args.listen,
        tls,
        mdns: args.mdns,
        mdns_interface: args.mdns_interface,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fogswarm_server::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
