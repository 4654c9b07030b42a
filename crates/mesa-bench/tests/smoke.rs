//! Smoke runs of every scenario against in-process servers: the thin baseline and a mesa-server app with the
//! conformance contract. Short (about a second each) and small; they prove the tools work, not how fast.

mod common;

use std::sync::Arc;

use clap::Parser;
use common::{run, start_mesa_server, u64_at};
use mesa_bench::args::{Cli, Command};
use mesa_bench::baseline::{self, Baseline};
use mesa_bench::scenario;
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn start_baseline() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("address"));
    tokio::spawn(baseline::serve(
        listener,
        Arc::new(Baseline::default()),
        std::future::pending(),
    ));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_fanout_against_the_baseline() {
    let url = start_baseline().await;
    let echo = run(&["echo", "--url", &url, "-c", "4", "-k", "2", "-d", "1s"]).await;
    assert!(u64_at(&echo, "round_trips") > 0);
    assert_eq!(u64_at(&echo, "connections.closed_by_server"), 0);

    let fanout = run(&[
        "fanout", "--url", &url, "-r", "20", "-s", "2", "-d", "1s", "--drain", "3s",
    ])
    .await;
    assert!(u64_at(&fanout, "broadcasts_sent") > 0);
    assert_eq!(u64_at(&fanout, "lost"), 0, "{}", fanout.results);
    assert_eq!(u64_at(&fanout, "duplicated"), 0);
    assert_eq!(
        u64_at(&fanout, "delivered"),
        u64_at(&fanout, "broadcasts_sent") * 22
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_mesa_server() {
    let url = start_mesa_server().await;
    let pid = std::process::id().to_string();

    let idle = run(&[
        "idle",
        "--url",
        &url,
        "-n",
        "30",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
        "--sources",
        "2",
    ])
    .await;
    assert_eq!(u64_at(&idle, "connections_open"), 30);
    assert!(idle.results["server_rss_per_conn_bytes"].is_number());
    // The hold lasts past a heartbeat: every connection answered at least one.
    assert!(u64_at(&idle, "connections.heartbeats_answered") >= 30);

    let fanout = run(&[
        "fanout", "--url", &url, "-r", "10", "--rate", "50", "-p", "256", "-d", "1s",
    ])
    .await;
    assert!(u64_at(&fanout, "broadcasts_sent") >= 40);
    assert_eq!(u64_at(&fanout, "lost"), 0, "{}", fanout.results);

    let echo = run(&["echo", "--url", &url, "-c", "3", "-k", "3", "-d", "500ms"]).await;
    assert!(u64_at(&echo, "round_trips") > 0);

    let connect = run(&["connect", "--url", &url, "-c", "4", "-d", "500ms"]).await;
    assert!(u64_at(&connect, "authenticated") > 0);
    assert_eq!(u64_at(&connect, "failed"), 0, "{}", connect.results);
}

#[tokio::test]
async fn non_loopback_targets_are_refused_before_connecting() {
    let cli =
        Cli::try_parse_from(["mesa-bench", "echo", "--url", "ws://192.168.1.1:4000/"]).unwrap();
    let Command::Echo(args) = cli.command else {
        unreachable!()
    };
    let error = scenario::echo::run(&args).await.unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn the_baseline_follows_the_conformance_contract() {
    use mesa_bench::conn::{Connector, Incoming, OpenError};
    use mesa_bench::target::{SourceAddrs, Target};

    let url = start_baseline().await;
    let target = Target::parse(&url).unwrap();
    let connector = Connector::new(target.clone(), SourceAddrs::new(&target, 2));
    let next_text = |incoming: Incoming| match incoming {
        Incoming::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
        Incoming::Closed(code) => panic!("closed: {code:?}"),
    };

    let mut a = connector.open().await.unwrap();
    let mut b = connector.open().await.unwrap();
    let mut anonymous = connector.open().await.unwrap();
    a.authenticate("user:a").await.unwrap();
    b.authenticate("user:b").await.unwrap();

    // SEND_TO reaches the named user only, as DIRECT.
    a.send(
        r#"{"op":0,"t":"SEND_TO","d":{"to":["b","c"],"excluding":["c"],"payload":{"x":1}}}"#.into(),
    )
    .await
    .unwrap();
    a.send(r#"{"op":0,"t":"ECHO","d":{"n":2}}"#.into())
        .await
        .unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        next_text(b.recv().await),
        json!({"op":0,"d":{"x":1},"t":"DIRECT"})
    );
    // The sender gets its echo and nothing before it.
    assert_eq!(
        next_text(a.recv().await),
        json!({"op":0,"d":{"n":2},"t":"ECHO"})
    );

    // BROADCAST reaches everyone, the sender and unauthenticated connections included.
    anonymous
        .send(r#"{"op":0,"t":"BROADCAST","d":[1,2]}"#.into())
        .await
        .unwrap();
    anonymous.flush().await.unwrap();
    let expected = json!({"op":0,"d":[1,2],"t":"BROADCAST"});
    assert_eq!(next_text(anonymous.recv().await), expected);
    assert_eq!(next_text(a.recv().await), expected);
    assert_eq!(next_text(b.recv().await), expected);

    // Other tokens are refused with 1008.
    let mut refused = connector.open().await.unwrap();
    match refused.authenticate("admin:a").await {
        Err(OpenError::Closed(_, Some(1008))) => {}
        other => panic!("expected a 1008 close, got {other:?}"),
    }
}

#[test]
fn the_baseline_hello_is_the_conformance_hello() {
    let hello: Value = serde_json::from_str(baseline::HELLO).unwrap();
    assert_eq!(
        hello,
        json!({"op": 10, "d": {
            "c_heartbeat_interval": 1000,
            "c_reconnect_interval": 500,
            "c_authentication_timeout": 2000,
            "rules": ["sends_user_object"],
        }})
    );
}
