//! Helpers for the end-to-end tests: run the real `fogswarm` binary, bring a
//! lab up and always take it down, reach device engines, build static
//! binaries.
//!
//! Tests drive the binary rather than the library so that what is tested is
//! what users run (exit codes, messages, the registry's supervisor).

pub mod browser;
pub mod compat;
pub mod fleet;
pub mod link;
pub mod pki;
pub mod postgres;
pub mod prometheus;
pub mod registry;
pub mod server;
pub mod token_registry;

use anyhow::{bail, Context, Result};
use fogswarm_client::engine::{Engine, EngineAddr};
use fogswarm_lab::{DeviceStatus, LabStatus};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (this crate lives in tests/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace, built for the host.
///
/// It is (re)built here with cargo, so a test never runs a stale binary; in
/// the workspace's own target dir, which costs nothing when it is fresh
/// (cargo releases its lock before it runs test binaries).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    build(package, &["--bin", bin], None);
    target_dir().join("debug").join(bin)
}

/// A static binary of `package` for a Rust target, built with the
/// size-tuned profile the device images use.
pub fn static_binary(package: &str, target: &str) -> PathBuf {
    build(package, &["--profile", "release-small"], Some(target));
    target_dir()
        .join(target)
        .join("release-small")
        .join(package)
}

/// The independent cosign verifier (`tests/cosign-verify`, sigstore-rs),
/// built on first use into its own target directory.
pub fn cosign_verifier() -> PathBuf {
    let manifest = workspace_root().join("tests/cosign-verify/Cargo.toml");
    let dir = target_dir().join("cosign-verify");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&dir)
        .output()
        .expect("running cargo build");
    assert!(
        out.status.success(),
        "building tests/cosign-verify failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("debug").join("cosign-verify")
}

/// Runs the host's `docker` CLI; answers its standard output, or fails
/// with its standard error.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

fn build(package: &str, args: &[&str], target: Option<&str>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir());
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().expect("running cargo build");
    assert!(
        out.status.success(),
        "cargo build -p {package} {args:?} --target {target:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `fogswarm` binary under test.
pub fn fogswarm() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_binary("fogswarm", "fogswarm"))
        .clone()
}

/// Output of a command, with the parts tests look at.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A lab brought up by the real binary, under its own temporary state dir,
/// taken down when dropped (also when the test fails).
pub struct Lab {
    pub name: String,
    pub root: tempfile::TempDir,
    down: bool,
}

impl Lab {
    /// `fogswarm lab up --name NAME --subnet SUBNET ARGS...`, which must
    /// succeed.
    pub fn up(name: &str, subnet: &str, args: &[&str]) -> Result<Lab> {
        Self::up_running(name, subnet, args, None)
    }

    /// A lab whose server and amd64 agents are these binaries (another
    /// release's, say) instead of this build's.
    pub fn up_with(
        name: &str,
        subnet: &str,
        args: &[&str],
        server: &Path,
        agent_amd64: &Path,
    ) -> Result<Lab> {
        Self::up_running(name, subnet, args, Some((server, agent_amd64)))
    }

    fn up_running(
        name: &str,
        subnet: &str,
        args: &[&str],
        binaries: Option<(&Path, &Path)>,
    ) -> Result<Lab> {
        let root = tempfile::Builder::new().prefix("fsl").tempdir()?;
        let lab = Lab {
            name: name.to_string(),
            root,
            down: false,
        };
        if !args.contains(&"--bare") {
            // The real binaries the lab runs: the server on the host, the
            // static agent in every device.
            let (server, agent) = match binaries {
                Some((server, agent)) => (server.to_path_buf(), agent.to_path_buf()),
                None => (
                    server::server_binary(),
                    static_binary("fogswarm-agent", "x86_64-unknown-linux-musl"),
                ),
            };
            std::env::set_var("FOGSWARM_SERVER_BIN", server);
            std::env::set_var("FOGSWARM_AGENT_BIN_AMD64", agent);
            if args.iter().any(|a| a.starts_with("--arm64")) {
                std::env::set_var(
                    "FOGSWARM_AGENT_BIN_ARM64",
                    static_binary("fogswarm-agent", "aarch64-unknown-linux-musl"),
                );
            }
        }
        let run = lab.fogswarm(&["lab", "up", "--name", name, "--subnet", subnet], args);
        if run.code != 0 {
            bail!("lab up failed ({}):\n{}", run.code, run.stderr);
        }
        Ok(lab)
    }

