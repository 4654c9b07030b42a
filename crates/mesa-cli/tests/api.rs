//! `POST /api/send` over real sockets: Mesa 1.5's Redis `ws` message format, the bearer key, and bad input.

mod common;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "test-api-key";

fn with_key() -> MesaProcess {
    MesaProcess::start(&[], &[("MESA_API__KEY", KEY)])
}

/// POSTs `body` (raw text) to `/api/send` with an optional bearer key; returns the status and JSON body.
async fn post_send(mesa: &MesaProcess, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = http()
        .post(mesa.http_url("/api/send"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("POST /api/send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text:?}"));
    (status, json)
}

/// Connects and authenticates one client per id (auth mode none).
async fn clients(mesa: &MesaProcess, ids: &[&str]) -> Vec<Ws> {
    let mut all = Vec::new();
    for id in ids {
        let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
        authenticate(&mut ws, json!({ "id": id })).await;
        all.push(ws);
    }
    all
}

/// Sends a dispatch through the API and expects 202.
async fn dispatch(mesa: &MesaProcess, body: Value) {
    let (status, answer) = post_send(mesa, Some(KEY), &body.to_string()).await;
    assert_eq!(
        (status, answer["ok"].clone()),
        (202, json!(true)),
        "{answer}"
    );
    assert!(
        answer["queued"].is_u64() || answer["disconnected"].is_u64(),
        "{answer}"
    );
}

/// Every client's next frame. A client that was not a recipient of the first message sees the second
/// (a broadcast marker) first: frames arrive in order on a connection.
async fn next_types(clients: &mut [Ws]) -> Vec<String> {
    let mut types = Vec::new();
    for ws in clients.iter_mut() {
        let frame = recv(ws).await;
        types.push(frame["t"].as_str().unwrap_or_default().to_string());
    }
    types
}

#[tokio::test]
async fn send_to_everyone_uses_the_mesa_ws_channel_format() {
    let mesa = with_key();
    let mut all = clients(&mesa, &["a", "b", "c"]).await;
    let (mut anonymous, _) = connect_hello(&mesa.ws_url("/")).await;
    dispatch(
        &mesa,
        json!({"message": {"op": 0, "d": {"text": "hi"}, "t": "NEWS", "o": {"sync": false}}, "recipients": ["*"]}),
    )
    .await;
    for ws in all.iter_mut().chain([&mut anonymous]) {
        // `o` is a server-side option: clients never see it.
        assert_eq!(
            recv(ws).await,
            json!({"op": 0, "d": {"text": "hi"}, "t": "NEWS"})
        );
    }
    // `recipients` is optional and means everyone.
    dispatch(&mesa, json!({"message": {"op": 0, "d": {}, "t": "AGAIN"}})).await;
    assert_eq!(next_types(&mut all).await, ["AGAIN", "AGAIN", "AGAIN"]);
}

#[tokio::test]
async fn send_to_ids_and_excluding_ids() {
    let mesa = with_key();
    let mut all = clients(&mesa, &["a", "b", "c"]).await;
    let marker = json!({"message": {"op": 0, "d": {}, "t": "MARKER"}});

    dispatch(
        &mesa,
        json!({"message": {"op": 0, "d": {}, "t": "PRIVATE"}, "recipients": ["a", "c"]}),
    )
    .await;
    dispatch(&mesa, marker.clone()).await;
    assert_eq!(next_types(&mut all).await, ["PRIVATE", "MARKER", "PRIVATE"]);
    assert_eq!(next_types(&mut all[..1]).await, ["MARKER"]);
    assert_eq!(next_types(&mut all[2..]).await, ["MARKER"]);

    dispatch(
        &mesa,
        json!({"message": {"op": 0, "d": {}, "t": "NOT_B"}, "recipients": ["*"], "excluding": ["b"]}),
    )
    .await;
    dispatch(&mesa, marker.clone()).await;
    assert_eq!(next_types(&mut all).await, ["NOT_B", "MARKER", "NOT_B"]);
    assert_eq!(next_types(&mut all[..1]).await, ["MARKER"]);
    assert_eq!(next_types(&mut all[2..]).await, ["MARKER"]);

    dispatch(
        &mesa,
        json!({"message": {"op": 0, "d": {}, "t": "ONLY_B"}, "recipients": ["a", "b"], "excluding": ["a"]}),
    )
    .await;
    dispatch(&mesa, marker).await;
    assert_eq!(next_types(&mut all).await, ["MARKER", "ONLY_B", "MARKER"]);
}

#[tokio::test]
async fn disconnect_client_closes_the_named_users() {
    let mesa = with_key();
    let mut all = clients(&mesa, &["a", "b"]).await;
    dispatch(
        &mesa,
        json!({"message": {"op": 5, "d": {}, "t": "DISCONNECT_CLIENT"}, "recipients": ["a"]}),
    )
    .await;
    assert_eq!(expect_close(&mut all[0]).await.heartbeats_only().code, 1000);
    dispatch(
        &mesa,
        json!({"message": {"op": 0, "d": {}, "t": "STILL_HERE"}}),
    )
    .await;
    assert_eq!(next_types(&mut all[1..]).await, ["STILL_HERE"]);

    let (status, _) = post_send(
        &mesa,
        Some(KEY),
        r#"{"message": {"op": 5, "d": {}, "t": "DISCONNECT_CLIENT"}}"#,
    )
    .await;
    assert_eq!(
        status, 400,
        "disconnecting everyone must be asked for explicitly"
    );

    dispatch(
        &mesa,
        json!({"message": {"op": 5, "d": {}, "t": "DISCONNECT_CLIENT"}, "recipients": ["*"]}),
    )
    .await;
    assert_eq!(expect_close(&mut all[1]).await.heartbeats_only().code, 1000);
}

#[tokio::test]
async fn send_requires_the_bearer_key() {
    let mesa = with_key();
    let body = r#"{"message": {"op": 0, "d": {}, "t": "X"}}"#;
    let (status, answer) = post_send(&mesa, None, body).await;
    assert_eq!(status, 401);
    assert!(answer["error"].is_string(), "{answer}");
    let (status, _) = post_send(&mesa, Some("wrong-key"), body).await;
    assert_eq!(status, 401);
    let (status, _) = post_send(&mesa, Some(&KEY[..KEY.len() - 1]), body).await;
    assert_eq!(status, 401);
    let (status, _) = post_send(&mesa, Some(KEY), body).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn send_api_is_disabled_without_a_key_and_says_how_to_enable_it() {
    let mesa = MesaProcess::start(&[], &[]);
    let (status, answer) = post_send(&mesa, Some("anything"), r#"{"message": {"op": 0}}"#).await;
    assert_eq!(status, 404);
    let message = answer["error"].as_str().expect("error message");
    assert!(message.contains("MESA_API__KEY"), "{message}");
}

#[tokio::test]
async fn key_can_come_from_a_named_variable() {
    let mesa = MesaProcess::start(
        &[],
        &[("MESA_API__KEY_ENV", "MY_KEY"), ("MY_KEY", "from-env-key")],
    );
    let body = r#"{"message": {"op": 0, "d": {}, "t": "X"}}"#;
    assert_eq!(post_send(&mesa, Some("from-env-key"), body).await.0, 202);

    let (status, stderr) = run_to_exit(&[], &[("MESA_API__KEY_ENV", "UNSET_VARIABLE")]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("UNSET_VARIABLE"), "{stderr}");
}

#[tokio::test]
async fn malformed_bodies_get_400_and_oversized_ones_413() {
    let mesa = MesaProcess::start(
        &[],
        &[("MESA_API__KEY", KEY), ("MESA_API__MAX_BODY_BYTES", "1024")],
    );
    for body in [
        "",
        "not json",
        "[]",
        r#"{"message": {"d": {}}}"#,
        r#"{"message": {"op": "0"}}"#,
        r#"{"message": {"op": 0}, "recipients": "*"}"#,
        r#"{"message": {"op": 0}, "recipients": [1]}"#,
        r#"{"message": {"op": 0}, "recipient": ["a"]}"#,
        r#"{"message": {"op": 5, "t": "SOMETHING"}, "recipients": ["a"]}"#,
    ] {
        let (status, answer) = post_send(&mesa, Some(KEY), body).await;
        assert_eq!(status, 400, "{body:?} → {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let big = json!({"message": {"op": 0, "d": {"blob": "x".repeat(2000)}}}).to_string();
    let (status, answer) = post_send(&mesa, Some(KEY), &big).await;
    assert_eq!(status, 413, "{answer}");

    // The gateway at `/` does not shadow the API, and the API does not shadow the gateway.
    let (_ws, hello) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(hello["op"], 10);
}

#[tokio::test]
async fn only_dispatches_and_the_documented_disconnect_are_sent() {
    let mesa = with_key();
    let mut alice = clients(&mesa, &["alice"]).await;
    for message in [
        json!({"op": 22, "d": {"id": "admin"}}),
        json!({"op": 10, "d": {"c_heartbeat_interval": 1}}),
        json!({"op": 7, "d": {}}),
        json!({"op": 1, "d": {}}),
        json!({"op": 0, "d": {}}),
        json!({"op": 5, "t": "SOMETHING_ELSE"}),
    ] {
        let body = json!({"message": message, "recipients": ["*"]});
        let (status, answer) = post_send(&mesa, Some(KEY), &body.to_string()).await;
        assert_eq!(status, 400, "{message}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    // Nothing of the refused messages reached the client: its next frame is the dispatch.
    dispatch(&mesa, json!({"message": {"op": 0, "t": "OK", "d": 1}})).await;
    assert_eq!(recv(&mut alice[0]).await["t"], "OK");
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    assert!(
        metrics.contains("mesa_api_requests_total{outcome=\"bad_request\"} 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesa_api_requests_total{outcome=\"sent\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_short_api_key_is_warned_about_at_startup() {
    let mesa = with_key();
    mesa.wait_for_log("api.key is shorter than 32 bytes");
    let long = MesaProcess::start(
        &[],
        &[("MESA_API__KEY", "0123456789abcdef0123456789abcdef")],
    );
    long.wait_for_log("listening on");
    assert!(!long.logs().contains("api.key is shorter"));
}
