//! `resume`: a resume storm. N resumable sessions (users `rs-<run>-<i>`, one connection each) open on
//! `--url`; each user is sent M durable messages (`SEND_TO`s from one more connection, `--batch` users per
//! send, each message a probe numbered 0 … M − 1); every session drops its socket at the same moment (no
//! close frame: the sessions stay resumable); then every session reconnects to `--url-b` (default `--url`),
//! reads Hello, and at one moment all send op 6 `{token, session_id, seq}` together.
//!
//! `--send dropped` sends the M messages while the sessions are disconnected (after the drop; an `ECHO` on
//! the sender connection confirms the server handled every send before the resume), so each session's resume
//! replays all M. `--send connected` sends them before the drop: each session receives them live and does not
//! acknowledge them (heartbeat answers keep the position acknowledged before). A session then resumes from
//! `--resume-from processed` (the last `s` it processed: nothing is missing, and the server must replay
//! nothing) or `acked` (the last `s` acknowledged: all M are replayed, as to a client that lost what it
//! processed).
//!
//! The new connections are opened (TCP, upgrade, Hello) before the storm, so that the storm measures the
//! resumes, not the connects (the `connect` scenario measures those). A session is caught up when the last `s`
//! it expects (its start + M) arrived, or at op 22 when nothing is missing. Reported: time from each session's
//! own op 6 to its op 22 and to caught up (percentiles), from the first op 6 to the last session caught up
//! (the storm's total), resumed, refused (op 9, by code), failed; messages sent, replayed, delivered live,
//! lost (sent to a resumed session and never received, live or replayed), duplicated (the same message twice
//! in one phase, or a sequenced dispatch at or below the last `s`: dropped and counted), out of order, gaps in
//! `s`; the servers' CPU during the storm (CPU time in ms, read from `/proc` in 10 ms clock ticks, and as a
//! share of the storm's wall time, which is coarse for storms under a second) and RSS at each step.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sender::SendToConn;
use super::{
    cpu_json, join_all, micros_since, own_cpu, prepare, report, run_tag, server_rss, ConnStats,
    RAMP_TIMEOUT,
};
use crate::args::{InvalidArgs, ResumeArgs, ResumeFrom, SendWhen};
use crate::conn::{Conn, Connector, Incoming, ResumeAnswer, SessionOptions};
use crate::procfs::{self, CpuMeter};
use crate::report::{round3, with_progress, Report};
use crate::scan::{self, Kind};
use crate::stats::{Order, SeqSet, SharedLatencies};
use crate::target::SourceAddrs;

/// The dispatch type the messages arrive as.
const DIRECT: &str = "DIRECT";

/// The longest the live sends may take to be handled (the sender's barrier) and, with `--send connected`,
/// to reach every session.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// After the drop, before `--send dropped` sends: the server sees the sockets end.
const DROP_SETTLE: Duration = Duration::from_millis(200);

/// A moment, as microseconds since the run's epoch, kept as the earliest or latest of many.
struct Moment(AtomicU64);

impl Moment {
    fn earliest() -> Moment {
        Moment(AtomicU64::new(u64::MAX))
    }

    fn latest() -> Moment {
        Moment(AtomicU64::new(0))
    }

    fn min(&self, us: u64) {
        self.0.fetch_min(us, Ordering::Relaxed);
    }

    fn max(&self, us: u64) {
        self.0.fetch_max(us, Ordering::Relaxed);
    }

    fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|us| *us != u64::MAX && *us != 0)
    }
}

