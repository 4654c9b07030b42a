//! The client against the real `mesa-server` over sockets on 127.0.0.1: connect, authenticate, dispatch,
//! restart, queue limits, refusal, disconnect.

mod common;

use std::time::Duration;

use common::*;
use mesa_client::{
    AuthenticateError, Client, ConnectErrorKind, Event, Frame, Lifecycle, SendError,
};
use mesa_server::{Identity, Mesa};
use serde_json::{json, Value};

fn connected(event: &Event) -> Option<mesa_client::Connected> {
    match event {
        Event::Connected(connected) => Some(connected.clone()),
        _ => None,
    }
}

fn authenticated(event: &Event) -> Option<Value> {
    match event {
        Event::Authenticated(user) => Some(user.clone()),
        _ => None,
    }
}

fn disconnected(event: &Event) -> Option<mesa_client::Disconnected> {
    match event {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    }
}

fn message(event: &Event) -> Option<Frame> {
    match event {
        Event::Message(frame) => Some(frame.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn connect_receives_hello_and_reports_the_initial_connection() {
    let server = start(echo_server().reconnect_interval(Duration::from_millis(250))).await;
    let (client, mut events) = Client::builder(server.url()).build().expect("build");
    let hello = wait_event(&mut events, connected).await;
    assert!(hello.initial);
    assert!(!hello.automatic_reconnection);
    assert_eq!(hello.hello.c_heartbeat_interval, Some(10_000));
    assert_eq!(hello.hello.c_reconnect_interval, Some(250));
    assert_eq!(hello.hello.c_authentication_timeout, Some(10_000));
    assert!(hello.hello.has_rule("sends_user_object"));
    // No credentials: Ready right after Hello.
    assert!(client.wait_for(Lifecycle::Ready).await);
    server.stop().await;
}

#[tokio::test]
async fn connect_helper_waits_for_hello_and_reports_a_refused_port() {
    let server = start(echo_server()).await;
    let (client, _events) = mesa_client::connect(server.url()).await.expect("connect");
    assert!(matches!(
        client.lifecycle(),
        Lifecycle::AwaitingHello | Lifecycle::Ready
    ));
    let url = server.url();
    server.stop().await;
    let error = mesa_client::connect(url)
        .await
        .expect_err("nothing listens any more");
    assert_eq!(error.kind(), &ConnectErrorKind::Io, "{error:?}");
    assert!(std::error::Error::source(&error).is_some());
}

#[tokio::test]
async fn authenticate_returns_the_user_object() {
    let server = start(echo_server()).await;
    let (client, mut events) = mesa_client::connect(server.url()).await.expect("connect");
    let user = client
        .authenticate(json!({"token": "user:alice"}))
        .await
        .expect("accepted");
    assert_eq!(user, json!({"id": "alice"}));
    assert_eq!(
        wait_event(&mut events, authenticated).await,
        json!({"id": "alice"})
    );
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    assert!(server.mesa.is_user_connected("alice"));
    server.stop().await;
}

#[tokio::test]
async fn refused_authentication_is_terminal() {
    let connections = Log::default();
    let log = connections.clone();
    let builder = echo_server()
        .reconnect_interval(Duration::from_millis(10))
        .on_connection(move |_client| {
            let log = log.clone();
            async move { log.push("connection") }
        });
    let server = start(builder).await;
    let (client, mut events) = mesa_client::connect(server.url()).await.expect("connect");
    let refusal = client.authenticate(json!({"token": "nope"})).await;
    assert_eq!(
        refusal,
        Err(AuthenticateError::Refused {
            reason: "invalid token".into(),
            close_code: Some(1008),
        })
    );
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!(why.code, 1008);
    assert_eq!(why.reason, "invalid token");
    assert!(!why.will_reconnect);
    assert_eq!(why.reconnect_delay, None);
    assert_eq!(client.lifecycle(), Lifecycle::Closed);
    assert_eq!(client.dispatch("ECHO", json!({})), Err(SendError::Closed));
    // Many reconnect intervals later, still one connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections.entries().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn op_9_refusal_keeps_the_connection_open() {
    let server = start(echo_server().disconnect_on_fail(false)).await;
    let (client, mut events) = mesa_client::connect(server.url()).await.expect("connect");
    let refusal = client.authenticate(json!({"token": "nope"})).await;
    assert_eq!(
        refusal,
        Err(AuthenticateError::Refused {
            reason: "invalid token".into(),
            close_code: None,
        })
    );
    let reason = wait_event(&mut events, |e| match e {
        Event::AuthenticationRefused { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "invalid token");
    // Open, unauthenticated: sends wait for a successful authentication (issue #7.3).
    assert_eq!(client.lifecycle(), Lifecycle::Authenticating);
    client
        .dispatch("ECHO", json!({"still": "here"}))
        .expect("send");
    assert_eq!(client.queued(), 1);
    let user = client
        .authenticate(json!({"token": "user:bob"}))
        .await
        .expect("second try accepted");
    assert_eq!(user, json!({"id": "bob"}));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_event(&mut events).await {
            Event::Authenticated(user) => seen.push(format!("authenticated {}", user["id"])),
            Event::Message(frame) => seen.push(format!("echo {}", frame.d)),
            // The server offers resumable sessions: the accepted op 2 started one.
            Event::SessionStarted(_) => {}
            other => panic!("the same connection goes on, got {other:?}"),
        }
    }
    assert_eq!(seen, ["authenticated \"bob\"", "echo {\"still\":\"here\"}"]);
    server.stop().await;
}

#[tokio::test]
async fn dispatch_both_ways() {
    let server = start(echo_server()).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .build()
        .expect("build");
    wait_event(&mut events, authenticated).await;

    client.dispatch("ECHO", json!({"n": 1})).expect("send");
    let echo = wait_event(&mut events, message).await;
    assert_eq!(echo, Frame::dispatch("ECHO", json!({"n": 1})));

    let notice = Frame::dispatch("NOTICE", json!({"to": "alice"}));
    server
        .mesa
        .send_to(["alice"], &notice)
        .await
        .expect("send_to");
    // A send to the user is durable: in the resumable session the client opened, it carries `s`.
    let mut numbered = notice.clone();
    numbered.s = Some(1);
    assert_eq!(wait_event(&mut events, message).await, numbered);
    let everyone = Frame::dispatch("BROADCAST", json!({}));
    server.mesa.broadcast(&everyone).await.expect("broadcast");
    assert_eq!(wait_event(&mut events, message).await, everyone);

    // The handle is cloneable and usable from another task.
    let other = client.clone();
    tokio::spawn(async move { other.dispatch("ECHO", json!({"from": "task"})) })
        .await
        .expect("join")
        .expect("send");
    assert_eq!(
        wait_event(&mut events, message).await.d,
        json!({"from": "task"})
    );
    server.stop().await;
}

#[tokio::test]
async fn custom_headers_reach_the_server() {
    let builder = Mesa::builder().authenticate(|_data, client| async move {
        match client.headers().get("authorization").map(|v| v.to_str()) {
            Some(Ok("Bearer s3cret")) => Ok(Identity::new("carol", json!({"via": "header"}))),
            _ => Err(mesa_server::AuthError::new("missing header")),
        }
    });
    let server = start(builder).await;
    let (client, _events) = Client::builder(server.url())
        .header("Authorization", "Bearer s3cret")
        .connect()
        .await
        .expect("connect");
    let user = client.authenticate(json!({})).await.expect("accepted");
    assert_eq!(user, json!({"via": "header"}));
    assert!(!format!("{client:?}").contains("s3cret"));
    server.stop().await;
}

/// The server restarts mid-stream: the client reconnects and re-authenticates by itself, and the sends
/// queued meanwhile reach the new server in order, after authentication.
#[tokio::test]
async fn server_restart_reconnects_reauthenticates_and_flushes_in_order() {
    let log = Log::default();
    let builder = |log: Log| {
        let on_auth = log.clone();
        // No retry hint in op 7 (its default spreads reconnects over up to a second).
        let config = mesa_server::Config {
            shutdown_retry_jitter_ms: 0,
            ..mesa_server::Config::default()
        };
        with_token_auth(Mesa::builder().config(config))
            .reconnect_interval(Duration::from_millis(50))
            .on_authenticated(move |client| {
                let log = on_auth.clone();
                async move { log.push(format!("auth {}", client.id().unwrap_or_default())) }
            })
            .on_message(move |client, frame| {
                let log = log.clone();
                async move {
                    let who = client.id().unwrap_or_else(|| "<anonymous>".into());
                    log.push(format!("msg {} from {who}", frame.d["n"]));
                }
            })
    };
    let server = start(builder(log.clone())).await;
    let addr = server.addr;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .reconnect_cap(Duration::from_millis(400))
        .jitter_seed(11)
        .build()
        .expect("build");
    wait_event(&mut events, authenticated).await;
    client.dispatch("SEQ", json!({"n": 0})).expect("send");
    log.wait_until("msg 0", |l| l.len() == 2).await;

    server.stop().await; // op 7, then 1012
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!(why.code, 1012);
    assert!(why.will_reconnect);
    assert!(why
        .reconnect_delay
        .is_some_and(|d| d <= Duration::from_millis(50)));
    for n in 1..=5 {
        client
            .dispatch("SEQ", json!({"n": n}))
            .expect("queued while down");
    }
    assert_eq!(client.queued(), 5);
    assert_ne!(client.lifecycle(), Lifecycle::Ready);

    let restarted = start_on(builder(log.clone()), addr).await;
    let again = wait_event(&mut events, connected).await;
    assert!(!again.initial);
    assert!(again.automatic_reconnection);
    assert_eq!(
        wait_event(&mut events, authenticated).await,
        json!({"id": "alice"})
    );
    let entries = log.wait_until("the queued sends", |l| l.len() == 8).await;
    assert_eq!(
        entries,
        [
            "auth alice",
            "msg 0 from alice",
            "auth alice",
            "msg 1 from alice",
            "msg 2 from alice",
            "msg 3 from alice",
            "msg 4 from alice",
            "msg 5 from alice",
        ]
    );
    assert_eq!(client.queued(), 0);
    restarted.stop().await;
}

#[tokio::test]
async fn a_full_queue_is_an_error_and_queued_frames_flush_on_connect() {
    let log = Log::default();
    let on_message = log.clone();
    let builder = echo_server().on_message(move |_client, frame| {
        let log = on_message.clone();
        async move { log.push(frame.d["n"].to_string()) }
    });
    let server = start(builder).await;
    let (client, _events) = Client::builder(server.url())
        .auto_connect(false)
        .queue_capacity(3)
        .build()
        .expect("build");
    assert_eq!(client.lifecycle(), Lifecycle::Disconnected);
    for n in 0..3 {
        client
            .dispatch("SEQ", json!({"n": n}))
            .expect("room in the queue");
    }
    assert_eq!(
        client.dispatch("SEQ", json!({"n": 3})),
        Err(SendError::QueueFull { capacity: 3 })
    );
    assert_eq!(client.queued(), 3);
    // Authentication needs a connection: nothing is remembered while idle.
    assert_eq!(
        client.authenticate(json!({"token": "user:x"})).await,
        Err(AuthenticateError::NotConnected)
    );

    client.connect().await.expect("connect");
    log.wait_until("the queued frames", |l| l.len() == 3).await;
    assert_eq!(log.entries(), ["0", "1", "2"]);
    client.dispatch("SEQ", json!({"n": 4})).expect("room again");
    log.wait_until("the next frame", |l| l.len() == 4).await;
    server.stop().await;
}

#[tokio::test]
async fn disconnect_closes_cleanly_and_stops_reconnecting() {
    let log = Log::default();
    let (on_connection, on_disconnection) = (log.clone(), log.clone());
    let builder = echo_server()
        .reconnect_interval(Duration::from_millis(10))
        .on_connection(move |_client| {
            let log = on_connection.clone();
            async move { log.push("open") }
        })
        .on_disconnection(move |_client, why| {
            let log = on_disconnection.clone();
            async move { log.push(format!("closed {} by_server={}", why.code, why.by_server)) }
        });
    let server = start(builder).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .build()
        .expect("build");
    wait_event(&mut events, authenticated).await;

    client.disconnect().await;
    assert_eq!(client.lifecycle(), Lifecycle::Closed);
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (1000, false));
    log.wait_until("the server-side close", |l| l.len() == 2)
        .await;
    assert_eq!(log.entries(), ["open", "closed 1000 by_server=false"]);
    assert_eq!(client.dispatch("ECHO", json!({})), Err(SendError::Closed));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.entries().len(),
        2,
        "the client reconnected: {:?}",
        log.entries()
    );

    // connect() starts again, with the remembered credentials.
    client.connect().await.expect("reconnect on request");
    let again = wait_event(&mut events, connected).await;
    assert!(!again.initial && !again.automatic_reconnection);
    assert_eq!(
        wait_event(&mut events, authenticated).await,
        json!({"id": "alice"})
    );
    server.stop().await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let log = Log::default();
    let on_disconnection = log.clone();
    let builder = echo_server().on_disconnection(move |_client, why| {
        let log = on_disconnection.clone();
        async move { log.push(format!("closed {} by_server={}", why.code, why.by_server)) }
    });
    let server = start(builder).await;
    let (client, mut events) = mesa_client::connect(server.url()).await.expect("connect");
    let clone = client.clone();
    drop(client);
    assert!(clone.wait_for(Lifecycle::Ready).await);
    drop(clone);
    log.wait_until("the close", |l| !l.is_empty()).await;
    assert_eq!(log.entries(), ["closed 1000 by_server=false"]);
    // The stream ends with the task.
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("stream ends")
        {
            None => break,
            Some(_) => continue,
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_version_rule_is_answered() {
    let builder = echo_server()
        .enforce_equal_versions("1.2.3")
        .reconnect_interval(Duration::from_millis(10));
    let server = start(builder).await;

    let (good, mut good_events) = Client::builder(server.url())
        .client_version("1.2.3")
        .build()
        .expect("build");
    wait_event(&mut good_events, connected).await;
    good.dispatch("ECHO", json!({"v": "ok"})).expect("send");
    assert_eq!(
        wait_event(&mut good_events, message).await.d,
        json!({"v": "ok"})
    );

    let (_bad, mut bad_events) = Client::builder(server.url())
        .client_version("0.0.1")
        .build()
        .expect("build");
    let why = wait_event(&mut bad_events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (1002, false));
    server.stop().await;
}

/// Over real TCP: a server that accepts, sends Hello, then goes silent with the socket open (a half-open
/// connection as far as the client can tell) is dropped after interval + slack and replaced.
#[tokio::test]
async fn a_silent_server_over_tcp_is_detected_and_replaced() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                continue;
            };
            let hello = json!({"op": 10, "d": {"c_heartbeat_interval": 300, "c_reconnect_interval": 20, "rules": []}});
            let _ = ws.send(Message::Text(hello.to_string().into())).await;
            let _ = accepted_tx.send(std::time::Instant::now());
            held.push(ws); // never read, never written again
        }
    });
    let (_client, mut events) = Client::builder(url)
        .heartbeat_slack(Duration::from_millis(200))
        .build()
        .expect("build");
    let first = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .expect("first")
        .expect("open");
    let why = wait_event(&mut events, disconnected).await;
    let detected = first.elapsed();
    assert_eq!(why.code, 1006);
    assert!(why.will_reconnect);
    assert!(
        detected >= Duration::from_millis(500) && detected < Duration::from_millis(2000),
        "dead after {detected:?}, expected 300 ms interval + 200 ms slack"
    );
    let second = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .expect("reconnected")
        .expect("open");
    assert!(second.duration_since(first) < Duration::from_millis(2500));
    let again = wait_event(&mut events, connected).await;
    assert!(again.automatic_reconnection);
}

