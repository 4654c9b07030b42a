//! Shared helpers: a real `mesa-server` on 127.0.0.1, restartable on the same port (from `mesa-testkit`), and
//! the client's event helpers.
#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mesa_client::{Event, Events};

pub use mesa_testkit::server::{echo_server, start, start_on, with_token_auth, TestServer};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

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
