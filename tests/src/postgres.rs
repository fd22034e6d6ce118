//! Throwaway PostgreSQL clusters for tests: initdb in a temporary
//! directory, run as the unprivileged `postgres` user on a free loopback
//! port, removed afterwards.
//!
//! The cluster is kept by a small shell supervisor whose standard input is
//! a pipe from the test process: it takes `stop` and `start` lines (for
//! crash and restart tests) and, when the pipe closes, because the cluster
//! was dropped or the test process ended however it ended, stops
//! PostgreSQL at once and deletes the directory. No cluster outlives its
//! tests, even those kept in a static.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    control: Mutex<Option<(ChildStdin, BufReader<ChildStdout>)>>,
    supervisor: Child,
}

/// The directory of Debian's PostgreSQL binaries (the newest installed).
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql; scripts/test does)")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

const SUPERVISOR: &str = r#"
set -u
B=$1; D=$2; P=$3; X=$4
start() { "$B/pg_ctl" -D "$D/pg" -o "-p $P -k $D -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off $X" -l "$D/pg.log" -w start >/dev/null; }
stop() { "$B/pg_ctl" -D "$D/pg" -m immediate stop >/dev/null 2>&1; }
"$B/initdb" -D "$D/pg" --auth=trust -U postgres >/dev/null || { echo "initdb failed"; exit 1; }
start || { echo "start failed: $(tail -5 "$D/pg.log")"; exit 1; }
echo ready
while read -r cmd; do
  case "$cmd" in
    stop) stop; echo ok ;;
    start) start && echo ok || echo "start failed" ;;
  esac
done
stop
rm -rf "$D"
"#;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgCluster {
    /// Initialises and starts a cluster (a few seconds).
    pub fn start() -> Result<PgCluster> {
        Self::start_with(None)
    }

    /// A cluster that also serves TLS (`ssl=on`) with this certificate
    /// chain and key (PEM), as a managed database does.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<PgCluster> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<PgCluster> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "fogswarm-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
            options = format!(
                "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            );
        }
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        if !chown.success() {
            bail!("chown postgres {} failed", dir.display());
        }
        let mut supervisor = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "sh",
                "-c",
                SUPERVISOR,
                "pg-supervisor",
            ])
            .arg(&bin)
            .arg(&dir)
            .arg(port.to_string())
            .arg(&options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the PostgreSQL supervisor (runuser)")?;
        let stdin = supervisor.stdin.take().context("supervisor stdin")?;
        let mut stdout = BufReader::new(supervisor.stdout.take().context("supervisor stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = supervisor.kill();
            bail!("PostgreSQL did not start: {}", line.trim());
        }
        Ok(PgCluster {
            port,
            dir,
            control: Mutex::new(Some((stdin, stdout))),
            supervisor,
        })
    }

    fn command(&self, cmd: &str) -> Result<()> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let (stdin, stdout) = control.as_mut().context("the cluster is gone")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ok" {
            bail!("PostgreSQL {cmd}: {}", line.trim());
        }
        Ok(())
    }

    /// Stops PostgreSQL at once, as a crash would (`-m immediate`).
    pub fn crash(&self) -> Result<()> {
        self.command("stop")
    }

    /// Starts it again after [`crash`](Self::crash).
    pub fn restart(&self) -> Result<()> {
        self.command("start")
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database; answers its URL.
    pub fn create_database(&self) -> Result<String> {
        let name = format!("fleet{}", NEXT.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL with psql; answers its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(bin_dir()?.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A PostgreSQL client program (pg_dump, pg_restore) from the same
    /// installation.
    pub fn tool(name: &str) -> Result<PathBuf> {
        Ok(bin_dir()?.join(name))
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Closing stdin makes the supervisor stop PostgreSQL and clean up.
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self.supervisor.wait();
    }
}

/// One cluster shared by the tests of a test binary, each test taking its
/// own database. It goes when the test process ends.
pub fn shared() -> &'static PgCluster {
    static SHARED: std::sync::OnceLock<PgCluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| PgCluster::start().expect("starting the shared PostgreSQL cluster"))
}
