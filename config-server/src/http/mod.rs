//! The HTTP API: device bootstrap endpoints, the operator API, health,
//! metrics and the OpenAPI document.
//!
//! Every failure answers `{"error", "message", "field"}` with a 4xx (or a
//! 500 that says nothing of internals); no message ever carries a secret.

use crate::db::DbError;
use crate::limit::FailureLimiter;
use crate::metrics::Metrics;
use crate::secrets;
use crate::store::{
    Actor, Admission, EnrolInput, LogScope, ServerCredentials, Store, StoreError, Touched,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query,
    Request, State,
};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fogswarm_protocol::api::UserRole;
use fogswarm_protocol::api::*;
use fogswarm_protocol::service::*;
use fogswarm_protocol::telemetry::TelemetryView;
use fogswarm_protocol::validate::Role;
use fogswarm_protocol::version::ProtocolVersion;
use fogswarm_protocol::DeviceId;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use utoipa::OpenApi;

mod auth;
mod device;
mod files;
mod operator;
mod trust;
pub(crate) use auth::client_ip;
use auth::{AnyKeyDevice, AuthDevice, Caller, Peer, SignedEnrolment, Standing};
pub use auth::{Cidr, ClientCertificate};
pub(crate) use operator::signed_only;

/// Request bodies are small JSON documents; bulk import and a big swarm's
/// observed services may be larger.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const IMPORT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Longest a desired-state long poll is held.
pub const MAX_WAIT_SECS: u64 = 60;

pub struct AppState {
    pub store: Store,
    /// Where a rotated admin token is written (on this replica).
    pub admin_file: PathBuf,
    /// Where a rotated provisioning key is written (on this replica).
    pub provisioning_file: PathBuf,
    /// Per-swarm revision channels that wake long polls.
    pub revisions: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub metrics: Metrics,
    pub limiter: FailureLimiter,
    /// Seals secret values and registry passwords at rest.
    pub sealer: crate::seal::Sealer,
    /// Registries the server reaches over plain HTTP (signed-only swarms
    /// look images up there).
    pub insecure_registries: Vec<String>,
    /// Devices with per-device series on /metrics, at most.
    pub metrics_device_limit: usize,
    /// New events for the dashboard's live pages (see `dashboard`).
    pub live: tokio::sync::broadcast::Sender<Event>,
    /// Session cookies only over TLS (the server serves TLS).
    pub secure_cookies: bool,
    /// Proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<Cidr>,
    /// The hash of the bearer token /metrics requires, if one does.
    pub metrics_hash: Option<String>,
    /// This replica, as it checks in.
    pub replica: ReplicaSelf,
}

/// This replica's name in the `replicas` table and whether its last
/// check-in (a database write) succeeded.
pub struct ReplicaSelf {
    pub id: String,
    pub started_at: i64,
    ready: std::sync::atomic::AtomicBool,
}