struct Shared {
    epoch: Instant,
    messages: u64,
    send: SendWhen,
    resume_from: ResumeFrom,
    ramp: Arc<Semaphore>,
    drop: CancellationToken,
    reconnect: CancellationToken,
    go: CancellationToken,
    finish: CancellationToken,
    /// The first connections (where the sessions open) and the resuming ones.
    first: Arc<ConnStats>,
    second: Arc<ConnStats>,
    /// Sessions that received every message live (`--send connected`).
    received_all_live: AtomicU64,
    delivered_live: AtomicU64,
    dropped: AtomicU64,
    reconnected: AtomicU64,
    reconnect_failed: AtomicU64,
    resumed: AtomicU64,
    refused: AtomicU64,
    refused_codes: Mutex<BTreeMap<String, u64>>,
    resume_failed: AtomicU64,
    resume_errors: Mutex<BTreeMap<String, u64>>,
    caught_up: AtomicU64,
    expected_replay: AtomicU64,
    replayed: AtomicU64,
    /// Messages a resumed session never received, in either phase (summed when its task ends).
    lost: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    /// Messages that arrived after the session was caught up (each also counted as duplicated or lost).
    after_caught_up: AtomicU64,
    first_op6: Moment,
    last_op6: Moment,
    last_caught_up: Moment,
    /// Per session: op 6 written → op 22 read; op 6 written → caught up.
    answer: SharedLatencies,
    catch_up: SharedLatencies,
}

impl Shared {
    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
        map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resumes answered or given up: the storm is over when this reaches the reconnected sessions.
    fn settled(&self) -> u64 {
        self.caught_up.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.resume_failed.load(Ordering::Relaxed)
            + self.second.closed.load(Ordering::Relaxed)
    }
}