/// End to end on a server that requires authentication (a dispatch before op 2 would be closed with 4003):
/// sends queued while connecting arrive after authentication and the connection survives. (The exact
/// rule, nothing before op 22, is pinned by `timing::queued_sends_wait_for_the_authentication_ack` and
/// `sends_queued_behind_refused_credentials_stay_queued`.)
#[tokio::test]
async fn queued_sends_are_delivered_after_authentication_where_it_is_required() {
    let server = start(echo_server().authentication_required(true)).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("ECHO", json!({"n": n})).expect("queued");
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next_event(&mut events).await {
            Event::Connected(_) => seen.push("connected".to_string()),
            Event::Authenticated(_) => seen.push("authenticated".to_string()),
            Event::Message(frame) => seen.push(format!("echo {}", frame.d["n"])),
            Event::SessionStarted(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["connected", "authenticated", "echo 0", "echo 1", "echo 2"]
    );
    server.stop().await;
}

/// A server without heartbeats: the client pings, the server's WebSocket layer answers, nothing drops.
#[tokio::test]
async fn pings_keep_a_server_without_heartbeats_alive() {
    let server = start(echo_server().without_heartbeat()).await;
    let (client, mut events) = Client::builder(server.url())
        .ping_interval(Some(Duration::from_millis(100)))
        .heartbeat_slack(Duration::from_millis(150))
        .build()
        .expect("build");
    let hello = wait_event(&mut events, connected).await;
    assert_eq!(hello.hello.c_heartbeat_interval, None);
    // Ten ping intervals; silence for 250 ms would have been declared death.
    expect_no_event(&mut events, Duration::from_millis(1000), |e| {
        !matches!(e, Event::Disconnected(_) | Event::Connected(_))
    })
    .await;
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    server.stop().await;
}

/// Sends queued behind credentials the server refuses are not sent on that connection: they stay queued.
#[tokio::test]
async fn sends_queued_behind_refused_credentials_stay_queued() {
    let log = Log::default();
    let on_message = log.clone();
    let builder = echo_server().on_message(move |_client, frame| {
        let log = on_message.clone();
        async move { log.push(frame.d.to_string()) }
    });
    let server = start(builder).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "forged"}))
        .auto_connect(false)
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    client.connect().await.expect("connect");
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (1008, false));
    assert_eq!(client.queued(), 3);
    assert!(log.entries().is_empty(), "{:?}", log.entries());
    server.stop().await;
}

