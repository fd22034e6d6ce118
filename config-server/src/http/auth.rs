//! Who is calling: the client's address (through trusted proxies), the
//! admin token, and devices, whose every request is signed with the key
//! their identity is bound to (`fogswarm_protocol::identity`).
//!
//! Refusals are counted per address and per what was guessed
//! ([`crate::limit`]); a valid secret or signature is never refused for
//! someone else's failures.

use super::*;
use crate::store::Operator;
use axum::body::Body;
use fogswarm_protocol::identity::{self, PublicKey};
use std::net::Ipv4Addr;

/// A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`): the proxies
/// whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a network (10.0.0.0/8)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> Option<u128> {
            match (self.network, ip) {
                (IpAddr::V4(_), IpAddr::V4(a)) => Some(u128::from(u32::from(a)) << 96),
                (IpAddr::V6(_), IpAddr::V6(a)) => Some(u128::from(a)),
                _ => None,
            }
        };
        let (Some(net), Some(addr)) = (bits(self.network), bits(ip)) else {
            return false;
        };
        // Both kinds sit at the top of the 128 bits, so a prefix is the
        // same count of leading bits.
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        net & mask == addr & mask
    }
}

/// The client's address: the connection's peer, or, when the peer is a
/// trusted proxy, the last address in `X-Forwarded-For` that is not one.
pub(crate) fn client_ip(parts: &Parts, trusted: &[Cidr]) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// The address a request came from, for the brute-force limiter.
pub struct Peer(pub IpAddr);

impl FromRequestParts<Shared> for Peer {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(client_ip(parts, &state.trusted_proxies)))
    }
}

impl AppState {
    /// A failed authentication from `ip` at `subject`: 401, or 429 with
    /// Retry-After once that address failed at that too often.
    pub(crate) fn refuse(&self, ip: IpAddr, subject: &str, message: &str) -> ApiFailure {
        match self.limiter.fail(ip, subject) {
            Some(wait) => ApiFailure::too_many_failures(wait),
            None => ApiFailure::unauthorized(message),
        }
    }
}

/// The bearer token an Authorization header carries.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The fingerprint of the client certificate a TLS connection presented,
/// verified against the fleet's CA in the handshake.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// An operator-API caller: the built-in admin (the server's admin token)
/// or a named user (one of their tokens). What each may do is decided
/// here, once, by route ([`need`]), before any handler runs: a viewer is
/// refused every write, an operator every swarm but theirs.
pub struct Caller(pub Operator);

impl Caller {
    /// How events name the caller.
    pub fn actor(&self) -> Actor {
        self.0.actor()
    }

    /// Refuses (403) a caller who may not change `swarm`: for writes whose
    /// swarm is in the body.
    pub fn may_change(&self, swarm: &str) -> ApiResult<()> {
        if self.0.may_change(swarm) {
            Ok(())
        } else {
            Err(forbidden(&self.0, &format!("change swarm {swarm}")))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.0.role == UserRole::Admin
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let who = match bearer(&parts.headers) {
            Some(token) if state.is_admin_token(token)? => Operator::builtin_admin(),
            Some(token) => {
                match state.store.authenticate_user_token(token)? {
                    Some(who) => who,
                    None => return Err(state.refuse(
                        client_ip(parts, &state.trusted_proxies),
                        "operator-token",
                        "the token is not valid (neither the admin token nor a live user token)",
                    )),
                }
            }
            None => match parts.extensions.get::<ClientCertificate>() {
                Some(ClientCertificate(fingerprint)) => {
                    match state.store.authenticate_certificate(fingerprint)? {
                        Some(who) => who,
                        None => {
                            return Err(state.refuse(
                                client_ip(parts, &state.trusted_proxies),
                                "client-certificate",
                                "the client certificate is not (or no longer) a user's",
                            ))
                        }
                    }
                }
                None => {
                    return Err(ApiFailure::unauthorized(
                        "this endpoint needs the admin token, a user's token as a bearer token, or a user's client certificate",
                    ))
                }
            },
        };
        super::Who::note(parts, || who.actor().as_string());
        authorize(state, parts, &who).await?;
        Ok(Caller(who))
    }
}

fn forbidden(who: &Operator, what: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{} {} may not {what}", who.role, who.name),
        None,
    )
}

