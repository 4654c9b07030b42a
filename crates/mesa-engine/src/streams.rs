//! The in-memory per-user streams and session records behind [`MemoryEngine`](crate::MemoryEngine)'s
//! resumable sessions: plain data structures, no I/O, every rule of [`crate::sessions`] in one place.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::ids::ConnectionId;
use crate::publication::EncodedFrame;
use crate::sessions::{
    check_resume, Claimed, Opened, Release, ResumeRefusal, SessionId, SessionPolicy, StreamEntry,
    StreamGap, StreamRead,
};

struct Entry {
    seq: u64,
    frame: EncodedFrame,
    at: Instant,
}

struct Record {
    /// The last position acknowledged (or the session's start).
    cursor: u64,
    hold: Hold,
}

/// Whether a session is served (one enum rather than two options: every idle session carries it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// By this connection.
    Held(ConnectionId),
    /// By none since its release; forgotten at this instant.
    Released(Instant),
}

impl Record {
    fn holder(&self) -> Option<ConnectionId> {
        match self.hold {
            Hold::Held(connection) => Some(connection),
            Hold::Released(_) => None,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        matches!(self.hold, Hold::Released(at) if now >= at)
    }
}

/// A user's sessions: a few at most (one per device), so a vector searched in order, which costs one
/// small allocation where a hash table would cost four times as much per idle user.
#[derive(Default)]
struct SessionTable(Vec<(SessionId, Record)>);

impl SessionTable {
    fn get_mut(&mut self, id: &SessionId) -> Option<&mut Record> {
        self.0.iter_mut().find(|(k, _)| k == id).map(|(_, r)| r)
    }

    fn insert(&mut self, id: SessionId, record: Record) {
        match self.get_mut(&id) {
            Some(slot) => *slot = record,
            None => {
                self.0.push((id, record));
                self.0.shrink_to_fit();
            }
        }
    }

    fn remove(&mut self, id: &SessionId) {
        self.0.retain(|(k, _)| k != id);
    }

    fn retain(&mut self, mut keep: impl FnMut(&Record) -> bool) {
        self.0.retain(|(_, r)| keep(r));
    }

    fn values(&self) -> impl Iterator<Item = &Record> {
        self.0.iter().map(|(_, r)| r)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn contains_key(&self, id: &SessionId) -> bool {
        self.0.iter().any(|(k, _)| k == id)
    }
}

/// One user's stream and sessions.
#[derive(Default)]
pub(crate) struct UserStream {
    entries: VecDeque<Entry>,
    bytes: usize,
    head: u64,
    /// The highest position any session of the user acknowledged.
    read_marker: u64,
    sessions: SessionTable,
}

impl UserStream {
    fn oldest(&self) -> u64 {
        self.entries.front().map_or(self.head + 1, |e| e.seq)
    }

    /// Whether a durable send must be appended: a session of the user is kept (it may resume), or the user
    /// has no live session (the mailbox).
    pub(crate) fn wants_append(&self, user_is_live: bool) -> bool {
        !self.sessions.is_empty() || !user_is_live
    }

    /// Appends a frame and applies the count and byte bounds; returns its position.
    pub(crate) fn append(
        &mut self,
        policy: &SessionPolicy,
        frame: EncodedFrame,
        now: Instant,
    ) -> u64 {
        self.expire(policy, now);
        self.head += 1;
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            seq: self.head,
            frame,
            at: now,
        });
        let retention = &policy.retention;
        while self.entries.len() > retention.max_messages || self.bytes > retention.max_bytes {
            let Some(evicted) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= evicted.frame.len();
        }
        self.head
    }

    /// Applies the age bound and forgets sessions whose TTL passed.
    fn expire(&mut self, policy: &SessionPolicy, now: Instant) {
        let before = self.sessions.len();
        self.sessions.retain(|record| !record.expired(now));
        while let Some(front) = self.entries.front() {
            if now.saturating_duration_since(front.at) < policy.retention.max_age {
                break;
            }
            self.bytes -= front.frame.len();
            self.entries.pop_front();
        }
        if self.sessions.len() != before {
            self.trim_acknowledged();
        }
    }