/// Runs the scenario.
pub async fn run(args: &ResumeArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    // One more connection: the sender.
    let setup = prepare(common, args.sessions + 1)?;
    let sessions = setup.capped.granted.saturating_sub(1).max(1);
    let options = SessionOptions {
        resumable: true,
        ..common.session_options()
    };
    let sources = setup.connector.sources().clone();
    let node_a = Connector::with_sessions(setup.connector.target().clone(), sources, options);
    let target_b = args.target_b()?;
    let node_b = node_a.sibling(
        target_b.clone(),
        SourceAddrs::new(&target_b, node_a.sources().addrs().len()),
    );
    let prefix = format!("rs-{}-", run_tag());
    let users: Vec<String> = (0..sessions).map(|i| format!("{prefix}{i}")).collect();
    let rss_start = server_rss(common);

    let mut sender = SendToConn::open(&node_a, &format!("{prefix}sender"), false)
        .await
        .map_err(|e| InvalidArgs(format!("the sender connection did not open: {e}")))?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        messages: args.messages as u64,
        send: args.send,
        resume_from: args.resume_from,
        ramp: Arc::new(Semaphore::new(common.ramp_concurrency.max(1))),
        drop: CancellationToken::new(),
        reconnect: CancellationToken::new(),
        go: CancellationToken::new(),
        finish: CancellationToken::new(),
        first: Arc::default(),
        second: Arc::default(),
        received_all_live: AtomicU64::new(0),
        delivered_live: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        reconnected: AtomicU64::new(0),
        reconnect_failed: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        refused_codes: Mutex::default(),
        resume_failed: AtomicU64::new(0),
        resume_errors: Mutex::default(),
        caught_up: AtomicU64::new(0),
        expected_replay: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        after_caught_up: AtomicU64::new(0),
        first_op6: Moment::earliest(),
        last_op6: Moment::latest(),
        last_caught_up: Moment::latest(),
        answer: SharedLatencies::default(),
        catch_up: SharedLatencies::default(),
    });

    let mut tasks = JoinSet::new();
    for user in &users {
        tasks.spawn(session(
            shared.clone(),
            node_a.clone(),
            node_b.clone(),
            format!("user:{user}"),
        ));
    }
    let first = &shared.first;
    let ramp_start = Instant::now();
    with_progress(
        "resume open",
        || {
            format!(
                "sessions open {}/{sessions}, failed {}",
                first.opened.load(Ordering::Relaxed),
                first.failed.load(Ordering::Relaxed)
            )
        },
        async {
            while (first.attempted() as usize) < sessions && ramp_start.elapsed() < RAMP_TIMEOUT {
                sender.idle(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    let ramp = ramp_start.elapsed();
    let opened = first.opened.load(Ordering::Relaxed);
    let rss_open = server_rss(common);
    let mut notes = setup.notes;

    let mut sent = 0u64;
    let mut handled = true;
    if args.send == SendWhen::Connected {
        (sent, handled) = send_messages(&mut sender, &users, args, shared.epoch).await;
        let live_start = Instant::now();
        while shared.received_all_live.load(Ordering::Relaxed)
            + first.closed.load(Ordering::Relaxed)
            < opened
            && live_start.elapsed() < DELIVERY_TIMEOUT
        {
            sender.idle(Duration::from_millis(10)).await;
        }
    }

    // The drop: every socket at once.
    shared.drop.cancel();
    let drop_start = Instant::now();
    let live_done = opened.saturating_sub(first.closed.load(Ordering::Relaxed));
    while shared.dropped.load(Ordering::Relaxed) < live_done && drop_start.elapsed() < RAMP_TIMEOUT
    {
        sender.idle(Duration::from_millis(5)).await;
    }
    let dropped_in = drop_start.elapsed();
    if args.send == SendWhen::Dropped {
        sender.idle(DROP_SETTLE).await;
        (sent, handled) = send_messages(&mut sender, &users, args, shared.epoch).await;
    }
    if !handled {
        notes.push(
            "the server did not confirm every send (the sender's ECHO did not return)".into(),
        );
    }
    let remaining = args.gap.saturating_sub(drop_start.elapsed());
    sender.idle(remaining).await;
    let rss_detached = server_rss(common);

    // Reconnect (TCP, upgrade, Hello), then the storm.
    shared.reconnect.cancel();
    let dropped = shared.dropped.load(Ordering::Relaxed);
    let reconnect_start = Instant::now();
    let reconnected = || {
        shared.reconnected.load(Ordering::Relaxed) + shared.reconnect_failed.load(Ordering::Relaxed)
    };
    with_progress(
        "resume reconnect",
        || format!("reconnected {}/{dropped}", reconnected()),
        async {
            while reconnected() < dropped && reconnect_start.elapsed() < RAMP_TIMEOUT {
                sender.idle(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    let reconnect_took = reconnect_start.elapsed();
    let ready = shared.reconnected.load(Ordering::Relaxed);
    // Let the last reconnections settle (their Hello read) before the storm.
    sender.idle(Duration::from_millis(200)).await;

    let cpu_a = common.server_pid.map(CpuMeter::start);
    let cpu_b = args.server_b_pid.map(CpuMeter::start);
    let own_meter = own_cpu();
    let storm_start = Instant::now();
    let go_us = micros_since(shared.epoch);
    shared.go.cancel();
    with_progress(
        "resume storm",
        || {
            format!(
                "caught up {}/{ready}, resumed {}, refused {}, failed {}, replayed {}",
                shared.caught_up.load(Ordering::Relaxed),
                shared.resumed.load(Ordering::Relaxed),
                shared.refused.load(Ordering::Relaxed),
                shared.resume_failed.load(Ordering::Relaxed),
                shared.replayed.load(Ordering::Relaxed),
            )
        },
        async {
            while shared.settled() < ready && storm_start.elapsed() < args.timeout {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        },
    )
    .await;
    let storm_took = storm_start.elapsed();
    let cpu_ms = |meter: Option<CpuMeter>| {
        meter
            .and_then(|m| m.used())
            .map(|used| u64::try_from(used.as_millis()).unwrap_or(u64::MAX))
    };
    let (server_cpu_ms, server_b_cpu_ms) = (cpu_ms(cpu_a), cpu_ms(cpu_b));
    let server_cpu_pct = cpu_json(cpu_a);
    let server_b_cpu_pct = cpu_json(cpu_b);
    let own_cpu_pct = cpu_json(Some(own_meter));
    let rss_resumed = server_rss(common);
    let rss_b_resumed = args.server_b_pid.and_then(|pid| procfs::rss_kib(pid).ok());
    sender.idle(args.linger).await;
    shared.finish.cancel();
    join_all(tasks, Duration::from_secs(15)).await;
    if let Some(code) = sender.closed {
        notes.push(format!(
            "the server ended the sender connection ({})",
            code.map_or_else(|| "dropped".into(), |c| c.to_string())
        ));
    }
    sender.conn.close().await;

    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let caught_up = get(&shared.caught_up);
    let first_op6 = shared.first_op6.get();
    let total_ms = |end: Option<u64>| {
        first_op6
            .zip(end)
            .map(|(a, b)| round3(b.saturating_sub(a) as f64 / 1000.0))
    };
    let seq_gaps = get(&shared.first.seq_gaps) + get(&shared.second.seq_gaps);
    let seq_dups = get(&shared.first.seq_dups) + get(&shared.second.seq_dups);
    if common.server_pid.is_none() {
        notes.push("no --server-pid: server RSS and CPU not measured".into());
    }
    if args.url_b.is_none() {
        notes
            .push("--url-b not given: the sessions resumed on the node they were opened on".into());
    }
    let mut results = json!({
        "sessions_opened": opened,
        "messages_sent": sent,
        "sends_handled": handled,
        "delivered_live": get(&shared.delivered_live),
        "dropped": dropped,
        "reconnected": ready,
        "reconnect_failed": get(&shared.reconnect_failed),
        "resumed": get(&shared.resumed),
        "refused": get(&shared.refused),
        "refused_codes": Shared::snapshot(&shared.refused_codes),
        "resume_failed": get(&shared.resume_failed),
        "resume_errors": Shared::snapshot(&shared.resume_errors),
        "caught_up": caught_up,
        "not_caught_up": ready.saturating_sub(caught_up),
        "expected_replay": get(&shared.expected_replay),
        "replayed": get(&shared.replayed),
        "lost": get(&shared.lost),
        "duplicated": get(&shared.duplicated) + seq_dups,
        "out_of_order": get(&shared.out_of_order),
        "seq_gaps": seq_gaps,
        "seq_missing": get(&shared.first.seq_missing) + get(&shared.second.seq_missing),
        "seq_dups": seq_dups,
        "after_caught_up": get(&shared.after_caught_up),
    });
    let timing = json!({
        "time_to_caught_up_ms": total_ms(shared.last_caught_up.get()),
        "op6_spread_ms": total_ms(shared.last_op6.get()),
        "first_op6_after_go_ms": first_op6.map(|a| round3(a.saturating_sub(go_us) as f64 / 1000.0)),
        "storm_s": round3(storm_took.as_secs_f64()),
        "per_session_caught_up": shared.catch_up.snapshot().summary(),
        "per_session_op22": shared.answer.snapshot().summary(),
        "ramp_s": round3(ramp.as_secs_f64()),
        "drop_s": round3(dropped_in.as_secs_f64()),
        "reconnect_s": round3(reconnect_took.as_secs_f64()),
        "server_cpu_ms": server_cpu_ms,
        "server_b_cpu_ms": server_b_cpu_ms,
        "server_cpu_pct": server_cpu_pct,
        "server_b_cpu_pct": server_b_cpu_pct,
        "generator_cpu_pct": own_cpu_pct,
        "server_rss_start_kib": rss_start,
        "server_rss_open_kib": rss_open,
        "server_rss_detached_kib": rss_detached,
        "server_rss_resumed_kib": rss_resumed,
        "server_b_rss_resumed_kib": rss_b_resumed,
        "connections": shared.first.to_json(),
        "resume_connections": shared.second.to_json(),
    });
    if let (Value::Object(results), Value::Object(timing)) = (&mut results, timing) {
        results.extend(timing);
    }
    let params = json!({
        "url_b": target_b.url,
        "same_node": args.url_b.is_none() || target_b.url == setup.connector.target().url,
        "sessions_requested": args.sessions,
        "sessions": sessions,
        "messages_per_session": args.messages,
        "payload_bytes": args.payload,
        "send": args.send.name(),
        "resume_from": args.resume_from.name(),
        "gap_s": round3(args.gap.as_secs_f64()),
        "timeout_s": round3(args.timeout.as_secs_f64()),
        "batch": args.batch,
        "source_addresses": node_a.sources().addrs().len(),
    });
    Ok(report(
        "resume",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}

/// Sends message k = 0 … M − 1 to every user, `--batch` users per `SEND_TO`, then waits for the server to
/// have handled them all (the sender's barrier). Returns the deliveries asked for and whether the barrier
/// came back.
async fn send_messages(
    sender: &mut SendToConn,
    users: &[String],
    args: &ResumeArgs,
    epoch: Instant,
) -> (u64, bool) {
    let mut sent = 0u64;
    for k in 0..args.messages as u64 {
        let payload = scan::probe_payload(k, micros_since(epoch), args.payload);
        for batch in users.chunks(args.batch) {
            if !sender
                .send(batch.iter().map(String::as_str), &payload, None)
                .await
            {
                return (sent, false);
            }
            sent += batch.len() as u64;
        }
        if !sender.flush().await {
            return (sent, false);
        }
    }
    (sent, sender.barrier(DELIVERY_TIMEOUT).await)
}

/// When one resumed session caught up.
struct CatchUp {
    head: u64,
    sent_at: Instant,
    done: bool,
}

impl CatchUp {
    /// Records the moment the session's last expected `s` arrived (or op 22, with nothing missing).
    fn check(&mut self, shared: &Shared, conn: &Conn, times: &mut crate::stats::LocalLatencies) {
        if !self.done && conn.session().is_some_and(|s| s.last >= self.head) {
            self.done = true;
            times.record_us(u64::try_from(self.sent_at.elapsed().as_micros()).unwrap_or(u64::MAX));
            shared.last_caught_up.max(micros_since(shared.epoch));
            shared.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one session received of its messages (probe numbers 0 … M − 1).
struct Received {
    /// Every message received, in either phase.
    all: SeqSet,
    /// This phase's, for duplicates.
    phase: SeqSet,
    order: Order,
}

impl Received {
    fn new() -> Received {
        Received {
            all: SeqSet::default(),
            phase: SeqSet::default(),
            order: Order::new(1),
        }
    }

    fn next_phase(&mut self) {
        self.phase = SeqSet::default();
        self.order = Order::new(1);
    }

    /// Records message `k`; `false` when this phase had it already.
    fn record(&mut self, shared: &Shared, k: u64) -> bool {
        if k >= shared.messages || !self.phase.insert(k) {
            shared.duplicated.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.all.insert(k);
        if !self.order.in_order(k) {
            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// The probe number of a `DIRECT` dispatch, or `None` for any other frame.
fn message_number(conn: &mut Conn, text: &str) -> Option<u64> {
    match scan::classify(text) {
        Kind::Dispatch(DIRECT) => {
            let k = scan::u64_field(text, scan::SEQ_KEY);
            if k.is_none() {
                conn.unreadable_frame();
            }
            k
        }
        Kind::Unreadable => {
            conn.unreadable_frame();
            None
        }
        _ => None,
    }
}

/// One session, from open to resumed and caught up.
async fn session(
    shared: Arc<Shared>,
    node_a: Arc<Connector>,
    node_b: Arc<Connector>,
    token: String,
) {
    let opened = {
        let Ok(_permit) = shared.ramp.acquire().await else {
            return;
        };
        async {
            let mut conn = node_a.open().await?;
            conn.open_session(&token).await?;
            Ok::<_, crate::conn::OpenError>(conn)
        }
        .await
    };
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(error) => return shared.first.open_failed(error.label()),
    };
    shared.first.opened.fetch_add(1, Ordering::Relaxed);
    shared.first.logged_in(&conn);
    if shared.send == SendWhen::Connected {
        // What arrives now stays unacknowledged.
        conn.hold_acks(true);
    }
    let mut received = Received::new();
    let mut all_live = false;
    loop {
        tokio::select! {
            biased;
            () = shared.drop.cancelled() => break,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.first.closed_by_server(code);
                    shared.first.finished(&conn);
                    return;
                }
                Incoming::Text(text) => {
                    if let Some(k) = message_number(&mut conn, &text) {
                        if received.record(&shared, k) {
                            shared.delivered_live.fetch_add(1, Ordering::Relaxed);
                        }
                        if !all_live && received.all.len() == shared.messages {
                            all_live = true;
                            shared.received_all_live.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
        }
    }
    let Some(state) = conn.session().cloned() else {
        return;
    };
    shared.first.finished(&conn);
    conn.drop_socket();
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    // Every message takes the user's next position after the session's start.
    let head = state.start + shared.messages;
    let seq = match shared.resume_from {
        ResumeFrom::Processed => state.last,
        ResumeFrom::Acked => state.acked,
    };
    let expected_replay = head.saturating_sub(seq);
    received.next_phase();

    shared.reconnect.cancelled().await;
    let reopened = {
        let Ok(_permit) = shared.ramp.acquire().await else {
            return;
        };
        node_b.open().await
    };
    let mut conn = match reopened {
        Ok(conn) => conn,
        Err(error) => {
            shared.reconnect_failed.fetch_add(1, Ordering::Relaxed);
            return shared.second.open_failed(error.label());
        }
    };
    shared.reconnected.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            biased;
            () = shared.go.cancelled() => break,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.second.closed_by_server(code);
                    shared.second.finished(&conn);
                    return;
                }
                Incoming::Text(_) => {}
            },
        }
    }

    // The storm.
    let sent_at = Instant::now();
    let sent_us = micros_since(shared.epoch);
    shared.first_op6.min(sent_us);
    shared.last_op6.max(sent_us);
    let mut answer = shared.answer.local();
    let mut catch_up = shared.catch_up.local();
    let answered = match conn.send_resume(&token, &state.session_id, seq).await {
        Ok(()) => conn.resume_answer(&state.session_id, seq).await,
        Err(_) => Err(crate::conn::OpenError::Closed("resume", None)),
    };
    match answered {
        Ok(ResumeAnswer::Resumed { .. }) => {}
        Ok(ResumeAnswer::Refused(code)) => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            Shared::count(&shared.refused_codes, code);
            shared.second.finished(&conn);
            conn.close().await;
            return;
        }
        Err(error) => {
            shared.resume_failed.fetch_add(1, Ordering::Relaxed);
            Shared::count(&shared.resume_errors, error.label());
            shared.second.finished(&conn);
            return;
        }
    }
    answer.record_us(u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX));
    shared.resumed.fetch_add(1, Ordering::Relaxed);
    shared.second.opened.fetch_add(1, Ordering::Relaxed);
    shared.second.logged_in(&conn);
    shared
        .expected_replay
        .fetch_add(expected_replay, Ordering::Relaxed);
    let mut progress = CatchUp {
        head,
        sent_at,
        done: false,
    };
    progress.check(&shared, &conn, &mut catch_up);
    let ended_by_server = loop {
        tokio::select! {
            biased;
            () = shared.finish.cancelled() => break false,
            incoming = conn.recv() => match incoming {
                Incoming::Closed(code) => {
                    shared.second.closed_by_server(code);
                    break true;
                }
                Incoming::Text(text) => {
                    if let Some(k) = message_number(&mut conn, &text) {
                        if progress.done {
                            shared.after_caught_up.fetch_add(1, Ordering::Relaxed);
                        }
                        if received.record(&shared, k) {
                            shared.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                        progress.check(&shared, &conn, &mut catch_up);
                    }
                }
            },
        }
    };
    shared.lost.fetch_add(
        shared.messages.saturating_sub(received.all.len()),
        Ordering::Relaxed,
    );
    answer.flush();
    catch_up.flush();
    shared.second.finished(&conn);
    if !ended_by_server {
        // A normal close ends the session.
        conn.close().await;
    }
}
