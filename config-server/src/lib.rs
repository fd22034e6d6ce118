//! fogswarm-server: the fleet's source of truth.
//!
//! Holds swarms and devices in SQLite, answers devices' bootstrap requests
//! (enrol, config, report, tokens, desired state) and the operator API, and
//! optionally advertises itself over mDNS.

pub mod http;
pub mod mdns;
pub mod metrics;
pub mod secrets;
pub mod store;
pub mod tls;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

/// How the server does TLS.
#[derive(Debug, Clone)]
pub enum TlsMode {
    Off,
    /// A PEM chain and key from the operator.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// A CA of our own under the data dir, and a server certificate for
    /// these names (plus localhost and the listen address).
    SelfSigned {
        names: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub tls: TlsMode,
    pub mdns: bool,
    pub mdns_interface: Option<String>,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(opts: ServerOptions) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.data)
        .with_context(|| format!("creating the data directory {}", opts.data.display()))?;
    let admin_file = opts.data.join("admin.token");
    let provisioning_file = opts.data.join("provisioning.key");
    let admin = secrets::load_or_create(&admin_file, "fsa")
        .with_context(|| format!("reading {}", admin_file.display()))?;
    let provisioning = secrets::load_or_create(&provisioning_file, "fsp")
        .with_context(|| format!("reading {}", provisioning_file.display()))?;
    let db_path = opts.data.join("fleet.db");
    let store =
        store::Store::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;

    let identity = match &opts.tls {
        TlsMode::Off => None,
        TlsMode::Files { cert, key } => Some(tls::load(cert, key)?),
        TlsMode::SelfSigned { names } => {
            let mut all = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            if !addr.ip().is_unspecified() {
                all.push(addr.ip().to_string());
            }
            all.extend(names.iter().cloned());
            all.sort();
            all.dedup();
            Some(tls::self_signed(&opts.data.join("tls"), &all)?)
        }
    };
    let fingerprint = identity.as_ref().map(|i| i.fingerprint.clone());

    let state = Arc::new(http::AppState {
        store,
        admin_hash: secrets::hash(admin.expose()),
        provisioning_hash: std::sync::RwLock::new(secrets::hash(provisioning.expose())),
        provisioning_file: provisioning_file.clone(),
        revisions: Default::default(),
        metrics: Default::default(),
    });
    drop((admin, provisioning));
    let app = http::router(state);

    let _mdns = if opts.mdns {
        Some(mdns::advertise(
            addr.port(),
            addr.ip(),
            fingerprint.as_deref(),
            opts.mdns_interface.as_deref(),
        )?)
    } else {
        None
    };

    // What an operator needs, and where the secrets are (never the secrets).
    let scheme = if identity.is_some() { "https" } else { "http" };
    println!("fogswarm-server listening on {scheme}://{addr}");
    println!("data directory: {}", opts.data.display());
    println!("admin token file: {}", admin_file.display());
    println!("provisioning key file: {}", provisioning_file.display());
    if let Some(fp) = &fingerprint {
        println!("CA fingerprint (sha256): {fp}");
    }
    if opts.mdns {
        println!("advertising {} on port {}", mdns::SERVICE_TYPE, addr.port());
    }
    tracing::info!(%addr, tls = identity.is_some(), mdns = opts.mdns, "serving");

    match identity {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?
        }
        Some(identity) => serve_tls(listener, app, identity).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    identity: tls::Identity,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.config);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
