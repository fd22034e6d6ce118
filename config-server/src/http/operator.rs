//! The operator API, behind the admin token: swarms, devices (one, in
//! bulk, labels, approval, decommission), services and stacks, the
//! provisioning key, fleet status and the event log.

use super::*;

/// All swarms.
#[utoipa::path(get, path = "/v1/swarms", tag = "operator", security(("admin" = [])), responses((status = 200, body = Vec<SwarmView>)))]
pub(super) async fn list_swarms(
    State(state): State<Shared>,
    _: Caller,
) -> ApiResult<Json<Vec<SwarmView>>> {
    Ok(Json(state.store.list_swarms()?))
}

/// Create a swarm.
#[utoipa::path(post, path = "/v1/swarms", tag = "operator", security(("admin" = [])), request_body = SwarmCreate,
    responses((status = 201, body = SwarmView), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn create_swarm(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<SwarmCreate>,
) -> ApiResult<(StatusCode, Json<SwarmView>)> {
    let view = state
        .store
        .create_swarm(&caller.actor(), &req.name, req.auto_enrol)?;
    state.notify(&vec![view.name.clone()]);
    Ok((StatusCode::CREATED, Json(view)))
}

/// One swarm.
#[utoipa::path(get, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = SwarmView), (status = 404, body = ApiError)))]
pub(super) async fn show_swarm(
    State(state): State<Shared>,
    _: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SwarmView>> {
    Ok(Json(state.store.get_swarm(&name)?))
}

/// Change a swarm's settings.
#[utoipa::path(patch, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])), request_body = SwarmUpdate,
    responses((status = 200, body = SwarmView), (status = 404, body = ApiError)))]
pub(super) async fn update_swarm(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SwarmUpdate>,
) -> ApiResult<Json<SwarmView>> {
    let keys = req
        .require_signed
        .as_ref()
        .map(|pems| crate::signed::checked_keys(pems))
        .transpose()?;
    let view = state
        .store
        .update_swarm(&caller.actor(), &name, &req, keys.as_deref())?;
    if req.managers.is_some()
        || req.manager_grace_secs.is_some()
        || req.spread_label.is_some()
        || req.auto_recover_secs.is_some()
    {
        state.notify(&vec![name.clone()]);
    }
    if req.allow_devices.is_some() || req.allow_privileged.is_some() {
        // The key exists before any grant, so devices hold it by the time
        // a hardware service's first task starts.
        state.store.grant_key(&name, &state.sealer)?;
        // Grants are signed for what is allowed now: managers re-read.
        state.notify(&vec![name.clone()]);
    }
    Ok(Json(view))
}

/// Has the swarm's raft leader rotate both join tokens (an old token can no
/// longer join); also done on every decommission.
#[utoipa::path(post, path = "/v1/swarms/{name}/rotate-tokens", tag = "operator", security(("admin" = [])),
    responses((status = 202), (status = 404, body = ApiError)))]
pub(super) async fn rotate_tokens(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let touched = state.store.rotate_tokens(&caller.actor(), &name)?;
    state.notify(&touched);
    Ok(StatusCode::ACCEPTED)
}

