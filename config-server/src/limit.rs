//! Guessing kept slow without locking out the innocent. Failed
//! authentications are counted per source address *and* per what was
//! guessed (the admin token, the provisioning key, one device's key, a
//! session, ...). Past the limit, further failures from that address at
//! that thing answer 429 with Retry-After until the window ends; a valid
//! credential, token, signature or session is still accepted, so one bad
//! script behind a site's NAT stalls nobody else.
//!
//! Accepting a valid secret from a "locked" address loses nothing: the
//! secrets are 256-bit tokens or ECDSA keys, which no rate of guessing
//! finds. Only low-entropy secrets (passwords) are refused outright while
//! locked, per address and user ([`FailureLimiter::locked`]).
//!
//! Per replica and in memory: an attacker spreading guesses over N
//! replicas gets N times the budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address, subject and window.
pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Windows remembered at most; past that, expired ones are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<(IpAddr, String), Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl FailureLimiter {
    /// Counts a failure from `ip` at `subject`; answers how long until it
    /// may try again once it is past the limit.
    pub fn fail(&self, ip: IpAddr, subject: &str) -> Option<Duration> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, w| w.started.elapsed() < WINDOW);
        }
        let w = windows.entry((ip, subject.to_string())).or_insert(Window {
            started: Instant::now(),
            failures: 0,
        });
        if w.started.elapsed() >= WINDOW {
            *w = Window {
                started: Instant::now(),
                failures: 0,
            };
        }
        w.failures += 1;
        (w.failures > MAX_FAILURES).then(|| WINDOW.saturating_sub(w.started.elapsed()))
    }

    /// Whether `ip` used up its failures at `subject`: for passwords,
    /// which are refused even when right while so.
    pub fn locked(&self, ip: IpAddr, subject: &str) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.get(&(ip, subject.to_string()))?;
        let elapsed = w.started.elapsed();
        (w.failures >= MAX_FAILURES && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_only_that_address_and_subject_are_slowed() {
        let limiter = FailureLimiter::default();
        let bad: IpAddr = "192.0.2.1".parse().expect("ip");
        let good: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..MAX_FAILURES {
            assert!(limiter.fail(bad, "admin-token").is_none());
        }
        let wait = limiter.fail(bad, "admin-token").expect("over the limit");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(limiter.locked(bad, "admin-token").is_some());
        assert!(limiter.locked(bad, "device:dev1").is_none());
        assert!(limiter.locked(good, "admin-token").is_none());
        assert!(limiter.fail(good, "admin-token").is_none());
    }
}
