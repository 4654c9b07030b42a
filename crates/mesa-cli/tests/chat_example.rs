//! The README's chat, run as written: `examples/chat_backend.py` (Python 3, standard library) and
//! `mesa serve --config examples/chat.toml`, with two clients sending what the chat client sends
//! (`{"token": <name>}`, then `SAY {"text": <line>}`). Only the ports differ: the backend gets a free one and
//! `MESA_PROXY__URL` points the gateway at it, so that the test does not collide with anything on 8000.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mesa_testkit::process::{free_port, ChildGuard};
use serde_json::json;

fn repository_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[tokio::test]
async fn the_readme_chat_runs_through_mesa_serve_and_the_python_backend() {
    let port = free_port();
    let mut backend = ChildGuard::spawn(
        Command::new("python3")
            .arg(repository_file("examples/chat_backend.py"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        backend.wait_until_accepting(addr, Duration::from_secs(10)),
        "examples/chat_backend.py did not start (is python3 installed?)"
    );
    let config = repository_file("examples/chat.toml");
    let url = format!("http://127.0.0.1:{port}/events");
    let mesa = MesaProcess::start(
        &["--config", config.to_str().expect("utf-8")],
        &[("MESA_PROXY__URL", url.as_str())],
    );

    let (mut alice, _) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        authenticate(&mut alice, json!({"token": "alice"})).await,
        json!({"id": "alice"})
    );
    let (mut bob, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut bob, json!({"token": "bob"})).await;

    send(
        &mut alice,
        json!({"op": 0, "t": "SAY", "d": {"text": "hi bob"}}),
    )
    .await;
    assert_eq!(
        recv(&mut bob).await,
        json!({"op": 0, "t": "SAY", "d": {"from": "alice", "text": "hi bob"}})
    );
    send(
        &mut bob,
        json!({"op": 0, "t": "SAY", "d": {"text": "hi alice"}}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"op": 0, "t": "SAY", "d": {"from": "bob", "text": "hi alice"}})
    );
    send(
        &mut bob,
        json!({"op": 0, "t": "WHISPER", "d": {"to": "alice", "text": "psst"}}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await["d"],
        json!({"from": "bob", "text": "psst"})
    );
    // The backend refuses an empty line; the sender is told.
    send(&mut alice, json!({"op": 0, "t": "SAY", "d": {"text": " "}})).await;
    let refused = recv(&mut alice).await;
    assert_eq!(refused["t"], "PROXY_ERROR");
    assert_eq!(refused["d"]["code"], "refused");
}
