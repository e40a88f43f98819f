//! Retry delays, pure: exponential from a base with a cap, and the jitter of the agent's reconnect
//! (callers sleep, and draw the randomness).

use std::time::Duration;

/// Delays that double with each attempt: attempt 0 waits `base`, attempt `n` waits `base * 2^n`,
/// never more than `max` (nor less than `base`, should `max` be smaller). The exponent stops
/// growing at 32, long after any cap in use is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before retry `attempt` (0: the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.max.max(self.base);
        let mut d = self.base;
        for _ in 0..attempt.min(32) {
            if d >= cap {
                break;
            }
            d = d.saturating_mul(2);
        }
        d.min(cap)
    }

    /// [`Backoff::delay`] spread over its upper half by `unit`, a random draw in `[0, 1)`: from
    /// half the delay up to (not quite) all of it, so that peers cut off together do not all come
    /// back at the same moment.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let d = self.delay(attempt);
        d / 2 + d.mul_f64(unit * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The agent's restart backoff as `wharf-agent`'s `plan::backoff` computed it.
    fn old_restart(base_ms: u64, max_ms: u64, n: u32) -> Duration {
        let factor = 1u64.checked_shl(n.min(32)).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(max_ms.max(base_ms)))
    }

    /// The agent's reconnect delays (before jitter) as its link loop grew them.
    fn old_reconnect(attempts: u32) -> Vec<Duration> {
        let (min, max) = (ms(100), Duration::from_secs(2));
        let mut backoff = min;
        let mut out = Vec::new();
        for _ in 0..attempts {
            out.push(backoff);
            backoff = (backoff * 2).min(max);
        }
        out
    }

    /// The CLI's wait after `failures` failed polls, as `follow::Outage` computed it.
    fn old_cli(first: Duration, max: Duration, failures: u32) -> Duration {
        first
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(max)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = Backoff::new(ms(100), ms(30_000));
        assert_eq!(b.delay(0), ms(100));
        assert_eq!(b.delay(3), ms(800));
        assert_eq!(b.delay(20), ms(30_000));
        assert_eq!(b.delay(200), ms(30_000));
        assert_eq!(b.delay(u32::MAX), ms(30_000));
        // A cap below the base: the base.
        assert_eq!(Backoff::new(ms(500), ms(100)).delay(3), ms(500));
        // No overflow at the extremes.
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
        assert_eq!(
            Backoff::new(ms(u64::MAX), ms(u64::MAX)).delay(5),
            ms(u64::MAX)
        );
    }

    #[test]
    fn the_sites_keep_their_sequences() {
        // Restarts (`x-wharf` restart policy, 100 ms to 30 s by default; any policy) and the
        // agent's retries of a failed launch (1 s to 30 s).
        for (base, max) in [
            (100, 30_000),
            (1_000, 30_000),
            (0, 0),
            (0, 500),
            (700, 100),
            (1, u64::MAX),
        ] {
            let b = Backoff::new(ms(base), ms(max));
            for n in 0..70 {
                assert_eq!(
                    b.delay(n),
                    old_restart(base, max, n),
                    "{base}..{max} ms, {n}"
                );
            }
        }
        let launch = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let seq: Vec<u64> = (0..7).map(|n| launch.delay(n).as_millis() as u64).collect();
        assert_eq!(seq, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);

        // The agent's reconnect: 100 ms doubling to 2 s, each spread over its upper half.
        let reconnect = Backoff::new(ms(100), Duration::from_secs(2));
        let seq: Vec<Duration> = (0..40).map(|n| reconnect.delay(n)).collect();
        assert_eq!(seq, old_reconnect(40));
        assert_eq!(seq[..7], [100, 200, 400, 800, 1600, 2000, 2000].map(ms));
        for (n, old) in old_reconnect(40).into_iter().enumerate() {
            for unit in [0.0, 0.25, 0.5, 0.999_999] {
                let was = old / 2 + old.mul_f64(unit * 0.5);
                assert_eq!(reconnect.jittered(n as u32, unit), was);
            }
        }
        assert_eq!(reconnect.jittered(0, 0.0), ms(50));
        assert!(reconnect.jittered(9, 0.999_999) < ms(2000));

        // The CLI riding out a lost API: 250 ms, 500 ms, 1 s, then every 2 s.
        let api = Backoff::new(ms(250), Duration::from_secs(2));
        for failures in 1..70 {
            assert_eq!(
                api.delay(failures - 1),
                old_cli(ms(250), Duration::from_secs(2), failures)
            );
        }
        let seq: Vec<u64> = (0..5).map(|n| api.delay(n).as_millis() as u64).collect();
        assert_eq!(seq, [250, 500, 1_000, 2_000, 2_000]);
    }
}
