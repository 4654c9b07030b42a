//! Resumable sessions across nodes, with streams in Redis: two `mesa-server` nodes on one real
//! `redis-server`, raw WebSocket clients on 127.0.0.1. Every test counts what was sent and what arrived and
//! checks each position arrives exactly once, in order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mesa_redis::{Dispatcher, RedisConfig, RedisEngine};
use mesa_server::{Engine, Frame, Mesa, SessionPolicy, Target};
use mesa_testkit::redis::RedisServer;
use mesa_testkit::resume::*;
use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use serde_json::json;

/// The configuration every node and Dispatcher of a test shares (one namespace per test).
fn shared(redis: &RedisServer, namespace: &str) -> RedisConfig {
    common::config(&redis.url())
        .with_namespace(common::namespace(namespace))
        .with_sessions(Some(SessionPolicy::default()))
}

async fn node(config: &RedisConfig, outbound_queue: usize) -> (TestServer, Arc<RedisEngine>) {
    let engine = common::engine(config);
    let builder = with_token_auth(Mesa::builder())
        .engine(engine.clone())
        .outbound_queue(outbound_queue)
        .outbound_queue_bytes(1 << 20);
    (start(builder).await, engine)
}

async fn send_numbered(mesa: &Mesa, user: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        mesa.send(&numbered(i), &Target::users([user]))
            .await
            .expect("Redis took the send");
    }
}

