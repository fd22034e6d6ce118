//! The replicas serving the fleet: each checks in every few seconds and
//! at every `/readyz`, which proves the database reachable and writable
//! from it, and lets `/metrics` and `status` say how many serve and which
//! version each runs (an upgrade shows half done).

use super::{now, Result, Store};
use crate::db::params;

/// A replica counts as serving when it checked in this recently.
pub const REPLICA_FRESH_SECS: i64 = 30;

/// One replica as the database last heard of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replica {
    pub id: String,
    pub version: String,
    pub started_at: i64,
    pub seen_at: i64,
}

impl Store {
    /// Records that `replica` (running `version`, started at `started_at`)
    /// is alive: a write, so it fails when the database cannot be written.
    pub fn check_in(&self, replica: &str, version: &str, started_at: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO replicas (id, version, started_at, seen_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET version = $2, started_at = $3, seen_at = $4",
                params![replica, version, started_at, now()],
            )?;
            Ok(())
        })
    }

    /// The replicas heard of within [`REPLICA_FRESH_SECS`].
    pub fn replicas(&self) -> Result<Vec<Replica>> {
        let fresh = now() - REPLICA_FRESH_SECS;
        self.read(|tx| {
            tx.query(
                "SELECT id, version, started_at, seen_at FROM replicas WHERE seen_at >= $1 ORDER BY id",
                params![fresh],
            )?
            .iter()
            .map(|r| {
                Ok(Replica {
                    id: r.get(0)?,
                    version: r.get(1)?,
                    started_at: r.get(2)?,
                    seen_at: r.get(3)?,
                })
            })
            .collect()
        })
    }

    /// Forgets replicas not heard of for a day.
    pub(super) fn forget_replicas(tx: &crate::db::Tx<'_>) -> Result<u64> {
        Ok(tx.execute(
            "DELETE FROM replicas WHERE seen_at < $1",
            params![now() - 86_400],
        )?)
    }
}

/// One swarm's health as the alert rules watch it.
#[derive(Debug, Clone)]
pub struct SwarmHealth {
    pub name: String,
    /// When its managers reported losing quorum, while they have.
    pub quorum_lost_at: Option<i64>,
    /// How long a running agent rollout's current wave has run.
    pub rollout_wave_secs: Option<i64>,
    /// The last agent rollout stopped on a failure.
    pub rollout_failed: bool,
}

/// What /metrics says of the fleet's serving health.
#[derive(Debug, Clone, Default)]
pub struct FleetHealth {
    /// This replica's last check-in succeeded.
    pub ready: bool,
    /// Replicas that checked in lately, counted by version.
    pub replicas: Vec<(String, u64)>,
    pub swarms: Vec<SwarmHealth>,
}

impl Store {
    /// Every swarm's quorum and rollout, and the replicas by version.
    pub fn fleet_health(&self, ready: bool) -> Result<FleetHealth> {
        let mut replicas = std::collections::BTreeMap::<String, u64>::new();
        for replica in self.replicas()? {
            *replicas.entry(replica.version).or_default() += 1;
        }
        let at = now();
        let swarms = self.read(|tx| {
            tx.query(
                "SELECT s.name, s.quorum_lost_at, r.state, r.wave_started_at
                 FROM swarms s LEFT JOIN agent_rollouts r ON r.swarm = s.name ORDER BY s.name",
                params![],
            )?
            .iter()
            .map(|r| {
                let state: Option<String> = r.get(2)?;
                let wave_started: Option<i64> = r.get(3)?;
                Ok(SwarmHealth {
                    name: r.get(0)?,
                    quorum_lost_at: r.get(1)?,
                    rollout_wave_secs: match state.as_deref() {
                        Some("running") => wave_started.map(|w| at - w),
                        _ => None,
                    },
                    rollout_failed: state.as_deref() == Some("failed"),
                })
            })
            .collect::<Result<Vec<_>>>()
        })?;
        Ok(FleetHealth {
            ready,
            replicas: replicas.into_iter().collect(),
            swarms,
        })
    }
}
