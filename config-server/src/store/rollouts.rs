//! Agent rollouts: a new agent for a swarm's devices, in waves (a canary,
//! a share of the rest, then all). A device learns the agent it should run
//! from its `join` answer while its wave is on; it reports how the update
//! ended. A failure, or a device silent past the deadline, stops the
//! rollout where it is: later waves never start.
//!
//! Stored per device (`agent_rollout_devices`: its wave, place and state)
//! beside the rollout's own row, so a device's outcome is one row's
//! update and its config answer one row's lookup; the whole plan as one
//! JSON value (as before issue 26) was read, parsed and rewritten at
//! every report of every device of a 100,000-device swarm.

use super::devices::device_rows;
use super::events::log_event;
use super::{from_json, now, Actor, Result, Store, StoreError};
use crate::db::{params, values_cte, Tx, Value};
use fogswarm_protocol::api::{
    AgentRolloutCreate, AgentRolloutDevice, AgentRolloutView, AgentTarget, AgentUpdateOutcome,
    DeviceState,
};
use fogswarm_protocol::validate::{self, Role};

impl Store {
    /// Starts a rollout over the swarm's active devices: workers first (the
    /// canary is a worker when there is one), then managers, each by id.
    pub fn start_rollout(
        &self,
        actor: &Actor,
        swarm: &str,
        req: &AgentRolloutCreate,
    ) -> Result<AgentRolloutView> {
        validate::validate_swarm_name(swarm)?;
        let invalid = |field: &str, message: String| StoreError::Invalid {
            field: Some(field.into()),
            message,
        };
        if !req.image.contains("@sha256:") || req.image.len() > 512 {
            return Err(invalid(
                "image",
                format!("image {:?}: give a digest reference (REPO@sha256:...); `fogswarm agent rollout` resolves tags", req.image),
            ));
        }
        if !(1..=10).contains(&req.canary) {
            return Err(invalid(
                "canary",
                format!("canary {}: give 1 to 10 devices", req.canary),
            ));
        }
        if !(1..=100).contains(&req.wave_percent) {
            return Err(invalid(
                "wave_percent",
                format!("wave percent {}: give 1 to 100", req.wave_percent),
            ));
        }
        if !(10..=3600).contains(&req.deadline_secs) {
            return Err(invalid(
                "deadline_secs",
                format!("deadline {}s: give 10s to 1h", req.deadline_secs),
            ));
        }
        self.write(|tx| {
            super::swarms::require_swarm(tx, swarm)?;
            let previous = tx.query_opt(
                "SELECT rollout, state FROM agent_rollouts WHERE swarm = $1",
                params![swarm],
            )?;
            let number = match previous {
                Some(row) if row.get::<String>(1)? == "running" => {
                    return Err(StoreError::Conflict(format!(
                        "swarm {swarm} has agent rollout {} running; wait for it to end",
                        row.get::<i64>(0)?
                    )))
                }
                Some(row) => row.get::<i64>(0)? + 1,
                None => 1,
            };
            let mut devices: Vec<(bool, String)> = device_rows(tx, Some(swarm))?
                .into_iter()
                .map(|r| r.into_view())
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|d| d.state == DeviceState::Active && d.enrolled)
                .map(|d| (d.role != Role::Worker, d.id.to_string()))
                .collect();
            if devices.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "swarm {swarm} has no active device to update"
                )));
            }
            devices.sort();
            let ids: Vec<String> = devices.into_iter().map(|(_, id)| id).collect();
            let waves = waves_of(&ids, req.canary as usize, req.wave_percent as usize);
            let t = now();
            for table in ["agent_rollouts", "agent_rollout_devices"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE swarm = $1"),
                    params![swarm],
                )?;
            }
            tx.execute(
                "INSERT INTO agent_rollouts (swarm, rollout, image, state, wave, waves, deadline_secs, started_at, wave_started_at)
                 VALUES ($1, $2, $3, 'running', 0, '[]', $4, $5, $5)",
                params![swarm, number, &req.image, req.deadline_secs as i64, t],
            )?;
            let plan: Vec<Vec<AgentRolloutDevice>> = waves
                .iter()
                .enumerate()
                .map(|(i, wave)| {
                    wave.iter()
                        .map(|id| AgentRolloutDevice {
                            device: id.clone(),
                            state: if i == 0 { "updating" } else { "pending" }.into(),
                            detail: String::new(),
                        })
                        .collect()
                })
                .collect();
            insert_plan(tx, swarm, &plan)?;
            log_event(
                tx,
                actor,
                "agent.rollout",
                swarm,
                &format!(
                    "rollout {number}: {} to {} devices in waves of {}",
                    req.image,
                    ids.len(),
                    waves.iter().map(|w| w.len().to_string()).collect::<Vec<_>>().join(", ")
                ),
            )?;
            rollout_view(tx, swarm)
        })
    }

    /// The swarm's latest rollout.
    pub fn rollout(&self, swarm: &str) -> Result<AgentRolloutView> {
        validate::validate_swarm_name(swarm)?;
        self.read(|tx| rollout_view(tx, swarm))
    }

    /// Fails the devices of running rollouts that were silent past the
    /// deadline (and so the rollouts). Called every few seconds.
    pub fn rollout_deadlines(&self) -> Result<()> {
        let t = now();
        let late: Vec<String> = self.read(|tx| {
            tx.query(
                "SELECT swarm FROM agent_rollouts WHERE state = 'running' AND wave_started_at + deadline_secs < $1",
                params![t],
            )?
            .iter()
            .map(|r| r.get::<String>(0).map_err(StoreError::from))
            .collect()
        })?;
        for swarm in late {
            self.write(|tx| {
                let header = match rollout_header(tx, &swarm) {
                    Ok(h)
                        if h.state == "running"
                            && (h.wave_started_at + h.deadline_secs as i64) < t =>
                    {
                        h
                    }
                    _ => return Ok(()), // another replica was first
                };
                let silent: Vec<String> = tx
                    .query(
                        "SELECT device FROM agent_rollout_devices
                         WHERE swarm = $1 AND wave = $2 AND state = 'updating' ORDER BY position",
                        params![&swarm, header.wave as i64],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect::<std::result::Result<_, _>>()?;
                tx.execute(
                    "UPDATE agent_rollout_devices SET state = 'failed', detail = $3
                     WHERE swarm = $1 AND wave = $2 AND state = 'updating'",
                    params![
                        &swarm,
                        header.wave as i64,
                        format!("no healthy report within {}s", header.deadline_secs)
                    ],
                )?;
                stop(
                    tx,
                    &header,
                    &format!("{} silent past the deadline", silent.join(", ")),
                )
            })?;
        }
        Ok(())
    }

    /// Rollouts stored as one JSON plan (before issue 26) moved to rows
    /// per device; run at every start: a read, and a write only the first
    /// time, when there are such plans.
    pub(super) fn carry_over_rollout_plans(&self) -> Result<()> {
        const OLD: &str = "SELECT swarm, waves FROM agent_rollouts WHERE waves <> '[]'";
        if self.read(|tx| Ok(tx.query(OLD, params![])?.is_empty()))? {
            return Ok(());
        }
        self.write(|tx| {
            let old = tx.query(OLD, params![])?;
            for row in old.iter() {
                let swarm: String = row.get(0)?;
                let plan: Vec<Vec<AgentRolloutDevice>> = from_json(&row.get::<String>(1)?)?;
                tx.execute(
                    "DELETE FROM agent_rollout_devices WHERE swarm = $1",
                    params![&swarm],
                )?;
                insert_plan(tx, &swarm, &plan)?;
                tx.execute(
                    "UPDATE agent_rollouts SET waves = '[]' WHERE swarm = $1",
                    params![&swarm],
                )?;
            }
            Ok(())
        })
    }
}

