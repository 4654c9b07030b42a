//! `GET /api/presence/<id>`, `GET /api/nodes`, `/healthz` and `mesa_engine_degraded` of the real `mesa` binary
//! with the in-memory engine (one node). The answers of an engine that cannot reach other nodes (503,
//! degraded) are tested in-process in `src/api/engine_tests.rs`.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "cluster-api-test-key";

/// GETs `path` with the bearer key (if any); returns the status and the JSON body.
async fn get_json(mesa: &MesaProcess, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = http().get(mesa.http_url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text:?}"));
    (status, json)
}

async fn client(mesa: &MesaProcess, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({ "id": id })).await;
    ws
}

/// Polls `path` until `done` holds for its answer (a session's end is processed by its task, after the
/// client's close), at most [`STEP`].
async fn wait_for(mesa: &MesaProcess, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, answer) = get_json(mesa, path, Some(KEY)).await;
        if status == 200 && done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path} still answers {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presence_and_nodes_report_sessions_per_node() {
    let mesa = MesaProcess::start(&[], &[("MESA_API__KEY", KEY)]);
    let alice_phone = client(&mesa, "alice").await;
    let _alice_laptop = client(&mesa, "alice").await;
    let _bob = client(&mesa, "bob").await;
    let (_anonymous, _) = connect_hello(&mesa.ws_url("/")).await;

    let (status, nodes) = get_json(&mesa, "/api/nodes", Some(KEY)).await;
    assert_eq!(status, 200, "{nodes}");
    let list = nodes["nodes"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{nodes}");
    let node = list[0]["node"].as_str().expect("node id").to_string();
    assert!(
        node.len() == 16 && node.chars().all(|c| c.is_ascii_hexdigit()),
        "{node}"
    );
    assert_eq!(list[0]["connections"], 4, "{nodes}");
    assert!(list[0]["last_seen_ms"].as_u64().unwrap_or(0) > 0, "{nodes}");

    let (status, alice) = get_json(&mesa, "/api/presence/alice", Some(KEY)).await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(
        alice,
        json!({"user": "alice", "online": true, "sessions": 2,
               "nodes": [{"node": node, "sessions": 2}]})
    );
    let (_, nobody) = get_json(&mesa, "/api/presence/nobody", Some(KEY)).await;
    assert_eq!(
        nobody,
        json!({"user": "nobody", "online": false, "sessions": 0, "nodes": []})
    );

    // One device leaving leaves the user online on the other.
    drop(alice_phone);
    let alice = wait_for(&mesa, "/api/presence/alice", |a| a["sessions"] == 1).await;
    assert_eq!(alice["online"], true, "{alice}");
    assert_eq!(alice["nodes"], json!([{"node": node, "sessions": 1}]));
}

#[tokio::test]
async fn presence_takes_percent_encoded_user_ids() {
    let mesa = MesaProcess::start(&[], &[("MESA_API__KEY", KEY)]);
    let _ws = client(&mesa, "a b/ü").await;
    let (status, answer) = get_json(&mesa, "/api/presence/a%20b%2F%C3%BC", Some(KEY)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user"], "a b/ü");
    assert_eq!(answer["sessions"], 1, "{answer}");
    // Not UTF-8 once decoded: refused, not guessed.
    let (status, answer) = get_json(&mesa, "/api/presence/%FF", Some(KEY)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}

#[tokio::test]
async fn presence_and_nodes_need_the_api_key() {
    let mesa = MesaProcess::start(&[], &[("MESA_API__KEY", KEY)]);
    for path in ["/api/presence/alice", "/api/nodes"] {
        let (status, answer) = get_json(&mesa, path, None).await;
        assert_eq!(status, 401, "{path}: {answer}");
        let (status, _) = get_json(&mesa, path, Some("wrong")).await;
        assert_eq!(status, 401, "{path}");
    }
    let disabled = MesaProcess::start(&[], &[]);
    for path in ["/api/presence/alice", "/api/nodes"] {
        let (status, answer) = get_json(&disabled, path, Some(KEY)).await;
        assert_eq!(status, 404, "{path}: {answer}");
        let message = answer["error"].as_str().expect("error");
        assert!(message.contains("MESA_API__KEY"), "{message}");
    }
}

#[tokio::test]
async fn healthz_and_metrics_say_the_memory_engine_is_healthy() {
    let mesa = MesaProcess::start(&[], &[]);
    let (_ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (status, health) = get_json(&mesa, "/healthz", None).await;
    // The contract of a single node is unchanged.
    assert_eq!(
        (status, health),
        (200, json!({"status": "ok", "connections": 1}))
    );
    let (status, metrics) = get(&mesa.http_url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE mesa_engine_degraded gauge\nmesa_engine_degraded 0\n"),
        "{metrics}"
    );
}
