//! Open log requests and the lines agents post for them (see
//! `fogswarm_protocol::logs`): `service logs`, answered by the swarm's
//! raft leader, and `device logs`, an agent's own lines, answered by that
//! device. Both live in the database so that any replica can serve the
//! reader and the agent alike.

use super::{bump, from_json, json_of, now, Result, Store, StoreError, Touched};
use crate::db::{params, Tx};
use fogswarm_protocol::logs::*;

fn gone(id: &str) -> StoreError {
    StoreError::Gone(format!(
        "log request {id} is closed or expired (nobody read it for {LOG_REQUEST_TTL_SECS}s)"
    ))
}

/// Requests nobody reads any more go, with their lines.
fn expire(tx: &Tx<'_>) -> Result<()> {
    let at = now();
    tx.execute(
        "DELETE FROM log_lines WHERE request IN (SELECT id FROM log_requests WHERE expires_at < $1)",
        params![at],
    )?;
    tx.execute(
        "DELETE FROM log_requests WHERE expires_at < $1",
        params![at],
    )?;
    Ok(())
}

/// Whose log a request reads: a swarm's service, or one device's agent.
#[derive(Debug, Clone, Copy)]
pub enum LogScope<'a> {
    Swarm(&'a str),
    Device(&'a str),
}

impl LogScope<'_> {
    /// The condition on `log_requests` that keeps a request in scope
    /// (`$2` is the scope's name).
    fn condition(self) -> &'static str {
        match self {
            LogScope::Swarm(_) => "swarm = $2 AND device IS NULL",
            LogScope::Device(_) => "device = $2",
        }
    }

    fn value(self) -> String {
        match self {
            LogScope::Swarm(v) | LogScope::Device(v) => v.to_string(),
        }
    }
}

impl Store {
    /// Opens a request for a device's own agent log lines; the device sees
    /// it in its config answer at its next pass.
    pub fn open_agent_logs(&self, device: &str, options: &LogOptions) -> Result<LogsOpened> {
        options.validate()?;
        options
            .since
            .is_none()
            .then_some(())
            .ok_or_else(|| StoreError::Invalid {
                field: Some("since".into()),
                message: "an agent keeps its recent lines only; use tail".into(),
            })?;
        let id = crate::secrets::random_token("log").expose()[4..28].to_string();
        self.write(|tx| {
            let view = super::devices::device_view(tx, device)?;
            expire(tx)?;
            tx.execute(
                "INSERT INTO log_requests (id, swarm, service, options, expires_at, device) VALUES ($1, $2, '', $3, $4, $5)",
                params![&id, &view.swarm, json_of(options), now() + LOG_REQUEST_TTL_SECS, device],
            )?;
            Ok(LogsOpened { id })
        })
    }

