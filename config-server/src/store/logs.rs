//! Open `service logs` requests and the lines the raft leader's agent
//! posts for them (see `fogswarm_protocol::logs`). Both live in the
//! database so that any replica can serve the reader and the agent alike.

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

impl Store {
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
    pub fn read_logs(&self, swarm: &str, id: &str, after: u64) -> Result<LogsPage> {
        self.write(|tx| {
            let row = tx
                .query_opt(
                    "SELECT started, done, error FROM log_requests WHERE id = $1 AND swarm = $2 AND expires_at >= $3",
                    params![id, swarm, now()],
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

    pub fn close_logs(&self, swarm: &str, id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM log_lines WHERE request IN (SELECT id FROM log_requests WHERE id = $1 AND swarm = $2)",
                params![id, swarm],
            )?;
            tx.execute(
                "DELETE FROM log_requests WHERE id = $1 AND swarm = $2",
                params![id, swarm],
            )?;
            Ok(())
        })
    }

    /// Lines from a manager of the request's swarm.
    pub fn post_log_chunk(&self, device: &str, id: &str, chunk: &LogChunk) -> Result<()> {
        let swarm = self.manager_swarm(device)?;
        self.write(|tx| {
            let row = tx
                .query_opt(
                    "SELECT last_seq FROM log_requests WHERE id = $1 AND swarm = $2 AND expires_at >= $3",
                    params![id, &swarm, now()],
                )?
                .ok_or_else(|| gone(id))?;
            let mut seq: i64 = row.get(0)?;
            for line in &chunk.lines {
                seq += 1;
                tx.execute(
                    "INSERT INTO log_lines (request, seq, line) VALUES ($1, $2, $3)",
                    params![id, seq, line],
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

/// Requests the swarm's raft leader should answer: open, not yet done.
pub(super) fn open_requests(tx: &Tx<'_>, swarm: &str) -> Result<Vec<LogRequest>> {
    tx.query(
        "SELECT id, service, options FROM log_requests WHERE swarm = $1 AND done = 0 AND expires_at >= $2 ORDER BY id",
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
