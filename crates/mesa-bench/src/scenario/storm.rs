//! `storm`: open N connections (authenticated unless `--no-auth`), have each write `--messages` `ECHO` requests
//! of `--payload` bytes at once (so that the server grows its per-connection buffers), wait for the echoes, hold
//! the connections for `--hold`, then end them all at the same moment (`--ending drop`: sockets closed without
//! a close frame, as when clients crash; `--ending close`: clean close handshakes). Then watch the server for
//! `--watch` (30 s), sampling its RSS and its open descriptors once a second.
//!
//! It reports the server's RSS before the first connection, at the peak (sampled every 100 ms from the first
//! connection to the end of the watch), at the end of the watch and every second in between; what the storm
//! added (peak − before), what the server gave back by the end (peak − end) and that as a fraction of what was
//! added, and the first second at which at least half was given back. Counts: connections opened, failed,
//! closed by the server, ended by the generator; requests sent, echoes received, requests unanswered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{join_all, micros_since, prepare, report, spawn_connections, wait_for_ramp, ConnStats};
use crate::args::{Ending, InvalidArgs, StormArgs};
use crate::conn::{Conn, Incoming};
use crate::procfs;
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};

/// The dispatch type of requests and replies.
pub const ECHO: &str = "ECHO";

/// Time after the ramp and the echoes before the hold starts, so that every connection has answered a
/// heartbeat and the server's buffers are in their loaded state.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How long the generator waits, after the ramp, for every connection's echoes.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the generator waits for its connection tasks to end once told to (a clean close is bounded by
/// [`crate::conn::CLOSE_TIMEOUT`] per connection, all at once).
pub const END_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server's RSS is sampled for the peak.
const PEAK_SAMPLE: Duration = Duration::from_millis(100);

struct Shared {
    epoch: Instant,
    messages: usize,
    payload: usize,
    wait_for_echoes: bool,
    ending: Ending,
    end: CancellationToken,
    sent: AtomicU64,
    echoed: AtomicU64,
    unexpected: AtomicU64,
    /// Connections whose requests are written (and, when waited for, echoed).
    ready: AtomicU64,
    /// Connections the generator ended (dropped or closed).
    ended: AtomicU64,
    stats: Arc<ConnStats>,
}

/// One sample of the server after the storm.
#[derive(Debug, Clone, Copy)]
struct Sample {
    second: u64,
    rss_kib: Option<u64>,
    fds: Option<u64>,
}

/// The server's figures when a pid was given.
#[derive(Debug, Clone, Copy)]
struct Probe(Option<u32>);

impl Probe {
    fn rss(self) -> Option<u64> {
        self.0.and_then(|pid| procfs::rss_kib(pid).ok())
    }

    fn fds(self) -> Option<u64> {
        self.0.and_then(|pid| procfs::fd_count(pid).ok())
    }
}

/// Peak RSS and descriptors, sampled in the background until cancelled.
#[derive(Debug, Default)]
struct Peak {
    rss_kib: AtomicU64,
    fds: AtomicU64,
}

impl Peak {
    fn record(&self, rss: Option<u64>, fds: Option<u64>) {
        if let Some(rss) = rss {
            self.rss_kib.fetch_max(rss, Ordering::Relaxed);
        }
        if let Some(fds) = fds {
            self.fds.fetch_max(fds, Ordering::Relaxed);
        }
    }

    fn get(value: &AtomicU64) -> Option<u64> {
        Some(value.load(Ordering::Relaxed)).filter(|v| *v > 0)
    }
}