/// 300 frames queued while disconnected reach a server with the default inbound rate limit (burst 200),
/// all of them, in order, without a 4008 close.
#[tokio::test]
async fn a_long_queue_reaches_a_rate_limited_server_in_full() {
    let log = Log::default();
    let on_message = log.clone();
    let builder = echo_server().on_message(move |_client, frame| {
        let log = on_message.clone();
        async move { log.push(frame.d["n"].to_string()) }
    });
    let server = start(builder).await;
    let (client, mut events) = Client::builder(server.url())
        .auto_connect(false)
        .build()
        .expect("build");
    for n in 0..300 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    client.connect().await.expect("connect");
    let entries = log.wait_until("300 frames", |l| l.len() == 300).await;
    let expected: Vec<String> = (0..300).map(|n| n.to_string()).collect();
    assert_eq!(entries, expected);
    expect_no_event(&mut events, Duration::from_millis(100), |e| {
        !matches!(e, Event::Disconnected(_))
    })
    .await;
    server.stop().await;
}

// Issue #7: delivery when the handles go, events when the task exits, the queue after op 9, and
// overlapping authenticate() calls.

/// A server that logs every dispatch as `msg <n> from <user or <anonymous>>` and every close as
/// `closed <code> by_server=<bool>`, with token authentication (`user:<id>`) and `alice`'s check taking
/// `alice_check` (the others answer at once); each check is logged as `check <token>` when it starts.
fn logging_server(log: &Log, alice_check: Duration) -> mesa_server::MesaBuilder {
    let (on_check, on_message, on_close) = (log.clone(), log.clone(), log.clone());
    Mesa::builder()
        .authenticate(move |data, _client| {
            let log = on_check.clone();
            async move {
                let token = data["token"].as_str().unwrap_or_default().to_string();
                log.push(format!("check {token}"));
                match token.strip_prefix("user:") {
                    Some(id) => {
                        if id == "alice" {
                            tokio::time::sleep(alice_check).await;
                        }
                        Ok(Identity::new(id, json!({ "id": id })))
                    }
                    None => Err(mesa_server::AuthError::new("invalid token")),
                }
            }
        })
        .on_message(move |client, frame| {
            let log = on_message.clone();
            async move {
                let who = client.id().unwrap_or_else(|| "<anonymous>".into());
                log.push(format!("msg {} from {who}", frame.d["n"]));
                let _ = client.send(&frame);
            }
        })
        .on_disconnection(move |_client, why| {
            let log = on_close.clone();
            async move { log.push(format!("closed {} by_server={}", why.code, why.by_server)) }
        })
}