    /// Runs `fogswarm FIXED ARGS` with this lab's state dir.
    pub fn fogswarm(&self, fixed: &[&str], args: &[&str]) -> Run {
        Command::new(fogswarm())
            .args(fixed)
            .args(args)
            .env("FOGSWARM_LAB_DIR", self.root.path())
            .output()
            .expect("running fogswarm")
            .into()
    }

    /// Runs the operator's CLI against this lab's server (with `stdin`
    /// fed to it when given).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Result<Run> {
        let mut cmd = Command::new(fogswarm());
        cmd.args(args)
            .env("FOGSWARM_LAB_DIR", self.root.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in self.cli_env()? {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?.into())
    }

    /// Like `cli` without input, failing (with its output) unless it exits 0.
    pub fn cli_ok(&self, args: &[&str]) -> Result<Run> {
        let run = self.cli(args, None)?;
        if run.code != 0 {
            bail!(
                "fogswarm {args:?} exited {}:\n{}\n{}",
                run.code,
                run.stdout,
                run.stderr
            );
        }
        Ok(run)
    }

    /// Builds fog-hello (amd64) with the image builder, `FOG_VERSION` set
    /// to `tag`, and pushes it to `registry` (with any `extra` build
    /// flags); answers the reference.
    pub fn build_hello(&self, registry: &str, tag: &str, extra: &[&str]) -> Result<String> {
        let binary = static_binary("fog-hello", "x86_64-unknown-linux-musl");
        let reference = format!("{registry}/fog-hello:{tag}");
        let version = format!("FOG_VERSION={tag}");
        let mut args = vec!["--env", version.as_str()];
        args.extend_from_slice(extra);
        self.push_binary(&binary, &reference, &args)?;
        Ok(reference)
    }

    /// Builds an amd64 image of `binary` with the image builder (with any
    /// `extra` build flags) and pushes it as `reference` (plain HTTP).
    pub fn push_binary(&self, binary: &Path, reference: &str, extra: &[&str]) -> Result<()> {
        let binary_arg = format!("linux/amd64={}", binary.display());
        let mut args = vec![
            "image",
            "build",
            "--binary",
            &binary_arg,
            "--tag",
            reference,
            "--push",
            "--insecure",
        ];
        args.extend_from_slice(extra);
        let run = self.fogswarm(&args, &[]);
        if run.code != 0 {
            bail!("image build {reference}: {}", run.stderr);
        }
        Ok(())
    }

    pub fn status(&self) -> Result<LabStatus> {
        let run = self.fogswarm(&["lab", "status", "--name", &self.name, "--json"], &[]);
        if run.code != 0 {
            bail!("lab status failed: {}", run.stderr);
        }
        serde_json::from_str(&run.stdout).context("parsing lab status --json")
    }

    /// What the server shows of a device (`device show --json`).
    pub fn device_view(&self, id: &str) -> Result<fogswarm_protocol::api::DeviceView> {
        Ok(serde_json::from_str(
            &self.cli_ok(&["device", "show", id, "--json"])?.stdout,
        )?)
    }

    pub fn device(&self, name: &str) -> Result<DeviceStatus> {
        self.status()?
            .devices
            .into_iter()
            .find(|d| d.name == name)
            .with_context(|| format!("no device {name}"))
    }

    /// A client for a device's own engine.
    pub async fn engine(&self, device: &str) -> Result<Engine> {
        Engine::connect(&EngineAddr::socket(self.device(device)?.socket)).await
    }

    /// An operator client for the lab's config server.
    pub fn admin(&self) -> Result<fogswarm_client::Client> {
        let server = self
            .status()?
            .server
            .context("this lab has no config server")?;
        let token = std::fs::read_to_string(&server.admin_token_file)?;
        let endpoint = fogswarm_client::Endpoint::new(&server.url, Some(&server.ca_fingerprint))?;
        Ok(fogswarm_client::Client::new(
            &endpoint,
            Some(fogswarm_protocol::api::Secret::new(token.trim())),
        )?)
    }

