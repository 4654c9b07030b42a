//! The `mesa-conformance` contract, checked on the wire against the real binary.
//!
//! Each test starts its own server process on a free 127.0.0.1 port and speaks raw WebSocket frames to it.
//! Frames are compared as parsed JSON: key order inside objects is not significant, everything else is.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn hello_announces_the_conformance_settings() {
    let server = Server::start();
    let (_ws, hello) = connect_hello(&server).await;
    assert_eq!(
        hello,
        json!({"op": 10, "d": {
            "c_heartbeat_interval": 1000,
            "c_reconnect_interval": 500,
            "c_authentication_timeout": 2000,
            "rules": ["sends_user_object"],
            "c_resume": {
                "session_ttl": 300000,
                "max_messages": 1000,
                "max_bytes": 1048576,
                "max_age": 900000,
            },
        }})
    );
}

#[tokio::test]
async fn heartbeats_arrive_every_second_while_answered() {
    let server = Server::start();
    let (mut ws, _) = connect_hello(&server).await;
    let hello_at = Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 5 {
        let frame = recv_raw(&mut ws).await;
        assert_eq!(
            frame,
            json!({"op": 1, "d": {}}),
            "answered beats carry no tries"
        );
        beats.push(hello_at.elapsed());
        send(&mut ws, json!({"op": 11, "d": {}})).await;
    }
    eprintln!("heartbeats after Hello at {beats:?}");
    let first = beats[0];
    assert!(
        first >= Duration::from_millis(800) && first <= Duration::from_millis(1500),
        "first beat at {first:?}"
    );
    for pair in beats.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1500),
            "beats {gap:?} apart: {beats:?}"
        );
    }
    // Five intervals later the answering client is still connected.
    assert_echo_works(&mut ws).await;
}

#[tokio::test]
async fn silent_client_is_closed_after_two_missed_beats_plus_one_interval() {
    let server = Server::start();
    let (mut ws, _) = connect_hello(&server).await;
    let hello_at = Instant::now();
    let Close {
        code,
        reason,
        before: frames,
    } = expect_close(&mut ws).await;
    let survived = hello_at.elapsed();
    eprintln!(
        "silent client closed {survived:?} after Hello with {code} {reason:?}; frames: {frames:?}"
    );
    assert_eq!(
        frames,
        vec![
            json!({"op": 1, "d": {}}),
            json!({"op": 1, "d": {"tries": 1, "max": 2}}),
            json!({"op": 1, "d": {"tries": 2, "max": 2}}),
        ]
    );
    assert_eq!(code, 4009, "heartbeat timeout close code");
    // Expected: beats at 1, 2 and 3 s, close at the fourth beat, 4 s after Hello.
    assert!(
        survived >= Duration::from_millis(3500) && survived <= Duration::from_millis(5500),
        "silent client survived {survived:?}, expected about 4 s"
    );
}

#[tokio::test]
async fn user_token_is_acknowledged_with_the_user_object() {
    let server = Server::start();
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:alice"}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 22, "d": {"id": "alice", "name": "User alice"}})
    );
    // Mesa 1.5 clients add shouldSync to the credentials; it changes nothing here.
    let (mut ws, _) = connect_hello(&server).await;
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": "user:42", "shouldSync": true}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 22, "d": {"id": "42", "name": "User 42"}})
    );
    assert_echo_works(&mut ws).await;
}

#[tokio::test]
async fn bad_or_missing_token_closes_with_1008() {
    let server = Server::start();
    for d in [
        json!({"token": "nope"}),
        json!({"token": "user:"}),
        json!({"token": 7}),
        json!({}),
        json!(null),
        json!("user:alice"),
    ] {
        let (mut ws, _) = connect_hello(&server).await;
        send(&mut ws, json!({"op": 2, "d": d})).await;
        let Close {
            code,
            reason,
            before: frames,
        } = expect_close(&mut ws).await;
        assert_eq!(code, 1008, "d = {d}: reason {reason:?}");
        assert!(
            frames.is_empty(),
            "d = {d}: no op 22 before the close: {frames:?}"
        );
    }
    // Op 2 without any `d`.
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2})).await;
    assert_eq!(expect_close(&mut ws).await.code, 1008);
}

