//! The sessions of this node, indexed by connection id and by user id, and local fan-out.
//!
//! The registry is the one owner of who a session is: a session's identity and the user index that finds it
//! change together, under one lock, so a send to a user reaches exactly the sessions authenticated as that
//! user at that moment. Fan-out holds the lock for reading; identity changes take it for writing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use mesa_engine::{Engine, NodeId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::SendError;
use crate::ids::ConnectionId;
use crate::outbox::PushError;
use crate::resume::Offered;
use crate::session::{Identity, Session, StoredIdentity};
use crate::target::{Delivery, Recipients, Target};

/// The sessions of one user id. Most users have one device, and a map of one entry costs a hash table
/// per connection; many devices get a map so that removing one of 40 000 is not a scan.
enum UserSessions {
    One(Session),
    Many(HashMap<ConnectionId, Session>),
}

impl UserSessions {
    fn len(&self) -> usize {
        match self {
            UserSessions::One(_) => 1,
            UserSessions::Many(sessions) => sessions.len(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Session)) {
        match self {
            UserSessions::One(session) => f(session),
            UserSessions::Many(sessions) => sessions.values().for_each(f),
        }
    }

    fn insert(&mut self, session: &Session) {
        match self {
            UserSessions::One(existing) if existing.connection_id() == session.connection_id() => {}
            UserSessions::One(existing) => {
                let mut sessions = HashMap::with_capacity(2);
                sessions.insert(existing.connection_id(), existing.clone());
                sessions.insert(session.connection_id(), session.clone());
                *self = UserSessions::Many(sessions);
            }
            UserSessions::Many(sessions) => {
                sessions.insert(session.connection_id(), session.clone());
            }
        }
    }

    /// Removes one session; `true` when none is left.
    fn remove(&mut self, connection_id: ConnectionId) -> bool {
        match self {
            UserSessions::One(existing) => existing.connection_id() == connection_id,
            UserSessions::Many(sessions) => {
                sessions.remove(&connection_id);
                sessions.is_empty()
            }
        }
    }
}

#[derive(Default)]
struct Index {
    sessions: HashMap<ConnectionId, Session>,
    /// Sessions by user id.
    users: HashMap<Arc<str>, UserSessions>,
}

impl Index {
    fn unindex(&mut self, user_id: &Arc<str>, connection_id: ConnectionId) {
        if let Some(sessions) = self.users.get_mut(user_id) {
            if sessions.remove(connection_id) {
                self.users.remove(user_id);
            }
        }
    }

    fn index(&mut self, user_id: &Arc<str>, session: &Session) {
        match self.users.get_mut(user_id) {
            Some(sessions) => sessions.insert(session),
            None => {
                self.users
                    .insert(user_id.clone(), UserSessions::One(session.clone()));
            }
        }
    }
}

/// Why an authentication could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityError {
    /// The session is authenticated as another user id (close 4005).
    OtherUser,
    /// The session has left the registry (its connection is gone).
    Gone,
}

pub(crate) struct Registry {
    index: RwLock<Index>,
    node: NodeId,
    /// Told of every change to the user index, under the index lock, so that its routing and presence
    /// follow the index in the same order.
    engine: Arc<dyn Engine>,
}

fn write_identity(session: &Session, identity: Option<Arc<StoredIdentity>>) {
    *session
        .shared
        .identity
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = identity;
}

impl Registry {
    pub(crate) fn new(node: NodeId, engine: Arc<dyn Engine>) -> Registry {
        Registry {
            index: RwLock::default(),
            node,
            engine,
        }
    }

    fn index_user(&self, index: &mut Index, user_id: &Arc<str>, session: &Session) {
        index.index(user_id, session);
        self.engine.user_session_added(self.node, user_id);
    }

    fn unindex_user(&self, index: &mut Index, user_id: &Arc<str>, connection_id: ConnectionId) {
        index.unindex(user_id, connection_id);
        self.engine.user_session_removed(self.node, user_id);
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        // Every write below leaves the index consistent before anything can panic; keep going.
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, session: Session) {
        self.write()
            .sessions
            .insert(session.connection_id(), session);
    }

    /// Takes a session out of the registry: it leaves the user index, its queue refuses every later send,
    /// and what was still queued is dropped. Returns how many queued frames will never be written.
    /// The identity stays readable on the handle (for `on_disconnection`). Idempotent.
    pub(crate) fn remove(&self, session: &Session) -> usize {
        let mut index = self.write();
        index.sessions.remove(&session.connection_id());
        if let Some(identity) = session.stored_identity() {
            self.unindex_user(&mut index, &identity.id, session.connection_id());
        }
        // Shut under the lock: no fan-out can find the session and push after this.
        session.shared.outbox.shut()
    }

