//! The in-memory engine: the nodes of one process (usually one) share it. The default, with zero setup.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{
    BoxFuture, Engine, EngineError, Health, LocalNode, NodeStatus, Presence, PublishError,
};
use crate::ids::NodeId;
use crate::publication::Publication;
use crate::target::{Delivery, Recipients};

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeId, Arc<dyn LocalNode>>,
    /// Authenticated sessions per user id and node.
    users: HashMap<String, BTreeMap<NodeId, usize>>,
}

/// Connects the nodes of one process. Clone it (or share an `Arc`) to attach several nodes, as tests do;
/// a single server builds its own.
///
/// Delivery is synchronous: [`Engine::publish`] has queued the frame on every recipient's session when it
/// returns, and it never fails.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    state: Arc<Mutex<State>>,
}

impl MemoryEngine {
    /// An engine with no node attached yet.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nodes a publication is for, the origin first. Collected under the lock and delivered outside it:
    /// a node's `deliver` takes its own locks, and the node calls this engine while holding them.
    fn recipients(&self, publication: &Publication) -> Vec<Arc<dyn LocalNode>> {
        let state = self.state();
        let mut nodes: Vec<Arc<dyn LocalNode>> = match &publication.target.recipients {
            Recipients::All => state.nodes.values().cloned().collect(),
            Recipients::Users(ids) => {
                let mut wanted = std::collections::BTreeSet::new();
                for id in ids {
                    if publication.target.excluding.contains(id) {
                        continue;
                    }
                    if let Some(per_node) = state.users.get(id) {
                        wanted.extend(per_node.keys().copied());
                    }
                }
                wanted
                    .iter()
                    .filter_map(|node| state.nodes.get(node).cloned())
                    .collect()
            }
            Recipients::Connection(id) => {
                state.nodes.get(&id.node()).cloned().into_iter().collect()
            }
        };
        if let Some(origin) = publication.origin {
            if let Some(at) = nodes.iter().position(|node| node.node_id() == origin) {
                let own = nodes.remove(at);
                nodes.insert(0, own);
            }
        }
        nodes
    }

    fn route(&self, publication: &Publication) -> Delivery {
        let mut delivery = Delivery::default();
        for node in self.recipients(publication) {
            let here = node.deliver(publication);
            delivery.queued += here.queued;
            delivery.slow_consumers += here.slow_consumers;
            if Some(node.node_id()) != publication.origin {
                delivery.nodes += 1;
            }
        }
        delivery
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine for MemoryEngine {
    fn attach(&self, node: Arc<dyn LocalNode>) {
        self.state().nodes.insert(node.node_id(), node);
    }

    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()> {
        let mut state = self.state();
        state.nodes.remove(&node);
        state.users.retain(|_, per_node| {
            per_node.remove(&node);
            !per_node.is_empty()
        });
        Box::pin(std::future::ready(()))
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Delivery, PublishError>> {
        let delivery = self.route(&publication);
        Box::pin(std::future::ready(Ok(delivery)))
    }

    fn user_session_added(&self, node: NodeId, user_id: &str) {
        let mut state = self.state();
        *state
            .users
            .entry(user_id.to_owned())
            .or_default()
            .entry(node)
            .or_default() += 1;
    }

    fn user_session_removed(&self, node: NodeId, user_id: &str) {
        let mut state = self.state();
        if let Some(per_node) = state.users.get_mut(user_id) {
            if let Some(count) = per_node.get_mut(&node) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_node.remove(&node);
                }
            }
            if per_node.is_empty() {
                state.users.remove(user_id);
            }
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence(&self, user_id: &str) -> BoxFuture<'_, Result<Presence, EngineError>> {
        let nodes = self
            .state()
            .users
            .get(user_id)
            .map(|per_node| per_node.iter().map(|(n, c)| (*n, *c)).collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(Presence { nodes })))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStatus>, EngineError>> {
        let nodes: Vec<Arc<dyn LocalNode>> = self.state().nodes.values().cloned().collect();
        let now = now_ms();
        let statuses = nodes
            .iter()
            .map(|node| NodeStatus {
                node: node.node_id(),
                connections: node.connection_count(),
                last_seen_ms: now,
            })
            .collect();
        Box::pin(std::future::ready(Ok(statuses)))
    }

    fn health(&self) -> Health {
        Health::Healthy
    }
}
