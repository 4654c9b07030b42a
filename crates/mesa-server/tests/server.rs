//! Core behaviour over real sockets: Hello, heartbeats, authentication, dispatch, sends, hooks, shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesa_server::{Disconnection, Frame, Identity, Mesa, Middleware, Session, Target};
use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use serde_json::{json, Value};

#[tokio::test]
async fn hello_is_the_first_frame_with_mesa_fields() {
    let server = start(Mesa::builder()).await;
    let mut ws = connect(&server).await;
    // Key order inside `d` is not significant in JSON; the values and the set of fields are.
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 10, "d": {
            "c_heartbeat_interval": 10000,
            "c_reconnect_interval": 5000,
            "c_authentication_timeout": 10000,
            "rules": ["sends_user_object"],
            "c_resume": {
                "session_ttl": 300000,
                "max_messages": 1000,
                "max_bytes": 1048576,
                "max_age": 900000,
            },
        }})
    );
    server.stop().await;
}

#[tokio::test]
async fn authentication_acknowledges_with_the_user_object() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:alice"}})).await;
    assert_eq!(recv_text(&mut ws).await, r#"{"op":22,"d":{"id":"alice"}}"#);
    let client = server
        .mesa
        .session(mesa_server::ConnectionId::new(server.mesa.node_id(), 1))
        .expect("session handle");
    assert_eq!(client.id().as_deref(), Some("alice"));
    assert!(server.mesa.is_user_connected("alice"));
    server.stop().await;
}

#[tokio::test]
async fn echo_dispatch_round_trip() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    assert_echo_works(&mut ws).await;
    server.stop().await;
}

fn fast_heartbeat() -> mesa_server::MesaBuilder {
    echo_server().heartbeat(Duration::from_millis(100), 1)
}

#[tokio::test]
async fn heartbeat_timeout_closes_silent_client() {
    let server = start(fast_heartbeat()).await;
    let (mut ws, hello) = connect_hello(&server).await;
    assert_eq!(hello["d"]["c_heartbeat_interval"], 100);
    let started = std::time::Instant::now();
    // Read raw frames without answering: op 1 {}, op 1 {tries: 1, max: 1}, then the close.
    let mut beats = Vec::new();
    let code = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frame")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                beats.push(serde_json::from_str::<Value>(&t).expect("json"))
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                break u16::from(f.code)
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4009);
    assert_eq!(beats[0], json!({"op": 1, "d": {}}));
    assert_eq!(beats[1], json!({"op": 1, "d": {"tries": 1, "max": 1}}));
    assert_eq!(beats.len(), 2);
    // Beats at 100 and 200 ms unanswered; the third deadline (300 ms) closes.
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn answering_client_survives_many_heartbeats() {
    let server = start(fast_heartbeat()).await;
    let (mut ws, _) = connect_hello(&server).await;
    // expect_silence answers every op 1 with op 11.
    expect_silence(&mut ws, Duration::from_millis(1000)).await;
    assert_echo_works(&mut ws).await;
    server.stop().await;
}

#[tokio::test]
async fn client_heartbeat_is_acknowledged() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 1})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": 11, "d": {}}));
    server.stop().await;
}

#[tokio::test]
async fn refused_authentication_closes_with_1008_and_reason() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "nope"}})).await;
    assert_eq!(
        expect_close(&mut ws).await.code_reason(),
        (1008, "invalid token".to_string())
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_authentication_without_disconnect_answers_op_9() {
    let server = start(echo_server().disconnect_on_fail(false)).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "nope"}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 9, "d": {"code": "authentication_failed", "reason": "invalid token"}})
    );
    send(&mut ws, json!({"op": 2, "d": {"token": "user:bob"}})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": 22, "d": {"id": "bob"}}));
    server.stop().await;
}

#[tokio::test]
async fn without_user_object_the_ack_is_empty() {
    let server = start(echo_server().send_user_object(false)).await;
    let (mut ws, hello) = connect_hello(&server).await;
    assert_eq!(hello["d"]["rules"], json!([]));
    send(&mut ws, json!({"op": 2, "d": {"token": "user:bob"}})).await;
    assert_eq!(recv_text(&mut ws).await, r#"{"op":22,"d":{}}"#);
    server.stop().await;
}

#[tokio::test]
async fn reauthentication_as_same_user_updates_and_as_other_user_closes() {
    let server = start(echo_server()).await;
    let mut ws = connect_as(&server, "carol").await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:carol"}})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": 22, "d": {"id": "carol"}}));
    send(&mut ws, json!({"op": 2, "d": {"token": "user:mallory"}})).await;
    assert_eq!(expect_close(&mut ws).await.code, 4005);
    server.stop().await;
}

