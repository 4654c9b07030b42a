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
//!
//! With `--via client` the sends go through one more connection on node A instead (authenticated, never a
//! recipient), as the conformance contract's `SEND_TO` dispatch
//! (`{"op":0,"t":"SEND_TO","d":{"to":[ids],"payload":<probe>}}`), each naming `--fanout` consecutive
//! recipients in turn; `--volatile` adds Mesa 1.5's message options `"o":{"sync":false}` to each, which makes
//! the send volatile (never kept, no `s`). `--url-b` is then optional (one node alone), and `--rate 0` sends
//! as fast as `--window` allows (at most that many sends not yet delivered to all their recipients). With
//! `--resumable` the recipients hold resumable sessions: durable sends then carry `s` (checked, and counted
//! as `sequenced`), volatile ones must not. Users are `tgt-<run>-<i>`, unique per run, so that no mailbox of
//! an earlier run on the same server reaches them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::cluster::{Meters, Node, Placement, Rule};
use super::sender::SendToConn;
use super::{
    cpu_json, join_all, micros_since, own_cpu, per_server_cpu_second, prepare, report, run_tag,
    spawn_placed, wait_for_ramp, ConnStats,
};
use crate::args::{InvalidArgs, TargetedArgs, Via};
use crate::conn::{Conn, Incoming};
use crate::dispatch::{DispatchError, RedisSender};
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};
use crate::stats::{per_second, Order, SeqSet, SharedLatencies};

/// The dispatch type of what recipients receive (the conformance contract's `SEND_TO` delivers it too).
pub const DIRECT: &str = "DIRECT";

/// Token prefix: connection `i` is user `tgt-<i>`; recipients are `tgt-0` … `tgt-<recipients − 1>`
/// (`--via client`: `tgt-<run>-<i>`).
const USER_PREFIX: &str = "tgt-";

/// Users named in one warm-up `SEND_TO` at most.
const WARMUP_BATCH: usize = 500;

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
    /// Woken on deliveries when the sender waits for its window (`--via client --rate 0`).
    progress: tokio::sync::Notify,
    notify_progress: bool,
}

/// Where the sends go: Redis, or a sender connection's `SEND_TO` dispatches.
enum Way {
    Redis(Box<RedisSender>),
    Client(Box<SendToConn>),
}

impl Way {
    /// Waits `period`; the sender connection answers its heartbeats meanwhile.
    async fn idle(&mut self, period: Duration) {
        match self {
            Way::Redis(_) => tokio::time::sleep(period).await,
            Way::Client(sender) => sender.idle(period).await,
        }
    }
}