    /// Environment for running the `fogswarm` CLI against the lab's server.
    pub fn cli_env(&self) -> Result<Vec<(String, String)>> {
        let server = self
            .status()?
            .server
            .context("this lab has no config server")?;
        Ok(vec![
            ("FOGSWARM_SERVER".into(), server.url),
            ("FOGSWARM_CA_FINGERPRINT".into(), server.ca_fingerprint),
            (
                "FOGSWARM_TOKEN_FILE".into(),
                server.admin_token_file.display().to_string(),
            ),
        ])
    }

    /// The lab server's log.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join(&self.name).join("server.log"))
            .unwrap_or_default()
    }

    /// The agent's log of a device (kept in its host directory).
    pub fn agent_log(&self, device: &str) -> String {
        std::fs::read_to_string(
            self.root
                .path()
                .join(&self.name)
                .join("devices")
                .join(device)
                .join("agent.log"),
        )
        .unwrap_or_default()
    }

    /// A device's directory on the host (its /lab).
    pub fn device_dir(&self, device: &str) -> PathBuf {
        self.root
            .path()
            .join(&self.name)
            .join("devices")
            .join(device)
    }

    /// Runs a command in a device; answers its output, failing on a
    /// non-zero exit.
    pub fn exec(&self, device: &str, cmd: &[&str]) -> Result<String> {
        let run = self.fogswarm(&["lab", "exec", "--name", &self.name, device, "--"], cmd);
        if run.code != 0 {
            bail!("{device}: {cmd:?} exited {}: {}", run.code, run.stderr);
        }
        Ok(run.stdout)
    }

    /// `fogswarm lab down`, answering its result; after it the drop does
    /// nothing.
    pub fn down(&mut self) -> Run {
        self.down = true;
        self.fogswarm(&["lab", "down", "--name", &self.name], &[])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let run = self.down();
            if run.code != 0 {
                eprintln!("lab {} down after test: {}", self.name, run.stderr);
            }
        }
    }
}

/// A reqwest client for raw requests in tests (bad input, metrics).
pub fn http() -> reqwest::Client {
    fogswarm_client::ensure_crypto_provider();
    reqwest::Client::new()
}

/// Heavy end-to-end tests (labs of several devices, each running an engine)
/// take this lock, so they run one at a time on 2 cores.
/// Held for a whole test, across awaits: tokio's mutex works from any
/// runtime (each test has its own).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Builds fog-hello as a static FROM-scratch image on the host engine and
/// pushes it to the lab registry; answers the reference devices pull.
pub fn push_fog_hello(registry: &str, tag: &str) -> Result<String> {
    let binary = static_binary("fog-hello", "x86_64-unknown-linux-musl");
    let context = tempfile::tempdir()?;
    std::fs::copy(&binary, context.path().join("fog-hello"))?;
    let local_tag = format!("fogswarm-e2e/fog-hello:{tag}");
    let build = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &local_tag, "-f"])
        .arg(workspace_root().join("Dockerfiles/Dockerfile.fog-hello"))
        .arg(context.path())
        .output()?;
    if !build.status.success() {
        bail!("docker build: {}", String::from_utf8_lossy(&build.stderr));
    }
    let remote = format!("{registry}/fog-hello:{tag}");
    let push = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("docker-daemon:{local_tag}"))
        .arg(format!("docker://{remote}"))
        .output()?;
    if !push.status.success() {
        bail!("skopeo copy: {}", String::from_utf8_lossy(&push.stderr));
    }
    Ok(remote)
}

/// A plain HTTP GET with std only, answering status and body. Tests use it
/// to reach services on device addresses.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr.parse()?, std::time::Duration::from_secs(3))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no header end in response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status in response")?
        .parse()?;
    Ok((status, body.to_string()))
}

/// Retries `f` every 500 ms until it succeeds or `secs` pass; answers the
/// last error on timeout.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {secs}s")))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}
