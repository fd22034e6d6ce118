//! The agent's own recent log lines, kept in memory (the last
//! [`KEPT`]) for `fogswarm device logs`: the tracing subscriber writes
//! every line here as well as to stderr, and the agent posts them to the
//! server when a request for them shows up in its config answer. No
//! inbound connection to the device is needed, and nothing is kept on
//! disk (an SD card's writes are precious).
//!
//! Secrets never get here in the first place (secret types print as
//! `[redacted]`); as a second guard, anything shaped like a swarm join
//! token or a bearer credential is masked on the way in.

use fogswarm_client::Client;
use fogswarm_protocol::logs::{AgentLogRequest, LogChunk};
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Lines kept.
pub const KEPT: usize = 1000;
/// Characters kept of one line.
const LINE_CHARS: usize = 2000;

struct Journal {
    lines: VecDeque<(u64, String)>,
    next: u64,
}

fn journal() -> &'static Mutex<Journal> {
    static JOURNAL: OnceLock<Mutex<Journal>> = OnceLock::new();
    JOURNAL.get_or_init(|| {
        Mutex::new(Journal {
            lines: VecDeque::with_capacity(KEPT),
            next: 1,
        })
    })
}

/// Keeps one line (masked, shortened), dropping the oldest beyond [`KEPT`].
pub fn keep(line: &str) {
    let line: String = redact(line.trim_end()).chars().take(LINE_CHARS).collect();
    let mut j = journal().lock().unwrap_or_else(|p| p.into_inner());
    let seq = j.next;
    j.next += 1;
    if j.lines.len() == KEPT {
        j.lines.pop_front();
    }
    j.lines.push_back((seq, line));
}

/// The kept lines after `seq` (all with 0), oldest first.
pub fn after(seq: u64) -> Vec<(u64, String)> {
    let j = journal().lock().unwrap_or_else(|p| p.into_inner());
    j.lines.iter().filter(|(s, _)| *s > seq).cloned().collect()
}

/// The sequence number of the newest line (0 before any).
pub fn newest() -> u64 {
    journal().lock().unwrap_or_else(|p| p.into_inner()).next - 1
}

/// Masks swarm join tokens (`SWMTKN-1-...`) and bearer credentials.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let next = ["SWMTKN-", "Bearer ", "bearer "]
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, *m)))
            .min();
        let Some((at, marker)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + marker.len()]);
        out.push_str("[redacted]");
        let tail = &rest[at + marker.len()..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
}

/// The writer the tracing subscriber's second layer writes to.
#[derive(Clone, Copy, Default)]
pub struct Writer;

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines() {
            if !line.trim().is_empty() {
                keep(line);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Writer;
    fn make_writer(&'a self) -> Writer {
        Writer
    }
}

/// Answers one request: the kept lines (the last `tail` of them), then,
/// when following, new lines as they come, until the server says the
/// request is gone (its reader left). Logs nothing itself: its own lines
/// would feed it.
pub async fn ship(server: Client, request: AgentLogRequest) {
    let kept = after(0);
    let skip = request
        .options
        .tail
        .map_or(0, |t| kept.len().saturating_sub(t as usize));
    let mut batch: Vec<(u64, String)> = kept.into_iter().skip(skip).collect();
    let mut last = batch.last().map_or_else(newest, |(s, _)| *s);
    let follow = request.options.follow;
    let mut quiet_rounds = 0;
    loop {
        let chunk = LogChunk {
            lines: batch.iter().map(|(_, l)| l.clone()).collect(),
            done: !follow,
            error: None,
        };
        match server.post_log_chunk(&request.id, &chunk).await {
            Ok(()) => {}
            // Closed, expired, or not ours: stop.
            Err(e) if matches!(e.status(), Some(403 | 404 | 410)) => return,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        if !follow {
            return;
        }
        // New lines each second; an empty post every few seconds learns
        // whether the reader is still there.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            batch = after(last);
            quiet_rounds += 1;
            if !batch.is_empty() || quiet_rounds >= 5 {
                quiet_rounds = 0;
                break;
            }
        }
        if let Some((s, _)) = batch.last() {
            last = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_bearers_are_masked() {
        assert_eq!(
            redact("joining with SWMTKN-1-abc123-def456 at 10.0.0.1"),
            "joining with SWMTKN-[redacted] at 10.0.0.1"
        );
        assert_eq!(
            redact(r#"header "Authorization: Bearer fsd_s3cr3t", done"#),
            r#"header "Authorization: Bearer [redacted]", done"#
        );
        assert_eq!(redact("nothing here"), "nothing here");
    }

    #[test]
    fn the_journal_keeps_the_newest_lines_in_order() {
        let start = newest();
        for i in 0..(KEPT + 5) {
            keep(&format!("line {i} SWMTKN-1-zzz"));
        }
        let all = after(start);
        assert_eq!(all.len(), KEPT, "bounded");
        assert_eq!(all[0].1, "line 5 SWMTKN-[redacted]");
        assert_eq!(all.last().map(|l| l.0), Some(newest()));
        assert!(after(newest()).is_empty());
    }
}
