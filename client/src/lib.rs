//! The clients fogswarm uses: a typed client for the server's API, and
//! access to a local Docker Engine ([`engine`]).
//!
//! One place for TLS (rustls with ring, CA pinning by fingerprint), bearer
//! authentication and error decoding, shared by the CLI (operator API), the
//! agent (device API) and the load generator; and one place for engine
//! access, shared by the lab and the agent.

pub mod engine;
pub mod identity;
pub mod pin;

use fogswarm_protocol::api::*;
use fogswarm_protocol::logs::*;
use fogswarm_protocol::secret::*;
use fogswarm_protocol::service::*;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a call failed. `Api` carries the server's own error body.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{} ({status}){}", body.message, body.field.as_ref().map(|f| format!(" [field: {f}]")).unwrap_or_default())]
    Api { status: u16, body: ApiError },
    #[error("the server answered {status} with a body that is not the API's: {snippet}")]
    Unexpected { status: u16, snippet: String },
}

impl ClientError {
    /// A connection error or a 5xx: another replica may answer.
    pub fn may_succeed_elsewhere(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            e => e.status().is_some_and(|s| s >= 500),
        }
    }

    /// The HTTP status, for errors that have one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where the server is and how to trust it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URLs, like `https://10.213.7.2:8443`: one, or every replica of
    /// a server on PostgreSQL (they share one CA, hence one fingerprint).
    pub urls: Vec<String>,
    /// SHA-256 of the server's CA (or certificate): trust only it.
    pub ca_fingerprint: Option<String>,
    pub timeout: Duration,
    /// A user's client certificate and key (PEM), presented over TLS.
    pub client_identity: Option<(String, Secret)>,
}

impl Endpoint {
    /// `urls` is one URL or several separated by commas (`--server
    /// URL1,URL2`): calls go to the one that last answered and fail over to
    /// the next on a connection error or a 5xx.
    pub fn new(urls: &str, ca_fingerprint: Option<&str>) -> Result<Endpoint> {
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ClientError::Config("no server URL given".into()));
        }
        for url in &urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ClientError::Config(format!(
                    "server URL {url:?} must start with http:// or https://"
                )));
            }
        }
        let ca_fingerprint = match ca_fingerprint {
            Some(fp) => Some(pin::normalize_fingerprint(fp).ok_or_else(|| {
                ClientError::Config(format!(
                    "CA fingerprint {fp:?} is not 64 hex digits (SHA-256)"
                ))
            })?),
            None => None,
        };
        if ca_fingerprint.is_some() && urls.iter().any(|u| u.starts_with("http://")) {
            return Err(ClientError::Config(
                "a CA fingerprint needs https:// server URLs".into(),
            ));
        }
        Ok(Endpoint {
            urls,
            ca_fingerprint,
            timeout: Duration::from_secs(70),
            client_identity: None,
        })
    }

    /// This endpoint, presenting a user's client certificate (PEM, from
    /// `fogswarm cert create`) instead of a bearer token.
    pub fn with_client_certificate(mut self, cert_pem: &str, key_pem: Secret) -> Endpoint {
        self.client_identity = Some((cert_pem.to_string(), key_pem));
        self
    }

    /// The URLs as given, for messages and status files.
    pub fn describe(&self) -> String {
        self.urls.join(",")
    }
}

/// A connection pool to a server (or its replicas), with one bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<[String]>,
    /// The replica that answered last: calls start there.
    preferred: Arc<AtomicUsize>,
    token: Option<Secret>,
    /// A device's key: every request is signed with it.
    signer: Option<Arc<dyn identity::DeviceSigner>>,
    /// Seconds to add to this machine's clock to get the server's, learnt
    /// from a refusal for skew (devices without a real-time clock boot in
    /// 1970 until NTP answers).
    clock_offset: Arc<AtomicI64>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default rustls provider, once. reqwest is built