impl ReplicaSelf {
    /// Named by host and port, so replicas on one host stay apart.
    pub fn new(port: u16) -> ReplicaSelf {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        ReplicaSelf {
            id: format!("{host}:{port}"),
            started_at: crate::store::now(),
            ready: Default::default(),
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl AppState {
    /// Writes this replica's check-in; answers why it failed, if it did.
    pub fn check_in(&self) -> Option<StoreError> {
        let result = self.store.check_in(
            &self.replica.id,
            env!("CARGO_PKG_VERSION"),
            self.replica.started_at,
        );
        let was = self
            .replica
            .ready
            .swap(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => {
                if !was {
                    tracing::info!(replica = %self.replica.id, "ready: the database answers writes");
                }
                None
            }
            Err(e) => {
                if was {
                    tracing::warn!(replica = %self.replica.id, error = %e, "not ready: the database refuses writes");
                }
                Some(e)
            }
        }
    }

    /// Whether `token` is the fleet's admin token, as the database says
    /// now (it may have been rotated through any replica, or offline).
    /// User tokens (`fsu_`) are never looked up as one.
    pub(crate) fn is_admin_token(&self, token: &str) -> Result<bool, StoreError> {
        if token.starts_with(crate::store::USER_TOKEN_PREFIX) {
            return Ok(false);
        }
        Ok(self
            .store
            .credential(crate::store::ServerCredentials::ADMIN_TOKEN_HASH)?
            .is_some_and(|hash| secrets::matches(token, &hash)))
    }

    fn watch(&self, swarm: &str) -> watch::Receiver<u64> {
        let mut map = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(swarm.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A swarm's desired state as its managers get it: with the hardware
    /// grants signed.
    fn desired_state(
        &self,
        swarm: &str,
    ) -> Result<fogswarm_protocol::api::DesiredState, StoreError> {
        let mut desired = self.store.desired_state(swarm)?;
        self.store.sign_grants(&mut desired, &self.sealer)?;
        Ok(desired)
    }

    /// Wakes the long polls of every swarm a change touched. On
    /// PostgreSQL the change's notification does it, on every replica
    /// this one included (see `db::Listener`).
    pub(crate) fn notify(&self, touched: &Touched) {
        if self.store.database().dialect() == crate::db::Dialect::Postgres {
            return;
        }
        for swarm in touched {
            if let Ok(revision) = self.store.revision(swarm) {
                self.wake(swarm, revision);
            }
        }
    }

    /// Wakes the long polls of `swarm` waiting for less than `revision`
    /// (from this replica's changes, or another's through the database).
    /// Revisions only move forward, whatever order wake-ups come in.
    pub fn wake(&self, swarm: &str, revision: u64) {
        let mut map = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        let sender = map
            .entry(swarm.to_string())
            .or_insert_with(|| watch::channel(0).0);
        sender.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// Re-reads the revision of every swarm someone waits on: after the
    /// database's notifications were interrupted, some may have been lost.
    pub fn resync(&self) {
        let swarms: Vec<String> = self
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for swarm in swarms {
            if let Ok(revision) = self.store.revision(&swarm) {
                self.wake(&swarm, revision);
            }
        }
    }
}

pub(crate) type Shared = Arc<AppState>;

// ---- errors ----

/// An API failure: a status and the JSON body that explains it.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    body: ApiError,
    /// Seconds for a Retry-After header (429, 503).
    retry_after: Option<u64>,
}

impl ApiFailure {
    fn new(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> Self {
        ApiFailure {
            status,
            body: ApiError {
                error: code.into(),
                message: message.into(),
                field,
            },
            retry_after: None,
        }
    }

    fn too_many_failures(wait: Duration) -> Self {
        let secs = wait.as_secs().max(1);
        ApiFailure {
            retry_after: Some(secs),
            ..ApiFailure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many failed authentications from this address; try again in {secs}s"),
                None,
            )
        }
    }

    fn unauthorized(message: &str) -> Self {
        ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", message, None)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The refusal as one line for a page: `field: message`.
    pub(crate) fn describe(&self) -> String {
        match &self.body.field {
            Some(field) => format!("{field}: {}", self.body.message),
            None => self.body.message.clone(),
        }
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            message,
            Some(field.into()),
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { field, message } => {
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message, field)
            }
            StoreError::NotFound(m) => ApiFailure::new(StatusCode::NOT_FOUND, "not_found", m, None),
            StoreError::Conflict(m) => ApiFailure::new(StatusCode::CONFLICT, "conflict", m, None),
            StoreError::Forbidden(m) => {
                ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", m, None)
            }
            StoreError::Gone(m) => ApiFailure::new(StatusCode::GONE, "gone", m, None),
            StoreError::Unauthorized(m) => ApiFailure::unauthorized(&m),
            StoreError::Database(DbError::Unavailable(m)) => {
                tracing::warn!(error = %m, "database unavailable");
                ApiFailure {
                    retry_after: Some(2),
                    ..ApiFailure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("the server cannot store or read right now: {m}"),
                        None,
                    )
                }
            }
            StoreError::Database(DbError::Constraint(m)) => {
                tracing::warn!(error = %m, "constraint refused a change");
                ApiFailure::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the change conflicts with one made at the same time; retry",
                    None,
                )
            }
            e @ (StoreError::Database(_) | StoreError::Corrupt(_)) => {
                tracing::error!(error = %e, "store failure");
                ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                    None,
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// An operator's JSON body, strictly: a field the document does not have
/// is refused by name (a typo must not pass as a default), whatever the
/// type accepts from other peers. Rejections answer in the API's format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        let mut unknown = Vec::new();
        let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let parsed: T =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note))
                .map_err(|e| {
                    let at = e.path().to_string();
                    let why = e.into_inner();
                    let message = if at == "." {
                        format!("the body does not match the expected document: {why}")
                    } else {
                        format!("the body does not match the expected document: {at}: {why}")
                    };
                    ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message, None)
                })?;
        if let Some(field) = unknown.first() {
            return Err(ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("the body does not match the expected document: unknown field `{field}`"),
                Some(field.clone()),
            ));
        }
        Ok(ApiJson(parsed))
    }
}

