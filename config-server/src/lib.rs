//! fogswarm-server: the fleet's source of truth.
//!
//! Holds swarms and devices in SQLite or PostgreSQL, answers devices'
//! bootstrap requests (enrol, config, report, tokens, desired state) and
//! the operator API, and optionally advertises itself over mDNS. On
//! PostgreSQL any number of replicas serve the same fleet at once.

pub mod backup;
mod dashboard;
pub mod db;
pub mod http;
pub mod limit;
mod maintenance;
pub mod mdns;
pub mod metrics;
pub mod seal;
pub mod secrets;
pub mod signed;
pub mod store;
pub mod tls;

use anyhow::{Context, Result};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use store::ServerCredentials;

/// How the server does TLS.
#[derive(Debug, Clone)]
pub enum TlsMode {
    Off,
    /// A PEM chain and key from the operator (and the root to present
    /// after the chain), read again on SIGHUP and when they change.
    Files(tls::TlsFiles),
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
    /// The database; SQLite in the data directory when not given.
    pub database: Option<db::Location>,
    pub postgres: db::PostgresOptions,
    /// The key that seals secrets at rest; DATA/secrets.key when not given
    /// (created on first start). Replicas of one database share it.
    pub secrets_key: Option<PathBuf>,
    /// Registries reached over plain HTTP for signed-only swarms' lookups.
    pub insecure_registries: Vec<String>,
    /// Devices with per-device series on /metrics, at most.
    pub metrics_device_limit: usize,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<http::Cidr>,
    /// A file with the bearer token /metrics requires (open without).
    pub metrics_token_file: Option<PathBuf>,
    /// How long events and telemetry history are kept.
    pub retention: store::Retention,
}

impl ServerOptions {
    pub fn database(&self) -> db::Location {
        self.database
            .clone()
            .unwrap_or_else(|| db::Location::Sqlite(self.data.join("fleet.db")))
    }
}

/// Opens the fleet's store as the options say.
pub fn open_store(opts: &ServerOptions) -> Result<store::Store> {
    let location = opts.database();
    store::Store::open_location(&location, &opts.postgres).with_context(|| match &location {
        db::Location::Sqlite(path) => format!("opening {}", path.display()),
        db::Location::Postgres(_) => "opening the PostgreSQL database".to_string(),
    })
}

/// A secret the fleet shares through the database, by its hash: the one
/// stored, or, on the fleet's first start, the one in `file` (made there
/// when missing). Answers whether `file` holds that secret, so the
/// operator is told where to find it.
fn shared_secret(
    store: &store::Store,
    name: &str,
    file: &std::path::Path,
    prefix: &str,
) -> Result<bool> {
    let hash = store.credential_or_insert(name, || {
        let secret = secrets::load_or_create(file, prefix)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(secrets::hash(secret.expose()))
    })?;
    let here = std::fs::read_to_string(file)
        .map(|text| secrets::matches(text.trim(), &hash))
        .unwrap_or(false);
    if !here && file.exists() {
        tracing::warn!(file = %file.display(), "this file does not hold the fleet's current secret; it is not used");
    }
    Ok(here)
}

