//! The dashboard, served at `/` by the same binary, its assets compiled in
//! (no CDN, nothing to fetch in a factory without internet).
//!
//! - Sign in with the admin token; the browser then holds a random session
//!   id in an HttpOnly, SameSite=Strict cookie (Secure over TLS); only its
//!   hash is stored, in the database, so every replica knows it.
//! - Every state-changing request is a POST that must come from a page of
//!   this server: its `Origin` (or, without one, `Sec-Fetch-Site:
//!   same-origin`) must match. With SameSite=Strict that is two locks on
//!   cross-site requests, and no token of any kind is put in a page.
//! - Pages are server-rendered HTML (see `pages`); `app.js` listens to
//!   `/live` (Server-Sent Events, one per change in the event log) and
//!   swaps in the page's fresh `<main>`.

mod pages;

use crate::http::{AppState, Shared};
use crate::secrets;
use crate::store::StoreError;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use fogswarm_protocol::api::LabelChange;
use fogswarm_protocol::Labels;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

const COOKIE: &str = "fogswarm_session";
/// Devices per page of the devices list.
const PER_PAGE: u64 = 50;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/", get(fleet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/devices/{id}/labels", post(set_labels))
        .route("/devices/{id}/log", get(agent_log))
        .route("/devices/{id}/approve", post(approve))
        .route("/devices/{id}/decommission", post(decommission))
        .route("/events", get(events))
        .route("/swarms/{name}", get(swarm))
        .route("/swarms/{name}/stacks", post(deploy_stack))
        .route("/swarms/{name}/services/{service}/log", get(service_log))
        .route("/swarms/{name}/stacks/remove", post(remove_stack))
        .route("/live", get(live))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
}

/// Watches the event log, and when services were last observed and
/// telemetry last written (a few queries a second, whatever the number of
/// open pages), and tells every `/live` stream of each change.
pub fn spawn_live(state: Shared) {
    tokio::spawn(async move {
        let mut last = state
            .store
            .events(0, 1, None)
            .ok()
            .and_then(|e| e.last().map(|e| e.id))
            .unwrap_or(0);
        let mut marks = None;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if state.live.receiver_count() == 0 {
                // Nobody watching: only keep up with the log's end.
                if let Ok(newest) = state.store.events(0, 1, None) {
                    last = newest.last().map_or(last, |e| e.id);
                }
                continue;
            }
            match state.store.events(last, 200, None) {
                Ok(events) => {
                    for e in events {
                        last = e.id;
                        let _ = state.live.send(e);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading events for the dashboard"),
            }
            // Services observed and telemetry are not events; a change in
            // either is a refresh too (an event with id 0, not logged).
            if let Ok(now) = state.store.live_marks() {
                if marks.is_some_and(|m| m != now) {
                    let _ = state.live.send(fogswarm_protocol::api::Event {
                        id: 0,
                        at: crate::store::now(),
                        actor: "server".into(),
                        action: "observed".into(),
                        subject: String::new(),
                        detail: String::new(),
                    });
                }
                marks = Some(now);
            }
        }
    });
}

/// A channel for [`spawn_live`]: a slow page misses events rather than
/// holding memory (it refreshes on the next one anyway).
pub fn live_channel() -> broadcast::Sender<fogswarm_protocol::api::Event> {
    broadcast::channel(256).0
}

// ---- sessions ----

/// A signed-in browser, and who signed in.
pub struct Viewer {
    id_hash: String,
    who: crate::store::Operator,
}

impl Viewer {
    /// The refusal (403 page) of an action on `swarm` this user may not
    /// take; none when it may.
    fn refusal(&self, swarm: &str) -> Option<Response> {
        if self.who.may_change(swarm) {
            return None;
        }
        Some(page_response(
            StatusCode::FORBIDDEN,
            &pages::layout(
                "Refused",
                &format!(
                    "<h1>Refused</h1><p>{} {} may not change swarm {}.</p>",
                    self.who.role,
                    pages::esc(&self.who.name),
                    pages::esc(swarm)
                ),
                true,
            ),
        ))
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let to_login = || Redirect::to("/login").into_response();
        let Some(id) = session_id(&parts.headers) else {
            return Err(to_login());
        };
        let id_hash = secrets::hash(&id);
        match state.store.session_operator(&id_hash) {
            Ok(Some(who)) => Ok(Viewer { id_hash, who }),
            Ok(None) => Err(to_login()),
            Err(e) => Err(failure(&e.to_string())),
        }
    }
}

/// A POST from one of this server's own pages (see the module doc).
pub struct SameOrigin;

impl FromRequestParts<Shared> for SameOrigin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        // The scheme this server is reached by: its own, or what a trusted
        // proxy in front of it says.
        let scheme = {
            let forwarded = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .map(str::trim);
            let peer = crate::http::client_ip(parts, &[]);
            match forwarded {
                Some(proto) if state.trusted_proxies.iter().any(|c| c.contains(peer)) => {
                    proto.to_ascii_lowercase()
                }
                _ if state.secure_cookies => "https".to_string(),
                _ => "http".to_string(),
            }
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok());
        let fetch_site = parts
            .headers
            .get("sec-fetch-site")
            .and_then(|h| h.to_str().ok());
        let same = match (origin, host) {
            (Some(origin), Some(host)) => origin
                .split_once("://")
                .is_some_and(|(s, authority)| s == scheme && authority == host),
            (None, _) => fetch_site == Some("same-origin"),
            _ => false,
        };
        if same {
            Ok(SameOrigin)
        } else {
            Err(page_response(
                StatusCode::FORBIDDEN,
                &pages::layout(
                    "Refused",
                    "<h1>Refused</h1><p>This request did not come from a page of this server.</p>",
                    false,
                ),
            ))
        }
    }
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("fogswarm_session=; Path=/; Max-Age=0"))
}

