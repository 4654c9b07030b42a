//! `[portal]`: a real `mesa serve` hands its clients' events to Portal workers on a real `redis-server`
//! (cargo feature `redis`): a Rust `PortalWorker` over the at-least-once stream, and a real Mesa 1.5.8
//! `Portal` (`compat/node-portal`) in fire-and-forget mode; with Redis gone, a dispatch is answered with the
//! proxy's error frame and counted.
#![cfg(feature = "redis")]

mod common;
#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use node_harness::NodeScript;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use mesa_redis::portal::{PortalConfig, PortalEventKind, PortalMode, PortalWorker, StreamOptions};
use mesa_testkit::redis::RedisServer;
use serde_json::{json, Value};

const CLIENTS: usize = 5;
const DISPATCHES: usize = 200;
/// How long the worker may take to receive everything before the test fails.
const RECEIVE: Duration = Duration::from_secs(20);

/// `mesa serve` with `[portal]` from the environment, once it says Portal is connected.
fn serve(env: &[(&str, &str)]) -> MesaProcess {
    let mut all = vec![("MESA_PORTAL__ENABLED", "true")];
    all.extend_from_slice(env);
    let mesa = MesaProcess::start(&[], &all);
    mesa.wait_for_log("portal: connected to Redis");
    mesa
}

async fn client(mesa: &MesaProcess, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({ "id": id })).await;
    ws
}

/// One delivery as the worker saw it: kind, the message's `n`, user id, entry id.
type Seen = (String, Option<u64>, Option<String>, String);

/// A stream entry id (`<ms>-<seq>`) as a pair that orders as Redis orders them.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("an entry id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