/// without a provider of its own (aws-lc would need cmake and a long C
/// build), and any reqwest client, even for plain HTTP, needs one.
pub fn ensure_crypto_provider() {
    // Err means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The system's trusted roots (the OS store, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), for servers with a public certificate: no pin needed.
fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ClientError::Config(
            "an https:// server without a CA fingerprint is checked against the system's trusted roots, and this system has none (install ca-certificates, or give --ca-fingerprint)".into(),
        ));
    }
    Ok(roots)
}

impl Client {
    pub fn new(endpoint: &Endpoint, token: Option<Secret>) -> Result<Client> {
        ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fogswarm/", env!("CARGO_PKG_VERSION")))
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::HeaderName::from_static(fogswarm_protocol::version::HEADER),
                reqwest::header::HeaderValue::from_static(fogswarm_protocol::version::PROTOCOL),
            )]));
        if endpoint.urls.iter().any(|u| u.starts_with("https://")) {
            let config_builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Config(format!("TLS: {e}")))?;
            let verified = match &endpoint.ca_fingerprint {
                Some(fp) => config_builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(pin::PinnedVerifier::new(
                        fp.clone(),
                        provider(),
                    ))),
                None => config_builder.with_root_certificates(system_roots()?),
            };
            let config = match &endpoint.client_identity {
                None => verified.with_no_client_auth(),
                Some((cert, key)) => {
                    use rustls::pki_types::pem::PemObject;
                    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| ClientError::Config(format!("the client certificate: {e}")))?;
                    let key =
                        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                            .map_err(|_| {
                            ClientError::Config(
                                "the client certificate's key is not a PEM private key".into(),
                            )
                        })?;
                    verified
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| ClientError::Config(format!("the client certificate: {e}")))?
                }
            };
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            bases: endpoint.urls.clone().into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            token,
            signer: None,
            clock_offset: Arc::new(AtomicI64::new(0)),
        })
    }

    pub fn with_token(&self, token: Secret) -> Client {
        Client {
            token: Some(token),
            signer: None,
            ..self.clone()
        }
    }

    /// This client as the device whose key `signer` holds: every request
    /// signed, no bearer token.
    pub fn with_device(&self, signer: Arc<dyn identity::DeviceSigner>) -> Client {
        Client {
            token: None,
            signer: Some(signer),
            ..self.clone()
        }
    }

    /// Sends to the preferred replica, then to each other one in turn while
    /// the answer is a connection error or a 5xx (another replica may
    /// serve; a 4xx would be the same everywhere). Every request the
    /// server takes is safe to repeat: a repeated enrolment issues a new
    /// credential that replaces the first, a repeated report reports again.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        match self.send_any(method.clone(), path, body.clone()).await {
            // A device whose clock was off now signs with the server's
            // time: once more.
            Err(ClientError::Api {
                status: 401,
                body: refusal,
            }) if refusal.error == "clock_skew" && self.signer.is_some() => {
                self.send_any(method, path, body).await
            }
            other => other,
        }
    }

    async fn send_any(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let start = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut failure = None;
        for i in 0..self.bases.len() {
            let index = (start + i) % self.bases.len();
            match self
                .send_to(index, method.clone(), path, body.clone())
                .await
            {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) if self.bases.len() > 1 && e.may_succeed_elsewhere() => {
                    tracing::debug!(url = %self.bases[index], error = %e, "trying the next server");
                    failure = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(failure.unwrap_or_else(|| ClientError::Config("no server URL".into())))
    }

    async fn send_to(
        &self,
        index: usize,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let base = &self.bases[index];
        let url = format!("{base}{path}");
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(signer) = &self.signer {
            let bytes: &[u8] = match &body {
                Some(Body::Json(json)) => json,
                Some(Body::Raw { bytes, .. }) => bytes,
                None => &[],
            };
            let now =
                fogswarm_protocol::time::unix_now() + self.clock_offset.load(Ordering::Relaxed);
            let input = fogswarm_protocol::identity::signing_input(
                signer.device_id(),
                method.as_str(),
                path,
                now,
                bytes,
            );
            let signature = signer
                .sign(&input)
                .map_err(|e| ClientError::Config(format!("signing the request: {e}")))?;
            request = request.header(
                "authorization",
                fogswarm_protocol::identity::authorization(signer.device_id(), now, &signature),
            );
        }
        request = match body {
            Some(Body::Json(json)) => request
                .header("content-type", "application/json")
                .body(json),
            Some(Body::Raw {
                content_type,
                bytes,
            }) => request.header("content-type", content_type).body(bytes),
            None => request,
        };
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: base.clone(),
            reason: describe(&e),
        })?;
        let status = response.status();
        let server_time = response
            .headers()
            .get(fogswarm_protocol::identity::TIME_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: describe(&e),
            })?;
        if status.is_success() {
            return Ok((status, bytes.to_vec()));
        }
        if let (Some(server_time), Some(_)) = (server_time, &self.signer) {
            // Refused for the clock: sign with the server's time from now on.
            self.clock_offset.store(
                server_time - fogswarm_protocol::time::unix_now(),
                Ordering::Relaxed,
            );
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(ClientError::Unexpected {
                status: status.as_u16(),
                snippet: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        let body = body.map(json_body).transpose()?;
        let (status, bytes) = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status: status.as_u16(),
            snippet: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<()> {
        let body = body.map(json_body).transpose()?;
        self.send(method, path, body).await.map(|_| ())
    }

    /// `GET /healthz`: up and answering (no authentication).
    pub async fn healthz(&self) -> Result<()> {
        self.send(Method::GET, "/healthz", None).await.map(|_| ())
    }

    // ---- device API ----

    pub async fn enrol(&self, request: &EnrolRequest) -> Result<EnrolResponse> {
        self.call(Method::POST, "/v1/enrol", Some(request)).await
    }

    pub async fn config(&self) -> Result<ConfigAnswer> {
        self.call(Method::GET, "/v1/config", None::<&()>).await
    }

    /// The device's config; a `wait` answer is held by the server up to
    /// `wait_secs` and answered at once when the device may go on.
    pub async fn config_wait(&self, wait_secs: u64) -> Result<ConfigAnswer> {
        self.call(
            Method::GET,
            &format!("/v1/config?wait={wait_secs}"),
            None::<&()>,
        )
        .await
    }

    pub async fn report(&self, report: &ReportRequest) -> Result<()> {
        self.call_empty(Method::POST, "/v1/report", Some(report))
            .await
    }

    pub async fn post_swarm_tokens(&self, tokens: &SwarmTokens) -> Result<()> {
        self.call_empty(Method::POST, "/v1/device/swarm", Some(tokens))
            .await
    }

    /// The raft leader's report of a manager unreachable past the grace
    /// period; answers what the server did about it.
    pub async fn manager_lost(&self, lost: &ManagerLost) -> Result<ManagerReplaced> {
        self.call(Method::POST, "/v1/device/manager-lost", Some(lost))
            .await
    }

    /// The recovering device's word that its forced cluster has a leader.
    pub async fn recovered(&self, done: &Recovered) -> Result<()> {
        self.call_empty(Method::POST, "/v1/device/recovered", Some(done))
            .await
    }

    /// The desired state; with `since`, waits up to `wait_secs` for a newer
    /// revision.
    pub async fn desired(&self, since: Option<u64>, wait_secs: u64) -> Result<DesiredState> {
        let path = match since {
            Some(s) => format!("/v1/desired?since={s}&wait={wait_secs}"),
            None => "/v1/desired".to_string(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    // ---- operator API ----

    pub async fn create_swarm(&self, spec: &SwarmCreate) -> Result<SwarmView> {
        self.call(Method::POST, "/v1/swarms", Some(spec)).await
    }

    pub async fn list_swarms(&self) -> Result<Vec<SwarmView>> {
        self.call(Method::GET, "/v1/swarms", None::<&()>).await
    }

    pub async fn get_swarm(&self, name: &str) -> Result<SwarmView> {
        self.call(
            Method::GET,
            &format!("/v1/swarms/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn update_swarm(&self, name: &str, update: &SwarmUpdate) -> Result<SwarmView> {
        self.call(
            Method::PATCH,
            &format!("/v1/swarms/{}", seg(name)),
            Some(update),
        )
        .await
    }

    pub async fn remove_swarm(&self, name: &str, force: bool) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &format!("/v1/swarms/{}?force={force}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Asks the swarm's raft leader to rotate both join tokens.
    pub async fn rotate_tokens(&self, swarm: &str) -> Result<()> {
        self.call_empty(
            Method::POST,
            &format!("/v1/swarms/{}/rotate-tokens", seg(swarm)),
            None::<&()>,
        )
        .await
    }

    /// Starts a quorum recovery (`swarm recover`); answers which device
    /// forces the new cluster.
    pub async fn recover_swarm(&self, swarm: &str) -> Result<Recovery> {
        self.call(
            Method::POST,
            &format!("/v1/swarms/{}/recover", seg(swarm)),
            None::<&()>,
        )
        .await
    }

    /// Starts an agent rollout over a swarm's devices.
    pub async fn start_rollout(
        &self,
        swarm: &str,
        req: &AgentRolloutCreate,
    ) -> Result<AgentRolloutView> {
        self.call(
            Method::POST,
            &format!("/v1/swarms/{}/agent-rollout", seg(swarm)),
            Some(req),
        )
        .await
    }

    /// A swarm's latest agent rollout.
    pub async fn rollout(&self, swarm: &str) -> Result<AgentRolloutView> {
        self.call(
            Method::GET,
            &format!("/v1/swarms/{}/agent-rollout", seg(swarm)),
            None::<&()>,
        )
        .await
    }

    pub async fn create_device(&self, spec: &DeviceCreate) -> Result<DeviceView> {
        self.call(Method::POST, "/v1/devices", Some(spec)).await
    }

    /// Imports devices from a JSON array or CSV text (all or none).
    pub async fn import_devices(&self, content_type: &str, body: Vec<u8>) -> Result<ImportResult> {
        let (status, bytes) = self
            .send(
                Method::POST,
                "/v1/devices/import",
                Some(Body::Raw {
                    content_type,
                    bytes: body,
                }),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status: status.as_u16(),
            snippet: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub async fn list_devices(&self, swarm: Option<&str>) -> Result<Vec<DeviceView>> {
        let path = match swarm {
            Some(s) => format!("/v1/devices?swarm={}", seg(s)),
            None => "/v1/devices".into(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn device_telemetry(
        &self,
        id: &str,
    ) -> Result<fogswarm_protocol::telemetry::TelemetryView> {
        self.call(
            Method::GET,
            &format!("/v1/devices/{}/telemetry", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn get_device(&self, id: &str) -> Result<DeviceView> {
        self.call(
            Method::GET,
            &format!("/v1/devices/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn update_device(&self, id: &str, update: &DeviceUpdate) -> Result<DeviceView> {
        self.call(
            Method::PATCH,
            &format!("/v1/devices/{}", seg(id)),
            Some(update),
        )
        .await
    }

    pub async fn change_labels(&self, id: &str, change: &LabelChange) -> Result<DeviceView> {
        self.call(
            Method::POST,
            &format!("/v1/devices/{}/labels", seg(id)),
            Some(change),
        )
        .await
    }

    pub async fn approve_device(&self, id: &str) -> Result<DeviceView> {
        self.call(
            Method::POST,
            &format!("/v1/devices/{}/approve", seg(id)),
            None::<&()>,
        )
        .await
    }

    /// Decommissions a device; answers its view while it is leaving, or
    /// None once removed.
    pub async fn remove_device(&self, id: &str, force: bool) -> Result<Option<DeviceView>> {
        let (status, bytes) = self
            .send(
                Method::DELETE,
                &format!("/v1/devices/{}?force={force}", seg(id)),
                None,
            )
            .await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| ClientError::Unexpected {
                status: status.as_u16(),
                snippet: String::from_utf8_lossy(&bytes).into_owned(),
            })
    }

    pub async fn rotate_provisioning_key(&self) -> Result<ProvisioningKeyRotated> {
        self.call(Method::POST, "/v1/provisioning-key/rotate", None::<&()>)
            .await
    }

    /// Replaces the admin token (admins only); the new one is answered once.
    pub async fn rotate_admin_token(&self) -> Result<AdminTokenRotated> {
        self.call(Method::POST, "/v1/admin-token/rotate", None::<&()>)
            .await
    }

    pub async fn create_enrol_token(&self, req: &EnrolTokenCreate) -> Result<EnrolTokenCreated> {
        self.call(Method::POST, "/v1/enrol-tokens", Some(req)).await
    }

    pub async fn list_enrol_tokens(&self, swarm: Option<&str>) -> Result<Vec<EnrolTokenView>> {
        let path = match swarm {
            Some(s) => format!("/v1/enrol-tokens?swarm={}", seg(s)),
            None => "/v1/enrol-tokens".into(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn remove_enrol_token(&self, id: &str) -> Result<EnrolTokenView> {
        self.call(
            Method::DELETE,
            &format!("/v1/enrol-tokens/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn create_user(&self, req: &UserCreate) -> Result<UserView> {
        self.call(Method::POST, "/v1/users", Some(req)).await
    }

    pub async fn list_users(&self) -> Result<Vec<UserView>> {
        self.call(Method::GET, "/v1/users", None::<&()>).await
    }

    pub async fn update_user(&self, name: &str, req: &UserUpdate) -> Result<UserView> {
        self.call(
            Method::PATCH,
            &format!("/v1/users/{}", seg(name)),
            Some(req),
        )
        .await
    }

    pub async fn remove_user(&self, name: &str) -> Result<UserView> {
        self.call(
            Method::DELETE,
            &format!("/v1/users/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn create_certificate(
        &self,
        req: &UserCertificateCreate,
    ) -> Result<UserCertificateIssued> {
        self.call(Method::POST, "/v1/certificates", Some(req)).await
    }

    pub async fn list_certificates(&self, user: Option<&str>) -> Result<Vec<UserCertificateView>> {
        let path = match user {
            Some(u) => format!("/v1/certificates?user={}", seg(u)),
            None => "/v1/certificates".into(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn remove_certificate(&self, id: &str) -> Result<UserCertificateView> {
        self.call(
            Method::DELETE,
            &format!("/v1/certificates/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.call(Method::GET, "/v1/whoami", None::<&()>).await
    }

    pub async fn create_token(&self, req: &UserTokenCreate) -> Result<UserTokenCreated> {
        self.call(Method::POST, "/v1/tokens", Some(req)).await
    }

    pub async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<UserTokenView>> {
        let path = match user {
            Some(u) => format!("/v1/tokens?user={}", seg(u)),
            None => "/v1/tokens".into(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn remove_token(&self, id: &str) -> Result<UserTokenView> {
        self.call(
            Method::DELETE,
            &format!("/v1/tokens/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    /// A device replaces its key with `new` (this client signs with the
    /// current one).
    pub async fn rotate_device_key(
        &self,
        new: &fogswarm_protocol::identity::PublicKey,
    ) -> Result<()> {
        self.call_empty(
            Method::POST,
            "/v1/device/key",
            Some(&KeyRotation {
                public_key: new.clone(),
            }),
        )
        .await
    }

    pub async fn status(&self) -> Result<FleetStatus> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    // ---- services ----

    pub async fn list_services(&self, swarm: &str) -> Result<Vec<ServiceView>> {
        self.call(Method::GET, &services_path(swarm, None), None::<&()>)
            .await
    }

    pub async fn get_service(&self, swarm: &str, name: &str) -> Result<ServiceView> {
        self.call(Method::GET, &services_path(swarm, Some(name)), None::<&()>)
            .await
    }

    /// Creates a service; the server refuses a name that is taken.
    pub async fn create_service(&self, swarm: &str, spec: &ServiceSpec) -> Result<ServiceView> {
        self.call(Method::POST, &services_path(swarm, None), Some(spec))
            .await
    }

    /// Creates or replaces a service.
    pub async fn deploy_service(&self, swarm: &str, spec: &ServiceSpec) -> Result<ServiceDeployed> {
        self.call(
            Method::PUT,
            &services_path(swarm, Some(&spec.name)),
            Some(spec),
        )
        .await
    }

    pub async fn remove_service(&self, swarm: &str, name: &str) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &services_path(swarm, Some(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn deploy_stack(
        &self,
        swarm: &str,
        stack: &str,
        request: &StackDeploy,
    ) -> Result<Vec<StackServiceOutcome>> {
        self.call(Method::PUT, &stack_path(swarm, stack), Some(request))
            .await
    }

    pub async fn remove_stack(&self, swarm: &str, stack: &str) -> Result<Vec<StackServiceOutcome>> {
        self.call(Method::DELETE, &stack_path(swarm, stack), None::<&()>)
            .await
    }

    /// Swaps a service's spec with its previous one.
    pub async fn rollback_service(&self, swarm: &str, name: &str) -> Result<ServiceView> {
        self.call(
            Method::POST,
            &format!("{}/rollback", services_path(swarm, Some(name))),
            None::<&()>,
        )
        .await
    }

    // ---- secrets, configs, registry logins ----

    fn files_path(swarm: &str, kind: FileKind, name: Option<&str>) -> String {
        let base = format!("/v1/swarms/{}/{}", seg(swarm), kind.plural());
        match name {
            Some(n) => format!("{base}/{}", seg(n)),
            None => base,
        }
    }

    /// Writes a secret or config: `create_only` refuses an existing name
    /// (`secret create`); otherwise a new value becomes a new version.
    pub async fn write_file(
        &self,
        swarm: &str,
        kind: FileKind,
        write: &FileWrite,
        create_only: bool,
    ) -> Result<FileWritten> {
        if create_only {
            self.call(
                Method::POST,
                &Self::files_path(swarm, kind, None),
                Some(write),
            )
            .await
        } else {
            self.call(
                Method::PUT,
                &Self::files_path(swarm, kind, Some(&write.name)),
                Some(write),
            )
            .await
        }
    }

    pub async fn list_files(&self, swarm: &str, kind: FileKind) -> Result<Vec<FileView>> {
        self.call(
            Method::GET,
            &Self::files_path(swarm, kind, None),
            None::<&()>,
        )
        .await
    }

    /// One secret or config; a config's value comes as `data` (base64).
    pub async fn get_file(
        &self,
        swarm: &str,
        kind: FileKind,
        name: &str,
    ) -> Result<serde_json::Value> {
        self.call(
            Method::GET,
            &Self::files_path(swarm, kind, Some(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn remove_file(&self, swarm: &str, kind: FileKind, name: &str) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &Self::files_path(swarm, kind, Some(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn registry_login(
        &self,
        swarm: &str,
        host: &str,
        login: &RegistryLogin,
    ) -> Result<RegistryView> {
        self.call(
            Method::PUT,
            &format!("/v1/swarms/{}/registries/{}", seg(swarm), seg(host)),
            Some(login),
        )
        .await
    }

    pub async fn list_registries(&self, swarm: &str) -> Result<Vec<RegistryView>> {
        self.call(
            Method::GET,
            &format!("/v1/swarms/{}/registries", seg(swarm)),
            None::<&()>,
        )
        .await
    }

    pub async fn registry_logout(&self, swarm: &str, host: &str) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &format!("/v1/swarms/{}/registries/{}", seg(swarm), seg(host)),
            None::<&()>,
        )
        .await
    }

    /// A manager agent's request for the values it hands to its engine.
    pub async fn values(&self, request: &ValuesRequest) -> Result<ValuesAnswer> {
        self.call(Method::POST, "/v1/values", Some(request)).await
    }

    // ---- service and agent logs ----

    pub async fn open_logs(&self, source: &LogSource, options: &LogOptions) -> Result<LogsOpened> {
        let path = match source {
            LogSource::Service { swarm, service } => {
                format!("{}/logs", services_path(swarm, Some(service)))
            }
            LogSource::Agent { device } => format!("/v1/devices/{}/logs", seg(device)),
        };
        self.call(Method::POST, &path, Some(options)).await
    }

    pub async fn read_logs(&self, source: &LogSource, id: &str, after: u64) -> Result<LogsPage> {
        self.call(
            Method::GET,
            &format!("{}?after={after}", source.request_path(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn close_logs(&self, source: &LogSource, id: &str) -> Result<()> {
        self.call_empty(Method::DELETE, &source.request_path(id), None::<&()>)
            .await
    }

    /// The raft leader's agent posts lines for a log request.
    pub async fn post_log_chunk(&self, id: &str, chunk: &LogChunk) -> Result<()> {
        self.call_empty(Method::POST, &format!("/v1/logs/{}", seg(id)), Some(chunk))
            .await
    }

    /// The raft leader's report of what its swarm runs.
    pub async fn post_observed(&self, report: &ObservedReport) -> Result<()> {
        self.call_empty(Method::POST, "/v1/observed", Some(report))
            .await
    }

    pub async fn events(
        &self,
        since: i64,
        limit: u32,
        subject: Option<&str>,
    ) -> Result<Vec<Event>> {
        let mut path = format!("/v1/events?since={since}&limit={limit}");
        if let Some(s) = subject {
            path.push_str(&format!("&subject={}", seg(s)));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }
}

/// Whose log lines a request reads.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// A swarm service's tasks (`service logs`), read by the raft leader.
    Service { swarm: String, service: String },
    /// One device's agent (`device logs`).
    Agent { device: String },
}

impl LogSource {
    fn request_path(&self, id: &str) -> String {
        match self {
            LogSource::Service { swarm, .. } => {
                format!("/v1/swarms/{}/logs/{}", seg(swarm), seg(id))
            }
            LogSource::Agent { device } => {
                format!("/v1/devices/{}/logs/{}", seg(device), seg(id))
            }
        }
    }
}

fn services_path(swarm: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/v1/swarms/{}/services/{}", seg(swarm), seg(n)),
        None => format!("/v1/swarms/{}/services", seg(swarm)),
    }
}

fn stack_path(swarm: &str, stack: &str) -> String {
    format!("/v1/swarms/{}/stacks/{}", seg(swarm), seg(stack))
}

fn json_body(value: &(impl Serialize + ?Sized)) -> Result<Body<'static>> {
    serde_json::to_vec(value)
        .map(Body::Json)
        .map_err(|e| ClientError::Config(format!("encoding the request: {e}")))
}

#[derive(Clone)]
enum Body<'a> {
    Json(Vec<u8>),
    Raw {
        content_type: &'a str,
        bytes: Vec<u8>,
    },
}

/// Percent-encodes a path segment or query value (ids hold ':').
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A reqwest error with its causes, which say what actually went wrong
/// (refused, TLS verification, timeout).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_validate() {
        assert!(Endpoint::new("ftp://x", None).is_err());
        assert!(Endpoint::new("http://x", Some(&"ab".repeat(32))).is_err());
        assert!(Endpoint::new("https://x", Some("nope")).is_err());
        let e = Endpoint::new("https://x:8443/", Some(&"AB".repeat(32))).expect("ok");
        assert_eq!(e.urls, ["https://x:8443"]);
        assert_eq!(e.ca_fingerprint.as_deref(), Some("ab".repeat(32).as_str()));
        let e = Endpoint::new("http://a:1, http://b:2/", None).expect("two");
        assert_eq!(e.urls, ["http://a:1", "http://b:2"]);
        assert!(Endpoint::new("http://a:1,ftp://b", None).is_err());
        assert!(Endpoint::new(" , ", None).is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("aa:bb"), "aa%3Abb");
        assert_eq!(seg("hall-1"), "hall-1");
    }
}
