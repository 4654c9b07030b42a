//! The HTTP event proxy of `mesa serve` over real sockets, against backends the tests start on 127.0.0.1:
//! replies, sends to targets, refusals, a slow, a failing and a missing backend, lifecycle events, and order
//! per connection under concurrency.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use mesa_testkit::process::free_port;
use serde_json::{json, Value};

/// What the backend received, in order.
type Seen = Arc<Mutex<Vec<Value>>>;

/// A backend with one route per behaviour; returns its base URL and what it saw.
async fn backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/echo",
            post(|State(seen): State<Seen>, Json(body): Json<Value>| async move {
                seen.lock().expect("lock").push(body.clone());
                let frame = &body["frame"];
                Json(json!({
                    "reply": {"t": "ECHO", "d": {"got": frame["d"], "from": body["user_id"]}},
                }))
            }),
        )
        .route(
            "/say",
            post(|Json(body): Json<Value>| async move {
                Json(json!({"send": {
                    "message": {"op": 0, "t": "SAID", "d": {"from": body["user_id"], "text": body["frame"]["d"]["text"]}},
                    "recipients": ["*"],
                    "excluding": [body["user_id"]],
                }}))
            }),
        )
        .route(
            "/ordered",
            post(|Json(body): Json<Value>| async move {
                // Uneven latency, so that out-of-order handling would show.
                let n = body["frame"]["d"]["n"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis((n * 7) % 5)).await;
                Json(json!({"reply": {"t": "ACK", "d": {"n": n}}}))
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Json(json!({}))
            }),
        )
        .route(
            "/fail",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/refuse",
            post(|| async { Json(json!({"refuse": "you are muted"})) }),
        )
        .route(
            "/forbid",
            post(|| async { (StatusCode::FORBIDDEN, Json(json!({"error": "no"}))) }),
        )
        .route(
            "/bad",
            post(|| async { Json(json!({"reply": {"op": 22, "d": {}}})) }),
        )
        .route(
            "/events",
            post(|State(seen): State<Seen>, Json(body): Json<Value>| async move {
                seen.lock().expect("lock").push(body);
                Json(json!({}))
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// `mesa serve` with `[proxy]` from this TOML text.
fn proxied(toml: &str) -> MesaProcess {
    let file = temp_file("proxy.toml", toml);
    MesaProcess::start(&["--config", file.to_str().expect("utf-8")], &[])
}

async fn connect_as(mesa: &MesaProcess, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({"id": id})).await;
    ws
}

fn error_code(frame: &Value) -> &str {
    assert_eq!(frame["t"], "PROXY_ERROR", "{frame}");
    frame["d"]["code"].as_str().expect("code")
}

#[tokio::test]
async fn a_dispatch_reaches_the_backend_and_its_reply_the_sender() {
    let (url, seen) = backend().await;
    let mesa = proxied(&format!("[proxy]\nurl = \"{url}/echo\"\n"));
    let mut ws = connect_as(&mesa, "alice").await;
    send(&mut ws, json!({"op": 0, "t": "HELLO", "d": {"x": 1}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 0, "t": "ECHO", "d": {"got": {"x": 1}, "from": "alice"}})
    );
    let body = seen.lock().expect("lock")[0].clone();
    assert_eq!(body["event"], "dispatch");
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["frame"], json!({"op": 0, "t": "HELLO", "d": {"x": 1}}));
    assert!(body["connection_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn rules_route_by_type_and_answers_send_to_targets() {
    let (url, _) = backend().await;
    let mesa = proxied(&format!(
        "[proxy]\nurl = \"{url}/echo\"\n\n[[proxy.rules]]\nt = \"SAY\"\nurl = \"{url}/say\"\n\n\
         [[proxy.rules]]\nt = \"ECHO_*\"\n"
    ));
    let mut alice = connect_as(&mesa, "alice").await;
    let mut bob = connect_as(&mesa, "bob").await;
    send(
        &mut alice,
        json!({"op": 0, "t": "SAY", "d": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        recv(&mut bob).await,
        json!({"op": 0, "t": "SAID", "d": {"from": "alice", "text": "hi"}})
    );
    // Routed by prefix to proxy.url; the sender was excluded from the SAID broadcast, so this is next.
    send(&mut alice, json!({"op": 0, "t": "ECHO_ME", "d": 2})).await;
    assert_eq!(recv(&mut alice).await["t"], "ECHO");
    // No rule: the sender is told, nothing is dropped silently.
    send(&mut alice, json!({"op": 0, "t": "OTHER", "d": 3})).await;
    let error = recv(&mut alice).await;
    assert_eq!(error_code(&error), "no_route");
    assert_eq!(error["d"]["t"], "OTHER");
}

#[tokio::test]
async fn slow_failing_refusing_and_missing_backends_answer_the_sender_with_an_error() {
    let (url, _) = backend().await;
    let down = free_port();
    let mesa = proxied(&format!(
        "[proxy]\ntimeout_ms = 300\n\
         [[proxy.rules]]\nt = \"SLOW\"\nurl = \"{url}/slow\"\n\
         [[proxy.rules]]\nt = \"FAIL\"\nurl = \"{url}/fail\"\n\
         [[proxy.rules]]\nt = \"REFUSE\"\nurl = \"{url}/refuse\"\n\
         [[proxy.rules]]\nt = \"FORBID\"\nurl = \"{url}/forbid\"\n\
         [[proxy.rules]]\nt = \"BAD\"\nurl = \"{url}/bad\"\n\
         [[proxy.rules]]\nt = \"DOWN\"\nurl = \"http://127.0.0.1:{down}/x\"\n"
    ));
    let mut ws = connect_as(&mesa, "alice").await;
    for (t, code, reason) in [
        ("SLOW", "timeout", None),
        ("FAIL", "unavailable", None),
        ("REFUSE", "refused", Some("you are muted")),
        ("FORBID", "refused", Some("no")),
        ("BAD", "bad_answer", None),
        ("DOWN", "unavailable", None),
    ] {
        send(&mut ws, json!({"op": 0, "t": t, "d": {}})).await;
        let error = recv(&mut ws).await;
        assert_eq!(error_code(&error), code, "{t}: {error}");
        assert_eq!(error["d"]["t"], t);
        assert_eq!(error["d"]["event"], "dispatch");
        if let Some(reason) = reason {
            assert_eq!(error["d"]["reason"], reason);
        }
    }
    // The operator is told which failure it was.
    mesa.wait_for_log("timed out");
    mesa.wait_for_log("status 500");
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    for outcome in ["timeout", "unavailable", "refused", "bad_answer"] {
        assert!(
            metrics.contains(&format!(
                "mesa_proxy_requests_total{{event=\"dispatch\",outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {metrics}"
        );
    }
    assert!(metrics.contains("# TYPE mesa_proxy_request_duration_seconds histogram"));
}

#[tokio::test]
async fn a_full_connection_queue_answers_overloaded() {
    let (url, _) = backend().await;
    let mesa = proxied(&format!(
        "[proxy]\nurl = \"{url}/slow\"\nqueue = 1\ntimeout_ms = 1000\n"
    ));
    let mut ws = connect_as(&mesa, "alice").await;
    // One call in flight, one waiting, the third does not fit.
    for n in 0..3 {
        send(&mut ws, json!({"op": 0, "t": "X", "d": {"n": n}})).await;
    }
    // Whether the worker took the first event before the second arrived decides which one overflows.
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(error_code(&recv(&mut ws).await).to_string());
    }
    assert_eq!(codes[0], "overloaded", "{codes:?}");
    assert!(
        codes.iter().all(|c| c == "overloaded" || c == "timeout"),
        "{codes:?}"
    );
    assert!(codes.contains(&"timeout".to_string()), "{codes:?}");
}

#[tokio::test]
async fn order_is_kept_per_connection_under_concurrency() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: u64 = 50;
    let (url, _) = backend().await;
    let mesa = proxied(&format!(
        "[proxy]\nurl = \"{url}/ordered\"\nmax_concurrency = 4\nqueue = {PER_CONNECTION}\n"
    ));
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let ws = connect_as(&mesa, &format!("user{i}")).await;
        clients.push(ws);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for n in 0..PER_CONNECTION {
                    send(&mut ws, json!({"op": 0, "t": "N", "d": {"n": n}})).await;
                }
                let mut arrived = Vec::new();
                for _ in 0..PER_CONNECTION {
                    let frame = recv(&mut ws).await;
                    assert_eq!(frame["t"], "ACK", "{frame}");
                    arrived.push(frame["d"]["n"].as_u64().expect("n"));
                }
                arrived
            })
        })
        .collect();
    for task in tasks {
        let arrived = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("in time")
            .expect("client task");
        assert_eq!(arrived, (0..PER_CONNECTION).collect::<Vec<_>>());
    }
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    let sent = CONNECTIONS as u64 * PER_CONNECTION;
    assert!(
        metrics.contains(&format!(
            "mesa_proxy_requests_total{{event=\"dispatch\",outcome=\"ok\"}} {sent}\n"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn lifecycle_events_are_posted_in_order() {
    let (url, seen) = backend().await;
    let mesa = proxied(&format!(
        "[proxy]\nurl = \"{url}/events\"\nevents = [\"connection\", \"authentication\", \"disconnection\"]\n"
    ));
    let mut ws = connect_as(&mesa, "alice").await;
    send(&mut ws, json!({"op": 0, "t": "SAY", "d": 1})).await;
    ws.close(None).await.expect("close");
    let deadline = std::time::Instant::now() + STEP;
    let events = loop {
        let events: Vec<Value> = seen.lock().expect("lock").clone();
        if events.len() >= 4 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<_> = events.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(
        kinds,
        [
            json!("connection"),
            json!("authentication"),
            json!("dispatch"),
            json!("disconnection")
        ]
    );
    assert_eq!(events[1]["user"], json!({"id": "alice"}));
    assert_eq!(events[3]["code"], 1005);
    let ids: Vec<_> = events.iter().map(|e| e["connection_id"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

#[tokio::test]
async fn without_a_proxy_a_dispatch_is_answered_no_route_and_logged() {
    let mesa = MesaProcess::start(&[], &[]);
    let mut ws = connect_as(&mesa, "alice").await;
    send(&mut ws, json!({"op": 0, "t": "SAY", "d": 1})).await;
    assert_eq!(error_code(&recv(&mut ws).await), "no_route");
    mesa.wait_for_log("no [proxy] is configured");
}

#[test]
fn a_proxy_rule_without_a_url_is_a_configuration_error() {
    let file = temp_file("bad-proxy.toml", "[[proxy.rules]]\nt = \"SAY\"\n");
    let (status, stderr) = run_to_exit(&["--config", file.to_str().expect("utf-8")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("proxy.rules[0]"), "{stderr}");
}

/// Connects with an `X-Forwarded-For` header and returns the `remote_addr` of its connection event.
async fn forwarded_remote_addr(mesa: &MesaProcess, seen: &Seen) -> Value {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            mesa.ws_url("/"),
        )
        .expect("request");
    request.headers_mut().insert(
        "x-forwarded-for",
        "198.51.100.9, 203.0.113.7".parse().expect("header"),
    );
    let (_ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let Some(event) = seen.lock().expect("lock").pop() {
            return event["remote_addr"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no connection event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() {
    let (url, seen) = backend().await;
    let toml = format!("[proxy]\nurl = \"{url}/events\"\nevents = [\"connection\"]\n");
    let trusting = proxied(&format!("trusted_proxies = [\"127.0.0.0/8\"]\n{toml}"));
    assert_eq!(
        forwarded_remote_addr(&trusting, &seen).await,
        json!("203.0.113.7:0")
    );
    // Not a trusted proxy: the header is the client's own claim and is ignored.
    let direct = proxied(&toml);
    let addr = forwarded_remote_addr(&direct, &seen).await;
    assert!(
        addr.as_str().is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{addr}"
    );
}
