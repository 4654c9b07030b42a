//! Resumable sessions from the raw client's side: open one, resume one, read numbered dispatches and check
//! that each position arrived exactly once, in order.

use serde_json::{json, Value};

use crate::ws::{authenticate, connect_hello, recv, send, Close, Ws, WsTarget};
use mesa_server::Frame;

/// A fresh resumable session of `user`: the socket, the session id and the position it starts after.
pub async fn open(target: &(impl WsTarget + ?Sized), user: &str) -> (Ws, String, u64) {
    let (mut ws, hello) = connect_hello(target).await;
    assert!(hello["d"]["c_resume"]["session_ttl"].is_u64(), "{hello}");
    let d = authenticate(
        &mut ws,
        json!({"token": format!("user:{user}"), "resumable": true}),
    )
    .await;
    assert_eq!(d["resumed"], false, "{d}");
    assert_eq!(d["user"], json!({"id": user}));
    let id = d["session_id"].as_str().expect("session id").to_string();
    assert_eq!(id.len(), 32);
    (ws, id, d["seq"].as_u64().expect("seq"))
}

/// Sends op 6 for `session` of `user` after `seq`; returns the socket and the answer (op 22 or op 9).
pub async fn resume(
    target: &(impl WsTarget + ?Sized),
    user: &str,
    session: &str,
    seq: u64,
) -> (Ws, Value) {
    let (mut ws, _) = connect_hello(target).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": format!("user:{user}"), "session_id": session, "seq": seq}}),
    )
    .await;
    let answer = recv(&mut ws).await;
    (ws, answer)
}

/// Dispatch `N` with `d.i = i`.
pub fn numbered(i: u64) -> Frame {
    Frame::dispatch("N", json!({ "i": i }))
}

/// Reads dispatches until `count` have arrived; returns their (s, i) pairs.
pub async fn read_numbered(ws: &mut Ws, count: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let frame = recv(ws).await;
        assert_eq!(frame["op"], 0, "{frame}");
        seen.push((
            frame["s"].as_u64().expect("durable dispatches carry s"),
            frame["d"]["i"].as_u64().expect("i"),
        ));
    }
    seen
}

/// The (s, i) pairs of the dispatches that arrived before a close.
pub fn numbered_before(close: &Close) -> Vec<(u64, u64)> {
    close
        .before
        .iter()
        .filter(|f| f["op"] == 0)
        .map(|f| {
            (
                f["s"].as_u64().unwrap_or(0),
                f["d"]["i"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `seen` is exactly `count` pairs (first_s + k, first_i + k), in order.
pub fn assert_exactly_once_in_order(seen: &[(u64, u64)], first_s: u64, first_i: u64, count: u64) {
    let expected: Vec<(u64, u64)> = (0..count).map(|k| (first_s + k, first_i + k)).collect();
    assert_eq!(
        seen,
        expected.as_slice(),
        "sent {count}, got {}",
        seen.len()
    );
}
