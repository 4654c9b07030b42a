//! `targeted`: two nodes on one Redis; sends through Redis to users connected to node A only, while node B
//! holds as many idle users. What it shows is routing: a node that holds no recipient should read (almost)
//! nothing from Redis and spend (almost) no CPU on the traffic.
//!
//! The generator plays the application backend: it hands each send to Redis itself ([`crate::dispatch`],
//! in the format of the gateway under test), to one recipient at a time in turn, on a fixed schedule
//! (`--rate`, open loop). Each send's `d` is a probe `{"i":seq,"j":send_time_us,"p":"xx…"}` delivered as
//! `DIRECT`; every recipient counts first deliveries, duplicates and deliveries that arrive after a higher
//! number (out of order), and node B's users count anything they get (`misdelivered_on_b`). Before the
//! measured phase every recipient must have received one warm-up send (`{"w":1}`), since a node subscribes
//! a user's channel in the background after the user authenticates.
//!
//! Reported for node A, node B and redis-server: CPU over the send phase, RSS, and for the nodes the bytes
//! their TCP connections to Redis received (`tcp_info.bytes_received` through `ss`, the same measure for any
//! server).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::cluster::{Meters, Node, Placement, Rule};
use super::{
    cpu_json, join_all, micros_since, own_cpu, prepare, report, spawn_placed, wait_for_ramp,
    ConnStats,
};
use crate::args::{InvalidArgs, TargetedArgs};
use crate::conn::{Conn, Incoming};
use crate::dispatch::{DispatchError, RedisSender};
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};
use crate::stats::{per_second, Order, SeqSet, SharedLatencies};

/// The dispatch type of what recipients receive (the conformance contract's `SEND_TO` delivers it too).
pub const DIRECT: &str = "DIRECT";

/// Token prefix: connection `i` is user `tgt-<i>`; recipients are `tgt-0` … `tgt-<recipients − 1>`.
const USER_PREFIX: &str = "tgt-";

/// The longest the warm-up may take (every recipient reached once).
pub const WARMUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Between two warm-up rounds.
const WARMUP_ROUND: Duration = Duration::from_millis(200);

impl From<DispatchError> for InvalidArgs {
    fn from(e: DispatchError) -> Self {
        InvalidArgs(e.to_string())
    }
}

struct Shared {
    epoch: Instant,
    placement: Placement,
    stop: CancellationToken,
    /// Per recipient: received a warm-up send.
    warmed: Vec<AtomicBool>,
    warmed_count: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    misdelivered_on_b: AtomicU64,
    open_by_node: [AtomicU64; 2],
    latencies: SharedLatencies,
    stats: Arc<ConnStats>,
}

