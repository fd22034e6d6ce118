//! Exponential backoff with full jitter: the n-th wait is uniform in
//! [0, min(cap, base * 2^n)], so a factory of devices powering on at once
//! spreads its retries instead of hammering the server in waves.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait. `floor` (a server's retry-after) raises the window's
    /// top, never the cap.
    pub fn next(&mut self, floor: Option<Duration>) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let top = exp.max(floor.unwrap_or_default()).min(self.cap);
        top.mul_f64(random_unit())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Uniform in [0, 1).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to the clock's low bits, still enough
        // to de-synchronise devices.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return f64::from(nanos % 1_000_000) / 1_000_000.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for attempt in 0..20 {
            let top = Duration::from_secs(1 << attempt.min(16)).min(Duration::from_secs(30));
            let wait = b.next(None);
            assert!(wait <= top, "attempt {attempt}: {wait:?} > {top:?}");
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut waits: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(Duration::from_secs(8), Duration::from_secs(30)).next(None))
            .collect();
        waits.sort();
        assert!(
            waits[0] < Duration::from_secs(2),
            "some small waits: {:?}",
            waits[0]
        );
        assert!(
            waits[199] > Duration::from_secs(6),
            "some large waits: {:?}",
            waits[199]
        );
    }

    #[test]
    fn retry_after_raises_the_window() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(30));
        let waits: Vec<Duration> = (0..50)
            .map(|_| {
                b.reset();
                b.next(Some(Duration::from_secs(5)))
            })
            .collect();
        assert!(waits.iter().any(|w| *w > Duration::from_secs(1)));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(5)));
    }
}
