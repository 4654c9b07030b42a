//! Mesa 1.5 compatibility mode against the real `@cryb/mesa` 1.5.8 (`compat/node-cluster`): a 1.5
//! `Dispatcher` reaches the clients of two of our nodes (namespace and none), a 1.5 node and one of ours on
//! one Redis reach each other's clients both ways, and a 1.5 Node client gets its offline messages from ours.
//!
//! Needs `node` and `npm` (the first run installs `compat/node-cluster/node_modules` with `npm ci`).

mod common;
#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use node_harness::NodeScript;

use std::sync::Arc;
use std::time::Duration;

use mesa_engine::{Engine, NodeId};
use mesa_protocol::Frame;
use mesa_redis::{RedisConfig, RedisEngine};
use mesa_server::MesaBuilder;
use mesa_testkit::redis::RedisServer;
use mesa_testkit::server::{start, with_token_auth};
use mesa_testkit::ws::{connect_as, expect_close, recv, send};
use serde_json::{json, Value};

/// A script of `compat/node-cluster` (the real 1.5.8 Dispatcher, node and client), killed when dropped.
fn spawn(script: &str, args: &[&str]) -> NodeScript {
    NodeScript::spawn("node-cluster", script, args)
}

fn compat(redis: &RedisServer, namespace: &str) -> RedisConfig {
    common::config(&redis.url())
        .with_namespace(namespace)
        .with_mesa15_compat(true)
}

/// Token `user:<id>`; `SEND_TO {to, payload}` sends `DIRECT` to those users (as the 1.5 fixture does).
fn gateway(node: u64, engine: &Arc<RedisEngine>) -> MesaBuilder {
    with_token_auth(mesa_server::Mesa::builder())
        .node_id(NodeId(node))
        .engine(engine.clone() as Arc<dyn Engine>)
        .on_message(|client, frame| async move {
            if frame.t.as_deref() == Some("SEND_TO") {
                let to: Vec<String> = frame
                    .d
                    .get("to")
                    .and_then(|to| serde_json::from_value(to.clone()).ok())
                    .unwrap_or_default();
                let payload = frame.d.get("payload").cloned().unwrap_or(Value::Null);
                if let Some(mesa) = client.server() {
                    let _ = mesa.send_to(to, &Frame::dispatch("DIRECT", payload)).await;
                }
            }
        })
}

