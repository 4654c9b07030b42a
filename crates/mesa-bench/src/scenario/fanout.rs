//! `fanout`: senders issue `BROADCAST` dispatches, every connection (receivers and senders) counts what it
//! receives.
//!
//! Each broadcast's `d` is a probe `{"i":seq,"j":send_time_us,"p":"xx…"}`; sequence numbers are
//! `k × senders + sender`, so a sender recognises its own copies. A connection counts a delivery the first time
//! it sees a sequence number and a duplicate after that; the latency of a delivery is its arrival time minus the
//! send time (one clock, one process). With `--rate 0` each sender keeps at most `--window` broadcasts in flight
//! (sent, its own copy not yet back) and all connections together are owed fewer than `--window` broadcasts
//! each, which measures the server's throughput without letting its queues grow;
//! with a rate, senders send on a fixed schedule whatever happens (open loop), which measures latency under load.
//!
//! After sending stops the generator waits up to `--drain` for the rest; expected deliveries are
//! `broadcasts sent × connections open at the start`, and what has not arrived by then is reported as lost.
//! A delivery whose number is lower than one already received from the same sender is counted out of order.
//!
//! With `--url-b` (two nodes on one Redis) the senders stay on node A and the receivers alternate between node
//! B and node A; deliveries and losses are also counted per node, and the CPU and RSS of both nodes and of
//! redis-server (`--server-b-pid`, `--redis-pid`) and the bytes each node read from Redis (`--redis-port`) are
//! reported under `cluster`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::cluster::{Meters, Placement, Rule};
use super::{
    cpu_json, join_all, micros_since, own_cpu, per_server_cpu_second, prepare, report, server_cpu,
    spawn_placed, wait_for_ramp, ConnStats,
};
use crate::args::{FanoutArgs, InvalidArgs};
use crate::conn::{Conn, Incoming};
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};
use crate::stats::{per_second, Order, SeqSet, SharedLatencies};

/// The dispatch type senders use and receivers count.
pub const BROADCAST: &str = "BROADCAST";

/// A sender whose own copies stop coming back for this long sends again anyway (counted as a stall).
const STALL: Duration = Duration::from_secs(1);

struct Shared {
    epoch: Instant,
    senders: u64,
    payload: usize,
    window: u64,
    /// Seconds between two broadcasts of one sender, or `None` for as fast as the window allows.
    period: Option<Duration>,
    start: CancellationToken,
    stop_sending: CancellationToken,
    stop: CancellationToken,
    sent: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    stalls: AtomicU64,
    placement: Placement,
    /// Connections open, per node (A, B).
    open_by_node: [AtomicU64; 2],
    /// First deliveries, per node (A, B).
    delivered_by_node: [AtomicU64; 2],
    /// Connections open when sending started (set then).
    recipients: AtomicU64,
    latencies: SharedLatencies,
    stats: Arc<ConnStats>,
}

impl Shared {
    /// With `--rate 0`: whether deliveries still owed to all connections together are under `window` per
    /// connection, so that no receiver falls far behind the senders (a server would rightly close it as a slow
    /// consumer).
    fn all_caught_up(&self) -> bool {
        let recipients = self
            .recipients
            .load(Ordering::Relaxed)
            .saturating_sub(self.stats.closed.load(Ordering::Relaxed));
        let owed = (self.sent.load(Ordering::Relaxed) * recipients)
            .saturating_sub(self.delivered.load(Ordering::Relaxed));
        owed < self.window * recipients.max(1)
    }
}

