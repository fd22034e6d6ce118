//! Trust on the operator side: enrolment tokens (scoped to a swarm,
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
    _: Admin,
    ApiJson(req): ApiJson<EnrolTokenCreate>,
) -> ApiResult<Json<EnrolTokenCreated>> {
    Ok(Json(state.store.create_enrol_token(&Actor::Admin, &req)?))
}

/// Enrolment tokens: never the tokens themselves.
#[utoipa::path(get, path = "/v1/enrol-tokens", tag = "operator", security(("admin" = [])), params(TokenQuery),
    responses((status = 200, body = [EnrolTokenView])))]
pub(super) async fn list_enrol_tokens(
    State(state): State<Shared>,
    _: Admin,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> ApiResult<Json<Vec<EnrolTokenView>>> {
    Ok(Json(state.store.list_enrol_tokens(q.swarm.as_deref())?))
}

/// Revoke an enrolment token at once.
#[utoipa::path(delete, path = "/v1/enrol-tokens/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = EnrolTokenView), (status = 404, body = ApiError)))]
pub(super) async fn remove_enrol_token(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<EnrolTokenView>> {
    Ok(Json(state.store.remove_enrol_token(&Actor::Admin, &id)?))
}
