//! The HTTP API: device bootstrap endpoints, the operator API, health,
//! metrics and the OpenAPI document.
//!
//! Every failure answers `{"error", "message", "field"}` with a 4xx (or a
//! 500 that says nothing of internals); no message ever carries a secret.

use crate::db::DbError;
use crate::limit::FailureLimiter;
use crate::metrics::Metrics;
use crate::secrets;
use crate::store::{Actor, ServerCredentials, Store, StoreError, Touched};
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
use fogswarm_protocol::api::*;
use fogswarm_protocol::service::*;
use fogswarm_protocol::validate::Role;
use fogswarm_protocol::DeviceId;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use utoipa::OpenApi;

/// Request bodies are small JSON documents; bulk import and a big swarm's
/// observed services may be larger.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const IMPORT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Longest a desired-state long poll is held.
pub const MAX_WAIT_SECS: u64 = 60;

pub struct AppState {
    pub store: Store,
    /// The admin token's hash, as shared through the database (it never
    /// changes while the server runs).
    pub admin_hash: String,
    /// Where a rotated provisioning key is written (on this replica).
    pub provisioning_file: PathBuf,
    /// Per-swarm revision channels that wake long polls.
    pub revisions: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub metrics: Metrics,
    pub limiter: FailureLimiter,
}

impl AppState {
    fn watch(&self, swarm: &str) -> watch::Receiver<u64> {
        let mut map = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(swarm.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the long polls of every swarm a change touched. On
    /// PostgreSQL the change's notification does it, on every replica
    /// this one included (see `db::Listener`).
    fn notify(&self, touched: &Touched) {
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

type Shared = Arc<AppState>;

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

    fn invalid(field: &str, message: impl Into<String>) -> Self {
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

/// `Json<T>` whose rejections answer in the API's error format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
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

// ---- authentication ----

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The address a request came from, for the brute-force limiter.
pub struct Peer(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_ip(parts)))
    }
}

fn peer_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

impl AppState {
    /// Refuses (429) an address that failed too often lately.
    fn admit(&self, ip: IpAddr) -> ApiResult<()> {
        self.limiter
            .check(ip)
            .map_err(ApiFailure::too_many_failures)
    }
}

/// The caller presented the admin token.
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let ip = peer_ip(parts);
        state.admit(ip)?;
        match bearer(parts) {
            Some(token) if secrets::matches(token, &state.admin_hash) => Ok(Admin),
            Some(_) => {
                state.limiter.fail(ip);
                Err(ApiFailure::unauthorized("the admin token is not valid"))
            }
            None => Err(ApiFailure::unauthorized(
                "this endpoint needs the admin token as a bearer token",
            )),
        }
    }
}

/// The caller presented a device credential; this is the device.
pub struct AuthDevice(pub String);

impl FromRequestParts<Shared> for AuthDevice {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let ip = peer_ip(parts);
        state.admit(ip)?;
        let token = bearer(parts).ok_or_else(|| {
            ApiFailure::unauthorized(
                "this endpoint needs the device's credential as a bearer token",
            )
        })?;
        match state.store.authenticate_device(token)? {
            Some(id) => Ok(AuthDevice(id)),
            None => {
                state.limiter.fail(ip);
                Err(ApiFailure::unauthorized(
                    "the device credential is not valid",
                ))
            }
        }
    }
}

