//! Counters of one engine (or Dispatcher), for the CLI's metrics endpoint and for tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// What an engine did since it started. Read with [`RedisMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct RedisMetrics {
    publishes: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    resubscribes: AtomicU64,
    probes_failed: AtomicU64,
    dead_nodes_removed: AtomicU64,
    degraded: AtomicBool,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisMetricsSnapshot {
    /// Publications Redis accepted (one per send, whatever the number of channels).
    pub publishes: u64,
    /// Publications that failed (Redis unreachable, too slow, refused, or the queue full).
    pub publish_errors: u64,
    /// Sends and disconnects that arrived from Redis (this node's own included, probes not).
    pub received: u64,
    /// Payloads on this namespace's channels that were not envelopes (logged, dropped).
    pub malformed: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Times the whole subscription set was subscribed again on a new connection (the first included).
    pub resubscribes: u64,
    /// Probes that did not come back in time.
    pub probes_failed: u64,
    /// Dead nodes whose entries this engine removed.
    pub dead_nodes_removed: u64,
    /// Whether the engine is degraded now.
    pub degraded: bool,
    /// Session releases Redis has not taken yet (it was unreachable): queued again once it is back.
    pub releases_waiting: u64,
}

impl RedisMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> RedisMetricsSnapshot {
        RedisMetricsSnapshot {
            publishes: self.publishes.load(Relaxed),
            publish_errors: self.publish_errors.load(Relaxed),
            received: self.received.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            resubscribes: self.resubscribes.load(Relaxed),
            probes_failed: self.probes_failed.load(Relaxed),
            dead_nodes_removed: self.dead_nodes_removed.load(Relaxed),
            degraded: self.degraded.load(Relaxed),
            releases_waiting: 0,
        }
    }

    pub(crate) fn published(&self) {
        self.publishes.fetch_add(1, Relaxed);
    }
    pub(crate) fn publish_failed(&self) {
        self.publish_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Relaxed);
    }
    /// Counts a malformed payload; returns the new count (to log only some).
    pub(crate) fn malformed(&self) -> u64 {
        self.malformed.fetch_add(1, Relaxed) + 1
    }
    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }
    pub(crate) fn resubscribed(&self) {
        self.resubscribes.fetch_add(1, Relaxed);
    }
    pub(crate) fn probe_failed(&self) {
        self.probes_failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn dead_nodes_removed(&self, n: u64) {
        self.dead_nodes_removed.fetch_add(n, Relaxed);
    }
    pub(crate) fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Relaxed);
    }
}
