//! A token bucket for the inbound rate limit, driven by the caller's clock.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How many frames a client may send: `burst` at once, refilled at `per_second`.
///
/// A zero in either field turns the limit off (so that a config file, which cannot say "none", can).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Frames a client may send back to back (the bucket size).
    pub burst: u32,
    /// Frames per second a client may sustain (the refill rate).
    pub per_second: u32,
}

impl Default for RateLimit {
    /// 200 frames at once, 100 per second sustained: far above what a person in a chat app sends
    /// (heartbeat acks included), far below what a flood sends.
    fn default() -> Self {
        RateLimit {
            burst: 200,
            per_second: 100,
        }
    }
}

/// The state of one connection's bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

impl RateLimit {
    /// Whether the limit applies (both fields non-zero).
    pub fn is_enabled(&self) -> bool {
        self.burst > 0 && self.per_second > 0
    }
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty (the frame exceeds the limit).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = now;
        let refill = elapsed.as_secs_f64() * f64::from(self.limit.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until one token is available again (zero when one is available now).
    pub fn time_to_next(&self) -> Duration {
        if self.tokens >= 1.0 || self.limit.per_second == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / f64::from(self.limit.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(
            RateLimit {
                burst: 3,
                per_second: 10,
            },
            t0,
        );
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0));
        assert!(bucket.time_to_next() > Duration::ZERO);
        assert!(bucket.try_take(t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.try_take(later));
        }
        assert!(!bucket.try_take(later));
    }
}
