//! Counting what came back: latency histograms, percentiles, and duplicate detection.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds, in microseconds (one hour); larger samples are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (HDR, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram for 1 µs to one hour.
    pub fn new() -> Latencies {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Latencies { histogram }
    }

    /// Records one sample in microseconds (0 counts as 1; above one hour counts as one hour).
    pub fn record_us(&mut self, us: u64) {
        self.histogram
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles of the samples.
    pub fn summary(&self) -> Percentiles {
        let h = &self.histogram;
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// A histogram shared by many connection tasks. Each task records into a [`LocalLatencies`] that empties
/// into this one in batches, so the lock is taken once per batch rather than once per sample.
#[derive(Debug, Clone, Default)]
pub struct SharedLatencies {
    inner: Arc<Mutex<Latencies>>,
}

impl SharedLatencies {
    fn lock(&self) -> MutexGuard<'_, Latencies> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batching recorder that feeds this histogram.
    pub fn local(&self) -> LocalLatencies {
        LocalLatencies {
            shared: self.clone(),
            batch: Vec::new(),
        }
    }

    /// A copy of everything flushed so far.
    pub fn snapshot(&self) -> Latencies {
        self.lock().clone()
    }
}

/// Batch size of a [`LocalLatencies`].
const LOCAL_BATCH: usize = 128;

/// One task's recorder: samples are kept in a small vector and flushed to the [`SharedLatencies`] when it fills
/// up, on [`LocalLatencies::flush`], and when dropped.
#[derive(Debug)]
pub struct LocalLatencies {
    shared: SharedLatencies,
    batch: Vec<u64>,
}

impl LocalLatencies {
    /// Records one sample in microseconds.
    pub fn record_us(&mut self, us: u64) {
        if self.batch.capacity() == 0 {
            self.batch.reserve_exact(LOCAL_BATCH);
        }
        self.batch.push(us);
        if self.batch.len() >= LOCAL_BATCH {
            self.flush();
        }
    }

    /// Moves the batched samples into the shared histogram.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut shared = self.shared.lock();
        for us in self.batch.drain(..) {
            shared.record_us(us);
        }
    }
}

impl Drop for LocalLatencies {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The sequence numbers one connection received, to tell new deliveries from duplicates.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

/// Highest sequence number a [`SeqSet`] tracks (2^26: 8 MiB of bits per connection at most, far beyond any
/// scenario). Larger numbers are refused as if they were duplicates.
pub const MAX_SEQ: u64 = 1 << 26;

impl SeqSet {
    /// Marks `seq` as received; `true` when it was not received before.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq >= MAX_SEQ {
            return false;
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        if fresh {
            self.len += 1;
        }
        fresh
    }

    /// Distinct sequence numbers received.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The order in which one connection received the numbered messages of several senders: sender `s` of `n`
/// numbers its messages `k × n + s` with `k` = 0, 1, 2, …, so a number lower than one already received from the
/// same sender arrived out of order.
#[derive(Debug, Clone)]
pub struct Order {
    senders: u64,
    /// Per sender: the highest `k` received plus one (0: nothing yet).
    next: Vec<u64>,
}

impl Order {
    /// For `senders` senders (at least one is assumed).
    pub fn new(senders: u64) -> Order {
        Order {
            senders: senders.max(1),
            next: Vec::new(),
        }
    }

    /// Records a first delivery of `seq`; `false` when a higher number of its sender came before it.
    pub fn in_order(&mut self, seq: u64) -> bool {
        // Lower than `senders`, a small count.
        let sender = (seq % self.senders) as usize;
        let k = seq / self.senders;
        if sender >= self.next.len() {
            self.next.resize(sender + 1, 0);
        }
        let next = &mut self.next[sender];
        if k + 1 < *next {
            return false;
        }
        *next = k + 1;
        true
    }
}

/// `count` events over `elapsed`, per second (0 for an empty interval).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        count as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record_us(us * 1000); // 1 ms .. 1000 ms
        }
        let p = l.summary();
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p90_ms - 900.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert!((p.mean_ms - 500.5).abs() < 1.0, "{p:?}");
        assert_eq!(Latencies::new().summary(), Percentiles::default());
    }

    #[test]
    fn out_of_range_samples_are_clamped() {
        let mut l = Latencies::new();
        l.record_us(0);
        l.record_us(u64::MAX);
        assert_eq!(l.count(), 2);
        assert!(l.summary().max_ms >= 3_600_000.0 * 0.99);
    }

    #[test]
    fn local_recorders_feed_the_shared_histogram() {
        let shared = SharedLatencies::default();
        let mut a = shared.local();
        let mut b = shared.local();
        for _ in 0..200 {
            a.record_us(10);
        }
        b.record_us(20);
        assert_eq!(shared.snapshot().count(), LOCAL_BATCH as u64);
        drop(a);
        b.flush();
        assert_eq!(shared.snapshot().count(), 201);
        let mut merged = Latencies::new();
        merged.merge(&shared.snapshot());
        merged.merge(&shared.snapshot());
        assert_eq!(merged.count(), 402);
    }

    #[test]
    fn seq_set_finds_duplicates() {
        let mut s = SeqSet::default();
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(10_000));
        assert!(!s.insert(64));
        assert!(!s.insert(0));
        assert_eq!(s.len(), 4);
        assert!(!s.insert(MAX_SEQ));
    }

    #[test]
    fn order_is_per_sender() {
        let mut o = Order::new(2);
        // sender 0: 0, 2, 4; sender 1: 1, 3, 5
        assert!(o.in_order(2));
        assert!(o.in_order(1));
        assert!(!o.in_order(0), "0 after 2 from sender 0");
        assert!(o.in_order(5));
        assert!(!o.in_order(3));
        assert!(o.in_order(4));
        let mut one = Order::new(1);
        assert!(one.in_order(0) && one.in_order(7) && !one.in_order(6) && one.in_order(8));
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
