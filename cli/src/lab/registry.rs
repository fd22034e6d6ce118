//! The lab's registry: Debian's docker-registry (CNCF distribution) as a host
//! process on the lab network's gateway address, kept running by a small
//! supervisor (`fogswarm lab supervise`) that restarts it if it dies.
//!
//! A host process rather than a container because no registry image can be
//! pulled here, and devices reach the gateway address directly.

use super::state::{LabPaths, RegistryRecord};
use anyhow::{bail, Context, Result};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const REGISTRY_PORT: u16 = 5000;

/// Writes the registry config and starts it under a supervisor; answers once
/// `GET /v2/` succeeds.
pub async fn start(
    paths: &LabPaths,
    lab: &str,
    gateway: Ipv4Addr,
    fogswarm_exe: &Path,
) -> Result<RegistryRecord> {
    let registry = super::tools::require_tool("docker-registry", "docker-registry")?;
    let dir = paths.registry_dir();
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let addr = format!("{gateway}:{REGISTRY_PORT}");
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(&storage, &addr))
        .with_context(|| format!("writing {}", config.display()))?;
    let log = dir.join("registry.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(fogswarm_exe)
        .args(["lab", "supervise", "--name", lab, "--"])
        .arg(&registry)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Own process group: a Ctrl-C in the terminal that ran `lab up`
        // must not take the registry down with it.
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "starting the registry supervisor {}",
                fogswarm_exe.display()
            )
        })?;
    let record = RegistryRecord {
        addr: addr.clone(),
        supervisor_pid: child.id(),
        storage,
        log: log.clone(),
    };
    // The supervisor outlives us by design; dropping the handle does not
    // kill it.
    drop(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if answers(&addr).await {
            return Ok(record);
        }
        if tokio::time::Instant::now() >= deadline {
            stop(&record, lab)?;
            bail!(
                "the registry did not answer on http://{addr}/v2/ within 20s; its log ends:\n{}",
                tail(&log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config_yaml(storage: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}

/// True when `GET http://addr/v2/` answers 200.
pub async fn answers(addr: &str) -> bool {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let Ok(uri) = format!("http://{addr}/v2/").parse::<hyper::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await,
        Ok(Ok(response)) if response.status() == 200
    )
}

/// Stops the supervisor (which stops the registry), waiting up to 10s
/// before killing it. A pid that is no longer our supervisor is left alone.
pub fn stop(record: &RegistryRecord, lab: &str) -> Result<()> {
    let pid = record.supervisor_pid;
    if !is_our_supervisor(pid, lab) {
        return Ok(());
    }
    signal(pid, libc::SIGTERM)?;
    for _ in 0..100 {
        if !alive(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(pid, libc::SIGKILL)
}

/// Whether `pid` is a live `fogswarm lab supervise --name LAB`.
pub fn is_our_supervisor(pid: u32, lab: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    alive(pid)
        && args
            .windows(3)
            .any(|w| w == [&b"supervise"[..], b"--name", lab.as_bytes()])
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("signalling process {pid}"));
        }
    }
    Ok(())
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `command` and restarts it whenever it exits, with a backoff that
/// grows to 30s while it keeps failing fast; SIGTERM or SIGINT stop the
/// child and end the loop.
pub async fn supervise(command: Vec<std::ffi::OsString>) -> Result<()> {
    use tokio::signal::unix::{signal as on_signal, SignalKind};
    let (program, args) = command.split_first().context("supervise needs a command")?;
    let mut term = on_signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = on_signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.to_string_lossy()))?;
        eprintln!(
            "supervise: started {} (pid {:?})",
            program.to_string_lossy(),
            child.id()
        );
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the child")?;
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_secs(1);
                }
                eprintln!("supervise: {} exited ({status}); restarting in {}s", program.to_string_lossy(), backoff.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = term.recv() => return stop_child(child).await,
            _ = int.recv() => return stop_child(child).await,
        }
    }
}

async fn stop_child(mut child: tokio::process::Child) -> Result<()> {
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGTERM)?;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    child.kill().await.context("killing the supervised child")
}
