//! Three real `mesa serve` processes on one real `redis-server` (cargo feature `redis`), as the README's
//! "Three nodes" runs them: `/api/nodes` lists all three, presence names the node a user is on, `POST
//! /api/send` and `mesa dispatch` reach clients of every node.
#![cfg(feature = "redis")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mesa_testkit::redis::RedisServer;
use serde_json::{json, Value};

const KEY: &str = "cluster-nodes-test-key";
/// How long the cluster has to settle (nodes registered, subscriptions made) before a test fails.
const SETTLE: Duration = Duration::from_secs(10);
/// How long one attempt waits for a frame on another node.
const ATTEMPT: Duration = Duration::from_millis(250);

fn node(redis: &RedisServer) -> MesaProcess {
    MesaProcess::start(
        &[],
        &[
            ("MESA_CLUSTER__REDIS_URL", redis.url().as_str()),
            ("MESA_API__KEY", KEY),
        ],
    )
}

async fn get_json(mesa: &MesaProcess, path: &str) -> (u16, Value) {
    let response = http()
        .get(mesa.http_url(path))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Polls `path` on `mesa` until `done` accepts the answer, at most [`SETTLE`].
async fn wait_for(mesa: &MesaProcess, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, answer) = get_json(mesa, path).await;
        if status == 200 && done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path} still answers {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(mesa: &MesaProcess, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({ "id": id })).await;
    ws
}

/// Runs `attempt(n)` until `ws` receives a dispatch of type `t` with `d.n == n`, at most [`SETTLE`]:
/// subscriptions are made in the background, so the first sends may find no node subscribed yet.
async fn until_received(ws: &mut Ws, t: &str, mut attempt: impl FnMut(usize)) {
    let deadline = Instant::now() + SETTLE;
    for n in 0.. {
        assert!(Instant::now() < deadline, "no {t} arrived");
        attempt(n);
        let until = tokio::time::Instant::now() + ATTEMPT;
        while let Ok(frame) = tokio::time::timeout_at(until, recv(ws)).await {
            if frame["t"] == t && frame["d"]["n"] == n {
                return;
            }
        }
    }
}

