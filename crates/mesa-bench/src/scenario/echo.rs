//! `echo`: C connections each keep K `ECHO` requests in flight (a reply triggers the next request);
//! reports round trips per second and their latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    cpu_json, join_all, micros_since, own_cpu, per_server_cpu_second, prepare, report, server_cpu,
    spawn_connections, wait_for_ramp, ConnStats,
};
use crate::args::{EchoArgs, InvalidArgs};
use crate::conn::{Conn, Incoming};
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};
use crate::stats::{per_second, SharedLatencies};

/// The dispatch type of requests and replies.
pub const ECHO: &str = "ECHO";

/// How long the generator waits, after the run, for replies still in flight.
const DRAIN: Duration = Duration::from_secs(2);

struct Shared {
    epoch: Instant,
    in_flight: usize,
    payload: usize,
    start: CancellationToken,
    stop_sending: CancellationToken,
    stop: CancellationToken,
    completed: AtomicU64,
    sent: AtomicU64,
    unexpected: AtomicU64,
    latencies: SharedLatencies,
    stats: Arc<ConnStats>,
}

/// Runs the scenario.
pub async fn run(args: &EchoArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let setup = prepare(common, args.connections)?;
    let count = setup.capped.granted;
    let stats = Arc::new(ConnStats::default());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        in_flight: args.in_flight,
        payload: args.payload,
        start: CancellationToken::new(),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        completed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        latencies: SharedLatencies::default(),
        stats: stats.clone(),
    });
    let role_shared = shared.clone();
    let tasks = spawn_connections(
        &setup.connector,
        count,
        common.ramp_concurrency,
        (!args.no_auth).then_some("echo-"),
        &stats,
        move |_, conn| connection(role_shared.clone(), conn),
    );
    wait_for_ramp(&stats, count, "echo").await;
    let connected = stats.opened.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let server_meter = server_cpu(common);
    let own_meter = own_cpu();
    let started = Instant::now();
    shared.start.cancel();
    let last = std::sync::Mutex::new((Instant::now(), 0u64));
    let print = || {
        let done = shared.completed.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let rate = per_second(done.saturating_sub(last.1), now - last.0);
        *last = (now, done);
        format!(
            "round trips {done} ({rate:.0}/s), closed by server {}",
            shared.stats.closed.load(Ordering::Relaxed)
        )
    };
    with_progress("echo", print, tokio::time::sleep(args.duration)).await;
    shared.stop_sending.cancel();
    let elapsed = started.elapsed();
    let completed_in_window = shared.completed.load(Ordering::Relaxed);
    let server_cpu_pct = cpu_json(server_meter);
    let own_cpu_pct = cpu_json(Some(own_meter));

    let drain_start = Instant::now();
    while shared.completed.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed)
        && drain_start.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.stop.cancel();
    join_all(tasks, Duration::from_secs(10)).await;

    let sent = shared.sent.load(Ordering::Relaxed);
    let completed = shared.completed.load(Ordering::Relaxed);
    let round_trips_per_s = per_second(completed_in_window, elapsed);
    let mut notes = setup.notes;
    if own_cpu_pct.as_f64().is_some_and(|p| p > 90.0) {
        notes.push(
            "the generator used more than 90% of a core: round trips/s may be limited by the generator"
                .into(),
        );
    }
    let results = json!({
        "connections_open_at_start": connected,
        "round_trips": completed_in_window,
        "round_trips_per_s": round3(round_trips_per_s),
        "round_trips_per_server_cpu_s": per_server_cpu_second(round_trips_per_s, &server_cpu_pct),
        "requests_sent": sent,
        "unanswered": sent.saturating_sub(completed),
        "unexpected_frames": shared.unexpected.load(Ordering::Relaxed),
        "latency": shared.latencies.snapshot().summary(),
        "server_cpu_pct": server_cpu_pct,
        "generator_cpu_pct": own_cpu_pct,
        "connections": stats.to_json(),
    });
    let params = json!({
        "connections": count,
        "in_flight": args.in_flight,
        "payload_bytes": args.payload,
        "duration_s": round3(args.duration.as_secs_f64()),
        "authenticated": !args.no_auth,
    });
    Ok(report(
        "echo",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}

async fn connection(shared: Arc<Shared>, mut conn: Conn) {
    let mut latencies = shared.latencies.local();
    let mut next_seq = 0u64;
    let mut outstanding = 0usize;
    let mut started = false;
    let mut sending = false;
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            () = shared.start.cancelled(), if !started => {
                started = true;
                sending = true;
                while outstanding < shared.in_flight {
                    if request(&shared, &mut conn, &mut next_seq).await.is_err() {
                        break;
                    }
                    outstanding += 1;
                }
                if conn.flush().await.is_err() {
                    break;
                }
            }
            () = shared.stop_sending.cancelled(), if sending => sending = false,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.stats.closed_by_server(code);
                    shared.stats.finished(&conn);
                    return;
                }
                Incoming::Text(text) => match scan::classify(&text) {
                    Kind::Dispatch(ECHO) => match scan::probe(&text) {
                        Some((_, ts)) => {
                            latencies.record_us(micros_since(shared.epoch).saturating_sub(ts));
                            shared.completed.fetch_add(1, Ordering::Relaxed);
                            outstanding = outstanding.saturating_sub(1);
                            if sending {
                                if request(&shared, &mut conn, &mut next_seq).await.is_err() {
                                    break;
                                }
                                outstanding += 1;
                            }
                        }
                        None => conn.unreadable_frame(),
                    },
                    Kind::Unreadable => conn.unreadable_frame(),
                    _ => {
                        shared.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                },
            },
        }
    }
    latencies.flush();
    shared.stats.finished(&conn);
    conn.close().await;
}

/// Queues one request (written when the connection next waits for input).
async fn request(
    shared: &Shared,
    conn: &mut Conn,
    next_seq: &mut u64,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let payload = scan::probe_payload(*next_seq, micros_since(shared.epoch), shared.payload);
    *next_seq += 1;
    conn.send(format!(r#"{{"op":0,"t":"{ECHO}","d":{payload}}}"#))
        .await?;
    shared.sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