/// Replaces a secret the fleet shares by its hash (the admin token, the
/// provisioning key) and answers it: written beside `file` first, the
/// hash stored, then moved over `file`, so a failure never leaves `file`
/// holding a secret the fleet does not know.
pub fn rotate_shared_secret(
    store: &store::Store,
    name: &str,
    file: &std::path::Path,
    prefix: &str,
) -> Result<fogswarm_protocol::api::Secret> {
    let secret = secrets::random_token(prefix);
    let next = file.with_extension("next");
    secrets::write_secret_file(&next, secret.expose())
        .with_context(|| format!("writing {}", next.display()))?;
    if let Err(e) = store.set_credential(name, &secrets::hash(secret.expose())) {
        let _ = std::fs::remove_file(&next);
        return Err(e.into());
    }
    std::fs::rename(&next, file).with_context(|| {
        format!(
            "moving {} to {} (the new secret is in effect and in the first)",
            next.display(),
            file.display()
        )
    })?;
    Ok(secret)
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(opts: ServerOptions) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.data)
        .with_context(|| format!("creating the data directory {}", opts.data.display()))?;
    let store = open_store(&opts)?.with_retention(opts.retention);
    let admin_file = opts.data.join("admin.token");
    let provisioning_file = opts.data.join("provisioning.key");
    let admin_here = shared_secret(
        &store,
        ServerCredentials::ADMIN_TOKEN_HASH,
        &admin_file,
        "fsa",
    )?;
    let provisioning_here = shared_secret(
        &store,
        ServerCredentials::PROVISIONING_KEY_HASH,
        &provisioning_file,
        "fsp",
    )?;

    let key_file = opts
        .secrets_key
        .clone()
        .unwrap_or_else(|| opts.data.join("secrets.key"));
    let sealer = seal::Sealer::open_or_create(&key_file)?;

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;

    // The fleet's CA: it signs the server's certificate (self-signed mode)
    // and users' client certificates (every mode).
    let tls_dir = opts.data.join("tls");
    let ca =
        store.credential_or_insert(ServerCredentials::CA, || tls::existing_or_new_ca(&tls_dir))?;
    let ca_pem = serde_json::from_str::<tls::StoredCa>(&ca)
        .context("the stored CA is not valid")?
        .cert;
    let identity = match &opts.tls {
        TlsMode::Off => None,
        TlsMode::Files(files) => Some(tls::load(files, &ca_pem)?),
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
            Some(tls::self_signed(&ca, &tls_dir, &all)?)
        }
    };
    let fingerprint = identity.as_ref().map(|i| i.fingerprint.clone());

    let metrics_hash = match &opts.metrics_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the metrics token from {}", path.display()))?;
            let token = token.trim();
            if token.len() < 16 {
                anyhow::bail!(
                    "the metrics token in {} is shorter than 16 characters",
                    path.display()
                );
            }
            Some(secrets::hash(token))
        }
        None => None,
    };
    let state = Arc::new(http::AppState {
        store,
        admin_file: admin_file.clone(),
        provisioning_file: provisioning_file.clone(),
        revisions: Default::default(),
        metrics: Default::default(),
        limiter: Default::default(),
        sealer,
        insecure_registries: opts.insecure_registries.clone(),
        metrics_device_limit: opts.metrics_device_limit,
        live: dashboard::live_channel(),
        secure_cookies: identity.is_some(),
        trusted_proxies: opts.trusted_proxies.clone(),
        metrics_hash,
        replica: http::ReplicaSelf::new(addr.port()),
    });
    state.check_in();
    dashboard::spawn_live(state.clone());
    // Changes made through other replicas wake this one's long polls.
    let (woken, resynced) = (state.clone(), state.clone());
    let _listener = db::Listener::spawn(
        state.store.database(),
        move |swarm, revision| woken.wake(swarm, revision),
        move || resynced.resync(),
    );
    // Last-seen times and telemetry are written in batches (see
    // store::presence), with the other periodic work, on a thread of its own.
    maintenance::spawn(state.clone()).context("cannot start the maintenance thread")?;
    let last_flush = state.clone();
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
    match opts.database() {
        db::Location::Sqlite(path) => println!("database: {} (SQLite)", path.display()),
        db::Location::Postgres(_) => println!("database: PostgreSQL (shared by every replica)"),
    }
    // Another replica (or the server a backup came from) may hold the
    // secrets; this one knows only their hashes then.
    let elsewhere =
        "none here: the fleet's was made by another replica or came with a restored backup";
    if admin_here {
        println!("admin token file: {}", admin_file.display());
    } else {
        println!("admin token file: {elsewhere}");
    }
    if provisioning_here {
        println!("provisioning key file: {}", provisioning_file.display());
    } else {
        println!("provisioning key file: {elsewhere}");
    }
    if let Some(fp) = &fingerprint {
        println!("CA fingerprint (sha256): {fp}");
    }
    if opts.mdns {
        println!("advertising {} on port {}", mdns::SERVICE_TYPE, addr.port());
    }
    tracing::info!(%addr, tls = identity.is_some(), mdns = opts.mdns, "serving");

    match identity {
        None => {
            tokio::spawn(reload_tls(None));
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await?
        }
        Some(identity) => {
            let files = match &opts.tls {
                TlsMode::Files(files) => Some(files.clone()),
                _ => None,
            };
            let live = Arc::new(tls::LiveTls::new(&identity, files, &ca_pem));
            tokio::spawn(reload_tls(Some(live.clone())));
            serve_tls(listener, app, live).await?
        }
    }
    if let Err(e) = last_flush.store.flush_presence() {
        tracing::warn!(error = %e, "writing last-seen times at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads the certificate files again on SIGHUP, and when they change
/// (checked every few seconds): a renewal needs no restart. SIGHUP never
/// stops the server, whatever it serves.
async fn reload_tls(live: Option<Arc<tls::LiveTls>>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP; certificate files are still watched");
            None
        }
    };
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = every.tick() => {
                if !live.as_ref().is_some_and(|l| l.changed()) {
                    continue;
                }
                "the certificate files changed"
            }
        };
        let Some(live) = &live else {
            tracing::info!(why, "serving plain HTTP: no certificate to reload");
            continue;
        };
        match live.reload() {
            Ok(None) => {
                tracing::info!(
                    why,
                    "the certificate is the server's own (--tls-self-signed): nothing to reload"
                )
            }
            Ok(Some(fingerprint)) => {
                tracing::info!(why, last_certificate = %fingerprint, "TLS certificate reloaded; new connections get it")
            }
            Err(e) => {
                tracing::error!(why, error = %format!("{e:#}"), "TLS certificate not reloaded; still serving the previous one")
            }
        }
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    live: Arc<tls::LiveTls>,
) -> Result<()> {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(live.current());
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            // A client certificate the handshake verified against the
            // fleet's CA: who it names is the store's to say.
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|cert| http::ClientCertificate(tls::fingerprint(cert)));
            // The peer and the certificate go into each request's
            // extensions (where axum's extractors look). Not as layers on
            // the router: `Router::layer` rebuilds every route, tens of KB
            // per connection, most of what a fleet's idle connections cost.
            let app = TowerToHyperService::new(app);
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if let Some(certificate) = &certificate {
                        req.extensions_mut().insert(certificate.clone());
                    }
                    hyper::service::Service::call(&app, req)
                },
            );
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
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
