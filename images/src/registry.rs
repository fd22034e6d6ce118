//! A distribution-API client: push an image (blobs, then each platform's
//! manifest by digest, then the index, the tag last) and read one back.
//!
//! Blobs the registry has are skipped (HEAD); blobs another repository of
//! the same registry has are mounted; small blobs go in one PUT, large ones
//! in PATCH chunks. Credentials come from [`crate::auth`]; the registry
//! answers with basic auth or the bearer token flow, whose tokens are
//! kept per scope until they expire. 429 and 5xx answers are retried with
//! backoff. `--insecure` speaks plain HTTP.

use crate::auth::Credential;
use crate::build::{Blob, BuiltImage};
use base64::Engine as _;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI 1.1 empty descriptor's media type (`{}`), an artifact's config.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// An OCI descriptor of a blob.
fn descriptor(blob: &Blob) -> serde_json::Value {
    serde_json::json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size()})
}

/// Blobs larger than this are uploaded in chunks of this size.
pub const CHUNK: usize = 4 * 1024 * 1024;

pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Reference(String),
    #[error("cannot reach the registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("the registry {registry} refused the credentials{hint}")]
    Unauthorized { registry: String, hint: String },
    #[error("the registry {registry} refused {scope}{who}")]
    Denied {
        registry: String,
        scope: String,
        /// " for USER (credentials from SOURCE)", never the secret.
        who: String,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("the registry answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, RegistryError>;

/// `registry/name:tag` or `registry/name@sha256:HEX`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub registry: String,
    pub name: String,
    /// The tag, or the digest (`sha256:HEX`) of a by-digest reference.
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| RegistryError::Reference(format!("image reference {s:?} {why}"));
        let (registry, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("has no registry (like 10.0.0.1:5000/app:tag)"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad("must start with a registry host (like 10.0.0.1:5000/app:tag); Docker Hub is not reachable here"));
        }
        let (name, tag) = match rest.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("has a digest that is not sha256:HEX"))?;
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                {
                    return Err(bad(
                        "has a digest that is not sha256: and 64 lower-case hex digits",
                    ));
                }
                (n, d)
            }
            None => match rest.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t),
                _ => (rest, "latest"),
            },
        };
        let name_ok = !name.is_empty()
            && name.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
                    && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            });
        if !name_ok {
            return Err(bad(
                "has an invalid repository name (lower-case letters, digits, '.', '_', '-', '/')",
            ));
        }
        let tag_ok = tag.starts_with("sha256:")
            || !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !tag_ok {
            return Err(bad("has an invalid tag"));
        }
        Ok(Reference {
            registry: registry.into(),
            name: name.into(),
            tag: tag.into(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let separator = if self.tag.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(f, "{}/{}{separator}{}", self.registry, self.name, self.tag)
    }
}

/// What a push did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PushReport {
    pub uploaded_bytes: u64,
    pub skipped_bytes: u64,
    pub mounted_bytes: u64,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    credential: Option<Credential>,
    /// Bearer tokens by scope, from the token flow, with when they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// Attempts of one request when the registry answers 429 or 5xx.
const ATTEMPTS: u32 = 4;

impl RegistryClient {
    /// A client for `registry` with a credential (see
    /// [`crate::auth::credential_for`]), or anonymous.
    pub fn new(
        registry: &str,
        insecure: bool,
        credential: Option<Credential>,
    ) -> Result<RegistryClient> {
        fogswarm_client::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| RegistryError::Other(format!("HTTP client: {e}")))?;
        Ok(RegistryClient {
            http,
            base: format!("{}://{registry}", if insecure { "http" } else { "https" }),
            registry: registry.into(),
            credential,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Sends a request, answering an auth challenge (basic, or the bearer
    /// token flow for `scope`: space-separated scopes are asked for
    /// together) once, and retrying 429 and 5xx answers with backoff
    /// (`Retry-After` when the registry gives one, at most 10 s).
    async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let response = self
                .send_authorized(method.clone(), url, scope, &headers, &body)
                .await?;
            let status = response.status();
            let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !retry || attempt == ATTEMPTS {
                return Ok(response);
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(backoff)
                .min(Duration::from_secs(10));
            tokio::time::sleep(wait).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    async fn send_authorized(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        headers: &HeaderMap,
        body: &Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        let mut fetched = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(token) = self.cached_token(scope) {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            } else if let Some(c) = &self.credential {
                request = request.header(AUTHORIZATION, format!("Basic {}", c.basic()));
            }
            if let Some(b) = body {
                request = request.body(b.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| RegistryError::Unreachable {
                    registry: self.registry.clone(),
                    reason: fogswarm_client::describe(&e),
                })?;
            let status = response.status();
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let bearer = challenge.to_ascii_lowercase().starts_with("bearer");
            if status == StatusCode::FORBIDDEN || fetched {
                // The registry says no outright, or to a token just issued
                // for this scope: the scope is refused.
                return Err(self.denied(scope));
            }
            if !bearer {
                return Err(self.unauthorized());
            }
            let (token, expires) = self.fetch_token(&challenge, scope).await?;
            if let Ok(mut t) = self.tokens.lock() {
                t.insert(scope.to_string(), (token, expires));
            }
            fetched = true;
        }
    }

    /// A token for `scope` that has not expired.
    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(scope)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn who(&self) -> String {
        match &self.credential {
            Some(c) => format!(" for {} (credentials from {})", c.user, c.source),
            None => " to an anonymous client (no credentials: docker login, a credential helper, or --registry-user with --registry-token-file)".into(),
        }
    }

    fn denied(&self, scope: &str) -> RegistryError {
        RegistryError::Denied {
            registry: self.registry.clone(),
            scope: scope.to_string(),
            who: self.who(),
        }
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            hint: self.who(),
        }
    }

    /// The bearer token flow: GET realm?service=..&scope=..[&scope=..] with
    /// the credential (or none, for anonymous pulls). Answers the token and
    /// when to stop using it (`expires_in`, 60 s when unsaid, less a
    /// margin).
    async fn fetch_token(&self, challenge: &str, scope: &str) -> Result<(String, Instant)> {
        let params: HashMap<String, String> = challenge[6..]
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_string(),
                )
            })
            .collect();
        let realm = params
            .get("realm")
            .ok_or_else(|| RegistryError::Other("bearer challenge without a realm".into()))?;
        let mut query: Vec<(&str, String)> =
            scope.split(' ').map(|s| ("scope", s.to_string())).collect();
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let url = reqwest::Url::parse_with_params(realm, &query)
            .map_err(|e| RegistryError::Other(format!("token realm {realm}: {e}")))?;
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1;
        let response = loop {
            let mut request = self.http.get(url.clone());
            if let Some(c) = &self.credential {
                request = request.header(AUTHORIZATION, format!("Basic {}", c.basic()));
            }
            let response = request
                .send()
                .await
                .map_err(|e| RegistryError::Unreachable {
                    registry: realm.clone(),
                    reason: fogswarm_client::describe(&e),
                })?;
            let status = response.status();
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < ATTEMPTS
            {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
                continue;
            }
            break response;
        };
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => return Err(self.unauthorized()),
            _ => return Err(self.denied(scope)),
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| RegistryError::Other(format!("token answer from {realm}: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                RegistryError::Other(format!("the token answer from {realm} holds no token"))
            })?;
        let lifetime = body
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(60)
            .max(10);
        Ok((token, Instant::now() + Duration::from_secs(lifetime - 5)))
    }

    fn scope(name: &str) -> String {
        format!("repository:{name}:pull,push")
    }

    async fn status_error(what: String, response: reqwest::Response) -> RegistryError {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        RegistryError::Status {
            what,
            status,
            body: body.chars().take(300).collect(),
        }
    }

    /// Whether the repository has the blob.
    pub async fn has_blob(&self, name: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        let response = self
            .send(
                Method::HEAD,
                &url,
                &Self::scope(name),
                HeaderMap::new(),
                None,
            )
            .await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::status_error(format!("HEAD blob {digest}"), response).await),
        }
    }

    /// Uploads a blob: mounted from `mount_from` if the registry has it
    /// there, else in one PUT or in chunks. Answers whether bytes moved.
    async fn upload_blob(&self, name: &str, blob: &Blob, mount_from: Option<&str>) -> Result<bool> {
        let mut start = format!("{}/v2/{name}/blobs/uploads/", self.base);
        let mut scope = Self::scope(name);
        if let Some(from) = mount_from.filter(|f| *f != name) {
            start.push_str(&format!("?mount={}&from={from}", blob.digest));
            // A mount reads the source repository: pull on it too.
            scope.push_str(&format!(" repository:{from}:pull"));
        }
        let response = self
            .send(Method::POST, &start, &scope, HeaderMap::new(), None)
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(false); // mounted
        }
        if response.status() != StatusCode::ACCEPTED {
            return Err(Self::status_error(
                format!("starting the upload of {}", blob.digest),
                response,
            )
            .await);
        }
        let mut location = self.location(&response)?;
        // Large blobs go up in PATCH chunks and close with an empty PUT;
        // small ones go up whole in the closing PUT.
        let closing_body = if blob.bytes.len() > CHUNK {
            for (n, chunk) in blob.bytes.chunks(CHUNK).enumerate() {
                let offset = n * CHUNK;
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(
                    CONTENT_RANGE,
                    header(&format!("{offset}-{}", offset + chunk.len() - 1))?,
                );
                headers.insert(CONTENT_LENGTH, header(&chunk.len().to_string())?);
                let response = self
                    .send(
                        Method::PATCH,
                        &location,
                        &Self::scope(name),
                        headers,
                        Some(chunk.to_vec()),
                    )
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(Self::status_error(
                        format!("uploading a chunk of {}", blob.digest),
                        response,
                    )
                    .await);
                }
                location = self.location(&response)?;
            }
            Vec::new()
        } else {
            blob.bytes.clone()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let response = self
            .send(
                Method::PUT,
                &with_digest(&location, &blob.digest),
                &Self::scope(name),
                headers,
                Some(closing_body),
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(Self::status_error(format!("uploading {}", blob.digest), response).await);
        }
        Ok(true)
    }

    /// Absolute upload URL from a Location header (which may be relative).
    fn location(&self, response: &reqwest::Response) -> Result<String> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Other("the registry gave no upload location".into()))?;
        Ok(
            if location.starts_with("http://") || location.starts_with("https://") {
                location.to_string()
            } else {
                format!("{}{location}", self.base)
            },
        )
    }

    /// PUTs a manifest or index under a digest or tag, as its exact bytes.
    pub async fn put_manifest(&self, name: &str, reference: &str, blob: &Blob) -> Result<()> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header(&blob.media_type)?);
        let response = self
            .send(
                Method::PUT,
                &url,
                &Self::scope(name),
                headers,
                Some(blob.bytes.clone()),
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(Self::status_error(format!("PUT manifest {reference}"), response).await);
        }
        Ok(())
    }

    /// Reads a manifest or index by tag or digest: media type and bytes.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<Blob> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static(ACCEPT));
        let response = self
            .send(
                Method::GET,
                &url,
                &format!("repository:{name}:pull"),
                headers,
                None,
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::status_error(format!("GET manifest {reference}"), response).await);
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Other(e.to_string()))?
            .to_vec();
        let blob = Blob::new(&media_type, bytes);
        if reference.starts_with("sha256:") && blob.digest != reference {
            return Err(RegistryError::Other(format!(
                "the registry {} answered {name}@{reference} with a manifest whose digest is {}: refusing it",
                self.registry, blob.digest
            )));
        }
        Ok(blob)
    }

    /// A manifest, or None where the registry has none (404).
    pub async fn find_manifest(&self, name: &str, reference: &str) -> Result<Option<Blob>> {
        match self.get_manifest(name, reference).await {
            Ok(blob) => Ok(Some(blob)),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A blob's bytes, checked against its digest.
    pub async fn get_blob(&self, name: &str, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        let response = self
            .send(
                Method::GET,
                &url,
                &format!("repository:{name}:pull"),
                HeaderMap::new(),
                None,
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::status_error(format!("GET blob {digest}"), response).await);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Other(e.to_string()))?
            .to_vec();
        if crate::build::sha256(&bytes) != digest {
            return Err(RegistryError::Other(format!(
                "the registry {} answered blob {digest} of {name} with other bytes: refusing them",
                self.registry
            )));
        }
        Ok(bytes)
    }

    /// Uploads a blob unless the repository has it.
    pub async fn ensure_blob(&self, name: &str, blob: &Blob) -> Result<()> {
        if !self.has_blob(name, &blob.digest).await? {
            self.upload_blob(name, blob, None).await?;
        }
        Ok(())
    }

    /// Pushes an OCI artifact holding `content` that refers to `subject`
    /// (a manifest of `name`), by digest, and lists it under the referrers
    /// tag-schema fallback `sha256-HEX` of the subject (adding to what is
    /// listed there). Answers the artifact's manifest.
    pub async fn push_referrer(
        &self,
        name: &str,
        subject: &Blob,
        artifact_type: &str,
        content: &Blob,
    ) -> Result<Blob> {
        let empty = Blob::new(EMPTY_MEDIA_TYPE, b"{}".to_vec());
        self.ensure_blob(name, &empty).await?;
        self.ensure_blob(name, content).await?;
        let manifest = Blob::new(
            OCI_MANIFEST,
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": descriptor(&empty),
                "layers": [descriptor(content)],
                "subject": descriptor(subject),
            }))
            .map_err(|e| RegistryError::Other(e.to_string()))?,
        );
        self.put_manifest(name, &manifest.digest, &manifest).await?;
        let tag = subject.digest.replace(':', "-");
        let mut index = match self.find_manifest(name, &tag).await? {
            Some(existing) => serde_json::from_slice(&existing.bytes).map_err(|e| {
                RegistryError::Other(format!("the referrers list {name}:{tag} is not JSON: {e}"))
            })?,
            None => {
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            }
        };
        let listed = index["manifests"]
            .as_array()
            .is_some_and(|m| m.iter().any(|d| d["digest"] == manifest.digest.as_str()));
        if !listed {
            let mut entry = descriptor(&manifest);
            entry["artifactType"] = artifact_type.into();
            match index["manifests"].as_array_mut() {
                Some(list) => list.push(entry),
                None => index["manifests"] = serde_json::json!([entry]),
            }
            let bytes =
                serde_json::to_vec(&index).map_err(|e| RegistryError::Other(e.to_string()))?;
            self.put_manifest(name, &tag, &Blob::new(OCI_INDEX, bytes))
                .await?;
        }
        Ok(manifest)
    }

    /// The artifacts listed under a digest's referrers fallback tag, as
    /// descriptors.
    pub async fn referrers(&self, name: &str, digest: &str) -> Result<Vec<serde_json::Value>> {
        let tag = digest.replace(':', "-");
        Ok(match self.find_manifest(name, &tag).await? {
            Some(index) => serde_json::from_slice::<serde_json::Value>(&index.bytes)
                .ok()
                .and_then(|v| v["manifests"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        })
    }

    /// Adds a cosign signature of `digest` (payload and base64 signature)
    /// to the `sha256-HEX.sig` manifest of `name`, as containers/image and
    /// cosign write it: one layer per signature, the signature in its
    /// annotation, a config listing the layers.
    pub async fn push_signature(
        &self,
        name: &str,
        digest: &str,
        payload: &Blob,
        signature: &str,
    ) -> Result<()> {
        let tag = crate::sign::signature_tag(digest);
        let mut layers: Vec<serde_json::Value> = match self.find_manifest(name, &tag).await? {
            Some(existing) => serde_json::from_slice::<serde_json::Value>(&existing.bytes)
                .ok()
                .and_then(|m| m["layers"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut layer = descriptor(payload);
        layer["annotations"] = serde_json::json!({crate::sign::SIGNATURE_ANNOTATION: signature});
        if layers.contains(&layer) {
            return Ok(());
        }
        self.ensure_blob(name, payload).await?;
        layers.push(layer);
        let config = Blob::new(
            OCI_CONFIG,
            serde_json::to_vec(&serde_json::json!({
                "architecture": "",
                "os": "",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>()},
            }))
            .map_err(|e| RegistryError::Other(e.to_string()))?,
        );
        self.ensure_blob(name, &config).await?;
        let manifest = Blob::new(
            OCI_MANIFEST,
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(&config),
                "layers": layers,
            }))
            .map_err(|e| RegistryError::Other(e.to_string()))?,
        );
        self.put_manifest(name, &tag, &manifest).await
    }

    /// The signatures stored for `digest`: each payload with its base64
    /// signature. A payload that does not match its digest is refused.
    pub async fn signatures(&self, name: &str, digest: &str) -> Result<Vec<(Vec<u8>, String)>> {
        let tag = crate::sign::signature_tag(digest);
        let Some(manifest) = self.find_manifest(name, &tag).await? else {
            return Ok(Vec::new());
        };
        let doc: serde_json::Value = serde_json::from_slice(&manifest.bytes).map_err(|e| {
            RegistryError::Other(format!(
                "the signatures {name}:{tag} are not a JSON manifest: {e}"
            ))
        })?;
        let mut out = Vec::new();
        for layer in doc["layers"].as_array().into_iter().flatten() {
            let (Some(digest), Some(signature)) = (
                layer["digest"].as_str(),
                layer["annotations"][crate::sign::SIGNATURE_ANNOTATION].as_str(),
            ) else {
                continue;
            };
            out.push((self.get_blob(name, digest).await?, signature.to_string()));
        }
        Ok(out)
    }

    /// Pushes an image so the tag never points at something incomplete:
    /// blobs, each platform manifest by digest, the index by digest, the tag.
    pub async fn push(
        &self,
        reference: &Reference,
        image: &BuiltImage,
        mount_from: Option<&str>,
    ) -> Result<PushReport> {
        let mut report = PushReport::default();
        for blob in image.blobs() {
            if self.has_blob(&reference.name, &blob.digest).await? {
                report.skipped_bytes += blob.size();
                report.blobs_skipped += 1;
                continue;
            }
            if self.upload_blob(&reference.name, blob, mount_from).await? {
                report.uploaded_bytes += blob.size();
                report.blobs_uploaded += 1;
            } else {
                report.mounted_bytes += blob.size();
                report.blobs_skipped += 1;
            }
        }
        for platform_image in &image.images {
            self.put_manifest(
                &reference.name,
                &platform_image.manifest.digest,
                &platform_image.manifest,
            )
            .await?;
        }
        self.put_manifest(&reference.name, &image.index.digest, &image.index)
            .await?;
        self.put_manifest(&reference.name, &reference.tag, &image.index)
            .await?;
        Ok(report)
    }
}