    /// Removes what every kept session, and some device, has acknowledged.
    fn trim_acknowledged(&mut self) {
        let floor = self
            .sessions
            .values()
            .map(|r| r.cursor)
            .min()
            .map_or(self.read_marker, |min| min.min(self.read_marker));
        while let Some(front) = self.entries.front() {
            if front.seq > floor {
                break;
            }
            self.bytes -= front.frame.len();
            self.entries.pop_front();
        }
    }

    pub(crate) fn open(
        &mut self,
        policy: &SessionPolicy,
        session: SessionId,
        holder: ConnectionId,
        now: Instant,
    ) -> Opened {
        self.expire(policy, now);
        // The mailbox: what no device acknowledged, as far as it is still kept.
        let start = self.read_marker.max(self.oldest().saturating_sub(1));
        self.sessions.insert(
            session,
            Record {
                cursor: start,
                hold: Hold::Held(holder),
            },
        );
        Opened { start }
    }

    pub(crate) fn claim(
        &mut self,
        policy: &SessionPolicy,
        session: SessionId,
        holder: ConnectionId,
        after: u64,
        now: Instant,
    ) -> Result<Claimed, ResumeRefusal> {
        self.expire(policy, now);
        let (oldest, head) = (self.oldest(), self.head);
        let record = self
            .sessions
            .get_mut(&session)
            .ok_or(ResumeRefusal::UnknownSession)?;
        check_resume(after, oldest, head)?;
        let previous = record.holder().filter(|old| *old != holder);
        record.hold = Hold::Held(holder);
        record.cursor = record.cursor.max(after);
        self.read_marker = self.read_marker.max(record.cursor);
        Ok(Claimed { previous })
    }

    pub(crate) fn acknowledge(
        &mut self,
        policy: &SessionPolicy,
        session: SessionId,
        seq: u64,
        now: Instant,
    ) {
        self.expire(policy, now);
        let head = self.head;
        let Some(record) = self.sessions.get_mut(&session) else {
            return;
        };
        record.cursor = record.cursor.max(seq.min(head));
        self.read_marker = self.read_marker.max(record.cursor);
        self.trim_acknowledged();
    }

    pub(crate) fn release(
        &mut self,
        policy: &SessionPolicy,
        session: SessionId,
        holder: ConnectionId,
        release: Release,
        now: Instant,
    ) {
        let Some(record) = self.sessions.get_mut(&session) else {
            return;
        };
        if record.holder() != Some(holder) {
            return;
        }
        match release {
            Release::Keep => {
                record.hold = Hold::Released(now + policy.session_ttl);
            }
            Release::End => {
                self.sessions.remove(&session);
                self.trim_acknowledged();
            }
        }
    }