/// Runs the scenario.
pub async fn run(args: &FanoutArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let setup = prepare(common, args.receivers + args.senders)?;
    let total = setup.capped.granted;
    if total <= args.senders {
        return Err(InvalidArgs(format!(
            "{total} connections fit under the open-files limit: not enough for {} senders and any receiver",
            args.senders
        )));
    }
    let receivers = total - args.senders;
    let placement = Placement::new(
        &setup.connector,
        &args.cluster,
        Rule::Alternate {
            pinned: args.senders,
        },
    )?;
    let stats = Arc::new(ConnStats::default());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        senders: args.senders as u64,
        payload: args.payload,
        window: args.window as u64,
        period: (args.rate > 0.0).then(|| Duration::from_secs_f64(args.senders as f64 / args.rate)),
        start: CancellationToken::new(),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
        placement: placement.clone(),
        open_by_node: Default::default(),
        delivered_by_node: Default::default(),
        recipients: AtomicU64::new(0),
        latencies: SharedLatencies::default(),
        stats: stats.clone(),
    });

    let role_shared = shared.clone();
    let tasks = spawn_placed(
        |index| placement.connector(index),
        total,
        common.ramp_concurrency,
        (!args.no_auth).then_some("fanout-"),
        &stats,
        move |index, conn| {
            let shared = role_shared.clone();
            async move {
                let sender = (index < shared.senders as usize).then_some(index as u64);
                let node = shared.placement.node(index).index();
                shared.open_by_node[node].fetch_add(1, Ordering::Relaxed);
                connection(shared, conn, sender, node).await;
            }
        },
    );
    wait_for_ramp(&stats, total, "fanout").await;
    let connected = stats.opened.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let open_by_node = shared
        .open_by_node
        .each_ref()
        .map(|n| n.load(Ordering::Relaxed));
    let server_meter = server_cpu(common);
    let cluster_meter = placement
        .is_cluster()
        .then(|| Meters::start(common.server_pid, &args.cluster));
    let own_meter = own_cpu();
    let started = Instant::now();
    shared.recipients.store(connected, Ordering::Relaxed);
    shared.start.cancel();
    let last = std::sync::Mutex::new((Instant::now(), 0u64));
    let print = || {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let rate = per_second(delivered.saturating_sub(last.1), now - last.0);
        *last = (now, delivered);
        format!(
            "sent {}, delivered {delivered} ({rate:.0}/s), duplicated {}, closed by server {}",
            shared.sent.load(Ordering::Relaxed),
            shared.duplicated.load(Ordering::Relaxed),
            shared.stats.closed.load(Ordering::Relaxed),
        )
    };
    with_progress("fanout", print, tokio::time::sleep(args.duration)).await;
    shared.stop_sending.cancel();
    let send_elapsed = started.elapsed();
    let delivered_in_window = shared.delivered.load(Ordering::Relaxed);
    let server_cpu_pct = cpu_json(server_meter);
    let processes = cluster_meter.map(|m| m.finish());
    let own_cpu_pct = cpu_json(Some(own_meter));

    // Drain: wait for every expected delivery, or the drain limit.
    let sent = shared.sent.load(Ordering::Relaxed);
    let expected = sent * connected;
    let drain_start = Instant::now();
    with_progress(
        "fanout drain",
        || {
            format!(
                "delivered {}/{expected}",
                shared.delivered.load(Ordering::Relaxed)
            )
        },
        async {
            while shared.delivered.load(Ordering::Relaxed) < expected
                && drain_start.elapsed() < args.drain
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    let drained = drain_start.elapsed();
    shared.stop.cancel();
    join_all(tasks, Duration::from_secs(10)).await;

    let delivered = shared.delivered.load(Ordering::Relaxed);
    let deliveries_per_s = per_second(delivered_in_window, send_elapsed);
    let latency = shared.latencies.snapshot().summary();
    let mut notes = setup.notes;
    if own_cpu_pct.as_f64().is_some_and(|p| p > 90.0) {
        notes.push(
            "the generator used more than 90% of a core: deliveries/s may be limited by the generator"
                .into(),
        );
    }
    let cluster = processes.map(|processes| {
        let delivered = shared
            .delivered_by_node
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed));
        json!({
            "connections_on_a": open_by_node[0],
            "connections_on_b": open_by_node[1],
            "delivered_on_a": delivered[0],
            "delivered_on_b": delivered[1],
            "lost_on_a": (sent * open_by_node[0]).saturating_sub(delivered[0]),
            "lost_on_b": (sent * open_by_node[1]).saturating_sub(delivered[1]),
            "processes": processes,
        })
    });
    let results = json!({
        "connections_open_at_start": connected,
        "broadcasts_sent": sent,
        "broadcasts_per_s": round3(per_second(sent, send_elapsed)),
        "expected_deliveries": expected,
        "delivered": delivered,
        "deliveries_per_s": round3(deliveries_per_s),
        "deliveries_per_server_cpu_s": per_server_cpu_second(deliveries_per_s, &server_cpu_pct),
        "lost": expected.saturating_sub(delivered),
        "duplicated": shared.duplicated.load(Ordering::Relaxed),
        "out_of_order": shared.out_of_order.load(Ordering::Relaxed),
        "drain_s": round3(drained.as_secs_f64()),
        "sender_stalls": shared.stalls.load(Ordering::Relaxed),
        "latency": latency,
        "server_cpu_pct": server_cpu_pct,
        "generator_cpu_pct": own_cpu_pct,
        "connections": stats.to_json(),
        "cluster": cluster,
    });
    let params = json!({
        "url_b": placement.url_b(),
        "receivers": receivers,
        "senders": args.senders,
        "recipients_per_broadcast": receivers + args.senders,
        "payload_bytes": args.payload,
        "rate_per_s": if args.rate > 0.0 { json!(args.rate) } else { json!("max") },
        "window": args.window,
        "duration_s": round3(args.duration.as_secs_f64()),
        "authenticated": !args.no_auth,
    });
    Ok(report(
        "fanout",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}

/// One connection: counts deliveries; a sender (with its index) also broadcasts.
async fn connection(shared: Arc<Shared>, mut conn: Conn, sender: Option<u64>, node: usize) {
    let mut seen = SeqSet::default();
    let mut order = Order::new(shared.senders);
    let mut latencies = shared.latencies.local();
    let mut own_next = 0u64; // this sender's next k
    let mut in_flight = 0u64;
    let mut last_own = Instant::now();
    // As fast as possible: the ticker only re-checks whether the receivers caught up.
    let mut ticker = tokio::time::interval(shared.period.unwrap_or(Duration::from_millis(1)));
    // A fixed rate is kept even after a stall (open loop); the re-check ticker just skips missed ticks.
    ticker.set_missed_tick_behavior(if shared.period.is_some() {
        MissedTickBehavior::Burst
    } else {
        MissedTickBehavior::Skip
    });
    let mut sending = false;
    let mut sending_done = false;
    loop {
        // Checked here, not only in the branch: a branch that is ready but sends nothing would spin.
        let can_send_now = sending
            && !sending_done
            && shared.period.is_none()
            && in_flight < shared.window
            && shared.all_caught_up();
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            () = shared.start.cancelled(), if sender.is_some() && !sending && !sending_done => {
                sending = true;
                ticker.reset();
                last_own = Instant::now();
            }
            () = shared.stop_sending.cancelled(), if sending => {
                sending = false;
                sending_done = true;
            }
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.stats.closed_by_server(code);
                    shared.stats.finished(&conn);
                    return;
                }
                Incoming::Text(text) => match scan::classify(&text) {
                    Kind::Dispatch(BROADCAST) => match scan::probe(&text) {
                        Some((seq, ts)) => {
                            if seen.insert(seq) {
                                shared.delivered.fetch_add(1, Ordering::Relaxed);
                                shared.delivered_by_node[node].fetch_add(1, Ordering::Relaxed);
                                if !order.in_order(seq) {
                                    shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                                }
                                latencies.record_us(micros_since(shared.epoch).saturating_sub(ts));
                                if let Some(me) = sender {
                                    if seq % shared.senders == me {
                                        in_flight = in_flight.saturating_sub(1);
                                        last_own = Instant::now();
                                    }
                                }
                            } else {
                                shared.duplicated.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => conn.unreadable_frame(),
                    },
                    Kind::Unreadable => conn.unreadable_frame(),
                    _ => {}
                },
            },
            _ = ticker.tick(), if sending => {
                if shared.period.is_some() {
                    if send_one(&shared, &mut conn, sender, &mut own_next).await.is_err() {
                        break;
                    }
                    if conn.flush().await.is_err() {
                        break;
                    }
                } else if in_flight >= shared.window && last_own.elapsed() >= STALL {
                    shared.stalls.fetch_add(1, Ordering::Relaxed);
                    in_flight = 0;
                    last_own = Instant::now();
                }
            }
            () = std::future::ready(()), if can_send_now => {
                while in_flight < shared.window && shared.all_caught_up() {
                    if send_one(&shared, &mut conn, sender, &mut own_next).await.is_err() {
                        break;
                    }
                    in_flight += 1;
                }
                if conn.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    latencies.flush();
    shared.stats.finished(&conn);
    conn.close().await;
}

async fn send_one(
    shared: &Shared,
    conn: &mut Conn,
    sender: Option<u64>,
    own_next: &mut u64,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let Some(me) = sender else {
        return Ok(());
    };
    let seq = *own_next * shared.senders + me;
    *own_next += 1;
    let payload = scan::probe_payload(seq, micros_since(shared.epoch), shared.payload);
    let frame = format!(r#"{{"op":0,"t":"{BROADCAST}","d":{payload}}}"#);
    conn.send(frame).await?;
    shared.sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
