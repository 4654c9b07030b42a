//! The bounded outbound queue of one connection.
//!
//! Senders (fan-out, `Client::send`) push already-encoded frames without waiting; the connection task drains
//! everything queued and writes it as one batch. The queue allocates nothing while empty, so an idle connection
//! costs only the struct itself. When it is full, the connection is marked for closing with 4010 rather than
//! buffering without end.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use mesa_protocol::CloseCode;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A request to close the connection, queued behind nothing: it takes effect at the next wake-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue was full; the connection is now closing with 4010.
    Full,
    /// The connection is already closing.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    close: Option<CloseRequest>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one encoded frame.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.frames.len() >= self.capacity {
            state.frames.clear();
            state.close = Some(CloseRequest {
                code: CloseCode::SlowConsumer.code(),
                reason: CloseCode::SlowConsumer.reason().into(),
            });
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Full);
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        drop(state);
        // The task drains everything on each wake-up, so only the first frame of a batch needs to wake it.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the connection to close. The first request wins; queued frames are still written first.
    pub(crate) fn close(&self, code: u16, reason: String) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(CloseRequest { code, reason });
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Moves every queued frame into `batch` and returns the close request, if any.
    pub(crate) fn drain(&self, batch: &mut Vec<Utf8Bytes>) -> Option<CloseRequest> {
        let mut state = self.lock();
        batch.extend(state.frames.drain(..));
        if state.frames.capacity() > 64 {
            // Do not keep a burst's worth of slots on an idle connection.
            state.frames = VecDeque::new();
        }
        state.close.clone()
    }

    /// Resolves when something was pushed or a close was requested since the last drain.
    pub(crate) async fn ready(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_turns_into_a_slow_consumer_close() {
        let outbox = Outbox::new(2);
        outbox.push("a".into()).unwrap();
        outbox.push("b".into()).unwrap();
        assert_eq!(outbox.push("c".into()), Err(PushError::Full));
        assert_eq!(outbox.push("d".into()), Err(PushError::Closed));
        let mut batch = Vec::new();
        let close = outbox.drain(&mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(close.code, 4010);
    }

    #[tokio::test]
    async fn push_wakes_the_reader_once_per_batch() {
        let outbox = Outbox::new(8);
        outbox.push("a".into()).unwrap();
        outbox.push("b".into()).unwrap();
        outbox.ready().await;
        let mut batch = Vec::new();
        assert_eq!(outbox.drain(&mut batch), None);
        assert_eq!(batch.len(), 2);
    }
}