#[tokio::test]
async fn at_least_once_a_worker_gets_every_event_of_every_client_in_order() {
    let redis = RedisServer::start();
    let mesa = serve(&[
        ("MESA_PORTAL__MODE", "at_least_once"),
        ("MESA_PORTAL__REDIS_URL", &redis.url()),
        ("MESA_PORTAL__NAMESPACE", "serve"),
        // 200 dispatches at once are more than the default burst of inbound frames.
        ("MESA_SERVER__LIMITS__RATE_LIMIT__BURST", "0"),
    ]);
    let config = PortalConfig::new(
        redis.url(),
        PortalMode::AtLeastOnce(StreamOptions::default()),
    )
    .namespace("serve");
    let mut worker = PortalWorker::join(&config, "worker-1")
        .await
        .expect("worker");

    let sent: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = mesa.ws_url("/");
            tokio::spawn(async move {
                let (mut ws, _) = connect_hello(&url).await;
                authenticate(&mut ws, json!({ "id": format!("user{c}") })).await;
                for n in 0..DISPATCHES {
                    send(
                        &mut ws,
                        json!({"op": 0, "t": "SAY", "d": {"client": c, "n": n}}),
                    )
                    .await;
                }
                // A barrier: the gateway answers a heartbeat (op 1) only after it handled every dispatch before it.
                send(&mut ws, json!({"op": 1, "d": {}})).await;
                let ack = recv(&mut ws).await;
                assert_eq!(ack["op"], 11, "expected the heartbeat ACK, got {ack}");
                ws.close(None).await.expect("close");
            })
        })
        .collect();
    for task in sent {
        task.await.expect("client task");
    }

    // Per connection: the kinds in the order received, the `n`s of its messages, its users, entry ids.
    let mut seen: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let expected = CLIENTS * (DISPATCHES + 3);
    let deadline = Instant::now() + RECEIVE;
    let mut received = 0;
    while received < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, worker.next())
            .await
            .unwrap_or_else(|_| panic!("only {received} of {expected} events arrived"))
            .expect("next");
        assert!(!delivery.redelivered(), "{delivery:?}");
        let event = delivery.event().clone();
        let entry = delivery.entry_id().expect("an entry id").to_owned();
        let n = match &event.kind {
            PortalEventKind::Message(frame) => {
                assert_eq!(frame.t.as_deref(), Some("SAY"));
                frame.d["n"].as_u64()
            }
            _ => None,
        };
        let connection = event.connection.expect("a connection id").to_string();
        seen.entry(connection).or_default().push((
            event.kind.name().to_owned(),
            n,
            event.user_id.clone(),
            entry,
        ));
        delivery.ack().await.expect("ack");
        received += 1;
    }

    assert_eq!(seen.len(), CLIENTS, "one connection per client");
    let mut users = Vec::new();
    for (connection, events) in &seen {
        let kinds: Vec<&str> = events.iter().map(|(kind, ..)| kind.as_str()).collect();
        let mut want = vec!["connection", "authentication"];
        want.extend(std::iter::repeat_n("message", DISPATCHES));
        want.push("disconnection");
        assert_eq!(kinds, want, "{connection}");
        let ns: Vec<u64> = events.iter().filter_map(|(_, n, ..)| *n).collect();
        assert_eq!(
            ns,
            (0..DISPATCHES as u64).collect::<Vec<_>>(),
            "{connection}: in order"
        );
        // No user before authentication, the same one after.
        assert_eq!(events[0].2, None);
        let user = events[1].2.clone().expect("authenticated");
        assert!(events[1..]
            .iter()
            .all(|(_, _, u, _)| u.as_deref() == Some(&user)));
        users.push(user);
        // The stream holds one client's events in the order they were handed.
        let ids: Vec<(u64, u64)> = events.iter().map(|(.., id)| entry_order(id)).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{connection}: entry ids increase"
        );
    }
    users.sort();
    assert_eq!(
        users,
        (0..CLIENTS).map(|c| format!("user{c}")).collect::<Vec<_>>()
    );
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "mesa_portal_handed_total{{event=\"message\"}} {}\n",
            CLIENTS * DISPATCHES
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_redis_gone_a_dispatch_is_answered_with_the_proxy_error_and_counted() {
    let mut redis = RedisServer::start();
    let mesa = serve(&[
        ("MESA_PORTAL__REDIS_URL", &redis.url()),
        ("MESA_PORTAL__TIMEOUT_MS", "500"),
        ("MESA_PORTAL__MESSAGE_TYPES", r#"["SAY"]"#),
    ]);
    let mut ws = client(&mesa, "alice").await;
    // Handed while Redis runs: nothing comes back (the heartbeat ACK is the barrier).
    send(&mut ws, json!({"op": 0, "t": "SAY", "d": {"n": 1}})).await;
    send(&mut ws, json!({"op": 1, "d": {}})).await;
    assert_eq!(recv(&mut ws).await["op"], 11);
    // A type message_types does not list is answered no_route at once.
    send(&mut ws, json!({"op": 0, "t": "OTHER", "d": {}})).await;
    let frame = recv(&mut ws).await;
    assert_eq!(frame["t"], "PROXY_ERROR", "{frame}");
    assert_eq!(frame["d"]["code"], "no_route", "{frame}");

    redis.kill();
    send(&mut ws, json!({"op": 0, "t": "SAY", "d": {"n": 2}})).await;
    let frame = recv(&mut ws).await;
    assert_eq!(frame["t"], "PROXY_ERROR", "{frame}");
    assert_eq!(
        frame["d"],
        json!({"code": "unavailable", "reason": "the application is unavailable", "event": "dispatch", "t": "SAY"})
    );
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    assert!(
        metrics.contains("mesa_portal_refused_total{reason=\"unavailable\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesa_portal_handed_total{event=\"message\"} 1\n"),
        "{metrics}"
    );
    mesa.wait_for_log("portal: event refused");
}

#[tokio::test]
async fn fire_and_forget_a_mesa_1_5_portal_receives_a_clients_events() {
    let redis = RedisServer::start();
    let mut portal = NodeScript::spawn("node-portal", "portal.js", &[&redis.url(), "compat", "4"]);
    let ready = portal.line().await;
    assert!(ready.starts_with("PORTAL_READY "), "{ready}");
    // In the pool is not yet subscribed: wait for its subscription, or the first event reaches nobody.
    redis.wait_for_subscribers("portal_compat", 1);

    let mesa = serve(&[
        ("MESA_PORTAL__MODE", "fire_and_forget"),
        ("MESA_PORTAL__REDIS_URL", &redis.url()),
        ("MESA_PORTAL__NAMESPACE", "compat"),
    ]);
    let mut ws = client(&mesa, "alice").await;
    send(&mut ws, json!({"op": 0, "t": "SAY", "d": {"text": "hi"}})).await;
    send(&mut ws, json!({"op": 1, "d": {}})).await;
    assert_eq!(
        recv(&mut ws).await["op"],
        11,
        "no PROXY_ERROR: a worker took it"
    );
    ws.close(None).await.expect("close");

    let mut events = Vec::new();
    for _ in 0..4 {
        let text = portal.line().await;
        events.push(serde_json::from_str::<Value>(&text).expect("a JSON line"));
    }
    assert_eq!(
        events,
        [
            json!({"type": "connection", "clientId": null}),
            json!({"type": "authentication", "clientId": "alice"}),
            json!({"type": "message", "clientId": "alice", "message": {"op": 0, "d": {"text": "hi"}, "t": "SAY"}}),
            json!({"type": "disconnection", "clientId": "alice"}),
        ]
    );
    let status = portal.wait().await;
    assert!(status.success(), "{status}");
}

#[test]
fn bad_portal_settings_exit_2_naming_the_key() {
    let url = "redis://127.0.0.1:1";
    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[("MESA_PORTAL__MAX_LEN", "10")],
            "portal.max_len is set but portal.enabled is false",
        ),
        (
            &[("MESA_PORTAL__ENABLED", "true")],
            "portal.redis_url: required",
        ),
        (
            &[
                ("MESA_PORTAL__ENABLED", "true"),
                ("MESA_PORTAL__REDIS_URL", url),
                ("MESA_PORTAL__MODE", "sometimes"),
            ],
            "portal.mode",
        ),
        (
            &[
                ("MESA_PORTAL__ENABLED", "true"),
                ("MESA_PORTAL__REDIS_URL", url),
                ("MESA_PORTAL__MODE", "fire_and_forget"),
                ("MESA_PORTAL__MAX_LEN", "10"),
            ],
            "portal.max_len is only used with portal.mode = \"at_least_once\"",
        ),
        (
            &[
                ("MESA_PORTAL__ENABLED", "true"),
                ("MESA_PORTAL__REDIS_URL", url),
                ("MESA_PROXY__URL", "http://127.0.0.1:1/"),
            ],
            "[proxy] are both set",
        ),
        (
            &[
                ("MESA_PORTAL__ENABLED", "true"),
                ("MESA_PORTAL__REDIS_URL", url),
                ("MESA_PORTAL__EVENTS", "[]"),
            ],
            "portal.events: empty",
        ),
        (
            &[
                ("MESA_PORTAL__ENABLED", "true"),
                ("MESA_CLUSTER__REDIS_URL", "redis+cluster://127.0.0.1:1"),
            ],
            "cluster.redis_url (used by [portal]): portal: Redis Cluster",
        ),
    ];
    for (env, needle) in cases {
        let (status, stderr) = run_to_exit(&[], env);
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        // figment names a key from the environment in capitals (`PORTAL.MODE`).
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{env:?}: {stderr}"
        );
    }
    let (status, stderr) = run_to_exit(
        &["--demo"],
        &[
            ("MESA_PORTAL__ENABLED", "true"),
            ("MESA_PORTAL__REDIS_URL", url),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("demo"), "{stderr}");
}

