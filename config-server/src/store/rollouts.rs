//! Agent rollouts: a new agent for a swarm's devices, in waves (a canary,
//! a share of the rest, then all). A device learns the agent it should run
//! from its `join` answer while its wave is on; it reports how the update
//! ended. A failure, or a device silent past the deadline, stops the
//! rollout where it is: later waves never start.

use super::devices::device_rows;
use super::events::log_event;
use super::{from_json, json_of, now, Actor, Result, Store, StoreError};
use crate::db::{params, Tx};
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
            let mut plan: Vec<Vec<AgentRolloutDevice>> = waves
                .iter()
                .map(|wave| {
                    wave.iter()
                        .map(|id| AgentRolloutDevice {
                            device: id.clone(),
                            state: "pending".into(),
                            detail: String::new(),
                        })
                        .collect()
                })
                .collect();
            for d in &mut plan[0] {
                d.state = "updating".into();
            }
            tx.execute("DELETE FROM agent_rollouts WHERE swarm = $1", params![swarm])?;
            tx.execute(
                "INSERT INTO agent_rollouts (swarm, rollout, image, state, wave, waves, deadline_secs, started_at, wave_started_at)
                 VALUES ($1, $2, $3, 'running', 0, $4, $5, $6, $6)",
                params![swarm, number, &req.image, json_of(&plan), req.deadline_secs as i64, t],
            )?;
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
                let mut view = match rollout_view(tx, &swarm) {
                    Ok(v)
                        if v.state == "running"
                            && (v.wave_started_at + v.deadline_secs as i64) < t =>
                    {
                        v
                    }
                    _ => return Ok(()), // another replica was first
                };
                let wave = view.wave as usize;
                let mut silent = Vec::new();
                for d in &mut view.waves[wave] {
                    if d.state == "updating" {
                        d.state = "failed".into();
                        d.detail = format!("no healthy report within {}s", view.deadline_secs);
                        silent.push(d.device.clone());
                    }
                }
                stop(
                    tx,
                    &swarm,
                    &view,
                    &format!("{} silent past the deadline", silent.join(", ")),
                )
            })?;
        }
        Ok(())
    }
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

fn rollout_view(tx: &Tx<'_>, swarm: &str) -> Result<AgentRolloutView> {
    let row = tx
        .query_opt(
            "SELECT rollout, image, state, wave, waves, deadline_secs, started_at, wave_started_at FROM agent_rollouts WHERE swarm = $1",
            params![swarm],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("swarm {swarm} has no agent rollout")))?;
    Ok(AgentRolloutView {
        swarm: swarm.to_string(),
        rollout: row.get::<i64>(0)? as u64,
        image: row.get(1)?,
        state: row.get(2)?,
        wave: row.get::<i64>(3)? as u32,
        waves: from_json(&row.get::<String>(4)?)?,
        deadline_secs: row.get::<i64>(5)? as u64,
        started_at: row.get(6)?,
        wave_started_at: row.get(7)?,
    })
}

fn save(tx: &Tx<'_>, view: &AgentRolloutView) -> Result<()> {
    tx.execute(
        "UPDATE agent_rollouts SET state = $2, wave = $3, waves = $4, wave_started_at = $5 WHERE swarm = $1",
        params![
            &view.swarm,
            &view.state,
            view.wave as i64,
            json_of(&view.waves),
            view.wave_started_at
        ],
    )?;
    Ok(())
}

/// Ends a rollout as failed where it is; later waves never start.
fn stop(tx: &Tx<'_>, swarm: &str, view: &AgentRolloutView, why: &str) -> Result<()> {
    let mut view = view.clone();
    view.state = "failed".into();
    save(tx, &view)?;
    log_event(
        tx,
        &Actor::Server,
        "agent.rollout-failed",
        swarm,
        &format!(
            "rollout {} stopped in wave {} of {}: {why}",
            view.rollout,
            view.wave + 1,
            view.waves.len()
        ),
    )
}

/// The agent a device should be updating to: while a rollout runs and
/// the device's wave is on.
pub(super) fn target_for(tx: &Tx<'_>, swarm: &str, device: &str) -> Result<Option<AgentTarget>> {
    let view = match rollout_view(tx, swarm) {
        Ok(v) if v.state == "running" => v,
        Ok(_) | Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let updating = view.waves[..=view.wave as usize]
        .iter()
        .flatten()
        .any(|d| d.device == device && d.state == "updating");
    Ok(updating.then(|| AgentTarget {
        rollout: view.rollout,
        image: view.image.clone(),
        deadline_secs: view.deadline_secs,
    }))
}

/// A device's report of how its update ended: the wave moves on when all
/// its devices are done; a failure stops the rollout.
pub(super) fn outcome(
    tx: &Tx<'_>,
    swarm: &str,
    device: &str,
    outcome: &AgentUpdateOutcome,
) -> Result<()> {
    let mut view = match rollout_view(tx, swarm) {
        Ok(v) if v.state == "running" && v.rollout == outcome.rollout => v,
        Ok(_) | Err(StoreError::NotFound(_)) => return Ok(()), // over, or another one
        Err(e) => return Err(e),
    };
    let wave = view.wave as usize;
    let Some(entry) = view.waves[wave]
        .iter_mut()
        .find(|d| d.device == device && d.state == "updating")
    else {
        return Ok(());
    };
    let detail: String = outcome
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    entry.state = if outcome.ok { "done" } else { "failed" }.into();
    entry.detail = detail.clone();
    let actor = Actor::Device(device.into());
    if !outcome.ok {
        log_event(tx, &actor, "agent.update-failed", device, &detail)?;
        return stop(tx, swarm, &view, &format!("{device}: {detail}"));
    }
    log_event(
        tx,
        &actor,
        "agent.updated",
        device,
        &format!("rollout {}: {}", view.rollout, view.image),
    )?;
    if view.waves[wave].iter().all(|d| d.state == "done") {
        if wave + 1 < view.waves.len() {
            view.wave += 1;
            view.wave_started_at = now();
            for d in &mut view.waves[wave + 1] {
                d.state = "updating".into();
            }
            log_event(
                tx,
                &Actor::Server,
                "agent.rollout-wave",
                swarm,
                &format!(
                    "rollout {}: wave {} of {} ({} devices)",
                    view.rollout,
                    view.wave + 1,
                    view.waves.len(),
                    view.waves[wave + 1].len()
                ),
            )?;
        } else {
            view.state = "done".into();
            log_event(
                tx,
                &Actor::Server,
                "agent.rollout-done",
                swarm,
                &format!("rollout {}: every device runs {}", view.rollout, view.image),
            )?;
        }
    }
    save(tx, &view)
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
}
