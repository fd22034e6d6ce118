//! Reading a log request as it fills: `service logs` and `device logs`
//! both open one on the server, which an agent answers, and print its
//! lines as they come.

use anyhow::{bail, Result};
use fogswarm_client::{Client, LogSource};
use fogswarm_protocol::logs::LogOptions;
use std::io::Write;
use std::time::{Duration, Instant};

/// Opens a log request and prints its lines as they come; Ctrl-C closes
/// it (the agent stops following) and ends the command cleanly. When no
/// agent picks the request up within `patience`, fails with `unanswered`.
pub async fn print_logs(
    client: &Client,
    source: &LogSource,
    options: &LogOptions,
    patience: Duration,
    unanswered: &str,
) -> Result<()> {
    let opened = client.open_logs(source, options).await?;
    let started_at = Instant::now();
    let mut after = 0;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let page = client.read_logs(source, &opened.id, after).await?;
        {
            let mut out = std::io::stdout().lock();
            for line in &page.lines {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        after = page.next;
        if let Some(e) = &page.error {
            let _ = client.close_logs(source, &opened.id).await;
            bail!("{e}");
        }
        if page.done {
            let _ = client.close_logs(source, &opened.id).await;
            return Ok(());
        }
        if !page.started && started_at.elapsed() > patience {
            let _ = client.close_logs(source, &opened.id).await;
            bail!("{unanswered}");
        }
        let pause = if page.lines.is_empty() { 300 } else { 50 };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            _ = &mut interrupted => {
                let _ = client.close_logs(source, &opened.id).await;
                return Ok(());
            }
        }
    }
}
