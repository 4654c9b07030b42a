//! A resumable session's place in its user's stream ([`SessionStream`]): the one gate every sequenced frame
//! passes on its way into the session's outbox, from the live path (engine deliveries) and from replays
//! (stream reads by the connection task) alike, so that the client sees each position once, in order.
//!
//! The live path is a wake-up, the stream is the truth: a live frame that is not the next position (the
//! session is still catching up, or the engine lost something) is dropped and marks a gap, and the
//! connection task then reads the stream from the last position it queued.

use std::sync::{Mutex, MutexGuard};

use mesa_engine::SessionId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::{Outbox, PushError};

#[derive(Debug)]
struct Position {
    /// The next position to queue; 0 until the session's start is known (op 22 not yet written).
    next: u64,
    /// A frame was dropped that the stream must fill in.
    gap: bool,
    /// The last position the client acknowledged.
    acked: u64,
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued on the outbox.
    Queued,
    /// Already queued before (a replay and the live path met): dropped.
    Duplicate,
    /// Not the next position: dropped, and the gap is marked for the connection task.
    Gap,
    /// The outbox refused it (full: the session now closes with 4010 and resumes later; or closed).
    Refused(PushError),
}

/// See the module docs. Created when the session becomes resumable, before it can be found by its user id.
#[derive(Debug)]
pub(crate) struct SessionStream {
    pub(crate) id: SessionId,
    position: Mutex<Position>,
}

impl SessionStream {
    /// A stream whose start is not known yet: frames offered meanwhile are gaps.
    pub(crate) fn pending(id: SessionId) -> SessionStream {
        SessionStream {
            id,
            position: Mutex::new(Position {
                next: 0,
                gap: true,
                acked: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Position> {
        // Every update is a few integer stores; nothing can panic half-way.
        self.position.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's start is known (op 22 was written): it queues from `after + 1`, and the stream must be
    /// read from there.
    pub(crate) fn start(&self, after: u64) {
        let mut position = self.lock();
        position.next = after + 1;
        position.gap = true;
        position.acked = after;
    }

    /// Offers the frame at `seq`; `text` makes its encoding with `s` (called only when it is queued).
    pub(crate) fn offer(
        &self,
        seq: u64,
        outbox: &Outbox,
        text: impl FnOnce() -> Utf8Bytes,
    ) -> Offered {
        let mut position = self.lock();
        if position.next == 0 || seq > position.next {
            let first = !position.gap;
            position.gap = true;
            drop(position);
            if first {
                // The connection task looks at the gap on its next turn.
                outbox.wake();
            }
            return Offered::Gap;
        }
        if seq < position.next {
            return Offered::Duplicate;
        }
        // Pushed under the lock, so that two offers of consecutive positions cannot swap in the outbox.
        match outbox.push(text()) {
            Ok(()) => {
                position.next += 1;
                Offered::Queued
            }
            Err(error) => Offered::Refused(error),
        }
    }

    /// Takes the marked gap: returns the position after which the stream must be read, or `None`.
    pub(crate) fn take_gap(&self) -> Option<u64> {
        let mut position = self.lock();
        if !position.gap || position.next == 0 {
            return None;
        }
        position.gap = false;
        Some(position.next - 1)
    }

    /// Marks a gap again (a read was cut short, or failed and will be retried).
    pub(crate) fn mark_gap(&self) {
        self.lock().gap = true;
    }

    /// Whether a gap is marked and the start is known.
    pub(crate) fn has_gap(&self) -> bool {
        let position = self.lock();
        position.gap && position.next > 0
    }

    /// The last position queued.
    pub(crate) fn queued(&self) -> u64 {
        self.lock().next.saturating_sub(1)
    }

    /// Records the client's acknowledgement of `seq`; returns the position to report to the engine when it
    /// moved forward (a client cannot acknowledge what it was not sent).
    pub(crate) fn acknowledge(&self, seq: u64) -> Option<u64> {
        let mut position = self.lock();
        let seq = seq.min(position.next.saturating_sub(1));
        if seq <= position.acked {
            return None;
        }
        position.acked = seq;
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn drained(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        outbox.drain(&mut batch, usize::MAX, usize::MAX);
        batch.into_iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn frames_pass_once_in_order_and_gaps_are_marked() {
        let outbox = Outbox::new(64, 1 << 20);
        let stream = SessionStream::pending(SessionId(1));
        assert_eq!(stream.offer(1, &outbox, || "1".into()), Offered::Gap);
        assert_eq!(stream.take_gap(), None, "the start is not known yet");
        stream.start(0);
        assert_eq!(stream.take_gap(), Some(0));
        assert_eq!(stream.offer(1, &outbox, || "1".into()), Offered::Queued);
        assert_eq!(stream.offer(1, &outbox, || "1".into()), Offered::Duplicate);
        assert_eq!(stream.offer(3, &outbox, || "3".into()), Offered::Gap);
        assert_eq!(stream.take_gap(), Some(1));
        assert_eq!(stream.take_gap(), None);
        assert_eq!(stream.offer(2, &outbox, || "2".into()), Offered::Queued);
        assert_eq!(stream.offer(3, &outbox, || "3".into()), Offered::Queued);
        assert_eq!(drained(&outbox), ["1", "2", "3"]);
        assert_eq!(stream.acknowledge(9), Some(3), "capped to what was queued");
        assert_eq!(stream.acknowledge(2), None);
    }
}