/// A rollout's own row: everything but its devices.
#[derive(Debug, Clone)]
struct Header {
    swarm: String,
    rollout: u64,
    image: String,
    state: String,
    wave: u32,
    deadline_secs: u64,
    started_at: i64,
    wave_started_at: i64,
}

/// Writes a rollout's devices, wave by wave in order, a few hundred rows
/// a statement.
fn insert_plan(tx: &Tx<'_>, swarm: &str, plan: &[Vec<AgentRolloutDevice>]) -> Result<()> {
    let rows: Vec<(usize, &AgentRolloutDevice)> = plan
        .iter()
        .enumerate()
        .flat_map(|(wave, devices)| devices.iter().map(move |d| (wave, d)))
        .collect();
    for (c, chunk) in rows.chunks(super::presence::FLUSH_CHUNK).enumerate() {
        let mut values = Vec::with_capacity(chunk.len() * 6);
        for (i, (wave, d)) in chunk.iter().enumerate() {
            values.extend([
                Value::from(swarm),
                Value::from(d.device.as_str()),
                Value::from(*wave as i64),
                Value::from((c * super::presence::FLUSH_CHUNK + i) as i64),
                Value::from(d.state.as_str()),
                Value::from(d.detail.as_str()),
            ]);
        }
        let sql = values_cte(
            &[
                ("swarm", "TEXT"),
                ("device", "TEXT"),
                ("wave", "BIGINT"),
                ("position", "BIGINT"),
                ("state", "TEXT"),
                ("detail", "TEXT"),
            ],
            chunk.len(),
        )
            + "INSERT INTO agent_rollout_devices (swarm, device, wave, position, state, detail)
             SELECT swarm, device, wave, position, state, detail FROM v";
        tx.execute(&sql, &values)?;
    }
    Ok(())
}