fn messages(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.starts_with("msg "))
        .cloned()
        .collect()
}

/// Issue #7.1: `send()` accepted the frames, so dropping the last handle right away must not lose them:
/// the task connects, authenticates, flushes the queue, and only then closes with 1000.
#[tokio::test]
async fn sends_accepted_before_the_last_handle_is_dropped_are_delivered() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::ZERO)).await;
    let (client, _events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .build()
        .expect("build");
    for n in 0..100 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    drop(client);
    let entries = log
        .wait_until("100 frames, then the close", |l| {
            l.iter().any(|e| e.starts_with("closed"))
        })
        .await;
    let expected: Vec<String> = (0..100).map(|n| format!("msg {n} from alice")).collect();
    assert_eq!(messages(&entries), expected, "{entries:?}");
    assert_eq!(
        entries.last().map(String::as_str),
        Some("closed 1000 by_server=false")
    );
    server.stop().await;
}

/// Issue #7.2: events the task produced before it stopped (more than `event_capacity`, unread) all reach
/// the stream, which is still alive, in order, and then it ends.
#[tokio::test]
async fn events_produced_before_the_task_exits_reach_a_live_stream() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::ZERO)).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .reconnect(false)
        // Without a resumable session's extra event, the six events below fit as the test intends: three
        // before the stream is full, the rest once the test reads.
        .resume_sessions(false)
        .event_capacity(3)
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("ECHO", json!({"n": n})).expect("queued");
    }
    log.wait_until("the three frames", |l| messages(l).len() == 3)
        .await;
    server.stop().await; // op 7, then 1012: with reconnection off, the client is Closed
    assert!(client.wait_for(Lifecycle::Closed).await);
    drop(client);
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("the stream ends")
    {
        seen.push(match event {
            Event::Connected(_) => "connected".to_string(),
            Event::Authenticated(user) => format!("authenticated {}", user["id"]),
            Event::Message(frame) => format!("echo {}", frame.d["n"]),
            Event::Disconnected(why) => format!("disconnected {} {}", why.code, why.will_reconnect),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "connected",
            "authenticated \"alice\"",
            "echo 0",
            "echo 1",
            "echo 2",
            "disconnected 1012 false",
        ]
    );
}

