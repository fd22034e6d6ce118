//! The device API: enrolment with the provisioning key, then, with the
//! device's credential, its config, reports, a manager's tokens, the
//! desired state (long-polled) and the raft leader's observations.

use super::*;

/// Enrol a device: it presents the key it made (the request is signed
/// with it) and what admits it, the fleet's provisioning key or an
/// enrolment token. An enrolled device enrolling with another key is held
/// for approval; the enrolled key keeps working.
#[utoipa::path(post, path = "/v1/enrol", tag = "device", request_body = EnrolRequest,
    responses((status = 200, body = EnrolResponse), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn enrol(
    State(state): State<Shared>,
    Peer(ip): Peer,
    signed: Option<axum::Extension<SignedEnrolment>>,
    DeviceJson(req): DeviceJson<EnrolRequest>,
) -> ApiResult<Json<EnrolResponse>> {
    match signed {
        Some(axum::Extension(s)) if s.device == req.device_id.as_str() => {}
        Some(_) => {
            return Err(ApiFailure::unauthorized(
                "the request is signed for another device id than it enrols",
            ))
        }
        None => {
            return Err(ApiFailure::unauthorized(
                "sign the enrolment with the key it enrols (Authorization: Fogswarm-Device ...)",
            ))
        }
    }
    let admission = match (&req.provisioning_key, &req.token) {
        (Some(key), None) => {
            // Read each time: another replica may have rotated it.
            let hash = state
                .store
                .credential(ServerCredentials::PROVISIONING_KEY_HASH)?
                .unwrap_or_default();
            if !secrets::matches(key.expose(), &hash) {
                state.metrics.enrolment("refused_key");
                return Err(state.refuse(
                    ip,
                    "provisioning-key",
                    "the provisioning key is not valid",
                ));
            }
            Admission::ProvisioningKey
        }
        (None, Some(token)) => Admission::Token(token),
        _ => {
            return Err(ApiFailure::invalid(
                "provisioning_key",
                "give exactly one of provisioning_key and token",
            ))
        }
    };
    let by_token = matches!(admission, Admission::Token(_));
    let (enrolment, touched) = state
        .store
        .enrol(EnrolInput {
            id: &req.device_id,
            public_key: &req.public_key,
            admission,
            requested_swarm: req.swarm.as_deref(),
            facts: &req.facts,
            endorsement_key: req.endorsement_key.as_deref(),
        })
        .map_err(|e| match e {
            StoreError::Forbidden(_) => {
                state.metrics.enrolment("refused_unknown");
                ApiFailure::from(e)
            }
            StoreError::Unauthorized(m) if by_token => {
                state.metrics.enrolment("refused_token");
                state.refuse(ip, "enrol-token", &m)
            }
            e => ApiFailure::from(e),
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
        pending: enrolment.pending,
    }))
}

/// A device replaces its key; the request is signed with the current one.
#[utoipa::path(post, path = "/v1/device/key", tag = "device", security(("device" = [])), request_body = KeyRotation,
    responses((status = 204), (status = 401, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn rotate_key(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(req): DeviceJson<KeyRotation>,
) -> ApiResult<StatusCode> {
    state.store.rotate_device_key(&device, &req.public_key)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ConfigQuery {
    /// Seconds to hold a `wait` answer (at most 60), answering at once when
    /// the swarm changes so the device may go on (its tokens arrived).
    wait: Option<u64>,
}

/// What the device does next: init, join, wait or leave. With `wait`, a
/// device that would be told to wait is held until its answer changes:
/// devices waiting for the leader's tokens join the moment they arrive,
/// each with one request in flight instead of a retry loop.
#[utoipa::path(get, path = "/v1/config", tag = "device", security(("device" = [])), params(ConfigQuery),
    responses((status = 200, body = ConfigAnswer), (status = 401, body = ApiError)))]
pub(super) async fn config(
    State(state): State<Shared>,
    AnyKeyDevice(caller): AnyKeyDevice,
    ApiQuery(q): ApiQuery<ConfigQuery>,
) -> ApiResult<Json<ConfigAnswer>> {
    let device = caller.device.clone();
    let answer = |state: &Shared| -> ApiResult<ConfigAnswer> {
        // A key waiting for approval is asked again at every wake-up, so
        // the moment it is approved its held request answers as the device.
        let reenrolling = caller.standing == Standing::Reenrolling
            && state
                .store
                .device_keys(&device)?
                .is_none_or(|keys| keys.enrolled.as_ref() != Some(&caller.key));
        if reenrolling {
            // Held until an operator approves this key, or another takes
            // its place (then this key stops verifying at all).
            return Ok(ConfigAnswer::Wait {
                reason: format!("another key is enrolled as device {device}; an operator must approve this one (fogswarm device approve {device})"),
                retry_after_secs: 30,
            });
        }
        let (answer, lease_granted) = state.store.config_for(&device)?;
        if lease_granted {
            state.metrics.lease_grant();
        }
        Ok(answer)
    };
    let hold = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let first = answer(&state)?;
    if hold.is_zero() || !matches!(first, ConfigAnswer::Wait { .. }) {
        return Ok(Json(first));
    }
    // Subscribe, then ask again, so a change between the two is not missed.
    let mut rx = state.watch(&state.store.device_swarm(&device)?);
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let now = answer(&state)?;
        if !matches!(now, ConfigAnswer::Wait { .. }) {
            return Ok(Json(now));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(Json(now)),
        }
    }
}