#[tokio::test]
async fn required_authentication_refuses_early_dispatch_and_enforces_timeout() {
    let builder = echo_server()
        .authentication_required(true)
        .authentication_timeout(Duration::from_millis(300));
    let server = start(builder).await;

    let (mut early, _) = connect_hello(&server).await;
    send(&mut early, json!({"op": 0, "t": "ECHO", "d": {}})).await;
    assert_eq!(expect_close(&mut early).await.code, 4003);

    let (mut idle, _) = connect_hello(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(expect_close(&mut idle).await.code, 4006);
    assert!(started.elapsed() >= Duration::from_millis(250));

    let mut ok = connect_as(&server, "dave").await;
    expect_silence(&mut ok, Duration::from_millis(500)).await;
    assert_echo_works(&mut ok).await;
    server.stop().await;
}

#[tokio::test]
async fn required_authentication_skips_unauthenticated_in_broadcasts() {
    let server = start(
        echo_server()
            .authentication_required(true)
            .authentication_timeout(Duration::from_secs(30)),
    )
    .await;
    let (mut anonymous, _) = connect_hello(&server).await;
    let mut alice = connect_as(&server, "alice").await;
    server
        .mesa
        .broadcast(&Frame::dispatch("NEWS", json!(1)))
        .await
        .expect("send");
    assert_eq!(
        recv(&mut alice).await,
        json!({"op": 0, "d": 1, "t": "NEWS"})
    );
    expect_silence(&mut anonymous, Duration::from_millis(300)).await;
    server.stop().await;
}

/// Broadcasts a dispatch of type `t` and checks that it is the next frame each of `clients` receives.
async fn broadcast_seen_by<const N: usize>(server: &TestServer, t: &str, clients: [&mut Ws; N]) {
    server
        .mesa
        .broadcast(&Frame::dispatch(t, json!({})))
        .await
        .expect("send");
    for ws in clients {
        assert_eq!(recv(ws).await["t"], t);
    }
}

#[tokio::test]
async fn sends_reach_everyone_users_and_not_the_excluded() {
    let server = start(echo_server()).await;
    let (mut anonymous, _) = connect_hello(&server).await;
    let mut alice_phone = connect_as(&server, "alice").await;
    let mut alice_laptop = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;

    broadcast_seen_by(
        &server,
        "ALL",
        [
            &mut anonymous,
            &mut alice_phone,
            &mut alice_laptop,
            &mut bob,
        ],
    )
    .await;

    server
        .mesa
        .send_to(["alice"], &Frame::dispatch("TO_ALICE", json!({})))
        .await
        .expect("send");
    assert_eq!(recv(&mut alice_phone).await["t"], "TO_ALICE");
    assert_eq!(recv(&mut alice_laptop).await["t"], "TO_ALICE");

    let everyone_but_alice = Target::all().excluding(["alice"]);
    server
        .mesa
        .send(
            &Frame::dispatch("NOT_ALICE", json!({})),
            &everyone_but_alice,
        )
        .await
        .expect("send");
    assert_eq!(recv(&mut bob).await["t"], "NOT_ALICE");
    assert_eq!(recv(&mut anonymous).await["t"], "NOT_ALICE");

    let users = Target::users(["alice", "bob", "bob"]).excluding(["alice"]);
    server
        .mesa
        .send(&Frame::dispatch("BOB_ONCE", json!({})), &users)
        .await
        .expect("send");
    assert_eq!(recv(&mut bob).await["t"], "BOB_ONCE");

    // Nothing else is pending anywhere: the next broadcast is the next frame everyone sees.
    broadcast_seen_by(
        &server,
        "END",
        [
            &mut anonymous,
            &mut alice_phone,
            &mut alice_laptop,
            &mut bob,
        ],
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn client_handle_exposes_identity_address_headers_and_can_disconnect() {
    let seen: Arc<std::sync::Mutex<Option<Session>>> = Arc::default();
    let slot = seen.clone();
    let builder = echo_server().on_authenticated(move |client| {
        let slot = slot.clone();
        async move {
            *slot.lock().expect("lock") = Some(client);
        }
    });
    let server = start(builder).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .expect("request");
    request
        .headers_mut()
        .insert("x-device", "phone".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    recv(&mut ws).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:erin"}})).await;
    recv(&mut ws).await;

    let client = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("authenticated hook ran");
    assert_eq!(client.id().as_deref(), Some("erin"));
    assert_eq!(client.user(), Some(json!({"id": "erin"})));
    assert_eq!(
        client.headers().get("x-device").map(|v| v.as_bytes()),
        Some(&b"phone"[..])
    );
    assert!(client.remote_addr().expect("addr").ip().is_loopback());

    client
        .send(&Frame::dispatch("DIRECT", json!(7)))
        .expect("send");
    assert_eq!(recv(&mut ws).await, json!({"op": 0, "d": 7, "t": "DIRECT"}));

    assert!(client.update_user(Identity::new("erin2", json!({"id": "erin2"}))));
    server
        .mesa
        .send_to(["erin"], &Frame::dispatch("OLD", json!({})))
        .await
        .expect("send");
    server
        .mesa
        .send_to(["erin2"], &Frame::dispatch("NEW", json!({})))
        .await
        .expect("send");
    assert_eq!(recv(&mut ws).await["t"], "NEW");

    client.disconnect(4321, "bye");
    assert_eq!(
        expect_close(&mut ws).await.code_reason(),
        (4321, "bye".to_string())
    );
    assert!(client.send(&Frame::dispatch("LATE", json!({}))).is_err());
    server.stop().await;
}

#[derive(Default)]
struct CountingMiddleware {
    connections: AtomicUsize,
    authenticated: AtomicUsize,
    received: AtomicUsize,
    sent: AtomicUsize,
    disconnections: AtomicUsize,
    errors: AtomicUsize,
}

struct Counting(Arc<CountingMiddleware>);

impl std::ops::Deref for Counting {
    type Target = CountingMiddleware;
    fn deref(&self) -> &CountingMiddleware {
        &self.0
    }
}

impl Middleware for Counting {
    fn on_connection(&self, _: &Session) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }
    fn on_disconnection(&self, _: &Session, _: &Disconnection) {
        self.disconnections.fetch_add(1, Ordering::SeqCst);
    }
    fn on_authenticated(&self, _: &Session) {
        self.authenticated.fetch_add(1, Ordering::SeqCst);
    }
    fn on_message_received(&self, _: &Session, _: &Frame) {
        self.received.fetch_add(1, Ordering::SeqCst);
    }
    fn on_message_sent(&self, _: &Frame, _: &Target) {
        self.sent.fetch_add(1, Ordering::SeqCst);
    }
    fn on_error(&self, _: &Session, _: &mesa_server::ConnectionError) {
        self.errors.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn middleware_and_disconnection_hooks_see_the_lifecycle() {
    let counts = Arc::new(CountingMiddleware::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Disconnection>();
    let builder = echo_server()
        .middleware(Counting(counts.clone()))
        .on_disconnection(move |_client, why| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(why);
            }
        });
    let server = start(builder).await;
    let mut ws = connect_as(&server, "frank").await;
    assert_echo_works(&mut ws).await;
    server
        .mesa
        .broadcast(&Frame::dispatch("X", json!({})))
        .await
        .expect("send");
    recv(&mut ws).await;
    send_text(&mut ws, "not json").await;
    assert_eq!(expect_close(&mut ws).await.code, 4002);
    let why = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("hook")
        .expect("event");
    assert_eq!(why.code, 4002);
    assert!(why.by_server);

    let (mut gone, _) = connect_hello(&server).await;
    gone.close(None).await.expect("close");
    let why = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("hook")
        .expect("event");
    assert_eq!((why.code, why.by_server), (1005, false));

    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
    assert_eq!(counts.authenticated.load(Ordering::SeqCst), 1);
    assert_eq!(counts.received.load(Ordering::SeqCst), 1);
    assert_eq!(counts.sent.load(Ordering::SeqCst), 1);
    assert_eq!(counts.errors.load(Ordering::SeqCst), 1);
    assert_eq!(counts.disconnections.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn version_rule_accepts_equal_and_closes_other_versions() {
    let server = start(echo_server().enforce_equal_versions("1.2.0")).await;
    let (mut good, hello) = connect_hello(&server).await;
    assert_eq!(
        hello["d"]["rules"],
        json!(["enforce_equal_versions", "sends_user_object"])
    );
    send(
        &mut good,
        json!({"op": 0, "t": "CLIENT_VERSION", "d": {"v": "1.2.0"}}),
    )
    .await;
    assert_echo_works(&mut good).await;

    let (mut bad, _) = connect_hello(&server).await;
    send(
        &mut bad,
        json!({"op": 0, "t": "CLIENT_VERSION", "d": {"v": "1.1.9"}}),
    )
    .await;
    assert_eq!(
        expect_close(&mut bad).await.code_reason(),
        (1002, "client version mismatch".to_string())
    );
    server.stop().await;
}

#[tokio::test]
async fn mounted_inside_an_axum_app() {
    use axum::routing::get;
    let mesa = echo_server().build();
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route_service("/gateway", mesa.service());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = mesa.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        served
            .serve_with(listener, app, async move {
                let _ = stopped.await;
            })
            .await
    });

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/gateway"))
        .await
        .expect("connect");
    assert_eq!(recv(&mut ws).await["op"], 10);
    assert_echo_works(&mut ws).await;

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.expect("read");
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("ok"),
        "{body}"
    );

    let _ = stop.send(());
    assert_eq!(
        without_retry_hint(recv(&mut ws).await),
        json!({"op": 7, "d": {}})
    );
    assert_eq!(expect_close(&mut ws).await.code, 1012);
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn graceful_shutdown_asks_clients_to_reconnect_and_frees_the_port() {
    let server = start(echo_server()).await;
    let addr = server.addr;
    let mut a = connect_as(&server, "a").await;
    let (mut b, _) = connect_hello(&server).await;
    let mesa = server.mesa.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        for ws in [&mut a, &mut b] {
            seen.push(without_retry_hint(recv(ws).await));
            seen.push(json!(expect_close(ws).await.code));
        }
        seen
    });
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let seen = reader.await.expect("reader");
    assert_eq!(
        seen,
        vec![
            json!({"op": 7, "d": {}}),
            json!(1012),
            json!({"op": 7, "d": {}}),
            json!(1012)
        ]
    );
    assert!(mesa.is_shutting_down());
    assert_eq!(mesa.connection_count(), 0);
    tokio::net::TcpListener::bind(addr)
        .await
        .expect("port is free again");
}

#[tokio::test]
async fn disconnect_users_closes_every_device_of_those_users_only() {
    let server = start(echo_server()).await;
    let mut phone = connect_as(&server, "gina").await;
    let mut laptop = connect_as(&server, "gina").await;
    let mut other = connect_as(&server, "hank").await;
    server
        .mesa
        .disconnect_users(&["gina".to_string()], 1000, "signed out")
        .await
        .expect("disconnect");
    assert_eq!(
        expect_close(&mut phone).await.code_reason(),
        (1000, "signed out".to_string())
    );
    assert_eq!(
        expect_close(&mut laptop).await.code_reason(),
        (1000, "signed out".to_string())
    );
    assert_echo_works(&mut other).await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_authentication_check_closes_with_1013_not_1008() {
    let builder = Mesa::builder()
        .authentication_check_timeout(Duration::from_millis(200))
        .authenticate(|_data, _client| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Identity::new("late", json!({})))
        });
    let server = start(builder).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "x"}})).await;
    assert_eq!(
        expect_close(&mut ws).await.code_reason(),
        (1013, "authentication check timed out".to_string())
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unavailable_authentication_check_closes_with_1013_and_its_reason() {
    let builder = Mesa::builder().authenticate(|_data, _client| async move {
        Err(mesa_server::AuthError::unavailable(
            "authentication service unavailable, retry later",
        ))
    });
    let server = start(builder).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "x"}})).await;
    assert_eq!(
        expect_close(&mut ws).await.code_reason(),
        (
            1013,
            "authentication service unavailable, retry later".to_string()
        )
    );
    server.stop().await;
}
