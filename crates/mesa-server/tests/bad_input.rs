//! Every bad input has a defined outcome, and a second, well-behaved client is not affected.
//!
//! Each test connects a `bystander` first, makes a peer misbehave, checks the outcome (close code, HTTP status,
//! dropped socket), then proves the bystander still round-trips an echo.

use std::time::Duration;

use futures_util::SinkExt;
use mesa_protocol::RateLimit;
use mesa_server::{Frame, MesaBuilder};
use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as WsOpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

async fn with_bystander(builder: MesaBuilder) -> (TestServer, Ws) {
    let server = start(builder).await;
    let bystander = connect_as(&server, "bystander").await;
    (server, bystander)
}

async fn close_code_after_text(server: &TestServer, text: &str) -> u16 {
    let (mut ws, _) = connect_hello(server).await;
    send_text(&mut ws, text).await;
    expect_close(&mut ws).await.code
}

#[tokio::test]
async fn malformed_or_truncated_json_closes_with_4002() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    for text in ["{", "not json", r#"{"op":0,"d":{"a":"#, "", "{\"op\":1}}"] {
        assert_eq!(close_code_after_text(&server, text).await, 4002, "{text:?}");
    }
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn valid_json_that_is_not_a_frame_closes_with_4002() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_d = format!(
        r#"{{"op":0,"t":"ECHO","d":{}{}}}"#,
        "{\"a\":".repeat(2_000),
        "}".repeat(2_000)
    );
    let inputs = [
        "null",
        "[]",
        "[0, {}]",
        "42",
        "\"op\"",
        "{}",
        r#"{"d":{}}"#,
        r#"{"op":"0"}"#,
        r#"{"op":-1}"#,
        &deep,
        &deep_d,
    ];
    for text in inputs {
        assert_eq!(
            close_code_after_text(&server, text).await,
            4002,
            "{}",
            &text[..text.len().min(40)]
        );
    }
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    let invalid = WsFrame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        WsOpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(invalid)).await.expect("send");
    assert_eq!(expect_close(&mut ws).await.code, 1007);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_and_server_only_opcodes_are_ignored() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    for op in [3, 5, 10, 22, 99, 1_000_000] {
        send(&mut ws, json!({"op": op, "d": {}})).await;
    }
    assert_echo_works(&mut ws).await;
    assert_eq!(server.mesa.metrics().snapshot().unknown_opcodes, 6);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    ws.send(Message::Binary(
        br#"{"op":0,"t":"ECHO","d":{}}"#.to_vec().into(),
    ))
    .await
    .expect("send");
    assert_eq!(expect_close(&mut ws).await.code, 1003);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_and_oversized_fragmented_message_close_with_1009() {
    let (server, mut bystander) = with_bystander(echo_server().max_message_size(1024)).await;

    let (mut ws, _) = connect_hello(&server).await;
    let big = format!(r#"{{"op":0,"t":"ECHO","d":"{}"}}"#, "x".repeat(2000));
    send_text(&mut ws, &big).await;
    assert_eq!(expect_close(&mut ws).await.code, 1009);

    // Three fragments of 600 bytes: each frame is under the limit, the message is not.
    let (mut ws, _) = connect_hello(&server).await;
    let chunk = vec![b' '; 600];
    ws.send(Message::Frame(WsFrame::message(
        chunk.clone(),
        WsOpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("first fragment");
    ws.send(Message::Frame(WsFrame::message(
        chunk.clone(),
        WsOpCode::Data(Data::Continue),
        false,
    )))
    .await
    .expect("second fragment");
    let _ = ws
        .send(Message::Frame(WsFrame::message(
            chunk,
            WsOpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(expect_close(&mut ws).await.code, 1009);

    // A message just under the limit is fine.
    let (mut ok, _) = connect_hello(&server).await;
    let fits = format!(r#"{{"op":0,"t":"ECHO","d":"{}"}}"#, "y".repeat(900));
    send_text(&mut ok, &fits).await;
    assert_eq!(recv(&mut ok).await["d"].as_str().map(str::len), Some(900));

    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn dispatch_before_required_authentication_closes_with_4003() {
    let builder = echo_server()
        .authentication_required(true)
        .authentication_timeout(Duration::from_secs(30));
    let (server, mut bystander) = with_bystander(builder).await;
    assert_eq!(
        close_code_after_text(&server, r#"{"op":0,"t":"ECHO","d":{}}"#).await,
        4003
    );
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn authenticating_twice_as_another_user_closes_with_4005() {
    let (server, mut bystander) = with_bystander(echo_server()).await;
    let mut ws = connect_as(&server, "first").await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:second"}})).await;
    assert_eq!(expect_close(&mut ws).await.code, 4005);
    assert!(!server.mesa.is_user_connected("second"));
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn no_authentication_before_the_timeout_closes_with_4006() {
    let builder = echo_server()
        .authentication_required(true)
        .authentication_timeout(Duration::from_millis(400));
    let server = start(builder).await;
    let mut bystander = connect_as(&server, "bystander").await;
    let (mut ws, _) = connect_hello(&server).await;
    assert_eq!(expect_close(&mut ws).await.code, 4006);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn flood_closes_with_4008() {
    let limit = RateLimit {
        burst: 20,
        per_second: 10,
    };
    let (server, mut bystander) = with_bystander(echo_server().rate_limit(Some(limit))).await;
    let (mut ws, _) = connect_hello(&server).await;
    for _ in 0..200 {
        if ws.send(Message::Text(r#"{"op":11}"#.into())).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws).await.code, 4008);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

/// With the rate limit off, a client that never stops sending must still meet its deadlines: here the
/// required authentication times out while it floods heartbeat answers (bounded: at most 10 s of sending).
/// Two things guarantee it: the connection loop polls its deadline before the socket, and tokio's cooperative
/// budget makes a busy socket yield; this test pins the outcome, whichever of them provides it.
#[tokio::test]
async fn unlimited_flood_cannot_starve_the_authentication_deadline() {
    let builder = echo_server()
        .rate_limit(None)
        .authentication_required(true)
        .authentication_timeout(Duration::from_millis(300));
    let (server, mut bystander) = with_bystander(builder).await;
    let (mut ws, _) = connect_hello(&server).await;
    let started = std::time::Instant::now();
    let flooding = async {
        while started.elapsed() < Duration::from_secs(10) {
            let ack = Message::Text(r#"{"op":11}"#.into());
            if ws.feed(ack.clone()).await.is_err() || ws.send(ack).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flooding).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the flood was never cut off"
    );
    assert_eq!(expect_close(&mut ws).await.code, 4006);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn default_rate_limit_allows_a_busy_chat_client() {
    let (server, _bystander) = with_bystander(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    // 150 messages in 3 seconds, each answered: well within the default 100/s with a burst of 200.
    for i in 0..150 {
        send(&mut ws, json!({"op": 0, "t": "ECHO", "d": i})).await;
        assert_eq!(recv(&mut ws).await["d"], i);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let builder = echo_server()
        .outbound_queue(16)
        .write_timeout(Duration::from_millis(300))
        .without_heartbeat();
    let (server, mut bystander) = with_bystander(builder).await;
    let _slow = connect_as(&server, "slow").await; // never read again
    let payload = "z".repeat(64 * 1024);
    for _ in 0..400 {
        server
            .mesa
            .send_to(["slow"], &Frame::dispatch("BULK", json!(payload)))
            .await
            .expect("send");
        if !server.mesa.is_user_connected("slow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.mesa.is_user_connected("slow") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closes = server.mesa.metrics().snapshot().server_closes;
    assert!(
        closes.iter().any(|(code, n)| *code == 4010 && *n == 1),
        "{closes:?}"
    );
    assert_echo_works(&mut bystander).await;
    server
        .mesa
        .broadcast(&Frame::dispatch("STILL_HERE", json!({})))
        .await
        .expect("send");
    assert_eq!(recv(&mut bystander).await["t"], "STILL_HERE");
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_http_503() {
    let (server, mut bystander) = with_bystander(echo_server().max_connections(2)).await;
    let (second, _) = connect_hello(&server).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    drop(second);
    // The slot comes back once the server notices the drop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

/// Reads until EOF or error; returns what arrived.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "server kept the connection open for {within:?}"
    );
    received
}

#[tokio::test]
async fn unfinished_handshake_and_non_http_peers_are_dropped() {
    let builder = echo_server().handshake_timeout(Duration::from_millis(300));
    let (server, mut bystander) = with_bystander(builder).await;

    let mut silent = TcpStream::connect(server.addr).await.expect("tcp");
    read_until_closed(&mut silent, Duration::from_secs(3)).await;

    let mut partial = TcpStream::connect(server.addr).await.expect("tcp");
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    read_until_closed(&mut partial, Duration::from_secs(3)).await;

    let mut garbage = TcpStream::connect(server.addr).await.expect("tcp");
    garbage
        .write_all(b"\x16\x03\x01\x02\x00 hello, not http\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut garbage, Duration::from_secs(3)).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let mut plain = TcpStream::connect(server.addr).await.expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut plain, Duration::from_secs(3)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 426"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    assert_echo_works(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn origin_outside_the_allow_list_gets_http_403() {
    let server = start(echo_server().allowed_origins(["https://app.example"])).await;
    let with_origin = |origin: Option<&str>| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                server.url(),
            )
            .expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("header"));
        }
        request
    };
    for origin in [
        "https://evil.example",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example.evil",
        "null",
    ] {
        match tokio_tungstenite::connect_async(with_origin(Some(origin))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403)
            }
            other => panic!("expected 403 for {origin:?}, got {:?}", other.map(|_| ())),
        }
    }
    // Compared as origins: case-insensitive host, default port; no Origin (not a browser) is allowed.
    for origin in [
        Some("https://app.example"),
        Some("https://APP.Example:443"),
        None,
    ] {
        let (mut allowed, _) = tokio_tungstenite::connect_async(with_origin(origin))
            .await
            .unwrap_or_else(|error| panic!("{origin:?} connects: {error}"));
        assert_eq!(recv(&mut allowed).await["op"], 10);
        assert_echo_works(&mut allowed).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn require_origin_refuses_requests_without_one() {
    let config = mesa_server::Config {
        allowed_origins: vec!["https://app.example".into()],
        require_origin: true,
        ..mesa_server::Config::default()
    };
    let server = start(echo_server().config(config)).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}
