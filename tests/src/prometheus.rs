//! Debian's real Prometheus for tests, run with the monitoring kit's
//! configuration (`deploy/monitoring`) pointed at a server under test,
//! scraping every second; killed when dropped.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The monitoring kit's directory.
pub fn kit() -> PathBuf {
    crate::workspace_root().join("deploy/monitoring")
}

pub struct Prometheus {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Prometheus {
    /// Prometheus with the kit's configuration, its target replaced by
    /// `target` (HOST:PORT), over HTTPS trusting `ca_file` when given,
    /// with its state under `dir`.
    pub fn start(dir: &Path, target: &str, ca_file: Option<&Path>) -> Result<Prometheus> {
        let mut config = std::fs::read_to_string(kit().join("prometheus.yml"))?
            .replace("fogswarm-server:8443", target)
            .replace("scrape_interval: 30s", "scrape_interval: 1s")
            .replace(
                "  - alerts.yml",
                &format!("  - {}", kit().join("alerts.yml").display()),
            );
        if !config.contains(target) {
            bail!("the kit's target placeholder moved");
        }
        if let Some(ca) = ca_file {
            // The kit's commented TLS lines, switched on.
            config = config
                .replace("    scheme: http\n", "")
                .replace("    # scheme: https", "    scheme: https")
                .replace("    # tls_config:", "    tls_config:")
                .replace(
                    "    #   ca_file: /etc/prometheus/fogswarm-ca.pem",
                    &format!("      ca_file: {}", ca.display()),
                );
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus (apt-get install prometheus; scripts/test does)")?;
        Ok(Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}/api/v1"),
            log,
        })
    }

    /// GET an API path (`rules`, `targets`) as JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        fogswarm_client::ensure_crypto_provider();
        Ok(reqwest::get(format!("{}/{path}", self.api))
            .await?
            .json()
            .await?)
    }

    /// The value of the first series `expr` answers now, if any.
    pub async fn query(&self, expr: &str) -> Result<Option<String>> {
        fogswarm_client::ensure_crypto_provider();
        let url =
            reqwest::Url::parse_with_params(&format!("{}/query", self.api), [("query", expr)])?;
        let answer: serde_json::Value = reqwest::get(url).await?.json().await?;
        Ok(answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string))
    }

    /// What Prometheus logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
