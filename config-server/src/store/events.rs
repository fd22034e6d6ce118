//! The event log: who did what, when. Written in the same transaction as
//! the change it describes, so the log never tells of a change that was
//! rolled back. Details never carry secrets.

use super::{now, Actor, Result, Store};
use crate::db::{params, Tx};
use fogswarm_protocol::api::Event;

impl Store {
    /// The newest `limit` events after `since_id`, oldest first.
    pub fn events(&self, since_id: i64, limit: u32, subject: Option<&str>) -> Result<Vec<Event>> {
        self.read(|tx| {
            let mut events = tx
                .query(
                    "SELECT id, at, actor, action, subject, detail FROM events
                     WHERE id > $1 AND (CAST($3 AS TEXT) IS NULL OR subject = $3) ORDER BY id DESC LIMIT $2",
                    params![since_id, limit, subject],
                )?
                .iter()
                .map(|r| {
                    Ok(Event {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        subject: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            events.reverse();
            Ok(events)
        })
    }

    pub fn log(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<()> {
        self.write(|tx| log_event(tx, actor, action, subject, detail))
    }
}

pub(super) fn log_event(
    tx: &Tx<'_>,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO events (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        params![now(), actor.as_string(), action, subject, detail],
    )?;
    Ok(())
}
