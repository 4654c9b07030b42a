//! Two `mesa-conformance` nodes on one real `redis-server` (cargo feature `redis`): `BROADCAST` and `SEND_TO`
//! made on one node reach clients of the other.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::*;
use mesa_testkit::redis::RedisServer;
use serde_json::{json, Value};

/// How long one attempt waits for the frame on the other node.
const ATTEMPT: Duration = Duration::from_millis(250);
/// Attempts before the test fails: a node subscribes in the background after a client authenticates, so the
/// first sends may find nobody subscribed yet.
const ATTEMPTS: usize = 40;

/// Sends `frame(n)` from `from` until `to` receives a frame `matches` accepts (or the attempts run out);
/// frames of earlier attempts that arrive late are skipped by number.
async fn until_received(
    from: &mut Ws,
    to: &mut Ws,
    frame: impl Fn(usize) -> Value,
    matches: impl Fn(&Value, usize) -> bool,
) {
    for n in 0..ATTEMPTS {
        send(from, frame(n)).await;
        let deadline = tokio::time::Instant::now() + ATTEMPT;
        while let Ok(received) = tokio::time::timeout_at(deadline, recv(to)).await {
            if matches(&received, n) {
                return;
            }
        }
    }
    panic!("nothing reached the other node in {ATTEMPTS} attempts");
}

#[tokio::test]
async fn broadcast_and_send_to_reach_the_other_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Server::start_with(&[("REDIS_URL", url.as_str())], None);
    let b = Server::start_with(&[("REDIS_URL", url.as_str())], None);
    let mut alice = connect_as(&a, "alice").await;
    let mut bob = connect_as(&b, "bob").await;

    until_received(
        &mut alice,
        &mut bob,
        |n| json!({"op": 0, "t": "BROADCAST", "d": {"n": n}}),
        |frame, n| frame["t"] == "BROADCAST" && frame["d"]["n"] == n,
    )
    .await;
    until_received(
        &mut alice,
        &mut bob,
        |n| json!({"op": 0, "t": "SEND_TO", "d": {"to": ["bob"], "payload": {"n": n}}}),
        |frame, n| frame["t"] == "DIRECT" && frame["d"]["n"] == n,
    )
    .await;
    // Excluded on the other node too: bob's next DIRECT is the one after the excluded one.
    send(
        &mut alice,
        json!({"op": 0, "t": "SEND_TO", "d": {"to": ["bob"], "excluding": ["bob"], "payload": "no"}}),
    )
    .await;
    send(
        &mut alice,
        json!({"op": 0, "t": "SEND_TO", "d": {"to": ["bob"], "payload": "yes"}}),
    )
    .await;
    loop {
        let frame = recv(&mut bob).await;
        if frame["t"] == "DIRECT" && frame["d"].is_string() {
            assert_eq!(frame["d"], "yes", "the excluded send reached bob");
            break;
        }
    }
}
