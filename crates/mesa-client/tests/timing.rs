//! Timing on a paused clock: backoff delays, dead-server detection, Hello and authentication timeouts.
//!
//! These tests connect through in-memory pipes (`ClientBuilder::dial` + `tokio::io::duplex`), not TCP:
//! with a paused clock Tokio advances time whenever the runtime parks for socket I/O, which would distort
//! every measured interval. Over pipes nothing parks for I/O, so virtual time moves only when every task
//! waits on a timer and the intervals below are exact (to the millisecond timer resolution).

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::with_token_auth;
use futures_util::{SinkExt, StreamExt};
use mesa_client::{
    AuthenticateError, Backoff, Client, ClientBuilder, ConnectErrorKind, Event, Jitter,
};
use mesa_server::Mesa;
use serde_json::{json, Value};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SECOND: Duration = Duration::from_secs(1);
/// Virtual time any one wait may take (free on a paused clock).
const LIMIT: Duration = Duration::from_secs(300);
const MS: Duration = Duration::from_millis(1);

type Pipes = mpsc::UnboundedReceiver<DuplexStream>;
type Ws = WebSocketStream<DuplexStream>;

/// A client whose every connection attempt is a fresh in-memory pipe; the server ends arrive on `Pipes`.
fn client_over_pipes() -> (ClientBuilder, Pipes) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = Client::builder("ws://mesa.test/").dial(move || {
        let tx = tx.clone();
        async move {
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            tx.send(server_end)
                .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
            Ok(client_end)
        }
    });
    (builder, rx)
}

/// Serves the real `mesa-server` on one pipe (HTTP/1.1 upgrade, then the Mesa connection).
fn serve_mesa(mesa: &Mesa, io: DuplexStream) {
    let service = mesa.service();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let mut service = service.clone();
            tower_service::Service::call(&mut service, request)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades()
            .await;
    });
}

async fn accept(pipes: &mut Pipes) -> (Ws, Instant) {
    let io = tokio::time::timeout(60 * SECOND, pipes.recv())
        .await
        .expect("no connection attempt")
        .expect("client gone");
    let at = Instant::now();
    let ws = tokio_tungstenite::accept_async(io).await.expect("upgrade");
    (ws, at)
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("server send");
}

/// The next text frame the raw server receives, as JSON (pings and pongs skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn hello(d: Value) -> Value {
    json!({"op": 10, "d": d})
}

#[tokio::test(start_paused = true)]
async fn reconnection_delays_follow_the_seeded_full_jitter_backoff() {
    let (builder, mut pipes) = client_over_pipes();
    let (_client, mut events) = builder
        .reconnect_interval(SECOND)
        .reconnect_cap(8 * SECOND)
        .jitter_seed(7)
        .build()
        .expect("build");
    // The "server" refuses every attempt: it drops the pipe before the upgrade.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let times = accepted.clone();
    tokio::spawn(async move {
        while let Some(io) = pipes.recv().await {
            times.lock().expect("lock").push(Instant::now());
            drop(io);
        }
    });

    let mut expected = Backoff::new(SECOND, 8 * SECOND, Jitter::from_seed(7));
    let mut delays = Vec::new();
    for attempt in 0..7 {
        let failed = common::wait_event_for(&mut events, LIMIT, |e| match e {
            Event::ConnectionFailed(failed) => Some(failed.clone()),
            _ => None,
        })
        .await;
        assert!(failed.will_reconnect);
        let ceiling = expected.ceiling(attempt);
        let delay = expected.next_delay();
        assert_eq!(failed.reconnect_delay, Some(delay), "attempt {attempt}");
        assert!(delay <= ceiling);
        delays.push(delay);
    }
    // The ceilings were 1, 2, 4, 8, 8, 8, 8 s; the attempts happened exactly that far apart.
    let times = accepted.lock().expect("lock").clone();
    assert!(times.len() >= 7, "{times:?}");
    for (i, delay) in delays.iter().take(6).enumerate() {
        let gap = times[i + 1] - times[i];
        assert!(
            gap >= *delay && gap <= *delay + 2 * MS,
            "attempt {i}: waited {gap:?}, drew {delay:?}"
        );
    }
}