/// Runs the scenario.
pub async fn run(args: &StormArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let setup = prepare(common, args.connections)?;
    let count = setup.capped.granted;
    let probe = Probe(common.server_pid);
    let rss_before = probe.rss();
    let fds_before = probe.fds();

    let peak = Arc::new(Peak::default());
    peak.record(rss_before, fds_before);
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let peak = peak.clone();
        let stop = stop_sampling.clone();
        async move {
            let mut tick = tokio::time::interval(PEAK_SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => peak.record(probe.rss(), probe.fds()),
                }
            }
        }
    });

    let stats = Arc::new(ConnStats::default());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        messages: args.messages,
        payload: args.payload,
        wait_for_echoes: !args.no_echo,
        ending: args.ending,
        end: CancellationToken::new(),
        sent: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        stats: stats.clone(),
    });
    let role_shared = shared.clone();
    let tasks = spawn_connections(
        &setup.connector,
        count,
        common.ramp_concurrency,
        (!args.no_auth).then_some("storm-"),
        &stats,
        move |_, conn| connection(role_shared.clone(), conn),
    );
    let ramp = wait_for_ramp(&stats, count, "storm").await;
    let opened = stats.opened.load(Ordering::Relaxed);

    // Every open connection has written its requests and got its echoes (or was closed by the server).
    let echo_start = Instant::now();
    let settled =
        || shared.ready.load(Ordering::Relaxed) + stats.closed.load(Ordering::Relaxed) >= opened;
    let progress = || {
        format!(
            "open {}, ready {}, sent {}, echoes {}, closed by server {}, server RSS {}",
            stats.opened.load(Ordering::Relaxed),
            shared.ready.load(Ordering::Relaxed),
            shared.sent.load(Ordering::Relaxed),
            shared.echoed.load(Ordering::Relaxed),
            stats.closed.load(Ordering::Relaxed),
            mib(probe.rss()),
        )
    };
    let echo_wait = with_progress("storm", progress, async {
        while !settled() && echo_start.elapsed() < ECHO_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let echo_wait = echo_start.elapsed();
        tokio::time::sleep(SETTLE + args.hold).await;
        echo_wait
    })
    .await;
    let rss_loaded = probe.rss();
    let fds_loaded = probe.fds();
    peak.record(rss_loaded, fds_loaded);
    let open_at_end = opened.saturating_sub(stats.closed.load(Ordering::Relaxed));

    // The storm: every connection ends at this moment.
    let end_at = Instant::now();
    let tokio_end_at = tokio::time::Instant::now();
    shared.end.cancel();
    join_all(tasks, END_TIMEOUT).await;
    let end_took = end_at.elapsed();

    let mut samples = Vec::new();
    let watch_seconds = args.watch.as_secs().max(1);
    for second in 1..=watch_seconds {
        tokio::time::sleep_until(tokio_end_at + Duration::from_secs(second)).await;
        let sample = Sample {
            second,
            rss_kib: probe.rss(),
            fds: probe.fds(),
        };
        peak.record(sample.rss_kib, sample.fds);
        eprintln!(
            "[storm after {second:>3}s] server RSS {}, descriptors {}",
            mib(sample.rss_kib),
            sample.fds.map_or_else(|| "?".into(), |n| n.to_string())
        );
        samples.push(sample);
    }
    stop_sampling.cancel();
    let _ = sampler.await;

    let rss_peak = Peak::get(&peak.rss_kib);
    let fds_peak = Peak::get(&peak.fds);
    let last = samples.last().copied();
    let rss_end = last.and_then(|s| s.rss_kib);
    let fds_end = last.and_then(|s| s.fds);
    let memory = Memory::new(rss_before, rss_peak, rss_end, &samples);

    let sent = shared.sent.load(Ordering::Relaxed);
    let echoed = shared.echoed.load(Ordering::Relaxed);
    let ended = shared.ended.load(Ordering::Relaxed);
    let mut notes = setup.notes;
    if common.server_pid.is_none() {
        notes.push("no --server-pid: server RSS not measured".into());
    }
    if !settled() {
        notes.push(format!(
            "not every connection had its echoes after {:.0} s",
            ECHO_TIMEOUT.as_secs_f64()
        ));
    }
    if let (Some(before), Some(end)) = (fds_before, fds_end) {
        if end > before {
            notes.push(format!(
                "the server still holds {} more descriptors than before the storm",
                end - before
            ));
        }
    }
    let per_conn = |kib: Option<u64>| match kib {
        Some(kib) if open_at_end > 0 => json!(round3(kib as f64 * 1024.0 / open_at_end as f64)),
        _ => Value::Null,
    };
    let results = json!({
        "connections_open_at_storm": open_at_end,
        "connections_ended": ended,
        "ramp_s": round3(ramp.as_secs_f64()),
        "echo_wait_s": round3(echo_wait.as_secs_f64()),
        "end_s": round3(end_took.as_secs_f64()),
        "requests_sent": sent,
        "echoes_received": echoed,
        "unanswered": shared.wait_for_echoes.then(|| sent.saturating_sub(echoed)),
        "unexpected_frames": shared.unexpected.load(Ordering::Relaxed),
        "server_rss_before_kib": rss_before,
        "server_rss_loaded_kib": rss_loaded,
        "server_rss_peak_kib": rss_peak,
        "server_rss_end_kib": rss_end,
        "server_rss_after_kib": samples.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
        "storm_added_kib": memory.added,
        "given_back_kib": memory.given_back,
        "given_back_fraction": memory.fraction.map(round3),
        "half_given_back_after_s": memory.half_after,
        "server_rss_peak_per_conn_bytes": per_conn(memory.added),
        "server_fds_before": fds_before,
        "server_fds_peak": fds_peak,
        "server_fds_end": fds_end,
        "connections": stats.to_json(),
    });
    let params = json!({
        "connections_requested": args.connections,
        "connections": count,
        "messages_per_connection": args.messages,
        "payload_bytes": args.payload,
        "wait_for_echoes": !args.no_echo,
        "hold_s": round3(args.hold.as_secs_f64()),
        "ending": args.ending.name(),
        "watch_s": watch_seconds,
        "authenticated": !args.no_auth,
        "source_addresses": setup.connector.sources().addrs().len(),
    });
    Ok(report(
        "storm",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".into(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

/// What the storm did to the server's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Peak − before, KiB.
    pub added: Option<u64>,
    /// Peak − end of the watch, KiB.
    pub given_back: Option<u64>,
    /// `given_back / added`, when the storm added anything.
    pub fraction: Option<f64>,
    /// The first second after the storm at which RSS was at most `before + added / 2`.
    pub half_after: Option<u64>,
}

impl Memory {
    fn new(before: Option<u64>, peak: Option<u64>, end: Option<u64>, samples: &[Sample]) -> Memory {
        let series: Vec<(u64, Option<u64>)> =
            samples.iter().map(|s| (s.second, s.rss_kib)).collect();
        Memory::from_series(before, peak, end, &series)
    }

    /// From the RSS before the storm, its peak, its value at the end of the watch and the samples after the
    /// storm as `(second, KiB)`.
    pub fn from_series(
        before: Option<u64>,
        peak: Option<u64>,
        end: Option<u64>,
        series: &[(u64, Option<u64>)],
    ) -> Memory {
        let added = before.zip(peak).map(|(b, p)| p.saturating_sub(b));
        let given_back = peak.zip(end).map(|(p, e)| p.saturating_sub(e));
        let fraction = added
            .zip(given_back)
            .filter(|(a, _)| *a > 0)
            .map(|(a, g)| g as f64 / a as f64);
        let half_after = before.zip(added).and_then(|(b, a)| {
            let half = b + a / 2;
            series
                .iter()
                .find(|(_, rss)| rss.is_some_and(|r| r <= half))
                .map(|(s, _)| *s)
        });
        Memory {
            added,
            given_back,
            fraction,
            half_after,
        }
    }
}

async fn connection(shared: Arc<Shared>, mut conn: Conn) {
    let mut outstanding = 0usize;
    for seq in 0..shared.messages as u64 {
        let payload = scan::probe_payload(seq, micros_since(shared.epoch), shared.payload);
        if conn
            .send(format!(r#"{{"op":0,"t":"{ECHO}","d":{payload}}}"#))
            .await
            .is_err()
        {
            shared.stats.closed_by_server(None);
            shared.stats.finished(&conn);
            return;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        outstanding += 1;
    }
    if conn.flush().await.is_err() {
        shared.stats.closed_by_server(None);
        shared.stats.finished(&conn);
        return;
    }
    if !shared.wait_for_echoes {
        outstanding = 0;
    }
    let mut ready = outstanding == 0;
    if ready {
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        tokio::select! {
            biased;
            () = shared.end.cancelled() => break,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.stats.closed_by_server(code);
                    shared.stats.finished(&conn);
                    return;
                }
                Incoming::Text(text) => match scan::classify(&text) {
                    Kind::Dispatch(ECHO) if scan::probe(&text).is_some() => {
                        shared.echoed.fetch_add(1, Ordering::Relaxed);
                        outstanding = outstanding.saturating_sub(1);
                        if outstanding == 0 && !ready {
                            ready = true;
                            shared.ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Kind::Dispatch(ECHO) | Kind::Unreadable => conn.unreadable_frame(),
                    _ => {
                        shared.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                },
            },
        }
    }
    shared.stats.finished(&conn);
    match shared.ending {
        Ending::Drop => drop(conn),
        Ending::Close => conn.close().await,
    }
    shared.ended.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_given_back() {
        let series = [(1, Some(40_000)), (2, Some(20_000)), (3, Some(9_000))];
        let m = Memory::from_series(Some(4_000), Some(48_000), Some(9_000), &series);
        assert_eq!(m.added, Some(44_000));
        assert_eq!(m.given_back, Some(39_000));
        assert!((m.fraction.unwrap() - 39.0 / 44.0).abs() < 1e-9);
        // Half given back means at most 4 000 + 22 000 KiB.
        assert_eq!(m.half_after, Some(2));

        let kept = [(1, Some(48_000)), (2, Some(47_000))];
        let m = Memory::from_series(Some(4_000), Some(48_000), Some(47_000), &kept);
        assert_eq!(m.half_after, None);
        assert!(m.fraction.unwrap() < 0.1);

        let nothing = Memory::from_series(Some(4_000), Some(4_000), Some(4_000), &[]);
        assert_eq!(nothing.added, Some(0));
        assert_eq!(nothing.fraction, None);
        assert_eq!(Memory::from_series(None, None, None, &[]).added, None);
    }
}