// ---- router ----

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/enrol", post(enrol))
        .route("/v1/config", get(config))
        .route("/v1/report", post(report))
        .route("/v1/device/swarm", post(post_tokens))
        .route("/v1/desired", get(desired))
        .route("/v1/swarms", get(list_swarms).post(create_swarm))
        .route(
            "/v1/swarms/{name}",
            get(show_swarm).patch(update_swarm).delete(remove_swarm),
        )
        .route(
            "/v1/swarms/{name}/services",
            get(list_services).post(create_service),
        )
        .route(
            "/v1/swarms/{name}/services/{service}",
            get(show_service).put(deploy_service).delete(remove_service),
        )
        .route(
            "/v1/swarms/{name}/stacks/{stack}",
            put(deploy_stack).delete(remove_stack),
        )
        .route("/v1/devices", get(list_devices).post(create_device))
        .route(
            "/v1/devices/{id}",
            get(show_device).patch(update_device).delete(remove_device),
        )
        .route("/v1/devices/{id}/labels", post(change_labels))
        .route("/v1/devices/{id}/approve", post(approve_device))
        .route("/v1/provisioning-key/rotate", post(rotate_provisioning_key))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let import = Router::new()
        .route("/v1/devices/import", post(import_devices))
        // A big swarm's observed tasks outgrow the small-body limit.
        .route("/v1/observed", post(post_observed))
        .layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT));
    Router::new()
        .merge(api)
        .merge(import)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request by route and status, and logs it at debug level:
/// method, route template (never the raw path, which may hold ids only),
/// status and duration. Headers and bodies are never logged.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.request(method.as_str(), &route, status);
    tracing::debug!(%method, route, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
    response
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

// ---- device API ----

/// Enrol a device with the fleet's provisioning key; answers its credential.
#[utoipa::path(post, path = "/v1/enrol", tag = "device", request_body = EnrolRequest,
    responses((status = 200, body = EnrolResponse), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 422, body = ApiError)))]
async fn enrol(
    State(state): State<Shared>,
    Peer(ip): Peer,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> ApiResult<Json<EnrolResponse>> {
    state.admit(ip)?;
    // Read each time: another replica may have rotated it.
    let hash = state
        .store
        .credential(ServerCredentials::PROVISIONING_KEY_HASH)?
        .unwrap_or_default();
    if !secrets::matches(req.provisioning_key.expose(), &hash) {
        state.limiter.fail(ip);
        state.metrics.enrolment("refused_key");
        return Err(ApiFailure::unauthorized(
            "the provisioning key is not valid",
        ));
    }
    let (enrolment, touched) = state
        .store
        .enrol(&req.device_id, req.swarm.as_deref(), &req.facts)
        .inspect_err(|e| {
            if matches!(e, StoreError::Forbidden(_)) {
                state.metrics.enrolment("refused_unknown");
            }
        })?;
    state.metrics.enrolment(if enrolment.pending {
        "pending"
    } else {
        "accepted"
    });
    state.notify(&touched);
    Ok(Json(EnrolResponse {
        device_id: req.device_id,
        swarm: enrolment.swarm,
        role: enrolment.role,
        credential: enrolment.credential,
        pending: enrolment.pending,
    }))
}

/// What the device does next: init, join, wait or leave.
#[utoipa::path(get, path = "/v1/config", tag = "device", security(("device" = [])),
    responses((status = 200, body = ConfigAnswer), (status = 401, body = ApiError)))]
async fn config(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
) -> ApiResult<Json<ConfigAnswer>> {
    let (answer, lease_granted) = state.store.config_for(&device)?;
    if lease_granted {
        state.metrics.lease_grant();
    }
    Ok(Json(answer))
}

/// The device's state, node, engine, facts and error.
#[utoipa::path(post, path = "/v1/report", tag = "device", security(("device" = [])), request_body = ReportRequest,
    responses((status = 204), (status = 401, body = ApiError), (status = 422, body = ApiError)))]
