//! Two gateway nodes of one process sharing an in-memory engine, over real sockets: what the engine layer
//! promises the server (cross-node sends of every kind, disconnects, presence, leaving at shutdown), and that
//! an engine's failure reaches the caller of `Mesa::send`.

use std::sync::Arc;

use mesa_engine::conformance::UnreachableEngine;
use mesa_engine::{Engine, EngineError, MemoryEngine, PublishError};
use mesa_server::{Frame, NodeId, SendError, Target};
use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use serde_json::json;

async fn two_nodes() -> (TestServer, TestServer) {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let a = start(echo_server().node_id(NodeId(0xa)).engine(engine.clone())).await;
    let b = start(echo_server().node_id(NodeId(0xb)).engine(engine)).await;
    (a, b)
}

#[tokio::test]
async fn sends_from_one_node_reach_users_connected_to_another() {
    let (a, b) = two_nodes().await;
    let mut ann = connect_as(&a, "ann").await;
    let mut bob = connect_as(&b, "bob").await;
    let mut bob_phone = connect_as(&b, "bob").await;

    let delivery = a
        .mesa
        .send_to(["bob"], &Frame::dispatch("HI", json!({"n": 1})))
        .await
        .expect("send");
    assert_eq!((delivery.queued, delivery.nodes), (2, 1));
    for ws in [&mut bob, &mut bob_phone] {
        assert_eq!(recv(ws).await["d"], json!({"n": 1}));
    }

    let everyone = b
        .mesa
        .send(
            &Frame::dispatch("ALL", json!({})),
            &Target::all().excluding(["bob"]),
        )
        .await
        .expect("send");
    assert_eq!(
        everyone.queued, 1,
        "ann only: bob is excluded on both nodes"
    );
    assert_eq!(recv(&mut ann).await["t"], "ALL");

    // A connection id names its node: the send crosses to it.
    let phone_id = b
        .mesa
        .sessions_of("bob")
        .iter()
        .map(|session| session.connection_id())
        .max()
        .expect("bob has sessions");
    a.mesa
        .send(
            &Frame::dispatch("ONE", json!({})),
            &Target::connection(phone_id),
        )
        .await
        .expect("send");
    assert_eq!(recv(&mut bob_phone).await["t"], "ONE");
    expect_silence(&mut bob, std::time::Duration::from_millis(200)).await;

    let presence = a.mesa.presence("bob").await.expect("presence");
    assert_eq!(presence.nodes, vec![(NodeId(0xb), 2)]);

    let closed = a
        .mesa
        .disconnect_users(&["bob".to_string()], 1000, "bye")
        .await
        .expect("disconnect");
    assert_eq!(closed.queued, 2);
    for ws in [&mut bob, &mut bob_phone] {
        assert_eq!(expect_close(ws).await.code_reason(), (1000, "bye".into()));
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_node_that_shuts_down_leaves_presence_and_the_node_list() {
    let (a, b) = two_nodes().await;
    let _ann = connect_as(&a, "ann").await;
    let _ann_too = connect_as(&b, "ann").await;
    let mut nodes: Vec<NodeId> = a
        .mesa
        .nodes()
        .await
        .expect("nodes")
        .iter()
        .map(|n| n.node)
        .collect();
    nodes.sort();
    assert_eq!(nodes, [NodeId(0xa), NodeId(0xb)]);
    b.stop().await;
    let presence = a.mesa.presence("ann").await.expect("presence");
    assert_eq!(
        presence.nodes,
        vec![(NodeId(0xa), 1)],
        "ann is still online on node a"
    );
    let nodes: Vec<NodeId> = a
        .mesa
        .nodes()
        .await
        .expect("nodes")
        .iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, [NodeId(0xa)]);
    a.stop().await;
}

#[tokio::test]
async fn an_engine_failure_reaches_the_caller_of_send() {
    let server = start(echo_server().engine(Arc::new(UnreachableEngine::default()))).await;
    let mut ann = connect_as(&server, "ann").await;
    let error = server
        .mesa
        .send_to(["ann"], &Frame::dispatch("HI", json!({})))
        .await
        .expect_err("the engine is down");
    match &error {
        SendError::Engine(PublishError { local, cause }) => {
            assert_eq!(local.queued, 1);
            assert!(matches!(cause, EngineError::Unavailable(_)), "{cause:?}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(error.to_string().contains("backend down"), "{error}");
    assert_eq!(
        recv(&mut ann).await["t"],
        "HI",
        "local sessions are still served"
    );
    assert!(!server.mesa.engine_health().is_healthy());
    server.stop().await;
}
