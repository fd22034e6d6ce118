//! Registry credentials, found the way Docker and ko find them: given
//! explicitly (CI: `--registry-user` with `--registry-token-file`, or
//! `FOGSWARM_REGISTRY_USER` with `FOGSWARM_REGISTRY_TOKEN[_FILE]`), else
//! from the Docker config file (`credHelpers` for the registry, its
//! `auths` entry, then `credsStore`), a helper being asked through the
//! `docker-credential-NAME get` protocol.
//!
//! A credential is kept as [`Secret`]: it never reaches a message, a log or
//! an error; what they name instead is where it came from.

use fogswarm_protocol::api::Secret;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A user name and its password or token.
#[derive(Clone)]
pub struct Credential {
    pub user: String,
    pub secret: Secret,
    /// Where it came from, for messages: "--registry-token-file",
    /// "docker-credential-pass", "~/.docker/config.json".
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({} from {})", self.user, self.source)
    }
}

impl Credential {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        crate::registry::encode_basic(&self.user, self.secret.expose())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Config(String),
    #[error("the credential helper docker-credential-{helper} failed for {registry}: {reason}")]
    Helper {
        helper: String,
        registry: String,
        reason: String,
    },
}

/// Credentials given explicitly, for CI.
#[derive(Debug, Clone, Default)]
pub struct Explicit {
    pub user: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl Explicit {
    /// From the flags, else the environment.
    pub fn resolve(&self) -> Result<Option<Credential>, AuthError> {
        let user = self
            .user
            .clone()
            .or_else(|| std::env::var("FOGSWARM_REGISTRY_USER").ok());
        let (token, source) = match &self.token_file {
            Some(file) => (
                Some(read_token(file, "--registry-token-file")?),
                "--registry-token-file".to_string(),
            ),
            None => match (
                std::env::var("FOGSWARM_REGISTRY_TOKEN_FILE").ok(),
                std::env::var("FOGSWARM_REGISTRY_TOKEN").ok(),
            ) {
                (Some(file), _) => (
                    Some(read_token(
                        &PathBuf::from(file),
                        "FOGSWARM_REGISTRY_TOKEN_FILE",
                    )?),
                    "FOGSWARM_REGISTRY_TOKEN_FILE".to_string(),
                ),
                (None, Some(token)) => (Some(token), "FOGSWARM_REGISTRY_TOKEN".to_string()),
                (None, None) => (None, String::new()),
            },
        };
        match (user, token) {
            (Some(user), Some(token)) => Ok(Some(Credential {
                user,
                secret: Secret::new(token.trim()),
                source,
            })),
            (None, Some(_)) => Err(AuthError::Config(format!(
                "a registry token from {source} needs a user: --registry-user or FOGSWARM_REGISTRY_USER"
            ))),
            (Some(_), None) => Err(AuthError::Config(
                "--registry-user needs a token: --registry-token-file, FOGSWARM_REGISTRY_TOKEN_FILE or FOGSWARM_REGISTRY_TOKEN".into(),
            )),
            (None, None) => Ok(None),
        }
    }
}

fn read_token(path: &std::path::Path, what: &str) -> Result<String, AuthError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| AuthError::Config(format!("{what} {}: {e}", path.display())))
}

fn docker_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
}

/// The key a registry has in config.json (Docker Hub's is its v1 URL).
fn config_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" || registry == "registry-1.docker.io" {
        keys.push("https://index.docker.io/v1/".into());
    }
    keys
}

/// The credential for `registry`: explicit first, then the Docker config.
pub fn credential_for(
    registry: &str,
    explicit: &Explicit,
) -> Result<Option<Credential>, AuthError> {
    if let Some(c) = explicit.resolve()? {
        return Ok(Some(c));
    }
    match docker_config_path() {
        Some(path) => from_docker_config(registry, &path),
        None => Ok(None),
    }
}