async fn report(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<ReportRequest>,
) -> ApiResult<StatusCode> {
    let touched = state.store.report(&device, &req)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

/// A manager posts its swarm's cluster id, manager addresses and join tokens.
#[utoipa::path(post, path = "/v1/device/swarm", tag = "device", security(("device" = [])), request_body = SwarmTokens,
    responses((status = 204), (status = 403, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn post_tokens(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<SwarmTokens>,
) -> ApiResult<StatusCode> {
    let touched = state.store.set_tokens(&device, &req)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct DesiredQuery {
    /// Answer only once the revision is greater than this (long poll).
    since: Option<u64>,
    /// Seconds to hold the request waiting for a change (at most 60).
    wait: Option<u64>,
}

/// The swarm's desired state, for its managers; long-polls with `since`.
#[utoipa::path(get, path = "/v1/desired", tag = "device", security(("device" = [])), params(DesiredQuery),
    responses((status = 200, body = DesiredState), (status = 403, body = ApiError)))]
async fn desired(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiQuery(q): ApiQuery<DesiredQuery>,
) -> ApiResult<Json<DesiredState>> {
    let swarm = state.store.manager_swarm(&device)?;
    // Subscribe before reading, so a change between the two is not missed.
    let mut rx = state.watch(&swarm);
    let current = state.store.desired_state(&swarm)?;
    let Some(since) = q.since.filter(|since| current.revision <= *since) else {
        return Ok(Json(current));
    };
    let wait = Duration::from_secs(q.wait.unwrap_or(30).min(MAX_WAIT_SECS));
    let _ = tokio::time::timeout(wait, async {
        while rx.changed().await.is_ok() {
            if *rx.borrow() > since {
                break;
            }
        }
    })
    .await;
    Ok(Json(state.store.desired_state(&swarm)?))
}

// ---- operator API ----

/// All swarms.
#[utoipa::path(get, path = "/v1/swarms", tag = "operator", security(("admin" = [])), responses((status = 200, body = Vec<SwarmView>)))]
async fn list_swarms(State(state): State<Shared>, _: Admin) -> ApiResult<Json<Vec<SwarmView>>> {
    Ok(Json(state.store.list_swarms()?))
}

/// Create a swarm.
#[utoipa::path(post, path = "/v1/swarms", tag = "operator", security(("admin" = [])), request_body = SwarmCreate,
    responses((status = 201, body = SwarmView), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_swarm(
    State(state): State<Shared>,
    _: Admin,
    ApiJson(req): ApiJson<SwarmCreate>,
) -> ApiResult<(StatusCode, Json<SwarmView>)> {
    let view = state
        .store
        .create_swarm(&Actor::Admin, &req.name, req.auto_enrol)?;
    state.notify(&vec![view.name.clone()]);
    Ok((StatusCode::CREATED, Json(view)))
}

/// One swarm.
#[utoipa::path(get, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = SwarmView), (status = 404, body = ApiError)))]
async fn show_swarm(
    State(state): State<Shared>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<SwarmView>> {
    Ok(Json(state.store.get_swarm(&name)?))
}

/// Change a swarm's settings.
#[utoipa::path(patch, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])), request_body = SwarmUpdate,
    responses((status = 200, body = SwarmView), (status = 404, body = ApiError)))]
async fn update_swarm(
    State(state): State<Shared>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SwarmUpdate>,
) -> ApiResult<Json<SwarmView>> {
    Ok(Json(state.store.update_swarm(
        &Actor::Admin,
        &name,
        req.auto_enrol,
    )?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ForceQuery {
    /// Remove even when it would also remove devices (swarm) or skip the
    /// leave step (device).
    #[serde(default)]
    force: bool,
}

/// Remove a swarm (refused while it has devices, unless forced).
#[utoipa::path(delete, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])), params(ForceQuery),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_swarm(
    State(state): State<Shared>,
    _: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<StatusCode> {
    state.store.remove_swarm(&Actor::Admin, &name, q.force)?;
    state
        .revisions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ---- services ----

/// A swarm's services, each with its status and latest observation.
#[utoipa::path(get, path = "/v1/swarms/{name}/services", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = Vec<ServiceView>), (status = 404, body = ApiError)))]
async fn list_services(
    State(state): State<Shared>,
    _: Admin,
    Path(swarm): Path<String>,
) -> ApiResult<Json<Vec<ServiceView>>> {
    Ok(Json(state.store.list_services(&swarm)?))
}

/// Create a service; refused (409) when the name is taken.
#[utoipa::path(post, path = "/v1/swarms/{name}/services", tag = "operator", security(("admin" = [])), request_body = ServiceSpec,
    responses((status = 201, body = ServiceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_service(
    State(state): State<Shared>,
    _: Admin,
    Path(swarm): Path<String>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let (view, touched) = state.store.create_service(&Actor::Admin, &swarm, &spec)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(view)))
}

/// One service.
#[utoipa::path(get, path = "/v1/swarms/{name}/services/{service}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ApiError)))]
async fn show_service(
    State(state): State<Shared>,
    _: Admin,
    Path((swarm, name)): Path<(String, String)>,
) -> ApiResult<Json<ServiceView>> {
    Ok(Json(state.store.get_service(&swarm, &name)?))
}

/// Create or replace a service (the body is the whole spec); an identical
/// spec is a no-op.
#[utoipa::path(put, path = "/v1/swarms/{name}/services/{service}", tag = "operator", security(("admin" = [])), request_body = ServiceSpec,
    responses((status = 200, body = ServiceDeployed), (status = 201, body = ServiceDeployed), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn deploy_service(
    State(state): State<Shared>,
    _: Admin,
    Path((swarm, name)): Path<(String, String)>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceDeployed>)> {
    if spec.name != name {
        return Err(ApiFailure::invalid(
            "name",
            format!(
                "the body names service {:?} but the path names {name:?}",
                spec.name
            ),
        ));
    }
    let (service, outcome, touched) = state.store.deploy_service(&Actor::Admin, &swarm, &spec)?;
    state.notify(&touched);
    let status = if outcome == DeployOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ServiceDeployed { outcome, service })))
}

/// Remove a service; the swarm's manager removes it from the swarm.
#[utoipa::path(delete, path = "/v1/swarms/{name}/services/{service}", tag = "operator", security(("admin" = [])),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn remove_service(
    State(state): State<Shared>,
    _: Admin,
    Path((swarm, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let touched = state.store.remove_service(&Actor::Admin, &swarm, &name)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

/// Deploy a stack: its services are checked together and written in one
/// transaction.
#[utoipa::path(put, path = "/v1/swarms/{name}/stacks/{stack}", tag = "operator", security(("admin" = [])), request_body = StackDeploy,
    responses((status = 200, body = Vec<StackServiceOutcome>), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn deploy_stack(
    State(state): State<Shared>,
    _: Admin,
    Path((swarm, stack)): Path<(String, String)>,
    ApiJson(request): ApiJson<StackDeploy>,
) -> ApiResult<Json<Vec<StackServiceOutcome>>> {
    let (outcome, touched) = state
        .store
        .deploy_stack(&Actor::Admin, &swarm, &stack, &request)?;
    state.notify(&touched);
    Ok(Json(outcome))
}

/// Remove every service of a stack.
#[utoipa::path(delete, path = "/v1/swarms/{name}/stacks/{stack}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = Vec<StackServiceOutcome>), (status = 404, body = ApiError)))]
async fn remove_stack(
    State(state): State<Shared>,
    _: Admin,
    Path((swarm, stack)): Path<(String, String)>,
) -> ApiResult<Json<Vec<StackServiceOutcome>>> {
    let (names, touched) = state.store.remove_stack(&Actor::Admin, &swarm, &stack)?;
    state.notify(&touched);
    Ok(Json(
        names
            .into_iter()
            .map(|name| StackServiceOutcome {
                name,
                outcome: DeployOutcome::Removed,
            })
            .collect(),
    ))
}

/// The raft leader's agent reports what its swarm runs.
#[utoipa::path(post, path = "/v1/observed", tag = "device", security(("device" = [])), request_body = ObservedReport,
    responses((status = 204), (status = 403, body = ApiError)))]
async fn post_observed(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(report): ApiJson<ObservedReport>,
) -> ApiResult<StatusCode> {
    state.store.set_observed(&device, &report)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct DeviceListQuery {
    swarm: Option<String>,
}

/// All devices, or one swarm's.
#[utoipa::path(get, path = "/v1/devices", tag = "operator", security(("admin" = [])), params(DeviceListQuery),
    responses((status = 200, body = Vec<DeviceView>)))]
async fn list_devices(
    State(state): State<Shared>,
    _: Admin,
    ApiQuery(q): ApiQuery<DeviceListQuery>,
) -> ApiResult<Json<Vec<DeviceView>>> {
    Ok(Json(state.store.list_devices(q.swarm.as_deref())?))
}

/// Declare a device.
#[utoipa::path(post, path = "/v1/devices", tag = "operator", security(("admin" = [])), request_body = DeviceCreate,
    responses((status = 201, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_device(
    State(state): State<Shared>,
    _: Admin,
    ApiJson(req): ApiJson<DeviceCreate>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    let (view, touched) = state.store.create_device(&Actor::Admin, &req)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Declare many devices from JSON (an array of devices) or CSV (columns
/// id, swarm, role, labels with labels as `k=v;k=v`): all rows or none.
#[utoipa::path(post, path = "/v1/devices/import", tag = "operator", security(("admin" = [])),
    request_body(content = Vec<DeviceCreate>, content_type = "application/json"),
    responses((status = 201, body = ImportResult), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn import_devices(
    State(state): State<Shared>,
    _: Admin,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ImportResult>)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let rows: Vec<DeviceCreate> = if content_type.starts_with("text/csv") {
        parse_csv(&body)?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("import body: {e}"),
                None,
            )
        })?
    } else {
        return Err(ApiFailure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported",
            "send the import as application/json or text/csv",
            None,
        ));
    };
    if rows.is_empty() {
        return Err(ApiFailure::invalid("rows", "the import has no rows"));
    }
    let (created, touched) = state.store.import_devices(&Actor::Admin, &rows)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(ImportResult { created })))
}

/// Parses the CSV import format, naming the row of any error.
pub fn parse_csv(body: &[u8]) -> ApiResult<Vec<DeviceCreate>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|e| ApiFailure::invalid("header", format!("CSV header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(id_col), Some(swarm_col)) = (column("id"), column("swarm")) else {
        return Err(ApiFailure::invalid(
            "header",
            "the CSV header must name the columns id and swarm (and optionally role, labels)",
        ));
    };
    let role_col = column("role");
    let labels_col = column("labels");
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let n = i + 1;
        let record = record
            .map_err(|e| ApiFailure::invalid(&format!("row {n}"), format!("row {n}: {e}")))?;
        let cell = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").to_string();
        let role = match cell(role_col).as_str() {
            "" => Role::Worker,
            r => Role::parse(r).map_err(|e| {
                ApiFailure::invalid(&format!("row {n}: role"), format!("row {n}: {}", e.message))
            })?,
        };
        let mut labels = fogswarm_protocol::Labels::new();
        for pair in cell(labels_col)
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) =
                fogswarm_protocol::validate::parse_label_assignment(pair).map_err(|e| {
                    ApiFailure::invalid(
                        &format!("row {n}: {}", e.field),
                        format!("row {n}: {}", e.message),
                    )
                })?;
            labels.insert(k, v);
        }
        rows.push(DeviceCreate {
            id: cell(Some(id_col)),
            swarm: cell(Some(swarm_col)),
            role,
            labels,
        });
    }
    Ok(rows)
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError)))]
async fn show_device(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(state.store.get_device(&id)?))
}

