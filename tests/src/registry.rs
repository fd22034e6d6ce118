//! A real registry (Debian's docker-registry) on a free loopback port, for
//! tests that need the host engine to pull (it trusts 127.0.0.0/8 registries
//! over plain HTTP) or a registry with htpasswd authentication.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};

pub struct LocalRegistry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts a registry; with `user`, it requires that user's password
    /// (htpasswd, bcrypt).
    pub fn start(user: Option<(&str, &str)>) -> Result<LocalRegistry> {
        Self::start_with(user, false, "")
    }

    /// An htpasswd registry listening on `host` (a lab's gateway, say, so
    /// the lab's devices can pull from it).
    pub fn start_on(host: &str, user: (&str, &str)) -> Result<LocalRegistry> {
        Self::start_at(host, Some(user), false, "")
    }

    /// A registry with an `auth:` section of the caller's (the token
    /// flow, say).
    pub fn start_with_auth(auth: &str) -> Result<LocalRegistry> {
        Self::start_with(None, false, auth)
    }

    /// A registry in read-only maintenance mode: it answers reads and
    /// refuses every upload, a real failure in the middle of a push.
    pub fn start_read_only() -> Result<LocalRegistry> {
        Self::start_with(None, true, "")
    }

    fn start_with(
        user: Option<(&str, &str)>,
        read_only: bool,
        auth: &str,
    ) -> Result<LocalRegistry> {
        Self::start_at("127.0.0.1", user, read_only, auth)
    }

    fn start_at(
        host: &str,
        user: Option<(&str, &str)>,
        read_only: bool,
        auth: &str,
    ) -> Result<LocalRegistry> {
        let dir = tempfile::tempdir()?;
        let port = {
            let l = std::net::TcpListener::bind(format!("{host}:0"))?;
            l.local_addr()?.port()
        };
        let addr = format!("{host}:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{}http:\n  addr: {addr}\n",
            dir.path().join("storage").display(),
            if read_only { "  maintenance:\n    readonly:\n      enabled: true\n" } else { "" }
        );
        if let Some((name, password)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", name, password])
                .output()
                .context("htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed");
            }
            std::fs::write(dir.path().join("htpasswd"), &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: fogswarm-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        config.push_str(auth);
        std::fs::write(dir.path().join("config.yml"), config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = LocalRegistry {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return Ok(registry);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("the test registry did not start on {}", registry.addr)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
