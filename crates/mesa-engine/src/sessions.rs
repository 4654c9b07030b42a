//! Resumable sessions and the per-user stream behind them (plain data; the operations are on
//! [`Engine`](crate::Engine)).
//!
//! Every durable send to a user is appended to that user's stream, where it gets the user's next sequence
//! number, and only then handed to the nodes holding the user (store first, then notify, in one step). A
//! resumable session of the user is a cursor in that stream: every durable dispatch it is sent carries its
//! sequence number as `s`, the client acknowledges the last `s` it processed, and a client that reconnects
//! (to any node) presents its session id and last `s` to get the rest, in order. Entries leave the stream
//! when every session of the user still kept has acknowledged them, or when a retention bound
//! ([`Retention`]) evicts them; a resume that would need an evicted entry is refused
//! ([`ResumeRefusal::RetentionExceeded`]), never answered with part of the gap.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::ids::ConnectionId;
use crate::publication::EncodedFrame;

/// A resumable session's id: 128 random bits, written as 32 lowercase hex digits.
///
/// Not a credential: a resume must also pass the application's authentication check as the session's
/// user, and the engine looks the id up under that user only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh random session id (from the operating system's random source).
    pub fn random() -> SessionId {
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No OS randomness (never seen on Linux): the process hash seed, time and a counter still make
            // ids that do not repeat; they are not secrets either way.
            let high = crate::ids::NodeId::random().0;
            let low = crate::ids::NodeId::random().0;
            return SessionId((u128::from(high) << 64) | u128::from(low));
        }
        SessionId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A string that is not a [`SessionId`] (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a session id (expected 32 hex digits)")]
pub struct ParseSessionIdError;

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<SessionId, ParseSessionIdError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseSessionIdError);
        }
        u128::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| ParseSessionIdError)
    }
}

/// How much of a user's stream is kept for resumes and the offline mailbox, whatever has been
/// acknowledged. Each bound is exact: the oldest entries go first, and the stream never holds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most entries kept per user.
    pub max_messages: usize,
    /// The most frame bytes kept per user.
    pub max_bytes: usize,
    /// Entries older than this are evicted.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_messages: 1000,
            max_bytes: 1024 * 1024,
            max_age: Duration::from_secs(15 * 60),
        }
    }
}

/// What an engine keeps for resumable sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// The bounds of each user's stream.
    pub retention: Retention,
    /// How long a session whose connection ended (without ending the session) can still be resumed.
    pub session_ttl: Duration,
}

impl Default for SessionPolicy {
    fn default() -> SessionPolicy {
        SessionPolicy {
            retention: Retention::default(),
            session_ttl: Duration::from_secs(5 * 60),
        }
    }
}

/// One entry of a user's stream: a durable frame (as published, without `s`) and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The user's sequence number of this entry (the `s` its dispatch carries), from 1.
    pub seq: u64,
    /// The frame.
    pub frame: EncodedFrame,
}

/// A page of a user's stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamRead {
    /// Entries after the requested position, oldest first, without a hole.
    pub entries: Vec<StreamEntry>,
    /// The last sequence number appended to the stream so far (0: nothing ever).
    pub head: u64,
}

/// Why the entries after a position cannot all be read any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("entries after {after} were evicted (oldest kept: {oldest})")]
pub struct StreamGap {
    /// The position asked for.
    pub after: u64,
    /// The oldest entry still kept.
    pub oldest: u64,
}

/// A fresh resumable session, recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The position the session starts after: its first dispatch is `start + 1`. The entries between the
    /// user's last acknowledged position and the head (the mailbox) come first.
    pub start: u64,
}

/// A resume the engine accepted: the session is now held by the claiming connection alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The connection that held the session before, if it was still recorded as connected (on any node):
    /// it must be closed, since only one connection may serve a session.
    pub previous: Option<ConnectionId>,
}

/// Why a resume was refused. The client must start a fresh session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeRefusal {
    /// No session of this user has that id: never opened, ended, expired, or another user's.
    #[error("unknown or expired session")]
    UnknownSession,
    /// Entries after the client's position were evicted by a retention bound.
    #[error("messages after the last one processed are no longer kept")]
    RetentionExceeded,
    /// The client claims a position the stream never reached.
    #[error("sequence ahead of the server")]
    SequenceAhead,
}

impl ResumeRefusal {
    /// The `code` of the op 9 frame that reports it.
    pub fn code(self) -> &'static str {
        match self {
            ResumeRefusal::UnknownSession => "session_unknown",
            ResumeRefusal::RetentionExceeded => "retention_exceeded",
            ResumeRefusal::SequenceAhead => "sequence_ahead",
        }
    }
}

/// How a connection of a resumable session ended, for [`Engine::release_session`](crate::Engine::release_session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The connection ended but the session may be resumed within the session TTL.
    Keep,
    /// The session is over (the client closed normally, or the server ended it): forget it.
    End,
}

/// Checks a resume position against a stream's bounds: `oldest` is the first entry kept (`head + 1` when
/// the stream is empty).
pub fn check_resume(after: u64, oldest: u64, head: u64) -> Result<(), ResumeRefusal> {
    if after > head {
        return Err(ResumeRefusal::SequenceAhead);
    }
    if after < head && after + 1 < oldest {
        return Err(ResumeRefusal::RetentionExceeded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip() {
        let id = SessionId::random();
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.to_string().parse::<SessionId>(), Ok(id));
        assert_ne!(SessionId::random(), SessionId::random());
        assert!("xyz".parse::<SessionId>().is_err());
        assert!("+0000000000000000000000000000000"
            .parse::<SessionId>()
            .is_err());
    }

    #[test]
    fn resume_bounds_are_exact() {
        // Stream holds 5..=9.
        assert_eq!(check_resume(4, 5, 9), Ok(()));
        assert_eq!(check_resume(9, 5, 9), Ok(()));
        assert_eq!(check_resume(3, 5, 9), Err(ResumeRefusal::RetentionExceeded));
        assert_eq!(check_resume(10, 5, 9), Err(ResumeRefusal::SequenceAhead));
        // Empty stream, everything acknowledged up to 9.
        assert_eq!(check_resume(9, 10, 9), Ok(()));
        assert_eq!(
            check_resume(8, 10, 9),
            Err(ResumeRefusal::RetentionExceeded)
        );
        assert_eq!(check_resume(0, 1, 0), Ok(()));
    }
}
