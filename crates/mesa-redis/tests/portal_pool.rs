//! Portal fire-and-forget mode (Mesa 1.5's) against a real redis-server: round robin over live workers, and
//! an error, not a silent drop, when no worker is live.

use std::time::Duration;

use mesa_engine::{ConnectionId, NodeId};
use mesa_protocol::Frame;
use mesa_redis::portal::{
    PortalConfig, PortalError, PortalEvent, PortalEventKind, PortalMode, PortalSender, PortalWorker,
};
use mesa_testkit::redis::RedisServer;
use serde_json::json;

fn event(n: u64) -> PortalEvent {
    let node = NodeId(9);
    PortalEvent::new(
        PortalEventKind::Message(Frame::dispatch("N", json!({ "n": n }))),
        node,
        ConnectionId::new(node, 1),
    )
    .with_user("alice")
}

async fn next_n(worker: &mut PortalWorker) -> u64 {
    let delivery = tokio::time::timeout(Duration::from_secs(5), worker.next())
        .await
        .expect("an event within 5 s")
        .expect("next");
    assert_eq!(delivery.entry_id(), None);
    match &delivery.event().kind {
        PortalEventKind::Message(frame) => frame.d["n"].as_u64().expect("n"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn events_reach_live_workers_round_robin_and_are_refused_without_one() {
    let server = RedisServer::start();
    let config = PortalConfig::new(server.url(), PortalMode::FireAndForget).namespace("t");

    let lonely = PortalSender::connect(&config).await.expect("sender");
    let refused = lonely.hand(&event(0)).await;
    assert!(
        matches!(refused, Err(PortalError::NoWorker { .. })),
        "{refused:?}"
    );
    assert_eq!(lonely.refused(), 1);

    let mut w1 = PortalWorker::join(&config, "w1").await.expect("join w1");
    let mut w2 = PortalWorker::join(&config, "w2").await.expect("join w2");
    assert_eq!(
        server
            .cli(&["SMEMBERS", "available_portals_pool_t"])
            .lines()
            .count(),
        2
    );

    // Turns go over the sorted ids: w1, w2, w1, …
    let sender = PortalSender::connect(&config).await.expect("sender");
    for n in 0..10 {
        sender.hand(&event(n)).await.expect("hand");
    }
    for n in (0..10).step_by(2) {
        assert_eq!(next_n(&mut w1).await, n);
        assert_eq!(next_n(&mut w2).await, n + 1);
    }

    // w2 leaves: everything goes to w1, and w1's next events are exactly these (nothing else came to it).
    w2.leave().await.expect("leave");
    for n in 10..13 {
        sender.hand(&event(n)).await.expect("hand");
    }
    for n in 10..13 {
        assert_eq!(next_n(&mut w1).await, n);
    }

    // A dropped worker leaves too; then nobody is live.
    drop(w1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.cli(&["SCARD", "available_portals_pool_t"]) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped worker left the pool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        sender.hand(&event(13)).await,
        Err(PortalError::NoWorker { .. })
    ));

    // An id left in the pool by a worker that died without leaving: nobody hears it, refused too.
    server.cli(&["SADD", "available_portals_pool_t", "ghost"]);
    assert!(matches!(
        sender.hand(&event(14)).await,
        Err(PortalError::NoWorker { .. })
    ));
    assert_eq!(sender.refused(), 2);
}
