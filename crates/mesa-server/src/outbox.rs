//! The bounded outbound queue of one session.
//!
//! Senders (fan-out, [`Session::send`](crate::Session::send)) push already-encoded frames without waiting; the
//! connection task drains them into the socket. The queue is bounded by frames and by bytes. When a push would
//! exceed either bound, the session turns to closing with 4010 (slow consumer): the push is refused, and what
//! is already queued is kept and written before the close frame, so being slow costs the frames that did not
//! fit, never the ones already accepted. The queue allocates nothing while empty.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use mesa_protocol::CloseCode;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A request to close the session after the queued frames.
/// The most frame slots an empty queue keeps allocated (a burst's worth is given back).
pub(crate) const KEPT_SLOTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The push would exceed a bound; the session is now closing with 4010.
    Full,
    /// The session is closing or closed.
    Closed,
}

/// Where the queue is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Accepting frames.
    Open,
    /// No more frames are accepted; the queued ones are written, then the connection closes.
    Closing(CloseRequest),
    /// The connection is gone; nothing will be written.
    Closed,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    phase: Phase,
}

/// [`Outbox::phase`], without the close request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxPhase {
    Open,
    Closing,
    Closed,
}

/// What one drain took out of the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Frames are still queued beyond the drain's budget (the queue has woken its reader again).
    pub(crate) more: bool,
    /// The session is closing and every queued frame has been drained.
    pub(crate) close: Option<CloseRequest>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// The bounds, as `u32`s: every session holds an outbox, and the session's shared state is exactly in
    /// an allocator class (256 B with its `Arc` header; see the size test in `session.rs`).
    max_frames: u32,
    max_bytes: u32,
}

/// A configured bound, at least 1 and at most `u32::MAX` (4 Gi frames or 4 GiB: no session gets near).
fn bound(configured: usize) -> u32 {
    u32::try_from(configured.max(1)).unwrap_or(u32::MAX)
}