/// What an operator-API request needs of its caller.
#[derive(Debug, PartialEq)]
pub(crate) enum Need {
    /// Any user: reads (and opening or closing a log read).
    Read,
    /// The right to change the swarm named in the path.
    Swarm,
    /// The right to change the swarm of the device named in the path.
    Device,
    /// The right to change the swarm of the enrolment token in the path.
    EnrolToken,
    /// An operator at least; the handler checks the swarm in the body.
    OperatorBody,
    /// Any user; the handler checks that a token is the caller's own.
    Own,
    Admin,
}

/// The one table of who may do what, by method and route template.
/// Writes not named here need an admin.
pub(crate) fn need(method: &axum::http::Method, route: &str) -> Need {
    use axum::http::Method;
    let reading_logs = route.ends_with("/logs") && *method == Method::POST
        || route.contains("/logs/{") && *method == Method::DELETE;
    if *method == Method::GET || reading_logs {
        return Need::Read;
    }
    match route {
        "/v1/swarms"
        | "/v1/swarms/{name}"
        | "/v1/provisioning-key/rotate"
        | "/v1/admin-token/rotate"
        | "/v1/users"
        | "/v1/users/{name}" => Need::Admin,
        r if r.starts_with("/v1/swarms/{name}/") => Need::Swarm,
        "/v1/devices/{id}" | "/v1/devices/{id}/labels" | "/v1/devices/{id}/approve" => Need::Device,
        "/v1/enrol-tokens/{id}" => Need::EnrolToken,
        "/v1/devices" | "/v1/devices/import" | "/v1/enrol-tokens" => Need::OperatorBody,
        "/v1/tokens" | "/v1/tokens/{id}" | "/v1/certificates" | "/v1/certificates/{id}" => {
            Need::Own
        }
        _ => Need::Admin,
    }
}

async fn authorize(state: &Shared, parts: &mut Parts, who: &Operator) -> ApiResult<()> {
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let need = need(&parts.method, &route);
    let what = format!("{} {}", parts.method, route);
    match need {
        Need::Read | Need::Own => Ok(()),
        Need::Admin if who.role == UserRole::Admin => Ok(()),
        Need::Admin => Err(forbidden(who, &format!("do {what} (admins only)"))),
        _ if who.role == UserRole::Viewer => Err(forbidden(
            who,
            &format!("do {what} (viewers change nothing)"),
        )),
        Need::OperatorBody => Ok(()),
        Need::Swarm | Need::Device | Need::EnrolToken => {
            let params = axum::extract::RawPathParams::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text(), None)
                })?;
            let value = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            let swarm = match need {
                Need::Swarm => value("name"),
                Need::Device => match DeviceId::parse(&value("id"))
                    .ok()
                    .map(|id| state.store.get_device(id.as_str()))
                {
                    Some(Ok(device)) => device.swarm,
                    // The handler answers for a bad or unknown id.
                    _ => return Ok(()),
                },
                _ => match state.store.enrol_token_swarm(&value("id")) {
                    Ok(swarm) => swarm,
                    Err(_) => return Ok(()),
                },
            };
            if who.may_change(&swarm) {
                Ok(())
            } else {
                Err(forbidden(who, &format!("change swarm {swarm}")))
            }
        }
    }
}

/// Which of a device's keys signed a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// The key its identity is bound to.
    Enrolled,
    /// Another key waiting for `device approve`: it may ask for its
    /// config (answered `wait`) and nothing else.
    Reenrolling,
}

/// A request whose signature checked out, put in its extensions by
/// [`verify_signature`].
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub device: String,
    pub standing: Standing,
    /// The key that signed it.
    pub key: PublicKey,
}

/// The enrolment request's signature checked out against the key the
/// request carries: the caller holds that key's private half.
#[derive(Debug, Clone)]
pub(crate) struct SignedEnrolment {
    pub device: String,
}

/// The device that signed this request with its enrolled key.
pub struct AuthDevice(pub String);

