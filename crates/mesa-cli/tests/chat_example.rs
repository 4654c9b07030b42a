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

/// `examples/chat_backend.py` on a free port and `mesa serve --config examples/chat.toml` pointed at it.
fn start_backend_and_gateway() -> (ChildGuard, MesaProcess) {
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
    (backend, mesa)
}

#[tokio::test]
async fn the_readme_chat_runs_through_mesa_serve_and_the_python_backend() {
    let (_backend, mesa) = start_backend_and_gateway();

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

/// The chat client binary of `crates/mesa-client/examples/chat.rs`, as `cargo test --workspace` builds it (it
/// builds every example before running tests); built here when this test runs alone, into a target
/// directory of its own (the outer cargo may hold the build lock of the usual one).
fn chat_client_binary() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<this test> → target/<profile>/examples/chat
    if let Some(profile_dir) = test_exe.parent().and_then(|deps| deps.parent()) {
        let built = profile_dir.join("examples").join("chat");
        if built.is_file() {
            return built;
        }
    }
    let target = repository_file("target/chat-example");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "mesa-client", "--example", "chat"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(repository_file(""))
        .status()
        .expect("cargo build of the chat example");
    assert!(status.success(), "cargo build of the chat example failed");
    target.join("debug").join("examples").join("chat")
}

/// The same chat with the README's own client: two `chat` processes, lines typed on one's stdin printed by
/// the other as `name: text`, every line counted.
#[tokio::test]
async fn the_readme_chat_runs_with_the_chat_client_binary() {
    use std::io::{BufRead, BufReader, Write};
    let (_backend, mesa) = start_backend_and_gateway();
    let chat = chat_client_binary();
    let spawn_chat = |token: &str| {
        ChildGuard::spawn(
            Command::new(&chat)
                .args(["--url", &mesa.ws_url("/"), "--token", token])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    };
    // Each client's stdout and stderr lines, collected by a thread.
    let collect = |child: &mut ChildGuard| {
        let (lines, received) = std::sync::mpsc::channel::<String>();
        let stdout = child.child_mut().stdout.take().expect("stdout");
        let stderr = child.child_mut().stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        received
    };
    let wait_for = |received: &std::sync::mpsc::Receiver<String>, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match received.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line containing {needle:?}; got {seen:?}");
    };
    let mut alice = spawn_chat("alice");
    let alice_out = collect(&mut alice);
    wait_for(&alice_out, "authenticated as");
    let mut bob = spawn_chat("bob");
    let bob_out = collect(&mut bob);
    wait_for(&bob_out, "authenticated as");

    const LINES: usize = 20;
    let alice_in = alice.child_mut().stdin.as_mut().expect("stdin");
    for i in 0..LINES {
        writeln!(alice_in, "line {i} from alice").expect("write");
    }
    alice_in.flush().expect("flush");
    for i in 0..LINES {
        wait_for(&bob_out, &format!("alice: line {i} from alice"));
    }
    let bob_in = bob.child_mut().stdin.as_mut().expect("stdin");
    writeln!(bob_in, "hi alice").expect("write");
    bob_in.flush().expect("flush");
    wait_for(&alice_out, "bob: hi alice");
    // End of stdin: each client sends what is queued, lingers, and exits 0.
    for child in [&mut alice, &mut bob] {
        drop(child.child_mut().stdin.take());
        let status = child.wait_exit(Duration::from_secs(10)).expect("exited");
        assert!(status.success(), "chat exited with {status}");
    }
}
