//! This node's authenticated sessions per user, as the server announced them, and what of it Redis does
//! not know yet. Pure data: the engine's background pass writes it out (see `gateway`).
//!
//! The counts mirror `user_session_added` / `user_session_removed` one for one, which the server calls in
//! the order of its user index. They, not a later `LocalNode::user_sessions()` snapshot, are what presence
//! is rebuilt from after a reconnect: a snapshot taken while a call is on its way would count that session
//! twice once the call lands.

use std::collections::{HashMap, HashSet};

/// Users whose presence entry and subscription must be written, with their count at the time.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    /// The change counter this pass covers: once it succeeded, every change up to it is in Redis.
    pub(crate) version: u64,
    /// Each changed user with its session count now (0: gone from this node).
    pub(crate) users: Vec<(String, usize)>,
    /// Whether this node's liveness and info must be written too.
    pub(crate) heartbeat: bool,
}

/// The mirror of this node's sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    counts: HashMap<String, usize>,
    /// Users changed since the last successful write (coalesced: many changes, one write).
    dirty: HashSet<String>,
    /// Bumped by every change or request: what [`Engine::flush`](mesa_engine::Engine::flush) waits for.
    issued: u64,
    heartbeat: bool,
}

impl Sessions {
    /// A session of `user` appeared; returns the change number.
    pub(crate) fn added(&mut self, user: &str) -> u64 {
        *self.counts.entry(user.to_owned()).or_default() += 1;
        self.dirty.insert(user.to_owned());
        self.issued += 1;
        self.issued
    }

    /// A session of `user` ended. Returns the change number.
    pub(crate) fn removed(&mut self, user: &str) -> u64 {
        if let Some(count) = self.counts.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.counts.remove(user);
            }
            self.dirty.insert(user.to_owned());
        }
        self.issued += 1;
        self.issued
    }

    /// Asks for a pass (with a liveness write if `heartbeat`) and returns its change number.
    pub(crate) fn request(&mut self, heartbeat: bool) -> u64 {
        self.heartbeat |= heartbeat;
        self.issued += 1;
        self.issued
    }

    /// Marks every user for writing again (Redis lost them) and returns the change number.
    pub(crate) fn rebuild(&mut self) -> u64 {
        self.dirty.extend(self.counts.keys().cloned());
        self.request(true)
    }

    /// Takes what must be written now.
    pub(crate) fn take(&mut self) -> Pass {
        let users = self
            .dirty
            .drain()
            .map(|user| {
                let count = self.counts.get(&user).copied().unwrap_or(0);
                (user, count)
            })
            .collect();
        Pass {
            version: self.issued,
            users,
            heartbeat: std::mem::take(&mut self.heartbeat),
        }
    }

    /// Puts back what a failed pass did not write (later changes to those users win: they are dirty too).
    pub(crate) fn give_back(&mut self, pass: Pass) {
        self.dirty
            .extend(pass.users.into_iter().map(|(user, _)| user));
        self.heartbeat |= pass.heartbeat;
    }

    /// Sessions of `user` on this node.
    pub(crate) fn count(&self, user: &str) -> usize {
        self.counts.get(user).copied().unwrap_or(0)
    }

    /// Users with a session on this node.
    pub(crate) fn users(&self) -> Vec<String> {
        self.counts.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_per_user() {
        let mut s = Sessions::default();
        s.added("a");
        s.added("a");
        s.added("b");
        s.removed("b");
        let mut pass = s.take();
        pass.users.sort();
        assert_eq!(pass.users, vec![("a".into(), 2), ("b".into(), 0)]);
        assert_eq!(pass.version, 4);
        assert_eq!(s.take().users, vec![]);
        s.removed("nobody");
        assert_eq!(s.count("a"), 2);
    }

    #[test]
    fn a_failed_pass_is_retried_with_fresh_counts() {
        let mut s = Sessions::default();
        s.added("a");
        let pass = s.take();
        s.added("a");
        s.give_back(pass);
        assert_eq!(s.take().users, vec![("a".into(), 2)]);
        s.rebuild();
        let pass = s.take();
        assert!(pass.heartbeat);
        assert_eq!(pass.users, vec![("a".into(), 2)]);
    }
}