/// Runs the scenario.
pub async fn run(args: &TargetedArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let client = args.via == Via::Client;
    // `--via client`: one more connection, the sender.
    let extra = usize::from(client);
    let setup = prepare(common, args.recipients + args.idle_b() + extra)?;
    let total = setup.capped.granted.saturating_sub(extra).max(1);
    let recipients = args.recipients.min(total);
    let fanout = args.fanout.min(recipients).max(1);
    let placement = Placement::new(
        &setup.connector,
        &args.cluster,
        Rule::Split { on_a: recipients },
    )?;
    let prefix = match args.via {
        Via::Redis => USER_PREFIX.to_string(),
        Via::Client => format!("{USER_PREFIX}{}-", run_tag()),
    };
    let mut way = match args.via {
        Via::Redis => {
            let url = args.redis_url.as_deref().unwrap_or_default();
            Way::Redis(Box::new(
                RedisSender::connect(args.dispatch, url, args.namespace.as_deref()).await?,
            ))
        }
        Via::Client => Way::Client(Box::new(
            SendToConn::open(&setup.connector, &format!("{prefix}sender"), args.volatile)
                .await
                .map_err(|e| InvalidArgs(format!("the sender connection did not open: {e}")))?,
        )),
    };
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
        progress: tokio::sync::Notify::new(),
        notify_progress: client && args.rate == 0.0,
    });

    let role_shared = shared.clone();
    let tasks = spawn_placed(
        |index| placement.connector(index),
        total,
        common.ramp_concurrency,
        Some(&prefix),
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
    let user = |i: usize| format!("{prefix}{i}");
    let users: Vec<String> = (0..recipients).map(user).collect();

    // Warm-up: each recipient once, so that its node's subscription is in place (volatile through a
    // client, so that it takes no position in a resumable session's stream).
    let warmup_start = Instant::now();
    let warm_payload = r#"{"w":1}"#;
    let warm_frame = format!(r#"{{"op":0,"d":{warm_payload},"t":"{DIRECT}"}}"#);
    while shared.warmed_count.load(Ordering::Relaxed) < open_by_node[0]
        && warmup_start.elapsed() < WARMUP_TIMEOUT
    {
        let cold: Vec<&str> = shared
            .warmed
            .iter()
            .zip(&users)
            .filter(|(warmed, _)| !warmed.load(Ordering::Relaxed))
            .map(|(_, user)| user.as_str())
            .collect();
        match &mut way {
            Way::Redis(sender) => {
                for user in cold {
                    sender.send(user, warm_frame.clone());
                }
            }
            Way::Client(sender) => {
                for batch in cold.chunks(WARMUP_BATCH) {
                    let volatile = Some(super::sender::VOLATILE);
                    sender
                        .send(batch.iter().copied(), warm_payload, volatile)
                        .await;
                }
                sender.flush().await;
            }
        }
        way.idle(WARMUP_ROUND).await;
    }
    let warmup = warmup_start.elapsed();
    let warmed = shared.warmed_count.load(Ordering::Relaxed);
    let publish_before = match &way {
        Way::Redis(sender) => Some((
            sender.counts().accepted.load(Ordering::Relaxed),
            sender.counts().failed.load(Ordering::Relaxed),
        )),
        Way::Client(_) => None,
    };
    // Late warm-up frames must not fall into the measured phase's byte counts.
    way.idle(Duration::from_millis(300)).await;

    let meters = Meters::start(common.server_pid, &args.cluster);
    let own_meter = own_cpu();
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    let progress = || {
        format!(
            "sent {}, delivered {}, duplicated {}, on node B {}",
            sent.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
            shared.duplicated.load(Ordering::Relaxed),
            shared.misdelivered_on_b.load(Ordering::Relaxed),
        )
    };
    let send_phase = async {
        match &mut way {
            Way::Redis(sender) => {
                let period = Duration::from_secs_f64(1.0 / args.rate);
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
                while started.elapsed() < args.duration {
                    ticker.tick().await;
                    let seq = sent.load(Ordering::Relaxed);
                    let to = seq % recipients as u64;
                    let payload =
                        scan::probe_payload(seq, micros_since(shared.epoch), args.payload);
                    sender.send(
                        &format!("{USER_PREFIX}{to}"),
                        format!(r#"{{"op":0,"d":{payload},"t":"{DIRECT}"}}"#),
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Way::Client(sender) => {
                send_through_client(sender, &shared, &users, fanout, args, started, &sent).await;
            }
        }
    };
    with_progress("targeted", progress, send_phase).await;
    let send_elapsed = started.elapsed();
    let delivered_in_window = shared.delivered.load(Ordering::Relaxed);
    let processes = meters.finish();
    let own_cpu_pct = cpu_json(Some(own_meter));

    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * fanout as u64;
    let drain_start = Instant::now();
    let drain_progress = || {
        format!(
            "delivered {}/{expected}",
            shared.delivered.load(Ordering::Relaxed)
        )
    };
    with_progress("targeted drain", drain_progress, async {
        while shared.delivered.load(Ordering::Relaxed) < expected
            && drain_start.elapsed() < args.drain
        {
            way.idle(Duration::from_millis(10)).await;
        }
    })
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
    let (publish_accepted, publish_failed) = match (&way, publish_before) {
        (Way::Redis(sender), Some((accepted, failed))) => (
            json!(sender.counts().accepted.load(Ordering::Relaxed) - accepted),
            json!(sender.counts().failed.load(Ordering::Relaxed) - failed),
        ),
        _ => (Value::Null, Value::Null),
    };
    if let Some(code) = match &way {
        Way::Client(sender) => sender.closed,
        Way::Redis(_) => None,
    } {
        notes.push(format!(
            "the server ended the sender connection ({})",
            code.map_or_else(|| "dropped".into(), |c| c.to_string())
        ));
    }
    let deliveries_per_s = per_second(delivered_in_window, send_elapsed);
    let server_cpu_pct = processes["node_a"]["cpu_pct"].clone();
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let results = json!({
        "sent": sent,
        "publish_accepted": publish_accepted,
        "publish_failed": publish_failed,
        "sends_per_s": round3(per_second(sent, send_elapsed)),
        "expected_deliveries": expected,
        "delivered": delivered,
        "deliveries_per_s": round3(deliveries_per_s),
        "deliveries_per_server_cpu_s": per_server_cpu_second(deliveries_per_s, &server_cpu_pct),
        "lost": expected.saturating_sub(delivered),
        "duplicated": shared.duplicated.load(Ordering::Relaxed),
        "out_of_order": shared.out_of_order.load(Ordering::Relaxed),
        "misdelivered_on_b": shared.misdelivered_on_b.load(Ordering::Relaxed),
        "sequenced": get(&stats.sequenced),
        "seq_gaps": get(&stats.seq_gaps),
        "seq_dups": get(&stats.seq_dups),
        "warmup_s": round3(warmup.as_secs_f64()),
        "warmed_recipients": warmed,
        "drain_s": round3(drained.as_secs_f64()),
        "latency": shared.latencies.snapshot().summary(),
        "server_cpu_pct": server_cpu_pct,
        "server_rss_before_kib": processes["node_a"]["rss_before_kib"].clone(),
        "server_rss_after_kib": processes["node_a"]["rss_after_kib"].clone(),
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
        "via": args.via.name(),
        "url_b": placement.url_b(),
        "recipients_on_a": recipients,
        "idle_on_b": total - recipients,
        "dispatch": (args.via == Via::Redis).then(|| args.dispatch.name()),
        "namespace": args.namespace,
        "volatile": args.volatile,
        "resumable": common.resumable,
        "fanout": fanout,
        "rate_per_s": if args.rate > 0.0 { json!(args.rate) } else { json!("max") },
        "window": (client && args.rate == 0.0).then_some(args.window),
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

/// The send phase of `--via client`: `SEND_TO`s of one probe each to `fanout` recipients in turn, on a
/// fixed schedule (due sends go out every millisecond) or, with `--rate 0`, whenever fewer than `--window`
/// sends are still owed to some recipient.
async fn send_through_client(
    sender: &mut SendToConn,
    shared: &Shared,
    users: &[String],
    fanout: usize,
    args: &TargetedArgs,
    started: Instant,
    sent: &AtomicU64,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let per_send = fanout as u64;
    let window = args.window as u64 * per_send;
    let mut next_user = 0usize;
    while started.elapsed() < args.duration && sender.closed.is_none() {
        let may_send = |n: u64| {
            if args.rate > 0.0 {
                // Due by now on the schedule.
                (args.rate * started.elapsed().as_secs_f64()) as u64 > n
            } else {
                (n * per_send).saturating_sub(shared.delivered.load(Ordering::Relaxed)) < window
            }
        };
        let mut wrote = false;
        loop {
            let n = sent.load(Ordering::Relaxed);
            if !may_send(n) {
                break;
            }
            let payload = scan::probe_payload(n, micros_since(shared.epoch), args.payload);
            let to = (0..fanout).map(|j| users[(next_user + j) % users.len()].as_str());
            if !sender.send(to, &payload, None).await {
                sender.closed = Some(None);
                return;
            }
            next_user = (next_user + fanout) % users.len();
            sent.fetch_add(1, Ordering::Relaxed);
            wrote = true;
        }
        if wrote && !sender.flush().await {
            sender.closed = Some(None);
            return;
        }
        tokio::select! {
            biased;
            incoming = sender.conn.recv() => {
                if let Incoming::Closed(code) = incoming {
                    sender.closed = Some(code);
                }
            }
            () = shared.progress.notified(), if shared.notify_progress => {}
            _ = ticker.tick() => {}
        }
    }
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
                            if shared.notify_progress {
                                shared.progress.notify_one();
                            }
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