#[derive(Deserialize)]
struct LoginForm {
    /// A user's name, with their password in `token`; empty: `token` is
    /// the admin token or a user's API token.
    #[serde(default)]
    user: String,
    token: String,
}

async fn login_page() -> Response {
    page_response(
        StatusCode::OK,
        &pages::layout("Sign in", &pages::login(None), false),
    )
}

/// The caller's address, for the failed-sign-in limiter.
struct PeerIp(std::net::IpAddr);

impl FromRequestParts<Shared> for PeerIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Infallible> {
        Ok(PeerIp(crate::http::client_ip(
            parts,
            &state.trusted_proxies,
        )))
    }
}

async fn login(
    State(state): State<Shared>,
    _: SameOrigin,
    PeerIp(ip): PeerIp,
    Form(form): Form<LoginForm>,
) -> Response {
    let user = form.user.trim().to_string();
    let secret = form.token.trim().to_string();
    let sign_in_again = |status: StatusCode, message: &str, wait: Option<std::time::Duration>| {
        let mut response = page_response(
            status,
            &pages::layout("Sign in", &pages::login(Some(message)), false),
        );
        if let Some(wait) = wait {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
        }
        response
    };
    let too_many = "Too many failed sign-ins from this address; wait a minute.";
    let (who, subject) = if user.is_empty() {
        let admin = match state.is_admin_token(&secret) {
            Ok(admin) => admin,
            Err(e) => return store_failure(e),
        };
        let who = if admin {
            Some(crate::store::Operator::builtin_admin())
        } else {
            match state.store.authenticate_user_token(&secret) {
                Ok(who) => who,
                Err(e) => return store_failure(e),
            }
        };
        (who, "operator-token".to_string())
    } else {
        // A password is a person's: while this address is locked out for
        // this user, even the right one is refused.
        let subject = format!("password:{user}");
        if let Some(wait) = state.limiter.locked(ip, &subject) {
            return sign_in_again(StatusCode::TOO_MANY_REQUESTS, too_many, Some(wait));
        }
        let store = state.clone();
        let checked =
            tokio::task::spawn_blocking(move || store.store.check_password(&user, &secret)).await;
        match checked {
            Ok(Ok(who)) => (who, subject),
            Ok(Err(e)) => return store_failure(e),
            Err(e) => return failure(&e.to_string()),
        }
    };
    let Some(who) = who else {
        if let Some(wait) = state.limiter.fail(ip, &subject) {
            return sign_in_again(StatusCode::TOO_MANY_REQUESTS, too_many, Some(wait));
        }
        return sign_in_again(
            StatusCode::UNAUTHORIZED,
            if form.user.trim().is_empty() {
                "That is not the admin token, nor a user's token."
            } else {
                "That user name and password do not match."
            },
            None,
        );
    };
    let id = secrets::random_token("fsd").expose().to_string();
    if let Err(e) = state.store.create_session(&secrets::hash(&id), &who) {
        return failure(&e.to_string());
    }
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&id, crate::store::SESSION_SECS, state.secure_cookies),
    );
    response
}

async fn logout(State(state): State<Shared>, viewer: Viewer, _: SameOrigin) -> Response {
    let _ = state.store.end_session(&viewer.id_hash);
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, state.secure_cookies));
    response
}

// ---- pages ----

