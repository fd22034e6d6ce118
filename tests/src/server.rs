//! A real `fogswarm-server` process for tests: started on a free loopback
//! port with its own data dir, its stdout parsed for the URL and the CA
//! fingerprint, its log kept for inspection, killed when dropped.

use crate::workspace_binary;
use anyhow::{bail, Context, Result};
use fogswarm_client::identity::{DeviceSigner, FileKey};
use fogswarm_client::{Client, Endpoint};
use fogswarm_protocol::api::{EnrolRequest, EnrolResponse, Secret};
use fogswarm_protocol::validate::{AutoEnrol, Labels, Role};
use fogswarm_protocol::DeviceId;
use fogswarm_server::db::{Location, PostgresOptions, Value};
use fogswarm_server::store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The database the server tests run on: SQLite by default;
/// `FOGSWARM_TEST_DATABASE=postgres` runs the same tests on PostgreSQL
/// (a throwaway cluster per test binary, a database per data directory).
pub fn on_postgres() -> bool {
    std::env::var("FOGSWARM_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// The PostgreSQL database a data directory's server uses in this test
/// process (made on first use, kept across restarts).
fn postgres_database(data: &Path) -> Result<String> {
    static DATABASES: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());
    let mut map = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(url) = map.get(data) {
        return Ok(url.clone());
    }
    let url = crate::postgres::shared().create_database()?;
    map.insert(data.to_path_buf(), url.clone());
    Ok(url)
}

/// Runs `f` on a data directory's store (SQLite or the test's
/// PostgreSQL database), opened behind the server's back. The synchronous
/// PostgreSQL client must neither run nor be dropped on an async worker:
/// all of it happens in a thread of its own.
fn with_store<T: Send>(data: &Path, f: impl FnOnce(&Store) -> Result<T> + Send) -> Result<T> {
    let location = if on_postgres() {
        Location::Postgres(postgres_database(data)?)
    } else {
        Location::Sqlite(data.join("fleet.db"))
    };
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let store = Store::open_location(&location, &PostgresOptions::default())?;
            f(&store)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a store call panicked"))?
    })
}

/// A digest of every stored row, for tests that prove a refused request
/// changed nothing.
pub fn db_fingerprint(data: &Path) -> Result<String> {
    with_store(data, |store| Ok(store.fingerprint()?))
}

/// Runs one SQL statement on a data directory's database, behind the
/// server's back: for tests that age rows.
pub fn db_execute(data: &Path, sql: &str) -> Result<u64> {
    with_store(data, |store| {
        Ok(store.database().write(|tx| {
            tx.execute(sql, &[])
                .map_err(fogswarm_server::store::StoreError::from)
        })?)
    })
}

/// The rows a query answers, read behind the server's back.
pub fn db_query(data: &Path, sql: &str) -> Result<Vec<Vec<Value>>> {
    with_store(data, |store| {
        Ok(store.database().read(|tx| {
            Ok::<_, fogswarm_server::db::DbError>(
                tx.query(sql, &[])?
                    .iter()
                    .map(|row| row.values().to_vec())
                    .collect(),
            )
        })?)
    })
}

/// The value (base64) of version `version` of secret `name`, as the
/// swarm's manager `manager` fetches it for its services.
pub async fn secret_value(manager: &Client, name: &str, version: u64) -> Result<Secret> {
    use fogswarm_protocol::secret::{FileKind, FileVersion, ValuesRequest};
    let mut values = manager
        .values(&ValuesRequest {
            files: vec![FileVersion {
                kind: FileKind::Secret,
                name: name.into(),
                version,
            }],
            registries: vec![],
        })
        .await?;
    Ok(values.files.pop().context("no value answered")?.data)
}

/// Declares a swarm (no auto-enrolment) and its devices by id and role.
pub async fn declare(admin: &Client, swarm: &str, devices: &[(&str, Role)]) -> Result<()> {
    admin
        .create_swarm(&fogswarm_protocol::api::SwarmCreate {
            name: swarm.into(),
            auto_enrol: AutoEnrol::Off,
        })
        .await?;
    for (id, role) in devices {
        admin
            .create_device(&fogswarm_protocol::api::DeviceCreate {
                id: (*id).into(),
                swarm: swarm.into(),
                role: *role,
                labels: Labels::new(),
            })
            .await?;
    }
    Ok(())
}

pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub fingerprint: Option<String>,
    pub data: PathBuf,
    pub log: PathBuf,
}

/// The server binary, built once per test process.
pub fn server_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_binary("fogswarm-server", "fogswarm-server"))
        .clone()
}

impl ServerProcess {
    /// Starts a server on `data` (reused if it exists) with extra args.
    pub fn start(data: &Path, args: &[&str]) -> Result<ServerProcess> {
        Self::start_on(data, "127.0.0.1:0", args)
    }