/// Recovers a swarm that lost its raft quorum: the online manager with
/// the freshest raft log forces a new cluster, keeping services; then
/// workers are promoted back to the manager target. One device at a time.
#[utoipa::path(post, path = "/v1/swarms/{name}/recover", tag = "operator", security(("admin" = [])),
    responses((status = 202, body = Recovery), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn recover_swarm(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Recovery>)> {
    let (recovery, touched) = state.store.recover(&caller.actor(), &name)?;
    state.notify(&touched);
    Ok((StatusCode::ACCEPTED, Json(recovery)))
}

/// Rolls a new agent out to the swarm's devices in waves.
#[utoipa::path(post, path = "/v1/swarms/{name}/agent-rollout", tag = "operator", security(("admin" = [])), request_body = AgentRolloutCreate,
    responses((status = 201, body = AgentRolloutView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn start_rollout(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AgentRolloutCreate>,
) -> ApiResult<(StatusCode, Json<AgentRolloutView>)> {
    let view = state.store.start_rollout(&caller.actor(), &name, &req)?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The swarm's latest agent rollout, wave by wave.
#[utoipa::path(get, path = "/v1/swarms/{name}/agent-rollout", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = AgentRolloutView), (status = 404, body = ApiError)))]
pub(super) async fn show_rollout(
    State(state): State<Shared>,
    _: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentRolloutView>> {
    Ok(Json(state.store.rollout(&name)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ForceQuery {
    /// Remove even when it would also remove devices (swarm) or skip the
    /// leave step (device).
    #[serde(default)]
    force: bool,
}

/// Remove a swarm (refused while it has devices, unless forced).
#[utoipa::path(delete, path = "/v1/swarms/{name}", tag = "operator", security(("admin" = [])), params(ForceQuery),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn remove_swarm(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<StatusCode> {
    state.store.remove_swarm(&caller.actor(), &name, q.force)?;
    state
        .revisions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ---- services ----

/// A swarm that requires signatures gets its specs' images pinned to
/// signed digests first (see `crate::signed`); specs are checked before
/// any registry is asked.
pub(crate) async fn signed_only(
    state: &AppState,
    swarm: &str,
    specs: &mut [ServiceSpec],
) -> ApiResult<()> {
    for spec in specs.iter() {
        spec.validate().map_err(StoreError::from)?;
    }
    crate::signed::pin_signed(state, swarm, specs).await
}

/// A swarm's services, each with its status and latest observation.
#[utoipa::path(get, path = "/v1/swarms/{name}/services", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = Vec<ServiceView>), (status = 404, body = ApiError)))]
pub(super) async fn list_services(
    State(state): State<Shared>,
    _: Caller,
    Path(swarm): Path<String>,
) -> ApiResult<Json<Vec<ServiceView>>> {
    Ok(Json(state.store.list_services(&swarm)?))
}

/// Create a service; refused (409) when the name is taken.
#[utoipa::path(post, path = "/v1/swarms/{name}/services", tag = "operator", security(("admin" = [])), request_body = ServiceSpec,
    responses((status = 201, body = ServiceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn create_service(
    State(state): State<Shared>,
    caller: Caller,
    Path(swarm): Path<String>,
    ApiJson(mut spec): ApiJson<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    signed_only(&state, &swarm, std::slice::from_mut(&mut spec)).await?;
    let (view, touched) = state.store.create_service(&caller.actor(), &swarm, &spec)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(view)))
}

/// One service.
#[utoipa::path(get, path = "/v1/swarms/{name}/services/{service}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ApiError)))]
pub(super) async fn show_service(
    State(state): State<Shared>,
    _: Caller,
    Path((swarm, name)): Path<(String, String)>,
) -> ApiResult<Json<ServiceView>> {
    Ok(Json(state.store.get_service(&swarm, &name)?))
}

/// Create or replace a service (the body is the whole spec); an identical
/// spec is a no-op.
#[utoipa::path(put, path = "/v1/swarms/{name}/services/{service}", tag = "operator", security(("admin" = [])), request_body = ServiceSpec,
    responses((status = 200, body = ServiceDeployed), (status = 201, body = ServiceDeployed), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn deploy_service(
    State(state): State<Shared>,
    caller: Caller,
    Path((swarm, name)): Path<(String, String)>,
    ApiJson(mut spec): ApiJson<ServiceSpec>,
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
    signed_only(&state, &swarm, std::slice::from_mut(&mut spec)).await?;
    let (service, outcome, touched) = state.store.deploy_service(&caller.actor(), &swarm, &spec)?;
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
pub(super) async fn remove_service(
    State(state): State<Shared>,
    caller: Caller,
    Path((swarm, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let touched = state.store.remove_service(&caller.actor(), &swarm, &name)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

/// Deploy a stack: its services are checked together and written in one
/// transaction.
#[utoipa::path(put, path = "/v1/swarms/{name}/stacks/{stack}", tag = "operator", security(("admin" = [])), request_body = StackDeploy,
    responses((status = 200, body = Vec<StackServiceOutcome>), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn deploy_stack(
    State(state): State<Shared>,
    caller: Caller,
    Path((swarm, stack)): Path<(String, String)>,
    ApiJson(mut request): ApiJson<StackDeploy>,
) -> ApiResult<Json<Vec<StackServiceOutcome>>> {
    signed_only(&state, &swarm, &mut request.services).await?;
    let (outcome, touched) = state
        .store
        .deploy_stack(&caller.actor(), &swarm, &stack, &request)?;
    state.notify(&touched);
    Ok(Json(outcome))
}

/// Remove every service of a stack.
#[utoipa::path(delete, path = "/v1/swarms/{name}/stacks/{stack}", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = Vec<StackServiceOutcome>), (status = 404, body = ApiError)))]
pub(super) async fn remove_stack(
    State(state): State<Shared>,
    caller: Caller,
    Path((swarm, stack)): Path<(String, String)>,
) -> ApiResult<Json<Vec<StackServiceOutcome>>> {
    let (names, touched) = state.store.remove_stack(&caller.actor(), &swarm, &stack)?;
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

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct DeviceListQuery {
    swarm: Option<String>,
}

/// All devices, or one swarm's, by swarm and id.
///
/// Streamed a page of [`DEVICES_PER_CHUNK`] at a time (read, written,
/// dropped): the whole of a 100,000-device fleet as one value was three
/// copies of it in memory at once (rows, views, JSON), a quarter of a GB.
/// Each chunk is its own read, so a device added or removed meanwhile may
/// be in the answer or not; none is listed twice (the chunks follow each
/// other by key). A read that fails after the first chunk ends the body
/// early: the client sees a cut answer, never a well-formed partial one.
#[utoipa::path(get, path = "/v1/devices", tag = "operator", security(("admin" = [])), params(DeviceListQuery),
    responses((status = 200, body = Vec<DeviceView>)))]
pub(super) async fn list_devices(
    State(state): State<Shared>,
    _: Caller,
    ApiQuery(q): ApiQuery<DeviceListQuery>,
) -> ApiResult<Response> {
    let swarm = q.swarm;
    // The first chunk before the answer starts: a bad swarm name or a
    // database that is down is still a proper error status.
    let first = state
        .store
        .devices_after(swarm.as_deref(), None, DEVICES_PER_CHUNK)?;
    let chunks = futures_util::stream::unfold(Some((first, true)), move |next| {
        let state = state.clone();
        let swarm = swarm.clone();
        async move {
            let (devices, first) = next?;
            let mut out = Vec::with_capacity(devices.len() * 1024 + 2);
            if first {
                out.push(b'[');
            }
            for (i, device) in devices.iter().enumerate() {
                if !(first && i == 0) {
                    out.push(b',');
                }
                if let Err(e) = serde_json::to_writer(&mut out, device) {
                    return Some((Err(std::io::Error::other(e)), None));
                }
            }
            let after = match devices.last() {
                Some(last) if devices.len() == DEVICES_PER_CHUNK => {
                    (last.swarm.clone(), last.id.to_string())
                }
                _ => {
                    out.push(b']');
                    return Some((Ok(axum::body::Bytes::from(out)), None));
                }
            };
            let rest = state
                .store
                .devices_after(swarm.as_deref(), Some(&after), DEVICES_PER_CHUNK)
                .map(|devices| (devices, false));
            match rest {
                Ok(rest) => Some((Ok(axum::body::Bytes::from(out)), Some(rest))),
                Err(e) => {
                    tracing::warn!(error = %e, "listing devices: a later chunk failed");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

/// Devices read and written at a time by a device listing.
const DEVICES_PER_CHUNK: usize = 1000;

/// Declare a device.
#[utoipa::path(post, path = "/v1/devices", tag = "operator", security(("admin" = [])), request_body = DeviceCreate,
    responses((status = 201, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn create_device(
    State(state): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<DeviceCreate>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    caller.may_change(&req.swarm)?;
    let (view, touched) = state.store.create_device(&caller.actor(), &req)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Declare many devices from JSON (an array of devices) or CSV (columns
/// id, swarm, role, labels with labels as `k=v;k=v`): all rows or none.
#[utoipa::path(post, path = "/v1/devices/import", tag = "operator", security(("admin" = [])),
    request_body(content = Vec<DeviceCreate>, content_type = "application/json"),
    responses((status = 201, body = ImportResult), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn import_devices(
    State(state): State<Shared>,
    caller: Caller,
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
    for row in &rows {
        caller.may_change(&row.swarm)?;
    }
    let (created, touched) = state.store.import_devices(&caller.actor(), &rows)?;
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
pub(super) async fn show_device(
    State(state): State<Shared>,
    _: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(state.store.get_device(&id)?))
}

/// A device's latest telemetry and its last day at one-minute resolution.
#[utoipa::path(get, path = "/v1/devices/{id}/telemetry", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = TelemetryView), (status = 404, body = ApiError)))]
pub(super) async fn device_telemetry(
    State(state): State<Shared>,
    _: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TelemetryView>> {
    Ok(Json(state.store.telemetry(&id)?))
}

/// Change a device's swarm, role or (all of its) labels.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "operator", security(("admin" = [])), request_body = DeviceUpdate,
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn update_device(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DeviceUpdate>,
) -> ApiResult<Json<DeviceView>> {
    if let Some(to) = &req.swarm {
        caller.may_change(to)?;
    }
    let (view, touched) = state.store.update_device(&caller.actor(), &id, &req)?;
    state.notify(&touched);
    Ok(Json(view))
}

/// Set and unset some of a device's labels.
#[utoipa::path(post, path = "/v1/devices/{id}/labels", tag = "operator", security(("admin" = [])), request_body = LabelChange,
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn change_labels(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LabelChange>,
) -> ApiResult<Json<DeviceView>> {
    let (view, touched) = state.store.change_labels(&caller.actor(), &id, &req)?;
    state.notify(&touched);
    Ok(Json(view))
}

/// Approve a device held pending by auto-enrolment.
#[utoipa::path(post, path = "/v1/devices/{id}/approve", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = DeviceView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn approve_device(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let view = state.store.approve_device(&caller.actor(), &id)?;
    state.notify(&vec![view.swarm.clone()]);
    Ok(Json(view))
}

/// Decommission a device: it is told to leave, then removed; `force`
/// removes it at once.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "operator", security(("admin" = [])), params(ForceQuery),
    responses((status = 202, body = DeviceView), (status = 204), (status = 404, body = ApiError)))]
pub(super) async fn remove_device(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<Response> {
    let (view, touched) = state.store.remove_device(&caller.actor(), &id, q.force)?;
    state.notify(&touched);
    Ok(match view {
        Some(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Replace the fleet's provisioning key; answers the new one (once).
#[utoipa::path(post, path = "/v1/provisioning-key/rotate", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = ProvisioningKeyRotated)))]
pub(super) async fn rotate_provisioning_key(
    State(state): State<Shared>,
    caller: Caller,
) -> ApiResult<Json<ProvisioningKeyRotated>> {
    let key = rotate_shared(
        &state,
        ServerCredentials::PROVISIONING_KEY_HASH,
        &state.provisioning_file,
        "fsp",
    )?;
    state
        .store
        .log(&caller.actor(), "provisioning_key.rotate", "fleet", "")?;
    Ok(Json(ProvisioningKeyRotated {
        provisioning_key: key,
        file: state.provisioning_file.display().to_string(),
    }))
}

/// Replaces the admin token: the old one stops working on every replica.
/// The new one is answered once and written to this replica's
/// DATA/admin.token. Admins only.
#[utoipa::path(post, path = "/v1/admin-token/rotate", tag = "operator", security(("admin" = [])), responses((status = 200, body = AdminTokenRotated)))]
pub(super) async fn rotate_admin_token(
    State(state): State<Shared>,
    caller: Caller,
) -> ApiResult<Json<AdminTokenRotated>> {
    let token = rotate_shared(
        &state,
        ServerCredentials::ADMIN_TOKEN_HASH,
        &state.admin_file,
        "fsa",
    )?;
    state
        .store
        .log(&caller.actor(), "admin_token.rotate", "fleet", "")?;
    Ok(Json(AdminTokenRotated {
        admin_token: token,
        file: state.admin_file.display().to_string(),
    }))
}

fn rotate_shared(
    state: &Shared,
    name: &str,
    file: &std::path::Path,
    prefix: &str,
) -> ApiResult<Secret> {
    crate::rotate_shared_secret(&state.store, name, file, prefix).map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "rotating {name}");
        ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("could not rotate: {e:#}"),
            None,
        )
    })
}

/// The fleet at a glance: devices per swarm and state, and problems.
#[utoipa::path(get, path = "/v1/status", tag = "operator", security(("admin" = [])), responses((status = 200, body = FleetStatus)))]
pub(super) async fn status(State(state): State<Shared>, _: Caller) -> ApiResult<Json<FleetStatus>> {
    Ok(Json(state.store.status()?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct EventQuery {
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
pub(super) async fn events(
    State(state): State<Shared>,
    _: Caller,
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

/// Go back to the spec the service had before its last change, as
/// `docker service rollback` does: a new revision with the previous spec.
#[utoipa::path(post, path = "/v1/swarms/{name}/services/{service}/rollback", tag = "operator", security(("admin" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn rollback_service(
    State(state): State<Shared>,
    caller: Caller,
    Path((swarm, name)): Path<(String, String)>,
) -> ApiResult<Json<ServiceView>> {
    let (view, touched) = state
        .store
        .rollback_service(&caller.actor(), &swarm, &name)?;
    state.notify(&touched);
    Ok(Json(view))
}

// ---- service logs ----

/// Open a request for a service's logs; the raft leader's agent answers
/// it (see `GET .../logs/{id}`).
#[utoipa::path(post, path = "/v1/swarms/{name}/services/{service}/logs", tag = "operator", security(("admin" = [])),
    request_body = fogswarm_protocol::logs::LogOptions,
    responses((status = 201, body = fogswarm_protocol::logs::LogsOpened), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn open_logs(
    State(state): State<Shared>,
    _: Caller,
    Path((swarm, service)): Path<(String, String)>,
    ApiJson(options): ApiJson<fogswarm_protocol::logs::LogOptions>,
) -> ApiResult<(StatusCode, Json<fogswarm_protocol::logs::LogsOpened>)> {
    let (opened, touched) = state.store.open_logs(&swarm, &service, &options)?;
    state.notify(&touched);
    Ok((StatusCode::CREATED, Json(opened)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct AfterQuery {
    /// The `next` of the previous page (0 at first).
    #[serde(default)]
    after: u64,
}

/// The lines of a log request after `after`; reading keeps it open.
#[utoipa::path(get, path = "/v1/swarms/{name}/logs/{id}", tag = "operator", security(("admin" = [])), params(AfterQuery),
    responses((status = 200, body = fogswarm_protocol::logs::LogsPage), (status = 410, body = ApiError)))]
pub(super) async fn read_logs(
    State(state): State<Shared>,
    _: Caller,
    Path((swarm, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> ApiResult<Json<fogswarm_protocol::logs::LogsPage>> {
    Ok(Json(state.store.read_logs(
        LogScope::Swarm(&swarm),
        &id,
        q.after,
    )?))
}

/// Close a log request (the agent stops following).
#[utoipa::path(delete, path = "/v1/swarms/{name}/logs/{id}", tag = "operator", security(("admin" = [])),
    responses((status = 204)))]
pub(super) async fn close_logs(
    State(state): State<Shared>,
    _: Caller,
    Path((swarm, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.store.close_logs(LogScope::Swarm(&swarm), &id)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- agent logs ----

/// Open a request for a device's own agent log lines (`fogswarm device
/// logs`); the device answers at its next pass, with no inbound connection.
#[utoipa::path(post, path = "/v1/devices/{id}/logs", tag = "operator", security(("admin" = [])),
    request_body = fogswarm_protocol::logs::LogOptions,
    responses((status = 201, body = fogswarm_protocol::logs::LogsOpened), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn open_agent_logs(
    State(state): State<Shared>,
    _: Caller,
    Path(device): Path<String>,
    ApiJson(options): ApiJson<fogswarm_protocol::logs::LogOptions>,
) -> ApiResult<(StatusCode, Json<fogswarm_protocol::logs::LogsOpened>)> {
    let opened = state.store.open_agent_logs(&device, &options)?;
    Ok((StatusCode::CREATED, Json(opened)))
}

/// The agent's lines after `after`; reading keeps the request open.
#[utoipa::path(get, path = "/v1/devices/{id}/logs/{request}", tag = "operator", security(("admin" = [])), params(AfterQuery),
    responses((status = 200, body = fogswarm_protocol::logs::LogsPage), (status = 410, body = ApiError)))]
pub(super) async fn read_agent_logs(
    State(state): State<Shared>,
    _: Caller,
    Path((device, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> ApiResult<Json<fogswarm_protocol::logs::LogsPage>> {
    Ok(Json(state.store.read_logs(
        LogScope::Device(&device),
        &id,
        q.after,
    )?))
}

/// Close an agent log request (the agent stops following).
#[utoipa::path(delete, path = "/v1/devices/{id}/logs/{request}", tag = "operator", security(("admin" = [])),
    responses((status = 204)))]
pub(super) async fn close_agent_logs(
    State(state): State<Shared>,
    _: Caller,
    Path((device, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.store.close_logs(LogScope::Device(&device), &id)?;
    Ok(StatusCode::NO_CONTENT)
}