/// Ours `namespace`, 1.5's `node_namespace` (`-`: none).
async fn a_dispatcher_reaches_two_of_our_nodes(namespace: &str, node_namespace: &str) {
    let redis = RedisServer::start();
    let config = compat(&redis, namespace);
    let (engine_a, engine_b) = (common::engine(&config), common::engine(&config));
    let a = start(gateway(0xa, &engine_a)).await;
    let b = start(gateway(0xb, &engine_b)).await;
    let mut alice = connect_as(&a, "alice").await;
    let mut bob = connect_as(&b, "bob").await;
    engine_a.flush().await.expect("flushed");
    engine_b.flush().await.expect("flushed");

    let mut dispatcher = spawn("dispatcher.js", &[&redis.url(), node_namespace]);
    assert_eq!(dispatcher.line().await, "READY");
    let mut step = 0;
    let mut dispatch = async |line: Value| {
        dispatcher.write(&line).await;
        step += 1;
        assert_eq!(dispatcher.line().await, format!("SENT {step}"));
    };
    let message = |t: &str, n: u64| json!({"op": 0, "d": {"n": n}, "t": t});

    dispatch(json!({"message": message("TO_ALICE", 1), "to": ["alice"]})).await;
    assert_eq!(recv(&mut alice).await, message("TO_ALICE", 1));
    dispatch(json!({"message": message("ALL", 2), "to": ["*"]})).await;
    assert_eq!(recv(&mut alice).await, message("ALL", 2));
    assert_eq!(recv(&mut bob).await, message("ALL", 2));
    dispatch(
        json!({"message": message("NOT_BOB", 3), "to": ["alice", "bob"], "excluding": ["bob"]}),
    )
    .await;
    assert_eq!(recv(&mut alice).await, message("NOT_BOB", 3));
    // A barrier from the same Dispatcher: had bob been sent NOT_BOB, it would come first.
    dispatch(json!({"message": message("BARRIER", 4), "to": ["bob"]})).await;
    assert_eq!(recv(&mut bob).await, message("BARRIER", 4));
    dispatch(json!({"event": "DISCONNECT_CLIENT", "to": ["bob"]})).await;
    assert_eq!(
        expect_close(&mut bob).await.code_reason(),
        (1000, String::new())
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_mesa_1_5_dispatcher_with_a_namespace_reaches_clients_of_two_of_our_nodes() {
    a_dispatcher_reaches_two_of_our_nodes("compat", "compat").await;
}

#[tokio::test]
async fn a_mesa_1_5_dispatcher_without_namespace_reaches_our_default_namespace() {
    a_dispatcher_reaches_two_of_our_nodes("default", "-").await;
}

#[tokio::test]
async fn a_mesa_1_5_node_and_ours_on_one_redis_reach_each_other_both_ways() {
    let redis = RedisServer::start();
    let config = compat(&redis, "mixed");
    let keys = mesa_redis::Keys::new("mixed");
    let engine = common::engine(&config);
    let ours = start(gateway(0xa, &engine)).await;
    let mut node = spawn("node.js", &[&redis.url(), "mixed"]);
    let ready = node.line().await;
    let port = ready.strip_prefix("READY ").expect("READY <port>");
    let theirs = format!("ws://127.0.0.1:{port}/");

    let mut alice = connect_as(&theirs, "alice").await;
    let mut bob = connect_as(&ours, "bob").await;
    engine.flush().await.expect("flushed");
    // The 1.5 node marks alice connected after its op 22.
    let connected = keys.mesa15_connected_clients();
    common::eventually(
        "alice in connected_clients",
        Duration::from_secs(5),
        || async { redis.cli(&["SISMEMBER", &connected, "alice"]) == "1" },
    )
    .await;

    // Ours -> theirs: bob (on our node) writes to alice (on the 1.5 node).
    send(
        &mut bob,
        json!({"op": 0, "t": "SEND_TO", "d": {"to": ["alice"], "payload": {"text": "hi alice"}}}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"op": 0, "d": {"text": "hi alice"}, "t": "DIRECT"})
    );
    // Theirs -> ours.
    send(
        &mut alice,
        json!({"op": 0, "t": "SEND_TO", "d": {"to": ["bob"], "payload": {"text": "hi bob"}}}),
    )
    .await;
    assert_eq!(
        recv(&mut bob).await,
        json!({"op": 0, "d": {"text": "hi bob"}, "t": "DIRECT"})
    );
    // Neither was stored: both users were connected.
    assert_eq!(
        redis.cli(&["HLEN", &keys.mesa15_undelivered_messages()]),
        "0"
    );
    ours.stop().await;
}

#[tokio::test]
async fn a_mesa_1_5_client_gets_its_offline_messages_from_our_node() {
    let redis = RedisServer::start();
    let config = compat(&redis, "client");
    let engine = common::engine(&config);
    let ours = start(gateway(0xa, &engine)).await;
    engine.flush().await.expect("flushed");
    for n in 1..=2 {
        ours.mesa
            .send_to(["carol"], &Frame::dispatch("MISSED", json!({ "n": n })))
            .await
            .expect("sent");
    }
    let mut client = spawn("client.js", &[&ours.url(), "user:carol", "2"]);
    // The stored messages follow op 22 at once, so the client may handle them before its `authenticate()`
    // promise resolves (and print them before "AUTHENTICATED", or exit before printing it).
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = client.line().await;
        if line != "AUTHENTICATED" {
            got.push(serde_json::from_str::<Value>(&line).expect("JSON"));
        }
    }
    assert_eq!(
        got,
        [
            json!({"op": 0, "d": {"n": 1}, "t": "MISSED", "s": 1}),
            json!({"op": 0, "d": {"n": 2}, "t": "MISSED", "s": 2}),
        ]
    );
    ours.stop().await;
}
