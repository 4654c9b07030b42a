//! Faults, against real processes: a node that dies without a goodbye, Redis killed and restarted on the
//! same port, Redis absent at start, and a master found through a real `redis-sentinel`.

mod common;

use std::time::{Duration, Instant};

use mesa_engine::conformance::RecordingNode;
use mesa_engine::{EncodedFrame, Engine, EngineError, NodeId, Publication, Target};
use mesa_testkit::redis::{RedisSentinel, RedisServer};

fn send(origin: u64, target: Target, text: &str) -> Publication {
    Publication::send(
        Some(NodeId(origin)),
        target,
        EncodedFrame::from(text.to_owned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_without_goodbye_leaves_presence_within_its_ttl() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(1500);
    let config = common::config(&redis.url())
        .with_namespace(common::namespace("dead"))
        .with_node_ttl(ttl);
    let (survivor, doomed) = (common::engine(&config), common::engine(&config));
    let a = RecordingNode::attach(1, survivor.clone()).await;
    let b = RecordingNode::attach(2, doomed.clone()).await;
    // Bob has a device on each node; ann only on node 2.
    let _bob_phone = a.open(Some("bob"));
    let _bob_laptop = b.open(Some("bob"));
    let _ann = b.open(Some("ann"));
    survivor.flush().await.expect("flushed");
    doomed.flush().await.expect("flushed");
    let keys = survivor.keys().clone();
    let node2 = NodeId(2).to_string();
    assert!(redis
        .cli(&["hgetall", &keys.presence("bob")])
        .contains(&node2));
    assert_eq!(
        survivor.presence("bob").await.expect("presence").nodes,
        vec![(NodeId(1), 1), (NodeId(2), 1)]
    );

    // Node 2 stops at once: its tasks and connections are gone, nothing was removed.
    doomed.abort();
    let killed = Instant::now();
    common::eventually("node 2's entries to be removed", ttl * 3, || async {
        redis
            .cli(&["hget", &keys.presence("bob"), &node2])
            .is_empty()
            && redis.cli(&["exists", &keys.presence("ann")]) == "0"
            && redis.cli(&["exists", &keys.node_users(NodeId(2))]) == "0"
            && redis.cli(&["zscore", &keys.nodes(), &node2]).is_empty()
    })
    .await;
    let took = killed.elapsed();
    // Its last heartbeat was at most ttl/3 before the kill; another node looks every ttl/2.
    assert!(
        took <= ttl + ttl / 2 + Duration::from_millis(500),
        "removed after {took:?}"
    );
    assert_eq!(survivor.metrics().dead_nodes_removed, 1);
    // Bob's other device keeps him online; ann is gone.
    assert_eq!(
        survivor.presence("bob").await.expect("presence").nodes,
        vec![(NodeId(1), 1)]
    );
    assert!(!survivor
        .presence("ann")
        .await
        .expect("presence")
        .is_online());
    let nodes: Vec<NodeId> = survivor
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, vec![NodeId(1)]);
    survivor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_test_degrades_then_engines_recover_by_themselves() {
    let mut redis = RedisServer::start();
    let config = common::config(&redis.url()).with_namespace(common::namespace("restart"));
    let (ea, eb) = (common::engine(&config), common::engine(&config));
    let a = RecordingNode::attach(1, ea.clone()).await;
    let b = RecordingNode::attach(2, eb.clone()).await;
    let ann = a.open(Some("ann"));
    let bob = b.open(Some("bob"));
    ea.flush().await.expect("flushed");
    eb.flush().await.expect("flushed");
    ea.publish(send(1, Target::users(["bob"]), "before"))
        .await
        .expect("published");
    b.wait_for_frame(bob, "before").await;

    redis.kill();
    common::eventually("both engines degraded", Duration::from_secs(5), || async {
        !ea.health().is_healthy() && !eb.health().is_healthy()
    })
    .await;
    assert!(ea.metrics().degraded);
    // During the outage: the local session is still served, the send fails at once, never hangs.
    let started = Instant::now();
    let error = ea
        .publish(send(1, Target::all(), "during"))
        .await
        .expect_err("Redis is down");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error.cause, EngineError::Unavailable(_)),
        "{error:?}"
    );
    assert_eq!(error.local.queued, 1, "ann, on the origin, got it");
    assert_eq!(a.frames_of(ann), ["during"]);
    assert!(matches!(
        ea.presence("bob").await,
        Err(EngineError::Unavailable(_))
    ));

    // Back, empty, on the same port.
    redis.restart();
    common::eventually("both engines healthy", Duration::from_secs(10), || async {
        ea.health().is_healthy() && eb.health().is_healthy()
    })
    .await;
    // Presence was rebuilt by each node from its own sessions.
    common::eventually("presence rebuilt", Duration::from_secs(5), || async {
        ea.presence("bob")
            .await
            .is_ok_and(|p| p.nodes == vec![(NodeId(2), 1)])
    })
    .await;
    // Resubscribed: a cross-node send arrives again.
    ea.publish(send(1, Target::users(["bob"]), "after"))
        .await
        .expect("published");
    b.wait_for_frame(bob, "after").await;
    for engine in [&ea, &eb] {
        let metrics = engine.metrics();
        assert!(metrics.reconnects >= 1, "{metrics:?}");
        assert!(metrics.resubscribes >= 2, "{metrics:?}");
        assert!(!metrics.degraded);
    }
    ea.abort();
    eb.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_while_redis_is_down_starts_degraded_and_connects_later() {
    let mut redis = RedisServer::start();
    let config = common::config(&redis.url()).with_namespace(common::namespace("late"));
    redis.kill();
    let engine = common::engine(&config);
    let node = RecordingNode::attach(1, engine.clone()).await;
    let _ann = node.open(Some("ann"));
    assert!(!engine.health().is_healthy());
    // Before any connection a send waits for one, within the publish timeout.
    let started = Instant::now();
    let error = engine
        .publish(send(1, Target::all(), "x"))
        .await
        .expect_err("no Redis yet");
    assert!(matches!(error.cause, EngineError::Unavailable(_)));
    assert!(started.elapsed() < config.publish_timeout + Duration::from_secs(1));
    redis.restart();
    common::eventually("healthy", Duration::from_secs(10), || async {
        engine.health().is_healthy()
    })
    .await;
    engine.flush().await.expect("flushed");
    assert_eq!(
        engine.presence("ann").await.expect("presence").nodes,
        vec![(NodeId(1), 1)]
    );
    engine.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_find_the_master_through_sentinel() {
    let master = RedisServer::start();
    let sentinel = RedisSentinel::start(&master, "mymaster");
    let config = common::config(&sentinel.url()).with_namespace(common::namespace("sentinel"));
    let (ea, eb) = (common::engine(&config), common::engine(&config));
    let _a = RecordingNode::attach(1, ea.clone()).await;
    let b = RecordingNode::attach(2, eb.clone()).await;
    let bob = b.open(Some("bob"));
    ea.flush().await.expect("flushed");
    eb.flush().await.expect("flushed");
    ea.publish(send(1, Target::users(["bob"]), "via-sentinel"))
        .await
        .expect("published");
    b.wait_for_frame(bob, "via-sentinel").await;
    assert!(ea.health().is_healthy() && eb.health().is_healthy());
    // The keys are on the master the Sentinel named.
    assert!(master
        .cli(&["hgetall", &ea.keys().presence("bob")])
        .contains(&NodeId(2).to_string()));
    ea.abort();
    eb.abort();
}
