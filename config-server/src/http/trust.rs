//! Trust on the operator side: named users and their API tokens, and
//! enrolment tokens (scoped to a swarm,
//! counted, expiring, revocable; stored as hashes and shown once).

use super::*;

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct TokenQuery {
    /// Only this swarm's tokens.
    swarm: Option<String>,
}

/// Make an enrolment token; the answer holds it, the only time it is shown.
#[utoipa::path(post, path = "/v1/enrol-tokens", tag = "operator", security(("admin" = [])), request_body = EnrolTokenCreate,
    responses((status = 200, body = EnrolTokenCreated), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn create_enrol_token(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<EnrolTokenCreate>,
) -> ApiResult<Json<EnrolTokenCreated>> {
    caller.may_change(&req.swarm)?;
    Ok(Json(state.store.create_enrol_token(&caller.actor(), &req)?))
}

/// Enrolment tokens: never the tokens themselves.
#[utoipa::path(get, path = "/v1/enrol-tokens", tag = "operator", security(("admin" = [])), params(TokenQuery),
    responses((status = 200, body = [EnrolTokenView])))]
pub(super) async fn list_enrol_tokens(
    State(state): State<Shared>,
    _: Caller,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> ApiResult<Json<Vec<EnrolTokenView>>> {
    Ok(Json(state.store.list_enrol_tokens(q.swarm.as_deref())?))
}

/// Revoke an enrolment token at once.
#[utoipa::path(delete, path = "/v1/enrol-tokens/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = EnrolTokenView), (status = 404, body = ApiError)))]
pub(super) async fn remove_enrol_token(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<EnrolTokenView>> {
    Ok(Json(state.store.remove_enrol_token(&caller.actor(), &id)?))
}

// ---- users and their tokens ----

/// Add a named user (admins only).
#[utoipa::path(post, path = "/v1/users", tag = "operator", security(("admin" = [])), request_body = UserCreate,
    responses((status = 201, body = UserView), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn create_user(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<UserCreate>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let view = state.store.create_user(&caller.actor(), &req)?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/users", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = [UserView])))]
pub(super) async fn list_users(
    State(state): State<Shared>,
    _: Caller,
) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(state.store.list_users()?))
}

/// Change a user's role, swarms or password (admins only).
#[utoipa::path(patch, path = "/v1/users/{name}", tag = "operator", security(("admin" = [])), request_body = UserUpdate,
    responses((status = 200, body = UserView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn update_user(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UserUpdate>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(state.store.update_user(
        &caller.actor(),
        &name,
        &req,
    )?))
}

/// Remove a user: their tokens and sessions stop working at once.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ApiError)))]
pub(super) async fn remove_user(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(state.store.remove_user(&caller.actor(), &name)?))
}

/// Who the caller is.
#[utoipa::path(get, path = "/v1/whoami", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = WhoAmI)))]
pub(super) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.0.name.clone(),
        role: caller.0.role,
        swarms: caller.0.swarms.clone(),
    })
}

/// Make an API token for the caller (or, for admins, any user); the
/// answer holds it, the only time it is shown. The built-in admin has its
/// admin token and no others.
#[utoipa::path(post, path = "/v1/tokens", tag = "operator", security(("admin" = [])), request_body = UserTokenCreate,
    responses((status = 200, body = UserTokenCreated), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn create_token(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<UserTokenCreate>,
) -> ApiResult<Json<UserTokenCreated>> {
    let user = owner(&caller, req.user.as_deref())?;
    Ok(Json(state.store.create_user_token(
        &caller.actor(),
        &user,
        req.expires_in_secs,
    )?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct TokensQuery {
    /// Only this user's (admins; others see their own).
    user: Option<String>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "operator", security(("admin" = [])), params(TokensQuery),
    responses((status = 200, body = [UserTokenView])))]
pub(super) async fn list_tokens(
    State(state): State<Shared>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> ApiResult<Json<Vec<UserTokenView>>> {
    let user = if caller.is_admin() {
        q.user
    } else {
        Some(owner(&caller, q.user.as_deref())?)
    };
    Ok(Json(state.store.list_user_tokens(user.as_deref())?))
}

/// Revoke a token at once (one's own; admins any).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = UserTokenView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn remove_token(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UserTokenView>> {
    let token = state.store.user_token(&id)?;
    owner(&caller, Some(&token.user))?;
    Ok(Json(state.store.remove_user_token(&caller.actor(), &id)?))
}

/// Whose tokens a call is about: the caller's own, or anyone's for an admin.
fn owner(caller: &Caller, user: Option<&str>) -> ApiResult<String> {
    let me = &caller.0;
    match user {
        Some(u) if u == me.name && !me.builtin => Ok(u.to_string()),
        Some(u) if caller.is_admin() => Ok(u.to_string()),
        None if !me.builtin => Ok(me.name.clone()),
        None => Err(ApiFailure::invalid(
            "user",
            "the built-in admin has the admin token; name the user the token is for",
        )),
        Some(u) => Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} {} may not manage {u}'s tokens", me.role, me.name),
            None,
        )),
    }
}

// ---- users' client certificates ----

/// Issue a client certificate from the fleet's CA for the caller (or, for
/// admins, any user): the certificate, its key (shown once) and the CA.
#[utoipa::path(post, path = "/v1/certificates", tag = "operator", security(("admin" = [])), request_body = UserCertificateCreate,
    responses((status = 200, body = UserCertificateIssued), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn create_certificate(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<UserCertificateCreate>,
) -> ApiResult<Json<UserCertificateIssued>> {
    let user = owner(&caller, req.user.as_deref())?;
    let days = req.days.unwrap_or(365);
    if !(1..=3650).contains(&days) {
        return Err(ApiFailure::invalid(
            "days",
            "a certificate is valid 1 to 3650 days",
        ));
    }
    state.store.operator(&user)?;
    let stored = state
        .store
        .credential(ServerCredentials::CA)?
        .ok_or_else(|| ApiFailure::invalid("user", "this fleet has no CA yet"))?;
    let (certificate, key, fingerprint) =
        crate::tls::issue_client_certificate(&stored, &user, days).map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "issuing a client certificate");
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not issue the certificate; see the server log",
                None,
            )
        })?;
    let view = state
        .store
        .record_user_certificate(&caller.actor(), &user, &fingerprint, days)?;
    let ca = serde_json::from_str::<crate::tls::StoredCa>(&stored)
        .map(|ca| ca.cert)
        .unwrap_or_default();
    Ok(Json(UserCertificateIssued {
        view,
        certificate,
        key: Secret::new(key),
        ca,
    }))
}

#[utoipa::path(get, path = "/v1/certificates", tag = "operator", security(("admin" = [])), params(TokensQuery),
    responses((status = 200, body = [UserCertificateView])))]
pub(super) async fn list_certificates(
    State(state): State<Shared>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> ApiResult<Json<Vec<UserCertificateView>>> {
    let user = if caller.is_admin() {
        q.user
    } else {
        Some(owner(&caller, q.user.as_deref())?)
    };
    Ok(Json(state.store.list_user_certificates(user.as_deref())?))
}

/// Revoke a client certificate at once (one's own; admins any).
#[utoipa::path(delete, path = "/v1/certificates/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = UserCertificateView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn remove_certificate(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UserCertificateView>> {
    let cert = state.store.user_certificate(&id)?;
    owner(&caller, Some(&cert.user))?;
    Ok(Json(
        state.store.remove_user_certificate(&caller.actor(), &id)?,
    ))
}