/// The device's state, node, engine, facts and error.
#[utoipa::path(post, path = "/v1/report", tag = "device", security(("device" = [])), request_body = ReportRequest,
    responses((status = 204), (status = 401, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn report(
    State(state): State<Shared>,
    AnyKeyDevice(caller): AnyKeyDevice,
    PeerProtocol(protocol): PeerProtocol,
    DeviceJson(req): DeviceJson<ReportRequest>,
) -> ApiResult<StatusCode> {
    if caller.standing == Standing::Reenrolling {
        // A key waiting for approval says nothing about the device.
        return Ok(StatusCode::NO_CONTENT);
    }
    let device = caller.device;
    let touched = state.store.report(&device, &req, protocol)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

/// A manager posts its swarm's cluster id, manager addresses and join tokens.
#[utoipa::path(post, path = "/v1/device/swarm", tag = "device", security(("device" = [])), request_body = SwarmTokens,
    responses((status = 204), (status = 403, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn post_tokens(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(req): DeviceJson<SwarmTokens>,
) -> ApiResult<StatusCode> {
    let touched = state.store.set_tokens(&device, &req)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

/// The raft leader's agent reports a manager unreachable for longer than
/// the grace period; the server demotes it and promotes a worker.
#[utoipa::path(post, path = "/v1/device/manager-lost", tag = "device", security(("device" = [])), request_body = ManagerLost,
    responses((status = 200, body = ManagerReplaced), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn manager_lost(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(req): DeviceJson<ManagerLost>,
) -> ApiResult<Json<ManagerReplaced>> {
    let (replaced, touched) = state.store.manager_lost(&device, &req)?;
    state.notify(&touched);
    Ok(Json(replaced))
}

/// The device a recovery was asked of: its forced cluster has a leader.
#[utoipa::path(post, path = "/v1/device/recovered", tag = "device", security(("device" = [])), request_body = Recovered,
    responses((status = 204), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn recovered(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(req): DeviceJson<Recovered>,
) -> ApiResult<StatusCode> {
    let touched = state.store.recovered(&device, &req)?;
    state.notify(&touched);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct DesiredQuery {
    /// Answer only once the revision is greater than this (long poll).
    since: Option<u64>,
    /// Seconds to hold the request waiting for a change (at most 60).
    wait: Option<u64>,
}

/// The swarm's desired state, for its managers; long-polls with `since`.
#[utoipa::path(get, path = "/v1/desired", tag = "device", security(("device" = [])), params(DesiredQuery),
    responses((status = 200, body = DesiredState), (status = 403, body = ApiError)))]
pub(super) async fn desired(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiQuery(q): ApiQuery<DesiredQuery>,
) -> ApiResult<Json<DesiredState>> {
    let swarm = state.store.manager_swarm(&device)?;
    // Subscribe before reading, so a change between the two is not missed.
    let mut rx = state.watch(&swarm);
    let current = state.desired_state(&swarm)?;
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
    Ok(Json(state.desired_state(&swarm)?))
}

/// The raft leader's agent reports what its swarm runs.
#[utoipa::path(post, path = "/v1/observed", tag = "device", security(("device" = [])), request_body = ObservedReport,
    responses((status = 204), (status = 403, body = ApiError)))]
pub(super) async fn post_observed(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    DeviceJson(report): DeviceJson<ObservedReport>,
) -> ApiResult<StatusCode> {
    state.store.set_observed(&device, &report)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The raft leader's agent posts log lines for an open request (410 once
/// it is closed or expired: the agent stops).
#[utoipa::path(post, path = "/v1/logs/{id}", tag = "device", security(("device" = [])), request_body = fogswarm_protocol::logs::LogChunk,
    responses((status = 204), (status = 403, body = ApiError), (status = 410, body = ApiError)))]
pub(super) async fn post_log_chunk(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    DeviceJson(chunk): DeviceJson<fogswarm_protocol::logs::LogChunk>,
) -> ApiResult<StatusCode> {
    state.store.post_log_chunk(&device, &id, &chunk)?;
    Ok(StatusCode::NO_CONTENT)
}