/// The page, or only its main part when `app.js` asks for a refresh.
fn render(headers: &HeaderMap, title: &str, main: &str) -> Response {
    let body = if headers.contains_key("x-fogswarm-fragment") {
        main.to_string()
    } else {
        pages::layout(title, main, true)
    };
    page_response(StatusCode::OK, &body)
}

fn page_response(status: StatusCode, body: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Not `no-referrer`: with it, browsers send `Origin: null` on
            // a page's own form posts, and those are checked by origin.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A page shown again with what was refused on it (422).
fn refused(headers: &HeaderMap, title: &str, main: Result<String, StoreError>) -> Response {
    match main {
        Ok(main) => {
            let mut r = render(headers, title, &main);
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
        Err(e) => store_failure(e),
    }
}

fn failure(message: &str) -> Response {
    page_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &pages::layout(
            "Error",
            &format!(
                "<h1>Something went wrong</h1><p>{}</p>",
                pages::esc(message)
            ),
            true,
        ),
    )
}

fn not_found(what: &str) -> Response {
    page_response(
        StatusCode::NOT_FOUND,
        &pages::layout(
            "Not found",
            &format!("<h1>Not found</h1><p>{}</p>", pages::esc(what)),
            true,
        ),
    )
}

/// A store error as a page with the status the API would answer: a bad
/// name is the caller's (4xx), only the server's own trouble is a 500.
fn store_failure(e: StoreError) -> Response {
    let failure = crate::http::ApiFailure::from(e);
    let status = failure.status();
    if status == StatusCode::NOT_FOUND {
        return not_found(&failure.describe());
    }
    page_response(
        status,
        &pages::layout(
            "Error",
            &format!(
                "<h1>{}</h1><p>{}</p>",
                if status.is_server_error() {
                    "Something went wrong"
                } else {
                    "That cannot be done"
                },
                pages::esc(&failure.describe())
            ),
            true,
        ),
    )
}

async fn fleet(State(state): State<Shared>, viewer: Viewer, headers: HeaderMap) -> Response {
    let page = || -> Result<String, StoreError> {
        let status = state.store.status()?;
        let swarms = state.store.list_swarms()?;
        let pending = state.store.pending_devices()?;
        Ok(pages::fleet(&status, &swarms, &pending, &|swarm| {
            viewer.who.may_change(swarm)
        }))
    };
    match page() {
        Ok(main) => render(&headers, "Fleet", &main),
        Err(e) => store_failure(e),
    }
}

#[derive(Deserialize)]
struct DeviceQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    page: Option<u64>,
}

async fn devices(
    State(state): State<Shared>,
    _: Viewer,
    headers: HeaderMap,
    Query(query): Query<DeviceQuery>,
) -> Response {
    let label = query.label.trim();
    let label_filter = match label {
        "" => None,
        l => match l.split_once('=') {
            Some((k, v)) => Some((k.trim(), v.trim())),
            None => Some((l, "")),
        },
    };
    // Any page past the last is empty; bounded so its offset stays a
    // valid (non-negative 64-bit) OFFSET on both databases.
    let page = query.page.unwrap_or(1).clamp(1, 1 << 32);
    match state.store.device_page(
        Some(query.q.trim()),
        label_filter,
        (page - 1) * PER_PAGE,
        PER_PAGE,
    ) {
        Ok((list, total)) => {
            let ids: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
            let cpu = match state.store.cpu_last_hour(&ids) {
                Ok(cpu) => cpu,
                Err(e) => return store_failure(e),
            };
            render(
                &headers,
                "Devices",
                &pages::devices(
                    &list,
                    &cpu,
                    total,
                    &pages::DeviceFilter {
                        q: query.q.trim(),
                        label,
                        page,
                        per_page: PER_PAGE,
                    },
                ),
            )
        }
        Err(e) => store_failure(e),
    }
}

fn device_main(
    state: &AppState,
    id: &str,
    problem: Option<&str>,
    who: &crate::store::Operator,
) -> Result<String, StoreError> {
    let view = state.store.get_device(id)?;
    let telemetry = state.store.telemetry(view.id.as_str())?;
    let events = state.store.events(0, 30, Some(view.id.as_str()))?;
    let can_change = who.may_change(&view.swarm);
    Ok(pages::device(
        &view, &telemetry, &events, problem, can_change,
    ))
}

/// The refusal of an action on a device this user may not change (a 404
/// page for a device that does not exist).
fn device_refusal(state: &AppState, viewer: &Viewer, id: &str) -> Option<Response> {
    match state.store.get_device(id) {
        Ok(view) => viewer.refusal(&view.swarm),
        Err(e) => Some(store_failure(e)),
    }
}

async fn device(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match device_main(&state, &id, None, &viewer.who) {
        Ok(main) => render(&headers, &format!("Device {id}"), &main),
        Err(e) => store_failure(e),
    }
}