/// Issue #7.3: a client with credentials drains its queue only after op 22. An op 9 refusal (the
/// connection stays open, unauthenticated) keeps the queue queued, through further refusals, until a
/// later authentication succeeds; then it flushes as that user.
#[tokio::test]
async fn sends_stay_queued_after_an_op_9_refusal_until_a_later_authentication_succeeds() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::ZERO).disconnect_on_fail(false)).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "forged"}))
        .auto_connect(false)
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    client.connect().await.expect("connect");
    let reason = wait_event(&mut events, |e| match e {
        Event::AuthenticationRefused { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "invalid token");
    assert_eq!(
        client.authenticate(json!({"token": "still-forged"})).await,
        Err(AuthenticateError::Refused {
            reason: "invalid token".into(),
            close_code: None,
        })
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(messages(&log.entries()).is_empty(), "{:?}", log.entries());
    assert_eq!(client.queued(), 3);
    assert_ne!(client.lifecycle(), Lifecycle::Ready);

    let user = client
        .authenticate(json!({"token": "user:bob"}))
        .await
        .expect("accepted");
    assert_eq!(user, json!({"id": "bob"}));
    let entries = log
        .wait_until("the queued frames", |l| messages(l).len() == 3)
        .await;
    assert_eq!(
        messages(&entries),
        ["msg 0 from bob", "msg 1 from bob", "msg 2 from bob"]
    );
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    server.stop().await;
}

/// Issue #7.4: `authenticate(bob)` while alice's check is still running: alice's call gets alice, bob's
/// call gets bob, and the connection does not end with the terminal 4005 (the client switches identity
/// on a new connection instead of sending bob's op 2 on alice's).
#[tokio::test]
async fn overlapping_authenticate_calls_each_get_the_answer_to_their_own_credentials() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::from_millis(300))).await;
    let (client, mut events) = mesa_client::connect(server.url()).await.expect("connect");
    let alice = tokio::spawn({
        let client = client.clone();
        async move { client.authenticate(json!({"token": "user:alice"})).await }
    });
    log.wait_until("alice's check", |l| {
        l.contains(&"check user:alice".to_string())
    })
    .await;
    let bob = client.authenticate(json!({"token": "user:bob"})).await;
    assert_eq!(alice.await.expect("join"), Ok(json!({"id": "alice"})));
    assert_eq!(bob, Ok(json!({"id": "bob"})));
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    assert!(server.mesa.is_user_connected("bob"));
    // Whatever closed on the way was not terminal.
    expect_no_event(&mut events, Duration::from_millis(300), |e| match e {
        Event::Disconnected(why) => why.will_reconnect && why.code != 4005,
        _ => true,
    })
    .await;
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    assert!(!log.entries().iter().any(|e| e.starts_with("closed 4005")));
    server.stop().await;
}

