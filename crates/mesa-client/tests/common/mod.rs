//! Shared helpers: a real `mesa-server` on 127.0.0.1, restartable on the same port, and event helpers.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mesa_client::{Event, Events};
use mesa_server::{AuthError, Identity, Mesa, MesaBuilder};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub mesa: Mesa,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Graceful shutdown (op 7, then close 1012) and wait for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

/// Starts `builder` on a fresh port.
pub async fn start(builder: MesaBuilder) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve(builder, listener)
}

/// Starts `builder` on `addr` (a port a previous server used: restart).
pub async fn start_on(builder: MesaBuilder, addr: SocketAddr) -> TestServer {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the same port again");
    serve(builder, listener)
}

fn serve(builder: MesaBuilder, listener: TcpListener) -> TestServer {
    let addr = listener.local_addr().expect("addr");
    let mesa = builder.build();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = mesa.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    TestServer {
        mesa,
        addr,
        stop: Some(stop),
        task,
    }
}

/// Token `user:<id>` authenticates as `<id>` with user `{"id": id}`; anything else is refused.
pub fn with_token_auth(builder: MesaBuilder) -> MesaBuilder {
    builder.authenticate(|data, _client| async move {
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match token.strip_prefix("user:") {
            Some(id) => Ok(Identity::new(id, json!({ "id": id }))),
            None => Err(AuthError::new("invalid token")),
        }
    })
}

/// Token auth, and every dispatch echoed back to its sender.
pub fn echo_server() -> MesaBuilder {
    with_token_auth(Mesa::builder()).on_message(|client, frame| async move {
        let _ = client.send(&frame);
    })
}

/// A log the server's hooks append to, read by assertions.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (polling) until `done` holds for the entries.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let entries = self.entries();
            if done(&entries) {
                return entries;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; log: {entries:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The next event, failing the test after [`WAIT`].
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("timed out waiting for an event")
        .expect("event stream ended")
}

/// Skips events until one matches `pick`; returns what `pick` extracted. Fails after [`WAIT`].
pub async fn wait_event<T>(events: &mut Events, pick: impl FnMut(&Event) -> Option<T>) -> T {
    wait_event_for(events, WAIT, pick).await
}

/// [`wait_event`] with a custom limit (on a paused clock, long limits cost nothing).
pub async fn wait_event_for<T>(
    events: &mut Events,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("timed out waiting for the expected event")
            .expect("event stream ended");
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// Asserts that no event arrives within `wait` (other than those `allowed` accepts).
pub async fn expect_no_event(
    events: &mut Events,
    wait: Duration,
    allowed: impl Fn(&Event) -> bool,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return,
            Ok(None) => panic!("event stream ended"),
            Ok(Some(event)) => assert!(allowed(&event), "unexpected event: {event:?}"),
        }
    }
}