/// Splits devices into waves: `canary`, then `percent` of the rest
/// (rounded up), then the rest; empty waves are left out.
fn waves_of(ids: &[String], canary: usize, percent: usize) -> Vec<Vec<String>> {
    let canary = canary.min(ids.len());
    let rest = ids.len() - canary;
    let second = (rest * percent).div_ceil(100);
    [
        &ids[..canary],
        &ids[canary..canary + second],
        &ids[canary + second..],
    ]
    .into_iter()
    .filter(|w| !w.is_empty())
    .map(|w| w.to_vec())
    .collect()
}

fn rollout_header(tx: &Tx<'_>, swarm: &str) -> Result<Header> {
    let row = tx
        .query_opt(
            "SELECT rollout, image, state, wave, deadline_secs, started_at, wave_started_at FROM agent_rollouts WHERE swarm = $1",
            params![swarm],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} has no agent rollout")))?;
    Ok(Header {
        swarm: swarm.to_string(),
        rollout: row.get::<i64>(0)? as u64,
        image: row.get(1)?,
        state: row.get(2)?,
        wave: row.get::<i64>(3)? as u32,
        deadline_secs: row.get::<i64>(4)? as u64,
        started_at: row.get(5)?,
        wave_started_at: row.get(6)?,
    })
}

/// The rollout with every device, wave by wave.
fn rollout_view(tx: &Tx<'_>, swarm: &str) -> Result<AgentRolloutView> {
    let header = rollout_header(tx, swarm)?;
    let mut waves: Vec<Vec<AgentRolloutDevice>> = Vec::new();
    for row in tx
        .query(
            "SELECT wave, device, state, detail FROM agent_rollout_devices
             WHERE swarm = $1 ORDER BY wave, position",
            params![swarm],
        )?
        .iter()
    {
        let wave = row.get::<i64>(0)? as usize;
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(AgentRolloutDevice {
            device: row.get(1)?,
            state: row.get(2)?,
            detail: row.get(3)?,
        });
    }
    Ok(AgentRolloutView {
        swarm: header.swarm,
        rollout: header.rollout,
        image: header.image,
        state: header.state,
        wave: header.wave,
        waves,
        deadline_secs: header.deadline_secs,
        started_at: header.started_at,
        wave_started_at: header.wave_started_at,
    })
}

fn save(tx: &Tx<'_>, header: &Header) -> Result<()> {
    tx.execute(
        "UPDATE agent_rollouts SET state = $2, wave = $3, wave_started_at = $4 WHERE swarm = $1",
        params![
            &header.swarm,
            &header.state,
            header.wave as i64,
            header.wave_started_at
        ],
    )?;
    Ok(())
}

/// How many waves a rollout has.
fn wave_count(tx: &Tx<'_>, swarm: &str) -> Result<u32> {
    let last: Option<i64> = tx
        .query_one(
            "SELECT MAX(wave) FROM agent_rollout_devices WHERE swarm = $1",
            params![swarm],
        )?
        .get(0)?;
    Ok(last.map_or(0, |w| w as u32 + 1))
}

/// Ends a rollout as failed where it is; later waves never start.
fn stop(tx: &Tx<'_>, header: &Header, why: &str) -> Result<()> {
    let mut header = header.clone();
    header.state = "failed".into();
    save(tx, &header)?;
    log_event(
        tx,
        &Actor::Server,
        "agent.rollout-failed",
        &header.swarm,
        &format!(
            "rollout {} stopped in wave {} of {}: {why}",
            header.rollout,
            header.wave + 1,
            wave_count(tx, &header.swarm)?
        ),
    )
}

/// The agent a device should be updating to: while a rollout runs and
/// the device's wave is on (its row says updating). One row's lookup.
pub(super) fn target_for(tx: &Tx<'_>, swarm: &str, device: &str) -> Result<Option<AgentTarget>> {
    let row = tx.query_opt(
        "SELECT r.rollout, r.image, r.deadline_secs
         FROM agent_rollouts r JOIN agent_rollout_devices d ON d.swarm = r.swarm
         WHERE r.swarm = $1 AND r.state = 'running' AND d.device = $2 AND d.state = 'updating'",
        params![swarm, device],
    )?;
    row.map(|r| {
        Ok(AgentTarget {
            rollout: r.get::<i64>(0)? as u64,
            image: r.get(1)?,
            deadline_secs: r.get::<i64>(2)? as u64,
        })
    })
    .transpose()
}