/// Issue #7.4, the rule for a call whose credentials were never sent: a newer call with other credentials
/// supersedes it (it resolves with `AuthenticateError::Superseded`); the newest call gets its own answer.
#[tokio::test]
async fn an_authenticate_call_not_yet_sent_is_superseded_by_a_newer_one() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::from_millis(500))).await;
    let (client, _events) = mesa_client::connect(server.url()).await.expect("connect");
    let alice = tokio::spawn({
        let client = client.clone();
        async move { client.authenticate(json!({"token": "user:alice"})).await }
    });
    log.wait_until("alice's check", |l| {
        l.contains(&"check user:alice".to_string())
    })
    .await;
    let bob = tokio::spawn({
        let client = client.clone();
        async move { client.authenticate(json!({"token": "user:bob"})).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let carol = client.authenticate(json!({"token": "user:carol"})).await;
    assert_eq!(alice.await.expect("join"), Ok(json!({"id": "alice"})));
    let bob = bob.await.expect("join");
    assert!(
        bob.as_ref()
            .is_err_and(|e| e.to_string().contains("superseded")),
        "{bob:?}"
    );
    assert_eq!(carol, Ok(json!({"id": "carol"})));
    assert!(server.mesa.is_user_connected("carol"));
    assert!(!log.entries().contains(&"check user:bob".to_string()));
    server.stop().await;
}

/// Collects the events until the stream ends (failing after [`WAIT`]); returns them and when it ended.
async fn drain_events(events: &mut mesa_client::Events) -> (Vec<Event>, tokio::time::Instant) {
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("the stream ends")
    {
        seen.push(event);
    }
    (seen, tokio::time::Instant::now())
}

/// The rule's bound: dropped while its queue cannot go out (the server never answers op 2), the client
/// gives up at the linger deadline, closes with 1000 (reported), and its stream ends.
#[tokio::test]
async fn a_dropped_client_gives_up_on_its_queue_at_the_linger_deadline() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::from_secs(4))).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .linger(Duration::from_millis(300))
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    log.wait_until("alice's check", |l| {
        l.contains(&"check user:alice".to_string())
    })
    .await;
    let dropped = tokio::time::Instant::now();
    drop(client);
    let (seen, ended) = drain_events(&mut events).await;
    let lingered = ended - dropped;
    // 300 ms of linger, then a closing handshake the busy server does not answer (at most 2 s).
    assert!(
        lingered >= Duration::from_millis(300) && lingered < Duration::from_secs(3),
        "{lingered:?}"
    );
    match seen.last() {
        Some(Event::Disconnected(why)) => assert_eq!((why.code, why.will_reconnect), (1000, false)),
        other => panic!("expected the final Disconnected, got {other:?}"),
    }
    assert!(messages(&log.entries()).is_empty(), "{:?}", log.entries());
}

