//! Routing by where users are, namespaces, and two real gateways (`mesa-server` nodes with real WebSocket
//! clients) over one Redis with a Dispatcher. Against a real `redis-server`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mesa_engine::conformance::RecordingNode;
use mesa_engine::{EncodedFrame, Engine, NodeId, Publication, Target};
use mesa_redis::{Dispatcher, RedisEngine};
use mesa_server::Frame;
use mesa_testkit::redis::RedisServer;
use mesa_testkit::server::{echo_server, start};
use mesa_testkit::ws::{connect_as, expect_close, expect_silence, recv};
use serde_json::json;

fn numsub(redis: &RedisServer, channel: &str) -> String {
    // `PUBSUB NUMSUB <channel>` prints the channel, then its subscriber count.
    redis
        .cli(&["pubsub", "numsub", channel])
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

async fn send(engine: &RedisEngine, origin: u64, target: Target, text: &str) {
    engine
        .publish(Publication::send(
            Some(NodeId(origin)),
            target,
            EncodedFrame::from(text.to_owned()),
        ))
        .await
        .expect("published");
}

#[tokio::test]
async fn a_node_holding_no_recipient_receives_nothing_from_redis() {
    let redis = RedisServer::start();
    let config = common::config(&redis.url()).with_namespace(common::namespace("routing"));
    let (ea, eb, ec) = (
        common::engine(&config),
        common::engine(&config),
        common::engine(&config),
    );
    let a = RecordingNode::attach(1, ea.clone()).await;
    let b = RecordingNode::attach(2, eb.clone()).await;
    let c = RecordingNode::attach(3, ec.clone()).await;
    let _alice = a.open(Some("alice"));
    let bob = b.open(Some("bob"));
    let carol = c.open(Some("carol"));
    for engine in [&ea, &eb, &ec] {
        engine.flush().await.expect("flushed");
    }
    // Only node 2 listens on bob's channel; every node on the broadcast channel.
    let keys = ea.keys();
    assert_eq!(numsub(&redis, &keys.user_channel("bob")), "1");
    assert_eq!(numsub(&redis, &keys.user_channel("carol")), "1");
    assert_eq!(numsub(&redis, &keys.broadcast_channel()), "3");

    for i in 0..30 {
        send(&ea, 1, Target::users(["bob"]), &format!("to-bob-{i}")).await;
    }
    let dispatcher = Dispatcher::connect(config.clone()).expect("valid");
    for i in 0..10 {
        let delivery = dispatcher
            .send(
                &EncodedFrame::from(format!("service-{i}")),
                &Target::users(["bob"]),
            )
            .await
            .expect("dispatched");
        assert_eq!(delivery.nodes, 1);
    }
    send(&ea, 1, Target::connection(bob), "to-bob-connection").await;
    let before = ec.metrics().received;
    // The barrier: Redis hands node 3 everything in the order it processed it.
    send(&ea, 1, Target::all(), "barrier").await;
    c.wait_for_frame(carol, "barrier").await;
    b.wait_for_frame(bob, "barrier").await;
    assert_eq!(
        before, 0,
        "node 3 holds no recipient: Redis sent it nothing"
    );
    assert_eq!(ec.metrics().received, 1, "node 3 received only the barrier");
    assert_eq!(c.calls(), 1);
    assert_eq!(b.frames_of(bob).len(), 42);

    // Bob leaves node 2: nobody listens on his channel any more.
    b.close(bob);
    eb.flush().await.expect("flushed");
    assert_eq!(numsub(&redis, &keys.user_channel("bob")), "0");
    for engine in [ea, eb, ec] {
        engine.abort();
    }
}

#[tokio::test]
async fn namespaces_isolate_the_same_user_id() {
    let redis = RedisServer::start();
    let one = common::config(&redis.url()).with_namespace(common::namespace("one"));
    let two = common::config(&redis.url()).with_namespace(common::namespace("two"));
    let (sender_one, holder_one) = (common::engine(&one), common::engine(&one));
    let (sender_two, holder_two) = (common::engine(&two), common::engine(&two));
    // The same node ids and the same user in both namespaces.
    let s1 = RecordingNode::attach(1, sender_one.clone()).await;
    let h1 = RecordingNode::attach(2, holder_one.clone()).await;
    let s2 = RecordingNode::attach(1, sender_two.clone()).await;
    let h2 = RecordingNode::attach(2, holder_two.clone()).await;
    let bob_one = h1.open(Some("bob"));
    let bob_two = h2.open(Some("bob"));
    let _ = (&s1, &s2);
    for engine in [&sender_one, &holder_one, &sender_two, &holder_two] {
        engine.flush().await.expect("flushed");
    }
    send(&sender_one, 1, Target::users(["bob"]), "one-to-bob").await;
    send(&sender_one, 1, Target::all(), "one-to-all").await;
    let connection_in_one = bob_one;
    send(
        &sender_one,
        1,
        Target::connection(connection_in_one),
        "one-to-connection",
    )
    .await;
    h1.wait_for_frame(bob_one, "one-to-connection").await;
    // Redis orders what it processes: namespace two's barrier comes after everything namespace one sent.
    send(&sender_two, 1, Target::all(), "two-barrier").await;
    h2.wait_for_frame(bob_two, "two-barrier").await;
    assert_eq!(h2.frames_of(bob_two), ["two-barrier"]);
    assert_eq!(
        h1.frames_of(bob_one),
        ["one-to-bob", "one-to-all", "one-to-connection"]
    );
    let presence_one = sender_one.presence("bob").await.expect("presence");
    let presence_two = sender_two.presence("bob").await.expect("presence");
    assert_eq!(presence_one.nodes, vec![(NodeId(2), 1)]);
    assert_eq!(presence_two.nodes, vec![(NodeId(2), 1)]);
    h2.close(bob_two);
    holder_two.flush().await.expect("flushed");
    assert!(!sender_two
        .presence("bob")
        .await
        .expect("presence")
        .is_online());
    assert!(sender_one
        .presence("bob")
        .await
        .expect("presence")
        .is_online());
    for engine in [sender_one, holder_one, sender_two, holder_two] {
        engine.abort();
    }
}

#[tokio::test]
async fn two_gateways_over_one_redis_serve_real_clients_and_a_dispatcher() {
    let redis = RedisServer::start();
    let config = common::config(&redis.url()).with_namespace(common::namespace("gateways"));
    let engine_a = common::engine(&config);
    let engine_b = common::engine(&config);
    let a = start(
        echo_server()
            .node_id(NodeId(0xa))
            .engine(engine_a.clone() as Arc<dyn Engine>),
    )
    .await;
    let b = start(
        echo_server()
            .node_id(NodeId(0xb))
            .engine(engine_b.clone() as Arc<dyn Engine>),
    )
    .await;
    let mut ann = connect_as(&a, "ann").await;
    let mut bob = connect_as(&b, "bob").await;
    engine_b
        .flush()
        .await
        .expect("bob's subscription is confirmed");
    engine_a
        .flush()
        .await
        .expect("ann's subscription is confirmed");

    // A send made on node A reaches bob on node B; ann (on A) is not a recipient.
    let delivery = a
        .mesa
        .send_to(["bob"], &Frame::dispatch("HI", json!({"n": 1})))
        .await
        .expect("sent");
    assert_eq!((delivery.queued, delivery.nodes), (0, 1));
    let hi = recv(&mut bob).await;
    assert_eq!(
        (hi["t"].clone(), hi["d"].clone()),
        (json!("HI"), json!({"n": 1}))
    );

    // A broadcast from B: ann gets it through Redis, bob locally.
    b.mesa
        .send(&Frame::dispatch("ALL", json!({})), &Target::all())
        .await
        .expect("sent");
    assert_eq!(recv(&mut ann).await["t"], "ALL");
    assert_eq!(recv(&mut bob).await["t"], "ALL");

    let presence = a.mesa.presence("bob").await.expect("presence");
    assert_eq!(presence.nodes, vec![(NodeId(0xb), 1)]);

    // A service that is no gateway.
    let dispatcher = Dispatcher::connect(config.clone()).expect("valid");
    let delivery = dispatcher
        .send(
            &Frame::dispatch("NOTICE", json!({"text": "from a service"})),
            &Target::users(["bob"]),
        )
        .await
        .expect("dispatched");
    assert_eq!(delivery.nodes, 1);
    let notice = recv(&mut bob).await;
    assert_eq!(notice["t"], "NOTICE");
    assert_eq!(notice["d"]["text"], "from a service");
    expect_silence(&mut ann, Duration::from_millis(100)).await;

    dispatcher
        .disconnect(&Target::users(["bob"]), 4000, "kicked")
        .await
        .expect("dispatched");
    assert_eq!(
        expect_close(&mut bob).await.code_reason(),
        (4000, "kicked".into())
    );

    a.stop().await;
    b.stop().await;
    // Both nodes said goodbye at shutdown (asked through a fresh engine attached to no node: the stopped
    // nodes' engines are closed).
    let observer = common::engine(&config);
    assert_eq!(observer.nodes().await.expect("nodes"), vec![]);
    assert!(!observer
        .presence("ann")
        .await
        .expect("presence")
        .is_online());
    observer.abort();
}