/// The credential a Docker config file gives `registry`: its
/// `credHelpers` entry, its `auths` entry, then `credsStore`.
pub fn from_docker_config(
    registry: &str,
    path: &std::path::Path,
) -> Result<Option<Credential>, AuthError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let config: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::Config(format!("{} is not valid JSON: {e}", path.display())))?;
    let keys = config_keys(registry);
    let find = |section: &str| {
        config
            .get(section)
            .and_then(|s| s.as_object())
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| {
                        keys.iter()
                            .any(|key| key.trim_end_matches('/') == k.trim_end_matches('/'))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
            })
    };
    if let Some((key, helper)) = find("credHelpers") {
        if let Some(helper) = helper.as_str() {
            return helper_get(helper, &key, registry);
        }
    }
    if let Some((_, entry)) = find("auths") {
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            return decode_auth(auth, path).map(Some);
        }
    }
    if let Some(store) = config.get("credsStore").and_then(|s| s.as_str()) {
        return helper_get(store, registry, registry);
    }
    Ok(None)
}

fn decode_auth(auth: &str, path: &std::path::Path) -> Result<Credential, AuthError> {
    use base64::Engine as _;
    let bad = || {
        AuthError::Config(format!(
            "an auth entry in {} is not base64 user:password",
            path.display()
        ))
    };
    let text = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (user, secret) = text.split_once(':').ok_or_else(bad)?;
    Ok(Credential {
        user: user.to_string(),
        secret: Secret::new(secret),
        source: path.display().to_string(),
    })
}

/// `docker-credential-NAME get`, the server URL on stdin, JSON on stdout.
/// A helper that has nothing for the registry says so and exits non-zero
/// ("credentials not found"): no credential, not an error.
fn helper_get(helper: &str, server: &str, registry: &str) -> Result<Option<Credential>, AuthError> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if said.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        // What a helper says on failure is not echoed: it could hold
        // anything. The exit status is enough to act on.
        return Err(fail(format!("it exited with {}", out.status)));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("its answer is not the credential helper protocol's JSON".into()))?;
    if answer.username == "<token>" {
        return Err(fail(
            "it holds an identity token (OAuth2 refresh token), which fogswarm does not exchange yet; give a user and token instead".into(),
        ));
    }
    Ok(Some(Credential {
        user: answer.username,
        secret: Secret::new(answer.secret),
        source: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn config(json: serde_json::Value) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, json.to_string()).expect("write");
        (dir, path)
    }

    #[test]
    fn auths_entries_match_with_or_without_a_scheme() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bot:s3cret");
        let (_d, path) =
            config(serde_json::json!({"auths": {"https://reg.example:5000": {"auth": auth}}}));
        let c = from_docker_config("reg.example:5000", &path)
            .expect("ok")
            .expect("found");
        assert_eq!((c.user.as_str(), c.secret.expose()), ("bot", "s3cret"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug never shows the secret"
        );
        assert!(from_docker_config("other.example", &path)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_missing_helper_is_a_clear_error_and_bad_entries_are_named() {
        let (_d, path) =
            config(serde_json::json!({"credHelpers": {"reg.example": "no-such-helper-here"}}));
        let e = from_docker_config("reg.example", &path).expect_err("no helper");
        assert!(
            e.to_string()
                .contains("docker-credential-no-such-helper-here"),
            "{e}"
        );
        let (_d, path) = config(serde_json::json!({"auths": {"reg.example": {"auth": "%%%"}}}));
        let e = from_docker_config("reg.example", &path).expect_err("bad base64");
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn explicit_credentials_need_both_halves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").expect("write");
        let both = Explicit {
            user: Some("ci".into()),
            token_file: Some(token.clone()),
        };
        let c = both.resolve().expect("ok").expect("some");
        assert_eq!(
            (c.user.as_str(), c.secret.expose(), c.source.as_str()),
            ("ci", "tok", "--registry-token-file")
        );
        let half = Explicit {
            user: None,
            token_file: Some(token),
        };
        // FOGSWARM_REGISTRY_USER is not set in the test environment.
        if std::env::var("FOGSWARM_REGISTRY_USER").is_err() {
            assert!(half.resolve().is_err());
        }
    }
}