/// Lingering stops as soon as nothing could deliver the queue: the credentials were refused (op 9) and no
/// handle is left to supply others. It does not wait for the (default, 10 s) linger deadline.
#[tokio::test]
async fn a_dropped_client_with_refused_credentials_stops_without_sending_its_queue() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::ZERO).disconnect_on_fail(false)).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "forged"}))
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    let dropped = tokio::time::Instant::now();
    drop(client);
    let (seen, ended) = drain_events(&mut events).await;
    assert!(
        ended - dropped < Duration::from_secs(3),
        "{:?}",
        ended - dropped
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::AuthenticationRefused { .. })),
        "{seen:?}"
    );
    let entries = log
        .wait_until("the close", |l| l.iter().any(|e| e.starts_with("closed")))
        .await;
    assert!(messages(&entries).is_empty(), "{entries:?}");
    server.stop().await;
}

/// Issue #7.4, without overlap: `authenticate(bob)` on a connection the server authenticated as alice
/// does not send bob's op 2 there (4005, terminal) but authenticates bob on a new connection; the queue
/// then flushes as bob.
#[tokio::test]
async fn authenticating_as_another_user_replaces_the_connection_instead_of_ending_with_4005() {
    let log = Log::default();
    let server = start(logging_server(&log, Duration::ZERO)).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .reconnect(false) // the switch is asked for, not an automatic reconnection
        .build()
        .expect("build");
    assert_eq!(
        wait_event(&mut events, authenticated).await,
        json!({"id": "alice"})
    );
    let user = client
        .authenticate(json!({"token": "user:bob"}))
        .await
        .expect("bob accepted");
    assert_eq!(user, json!({"id": "bob"}));
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!(
        (why.code, why.will_reconnect, why.reconnect_delay),
        (1000, true, Some(Duration::ZERO))
    );
    client.dispatch("SEQ", json!({"n": 1})).expect("send");
    let entries = log
        .wait_until("bob's frame", |l| !messages(l).is_empty())
        .await;
    assert_eq!(messages(&entries), ["msg 1 from bob"]);
    assert!(entries.contains(&"closed 1000 by_server=false".to_string()));
    assert!(!entries.iter().any(|e| e.starts_with("closed 4005")));
    assert!(server.mesa.is_user_connected("bob"));
    assert!(!server.mesa.is_user_connected("alice"));
    server.stop().await;
}