#[tokio::test]
async fn echo_goes_back_to_the_sender_only() {
    let server = Server::start();
    let (mut sender, _) = connect_hello(&server).await;
    let mut other = connect_as(&server, "bob").await;
    let d = json!({"text": "hi", "n": [1, 2, {"deep": null}]});
    send(&mut sender, json!({"op": 0, "t": "ECHO", "d": d})).await;
    assert_eq!(
        recv(&mut sender).await,
        json!({"op": 0, "d": d, "t": "ECHO"})
    );
    expect_silence(&mut other, Duration::from_millis(300)).await;
    expect_silence(&mut sender, Duration::from_millis(100)).await;

    // Authenticated senders too; `s` and `o` are not echoed.
    let mut alice = connect_as(&server, "alice").await;
    send(
        &mut alice,
        json!({"op": 0, "t": "ECHO", "d": "plain", "s": 9, "o": {"sync": false}}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"op": 0, "d": "plain", "t": "ECHO"})
    );
    expect_silence(&mut other, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn broadcast_reaches_every_connection_including_unauthenticated_and_sender() {
    let server = Server::start();
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    let (mut anonymous, _) = connect_hello(&server).await;
    // The library writes Hello before it registers the connection, so a broadcast sent right after the Hello
    // can miss it (see `broadcast_reaches_a_connection_right_after_its_hello`). A round trip through the
    // connection's own task proves it is registered.
    assert_echo_works(&mut anonymous).await;
    let d = json!({"news": 1});
    send(&mut alice, json!({"op": 0, "t": "BROADCAST", "d": d})).await;
    let expected = json!({"op": 0, "d": d, "t": "BROADCAST"});
    for ws in [&mut alice, &mut bob, &mut anonymous] {
        assert_eq!(recv(ws).await, expected);
    }
    // An unauthenticated sender reaches everyone as well, itself included.
    send(
        &mut anonymous,
        json!({"op": 0, "t": "BROADCAST", "d": [1, 2]}),
    )
    .await;
    let expected = json!({"op": 0, "d": [1, 2], "t": "BROADCAST"});
    for ws in [&mut alice, &mut bob, &mut anonymous] {
        assert_eq!(recv(ws).await, expected);
    }
    for ws in [&mut alice, &mut bob, &mut anonymous] {
        expect_silence(ws, Duration::from_millis(200)).await;
    }
}

/// Regression test for a `mesa-server` race (fixed): the connection task used to write Hello and only then
/// insert the connection into the registry, so a broadcast sent just after a client read its Hello was
/// sometimes never delivered to it (1 to 5% of tries on a 2-core machine under CPU load).
#[tokio::test]
async fn broadcast_reaches_a_connection_right_after_its_hello() {
    let server = Server::start();
    let mut sender = connect_as(&server, "sender").await;
    let mut missed = Vec::new();
    for i in 0..200 {
        let (mut fresh, _) = connect_hello(&server).await;
        send(&mut sender, json!({"op": 0, "t": "BROADCAST", "d": i})).await;
        assert_eq!(recv(&mut sender).await["d"], i);
        let got = tokio::time::timeout(Duration::from_millis(500), recv(&mut fresh)).await;
        if got.is_err() {
            missed.push(i);
        }
    }
    assert!(
        missed.is_empty(),
        "{} of 200 fresh connections missed the broadcast: {missed:?}",
        missed.len()
    );
}

#[tokio::test]
async fn send_to_reaches_every_connection_of_listed_users_except_excluded() {
    let server = Server::start();
    let mut alice_phone = connect_as(&server, "alice").await;
    let mut alice_laptop = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    let mut carol = connect_as(&server, "carol").await;
    let mut sender = connect_as(&server, "dave").await;
    let (mut anonymous, _) = connect_hello(&server).await;

    let payload = json!({"msg": "for alice and bob"});
    send(
        &mut sender,
        json!({"op": 0, "t": "SEND_TO", "d": {
            "to": ["alice", "bob", "carol", "nobody"],
            "excluding": ["carol"],
            "payload": payload,
        }}),
    )
    .await;
    let expected = json!({"op": 0, "d": payload, "t": "DIRECT"});
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        assert_eq!(recv(ws).await, expected);
    }
    for ws in [&mut carol, &mut sender, &mut anonymous] {
        expect_silence(ws, Duration::from_millis(300)).await;
    }

    // Without `excluding`, and from an unauthenticated sender, to itself-free targets.
    send(
        &mut anonymous,
        json!({"op": 0, "t": "SEND_TO", "d": {"to": ["carol"], "payload": null}}),
    )
    .await;
    assert_eq!(
        recv(&mut carol).await,
        json!({"op": 0, "d": null, "t": "DIRECT"})
    );
    for ws in [
        &mut alice_phone,
        &mut alice_laptop,
        &mut bob,
        &mut sender,
        &mut anonymous,
    ] {
        expect_silence(ws, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn malformed_send_to_is_ignored() {
    let server = Server::start();
    let mut alice = connect_as(&server, "alice").await;
    let (mut sender, _) = connect_hello(&server).await;
    for d in [
        json!(null),
        json!("alice"),
        json!({"to": ["alice"]}),
        json!({"to": "alice", "payload": 1}),
        json!({"to": [1], "payload": 1}),
        json!({"to": ["alice"], "excluding": "bob", "payload": 1}),
        json!({"payload": 1}),
    ] {
        send(&mut sender, json!({"op": 0, "t": "SEND_TO", "d": d})).await;
    }
    send(&mut sender, json!({"op": 0, "t": "SEND_TO"})).await;
    expect_silence(&mut alice, Duration::from_millis(300)).await;
    expect_silence(&mut sender, Duration::from_millis(100)).await;
    assert_echo_works(&mut sender).await;
    assert_echo_works(&mut alice).await;
}

#[tokio::test]
async fn unknown_opcodes_and_types_are_ignored() {
    let server = Server::start();
    let (mut ws, _) = connect_hello(&server).await;
    let mut watcher = connect_as(&server, "watcher").await;
    for frame in [
        json!({"op": 0, "t": "NOT_A_TYPE", "d": {}}),
        json!({"op": 0, "t": "echo", "d": {}}),
        json!({"op": 0, "d": {"no": "type"}}),
        json!({"op": 3, "d": {}}),
        json!({"op": 5, "t": "DISCONNECT_CLIENT", "d": {}}),
        json!({"op": 7}),
        json!({"op": 10, "d": {}}),
        json!({"op": 11, "d": {}}),
        json!({"op": 22, "d": {}}),
        json!({"op": 99, "d": {}, "t": "ECHO"}),
    ] {
        send(&mut ws, frame).await;
    }
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    expect_silence(&mut watcher, Duration::from_millis(100)).await;
    assert_echo_works(&mut ws).await;
    // Still allowed to authenticate afterwards.
    send(&mut ws, json!({"op": 2, "d": {"token": "user:late"}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 22, "d": {"id": "late", "name": "User late"}})
    );
}

/// Sends `signal`, checks every client gets op 7 and 1012, and returns how long the process took to exit.
async fn stop_with(signal: &str) -> Duration {
    let mut server = Server::start();
    let port = server.port;
    let mut alice = connect_as(&server, "alice").await;
    let (mut anonymous, _) = connect_hello(&server).await;
    let signalled_at = Instant::now();
    server.signal(signal);
    for ws in [&mut alice, &mut anonymous] {
        let Close {
            code,
            before: frames,
            ..
        } = expect_close(ws).await;
        let frames: Vec<Value> = frames.into_iter().map(without_retry_hint).collect();
        assert_eq!(
            frames,
            vec![json!({"op": 7, "d": {}})],
            "op 7 before the close"
        );
        assert_eq!(code, 1012);
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("server still running 5 s after the signal");
    let took = signalled_at.elapsed();
    assert!(status.success(), "exit status after SIG{signal}: {status}");
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port released after exit");
    took
}

#[tokio::test]
async fn sigterm_sends_op7_and_1012_then_exits_and_frees_the_port() {
    let took = stop_with("TERM").await;
    eprintln!("exited {took:?} after SIGTERM");
    assert!(
        took <= Duration::from_millis(1000),
        "took {took:?} to exit after SIGTERM"
    );
}

#[tokio::test]
async fn sigint_stops_it_the_same_way() {
    let took = stop_with("INT").await;
    eprintln!("exited {took:?} after SIGINT");
    assert!(
        took <= Duration::from_millis(1000),
        "took {took:?} to exit after SIGINT"
    );
}

#[tokio::test]
async fn clients_that_never_read_do_not_stall_shutdown() {
    // A client that never reads cannot keep the process alive past the shutdown deadline.
    let mut server = Server::start();
    let _reader_that_never_reads = connect(&server).await;
    let (_ws, _) = connect_hello(&server).await;
    let signalled_at = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("server still running 5 s after SIGTERM");
    let took = signalled_at.elapsed();
    eprintln!("exited {took:?} after SIGTERM with clients that never read");
    assert!(status.success(), "{status}");
    assert!(took <= Duration::from_millis(1200), "took {took:?}");
}

/// Without the `redis` feature there is no cluster to join (`tests/cluster.rs` covers the feature).
#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_url_is_ignored_with_one_log_line() {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conformance-redis-{}.log", std::process::id()));
    let secret_url = "redis://:hunter2@127.0.0.1:1/0";
    let mut server = Server::start_with(&[("REDIS_URL", secret_url)], Some(&log));
    // It serves as usual, as one node.
    let mut ws = connect_as(&server, "alice").await;
    assert_echo_works(&mut ws).await;
    server.signal("TERM");
    server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exited");
    let text = std::fs::read_to_string(&log).expect("read log");
    let _ = std::fs::remove_file(&log);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("REDIS_URL")).collect();
    assert_eq!(lines.len(), 1, "one line about REDIS_URL in:\n{text}");
    assert!(lines[0].contains("ignored"), "{}", lines[0]);
    assert!(
        !text.contains("hunter2"),
        "the URL (and its password) is not logged:\n{text}"
    );
}

#[test]
fn an_invalid_port_is_refused_with_a_clear_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesa-conformance"))
        .env("PORT", "not-a-port")
        .env("NO_COLOR", "1")
        .output()
        .expect("run mesa-conformance");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT must be a port number"), "{stderr}");
}
