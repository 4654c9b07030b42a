//! The real Mesa 1.5 Node client (`@cryb/mesa` 1.5.8, `compat/node-client/check-client.js`) against
//! `mesa serve`, the binary: Hello, heartbeats over six intervals, authentication (op 2 -> op 22), a client
//! dispatch the server accepts, and a dispatch a backend pushes with `POST /api/send`.
//!
//! Needs `node` and `npm` on `PATH` (the test fails without them, it is never skipped). On a fresh clone the
//! first run installs `compat/node-client/node_modules` with `npm ci`, guarded across processes together with
//! `mesa-conformance`'s `node_client` test (see `compat/node_harness.rs`).

mod common;
#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "node-client-test-key";

/// POSTs a `SERVER_PUSH` dispatch for `alice` to `/api/send`; the answer must be 202.
async fn push(mesa: &MesaProcess, n: u32) {
    let body = json!({
        "message": {"op": 0, "d": {"push": n}, "t": "SERVER_PUSH"},
        "recipients": ["alice"],
    });
    let response = http()
        .post(mesa.http_url("/api/send"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("POST /api/send");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 202, "POST /api/send answered {status}: {text}");
}

/// The value of the sample `name` (exact, labels included) in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// `/metrics` once the server has noticed that the client is gone (`mesa_connections_open 0`).
async fn metrics_after_disconnect(mesa: &MesaProcess) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, metrics) = get(&mesa.http_url("/metrics")).await;
        assert_eq!(status, 200);
        if sample(&metrics, "mesa_connections_open") == Some(0) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the connection is still open on the server:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn real_mesa_node_client_works_against_mesa_serve() {
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_SERVER__HEARTBEAT__INTERVAL_MS", "1000"),
            ("MESA_API__KEY", KEY),
        ],
    );
    // Auth mode none (the default): the id is d.id and the user object is {"id": <id>} (src/auth/none.rs).
    let args = [
        r#"{"id":"alice"}"#,
        "--expect-user",
        r#"{"id":"alice"}"#,
        "--echo-type",
        "none",
        "--broadcast-type",
        "none",
        "--expect-pushed",
        "SERVER_PUSH",
    ];
    let child = node_harness::spawn_check_client(&mesa.ws_url("/"), &args);
    // The backend pushes to alice every 200 ms until the script exits. Pushes before the client has
    // authenticated reach nobody (still 202); the script counts only one that arrives after its own dispatch.
    // Bounded: `waiting` ends when the script exits, or panics after node_harness::SCRIPT_TIMEOUT (killing it).
    let waiting = node_harness::wait_check_client(child, &args);
    tokio::pin!(waiting);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut pushes = 0;
    let output = loop {
        tokio::select! {
            output = &mut waiting => break output,
            _ = tick.tick() => {
                pushes += 1;
                push(&mesa, pushes).await;
            }
        }
    };
    assert!(
        output.status.success(),
        "check-client.js failed: see its output above; server log:\n{}",
        mesa.logs()
    );

    let summary = node_harness::summary(&output);
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["hello"]["c_heartbeat_interval"], 1000);
    let answered = summary["heartbeats_answered"].as_u64().unwrap_or(0);
    assert!(answered > 5, "answered {answered} heartbeats");
    assert_eq!(summary["user"], json!({"id": "alice"}));
    assert_eq!(summary["echo"], Value::Null, "the echo check was skipped");
    assert_eq!(summary["push"]["sent"]["type"], "CLIENT_HELLO");
    assert_eq!(summary["push"]["pushed_type"], "SERVER_PUSH");
    assert!(
        summary["push"]["pushed_d"]["push"].as_u64().is_some(),
        "the pushed d is one of ours: {}",
        summary["push"]
    );
    eprintln!("{pushes} pushes posted");

    // The server's side. The script's success shows the connection was still open when a push arrived after
    // the client's dispatch, but the server might have read that dispatch only later. The metrics settle it:
    // the only connection there was ended by the client (its close after success), none was closed by the
    // server (no mesa_server_closes_total sample: no 4xxx/1008 for the dispatch), and no frame was ignored as
    // an unknown opcode, so CLIENT_HELLO was read and accepted as a dispatch.
    let metrics = metrics_after_disconnect(&mesa).await;
    assert_eq!(
        sample(&metrics, "mesa_connections_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "mesa_peer_closes_total"),
        Some(1),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|line| line.starts_with("mesa_server_closes_total{")),
        "the server closed a connection:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "mesa_unknown_opcodes_total"),
        Some(0),
        "{metrics}"
    );
    // At least the heartbeat answers, op 2 and the dispatch.
    let received = sample(&metrics, "mesa_frames_received_total").unwrap_or(0);
    assert!(received >= answered + 2, "frames received: {received}");
}