/// The example's commented `[portal]` keys, uncommented with `enabled = true`, are all real: the only
/// complaint is the Cluster URL put in for the test (an unknown key or a bad value would be named first).
#[test]
fn the_example_portal_section_names_real_keys() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mesa.example.toml"))
            .expect("read the example");
    let (before, rest) = example
        .split_once("[portal]\n")
        .expect("a [portal] section");
    let (section, after) = rest
        .split_once("\n# [cluster]")
        .expect("[cluster] after it");
    let mut text = format!("{before}[portal]\n");
    for line in section.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        let is_key = line
            .split_once(" = ")
            .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        if is_key {
            let line = if line.starts_with("enabled") {
                "enabled = true".to_owned()
            } else if line.starts_with("redis_url") {
                "redis_url = \"redis+cluster://127.0.0.1:1\"".to_owned()
            } else {
                line.to_owned()
            };
            text.push_str(&line);
            text.push('\n');
        }
    }
    text.push_str("\n# [cluster]");
    text.push_str(after);
    assert!(text.matches("\nmax_len = ").count() == 1, "{text}");
    let file = temp_file("example-portal.toml", &text);
    let (status, stderr) = run_to_exit(&["--config", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("portal.redis_url (used by [portal]): portal: Redis Cluster"),
        "{stderr}"
    );
}