/// Change a device's swarm, role or (all of its) labels.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "operator", security(("admin" = [])), request_body = DeviceUpdate,
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn update_device(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DeviceUpdate>,
) -> ApiResult<Json<DeviceView>> {
    let (view, touched) = state.store.update_device(&Actor::Admin, &id, &req)?;
    state.notify(&touched);
    Ok(Json(view))
}

/// Set and unset some of a device's labels.
#[utoipa::path(post, path = "/v1/devices/{id}/labels", tag = "operator", security(("admin" = [])), request_body = LabelChange,
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn change_labels(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LabelChange>,
) -> ApiResult<Json<DeviceView>> {
    let (view, touched) = state.store.change_labels(&Actor::Admin, &id, &req)?;
    state.notify(&touched);
    Ok(Json(view))
}

/// Approve a device held pending by auto-enrolment.
#[utoipa::path(post, path = "/v1/devices/{id}/approve", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn approve_device(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let view = state.store.approve_device(&Actor::Admin, &id)?;
    state.notify(&vec![view.swarm.clone()]);
    Ok(Json(view))
}

/// Decommission a device: it is told to leave, then removed; `force`
/// removes it at once.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "operator", security(("admin" = [])), params(ForceQuery),
    responses((status = 202, body = DeviceView), (status = 204), (status = 404, body = ApiError)))]