/// A device's report of how its update ended: the wave moves on when all
/// its devices are done; a failure stops the rollout.
pub(super) fn outcome(
    tx: &Tx<'_>,
    swarm: &str,
    device: &str,
    outcome: &AgentUpdateOutcome,
) -> Result<()> {
    let mut header = match rollout_header(tx, swarm) {
        Ok(h) if h.state == "running" && h.rollout == outcome.rollout => h,
        Ok(_) | Err(StoreError::NotFound(_)) => return Ok(()), // over, or another one
        Err(e) => return Err(e),
    };
    let detail: String = outcome
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    let updated = tx.execute(
        "UPDATE agent_rollout_devices SET state = $4, detail = $5
         WHERE swarm = $1 AND device = $2 AND wave = $3 AND state = 'updating'",
        params![
            swarm,
            device,
            header.wave as i64,
            if outcome.ok { "done" } else { "failed" },
            &detail
        ],
    )?;
    if updated == 0 {
        return Ok(()); // not in the wave that is on, or said already
    }
    let actor = Actor::Device(device.into());
    if !outcome.ok {
        log_event(tx, &actor, "agent.update-failed", device, &detail)?;
        return stop(tx, &header, &format!("{device}: {detail}"));
    }
    log_event(
        tx,
        &actor,
        "agent.updated",
        device,
        &format!("rollout {}: {}", header.rollout, header.image),
    )?;
    let undone: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM agent_rollout_devices WHERE swarm = $1 AND wave = $2 AND state <> 'done'",
            params![swarm, header.wave as i64],
        )?
        .get(0)?;
    if undone > 0 {
        return Ok(());
    }
    let waves = wave_count(tx, swarm)?;
    if header.wave + 1 < waves {
        header.wave += 1;
        header.wave_started_at = now();
        let started = tx.execute(
            "UPDATE agent_rollout_devices SET state = 'updating' WHERE swarm = $1 AND wave = $2",
            params![swarm, header.wave as i64],
        )?;
        log_event(
            tx,
            &Actor::Server,
            "agent.rollout-wave",
            swarm,
            &format!(
                "rollout {}: wave {} of {waves} ({started} devices)",
                header.rollout,
                header.wave + 1,
            ),
        )?;
    } else {
        header.state = "done".into();
        log_event(
            tx,
            &Actor::Server,
            "agent.rollout-done",
            swarm,
            &format!(
                "rollout {}: every device runs {}",
                header.rollout, header.image
            ),
        )?;
    }
    save(tx, &header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    #[test]
    fn a_canary_a_share_then_the_rest() {
        let sizes = |w: Vec<Vec<String>>| w.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(waves_of(&ids(5), 1, 50)), [1, 2, 2]);
        assert_eq!(sizes(waves_of(&ids(10), 1, 30)), [1, 3, 6]);
        assert_eq!(sizes(waves_of(&ids(5), 1, 100)), [1, 4]);
        assert_eq!(sizes(waves_of(&ids(1), 3, 50)), [1]);
        assert_eq!(waves_of(&ids(3), 1, 50)[0], ["d0"]);
    }

    /// A rollout an older server stored as one JSON plan reads the same
    /// once the store has moved it to rows, and moves only once.
    #[test]
    fn plans_stored_as_json_are_carried_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.db");
        let device = |id: &str, state: &str, detail: &str| AgentRolloutDevice {
            device: id.into(),
            state: state.into(),
            detail: detail.into(),
        };
        let plan = vec![
            vec![device("d2", "done", "")],
            vec![device("d9", "updating", ""), device("d1", "failed", "no")],
            vec![device("d0", "pending", "")],
        ];
        let store = Store::open(&path).expect("store");
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO swarms (name, created_at) VALUES ('s', 0)",
                    params![],
                )?;
                tx.execute(
                    "INSERT INTO agent_rollouts (swarm, rollout, image, state, wave, waves, deadline_secs, started_at, wave_started_at)
                     VALUES ('s', 3, 'r@sha256:00', 'running', 1, $1, 60, 5, 6)",
                    params![super::super::json_of(&plan)],
                )?;
                Ok(())
            })
            .expect("old rollout");
        drop(store);
        for _ in 0..2 {
            let store = Store::open(&path).expect("reopened");
            let view = store.rollout("s").expect("view");
            assert_eq!(view.waves, plan);
            assert_eq!(
                (view.rollout, view.wave, view.state.as_str()),
                (3, 1, "running")
            );
            let target = store.read(|tx| target_for(tx, "s", "d9")).expect("target");
            assert_eq!(target.map(|t| t.rollout), Some(3));
            assert_eq!(
                store.read(|tx| target_for(tx, "s", "d0")).expect("none"),
                None
            );
        }
    }
}