    /// Records a successful authentication: the session becomes `identity` (same user id: the user object is
    /// replaced) and is indexed under its user id.
    pub(crate) fn authenticate(
        &self,
        session: &Session,
        identity: Identity,
    ) -> Result<(), IdentityError> {
        let mut index = self.write();
        if !index.sessions.contains_key(&session.connection_id()) {
            return Err(IdentityError::Gone);
        }
        let already = match session.stored_identity() {
            Some(current) if *current.id != *identity.id => return Err(IdentityError::OtherUser),
            Some(_) => true,
            None => false,
        };
        let identity = Arc::new(StoredIdentity::new(identity));
        if !already {
            self.index_user(&mut index, &identity.id, session);
        }
        write_identity(session, Some(identity));
        Ok(())
    }

    /// Replaces the identity of an authenticated session (Mesa 1.5 `client.updateUser`), re-indexing it under
    /// the new user id in the same step. `false` when the session is not authenticated or has left.
    pub(crate) fn update_user(&self, session: &Session, identity: Identity) -> bool {
        let mut index = self.write();
        if !index.sessions.contains_key(&session.connection_id()) {
            return false;
        }
        let Some(old) = session.stored_identity() else {
            return false;
        };
        let identity = Arc::new(StoredIdentity::new(identity));
        if old.id != identity.id {
            self.unindex_user(&mut index, &old.id, session.connection_id());
            self.index_user(&mut index, &identity.id, session);
        }
        write_identity(session, Some(identity));
        true
    }

    /// Forgets a session's identity (a refused re-authentication): sends to its old user id no longer reach it.
    pub(crate) fn deauthenticate(&self, session: &Session) {
        let mut index = self.write();
        if let Some(old) = session.stored_identity() {
            self.unindex_user(&mut index, &old.id, session.connection_id());
        }
        write_identity(session, None);
    }

    /// Wakes every session's connection task (see [`Outbox::wake`](crate::outbox::Outbox::wake)).
    pub(crate) fn wake_all(&self) {
        for session in self.read().sessions.values() {
            session.shared.outbox.wake();
        }
    }

    pub(crate) fn get(&self, id: ConnectionId) -> Option<Session> {
        self.read().sessions.get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.read().sessions.len()
    }

    /// Every user id with a session here, with how many.
    pub(crate) fn user_sessions(&self) -> Vec<(String, usize)> {
        self.read()
            .users
            .iter()
            .map(|(id, sessions)| (id.to_string(), sessions.len()))
            .collect()
    }

    /// The sessions on this node authenticated as `user_id`.
    pub(crate) fn sessions_of(&self, user_id: &str) -> Vec<Session> {
        let mut sessions = Vec::new();
        if let Some(of_user) = self.read().users.get(user_id) {
            of_user.for_each(|session| sessions.push(session.clone()));
        }
        sessions
    }

    /// How many sessions on this node are authenticated as `user_id`.
    pub(crate) fn user_session_count(&self, user_id: &str) -> usize {
        self.read().users.get(user_id).map_or(0, UserSessions::len)
    }

    /// Queues `text` on every session `target` names. `authenticated_only` makes sends to everyone skip
    /// unauthenticated sessions.
    pub(crate) fn deliver(
        &self,
        text: &Utf8Bytes,
        target: &Target,
        authenticated_only: bool,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        self.for_each(target, authenticated_only, |session| {
            match session.send_encoded(text.clone()) {
                Ok(()) => delivery.queued += 1,
                Err(SendError::QueueFull) => delivery.slow_consumers += 1,
                Err(_) => {}
            }
        });
        delivery
    }