impl FromRequestParts<Shared> for AuthDevice {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Signed>() {
            Some(Signed {
                device,
                standing: Standing::Enrolled,
                ..
            }) => Ok(AuthDevice(device.clone())),
            Some(Signed { device, .. }) => Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "reenrol_pending",
                format!("this key waits for an operator to approve it as device {device} (fogswarm device approve {device})"),
                None,
            )),
            None => Err(ApiFailure::unauthorized(
                "this endpoint needs a request signed with the device's key (Authorization: Fogswarm-Device ...)",
            )),
        }
    }
}

/// A device, by either of its keys (the config endpoint only).
pub struct AnyKeyDevice(pub Signed);

impl FromRequestParts<Shared> for AnyKeyDevice {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Signed>()
            .cloned()
            .map(AnyKeyDevice)
            .ok_or_else(|| {
                ApiFailure::unauthorized(
                    "this endpoint needs a request signed with the device's key (Authorization: Fogswarm-Device ...)",
                )
            })
    }
}

/// Checks a signed device request before any handler runs: the
/// timestamp against this server's clock, then the signature over method,
/// path and query, timestamp and body against the device's keys (or,
/// enrolling, the key the body carries). Requests of other schemes pass
/// through untouched.
pub(super) async fn verify_signature(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let claim = match request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(identity::parse_authorization)
    {
        None => return next.run(request).await,
        Some(Err(e)) => return ApiFailure::unauthorized(&e.to_string()).into_response(),
        Some(Ok(claim)) => claim,
    };
    let (mut parts, body) = request.into_parts();
    let ip = client_ip(&parts, &state.trusted_proxies);
    let now = crate::store::now();
    if (claim.unix_secs - now).abs() > identity::MAX_SKEW_SECS {
        let mut response = ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "clock_skew",
            format!(
                "the request is signed at {} but the server's clock says {now}; sign with the time in the Fogswarm-Time header",
                claim.unix_secs
            ),
            None,
        )
        .into_response();
        response
            .headers_mut()
            .insert(identity::TIME_HEADER, now.into());
        return response;
    }
    let bytes = match axum::body::to_bytes(body, IMPORT_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return too_large().into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| parts.uri.path());
    let input = identity::signing_input(
        &claim.device_id,
        parts.method.as_str(),
        path,
        claim.unix_secs,
        &bytes,
    );
    let subject = format!("device:{}", claim.device_id);
    if parts.uri.path() == "/v1/enrol" {
        // Proof of possession of the key being enrolled.
        #[derive(Deserialize)]
        struct Claimed {
            public_key: PublicKey,
        }
        let Ok(claimed) = serde_json::from_slice::<Claimed>(&bytes) else {
            // The handler says what is wrong with the body.
            parts.extensions.insert(SignedEnrolment {
                device: String::new(),
            });
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        };
        if !claimed.public_key.verifies(&input, &claim.signature) {
            return state
                .refuse(
                    ip,
                    &subject,
                    "the enrolment is not signed with the key it enrols",
                )
                .into_response();
        }
        super::Who::note(&parts, || subject.clone());
        parts.extensions.insert(SignedEnrolment {
            device: claim.device_id,
        });
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    let keys = match state.store.device_keys(&claim.device_id) {
        Ok(k) => k,
        Err(e) => return ApiFailure::from(e).into_response(),
    };
    let verified = keys.and_then(|keys| {
        let signed_by = |k: &Option<PublicKey>| {
            k.as_ref()
                .filter(|k| k.verifies(&input, &claim.signature))
                .cloned()
        };
        signed_by(&keys.enrolled)
            .map(|k| (Standing::Enrolled, k))
            .or_else(|| signed_by(&keys.pending).map(|k| (Standing::Reenrolling, k)))
    });
    let Some((standing, key)) = verified else {
        return state
            .refuse(
                ip,
                &subject,
                "the request is not signed by a key enrolled as that device",
            )
            .into_response();
    };
    super::Who::note(&parts, || subject.clone());
    parts.extensions.insert(Signed {
        device: claim.device_id,
        standing,
        key,
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_what_they_should() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
        let one = Cidr::parse("127.0.0.1").expect("cidr");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("192.0.2.9".parse().expect("ip")));
        let v6 = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::5".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }
}
