//! Secrets, configs and registry logins (operators), and their values for
//! the manager agents that need them (devices).

use super::*;
use base64::Engine as _;
use fogswarm_protocol::secret::*;
use serde::Serialize;

fn decode(data: &Secret) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(data.expose())
        .map_err(|_| ApiFailure::invalid("data", "the value is not base64"))
}

async fn list(state: Shared, swarm: String, kind: FileKind) -> ApiResult<Json<Vec<FileView>>> {
    Ok(Json(state.store.list_files(&swarm, kind)?))
}

async fn write(
    state: Shared,
    actor: Actor,
    swarm: String,
    kind: FileKind,
    name: &str,
    req: FileWrite,
    create_only: bool,
) -> ApiResult<(StatusCode, Json<FileWritten>)> {
    if req.name != name {
        return Err(ApiFailure::invalid(
            "name",
            format!("the body names {:?} but the path names {name:?}", req.name),
        ));
    }
    let data = decode(&req.data)?;
    let (written, touched) = state.store.write_file(
        &actor,
        &swarm,
        kind,
        name,
        &data,
        create_only,
        &state.sealer,
    )?;
    state.notify(&touched);
    let status = if written.outcome == DeployOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(written)))
}

/// A config with its value (base64); a secret's value is never shown.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct FileShown {
    #[serde(flatten)]
    file: FileView,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

async fn show(
    state: Shared,
    swarm: String,
    kind: FileKind,
    name: String,
) -> ApiResult<Json<FileShown>> {
    let (file, data) = state.store.get_file(&swarm, kind, &name)?;
    Ok(Json(FileShown {
        file,
        data: data.map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
    }))
}

async fn remove(
    state: Shared,
    actor: Actor,
    swarm: String,
    kind: FileKind,
    name: String,
) -> ApiResult<StatusCode> {
    state.store.remove_file(&actor, &swarm, kind, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The same five endpoints for secrets and for configs: list, create
/// (409 when the name exists), put (a new value is a new version, to which
/// the services using it roll), show (a config with its value, a secret
/// never), remove (409 while a service uses it).
macro_rules! file_endpoints {
    ($module:ident, $kind:expr, $list:tt, $one:tt, $list_op:tt, $create_op:tt, $put_op:tt, $show_op:tt, $remove_op:tt) => {
        pub(super) mod $module {
            use super::*;

            #[utoipa::path(get, path = $list, operation_id = $list_op, tag = "operator", security(("admin" = [])),
                responses((status = 200, body = Vec<FileView>), (status = 404, body = ApiError)))]
            pub(in crate::http) async fn list(
                State(s): State<Shared>,
                _: Caller,
                Path(swarm): Path<String>,
            ) -> ApiResult<Json<Vec<FileView>>> {
                super::list(s, swarm, $kind).await
            }

            #[utoipa::path(post, path = $list, operation_id = $create_op, tag = "operator", security(("admin" = [])), request_body = FileWrite,
                responses((status = 201, body = FileWritten), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
            pub(in crate::http) async fn create(
                State(s): State<Shared>,
                caller: Caller,
                Path(swarm): Path<String>,
                ApiJson(req): ApiJson<FileWrite>,
            ) -> ApiResult<(StatusCode, Json<FileWritten>)> {
                let name = req.name.clone();
                write(s, caller.actor(), swarm, $kind, &name, req, true).await
            }

            #[utoipa::path(put, path = $one, operation_id = $put_op, tag = "operator", security(("admin" = [])), request_body = FileWrite,
                responses((status = 200, body = FileWritten), (status = 201, body = FileWritten), (status = 422, body = ApiError)))]
            pub(in crate::http) async fn put(
                State(s): State<Shared>,
                caller: Caller,
                Path((swarm, name)): Path<(String, String)>,
                ApiJson(req): ApiJson<FileWrite>,
            ) -> ApiResult<(StatusCode, Json<FileWritten>)> {
                write(s, caller.actor(), swarm, $kind, &name, req, false).await
            }

            #[utoipa::path(get, path = $one, operation_id = $show_op, tag = "operator", security(("admin" = [])),
                responses((status = 200, body = FileShown), (status = 404, body = ApiError)))]
            pub(in crate::http) async fn show(
                State(s): State<Shared>,
                _: Caller,
                Path((swarm, name)): Path<(String, String)>,
            ) -> ApiResult<Json<FileShown>> {
                super::show(s, swarm, $kind, name).await
            }

            #[utoipa::path(delete, path = $one, operation_id = $remove_op, tag = "operator", security(("admin" = [])),
                responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
            pub(in crate::http) async fn remove(
                State(s): State<Shared>,
                caller: Caller,
                Path((swarm, name)): Path<(String, String)>,
            ) -> ApiResult<StatusCode> {
                super::remove(s, caller.actor(), swarm, $kind, name).await
            }
        }
    };
}

file_endpoints!(
    secrets,
    FileKind::Secret,
    "/v1/swarms/{name}/secrets",
    "/v1/swarms/{name}/secrets/{secret}",
    "list_secrets",
    "create_secret",
    "put_secret",
    "show_secret",
    "remove_secret"
);
file_endpoints!(
    configs,
    FileKind::Config,
    "/v1/swarms/{name}/configs",
    "/v1/swarms/{name}/configs/{config}",
    "list_configs",
    "create_config",
    "put_config",
    "show_config",
    "remove_config"
);

/// The registry logins a swarm's pulls use (never the passwords).
#[utoipa::path(get, path = "/v1/swarms/{name}/registries", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = Vec<RegistryView>), (status = 404, body = ApiError)))]
pub(super) async fn list_registries(
    State(s): State<Shared>,
    _: Caller,
    Path(swarm): Path<String>,
) -> ApiResult<Json<Vec<RegistryView>>> {
    Ok(Json(s.store.list_registries(&swarm)?))
}

/// Store a registry login for the swarm's pulls (`docker login` for every
/// device, through the leader agent).
#[utoipa::path(put, path = "/v1/swarms/{name}/registries/{host}", tag = "operator", security(("admin" = [])), request_body = RegistryLogin,
    responses((status = 200, body = RegistryView), (status = 422, body = ApiError)))]
pub(super) async fn put_registry(
    State(s): State<Shared>,
    caller: Caller,
    Path((swarm, host)): Path<(String, String)>,
    ApiJson(req): ApiJson<RegistryLogin>,
) -> ApiResult<Json<RegistryView>> {
    let (view, touched) = s
        .store
        .put_registry(&caller.actor(), &swarm, &host, &req, &s.sealer)?;
    s.notify(&touched);
    Ok(Json(view))
}

/// Forget a registry login.
#[utoipa::path(delete, path = "/v1/swarms/{name}/registries/{host}", tag = "operator", security(("admin" = [])),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn remove_registry(
    State(s): State<Shared>,
    caller: Caller,
    Path((swarm, host)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.store.remove_registry(&caller.actor(), &swarm, &host)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A manager agent fetches the values it must hand to its engine.
#[utoipa::path(post, path = "/v1/values", tag = "device", security(("device" = [])), request_body = ValuesRequest,
    responses((status = 200, body = ValuesAnswer), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn values(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(req): DeviceJson<ValuesRequest>,
) -> ApiResult<Json<ValuesAnswer>> {
    Ok(Json(state.store.values_for(
        &device,
        &req,
        &state.sealer,
    )?))
}