fn header(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|e| RegistryError::Other(format!("header {value:?}: {e}")))
}

/// Appends `digest=` to an upload URL, which may carry a query already.
pub fn with_digest(location: &str, digest: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}digest={digest}")
}

/// `user:password` as Docker's config stores it.
pub fn encode_basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("10.213.7.1:5000/team/fog-hello:v1.2").expect("ok");
        assert_eq!(
            (r.registry.as_str(), r.name.as_str(), r.tag.as_str()),
            ("10.213.7.1:5000", "team/fog-hello", "v1.2")
        );
        assert_eq!(
            Reference::parse("localhost:5000/app").expect("ok").tag,
            "latest"
        );
        assert!(Reference::parse("app:v1").is_err(), "no registry");
        assert!(Reference::parse("library/app:v1").is_err(), "not a host");
        assert!(
            Reference::parse("127.0.0.1:5000/App:v1").is_err(),
            "upper case"
        );
        assert!(
            Reference::parse("127.0.0.1:5000/app:v 1").is_err(),
            "bad tag"
        );
    }

    #[test]
    fn upload_urls_take_the_digest_with_the_right_separator() {
        assert_eq!(
            with_digest("http://r/v2/a/blobs/uploads/x", "sha256:1"),
            "http://r/v2/a/blobs/uploads/x?digest=sha256:1"
        );
        assert_eq!(
            with_digest("http://r/u?_state=abc", "sha256:1"),
            "http://r/u?_state=abc&digest=sha256:1"
        );
    }

    #[test]
    fn basic_auth_encoding() {
        assert_eq!(encode_basic("fog", "swarm"), "Zm9nOnN3YXJt");
    }
}