/// The real server behind pipes: after a graceful restart (op 7, close 1012) the client backs off from the
/// advertised `c_reconnect_interval`, keeps backing off while the server is down, then re-authenticates.
#[tokio::test(start_paused = true)]
async fn backoff_after_a_server_restart_starts_from_the_advertised_interval() {
    let (builder, mut pipes) = client_over_pipes();
    let (client, mut events) = builder
        .credentials(json!({"token": "user:alice"}))
        .reconnect_cap(10 * SECOND)
        .jitter_seed(99)
        .build()
        .expect("build");
    let server = || {
        // No op 7 retry hint: the delays below are the client's own backoff.
        let config = mesa_server::Config {
            shutdown_retry_jitter_ms: 0,
            ..mesa_server::Config::default()
        };
        with_token_auth(Mesa::builder().config(config))
            .reconnect_interval(2 * SECOND)
            .build()
    };
    let up: Arc<Mutex<Option<Mesa>>> = Arc::new(Mutex::new(Some(server())));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (current, times) = (up.clone(), attempts.clone());
    tokio::spawn(async move {
        while let Some(io) = pipes.recv().await {
            times.lock().expect("lock").push(Instant::now());
            if let Some(mesa) = current.lock().expect("lock").as_ref() {
                serve_mesa(mesa, io);
            } // else: down, the pipe is dropped
        }
    });
    common::wait_event_for(&mut events, LIMIT, |e| {
        matches!(e, Event::Authenticated(_)).then_some(())
    })
    .await;

    let old = up.lock().expect("lock").take().expect("server");
    assert!(old.shutdown().await);
    let mut expected = Backoff::new(2 * SECOND, 10 * SECOND, Jitter::from_seed(99));
    let why = common::wait_event_for(&mut events, LIMIT, |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    })
    .await;
    assert_eq!(why.code, 1012);
    let mut delays = vec![why.reconnect_delay.expect("reconnects")];
    assert_eq!(delays[0], expected.next_delay());
    for _ in 0..3 {
        let failed = common::wait_event_for(&mut events, LIMIT, |e| match e {
            Event::ConnectionFailed(failed) => Some(failed.clone()),
            _ => None,
        })
        .await;
        let delay = failed.reconnect_delay.expect("reconnects");
        assert_eq!(delay, expected.next_delay());
        delays.push(delay);
    }
    *up.lock().expect("lock") = Some(server());
    let again = common::wait_event_for(&mut events, LIMIT, |e| match e {
        Event::Connected(connected) => Some(connected.clone()),
        _ => None,
    })
    .await;
    assert!(again.automatic_reconnection);
    common::wait_event_for(&mut events, LIMIT, |e| {
        matches!(e, Event::Authenticated(_)).then_some(())
    })
    .await;
    assert_eq!(client.lifecycle(), mesa_client::Lifecycle::Ready);

    let times = attempts.lock().expect("lock").clone();
    assert_eq!(
        times.len(),
        5,
        "first connection, 3 refused attempts, the reconnection"
    );
    for (i, delay) in delays.iter().enumerate().skip(1) {
        let gap = times[i + 1] - times[i];
        assert!(
            gap >= *delay && gap <= *delay + 2 * MS,
            "gap {i}: {gap:?} vs {delay:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_answered_and_a_silent_server_is_replaced() {
    let (builder, mut pipes) = client_over_pipes();
    let (_client, mut events) = builder.jitter_seed(5).build().expect("build");
    let (mut ws, _) = accept(&mut pipes).await;
    send(
        &mut ws,
        hello(json!({"c_heartbeat_interval": 10_000, "c_reconnect_interval": 100, "rules": []})),
    )
    .await;
    // Five beats, each answered with op 11.
    for beat in 0..5 {
        tokio::time::sleep(10 * SECOND).await;
        send(&mut ws, json!({"op": 1, "d": {}})).await;
        assert_eq!(
            recv(&mut ws).await,
            json!({"op": 11, "d": {}}),
            "beat {beat}"
        );
    }
    // Then silence, with the socket held open: a half-open connection.
    let silent_since = Instant::now();
    let why = common::wait_event_for(&mut events, LIMIT, |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        Instant::now() - silent_since,
        15 * SECOND,
        "interval 10 s + default slack 5 s"
    );
    assert_eq!(why.code, 1006);
    assert!(
        why.reason.contains("no frame from the server"),
        "{}",
        why.reason
    );
    assert!(why.will_reconnect);
    let delay = why.reconnect_delay.expect("reconnects");
    assert!(
        delay <= 100 * MS,
        "base is the advertised 100 ms: {delay:?}"
    );
    let (_second, at) = accept(&mut pipes).await;
    let waited = at - silent_since;
    assert!(
        waited >= 15 * SECOND + delay && waited <= 15 * SECOND + delay + 2 * MS,
        "{waited:?}"
    );
    drop(ws);
}

#[tokio::test(start_paused = true)]
async fn a_server_without_heartbeats_is_pinged_and_replaced_when_silent() {
    let (builder, mut pipes) = client_over_pipes();
    let (_client, mut events) = builder
        .ping_interval(Some(4 * SECOND))
        .heartbeat_slack(SECOND)
        .build()
        .expect("build");
    let (mut ws, _) = accept(&mut pipes).await;
    let start = Instant::now();
    send(&mut ws, hello(json!({"rules": []}))).await;
    // While the server reads, tungstenite answers each ping with a pong and the connection lives.
    for n in 1..=3u32 {
        match ws.next().await {
            Some(Ok(Message::Ping(_))) => assert_eq!(Instant::now() - start, 4 * n * SECOND),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // Stop reading. tungstenite writes a pong on the server's *next* read, so the pongs to the pings of
    // 4 s and 8 s went out (at 4 s and 8 s), the one to the ping of 12 s never does: last heard at 8 s,
    // dead at 8 s + ping interval 4 s + slack 1 s = 13 s.
    let why = common::wait_event_for(&mut events, LIMIT, |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    })
    .await;
    assert_eq!(Instant::now() - start, 13 * SECOND);
    assert_eq!(why.code, 1006);
    assert!(why.will_reconnect);
    drop(ws);
}

#[tokio::test(start_paused = true)]
async fn no_hello_is_a_failed_attempt_after_the_hello_timeout() {
    let (builder, mut pipes) = client_over_pipes();
    let (_client, mut events) = builder.hello_timeout(3 * SECOND).build().expect("build");
    let (_silent, first) = accept(&mut pipes).await;
    let failed = common::wait_event_for(&mut events, LIMIT, |e| match e {
        Event::ConnectionFailed(failed) => Some(failed.clone()),
        _ => None,
    })
    .await;
    assert_eq!(Instant::now() - first, 3 * SECOND);
    assert_eq!(
        failed.error.kind(),
        &ConnectErrorKind::HelloTimeout { after: 3 * SECOND }
    );
    assert!(failed.will_reconnect);
    let (_second, _) = accept(&mut pipes).await;
}

#[tokio::test(start_paused = true)]
async fn authentication_times_out_closes_with_4006_and_credentials_are_sent_again() {
    let (builder, mut pipes) = client_over_pipes();
    let (client, _events) = builder.jitter_seed(3).build().expect("build");
    let (mut ws, _) = accept(&mut pipes).await;
    send(
        &mut ws,
        hello(json!({"c_authentication_timeout": 2000, "c_reconnect_interval": 50, "rules": []})),
    )
    .await;

    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = client.authenticate(json!({"token": "slow"})).await;
        (outcome, Instant::now() - started, client)
    });
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 2, "d": {"token": "slow"}})
    );
    let (outcome, took, client) = waiting.await.expect("join");
    assert_eq!(
        outcome,
        Err(AuthenticateError::TimedOut { after: 2 * SECOND })
    );
    assert_eq!(took, 2 * SECOND);
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4006),
        other => panic!("expected close 4006, got {other:?}"),
    }

    // The next connection gets the same credentials, before anything else.
    let (mut second, _) = accept(&mut pipes).await;
    send(
        &mut second,
        hello(json!({"c_authentication_timeout": 2000, "rules": []})),
    )
    .await;
    assert_eq!(
        recv(&mut second).await,
        json!({"op": 2, "d": {"token": "slow"}})
    );
    send(&mut second, json!({"op": 22, "d": {"id": "slow"}})).await;
    assert!(client.wait_for(mesa_client::Lifecycle::Ready).await);
}

