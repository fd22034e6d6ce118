//! Brute force kept slow: each source address may fail authentication (a
//! wrong provisioning key, device credential or admin token) a few times a
//! minute; past that every authenticated request from it is answered 429
//! with Retry-After until its window ends. Addresses that do not fail are
//! never slowed, whatever their neighbours do.
//!
//! Per replica and in memory: an attacker spreading guesses over N
//! replicas gets N times the budget, still far from guessing 256-bit
//! secrets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past that, expired windows are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl FailureLimiter {
    /// Refuses an address that used up its failures: answers how long
    /// until it may try again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(&ip) {
            Some(w) if w.failures >= MAX_FAILURES => {
                let elapsed = w.started.elapsed();
                if elapsed < WINDOW {
                    Err(WINDOW - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, w| w.started.elapsed() < WINDOW);
        }
        let w = windows.entry(ip).or_insert(Window {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_limit_and_only_that_address() {
        let limiter = FailureLimiter::default();
        let bad: IpAddr = "192.0.2.1".parse().expect("ip");
        let good: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..MAX_FAILURES {
            assert!(limiter.check(bad).is_ok());
            limiter.fail(bad);
        }
        let wait = limiter.check(bad).expect_err("over the limit");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(limiter.check(good).is_ok());
    }
}