    pub fn start_on(data: &Path, listen: &str, args: &[&str]) -> Result<ServerProcess> {
        let log = data.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut database = Vec::new();
        if on_postgres() && !args.contains(&"--database") {
            database = vec!["--database".to_string(), postgres_database(data)?];
        }
        let mut child = Command::new(server_binary())
            .arg("--data")
            .arg(data)
            .args(["--listen", listen])
            .args(&database)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("starting fogswarm-server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut url = None;
        let mut fingerprint = None;
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(u) = line.strip_prefix("fogswarm-server listening on ") {
                url = Some(u.trim().to_string());
            }
            if let Some(fp) = line.strip_prefix("CA fingerprint (sha256): ") {
                fingerprint = Some(fp.trim().to_string());
            }
            // With TLS the fingerprint comes last: read to it, so the
            // server never prints into a closed pipe.
            let tls = args.contains(&"--tls-self-signed") || args.contains(&"--tls-cert");
            let done = line.starts_with("provisioning key file:") && !tls
                || line.starts_with("CA fingerprint");
            seen.push(line);
            if done {
                break;
            }
        }
        let Some(url) = url else {
            let _ = child.kill();
            bail!(
                "the server did not start; stdout: {seen:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok(ServerProcess {
            child,
            url,
            fingerprint,
            data: data.to_path_buf(),
            log,
        })
    }

    pub fn admin_token(&self) -> Secret {
        Secret::new(
            std::fs::read_to_string(self.data.join("admin.token"))
                .unwrap_or_default()
                .trim(),
        )
    }

    pub fn provisioning_key(&self) -> Secret {
        Secret::new(
            std::fs::read_to_string(self.data.join("provisioning.key"))
                .unwrap_or_default()
                .trim(),
        )
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.url, self.fingerprint.as_deref()).expect("endpoint")
    }

    pub fn admin(&self) -> Client {
        Client::new(&self.endpoint(), Some(self.admin_token())).expect("client")
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.endpoint(), None).expect("client")
    }

    /// Enrols a device with the fleet's provisioning key and these facts,
    /// with a key made for it here; answers a client that signs as the
    /// device, and the enrolment.
    pub async fn enrol(&self, id: &str, facts: &[(&str, &str)]) -> Result<(Client, EnrolResponse)> {
        let key = device_key(id)?;
        let response = self
            .enrol_with(&key, Admit::Key(self.provisioning_key()), facts)
            .await?;
        Ok((self.anonymous().with_device(key), response))
    }

    /// Enrols the device `key` belongs to, admitted as `admit` says.
    pub async fn enrol_with(
        &self,
        key: &Arc<FileKey>,
        admit: Admit,
        facts: &[(&str, &str)],
    ) -> Result<EnrolResponse> {
        Ok(self
            .anonymous()
            .with_device(key.clone())
            .enrol(&enrol_request(key, admit, facts)?)
            .await?)
    }

    /// A plain HTTP client for this server: over TLS pinned to its CA, or
    /// plain HTTP.
    fn raw_client(&self) -> Result<reqwest::Client> {
        fogswarm_client::ensure_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(fp) = &self.fingerprint {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    fogswarm_client::pin::PinnedVerifier::new(fp.clone(), provider),
                ))
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        Ok(builder
            .timeout(std::time::Duration::from_secs(20))
            .build()?)
    }

    /// One header of the answer to a GET of `path`.
    pub async fn raw_get_header(&self, path: &str, name: &str) -> Result<Option<String>> {
        let r = self
            .raw_client()?
            .get(format!("{}{path}", self.url))
            .send()
            .await?;
        Ok(r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// The status and body of a GET of `path` (`/readyz`, `/metrics`).
    pub async fn raw_get(&self, path: &str) -> Result<(u16, String)> {
        let r = self
            .raw_client()?
            .get(format!("{}{path}", self.url))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// `fogswarm-server ARGS` run beside this server, on its data
    /// directory and database (the test's PostgreSQL one on that run);
    /// answers the exit code and stdout and stderr together.
    pub fn beside(&self, args: &[&str]) -> Result<(i32, String)> {
        let mut command = Command::new(server_binary());
        command.args(args).arg("--data").arg(&self.data);
        if on_postgres() {
            command.args(["--database", &postgres_database(&self.data)?]);
        }
        let out = command.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait: a clean stop, as an init system would do it.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What admits a test device: the provisioning key or an enrolment token.
pub enum Admit {
    Key(Secret),
    Token(Secret),
}

/// A new identity key for the device `id`, held in memory.
pub fn device_key(id: &str) -> Result<Arc<FileKey>> {
    Ok(Arc::new(FileKey::generate(id).map_err(anyhow::Error::msg)?))
}

/// The enrolment a device holding `key` sends.
pub fn enrol_request(key: &FileKey, admit: Admit, facts: &[(&str, &str)]) -> Result<EnrolRequest> {
    let (provisioning_key, token) = match admit {
        Admit::Key(k) => (Some(k), None),
        Admit::Token(t) => (None, Some(t)),
    };
    Ok(EnrolRequest {
        device_id: DeviceId::parse(key.device_id())?,
        public_key: key.public_key().clone(),
        provisioning_key,
        token,
        swarm: None,
        facts: facts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        endorsement_key: None,
    })
}

/// The Authorization header a device holding `key` sends for a request
/// (for tests that send raw HTTP).
pub fn signed_authorization(
    key: &FileKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let now = fogswarm_protocol::time::unix_now();
    let input = fogswarm_protocol::identity::signing_input(
        key.device_id(),
        method,
        path_and_query,
        now,
        body,
    );
    let signature = key.sign(&input).expect("signing with a key in memory");
    fogswarm_protocol::identity::authorization(key.device_id(), now, &signature)
}