#[derive(Deserialize)]
struct LabelsForm {
    labels: String,
}

/// Replaces the device's labels with the form's (KEY=VALUE lines); a bad
/// line shows the page again with the problem, nothing changed.
async fn set_labels(
    State(state): State<Shared>,
    viewer: Viewer,
    _: SameOrigin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<LabelsForm>,
) -> Response {
    if let Some(refused) = device_refusal(&state, &viewer, &id) {
        return refused;
    }
    let mut set = Labels::new();
    let mut problem = None;
    for (n, line) in form.labels.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                set.insert(k.trim().to_string(), v.trim().to_string());
            }
            None => {
                problem = Some(format!("line {}: {line:?} is not KEY=VALUE", n + 1));
                break;
            }
        }
    }
    let result = match problem {
        Some(p) => Err(p),
        None => state
            .store
            .get_device(&id)
            .map_err(|e| e.to_string())
            .and_then(|view| {
                let unset = view
                    .labels
                    .keys()
                    .filter(|k| !set.contains_key(*k))
                    .cloned()
                    .collect();
                state
                    .store
                    .change_labels(&viewer.who.actor(), &id, &LabelChange { set, unset })
                    .map_err(|e| e.to_string())
            }),
    };
    match result {
        Ok((_, touched)) => {
            state.notify(&touched);
            Redirect::to(&format!("/devices/{}", pages::url(&id))).into_response()
        }
        Err(problem) => refused(
            &headers,
            &format!("Device {id}"),
            device_main(&state, &id, Some(&problem), &viewer.who),
        ),
    }
}

async fn approve(
    State(state): State<Shared>,
    viewer: Viewer,
    _: SameOrigin,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = device_refusal(&state, &viewer, &id) {
        return refused;
    }
    match state.store.approve_device(&viewer.who.actor(), &id) {
        Ok(view) => {
            state.notify(&vec![view.swarm.clone()]);
            Redirect::to(&format!("/devices/{}", pages::url(&id))).into_response()
        }
        Err(e) => store_failure(e),
    }
}

async fn decommission(
    State(state): State<Shared>,
    viewer: Viewer,
    _: SameOrigin,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = device_refusal(&state, &viewer, &id) {
        return refused;
    }
    match state.store.remove_device(&viewer.who.actor(), &id, false) {
        Ok((_, touched)) => {
            state.notify(&touched);
            Redirect::to("/devices").into_response()
        }
        Err(e) => store_failure(e),
    }
}

async fn events(State(state): State<Shared>, _: Viewer, headers: HeaderMap) -> Response {
    match state.store.events(0, 200, None) {
        Ok(list) => render(
            &headers,
            "Events",
            &format!(
                "<h1>Events</h1>{}",
                pages::events_table(&list, "Newest first")
            ),
        ),
        Err(e) => store_failure(e),
    }
}

fn swarm_main(
    state: &AppState,
    name: &str,
    problem: Option<&str>,
    who: &crate::store::Operator,
) -> Result<String, StoreError> {
    let view = state.store.get_swarm(name)?;
    let services = state.store.list_services(name)?;
    Ok(pages::swarm(
        &view,
        &services,
        problem,
        who.may_change(name),
    ))
}

async fn swarm(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match swarm_main(&state, &name, None, &viewer.who) {
        Ok(main) => render(&headers, &format!("Swarm {name}"), &main),
        Err(e) => store_failure(e),
    }
}

/// The swarm page again with what went wrong (422), or the page it moved on to.
fn after_swarm_action(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    name: &str,
    result: Result<(), String>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/swarms/{}", pages::url(name))).into_response(),
        Err(problem) => refused(
            headers,
            &format!("Swarm {name}"),
            swarm_main(state, name, Some(&problem), &viewer.who),
        ),
    }
}

#[derive(Deserialize)]
struct StackForm {
    stack: String,
    #[serde(default)]
    compose: String,
}

/// A pasted Compose file deployed as a stack, as `fogswarm stack deploy`
/// does (same parsing, signature rule and store), except what needs files
/// beside it: a stack that defines secrets or configs is refused here.
async fn deploy_stack(
    State(state): State<Shared>,
    viewer: Viewer,
    _: SameOrigin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<StackForm>,
) -> Response {
    if let Some(refused) = viewer.refusal(&name) {
        return refused;
    }
    let stack = form.stack.trim();
    let result = async {
        let project =
            fogswarm_compose::load(&fogswarm_compose::Input::pasted(&form.compose), stack)?;
        if !project.files.is_empty() {
            return Err("this file defines secrets or configs; deploy it with `fogswarm stack deploy`, which reads them".to_string());
        }
        let mut request = fogswarm_protocol::service::StackDeploy {
            services: project.services,
            prune: false,
        };
        crate::http::signed_only(&state, &name, &mut request.services)
            .await
            .map_err(|e| e.describe())?;
        let (_, touched) = state
            .store
            .deploy_stack(&viewer.who.actor(), &name, stack, &request)
            .map_err(|e| e.to_string())?;
        state.notify(&touched);
        Ok(())
    }
    .await;
    after_swarm_action(&state, &viewer, &headers, &name, result)
}

