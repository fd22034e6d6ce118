//! `service logs` without an inbound connection to any device: the
//! operator opens a log request on the server; the raft leader's agent,
//! which sees it in the desired state, reads the tasks' logs from its
//! engine (swarm streams them from every node) and posts the lines; the
//! CLI pages through them. A request lives while someone reads it: a
//! follow request that nobody polls for a while expires, and the agent,
//! told so, stops.

use crate::validate::ValidationError;
use serde::{Deserialize, Serialize};

/// How long a request lives after its reader's last poll.
pub const LOG_REQUEST_TTL_SECS: i64 = 30;
/// Lines a request keeps at most (the oldest go first for a follow).
pub const MAX_LOG_LINES: u64 = 20_000;
/// A stored log line's length at most (bytes); longer lines are cut there
/// and marked, so one runaway line cannot fill the database.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// `line`, cut to [`MAX_LINE_BYTES`] at a character boundary and marked.
pub fn capped_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LINE_BYTES {
        return line.into();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut: {} bytes in all]", &line[..end], line.len()).into()
}

/// `docker service logs`' options.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    #[serde(default)]
    pub follow: bool,
    /// Lines from the end of each task's log (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only lines newer than this: a duration back from now (`10m`) or a
    /// Unix time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default)]
    pub timestamps: bool,
}

impl LogOptions {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.tail.is_some_and(|t| t > MAX_LOG_LINES) {
            return Err(ValidationError::new(
                "tail",
                format!("at most {MAX_LOG_LINES} lines"),
            ));
        }
        if let Some(s) = &self.since {
            since_seconds(s, 0).map_err(|m| ValidationError::new("since", m))?;
        }
        Ok(())
    }
}

/// `--since` as a Unix time, given the time now.
pub fn since_seconds(since: &str, now: i64) -> Result<i64, String> {
    if let Ok(t) = since.parse::<i64>() {
        return Ok(t);
    }
    crate::service::parse_duration(since)
        .map(|nanos| now - (nanos / 1_000_000_000) as i64)
        .map_err(|_| {
            format!("{since:?}: expected a duration back from now (10m, 1h30m) or a Unix time")
        })
}

/// An open log request, as the raft leader's agent sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub id: String,
    pub service: String,
    pub options: LogOptions,
}

/// An open request for an agent's own log lines, as the device sees it in
/// its config answer. `tail` limits the lines already kept; `follow` keeps
/// new ones coming until the request is gone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogRequest {
    pub id: String,
    pub options: LogOptions,
}

/// `POST /v1/logs/{id}`: lines from the agent (410 once the request is
/// gone: the agent stops).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    #[serde(default)]
    pub lines: Vec<String>,
    /// No more lines will come (every task's log ended).
    #[serde(default)]
    pub done: bool,
    /// Why the logs could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST .../services/{service}/logs` answers the request's id.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsOpened {
    pub id: String,
}

/// `GET .../logs/{id}?after=N`: the lines after the reader's last.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsPage {
    pub lines: Vec<String>,
    /// Pass as `after` next time.
    pub next: u64,
    /// The agent has sent everything there is.
    pub done: bool,
    /// A manager picked the request up.
    pub started: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_as_duration_or_time() {
        assert_eq!(since_seconds("10m", 1000), Ok(400));
        assert_eq!(since_seconds("1700000000", 5), Ok(1_700_000_000));
        assert!(since_seconds("yesterday", 0).is_err());
        let bad = LogOptions {
            tail: Some(MAX_LOG_LINES + 1),
            ..Default::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("tail".to_string()));
    }
}