    /// Queues a durable frame at position `seq` of `user_id`'s stream: resumable sessions get it with `s`
    /// through their stream gate (in order, once), the others as it is.
    pub(crate) fn deliver_sequenced(&self, text: &Utf8Bytes, user_id: &str, seq: u64) -> Delivery {
        let mut delivery = Delivery::default();
        let mut sequenced: Option<Utf8Bytes> = None;
        let index = self.read();
        let Some(sessions) = index.users.get(user_id) else {
            return delivery;
        };
        sessions.for_each(|session| {
            let result = match session.stream() {
                None => session.send_encoded(text.clone()),
                Some(stream) => {
                    let offered = stream.offer(seq, &session.shared.outbox, || {
                        sequenced
                            .get_or_insert_with(|| {
                                mesa_protocol::with_sequence(text.as_str(), seq).into()
                            })
                            .clone()
                    });
                    match offered {
                        Offered::Queued => Ok(()),
                        // Not lost: the connection task fills the gap from the stream.
                        Offered::Duplicate | Offered::Gap => return,
                        Offered::Refused(PushError::Full) => Err(SendError::QueueFull),
                        Offered::Refused(PushError::Closed) => Err(SendError::Closed),
                    }
                }
            };
            match result {
                Ok(()) => delivery.queued += 1,
                Err(SendError::QueueFull) => delivery.slow_consumers += 1,
                Err(_) => {}
            }
        });
        delivery
    }

    /// Has every resumable session re-read its stream (the engine may have lost sequenced frames).
    pub(crate) fn resync_streams(&self) {
        let index = self.read();
        for session in index.sessions.values() {
            if let Some(stream) = session.stream() {
                stream.mark_gap();
                session.shared.outbox.wake();
            }
        }
    }

    /// Calls `f` once for every session `target` names (each session at most once).
    pub(crate) fn for_each(
        &self,
        target: &Target,
        authenticated_only: bool,
        mut f: impl FnMut(&Session),
    ) {
        let index = self.read();
        let excluded = |session: &Session| {
            !target.excluding.is_empty()
                && session
                    .stored_identity()
                    .is_some_and(|identity| target.excluding.iter().any(|id| **id == *identity.id))
        };
        match &target.recipients {
            Recipients::All => {
                let mut excluded: HashSet<ConnectionId> = HashSet::new();
                for sessions in target
                    .excluding
                    .iter()
                    .filter_map(|id| index.users.get(id.as_str()))
                {
                    sessions.for_each(|session| {
                        excluded.insert(session.connection_id());
                    });
                }
                for session in index.sessions.values() {
                    if authenticated_only && !session.has_identity() {
                        continue;
                    }
                    if !excluded.contains(&session.connection_id()) {
                        f(session);
                    }
                }
            }
            Recipients::Users(ids) => {
                let mut seen = HashSet::new();
                for id in ids {
                    if target.excluding.contains(id) || !seen.insert(id) {
                        continue;
                    }
                    if let Some(sessions) = index.users.get(id.as_str()) {
                        sessions.for_each(&mut f);
                    }
                }
            }
            Recipients::Connection(connection_id) => {
                if let Some(session) = index.sessions.get(connection_id) {
                    if !excluded(session) {
                        f(session);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Identity;

    fn sessions_of_one_user(registry: &Registry, n: u64) -> Vec<Session> {
        (0..n)
            .map(|seq| {
                let session = Session::new(
                    ConnectionId::new(NodeId(1), seq),
                    None,
                    Default::default(),
                    crate::outbox::Outbox::new(16, 1024),
                    std::sync::Weak::<()>::new(),
                );
                registry.insert(session.clone());
                registry
                    .authenticate(&session, Identity::new("u", serde_json::Value::Null))
                    .expect("authenticated");
                session
            })
            .collect()
    }

    /// The fastest of three runs that each remove `n` sessions of one user.
    fn time_to_remove(n: u64) -> Duration {
        (0..3)
            .map(|_| {
                let registry = Registry::new(NodeId(1), Arc::new(mesa_engine::MemoryEngine::new()));
                let sessions = sessions_of_one_user(&registry, n);
                let started = Instant::now();
                for session in &sessions {
                    registry.remove(session);
                }
                let took = started.elapsed();
                assert_eq!((registry.len(), registry.user_session_count("u")), (0, 0));
                took
            })
            .min()
            .unwrap_or_default()
    }

    /// Defect 12 of issue #7: 40 000 sessions of one user took 2.2 s to close (each removal scanned the
    /// user's list). Ten times the sessions must cost about ten times the time, not a hundred: the ratio,
    /// measured in one run, is what is checked, not a duration.
    #[test]
    fn removing_the_sessions_of_one_user_costs_linear_time() {
        let (small, large) = (time_to_remove(4_000), time_to_remove(40_000));
        let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
        println!("4 000 sessions: {small:?}, 40 000: {large:?}, ratio {ratio:.1}");
        assert!(ratio < 40.0, "10× the sessions took {ratio:.1}× the time");
    }
}