/// Runs the scenario.
pub async fn run(args: &TargetedArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let setup = prepare(common, args.recipients + args.idle_b())?;
    let total = setup.capped.granted;
    let recipients = args.recipients.min(total);
    let placement = Placement::new(
        &setup.connector,
        &args.cluster,
        Rule::Split { on_a: recipients },
    )?;
    let sender =
        RedisSender::connect(args.dispatch, &args.redis_url, args.namespace.as_deref()).await?;
    let stats = Arc::new(ConnStats::default());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        placement: placement.clone(),
        stop: CancellationToken::new(),
        warmed: (0..recipients).map(|_| AtomicBool::new(false)).collect(),
        warmed_count: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        misdelivered_on_b: AtomicU64::new(0),
        open_by_node: Default::default(),
        latencies: SharedLatencies::default(),
        stats: stats.clone(),
    });

    let role_shared = shared.clone();
    let tasks = spawn_placed(
        |index| placement.connector(index),
        total,
        common.ramp_concurrency,
        Some(USER_PREFIX),
        &stats,
        move |index, conn| {
            let shared = role_shared.clone();
            async move {
                let node = shared.placement.node(index);
                shared.open_by_node[node.index()].fetch_add(1, Ordering::Relaxed);
                connection(shared, conn, index, node).await;
            }
        },
    );
    wait_for_ramp(&stats, total, "targeted").await;
    let open_by_node = shared
        .open_by_node
        .each_ref()
        .map(|n| n.load(Ordering::Relaxed));

    // Warm-up: each recipient once, so that its node's subscription is in place.
    let warmup_start = Instant::now();
    let warm_frame = format!(r#"{{"op":0,"d":{{"w":1}},"t":"{DIRECT}"}}"#);
    while shared.warmed_count.load(Ordering::Relaxed) < open_by_node[0]
        && warmup_start.elapsed() < WARMUP_TIMEOUT
    {
        for (i, warmed) in shared.warmed.iter().enumerate() {
            if !warmed.load(Ordering::Relaxed) {
                sender.send(&format!("{USER_PREFIX}{i}"), warm_frame.clone());
            }
        }
        tokio::time::sleep(WARMUP_ROUND).await;
    }
    let warmup = warmup_start.elapsed();
    let warmed = shared.warmed_count.load(Ordering::Relaxed);
    let accepted_before = sender.counts().accepted.load(Ordering::Relaxed);
    let failed_before = sender.counts().failed.load(Ordering::Relaxed);
    // Late warm-up frames must not fall into the measured phase's byte counts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let meters = Meters::start(common.server_pid, &args.cluster);
    let own_meter = own_cpu();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    with_progress(
        "targeted",
        || {
            format!(
                "sent {}, delivered {}, duplicated {}, on node B {}",
                sent.load(Ordering::Relaxed),
                shared.delivered.load(Ordering::Relaxed),
                shared.duplicated.load(Ordering::Relaxed),
                shared.misdelivered_on_b.load(Ordering::Relaxed),
            )
        },
        async {
            while started.elapsed() < args.duration {
                ticker.tick().await;
                let seq = sent.load(Ordering::Relaxed);
                let to = seq % recipients as u64;
                let payload = scan::probe_payload(seq, micros_since(shared.epoch), args.payload);
                sender.send(
                    &format!("{USER_PREFIX}{to}"),
                    format!(r#"{{"op":0,"d":{payload},"t":"{DIRECT}"}}"#),
                );
                sent.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
    .await;
    let send_elapsed = started.elapsed();
    let delivered_in_window = shared.delivered.load(Ordering::Relaxed);
    let processes = meters.finish();
    let own_cpu_pct = cpu_json(Some(own_meter));

    let sent = sent.load(Ordering::Relaxed);
    let drain_start = Instant::now();
    with_progress(
        "targeted drain",
        || {
            format!(
                "delivered {}/{sent}",
                shared.delivered.load(Ordering::Relaxed)
            )
        },
        async {
            while shared.delivered.load(Ordering::Relaxed) < sent
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
    let per_send = |role: &str| {
        processes[role]["redis_bytes_received"]
            .as_u64()
            .filter(|_| sent > 0)
            .map(|bytes| round3(bytes as f64 / sent as f64))
    };
    let mut notes = setup.notes;
    if warmed < open_by_node[0] {
        notes.push(format!(
            "only {warmed} of {} recipients were reached during the warm-up",
            open_by_node[0]
        ));
    }
    let results = json!({
        "sent": sent,
        "publish_accepted": sender.counts().accepted.load(Ordering::Relaxed) - accepted_before,
        "publish_failed": sender.counts().failed.load(Ordering::Relaxed) - failed_before,
        "sends_per_s": round3(per_second(sent, send_elapsed)),
        "delivered": delivered,
        "deliveries_per_s": round3(per_second(delivered_in_window, send_elapsed)),
        "lost": sent.saturating_sub(delivered),
        "duplicated": shared.duplicated.load(Ordering::Relaxed),
        "out_of_order": shared.out_of_order.load(Ordering::Relaxed),
        "misdelivered_on_b": shared.misdelivered_on_b.load(Ordering::Relaxed),
        "warmup_s": round3(warmup.as_secs_f64()),
        "warmed_recipients": warmed,
        "drain_s": round3(drained.as_secs_f64()),
        "latency": shared.latencies.snapshot().summary(),
        "server_cpu_pct": processes["node_a"]["cpu_pct"].clone(),
        "generator_cpu_pct": own_cpu_pct,
        "connections": stats.to_json(),
        "cluster": {
            "connections_on_a": open_by_node[0],
            "connections_on_b": open_by_node[1],
            "node_a_redis_bytes_per_send": per_send("node_a"),
            "node_b_redis_bytes_per_send": per_send("node_b"),
            "processes": processes,
        },
    });
    let params = json!({
        "url_b": placement.url_b(),
        "recipients_on_a": recipients,
        "idle_on_b": total - recipients,
        "dispatch": args.dispatch.name(),
        "namespace": args.namespace,
        "rate_per_s": args.rate,
        "payload_bytes": args.payload,
        "duration_s": round3(args.duration.as_secs_f64()),
    });
    Ok(report(
        "targeted",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}

/// One connection: a recipient on node A counts deliveries; an idle user on node B counts what it should
/// never get.
async fn connection(shared: Arc<Shared>, mut conn: Conn, index: usize, node: Node) {
    let mut seen = SeqSet::default();
    let mut order = Order::new(1);
    let mut latencies = shared.latencies.local();
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.stats.closed_by_server(code);
                    shared.stats.finished(&conn);
                    return;
                }
                Incoming::Text(text) => {
                    if scan::classify(&text) != Kind::Dispatch(DIRECT) {
                        continue;
                    }
                    if node == Node::B {
                        shared.misdelivered_on_b.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match scan::probe(&text) {
                        Some((seq, ts)) => {
                            if !seen.insert(seq) {
                                shared.duplicated.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            latencies.record_us(micros_since(shared.epoch).saturating_sub(ts));
                            if !order.in_order(seq) {
                                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None if scan::u64_field(&text, "w").is_some() => {
                            let first = shared
                                .warmed
                                .get(index)
                                .is_some_and(|w| !w.swap(true, Ordering::Relaxed));
                            if first {
                                shared.warmed_count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => conn.unreadable_frame(),
                    }
                }
            },
        }
    }
    latencies.flush();
    shared.stats.finished(&conn);
    conn.close().await;
}