/// `mesa dispatch --redis-url <redis> <args>`: exit status and stdout.
fn dispatch(redis: &RedisServer, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesa"))
        .arg("dispatch")
        .args(["--redis-url", &redis.url()])
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run mesa dispatch");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn three_nodes_share_presence_sends_and_dispatches() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    wait_for(&nodes[0], "/api/nodes", |a| {
        a["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await;

    let mut alice = client(&nodes[0], "alice").await;
    let mut bob = client(&nodes[1], "bob").await;
    let mut carol = client(&nodes[2], "carol").await;

    // Presence asked on node 1 names node 2, the only node with bob (node 2 knows its own id).
    let here = wait_for(&nodes[1], "/api/presence/bob", |a| a["online"] == true).await;
    let bobs_node = here["nodes"][0]["node"].clone();
    let there = wait_for(&nodes[0], "/api/presence/bob", |a| a["online"] == true).await;
    assert_eq!(
        there,
        json!({"user": "bob", "online": true, "sessions": 1, "nodes": [{"node": bobs_node, "sessions": 1}]})
    );

    // POST /api/send on node 1 reaches bob on node 2 and carol on node 3.
    for (ws, t) in [(&mut bob, "FOR_BOB"), (&mut carol, "FOR_CAROL")] {
        let user = if t == "FOR_BOB" { "bob" } else { "carol" };
        let base = nodes[0].http_url("/api/send");
        until_received(ws, t, |n| {
            let body = json!({"message": {"op": 0, "t": t, "d": {"n": n}}, "recipients": [user]});
            let base = base.clone();
            tokio::spawn(async move {
                let _ = http().post(base).bearer_auth(KEY).json(&body).send().await;
            });
        })
        .await;
    }

    // mesa dispatch reaches alice on node 1, then everyone.
    until_received(&mut alice, "DISPATCHED", |n| {
        let data = json!({ "n": n }).to_string();
        let (code, stdout) = dispatch(
            &redis,
            &["--to", "alice", "--event", "DISPATCHED", "--data", &data],
        );
        assert_eq!(code, Some(0), "{stdout}");
    })
    .await;
    let data = json!({ "n": 0 }).to_string();
    let (code, stdout) = dispatch(&redis, &["--all", "--event", "EVERYONE", "--data", &data]);
    assert_eq!(code, Some(0), "{stdout}");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("JSON on stdout");
    assert_eq!(answer["nodes"], 3, "{answer}");
    for ws in [&mut alice, &mut bob, &mut carol] {
        loop {
            let frame = recv(ws).await;
            if frame["t"] == "EVERYONE" {
                break;
            }
        }
    }

    let (code, stdout) = dispatch(
        &redis,
        &[
            "--to",
            "carol",
            "--disconnect",
            "--code",
            "4000",
            "--reason",
            "bye",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    let close = expect_close(&mut carol).await;
    assert_eq!(close.code_reason(), (4000, "bye".to_string()));
}

/// Posts `count` numbered `t` dispatches to `user` through node `via`, one after the other, each accepted (202).
async fn post_numbered(via: &MesaProcess, user: &str, t: &str, count: usize) {
    for n in 0..count {
        let body = json!({"message": {"op": 0, "t": t, "d": {"n": n}}, "recipients": [user]});
        let response = http()
            .post(via.http_url("/api/send"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("POST /api/send");
        assert_eq!(response.status().as_u16(), 202, "send {n} of {count}");
    }
}

/// Reads `t` dispatches from `ws` until `count` arrived: every one exactly once and in order (other types
/// are skipped).
async fn expect_numbered(ws: &mut Ws, t: &str, count: usize) {
    let mut next = 0;
    while next < count {
        let frame = recv(ws).await;
        if frame["t"] != t {
            continue;
        }
        assert_eq!(
            frame["d"]["n"], next,
            "{t}: expected {next} of {count} in order, got {frame}"
        );
        next += 1;
    }
}

async fn health(mesa: &MesaProcess) -> Value {
    let response = http()
        .get(mesa.http_url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(
        response.status().as_u16(),
        200,
        "a degraded node stays in rotation"
    );
    response.json().await.expect("JSON")
}

async fn wait_for_health(mesa: &MesaProcess, status: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let answer = health(mesa).await;
        if answer["status"] == status {
            return answer;
        }
        assert!(Instant::now() < deadline, "/healthz still answers {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis killed mid-test: `/healthz` says degraded with the reason, a cross-node send is refused with 503
/// (never dropped silently): a durable one whole, a volatile one after local clients were served, and once Redis is back the nodes recover by
/// themselves: healthy, presence rebuilt, and numbered sends across nodes arrive every one, once, in order.
#[tokio::test]
async fn a_redis_outage_shows_on_healthz_and_the_cluster_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis)];
    wait_for(&nodes[0], "/api/nodes", |a| {
        a["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    let mut bob = client(&nodes[1], "bob").await;
    let mut ann = client(&nodes[0], "ann").await;
    let base = nodes[0].http_url("/api/send");
    until_received(&mut bob, "SETTLE", |n| {
        let body =
            json!({"message": {"op": 0, "t": "SETTLE", "d": {"n": n}}, "recipients": ["bob"]});
        let base = base.clone();
        tokio::spawn(async move {
            let _ = http().post(base).bearer_auth(KEY).json(&body).send().await;
        });
    })
    .await;
    post_numbered(&nodes[0], "bob", "BEFORE", 200).await;
    expect_numbered(&mut bob, "BEFORE", 200).await;

    redis.kill();
    let degraded = wait_for_health(&nodes[0], "degraded").await;
    assert!(
        degraded["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{degraded}"
    );
    // A durable send to users is stored in the users' streams first: with Redis down it is refused whole
    // (nothing queued, so the caller's retry delivers it once).
    let refused = http()
        .post(nodes[0].http_url("/api/send"))
        .bearer_auth(KEY)
        .json(&json!({"message": {"op": 0, "t": "DURABLE", "d": {}}, "recipients": ["ann", "bob"]}))
        .send()
        .await
        .expect("POST /api/send");
    assert_eq!(refused.status().as_u16(), 503);
    let answer: Value = refused.json().await.expect("JSON");
    assert_eq!(answer["queued"], 0, "nothing half-delivered: {answer}");
    // A volatile one (Mesa 1.5's `o.sync: false`) is live only: ann, on the node itself, is served.
    let refused = http()
        .post(nodes[0].http_url("/api/send"))
        .bearer_auth(KEY)
        .json(&json!({"message": {"op": 0, "t": "DURING", "d": {}, "o": {"sync": false}}, "recipients": ["ann", "bob"]}))
        .send()
        .await
        .expect("POST /api/send");
    assert_eq!(refused.status().as_u16(), 503);
    let answer: Value = refused.json().await.expect("JSON");
    assert_eq!(
        answer["queued"], 1,
        "ann, on the node itself, was served: {answer}"
    );
    assert_eq!(
        recv(&mut ann).await["t"],
        "DURING",
        "and not the refused durable send"
    );

    redis.restart();
    for mesa in &nodes {
        wait_for_health(mesa, "ok").await;
    }
    wait_for(&nodes[0], "/api/nodes", |a| {
        a["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    wait_for(&nodes[0], "/api/presence/bob", |a| a["online"] == true).await;
    // Subscriptions are restored in the background; once one send arrived, none may be lost.
    until_received(&mut bob, "RESETTLE", |n| {
        let body =
            json!({"message": {"op": 0, "t": "RESETTLE", "d": {"n": n}}, "recipients": ["bob"]});
        let base = base.clone();
        tokio::spawn(async move {
            let _ = http().post(base).bearer_auth(KEY).json(&body).send().await;
        });
    })
    .await;
    post_numbered(&nodes[0], "bob", "AFTER", 200).await;
    expect_numbered(&mut bob, "AFTER", 200).await;
}
