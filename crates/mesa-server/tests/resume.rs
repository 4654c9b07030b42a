//! Resumable sessions on one node (in-memory engine), over real sockets: every test counts what was sent
//! and what arrived, and checks each position arrives exactly once, in order.

use std::time::Duration;

use mesa_server::config::ResumeConfig;
use mesa_server::{Config, Frame, Target};
use mesa_testkit::resume::*;
use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

fn config(resume: ResumeConfig) -> Config {
    Config {
        resume,
        ..Config::default()
    }
}

fn resumable_server(resume: ResumeConfig) -> mesa_server::MesaBuilder {
    echo_server().config(config(resume))
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_every_missed_message_once_in_order() {
    let server = start(resumable_server(ResumeConfig::default())).await;
    let (mut ws, id, start_at) = open(&server, "alice").await;
    assert_eq!(start_at, 0);
    for i in 1..=50 {
        server
            .mesa
            .send(&numbered(i), &Target::users(["alice"]))
            .await
            .expect("send");
    }
    let first = read_numbered(&mut ws, 20).await;
    assert_exactly_once_in_order(&first, 1, 1, 20);
    drop(ws);
    // Sent while nobody is connected: kept for the session.
    for i in 51..=100 {
        server
            .mesa
            .send(&numbered(i), &Target::users(["alice"]))
            .await
            .expect("send");
    }
    let (mut ws, answer) = resume(&server, "alice", &id, 20).await;
    assert_eq!(answer["op"], 22, "{answer}");
    assert_eq!(
        answer["d"],
        json!({"user": {"id": "alice"}, "session_id": id, "resumed": true, "seq": 20})
    );
    let replayed = read_numbered(&mut ws, 80).await;
    assert_exactly_once_in_order(&replayed, 21, 21, 80);
    // Live again, without a gap or a duplicate.
    server
        .mesa
        .send(&numbered(101), &Target::users(["alice"]))
        .await
        .expect("send");
    assert_eq!(read_numbered(&mut ws, 1).await, [(101, 101)]);
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4010_then_resumes_without_loss() {
    let mut builder = resumable_server(ResumeConfig::default()).outbound_queue(16);
    builder = builder.outbound_queue_bytes(1 << 20);
    let server = start(builder).await;
    let (mut ws, id, _) = open(&server, "slow").await;
    // A burst far past the outbound queue while the client reads nothing.
    let sent = 400u64;
    for i in 1..=sent {
        let _ = server
            .mesa
            .send(&numbered(i), &Target::users(["slow"]))
            .await;
    }
    let close = expect_close(&mut ws).await;
    assert_eq!(close.code, 4010);
    let before = numbered_before(&close);
    let got = before.len() as u64;
    assert_exactly_once_in_order(&before, 1, 1, got);
    let (mut ws, answer) = resume(&server, "slow", &id, got).await;
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    let rest = read_numbered(&mut ws, (sent - got) as usize).await;
    assert_exactly_once_in_order(&rest, got + 1, got + 1, sent - got);
    println!(
        "slow consumer: sent {sent}, {got} before 4010, {} after resume, lost 0",
        rest.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn resumes_that_cannot_be_served_are_refused_with_op_9_and_a_fresh_session_follows() {
    let resume_config = ResumeConfig {
        max_messages: 5,
        ..ResumeConfig::default()
    };
    let server = start(resumable_server(resume_config)).await;
    let (ws, id, _) = open(&server, "bob").await;
    drop(ws);
    for i in 1..=8 {
        server
            .mesa
            .send(&numbered(i), &Target::users(["bob"]))
            .await
            .expect("send");
    }
    // 8 sent, 4..=8 kept: after 2, position 3 is gone (exactly one past the bound).
    let (mut ws, answer) = resume(&server, "bob", &id, 2).await;
    assert_eq!(answer["op"], 9, "{answer}");
    assert_eq!(answer["d"]["code"], "retention_exceeded");
    // The connection stays open: a fresh session on it works.
    let d = authenticate(&mut ws, json!({"token": "user:bob", "resumable": true})).await;
    assert_eq!(d["resumed"], false);
    drop(ws);
    // Unknown id, another user's id, a position the stream never reached.
    let (_, answer) = resume(&server, "bob", "0123456789abcdef0123456789abcdef", 0).await;
    assert_eq!(answer["d"]["code"], "session_unknown", "{answer}");
    let (_, answer) = resume(&server, "mallory", &id, 8).await;
    assert_eq!(answer["d"]["code"], "session_unknown", "{answer}");
    let (_, answer) = resume(&server, "bob", "not-an-id", 0).await;
    assert_eq!(answer["d"]["code"], "session_unknown", "{answer}");
    let (_, answer) = resume(&server, "bob", &id, 9).await;
    assert_eq!(answer["d"]["code"], "sequence_ahead", "{answer}");
    // On the boundary it is served: after 3, positions 4..=8 are all kept.
    let (mut ws, answer) = resume(&server, "bob", &id, 3).await;
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    let replayed = read_numbered(&mut ws, 5).await;
    assert_exactly_once_in_order(&replayed, 4, 4, 5);
    server.stop().await;
}

#[tokio::test]
async fn a_session_ended_by_a_normal_close_or_expired_cannot_be_resumed() {
    let resume_config = ResumeConfig {
        session_ttl_ms: 300,
        ..ResumeConfig::default()
    };
    let server = start(resumable_server(resume_config)).await;
    let (mut ws, id, _) = open(&server, "carol").await;
    // 1000: the client ends its session (a close without a code, 1005, would keep it).
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let _ = expect_close(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, answer) = resume(&server, "carol", &id, 0).await;
    assert_eq!(answer["d"]["code"], "session_unknown", "{answer}");
    // Dropped (kept), then the TTL passes.
    let (ws, id, _) = open(&server, "carol").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, answer) = resume(&server, "carol", &id, 0).await;
    assert_eq!(answer["d"]["code"], "session_unknown", "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_resume_takes_the_session_over_from_a_connection_still_open() {
    let server = start(resumable_server(ResumeConfig::default())).await;
    let (mut old, id, _) = open(&server, "dave").await;
    let (mut new, answer) = resume(&server, "dave", &id, 0).await;
    assert_eq!(answer["d"]["resumed"], true, "{answer}");
    assert_eq!(expect_close(&mut old).await.code, 4012);
    server
        .mesa
        .send(&numbered(1), &Target::users(["dave"]))
        .await
        .expect("send");
    assert_eq!(read_numbered(&mut new, 1).await, [(1, 1)]);
    server.stop().await;
}

#[tokio::test]
async fn volatile_broadcast_and_connection_sends_carry_no_s_and_are_not_replayed() {
    let server = start(resumable_server(ResumeConfig::default())).await;
    let (mut ws, id, _) = open(&server, "erin").await;
    let mut volatile = Frame::dispatch("TYPING", json!({}));
    volatile.o = Some(json!({"sync": false}));
    server
        .mesa
        .send(&volatile, &Target::users(["erin"]))
        .await
        .expect("send");
    server
        .mesa
        .broadcast(&Frame::dispatch("ALL", json!({})))
        .await
        .expect("send");
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 0, "t": "TYPING", "d": {}})
    );
    assert_eq!(recv(&mut ws).await, json!({"op": 0, "t": "ALL", "d": {}}));
    drop(ws);
    server
        .mesa
        .send(&volatile, &Target::users(["erin"]))
        .await
        .expect("send");
    server
        .mesa
        .send(&numbered(1), &Target::users(["erin"]))
        .await
        .expect("send");
    let (mut ws, answer) = resume(&server, "erin", &id, 0).await;
    assert_eq!(answer["op"], 22);
    assert_eq!(read_numbered(&mut ws, 1).await, [(1, 1)]);
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn the_offline_mailbox_reaches_each_device_and_goes_after_acknowledgement() {
    let server = start(resumable_server(ResumeConfig::default())).await;
    // Two devices that have been online, both offline now.
    let (phone, phone_id, _) = open(&server, "frank").await;
    let (laptop, laptop_id, _) = open(&server, "frank").await;
    drop(phone);
    drop(laptop);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=10 {
        server
            .mesa
            .send(&numbered(i), &Target::users(["frank"]))
            .await
            .expect("send");
    }
    let (mut phone, _) = resume(&server, "frank", &phone_id, 0).await;
    assert_exactly_once_in_order(&read_numbered(&mut phone, 10).await, 1, 1, 10);
    send(&mut phone, json!({"op": 11, "s": 10})).await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The laptop has not acknowledged: it still gets all of them.
    let (mut laptop, _) = resume(&server, "frank", &laptop_id, 0).await;
    assert_exactly_once_in_order(&read_numbered(&mut laptop, 10).await, 1, 1, 10);
    send(&mut laptop, json!({"op": 11, "s": 10})).await;
    laptop.close(None).await.expect("close");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Acknowledged by every device: a new device starts after them, with nothing to replay.
    let (mut tablet, _, start_at) = open(&server, "frank").await;
    assert_eq!(start_at, 10);
    expect_silence(&mut tablet, Duration::from_millis(200)).await;
    // A user who was never online: the first device gets the mailbox.
    for i in 1..=3 {
        server
            .mesa
            .send(&numbered(i), &Target::users(["grace"]))
            .await
            .expect("send");
    }
    let (mut first, _, start_at) = open(&server, "grace").await;
    assert_eq!(start_at, 0);
    assert_exactly_once_in_order(&read_numbered(&mut first, 3).await, 1, 1, 3);
    server.stop().await;
}

#[tokio::test]
async fn a_mesa_1_5_client_sees_the_frames_it_always_saw() {
    let server = start(resumable_server(ResumeConfig::default())).await;
    let mut ws = connect_as(&server, "henry").await;
    server
        .mesa
        .send(&numbered(1), &Target::users(["henry"]))
        .await
        .expect("send");
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 0, "t": "N", "d": {"i": 1}})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_paced_shutdown_spreads_op_7_over_the_window_with_retry_hints() {
    let builder = resumable_server(ResumeConfig::default()).config(Config {
        shutdown_drain_window_ms: 800,
        shutdown_timeout_ms: 4000,
        shutdown_grace_ms: 100,
        ..Config::default()
    });
    let server = start(builder).await;
    let mut clients = Vec::new();
    for n in 0..12 {
        clients.push(connect_as(&server, &format!("u{n}")).await);
    }
    let started = tokio::time::Instant::now();
    let mesa = server.mesa.clone();
    let stopping = tokio::spawn(async move { mesa.shutdown().await });
    let mut arrivals = Vec::new();
    let mut hints = Vec::new();
    for ws in &mut clients {
        let frame = recv(ws).await;
        assert_eq!(frame["op"], 7, "{frame}");
        arrivals.push(started.elapsed());
        hints.push(frame["d"]["retry_after_ms"].as_u64().expect("hint"));
        assert_eq!(expect_close(ws).await.code, 1012);
    }
    assert!(stopping.await.expect("join"), "shutdown finished in time");
    arrivals.sort();
    hints.sort_unstable();
    println!("op 7 arrivals {arrivals:?}, hints {hints:?}");
    // Spread, not all at once (the window is 800 ms; the bound is loose for a busy machine).
    assert!(
        arrivals[11] - arrivals[0] >= Duration::from_millis(200),
        "{arrivals:?}"
    );
    assert!(hints.iter().all(|h| *h <= 1000));
    assert!(hints[0] != hints[11], "{hints:?}");
}

#[tokio::test]
async fn without_resume_the_server_offers_none() {
    let builder = echo_server().config(config(ResumeConfig {
        enabled: false,
        ..ResumeConfig::default()
    }));
    let server = start(builder).await;
    let (mut ws, hello) = connect_hello(&server).await;
    assert!(hello["d"].get("c_resume").is_none(), "{hello}");
    let d = authenticate(&mut ws, json!({"token": "user:ivy", "resumable": true})).await;
    assert_eq!(d, json!({"id": "ivy"}), "a plain op 22");
    let (_, answer) = resume(&server, "ivy", "0123456789abcdef0123456789abcdef", 0).await;
    assert_eq!(answer["d"]["code"], "session_unknown");
    server.stop().await;
}
