//! `fogswarm lab supervise`: keeps a lab service (the registry, the config
//! server) running as a host process, restarting it if it dies, and stops
//! it on SIGTERM. `lab down` finds supervisors by pid and checks their
//! command line first, since pids get reused.

use anyhow::{Context, Result};
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `fogswarm lab supervise --name LAB -- PROGRAM ARGS...` in the
/// background, its output appended to `log`; answers the supervisor's pid.
/// It runs in its own process group, so a Ctrl-C in the terminal that ran
/// `lab up` does not take the service down with it.
pub fn spawn<I, S>(
    fogswarm_exe: &Path,
    lab: &str,
    program: &Path,
    args: I,
    log: &Path,
) -> Result<u32>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(fogswarm_exe)
        .args(["lab", "supervise", "--name", lab, "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the supervisor for {}", program.display()))?;
    // The supervisor outlives us by design; dropping the handle does not
    // kill it.
    Ok(child.id())
}

/// Stops a supervisor (which stops its child), waiting up to 10s before
/// killing it. A pid that is no longer our supervisor is left alone.
pub fn stop(pid: u32, lab: &str) -> Result<()> {
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