    pub(crate) fn read(
        &mut self,
        policy: &SessionPolicy,
        after: u64,
        limit: usize,
        now: Instant,
    ) -> Result<StreamRead, StreamGap> {
        self.expire(policy, now);
        let oldest = self.oldest();
        if after < self.head && after + 1 < oldest {
            return Err(StreamGap { after, oldest });
        }
        // Positions are consecutive, so the first wanted entry's index is known without a search.
        let skip = usize::try_from((after + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let entries = self
            .entries
            .iter()
            .skip(skip)
            .take(limit)
            .map(|e| StreamEntry {
                seq: e.seq,
                frame: e.frame.clone(),
            })
            .collect();
        Ok(StreamRead {
            entries,
            head: self.head,
        })
    }

    /// Nothing kept: the stream can be dropped (positions restart from 1 for a later one, which no kept
    /// session can notice, since none is kept).
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.sessions.is_empty()
    }
}

/// Every user's stream, each behind its own lock (sends to different users do not wait for each other; one
/// user's appends and their delivery happen under that user's lock, so nodes see them in order).
pub(crate) struct Streams {
    pub(crate) policy: SessionPolicy,
    users: Mutex<HashMap<Arc<str>, Arc<Mutex<UserStream>>>>,
    /// Operations since the last sweep of idle streams.
    since_sweep: Mutex<(u32, Option<Instant>)>,
}

/// How often (in operations) streams that keep nothing are dropped and aged entries evicted.
const SWEEP_EVERY: u32 = 4096;

impl Streams {
    pub(crate) fn new(policy: SessionPolicy) -> Streams {
        Streams {
            policy,
            users: Mutex::new(HashMap::new()),
            since_sweep: Mutex::new((0, None)),
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Mutex<UserStream>>>> {
        // Every update of the map is a single insert or retain.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user's stream if there is one.
    pub(crate) fn get(&self, user: &str) -> Option<Arc<Mutex<UserStream>>> {
        self.users().get(user).cloned()
    }

    /// The user's stream, created empty if needed.
    pub(crate) fn get_or_create(&self, user: &str) -> Arc<Mutex<UserStream>> {
        self.sweep_now_and_then();
        self.users().entry(Arc::from(user)).or_default().clone()
    }

    fn sweep_now_and_then(&self) {
        let due = {
            let mut since = self.since_sweep.lock().unwrap_or_else(|p| p.into_inner());
            since.0 += 1;
            if since.0 < SWEEP_EVERY {
                return;
            }
            since.0 = 0;
            true
        };
        if due {
            self.sweep(Instant::now());
        }
    }

    /// Evicts aged entries and expired sessions everywhere, and drops streams that keep nothing.
    pub(crate) fn sweep(&self, now: Instant) {
        let streams: Vec<_> = self.users().values().cloned().collect();
        for stream in &streams {
            lock(stream).expire(&self.policy, now);
        }
        drop(streams);
        // A stream is dropped only if nothing else holds it (`strong_count` 1: no operation in flight).
        self.users()
            .retain(|_, stream| Arc::strong_count(stream) > 1 || !lock(stream).is_empty());
    }
}

pub(crate) fn lock(stream: &Mutex<UserStream>) -> MutexGuard<'_, UserStream> {
    // Every method leaves the stream consistent before anything can panic.
    stream.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::sessions::Retention;
    use std::time::Duration;

    fn policy(max_messages: usize, max_bytes: usize, max_age: Duration) -> SessionPolicy {
        SessionPolicy {
            retention: Retention {
                max_messages,
                max_bytes,
                max_age,
            },
            session_ttl: Duration::from_secs(60),
        }
    }

    fn frame(n: u64) -> EncodedFrame {
        EncodedFrame::from(format!("{{\"op\":0,\"d\":{n}}}"))
    }

    fn conn(n: u64) -> ConnectionId {
        ConnectionId::new(NodeId(1), n)
    }

    #[test]
    fn an_idle_session_record_stays_small() {
        // Every idle resumable connection carries one (the idle budget is 4 KiB per connection in all).
        assert!(std::mem::size_of::<(SessionId, Record)>() <= 48);
    }

    #[test]
    fn mailbox_is_kept_until_acknowledged_then_trimmed() {
        let p = policy(100, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let mut s = UserStream::default();
        for n in 1..=3 {
            assert_eq!(s.append(&p, frame(n), now), n);
        }
        let a = SessionId(1);
        assert_eq!(s.open(&p, a, conn(1), now).start, 0);
        let read = s.read(&p, 0, 10, now).unwrap();
        assert_eq!(
            read.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        s.acknowledge(&p, a, 3, now);
        assert!(s.entries.is_empty());
        // A second device opened later starts after what the first acknowledged.
        assert_eq!(s.open(&p, SessionId(2), conn(2), now).start, 3);
    }

    #[test]
    fn every_kept_session_must_acknowledge() {
        let p = policy(100, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let mut s = UserStream::default();
        let (a, b) = (SessionId(1), SessionId(2));
        s.open(&p, a, conn(1), now);
        s.open(&p, b, conn(2), now);
        s.append(&p, frame(1), now);
        s.append(&p, frame(2), now);
        s.acknowledge(&p, a, 2, now);
        assert_eq!(s.entries.len(), 2, "b has not acknowledged");
        s.release(&p, b, conn(2), Release::Keep, now);
        assert_eq!(
            s.claim(&p, b, conn(3), 0, now),
            Ok(Claimed { previous: None })
        );
        s.acknowledge(&p, b, 1, now);
        assert_eq!(s.entries.len(), 1);
        s.release(&p, b, conn(3), Release::End, now);
        assert!(s.entries.is_empty());
    }

    #[test]
    fn each_retention_bound_is_exact() {
        let now = Instant::now();
        // Count.
        let p = policy(3, 1 << 20, Duration::from_secs(60));
        let mut s = UserStream::default();
        let a = SessionId(1);
        s.open(&p, a, conn(1), now);
        s.release(&p, a, conn(1), Release::Keep, now);
        for n in 1..=5 {
            s.append(&p, frame(n), now);
        }
        assert_eq!(s.oldest(), 3);
        assert_eq!(
            s.claim(&p, a, conn(2), 1, now),
            Err(ResumeRefusal::RetentionExceeded)
        );
        assert!(s.claim(&p, a, conn(2), 2, now).is_ok());
        // Bytes: each frame is 14 bytes; 30 bytes keep two.
        let p = policy(100, 30, Duration::from_secs(60));
        let mut s = UserStream::default();
        s.open(&p, a, conn(1), now);
        for n in 1..=4 {
            s.append(&p, frame(n), now);
        }
        assert_eq!(s.entries.len(), 2);
        assert_eq!(
            s.read(&p, 1, 10, now),
            Err(StreamGap {
                after: 1,
                oldest: 3
            })
        );
        assert_eq!(s.read(&p, 2, 10, now).map(|r| r.entries.len()), Ok(2));
        // Age.
        let p = policy(100, 1 << 20, Duration::from_millis(50));
        let mut s = UserStream::default();
        s.open(&p, a, conn(1), now);
        s.append(&p, frame(1), now);
        s.append(&p, frame(2), now + Duration::from_millis(40));
        let later = now + Duration::from_millis(60);
        assert_eq!(
            s.read(&p, 0, 10, later),
            Err(StreamGap {
                after: 0,
                oldest: 2
            })
        );
        assert_eq!(s.read(&p, 1, 10, later).map(|r| r.entries.len()), Ok(1));
    }

    #[test]
    fn sessions_expire_and_foreign_ids_are_unknown() {
        let p = policy(100, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let mut s = UserStream::default();
        let a = SessionId(1);
        s.open(&p, a, conn(1), now);
        assert_eq!(
            s.claim(&p, SessionId(9), conn(2), 0, now),
            Err(ResumeRefusal::UnknownSession)
        );
        // A takeover reports the connection that held it; its late release changes nothing.
        assert_eq!(
            s.claim(&p, a, conn(2), 0, now),
            Ok(Claimed {
                previous: Some(conn(1))
            })
        );
        s.release(&p, a, conn(1), Release::End, now);
        assert!(s.sessions.contains_key(&a));
        s.release(&p, a, conn(2), Release::Keep, now);
        assert_eq!(
            s.claim(&p, a, conn(3), 5, now),
            Err(ResumeRefusal::SequenceAhead)
        );
        let expired = now + p.session_ttl + Duration::from_millis(1);
        assert_eq!(
            s.claim(&p, a, conn(3), 0, expired),
            Err(ResumeRefusal::UnknownSession)
        );
    }
}
