//! Reconnection delays: exponential backoff with full jitter, with no clock and no global random source.
//!
//! The delay before reconnection attempt `n` (counting from 0 since the last healthy connection) is drawn
//! uniformly from `[0, min(cap, base × 2ⁿ)]` ("full jitter"). `base` is the server's `c_reconnect_interval`
//! once a Hello has advertised one, otherwise the client's configured default. Full jitter spreads the
//! clients of a restarted server over the whole window instead of bringing them all back at once, which is
//! what Mesa 1.5's fixed interval did.
//!
//! The random source is a [`Jitter`] value, seedable so that tests can predict every delay.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A small, fast, seedable pseudo-random generator (SplitMix64) for jitter. Not for cryptography.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator that always yields the same sequence for the same seed.
    pub fn from_seed(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    /// A generator seeded from the process's hash randomness and the wall clock, so that clients started
    /// at the same moment on different machines draw different delays.
    pub fn from_entropy() -> Jitter {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        Jitter::from_seed(hasher.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value uniform in `[0, max]` (the modulo bias is below 2⁻³⁰ for any `max` under 2³⁴, about 17 s in
    /// nanoseconds, and negligible for a jitter beyond that).
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next_u64() % bound,
            None => self.next_u64(),
        }
    }
}

/// Exponential backoff with full jitter. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff starting at `base` for attempt 0, doubling per attempt, never above `cap`.
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            jitter,
        }
    }

    /// Changes the base (for example to the `c_reconnect_interval` of a new Hello); the attempt count stays.
    pub fn set_base(&mut self, base: Duration) {
        self.base = base;
    }

    /// The current base.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap on any delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Attempts drawn since the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay for `attempt`: `min(cap, base × 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Draws the delay before the next attempt, uniform in `[0, ceiling(attempt)]`, and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.jitter.up_to(max))
    }

    /// Starts again from attempt 0, after a connection became healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_then_caps() {
        let backoff = Backoff::new(100 * MS, 1000 * MS, Jitter::from_seed(1));
        let ceilings: Vec<_> = (0..6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        // No overflow however many attempts failed.
        assert_eq!(backoff.ceiling(u32::MAX), 1000 * MS);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, Jitter::from_seed(1));
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn delays_stay_within_full_jitter_bounds_and_cover_the_window() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS, Jitter::from_seed(7));
        for round in 0..200 {
            backoff.reset();
            for attempt in 0..8 {
                let ceiling = backoff.ceiling(attempt);
                let delay = backoff.next_delay();
                assert!(
                    delay <= ceiling,
                    "round {round} attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
        // Full jitter: draws for attempt 0 spread over [0, base], both halves hit.
        let mut low = 0;
        let mut high = 0;
        for seed in 0..1000 {
            let mut b = Backoff::new(100 * MS, 1000 * MS, Jitter::from_seed(seed));
            if b.next_delay() < 50 * MS {
                low += 1;
            } else {
                high += 1;
            }
        }
        assert!(low > 400 && high > 400, "low {low}, high {high}");
    }

    #[test]
    fn same_seed_same_delays_and_reset_restarts_the_sequence_of_ceilings() {
        let mut a = Backoff::new(50 * MS, 5000 * MS, Jitter::from_seed(42));
        let mut b = Backoff::new(50 * MS, 5000 * MS, Jitter::from_seed(42));
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
        assert_eq!(a.attempt(), 10);
        a.reset();
        assert_eq!(a.attempt(), 0);
        assert!(a.next_delay() <= 50 * MS);
    }

    #[test]
    fn base_change_applies_to_the_next_draw() {
        let mut b = Backoff::new(1000 * MS, 60_000 * MS, Jitter::from_seed(3));
        b.set_base(10 * MS);
        assert_eq!(b.base(), 10 * MS);
        assert!(b.next_delay() <= 10 * MS);
        assert!(b.next_delay() <= 20 * MS);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO, Jitter::from_seed(3));
        assert_eq!(zero.next_delay(), Duration::ZERO);
    }

    #[test]
    fn entropy_seeds_differ() {
        let mut a = Jitter::from_entropy();
        let mut b = Jitter::from_entropy();
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