impl Outbox {
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                phase: Phase::Open,
            }),
            wake: Notify::new(),
            max_frames: bound(max_frames),
            max_bytes: bound(max_bytes),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding this lock with the state half-changed; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one encoded frame.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        // A single frame larger than the byte bound is accepted into an empty queue: otherwise it could
        // never be sent at all.
        let over = state.frames.len() >= self.max_frames as usize
            || (!state.frames.is_empty() && state.bytes + len > self.max_bytes as usize);
        if over {
            state.phase = Phase::Closing(CloseRequest {
                code: CloseCode::SlowConsumer.code(),
                reason: CloseCode::SlowConsumer.reason().into(),
            });
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Full);
        }
        let was_empty = state.frames.is_empty();
        state.bytes += len;
        state.frames.push_back(frame);
        drop(state);
        // The task drains on each wake-up, so only the first frame of a batch needs to wake it.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the session to close after the frames already queued. The first request wins.
    pub(crate) fn close(&self, code: u16, reason: String) {
        let mut state = self.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Closing(CloseRequest { code, reason });
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Moves queued frames into `batch` (which must be empty), at most `max_frames` of them and (past the
    /// first) `max_bytes`. When the whole queue fits, the two swap storage: no frame is moved one by one, and
    /// the queue keeps the batch's allocation for the next frames.
    pub(crate) fn drain(
        &self,
        batch: &mut VecDeque<Utf8Bytes>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Drained {
        debug_assert!(batch.is_empty());
        let mut state = self.lock();
        let taken_bytes = if state.frames.len() <= max_frames && state.bytes <= max_bytes {
            std::mem::swap(batch, &mut state.frames);
            state.bytes
        } else {
            let (mut taken, mut taken_bytes) = (0, 0);
            while let Some(front) = state.frames.front() {
                if taken >= max_frames || (taken > 0 && taken_bytes + front.len() > max_bytes) {
                    break;
                }
                taken += 1;
                taken_bytes += front.len();
                if let Some(frame) = state.frames.pop_front() {
                    batch.push_back(frame);
                }
            }
            taken_bytes
        };
        state.bytes -= taken_bytes;
        if state.frames.is_empty() && state.frames.capacity() > KEPT_SLOTS {
            // Do not keep a burst's worth of slots on an idle connection.
            state.frames = VecDeque::new();
        }
        let more = !state.frames.is_empty();
        let close = match &state.phase {
            Phase::Closing(request) if !more => Some(request.clone()),
            _ => None,
        };
        drop(state);
        if more {
            self.wake.notify_one();
        }
        Drained { more, close }
    }

    /// Whether at least half of either bound is used: the connection task then drains the queue between
    /// the messages of a read batch instead of once at the end, so a burst of replies cannot overflow it.
    pub(crate) fn is_half_full(&self) -> bool {
        let state = self.lock();
        state.frames.len() * 2 >= self.max_frames as usize
            || state.bytes * 2 >= self.max_bytes as usize
    }

    /// Whether the queue accepts frames, is closing, or its connection is gone.
    pub(crate) fn phase(&self) -> OutboxPhase {
        match self.lock().phase {
            Phase::Open => OutboxPhase::Open,
            Phase::Closing(_) => OutboxPhase::Closing,
            Phase::Closed => OutboxPhase::Closed,
        }
    }

    /// The connection is gone: refuse every later push and drop what is queued. Returns how many frames
    /// were queued and will never be written.
    pub(crate) fn shut(&self) -> usize {
        let mut state = self.lock();
        state.phase = Phase::Closed;
        let undelivered = state.frames.len();
        state.frames = VecDeque::new();
        state.bytes = 0;
        undelivered
    }

    /// Frees the queue's slots if it is empty.
    pub(crate) fn release_idle_slots(&self) {
        let mut state = self.lock();
        if state.frames.is_empty() && state.frames.capacity() > 0 {
            state.frames = VecDeque::new();
        }
    }

    /// Wakes the connection task as a push would, so that it looks at the server's state (shutdown).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when something was pushed or a close was requested since the last drain.
    pub(crate) async fn ready(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(outbox: &Outbox) -> (VecDeque<Utf8Bytes>, Drained) {
        let mut batch = VecDeque::new();
        let drained = outbox.drain(&mut batch, usize::MAX, usize::MAX);
        (batch, drained)
    }

    #[test]
    fn a_full_queue_closes_with_4010_and_keeps_what_it_accepted() {
        let outbox = Outbox::new(2, 1024);
        outbox.push("a".into()).unwrap();
        outbox.push("b".into()).unwrap();
        assert_eq!(outbox.push("c".into()), Err(PushError::Full));
        assert_eq!(outbox.push("d".into()), Err(PushError::Closed));
        let (batch, drained) = drain_all(&outbox);
        assert_eq!(batch, ["a", "b"]);
        assert_eq!(drained.close.map(|c| c.code), Some(4010));
    }

    #[test]
    fn the_queue_is_bounded_by_bytes() {
        let outbox = Outbox::new(100, 10);
        outbox.push("0123456".into()).unwrap();
        assert_eq!(outbox.push("0123".into()), Err(PushError::Full));
        // One frame larger than the bound still goes through an empty queue.
        let big = Outbox::new(100, 4);
        big.push("0123456789".into()).unwrap();
    }

    #[test]
    fn a_drain_takes_at_most_its_budget_and_reports_the_rest() {
        let outbox = Outbox::new(100, 1 << 20);
        for frame in ["a", "b", "c"] {
            outbox.push(frame.into()).unwrap();
        }
        outbox.close(1000, "bye".into());
        let mut batch = VecDeque::new();
        let drained = outbox.drain(&mut batch, 2, usize::MAX);
        assert_eq!(batch, ["a", "b"]);
        assert!(drained.more);
        assert_eq!(drained.close, None, "the close waits for the queued frames");
        let (batch, drained) = drain_all(&outbox);
        assert_eq!(batch, ["c"]);
        assert_eq!(drained.close.map(|c| c.code), Some(1000));
    }

    #[test]
    fn a_shut_queue_refuses_pushes_and_counts_what_it_dropped() {
        let outbox = Outbox::new(8, 1024);
        outbox.push("a".into()).unwrap();
        assert_eq!(outbox.shut(), 1);
        assert_eq!(outbox.push("b".into()), Err(PushError::Closed));
        assert_eq!(outbox.phase(), OutboxPhase::Closed);
    }

    #[tokio::test]
    async fn push_wakes_the_reader_once_per_batch() {
        let outbox = Outbox::new(8, 1024);
        outbox.push("a".into()).unwrap();
        outbox.push("b".into()).unwrap();
        outbox.ready().await;
        let (batch, drained) = drain_all(&outbox);
        assert_eq!(drained, Drained::default());
        assert_eq!(batch.len(), 2);
    }
}
