//! Portal at-least-once mode against a real redis-server: nothing is lost when a worker dies mid-stream,
//! and one client's events keep their order in the stream and in each worker's first deliveries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesa_engine::{ConnectionId, NodeId};
use mesa_protocol::Frame;
use mesa_redis::portal::{
    PortalConfig, PortalEvent, PortalEventKind, PortalMode, PortalSender, PortalWorker,
    StreamOptions,
};
use mesa_testkit::redis::RedisServer;
use serde_json::json;
use tokio::sync::watch;

const CLIENTS: u64 = 20;
const PER_CLIENT: u64 = 100;
const TOTAL: usize = (CLIENTS * PER_CLIENT) as usize;

fn config(server: &RedisServer) -> PortalConfig {
    let options = StreamOptions {
        claim_idle: Duration::from_millis(400),
        claim_interval: Duration::from_millis(150),
        block: Duration::from_millis(100),
        batch: 16,
        ..StreamOptions::default()
    };
    PortalConfig::new(server.url(), PortalMode::AtLeastOnce(options)).namespace("test")
}

/// Client `client`'s `n`-th event: connection, authentication, messages numbered `n`, disconnection.
fn event(client: u64, n: u64) -> PortalEvent {
    let node = NodeId(1);
    let connection = ConnectionId::new(node, client + 1);
    let kind = match n {
        0 => PortalEventKind::Connection,
        1 => PortalEventKind::Authentication,
        n if n == PER_CLIENT - 1 => PortalEventKind::Disconnection {
            code: Some(1000),
            reason: None,
        },
        n => PortalEventKind::Message(Frame::dispatch("N", json!({ "n": n }))),
    };
    let event = PortalEvent::new(kind, node, connection);
    if n == 0 {
        event
    } else {
        event.with_user(format!("user{client}"))
    }
}

/// (client, n) of an event made by [`event`].
fn ident(event: &PortalEvent) -> (u64, u64) {
    let client = event
        .connection
        .expect("our events carry a connection")
        .seq()
        - 1;
    let n = match &event.kind {
        PortalEventKind::Connection => 0,
        PortalEventKind::Authentication => 1,
        PortalEventKind::Disconnection { .. } => PER_CLIENT - 1,
        PortalEventKind::Message(frame) => frame.d["n"].as_u64().expect("numbered"),
        other => panic!("unexpected {other:?}"),
    };
    (client, n)
}

fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("stream id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

#[derive(Debug, Clone)]
struct Handled {
    worker: &'static str,
    client: u64,
    n: u64,
    entry: String,
    redelivered: bool,
}

type Log = Arc<Mutex<Vec<Handled>>>;

async fn next(worker: &mut PortalWorker) -> mesa_redis::portal::PortalDelivery {
    tokio::time::timeout(Duration::from_secs(10), worker.next())
        .await
        .expect("a delivery within 10 s")
        .expect("next")
}

/// Handles (acknowledges, then records) deliveries until `acks` have been handled, if given; forever else.
async fn handle(worker: &mut PortalWorker, name: &'static str, log: &Log, acks: Option<usize>) {
    let mut done = 0;
    while acks.is_none_or(|acks| done < acks) {
        let delivery = next(worker).await;
        let (client, n) = ident(delivery.event());
        let record = Handled {
            worker: name,
            client,
            n,
            entry: delivery.entry_id().expect("an entry id").to_owned(),
            redelivered: delivery.redelivered(),
        };
        delivery.ack().await.expect("ack");
        log.lock().expect("log").push(record);
        done += 1;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing_and_client_order_holds() {
    let server = RedisServer::start();
    let config = config(&server);
    let sender = Arc::new(PortalSender::connect(&config).await.expect("sender"));
    let log: Log = Arc::default();
    let (killed_tx, killed) = watch::channel(false);
    let (a_busy_tx, mut a_busy) = watch::channel(false);

    // 20 clients, each handing its events in order; the second half after worker A has died.
    let mut senders = Vec::new();
    for client in 0..CLIENTS {
        let (sender, mut killed) = (sender.clone(), killed.clone());
        senders.push(tokio::spawn(async move {
            for n in 0..PER_CLIENT {
                if n == PER_CLIENT / 2 {
                    killed.wait_for(|k| *k).await.expect("killed signal");
                }
                sender.hand(&event(client, n)).await.expect("hand");
            }
        }));
    }

    // Worker A handles 150 events, then takes 5 more without acknowledging them and dies, holding them
    // and whatever it had read ahead.
    let mut a = PortalWorker::join(&config, "worker-a")
        .await
        .expect("join a");
    let a_log = log.clone();
    let a_task = tokio::spawn(async move {
        handle(&mut a, "a", &a_log, Some(100)).await;
        let _ = a_busy_tx.send(true);
        handle(&mut a, "a", &a_log, Some(50)).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(next(&mut a).await);
        }
        let held_ids: Vec<String> = held
            .iter()
            .map(|d| d.entry_id().expect("id").to_owned())
            .collect();
        drop(held);
        drop(a);
        let _ = killed_tx.send(true);
        held_ids
    });

    a_busy.wait_for(|b| *b).await.expect("a busy");
    let mut b = PortalWorker::join(&config, "worker-b")
        .await
        .expect("join b");
    let b_log = log.clone();
    let b_task = tokio::spawn(async move { handle(&mut b, "b", &b_log, None).await });

    let held_by_a = a_task.await.expect("worker a");
    for task in senders {
        task.await.expect("sender task");
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let handled = loop {
        let handled = log.lock().expect("log").clone();
        let distinct: HashSet<(u64, u64)> = handled.iter().map(|h| (h.client, h.n)).collect();
        if distinct.len() == TOTAL {
            break handled;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} events handled after 20 s",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    b_task.abort();

    // Every event at least once; what A held came back to B as redeliveries.
    let redelivered: HashSet<&str> = handled
        .iter()
        .filter(|h| h.redelivered)
        .map(|h| h.entry.as_str())
        .collect();
    for id in &held_by_a {
        assert!(
            redelivered.contains(id.as_str()),
            "{id} held by A was not redelivered"
        );
        assert!(handled.iter().any(|h| &h.entry == id && h.worker == "b"));
    }
    assert_eq!(
        server
            .cli(&["XPENDING", "mesa:{test}:portal:events", "mesa-portal"])
            .lines()
            .next(),
        Some("0"),
        "nothing left pending"
    );
    println!(
        "handled {} deliveries for {TOTAL} events ({} redelivered, {} by a)",
        handled.len(),
        redelivered.len(),
        handled.iter().filter(|h| h.worker == "a").count()
    );

    // Per client: stream order is the order handed (entry ids increase with n) ...
    let mut entry_of: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    for h in &handled {
        let order = entry_order(&h.entry);
        let previous = entry_of.insert((h.client, h.n), order);
        assert!(
            previous.is_none_or(|p| p == order),
            "one event, one entry id"
        );
    }
    for client in 0..CLIENTS {
        for n in 1..PER_CLIENT {
            assert!(
                entry_of[&(client, n - 1)] < entry_of[&(client, n)],
                "client {client} event {n}"
            );
        }
    }
    // ... and each worker's first deliveries of one client come in that order.
    for worker in ["a", "b"] {
        let mut last: HashMap<u64, u64> = HashMap::new();
        for h in handled
            .iter()
            .filter(|h| h.worker == worker && !h.redelivered)
        {
            if let Some(previous) = last.insert(h.client, h.n) {
                assert!(
                    previous < h.n,
                    "worker {worker}, client {}: {previous} then {}",
                    h.client,
                    h.n
                );
            }
        }
    }
}

#[tokio::test]
async fn events_wait_in_the_stream_until_a_worker_joins() {
    let server = RedisServer::start();
    let config = config(&server);
    let sender = PortalSender::connect(&config).await.expect("sender");
    for n in 0..10 {
        sender
            .hand(&event(0, n))
            .await
            .expect("hand with no worker");
    }
    let mut worker = PortalWorker::join(&config, "late").await.expect("join");
    for n in 0..10 {
        let delivery = next(&mut worker).await;
        assert_eq!(ident(delivery.event()), (0, n));
        assert!(!delivery.redelivered());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(sender.refused(), 0);
}

#[tokio::test]
async fn a_leaving_worker_hands_back_what_it_read_ahead_at_once() {
    let server = RedisServer::start();
    let mut config = config(&server);
    // Long enough that only the hand-back, not the idle time, can explain a prompt redelivery.
    if let PortalMode::AtLeastOnce(options) = &mut config.mode {
        options.claim_idle = Duration::from_secs(60);
    }
    let sender = PortalSender::connect(&config).await.expect("sender");
    for n in 0..5 {
        sender.hand(&event(0, n)).await.expect("hand");
    }
    let mut first = PortalWorker::join(&config, "first").await.expect("join");
    // Reads all five ahead, returns one.
    let taken = next(&mut first).await;
    assert_eq!(ident(taken.event()), (0, 0));
    taken.ack().await.expect("ack");
    first.leave().await.expect("leave");

    let mut second = PortalWorker::join(&config, "second").await.expect("join");
    for n in 1..5 {
        let delivery = next(&mut second).await;
        assert_eq!(ident(delivery.event()), (0, n));
        assert!(delivery.redelivered());
        delivery.ack().await.expect("ack");
    }
}

/// Portal takes the engine's URL forms: through a `redis+sentinel://` URL a sender and a worker of both modes
/// find the master and exchange events.
#[tokio::test]
async fn sender_and_worker_reach_the_master_through_sentinel() {
    let master = RedisServer::start();
    let sentinel = mesa_testkit::redis::RedisSentinel::start(&master, "portalmaster");
    let modes = [
        PortalMode::AtLeastOnce(StreamOptions::default()),
        PortalMode::FireAndForget,
    ];
    for mode in modes {
        let config = PortalConfig::new(sentinel.url(), mode.clone()).namespace("sentinel");
        config.validate().expect("a Sentinel URL is valid");
        let mut worker = PortalWorker::join(&config, "w").await.expect("worker");
        let sender = PortalSender::connect(&config).await.expect("sender");
        let sent = event(0, 2);
        sender.hand(&sent).await.expect("handed");
        let delivery = tokio::time::timeout(Duration::from_secs(5), worker.next())
            .await
            .expect("in time")
            .expect("next");
        assert_eq!(delivery.event(), &sent, "{mode:?}");
        delivery.ack().await.expect("ack");
        worker.leave().await.expect("leave");
    }
    // Through the Sentinel, the events are in the master itself.
    assert_eq!(master.cli(&["XLEN", "mesa:{sentinel}:portal:events"]), "1");
}

/// After a Sentinel failover the same sender hands to the new master: an error saying the old one is a
/// replica now (or gone) makes it ask the Sentinels again.
#[tokio::test]
async fn a_sender_follows_a_sentinel_failover() {
    let old = RedisServer::start();
    let new = RedisServer::start_with(&["--replicaof", "127.0.0.1", &old.port().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !new
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sentinel = mesa_testkit::redis::RedisSentinel::start(&old, "failover");
    let config = PortalConfig::new(
        sentinel.url(),
        PortalMode::AtLeastOnce(StreamOptions::default()),
    )
    .namespace("failover");
    let sender = PortalSender::connect(&config).await.expect("sender");
    sender
        .hand(&event(0, 2))
        .await
        .expect("handed to the old master");
    let key = "mesa:{failover}:portal:events";

    // The Sentinel must know the replica before it can promote it.
    loop {
        assert!(
            Instant::now() < deadline,
            "the Sentinel never saw the replica"
        );
        if sentinel.cli(&["SENTINEL", "FAILOVER", "failover"]) == "OK" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !sentinel
        .cli(&["SENTINEL", "get-master-addr-by-name", "failover"])
        .contains(&new.port().to_string())
    {
        assert!(Instant::now() < deadline, "the failover did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The Sentinel turns the old master into a replica within seconds; done here at once, as it would be.
    old.cli(&["REPLICAOF", "127.0.0.1", &new.port().to_string()]);
    // Hand until an event lands on the new master (the first fails: the old one is read-only now).
    let mut refused = 0;
    while new.cli(&["XLEN", key]) != "2" {
        assert!(
            Instant::now() < deadline,
            "nothing reached the new master ({refused} refused)"
        );
        if sender.hand(&event(0, 3)).await.is_err() {
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused >= 1,
        "the old master refused the first event (READONLY)"
    );
    assert!(new.cli(&["ROLE"]).starts_with("master"));
}