fn redis_cli(redis: &RedisServer, args: &[&str]) {
    let status = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(redis.port().to_string())
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(status.success(), "redis-cli {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_on_one_node_resumes_on_another_with_every_message_once_in_order() {
    let redis = RedisServer::start();
    let config = shared(&redis, "resume");
    let (a, _engine_a) = node(&config, 4096).await;
    let (b, _engine_b) = node(&config, 4096).await;
    let dispatcher = Dispatcher::connect(config.clone()).expect("dispatcher");

    let (mut ws, id, start_at) = open(&a, "alice").await;
    assert_eq!(start_at, 0);
    send_numbered(&a.mesa, "alice", 1..=50).await;
    let first = read_numbered(&mut ws, 30).await;
    assert_exactly_once_in_order(&first, 1, 1, 30);
    drop(ws);
    // While alice is away: sends through node B, through a Dispatcher, and after Redis forgot the scripts
    // (a restart or failover does that): every one is kept.
    send_numbered(&b.mesa, "alice", 51..=80).await;
    for i in 81..=90 {
        dispatcher
            .send(&numbered(i), &Target::users(["alice"]))
            .await
            .expect("dispatched");
    }
    redis_cli(&redis, &["SCRIPT", "FLUSH"]);
    send_numbered(&a.mesa, "alice", 91..=100).await;

    let (mut ws, answer) = resume(&b, "alice", &id, 30).await;
    assert_eq!(answer["op"], 22, "{answer}");
    assert_eq!(
        answer["d"],
        json!({"user": {"id": "alice"}, "session_id": id, "resumed": true, "seq": 30})
    );
    let replayed = read_numbered(&mut ws, 70).await;
    assert_exactly_once_in_order(&replayed, 31, 31, 70);
    // Live again on node B, whichever node sends, without a gap or a duplicate.
    send_numbered(&a.mesa, "alice", 101..=110).await;
    send_numbered(&b.mesa, "alice", 111..=120).await;
    let live = read_numbered(&mut ws, 20).await;
    assert_exactly_once_in_order(&live, 101, 101, 20);
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    println!(
        "cross-node resume: sent 120, received 30 + 70 replayed + 20 live, lost 0, duplicated 0"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_closed_with_4010_resumes_on_another_node_without_loss() {
    let redis = RedisServer::start();
    let mut policy = SessionPolicy::default();
    policy.retention.max_bytes = 64 << 20;
    let config = shared(&redis, "slow").with_sessions(Some(policy));
    let (a, _engine_a) = node(&config, 16).await;
    let (b, _engine_b) = node(&config, 4096).await;
    let dispatcher = Dispatcher::connect(config.clone()).expect("dispatcher");
    let (mut ws, id, _) = open(&a, "slow").await;
    // A burst far past the outbound queue and the sockets' buffers (400 frames of 16 KiB) while the client
    // reads nothing: queued on the Dispatcher at once (one pipeline).
    let sent = 400u64;
    let pad = "x".repeat(16 << 10);
    let frames: Vec<Frame> = (1..=sent)
        .map(|i| Frame::dispatch("N", json!({ "i": i, "pad": pad })))
        .collect();
    let pending: Vec<_> = frames
        .iter()
        .map(|frame| dispatcher.send(frame, &Target::users(["slow"])))
        .collect();
    for result in futures_util::future::join_all(pending).await {
        result.expect("dispatched");
    }
    let close = expect_close(&mut ws).await;
    assert_eq!(
        close.code, 4010,
        "closed with {} {}",
        close.code, close.reason
    );
    let before = numbered_before(&close);
    let got = before.len() as u64;
    assert_exactly_once_in_order(&before, 1, 1, got);
    let (mut ws, answer) = resume(&b, "slow", &id, got).await;
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    let rest = read_numbered(&mut ws, (sent - got) as usize).await;
    assert_exactly_once_in_order(&rest, got + 1, got + 1, sent - got);
    println!(
        "slow consumer over Redis: sent {sent}, {got} before 4010, {} after resume on the other node, lost 0",
        rest.len()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_node_takes_the_session_over_and_foreign_ids_are_refused() {
    let redis = RedisServer::start();
    let config = shared(&redis, "takeover");
    let (a, _engine_a) = node(&config, 4096).await;
    let (b, _engine_b) = node(&config, 4096).await;
    let (mut old, id, _) = open(&a, "carol").await;
    send_numbered(&a.mesa, "carol", 1..=5).await;
    assert_exactly_once_in_order(&read_numbered(&mut old, 5).await, 1, 1, 5);
    // Another user presenting carol's session id is told it does not exist (and may start fresh).
    let (mut eve, answer) = resume(&b, "eve", &id, 0).await;
    assert_eq!(answer["op"], 9, "{answer}");
    assert_eq!(answer["d"]["code"], "session_unknown");
    let d = authenticate(&mut eve, json!({"token": "user:eve", "resumable": true})).await;
    assert_eq!(d["resumed"], false);
    // Carol's session, still open on A, resumed on B: only one connection may serve it.
    let (mut new, answer) = resume(&b, "carol", &id, 5).await;
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    let close = expect_close(&mut old).await;
    assert_eq!(close.code, 4012, "{close:?}");
    send_numbered(&a.mesa, "carol", 6..=10).await;
    assert_exactly_once_in_order(&read_numbered(&mut new, 5).await, 6, 6, 5);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_mailbox_is_kept_in_redis_and_reaches_every_device_of_the_user() {
    let redis = RedisServer::start();
    let config = shared(&redis, "mailbox");
    let (a, _engine_a) = node(&config, 4096).await;
    let (b, _engine_b) = node(&config, 4096).await;
    let dispatcher = Dispatcher::connect(config.clone()).expect("dispatcher");
    for i in 1..=5 {
        dispatcher
            .send(&numbered(i), &Target::users(["dave"]))
            .await
            .expect("dispatched");
    }
    // Two devices, on two nodes, each get the mailbox in order.
    let (mut phone, _, start_phone) = open(&a, "dave").await;
    let (mut laptop, _, start_laptop) = open(&b, "dave").await;
    assert_eq!((start_phone, start_laptop), (0, 0));
    assert_exactly_once_in_order(&read_numbered(&mut phone, 5).await, 1, 1, 5);
    assert_exactly_once_in_order(&read_numbered(&mut laptop, 5).await, 1, 1, 5);
    // Acknowledged by a device: a later device starts after it.
    send(&mut phone, json!({"op": 11, "s": 5})).await;
    common::eventually(
        "the acknowledgement written",
        Duration::from_secs(5),
        || async {
            let (_, _, start) = open(&b, "dave").await;
            start == 5
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_user_whose_node_died_is_kept_as_mailbox_before_the_node_is_reaped() {
    let redis = RedisServer::start();
    let config = shared(&redis, "deadnode");
    let (a, engine_a) = node(&config, 4096).await;
    let (b, _engine_b) = node(&config, 4096).await;
    let dispatcher = Dispatcher::connect(config.clone()).expect("dispatcher");
    // Gus is connected to node A without a resumable session: nothing of his is kept in Redis but his
    // presence entry.
    let mut ws = connect_as(&a, "gus").await;
    // Node A subscribes to his channel and writes his presence in the background: a send before that is
    // kept as mailbox, not (or not only) delivered live.
    let channel = engine_a.keys().user_channel("gus");
    let presence = engine_a.keys().presence("gus");
    redis.wait_for_subscribers(&channel, 1);
    common::eventually("gus's presence written", Duration::from_secs(5), || async {
        redis.cli(&["EXISTS", &presence]) == "1"
    })
    .await;
    send_numbered(&a.mesa, "gus", 1..=2).await;
    for i in 1..=2 {
        let frame = recv(&mut ws).await;
        assert_eq!(
            (&frame["op"], &frame["d"]["i"]),
            (&json!(0), &json!(i)),
            "{frame}"
        );
    }
    // Node A dies without a goodbye: Redis drops its subscriptions at once, its presence entries stay
    // until another node reaps it (node_ttl, 15 s here, longer than this test).
    engine_a.abort();
    common::eventually(
        "Redis dropped node A's subscriptions",
        Duration::from_secs(5),
        || async { redis.cli(&["PUBSUB", "NUMSUB", &channel]).ends_with("\n0") },
    )
    .await;
    assert_eq!(redis.cli(&["EXISTS", &presence]), "1");
    // Sends meanwhile, through the Dispatcher and node B, reach nobody live: they are kept.
    for i in 3..=4 {
        dispatcher
            .send(&numbered(i), &Target::users(["gus"]))
            .await
            .expect("dispatched");
    }
    send_numbered(&b.mesa, "gus", 5..=6).await;
    // Gus comes back on node B and gets them, in order, from his mailbox.
    let (mut ws, _, start) = open(&b, "gus").await;
    assert_eq!(start, 0);
    assert_exactly_once_in_order(&read_numbered(&mut ws, 4).await, 1, 3, 4);
    a.stop().await;
    b.stop().await;
}

/// The record of `session` in Redis: `<cursor>|<holder>|<expires>` (holder empty and an expiry once
/// released).
fn session_record(redis: &RedisServer, engine: &RedisEngine, user: &str, session: &str) -> String {
    redis.cli(&["HGET", &engine.keys().stream_sessions(user), session])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_release_redis_did_not_take_is_written_once_it_is_back() {
    // With persistence, so that what Redis took before it went down is still there after.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let config = shared(&redis, "release");
    let (a, engine) = node(&config, 4096).await;
    let (ws, id, _) = open(&a, "hana").await;
    let held = session_record(&redis, &engine, "hana", &id);
    assert!(
        held.starts_with("0|") && held.ends_with("|0") && held.len() > 4,
        "{held}"
    );
    // Redis goes down; meanwhile the connection ends, and its release cannot be written.
    redis.kill();
    drop(ws);
    common::eventually(
        "the release kept to be written later",
        Duration::from_secs(10),
        || async { engine.metrics().releases_waiting == 1 },
    )
    .await;
    // Redis comes back with its data: the release is written (the session is no longer held, it
    // expires after the session TTL unless resumed).
    redis.restart();
    common::eventually("the release written", Duration::from_secs(10), || async {
        session_record(&redis, &engine, "hana", &id).starts_with("0||")
    })
    .await;
    assert_eq!(engine.metrics().releases_waiting, 0);
    let released = session_record(&redis, &engine, "hana", &id);
    assert!(!released.ends_with("|0"), "an expiry is set: {released}");
    // And the session still resumes.
    let (_ws, answer) = resume(&a, "hana", &id, 0).await;
    assert_eq!(answer["op"], 22, "{answer}");
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarts_empty_invalidates_live_sessions_explicitly() {
    let mut redis = RedisServer::start();
    let config = shared(&redis, "restart");
    let (a, engine) = node(&config, 4096).await;
    let (mut ws, id, _) = open(&a, "erin").await;
    send_numbered(&a.mesa, "erin", 1..=5).await;
    assert_exactly_once_in_order(&read_numbered(&mut ws, 5).await, 1, 1, 5);
    // Redis forgets everything; the node reconnects by itself and every resumable session re-reads its
    // stream: erin's session is gone, which she is told (she would refetch her state), not left waiting
    // on positions that will never come.
    redis.restart();
    let invalid = loop {
        let frame = recv_raw(&mut ws).await;
        if frame["op"] == 1 {
            send(&mut ws, json!({"op": 11, "s": 5})).await;
            continue;
        }
        break frame;
    };
    assert_eq!(invalid["op"], 9, "{invalid}");
    assert_eq!(invalid["d"]["code"], "retention_exceeded", "{invalid}");
    let close = expect_close(&mut ws).await;
    assert_eq!(close.code, 4013);
    assert!(engine.health().is_healthy());
    // A resume of the lost session is refused; a fresh one works.
    let (mut ws, answer) = resume(&a, "erin", &id, 5).await;
    assert_eq!(answer["op"], 9, "{answer}");
    assert_eq!(answer["d"]["code"], "session_unknown");
    let d = authenticate(&mut ws, json!({"token": "user:erin", "resumable": true})).await;
    assert_eq!(d["resumed"], false);
    send_numbered(&a.mesa, "erin", 6..=8).await;
    assert_exactly_once_in_order(&read_numbered(&mut ws, 3).await, 1, 6, 3);
    a.stop().await;
}
