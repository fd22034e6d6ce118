//! Access to a Docker Engine: bollard for everything it models, and a raw
//! JSON call for the few fields its request types lack on API 1.41.
//!
//! Every client negotiates the API version down to the engine's (these
//! engines speak 1.41; a client that pins a newer version is refused).

use anyhow::{anyhow, bail, Context, Result};
use bollard::Docker;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where an engine listens, as given by `DOCKER_HOST` or a lab device's
/// socket. Only local sockets: fogswarm never talks to an engine over TCP,
/// because no device exposes its socket on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineAddr {
    pub socket: PathBuf,
}

impl EngineAddr {
    /// The host's engine: `DOCKER_HOST` (unix:// only) or the default socket.
    pub fn from_env() -> Result<Self> {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
                Some(p) => Ok(EngineAddr { socket: p.into() }),
                None => bail!("DOCKER_HOST={h} is not supported: fogswarm talks to local engines over unix:// sockets only"),
            },
            _ => Ok(EngineAddr {
                socket: "/var/run/docker.sock".into(),
            }),
        }
    }

    pub fn socket(path: impl AsRef<Path>) -> Self {
        EngineAddr {
            socket: path.as_ref().to_path_buf(),
        }
    }
}

/// A connected engine: a version-negotiated bollard client, and the address
/// for raw calls.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub addr: EngineAddr,
}

impl Engine {
    /// Connects and negotiates the API version; the error names the socket
    /// tried, since that is what a user has to fix.
    pub async fn connect(addr: &EngineAddr) -> Result<Engine> {
        let path = addr.socket.display().to_string();
        let docker = Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| anyhow!("cannot reach Docker at {path}: {e}"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| anyhow!("cannot reach Docker at {path}: {e}"))?;
        Ok(Engine {
            docker,
            addr: addr.clone(),
        })
    }

    /// Connects, retrying until `timeout`: for engines that are still
    /// starting. `keep_waiting` is asked between tries and may end the wait
    /// early with its own error (a device container that exited, say).
    pub async fn wait_for<F, Fut>(
        addr: &EngineAddr,
        timeout: Duration,
        mut keep_waiting: F,
    ) -> Result<Engine>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if addr.socket.exists() {
                if let Ok(engine) = Engine::connect(addr).await {
                    if engine.docker.ping().await.is_ok() {
                        return Ok(engine);
                    }
                }
            }
            keep_waiting().await?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "engine at {} did not answer within {}s",
                    addr.socket.display(),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// POSTs a JSON body the engine accepts but bollard cannot express
    /// (container-level `MacAddress` on API 1.41; `Availability` on a swarm
    /// join). `path_and_query` has no version prefix: the negotiated one is
    /// added. Answers the decoded JSON reply (or Null for an empty one).
    pub async fn post_json(
        &self,
        path_and_query: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let version = self.docker.client_version();
        let uri: hyper::Uri = hyperlocal::Uri::new(
            &self.addr.socket,
            &format!(
                "/v{}.{}{}",
                version.major_version, version.minor_version, path_and_query
            ),
        )
        .into();
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
        let request = hyper::Request::post(uri)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))
            .context("building engine request")?;
        let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
            .await
            .map_err(|_| anyhow!("engine did not answer POST {path_and_query} within 120s"))?
            .with_context(|| {
                format!(
                    "POST {path_and_query} to the engine at {}",
                    self.addr.socket.display()
                )
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the engine's reply")?
            .to_bytes();
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        if !status.is_success() {
            let message = value
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            return Err(EngineError {
                status: status.as_u16(),
                message,
            }
            .into());
        }
        Ok(value)
    }
}

/// An engine's refusal of a raw call, kept typed so callers can react to a
/// status (409 conflict, 404 missing) without parsing text.
#[derive(Debug, thiserror::Error)]
#[error("engine answered {status}: {message}")]
pub struct EngineError {
    pub status: u16,
    pub message: String,
}