/// A device's JSON body: fields it does not know are ignored, so a newer
/// agent's report (one minor version ahead) is taken by this server.
pub struct DeviceJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for DeviceJson<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(DeviceJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiFailure {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "the body does not match the expected document: {}",
                e.body_text().trim_start_matches(
                    "Failed to deserialize the JSON body into the target type: "
                )
            ),
            None,
        ),
        JsonRejection::JsonSyntaxError(_) => ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body is not valid JSON",
            None,
        ),
        JsonRejection::MissingJsonContentType(_) => ApiFailure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported",
            "send the body as Content-Type: application/json",
            None,
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        other => ApiFailure::new(other.status(), "bad_request", other.body_text(), None),
    }
}

/// `Query<T>` whose rejections answer in the API's error format.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text(), None))
    }
}

fn too_large() -> ApiFailure {
    ApiFailure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the request body is too large",
        None,
    )
}

// ---- router ----

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/enrol", post(device::enrol))
        .route("/v1/config", get(device::config))
        .route("/v1/report", post(device::report))
        .route("/v1/device/swarm", post(device::post_tokens))
        .route("/v1/device/manager-lost", post(device::manager_lost))
        .route("/v1/device/recovered", post(device::recovered))
        .route("/v1/device/key", post(device::rotate_key))
        .route("/v1/desired", get(device::desired))
        .route(
            "/v1/swarms",
            get(operator::list_swarms).post(operator::create_swarm),
        )
        .route(
            "/v1/swarms/{name}",
            get(operator::show_swarm)
                .patch(operator::update_swarm)
                .delete(operator::remove_swarm),
        )
        .route(
            "/v1/swarms/{name}/rotate-tokens",
            post(operator::rotate_tokens),
        )
        .route("/v1/swarms/{name}/recover", post(operator::recover_swarm))
        .route(
            "/v1/swarms/{name}/agent-rollout",
            get(operator::show_rollout).post(operator::start_rollout),
        )
        .route(
            "/v1/swarms/{name}/services",
            get(operator::list_services).post(operator::create_service),
        )
        .route(
            "/v1/swarms/{name}/services/{service}",
            get(operator::show_service)
                .put(operator::deploy_service)
                .delete(operator::remove_service),
        )
        .route(
            "/v1/swarms/{name}/stacks/{stack}",
            put(operator::deploy_stack).delete(operator::remove_stack),
        )
        .route(
            "/v1/swarms/{name}/services/{service}/rollback",
            post(operator::rollback_service),
        )
        .route("/v1/swarms/{name}/registries", get(files::list_registries))
        .route(
            "/v1/swarms/{name}/registries/{host}",
            put(files::put_registry).delete(files::remove_registry),
        )
        .route("/v1/values", post(files::values))
        .route(
            "/v1/swarms/{name}/services/{service}/logs",
            post(operator::open_logs),
        )
        .route(
            "/v1/swarms/{name}/logs/{id}",
            get(operator::read_logs).delete(operator::close_logs),
        )
        .route(
            "/v1/devices",
            get(operator::list_devices).post(operator::create_device),
        )
        .route(
            "/v1/devices/{id}",
            get(operator::show_device)
                .patch(operator::update_device)
                .delete(operator::remove_device),
        )
        .route("/v1/devices/{id}/labels", post(operator::change_labels))
        .route(
            "/v1/devices/{id}/telemetry",
            get(operator::device_telemetry),
        )
        .route("/v1/devices/{id}/logs", post(operator::open_agent_logs))
        .route(
            "/v1/devices/{id}/logs/{request}",
            get(operator::read_agent_logs).delete(operator::close_agent_logs),
        )
        .route("/v1/devices/{id}/approve", post(operator::approve_device))
        .route(
            "/v1/provisioning-key/rotate",
            post(operator::rotate_provisioning_key),
        )
        .route("/v1/admin-token/rotate", post(operator::rotate_admin_token))
        .route(
            "/v1/enrol-tokens",
            get(trust::list_enrol_tokens).post(trust::create_enrol_token),
        )
        .route(
            "/v1/enrol-tokens/{id}",
            axum::routing::delete(trust::remove_enrol_token),
        )
        .route("/v1/users", get(trust::list_users).post(trust::create_user))
        .route(
            "/v1/users/{name}",
            axum::routing::patch(trust::update_user).delete(trust::remove_user),
        )
        .route(
            "/v1/tokens",
            get(trust::list_tokens).post(trust::create_token),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(trust::remove_token),
        )
        .route("/v1/whoami", get(trust::whoami))
        .route(
            "/v1/certificates",
            get(trust::list_certificates).post(trust::create_certificate),
        )
        .route(
            "/v1/certificates/{id}",
            axum::routing::delete(trust::remove_certificate),
        )
        .route("/v1/status", get(operator::status))
        .route("/v1/events", get(operator::events))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let import = Router::new()
        .route("/v1/devices/import", post(operator::import_devices))
        // A big swarm's observed tasks outgrow the small-body limit; so
        // do batches of log lines.
        .route("/v1/observed", post(device::post_observed))
        .route("/v1/logs/{id}", post(device::post_log_chunk))
        // Secrets and configs take up to swarm's 500 KiB.
        .route(
            "/v1/swarms/{name}/secrets",
            get(files::secrets::list).post(files::secrets::create),
        )
        .route(
            "/v1/swarms/{name}/secrets/{secret}",
            get(files::secrets::show)
                .put(files::secrets::put)
                .delete(files::secrets::remove),
        )
        .route(
            "/v1/swarms/{name}/configs",
            get(files::configs::list).post(files::configs::create),
        )
        .route(
            "/v1/swarms/{name}/configs/{config}",
            get(files::configs::show)
                .put(files::configs::put)
                .delete(files::configs::remove),
        )
        .layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT));
    Router::new()
        .merge(api)
        .merge(import)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::verify_signature,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The protocol version the caller speaks (its `Fogswarm-Protocol`
/// header; 1.0 without one), read once by `observe` and put in the
/// request's extensions. A caller that names a version this server does
/// not serve is refused before any handler (426); one that names none (a
/// browser, curl, an agent from before versioning) is served, and an
/// agent among them flagged by its reports.
#[derive(Clone, Copy)]
pub struct PeerProtocol(pub ProtocolVersion);

impl PeerProtocol {
    fn of(headers: &HeaderMap) -> Result<PeerProtocol, ApiFailure> {
        use fogswarm_protocol::version::{Support, HEADER, PROTOCOL};
        let Some(value) = headers.get(HEADER) else {
            return Ok(PeerProtocol(ProtocolVersion::UNVERSIONED));
        };
        let version: ProtocolVersion =
            value.to_str().unwrap_or("?").parse().map_err(|e: String| {
                ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e, None)
            })?;
        match version.support() {
            Support::Unsupported => Err(ApiFailure::new(
                StatusCode::UPGRADE_REQUIRED,
                "protocol_unsupported",
                format!(
                    "this server speaks protocol {PROTOCOL} and serves {PROTOCOL} and the minor version before it; the caller speaks {version}: update it"
                ),
                None,
            )),
            Support::Current | Support::Outdated => Ok(PeerProtocol(version)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerProtocol {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<PeerProtocol>() {
            Some(peer) => Ok(*peer),
            None => PeerProtocol::of(&parts.headers),
        }
    }
}

/// Who a request turned out to be from (`device:ID`, `admin`,
/// `user:NAME`), filled in by whichever check authenticated it, for the
/// access log.
#[derive(Clone, Default)]
pub(crate) struct Who(Arc<std::sync::OnceLock<String>>);

impl Who {
    pub(crate) fn note(parts: &Parts, who: impl FnOnce() -> String) {
        if let Some(slot) = parts.extensions.get::<Who>() {
            let _ = slot.0.set(who());
        }
    }
}

/// Counts every request by route and status with its latency, and writes
/// the access log (target `fogswarm::access`, at info): method, path
/// (never the query), route template, status, duration and who. Headers and bodies are
/// never logged.
async fn observe(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let api = path.starts_with("/v1/");
    let who = Who::default();
    request.extensions_mut().insert(who.clone());
    let started = Instant::now();
    let mut response = match PeerProtocol::of(request.headers()) {
        Ok(peer) => {
            request.extensions_mut().insert(peer);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    };
    response.headers_mut().insert(
        fogswarm_protocol::version::HEADER,
        axum::http::HeaderValue::from_static(fogswarm_protocol::version::PROTOCOL),
    );
    if api {
        response = api_shaped(response).await;
    }
    if state.secure_cookies {
        // Served over TLS: browsers keep to it.
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=31536000"),
        );
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .request(method.as_str(), &route, status, elapsed.as_secs_f64());
    let who = who.0.get().map(String::as_str).unwrap_or("-");
    tracing::info!(target: "fogswarm::access", %method, %path, %route, status, ms = elapsed.as_micros() as f64 / 1000.0, %who, "request");
    response
}

/// An extractor's own rejection (a path segment that is not UTF-8, say)
/// is plain text; the API answers every failure in its JSON shape.
async fn api_shaped(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    ApiFailure::new(status, "bad_request", text.trim(), None).into_response()
}

async fn method_not_allowed() -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
        None,
    )
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None)
}

// ---- the rest ----

/// The process is alive (a load balancer's liveness check); says nothing
/// of the database: see `/readyz`.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "api": API_VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": fogswarm_protocol::version::PROTOCOL,
    }))
}

