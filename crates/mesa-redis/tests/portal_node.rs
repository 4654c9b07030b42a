//! Portal fire-and-forget mode against the real Mesa 1.5.8 (`compat/node-portal`): a 1.5 `Portal` receives
//! what our `PortalSender` hands, and our `PortalWorker` receives what a 1.5 node publishes.
//!
//! Needs `node` and `npm` (the first run installs `compat/node-portal/node_modules` with `npm ci`).

#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use node_harness::NodeScript;

use mesa_engine::{ConnectionId, NodeId};
use mesa_protocol::Frame;
use mesa_redis::portal::{
    PortalConfig, PortalEvent, PortalEventKind, PortalMode, PortalSender, PortalWorker,
};
use mesa_testkit::redis::RedisServer;
use serde_json::{json, Value};

#[tokio::test]
async fn a_mesa_1_5_portal_receives_what_our_sender_hands() {
    let server = RedisServer::start();
    let config = PortalConfig::new(server.url(), PortalMode::FireAndForget).namespace("compat");
    let mut script = NodeScript::spawn("node-portal", "portal.js", &[&server.url(), "compat", "4"]);
    let ready = script.line().await;
    assert!(ready.starts_with("PORTAL_READY "), "{ready}");
    // In the pool is not yet subscribed: wait for its subscription, or the first event reaches nobody.
    server.wait_for_subscribers("portal_compat", 1);

    let sender = PortalSender::connect(&config).await.expect("sender");
    let node = NodeId(5);
    let connection = ConnectionId::new(node, 1);
    let events = [
        PortalEvent::new(PortalEventKind::Connection, node, connection),
        PortalEvent::new(PortalEventKind::Authentication, node, connection).with_user("alice"),
        PortalEvent::new(
            PortalEventKind::Message(Frame::dispatch("SAY", json!({"text": "hi"}))),
            node,
            connection,
        )
        .with_user("alice"),
        PortalEvent::new(
            PortalEventKind::Disconnection {
                code: Some(1000),
                reason: None,
            },
            node,
            connection,
        )
        .with_user("alice"),
    ];
    for event in &events {
        sender.hand(event).await.expect("hand");
    }
    let mut received = Vec::new();
    for _ in 0..events.len() {
        received.push(serde_json::from_str::<Value>(&script.line().await).expect("JSON"));
    }
    assert_eq!(
        received,
        [
            json!({"type": "connection", "clientId": null}),
            json!({"type": "authentication", "clientId": "alice"}),
            json!({"type": "message", "clientId": "alice", "message": {"op": 0, "d": {"text": "hi"}, "t": "SAY"}}),
            json!({"type": "disconnection", "clientId": "alice"}),
        ]
    );
    let status = script.wait().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn our_worker_receives_what_a_mesa_1_5_node_publishes() {
    let server = RedisServer::start();
    let config = PortalConfig::new(server.url(), PortalMode::FireAndForget).namespace("compat");
    // In the pool before the node starts: the node reads the pool when it starts.
    let mut worker = PortalWorker::join(&config, "rust-worker")
        .await
        .expect("join");
    let mut script = NodeScript::spawn("node-portal", "node.js", &[&server.url(), "compat"]);

    let mut events = Vec::new();
    for _ in 0..4 {
        let delivery = tokio::time::timeout(node_harness::SCRIPT_TIMEOUT, worker.next())
            .await
            .expect("an event from the node in time")
            .expect("next");
        events.push(delivery.event().clone());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        kinds,
        ["connection", "authentication", "message", "disconnection"]
    );
    let users: Vec<Option<&str>> = events.iter().map(|e| e.user_id.as_deref()).collect();
    assert_eq!(users, [None, Some("alice"), Some("alice"), Some("alice")]);
    match &events[2].kind {
        PortalEventKind::Message(frame) => {
            assert_eq!(frame.op, 0);
            assert_eq!(frame.t.as_deref(), Some("SAY"));
            assert_eq!(frame.d, json!({"text": "hi"}));
        }
        other => panic!("expected the message, got {other:?}"),
    }
    // A 1.5 node has no connection ids, node ids or timestamps.
    assert!(events
        .iter()
        .all(|e| e.connection.is_none() && e.node.is_none()));

    assert_eq!(script.line().await, "NODE_DONE");
    let status = script.wait().await;
    assert!(status.success(), "{status}");
    worker.leave().await.expect("leave");
}