    /// Opens a request for a service's logs; the swarm's managers see it
    /// in the desired state (the revision moves to wake them).
    pub fn open_logs(
        &self,
        swarm: &str,
        service: &str,
        options: &LogOptions,
    ) -> Result<(LogsOpened, Touched)> {
        options.validate()?;
        let id = crate::secrets::random_token("log").expose()[4..28].to_string();
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let exists = tx.query_opt(
                "SELECT name FROM services WHERE swarm = $1 AND name = $2",
                params![swarm, service],
            )?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!(
                    "service {service} does not exist in swarm {swarm}"
                )));
            }
            expire(tx)?;
            tx.execute(
                "INSERT INTO log_requests (id, swarm, service, options, expires_at) VALUES ($1, $2, $3, $4, $5)",
                params![&id, swarm, service, json_of(options), now() + LOG_REQUEST_TTL_SECS],
            )?;
            bump(tx, swarm)?;
            Ok((LogsOpened { id: id.clone() }, vec![swarm.to_string()]))
        })
    }

    /// The lines after `after`; reading keeps the request alive.
    pub fn read_logs(&self, scope: LogScope<'_>, id: &str, after: u64) -> Result<LogsPage> {
        self.write(|tx| {
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT started, done, error FROM log_requests WHERE id = $1 AND {} AND expires_at >= $3",
                        scope.condition()
                    ),
                    params![id, scope.value(), now()],
                )?
                .ok_or_else(|| gone(id))?;
            let (started, done, error): (i64, i64, Option<String>) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            tx.execute(
                "UPDATE log_requests SET expires_at = $1 WHERE id = $2",
                params![now() + LOG_REQUEST_TTL_SECS, id],
            )?;
            let mut page = LogsPage {
                next: after,
                started: started != 0,
                error,
                ..Default::default()
            };
            for r in tx.query(
                "SELECT seq, line FROM log_lines WHERE request = $1 AND seq > $2 ORDER BY seq LIMIT 2000",
                params![id, after as i64],
            )? {
                page.next = r.get::<i64>(0)? as u64;
                page.lines.push(r.get(1)?);
            }
            // Done only once the reader has every line.
            page.done = done != 0 && page.lines.len() < 2000;
            Ok(page)
        })
    }

    pub fn close_logs(&self, scope: LogScope<'_>, id: &str) -> Result<()> {
        let condition = scope.condition();
        self.write(|tx| {
            tx.execute(
                &format!("DELETE FROM log_lines WHERE request IN (SELECT id FROM log_requests WHERE id = $1 AND {condition})"),
                params![id, scope.value()],
            )?;
            tx.execute(
                &format!("DELETE FROM log_requests WHERE id = $1 AND {condition}"),
                params![id, scope.value()],
            )?;
            Ok(())
        })
    }

    /// Lines for a request: a service's from a manager of its swarm, an
    /// agent's from that device.
    pub fn post_log_chunk(&self, device: &str, id: &str, chunk: &LogChunk) -> Result<()> {
        self.write(|tx| {
            let row = tx
                .query_opt(
                    "SELECT last_seq, swarm, device FROM log_requests WHERE id = $1 AND expires_at >= $2",
                    params![id, now()],
                )?
                .ok_or_else(|| gone(id))?;
            let (swarm, target): (String, Option<String>) = (row.get(1)?, row.get(2)?);
            match &target {
                Some(target) if target != device => {
                    return Err(StoreError::Forbidden(format!(
                        "log request {id} is for another device's agent"
                    )))
                }
                Some(_) => {}
                None => {
                    let view = super::devices::device_view(tx, device)?;
                    if !view.role.is_manager() || view.swarm != swarm {
                        return Err(StoreError::Forbidden(format!(
                            "device {device} is not a manager of swarm {swarm}; only managers answer service log requests"
                        )));
                    }
                }
            }
            let mut seq: i64 = row.get(0)?;
            for line in &chunk.lines {
                seq += 1;
                let line = fogswarm_protocol::logs::capped_line(line);
                tx.execute(
                    "INSERT INTO log_lines (request, seq, line) VALUES ($1, $2, $3)",
                    params![id, seq, line.as_ref()],
                )?;
            }
            tx.execute(
                "DELETE FROM log_lines WHERE request = $1 AND seq <= $2",
                params![id, seq - MAX_LOG_LINES as i64],
            )?;
            tx.execute(
                "UPDATE log_requests SET last_seq = $1, started = 1,
                 done = CASE WHEN $2 = 1 THEN 1 ELSE done END,
                 error = COALESCE(CAST($3 AS TEXT), error) WHERE id = $4",
                params![seq, i64::from(chunk.done), &chunk.error, id],
            )?;
            Ok(())
        })
    }
}

/// Requests for `device`'s own agent lines: open, not yet done.
pub(super) fn agent_requests(tx: &Tx<'_>, device: &str) -> Result<Vec<AgentLogRequest>> {
    tx.query(
        "SELECT id, options FROM log_requests WHERE device = $1 AND done = 0 AND expires_at >= $2 ORDER BY id",
        params![device, now()],
    )?
    .iter()
    .map(|r| {
        Ok(AgentLogRequest {
            id: r.get(0)?,
            options: from_json(&r.get::<String>(1)?)?,
        })
    })
    .collect()
}

/// Requests the swarm's raft leader should answer: open, not yet done.
pub(super) fn open_requests(tx: &Tx<'_>, swarm: &str) -> Result<Vec<LogRequest>> {
    tx.query(
        "SELECT id, service, options FROM log_requests WHERE swarm = $1 AND device IS NULL AND done = 0 AND expires_at >= $2 ORDER BY id",
        params![swarm, now()],
    )?
    .iter()
    .map(|r| {
        Ok(LogRequest {
            id: r.get(0)?,
            service: r.get(1)?,
            options: from_json(&r.get::<String>(2)?)?,
        })
    })
    .collect()
}
