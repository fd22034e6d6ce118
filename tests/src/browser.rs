//! A real browser for the dashboard's tests: Debian's headless Chromium,
//! driven through ChromeDriver (W3C WebDriver) with fantoccini. Dropping
//! the [`Browser`] stops ChromeDriver and the browser with it.

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 900;

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium session.
    pub async fn start() -> Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Its own process group: dropping the Browser stops ChromeDriver
        // and the Chromium it started, even when the test failed before
        // closing the session.
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (apt-get install chromium-driver)")?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                // The lab's server has a certificate from its own CA.
                "--ignore-certificate-errors",
                format!("--window-size={WIDTH},{HEIGHT}"),
            ]}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..50 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Ok(Browser { client, driver }),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = driver.kill();
        bail!("no WebDriver session: {}", last.unwrap_or_default())
    }

    /// Opens `url`, again when Chromium aborted it for a network change
    /// (Docker adding or removing a bridge meanwhile does that).
    pub async fn goto(&self, url: &str) -> Result<()> {
        for _ in 0..5 {
            self.client
                .goto(url)
                .await
                .with_context(|| format!("opening {url}"))?;
            if !self.html().await?.contains("ERR_NETWORK_CHANGED") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("opening {url}: the network kept changing")
    }

    /// Waits up to 10 s for the browser to be at `path` (a click's
    /// navigation completes after the click returns).
    pub async fn wait_for_path(&self, path: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.client.current_url().await?;
            if now.path() == path {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("at {now}, not {path}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's whole HTML as the browser has it now.
    pub async fn html(&self) -> Result<String> {
        Ok(self.client.source().await?)
    }

    /// The text of the first element `css` finds, waiting up to 10 s
    /// for it (a click's navigation may still be on its way).
    pub async fn text(&self, css: &str) -> Result<String> {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => Ok(element.text().await?),
            Err(e) => bail!(
                "no {css} ({e}) in:\n{}",
                self.html().await.unwrap_or_default()
            ),
        }
    }

    pub async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let field = self.client.find(Locator::Css(css)).await?;
        field.clear().await?;
        field.send_keys(value).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?
            .click()
            .await?;
        Ok(())
    }

    pub async fn script(&self, js: &str) -> Result<serde_json::Value> {
        Ok(self.client.execute(js, vec![]).await?)
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.client.screenshot().await?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Width and height of a PNG, from its IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}
