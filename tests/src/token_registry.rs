//! A real registry (Debian's docker-registry) that demands bearer tokens,
//! as Docker Hub, GHCR, Harbor and GitLab do, with the token server the
//! test plays itself: it checks basic credentials, issues ES256 JWTs for
//! the scopes asked (signed by a certificate the registry trusts), refuses
//! repositories under `forbidden/`, and counts what it was asked.

use crate::registry::LocalRegistry;
use anyhow::{Context, Result};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const SERVICE: &str = "fogswarm-test-registry";
pub const ISSUER: &str = "fogswarm-test-issuer";

/// What the token server saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// Token requests by their scopes, joined with a space.
    pub by_scope: BTreeMap<String, usize>,
    /// Requests refused for their credentials.
    pub refused: usize,
    /// How many of the next requests to answer 503 (to prove retries).
    pub fail_next: usize,
}

pub struct TokenRegistry {
    pub addr: String,
    pub seen: Arc<Mutex<Seen>>,
    _registry: LocalRegistry,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

struct Issuer {
    user: String,
    password: String,
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    seen: Arc<Mutex<Seen>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    fn token(&self, scopes: &[String]) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                // The refusal a registry makes for a repository the user
                // may not touch: the token grants nothing on it.
                let actions: Vec<&str> = if name.starts_with("forbidden/") {
                    vec![]
                } else {
                    actions.split(',').collect()
                };
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
            })
            .collect();
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": self.user,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", scopes.join(",")),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = self
            .key
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing the token"))?;
        Ok(format!("{signing_input}.{}", b64url(signature.as_ref())))
    }
}

async fn token_endpoint(
    axum::extract::State(issuer): axum::extract::State<Arc<Issuer>>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let query = query.unwrap_or_default();
    let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("query");
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    {
        let mut seen = issuer.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.fail_next > 0 {
            seen.fail_next -= 1;
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", issuer.user, issuer.password))
    );
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut seen = issuer.seen.lock().unwrap_or_else(|p| p.into_inner());
    if presented != Some(expected.as_str()) {
        seen.refused += 1;
        return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    *seen.by_scope.entry(scopes.join(" ")).or_default() += 1;
    drop(seen);
    match issuer.token(&scopes) {
        Ok(token) => {
            axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
        }
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

impl TokenRegistry {
    /// Starts the token server and a registry that trusts it; `user` and
    /// `password` are the only credentials the token server accepts.
    pub async fn start(user: &str, password: &str) -> Result<TokenRegistry> {
        let dir = tempfile::tempdir()?;
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the issuer key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fogswarm test token issuer");
        let cert = params.self_signed(&key_pair)?;
        std::fs::write(dir.path().join("issuer.pem"), cert.pem())?;
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("loading the issuer key: {e}"))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let issuer = Arc::new(Issuer {
            user: user.into(),
            password: password.into(),
            key,
            cert_der: cert.der().to_vec(),
            seen: seen.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let token_addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token_endpoint))
            .with_state(issuer);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let registry = LocalRegistry::start_with_auth(&format!(
            "auth:\n  token:\n    realm: http://{token_addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            dir.path().join("issuer.pem").display(),
        ))?;
        Ok(TokenRegistry {
            addr: registry.addr.clone(),
            seen,
            _registry: registry,
            server,
            _dir: dir,
        })
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}