async fn remove_device(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<Response> {
    let (view, touched) = state.store.remove_device(&Actor::Admin, &id, q.force)?;
    state.notify(&touched);
    Ok(match view {
        Some(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Replace the fleet's provisioning key; answers the new one (once).
#[utoipa::path(post, path = "/v1/provisioning-key/rotate", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = ProvisioningKeyRotated)))]
async fn rotate_provisioning_key(
    State(state): State<Shared>,
    _: Admin,
) -> ApiResult<Json<ProvisioningKeyRotated>> {
    let key = secrets::random_token("fsp");
    secrets::write_secret_file(&state.provisioning_file, key.expose()).map_err(|e| {
        tracing::error!(error = %e, "writing the provisioning key file");
        ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not write the provisioning key file",
            None,
        )
    })?;
    state.store.set_credential(
        ServerCredentials::PROVISIONING_KEY_HASH,
        &secrets::hash(key.expose()),
    )?;
    state
        .store
        .log(&Actor::Admin, "provisioning_key.rotate", "fleet", "")?;
    Ok(Json(ProvisioningKeyRotated {
        provisioning_key: key,
        file: state.provisioning_file.display().to_string(),
    }))
}

/// The fleet at a glance: devices per swarm and state, and problems.
#[utoipa::path(get, path = "/v1/status", tag = "operator", security(("admin" = [])), responses((status = 200, body = FleetStatus)))]
async fn status(State(state): State<Shared>, _: Admin) -> ApiResult<Json<FleetStatus>> {
    Ok(Json(state.store.status()?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct EventQuery {
    /// Only events with a greater id.
    #[serde(default)]
    since: i64,
    /// At most this many (default 100, at most 1000): the newest.
    limit: Option<u32>,
    /// Only events about this swarm or device.
    subject: Option<String>,
}

/// The event log: who did what, when.
#[utoipa::path(get, path = "/v1/events", tag = "operator", security(("admin" = [])), params(EventQuery),
    responses((status = 200, body = Vec<Event>)))]
async fn events(
    State(state): State<Shared>,
    _: Admin,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let subject = q
        .subject
        .map(|s| DeviceId::parse(&s).map(String::from).unwrap_or(s));
    Ok(Json(state.store.events(
        q.since,
        q.limit.unwrap_or(100).min(1000),
        subject.as_deref(),
    )?))
}

// ---- the rest ----

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "api": API_VERSION}))
}

async fn metrics(State(state): State<Shared>) -> ApiResult<Response> {
    let by_state = state.store.devices_by_state()?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&by_state),
    )
        .into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "fogswarm configuration server", description = "Device bootstrap and operator API."),
    paths(
        enrol, config, report, post_tokens, desired,
        list_swarms, create_swarm, show_swarm, update_swarm, remove_swarm,
        list_devices, create_device, import_devices, show_device, update_device, change_labels, approve_device, remove_device,
        rotate_provisioning_key, status, events,
        list_services, create_service, show_service, deploy_service, remove_service, deploy_stack, remove_stack, post_observed
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