/// Queued sends wait for op 22, not merely for op 2 to be written.
#[tokio::test(start_paused = true)]
async fn queued_sends_wait_for_the_authentication_ack() {
    let (builder, mut pipes) = client_over_pipes();
    let (client, _events) = builder
        .credentials(json!({"token": "t"}))
        .build()
        .expect("build");
    for n in 0..3 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    let (mut ws, _) = accept(&mut pipes).await;
    send(
        &mut ws,
        hello(json!({"c_authentication_timeout": 10_000, "rules": []})),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"op": 2, "d": {"token": "t"}}));
    // The server takes its time: nothing may arrive before op 22.
    let early = tokio::time::timeout(5 * SECOND, ws.next()).await;
    assert!(early.is_err(), "sent before op 22: {early:?}");
    assert_eq!(client.queued(), 3);
    send(&mut ws, json!({"op": 22, "d": {}})).await;
    for n in 0..3 {
        assert_eq!(
            recv(&mut ws).await,
            json!({"op": 0, "d": {"n": n}, "t": "SEQ"})
        );
    }
}

/// Flushing a long queue is paced under the server's default inbound rate limit: a server-side token
/// bucket with mesa-server's default limit accepts every frame.
#[tokio::test(start_paused = true)]
async fn a_long_queue_is_flushed_under_the_servers_rate_limit() {
    use mesa_protocol::{RateLimit, TokenBucket};

    let (builder, mut pipes) = client_over_pipes();
    let (client, _events) = builder.queue_capacity(1000).build().expect("build");
    for n in 0..400 {
        client.dispatch("SEQ", json!({"n": n})).expect("queued");
    }
    let (mut ws, _) = accept(&mut pipes).await;
    let start = Instant::now();
    send(
        &mut ws,
        hello(json!({"c_heartbeat_interval": 1000, "rules": []})),
    )
    .await;
    let mut server_limit = TokenBucket::new(RateLimit::default(), start.into_std());
    let mut next = 0;
    let mut beat = start + SECOND;
    while next < 400 {
        // The server's heartbeats go on meanwhile; their answers count against the limit too.
        let frame = tokio::select! {
            frame = recv(&mut ws) => frame,
            () = tokio::time::sleep_until(beat) => {
                beat += SECOND;
                send(&mut ws, json!({"op": 1, "d": {}})).await;
                continue;
            }
        };
        assert!(
            server_limit.try_take(Instant::now().into_std()),
            "frame {frame} at {:?} would be rate limited",
            Instant::now() - start
        );
        if frame["op"] == 0 {
            assert_eq!(frame["d"]["n"], next);
            next += 1;
        }
    }
    let took = Instant::now() - start;
    // 150 at once, then 80 per second (less the heartbeat answers' share).
    assert!(took >= Duration::from_millis(3100), "{took:?}");
    assert!(took <= Duration::from_millis(3300), "{took:?}");
}
