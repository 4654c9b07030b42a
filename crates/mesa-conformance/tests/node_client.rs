//! The real Mesa 1.5 Node client (`@cryb/mesa` 1.5.8, in `compat/node-client`) against the conformance app.
//!
//! Needs `node` and `npm` on `PATH`: without them these tests fail (they are never skipped silently).
//! On a fresh clone the first test runs `npm ci` in `compat/node-client` once (guarded against concurrent tests,
//! in this process and across processes, including `mesa-cli`'s `node_client` test); later runs reuse
//! `node_modules`. The helpers are shared with `mesa-cli` in `compat/node_harness.rs`.

mod common;
#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use std::process::Output;

use common::Server;
use node_harness::summary;
use serde_json::json;

/// Runs `node check-client.js <server url> <args>` (see `compat/node_harness.rs`).
async fn run_check_client(server: &Server, args: &[&str]) -> Output {
    node_harness::run_check_client(&server.url(), args).await
}

#[tokio::test]
async fn real_mesa_node_client_works_against_the_conformance_app() {
    let server = Server::start();
    let output = run_check_client(&server, &["user:alice"]).await;
    assert!(
        output.status.success(),
        "check-client.js failed: see its output above"
    );
    let summary = summary(&output);
    assert_eq!(summary["ok"], true);
    assert_eq!(
        summary["user"],
        json!({"id": "alice", "name": "User alice"})
    );
    assert_eq!(summary["heartbeat_interval_ms"], 1000);
    let answered = summary["heartbeats_answered"].as_u64().unwrap_or(0);
    assert!(answered >= 6, "answered {answered} heartbeats");
    assert_eq!(summary["echo"]["type"], "ECHO");
    assert_eq!(summary["broadcast"]["type"], "BROADCAST");
}

#[tokio::test]
async fn node_client_check_fails_on_a_refused_authentication() {
    // The script's failure path: a refused token is reported, not mistaken for success.
    let server = Server::start();
    let output = run_check_client(&server, &["not-a-user-token", "--beats", "0"]).await;
    assert_eq!(output.status.code(), Some(1), "expected exit status 1");
    let summary = summary(&output);
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["phase"], "authentication");
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1008"),
        "error should name the 1008 close: {error}"
    );
}