/// Whether this replica can serve: its database reachable and writable
/// (a check-in is written now) and migrated (the store opened). 503 with
/// the reason otherwise, so a load balancer sends devices elsewhere.
async fn readyz(State(state): State<Shared>) -> Response {
    let failure = state.check_in();
    let body = |status: &str, reason: Option<String>| {
        serde_json::json!({
            "status": status,
            "replica": state.replica.id,
            "version": env!("CARGO_PKG_VERSION"),
            "reason": reason,
        })
    };
    match failure {
        None => Json(body("ready", None)).into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(body("not_ready", Some(format!("the database: {e}")))),
        )
            .into_response(),
    }
}

/// Prometheus metrics. With `--metrics-token-file`, only for a bearer of
/// that token (a failure counts against the address like any other).
async fn metrics(
    State(state): State<Shared>,
    Peer(ip): Peer,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(hash) = &state.metrics_hash {
        match auth::bearer(&headers) {
            Some(token) if secrets::matches(token, hash) => {}
            Some(_) => {
                return Err(state.refuse(ip, "metrics-token", "the metrics token is not valid"))
            }
            None => {
                return Err(ApiFailure::unauthorized(
                    "/metrics needs the metrics token as a bearer token",
                ))
            }
        }
    }
    let health = state.store.fleet_health(state.replica.ready())?;
    let by_state = state.store.devices_by_state()?;
    let devices = state.store.device_gauges(state.metrics_device_limit)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            &health,
            &by_state,
            &devices,
            &state.store.database().commit_stats(),
        ),
    )
        .into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "fogswarm configuration server", description = "Device bootstrap and operator API."),
    paths(
        device::enrol, device::rotate_key, device::config, device::report, device::post_tokens, device::desired, device::manager_lost, device::recovered,
        operator::list_swarms, operator::create_swarm, operator::show_swarm, operator::update_swarm, operator::remove_swarm, operator::rotate_tokens, operator::recover_swarm, operator::start_rollout, operator::show_rollout,
        operator::list_devices, operator::create_device, operator::import_devices, operator::show_device, operator::device_telemetry, operator::update_device, operator::change_labels, operator::approve_device, operator::remove_device,
        operator::rotate_provisioning_key, operator::rotate_admin_token, operator::status, operator::events,
        trust::create_enrol_token, trust::list_enrol_tokens, trust::remove_enrol_token,
        trust::create_user, trust::list_users, trust::update_user, trust::remove_user, trust::whoami,
        trust::create_token, trust::list_tokens, trust::remove_token,
        trust::create_certificate, trust::list_certificates, trust::remove_certificate,
        operator::list_services, operator::create_service, operator::show_service, operator::deploy_service, operator::remove_service, operator::deploy_stack, operator::remove_stack, operator::rollback_service, device::post_observed,
        files::secrets::list, files::secrets::create, files::secrets::put, files::secrets::show, files::secrets::remove,
        files::configs::list, files::configs::create, files::configs::put, files::configs::show, files::configs::remove,
        files::list_registries, files::put_registry, files::remove_registry, files::values,
        operator::open_logs, operator::read_logs, operator::close_logs, device::post_log_chunk,
        operator::open_agent_logs, operator::read_agent_logs, operator::close_agent_logs
    ),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["admin", "device"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

#[cfg(test)]
mod openapi_tests {
    /// The service endpoints of this change are in the document, each with
    /// its own operation id (the secret and config endpoints share code).
    #[test]
    fn service_endpoints_are_documented() {
        let doc = serde_json::to_value(super::openapi_document()).expect("json");
        let paths = &doc["paths"];
        for (path, method, operation) in [
            ("/v1/swarms/{name}/secrets", "post", "create_secret"),
            ("/v1/swarms/{name}/secrets/{secret}", "put", "put_secret"),
            ("/v1/swarms/{name}/configs/{config}", "get", "show_config"),
            ("/v1/swarms/{name}/registries/{host}", "put", "put_registry"),
            (
                "/v1/swarms/{name}/services/{service}/rollback",
                "post",
                "rollback_service",
            ),
            (
                "/v1/swarms/{name}/services/{service}/logs",
                "post",
                "open_logs",
            ),
            ("/v1/swarms/{name}/logs/{id}", "get", "read_logs"),
            ("/v1/logs/{id}", "post", "post_log_chunk"),
            ("/v1/values", "post", "values"),
        ] {
            assert_eq!(
                paths[path][method]["operationId"], operation,
                "{method} {path}"
            );
        }
    }
}
