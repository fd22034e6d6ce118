//! The server's periodic work, every 5 s: the replica checks in, last-seen
//! times and telemetry noted since the last tick are written (see
//! `store::presence`), silent devices marked offline, quorum recoveries
//! and agent rollout deadlines checked, and once a minute old events and
//! telemetry pruned.
//!
//! It runs on a thread of its own at a lower priority (nice 10) than the
//! threads serving requests. At 100,000 devices a tick writes thousands of
//! devices' times and samples, CPU work that at an equal priority took
//! half of a busy core from the requests for as long as it ran; lowered,
//! the requests come first and the flush uses what is left. The tick's
//! writes are in chunks of a few hundred devices (`FLUSH_CHUNK`), so a
//! write request queued behind one waits for a chunk, not the tick.

use crate::http::AppState;
use crate::store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often last-seen times are written (and the replica checks in).
const EVERY: Duration = Duration::from_secs(5);
/// Pruning past retention runs every this many ticks (a minute).
const PRUNE_EVERY_TICKS: u64 = 12;
/// How much lower than the requests' threads the thread runs.
const NICENESS: i32 = 10;

/// Starts the maintenance thread; it runs as long as the process.
pub(crate) fn spawn(state: Arc<AppState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("fogswarm-maintenance".into())
        .spawn(move || {
            // On Linux a nice value is the calling thread's alone.
            if let Err(e) = rustix::process::setpriority_process(None, NICENESS) {
                tracing::debug!(error = %e, "could not lower the maintenance thread's priority");
            }
            let mut next = Instant::now();
            for tick in 0u64.. {
                run_tick(&state, tick);
                next += EVERY;
                // A tick that overran starts the next at once, without
                // catching up the ones it missed.
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
        .map(drop)
}

fn run_tick(state: &AppState, tick: u64) {
    // How long each step took (holding the writer, for most):
    // `RUST_LOG=fogswarm::maintenance=debug` shows it.
    let step = |name: &str, started: Instant| {
        tracing::debug!(target: "fogswarm::maintenance", step = name, ms = started.elapsed().as_millis() as u64, "done");
    };
    let t = Instant::now();
    state.check_in();
    step("check_in", t);
    if tick % PRUNE_EVERY_TICKS == 0 {
        let t = Instant::now();
        match state.store.prune() {
            Ok(pruned) if pruned != store::Pruned::default() => {
                tracing::info!(
                    events = pruned.events,
                    telemetry_rows = pruned.telemetry_rows,
                    "pruned past retention"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning past retention"),
        }
        step("prune", t);
    }
    let t = Instant::now();
    if let Err(e) = state.store.flush_presence() {
        tracing::warn!(error = %e, "writing last-seen times");
    }
    step("flush_presence", t);
    let t = Instant::now();
    if let Err(e) = state.store.flush_telemetry() {
        tracing::warn!(error = %e, "writing telemetry");
    }
    step("flush_telemetry", t);
    let t = Instant::now();
    match state.store.mark_offline() {
        Ok(offline) => {
            for device in offline {
                tracing::warn!(device = %device, "device offline: not heard for three report intervals");
            }
        }
        Err(e) => tracing::warn!(error = %e, "checking for offline devices"),
    }
    step("mark_offline", t);
    let t = Instant::now();
    match state.store.auto_recover() {
        Ok(started) => {
            for (recovery, touched) in started {
                tracing::warn!(device = %recovery.device_id, generation = recovery.generation, "no quorum for the swarm's auto-recover period: recovery started");
                state.notify(&touched);
            }
        }
        Err(e) => tracing::warn!(error = %e, "checking for quorum recoveries due"),
    }
    if let Err(e) = state.store.rollout_deadlines() {
        tracing::warn!(error = %e, "checking agent rollout deadlines");
    }
    step("recoveries_and_rollouts", t);
}