async fn remove_stack(
    State(state): State<Shared>,
    viewer: Viewer,
    _: SameOrigin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<StackForm>,
) -> Response {
    if let Some(refused) = viewer.refusal(&name) {
        return refused;
    }
    let result = state
        .store
        .remove_stack(&viewer.who.actor(), &name, form.stack.trim())
        .map(|(_, touched)| state.notify(&touched))
        .map_err(|e| e.to_string());
    after_swarm_action(&state, &viewer, &headers, &name, result)
}

/// Waits for an agent to answer a log request (it posts all it has at
/// once when not following), up to `patience`; answers the lines and
/// whether it answered. The request is closed either way.
async fn collect_logs(
    state: &AppState,
    scope: crate::store::LogScope<'_>,
    id: &str,
    patience: Duration,
) -> Result<(Vec<String>, bool), StoreError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut lines = Vec::new();
    let mut after = 0;
    let answered = loop {
        let page = state.store.read_logs(scope, id, after)?;
        lines.extend(page.lines);
        after = page.next;
        if page.done || page.error.is_some() {
            if let Some(e) = page.error {
                lines.push(format!("(error: {e})"));
            }
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break page.started;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = state.store.close_logs(scope, id);
    Ok((lines, answered))
}

/// The agent's last 200 lines, asked of the device (it sees the request at
/// its next report, so this waits up to three report intervals).
async fn agent_log(
    State(state): State<Shared>,
    _: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let view = state.store.get_device(&id)?;
        let options = fogswarm_protocol::logs::LogOptions {
            tail: Some(200),
            ..Default::default()
        };
        let opened = state.store.open_agent_logs(view.id.as_str(), &options)?;
        let every = view.heartbeat_secs.unwrap_or(30).min(20);
        collect_logs(
            &state,
            crate::store::LogScope::Device(view.id.as_str()),
            &opened.id,
            Duration::from_secs(3 * every + 5),
        )
        .await
    }
    .await;
    log_page(
        &headers,
        &format!("Agent log of {id}"),
        &format!("/devices/{}", pages::url(&id)),
        result,
        "The device did not answer in time; is its agent running?",
    )
}

/// A service's last 50 lines per task, through its swarm's raft leader.
async fn service_log(
    State(state): State<Shared>,
    _: Viewer,
    headers: HeaderMap,
    Path((swarm, service)): Path<(String, String)>,
) -> Response {
    let result = async {
        let options = fogswarm_protocol::logs::LogOptions {
            tail: Some(50),
            ..Default::default()
        };
        let (opened, touched) = state.store.open_logs(&swarm, &service, &options)?;
        state.notify(&touched);
        collect_logs(
            &state,
            crate::store::LogScope::Swarm(&swarm),
            &opened.id,
            Duration::from_secs(20),
        )
        .await
    }
    .await;
    log_page(
        &headers,
        &format!("Recent log lines of {service}"),
        &format!("/swarms/{}", pages::url(&swarm)),
        result,
        "No manager of the swarm answered in time.",
    )
}

/// The lines [`collect_logs`] gathered as a page, saying so when nobody
/// answered.
fn log_page(
    headers: &HeaderMap,
    title: &str,
    back: &str,
    result: Result<(Vec<String>, bool), StoreError>,
    unanswered: &str,
) -> Response {
    match result {
        Ok((lines, answered)) => render(
            headers,
            title,
            &pages::log_lines(title, back, &lines, (!answered).then_some(unanswered)),
        ),
        Err(e) => store_failure(e),
    }
}

/// One Server-Sent Event per change in the event log (what changed, never
/// a secret: events never hold one).
async fn live(State(state): State<Shared>, _: Viewer) -> impl IntoResponse {
    let receiver = state.live.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    let sse = SseEvent::default()
                        .event("change")
                        .json_data(&event)
                        .unwrap_or_else(|_| SseEvent::default().event("change"));
                    return Some((Ok::<_, Infallible>(sse), receiver));
                }
                // Fell behind: the page refreshes on the next event anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.js"),
    )
}
