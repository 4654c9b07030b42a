//! The connections of this node, indexed by connection and by user id, and local fan-out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::client::{Client, ConnectionId};
use crate::router::{Recipients, Target};

#[derive(Default)]
pub(crate) struct Registry {
    clients: RwLock<HashMap<ConnectionId, Client>>,
    users: RwLock<HashMap<Arc<str>, Vec<Client>>>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub(crate) fn insert(&self, client: Client) {
        write(&self.clients).insert(client.connection_id(), client);
    }

    pub(crate) fn remove(&self, client: &Client) {
        write(&self.clients).remove(&client.connection_id());
        if let Some(identity) = client.stored_identity() {
            self.unindex(client, &identity.id);
        }
    }

    pub(crate) fn get(&self, id: ConnectionId) -> Option<Client> {
        read(&self.clients).get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.clients).len()
    }

    /// Moves `client` from `old` to `new` in the user index.
    pub(crate) fn reindex(&self, client: &Client, old: Option<Arc<str>>, new: &Arc<str>) {
        if old.as_ref() == Some(new) {
            return;
        }
        if let Some(old) = old {
            self.unindex(client, &old);
        }
        // A connection that already left must not be indexed again.
        if read(&self.clients).contains_key(&client.connection_id()) {
            write(&self.users)
                .entry(new.clone())
                .or_default()
                .push(client.clone());
        }
    }

    fn unindex(&self, client: &Client, user_id: &str) {
        let mut users = write(&self.users);
        if let Some(list) = users.get_mut(user_id) {
            list.retain(|c| c.connection_id() != client.connection_id());
            if list.is_empty() {
                users.remove(user_id);
            }
        }
    }

    /// Whether any connection on this node is authenticated as `user_id`.
    pub(crate) fn has_user(&self, user_id: &str) -> bool {
        read(&self.users).contains_key(user_id)
    }

    /// Queues `text` on every local connection `target` names. Returns how many connections it was queued on.
    ///
    /// `authenticated_only` makes sends to everyone skip unauthenticated connections.
    pub(crate) fn deliver(
        &self,
        text: &Utf8Bytes,
        target: &Target,
        authenticated_only: bool,
    ) -> usize {
        let mut delivered = 0;
        self.for_each(target, authenticated_only, |client| {
            if client.send_encoded(text.clone()).is_ok() {
                delivered += 1;
            }
        });
        delivered
    }

    /// Calls `f` once for every local connection `target` names (each connection at most once).
    pub(crate) fn for_each(
        &self,
        target: &Target,
        authenticated_only: bool,
        mut f: impl FnMut(&Client),
    ) {
        match &target.recipients {
            Recipients::All => {
                let excluded: HashSet<ConnectionId> = if target.excluding.is_empty() {
                    HashSet::new()
                } else {
                    let users = read(&self.users);
                    target
                        .excluding
                        .iter()
                        .filter_map(|id| users.get(id.as_str()))
                        .flatten()
                        .map(Client::connection_id)
                        .collect()
                };
                for client in read(&self.clients).values() {
                    if authenticated_only && !client.is_authenticated() {
                        continue;
                    }
                    if !excluded.contains(&client.connection_id()) {
                        f(client);
                    }
                }
            }
            Recipients::Users(ids) => {
                let users = read(&self.users);
                let mut seen = HashSet::new();
                for id in ids {
                    if target.excluding.contains(id) || !seen.insert(id) {
                        continue;
                    }
                    for client in users.get(id.as_str()).into_iter().flatten() {
                        f(client);
                    }
                }
            }
            Recipients::Connection(connection_id) => {
                if let Some(client) = read(&self.clients).get(connection_id) {
                    let excluded = client.stored_identity().is_some_and(|identity| {
                        target.excluding.iter().any(|id| **id == *identity.id)
                    });
                    if !excluded {
                        f(client);
                    }
                }
            }
        }
    }
}
