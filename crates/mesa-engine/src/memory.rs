//! The in-memory engine: the nodes of one process (usually one) share it. The default, with zero setup.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{
    BoxFuture, Engine, EngineError, Health, LocalNode, NodeStatus, Presence, PublishError,
};
use crate::ids::NodeId;
use crate::publication::Publication;
use crate::target::{Delivery, Recipients};

/// Connects the nodes of one process. Clone it (or share an `Arc`) to attach several nodes, as tests do;
/// a single server builds its own.
///
/// It keeps no per-user state: the nodes' own user indexes are the truth, and routing and presence ask
/// them (a copy here would cost every connection a second index entry). Delivery is synchronous:
/// [`Engine::publish`] has queued the frame on every recipient's session when it returns, and it never fails.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    nodes: Arc<Mutex<BTreeMap<NodeId, Arc<dyn LocalNode>>>>,
}

impl MemoryEngine {
    /// An engine with no node attached yet.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, Arc<dyn LocalNode>>> {
        // Every update below leaves the map consistent before anything can panic.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attached nodes, copied out: a node's methods take its own locks, and a node calls this engine
    /// while holding them, so no node is called under this engine's lock.
    fn attached(&self) -> Vec<Arc<dyn LocalNode>> {
        self.lock().values().cloned().collect()
    }

    /// The nodes a publication is for, the origin first.
    fn recipients(&self, publication: &Publication) -> Vec<Arc<dyn LocalNode>> {
        let target = &publication.target;
        let mut nodes: Vec<Arc<dyn LocalNode>> = match &target.recipients {
            Recipients::All => self.attached(),
            Recipients::Users(ids) => {
                let mut nodes = self.attached();
                nodes.retain(|node| {
                    ids.iter()
                        .any(|id| !target.excluding.contains(id) && node.user_session_count(id) > 0)
                });
                nodes
            }
            Recipients::Connection(id) => {
                self.lock().get(&id.node()).cloned().into_iter().collect()
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
        self.lock().insert(node.node_id(), node);
    }

    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()> {
        self.lock().remove(&node);
        Box::pin(std::future::ready(()))
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Delivery, PublishError>> {
        let delivery = self.route(&publication);
        Box::pin(std::future::ready(Ok(delivery)))
    }

    /// Nothing to do: routing asks the nodes.
    fn user_session_added(&self, _node: NodeId, _user_id: &str) {}

    /// Nothing to do: routing asks the nodes.
    fn user_session_removed(&self, _node: NodeId, _user_id: &str) {}

    fn flush(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence(&self, user_id: &str) -> BoxFuture<'_, Result<Presence, EngineError>> {
        let nodes = self
            .attached()
            .iter()
            .map(|node| (node.node_id(), node.user_session_count(user_id)))
            .filter(|(_, sessions)| *sessions > 0)
            .collect();
        Box::pin(std::future::ready(Ok(Presence { nodes })))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStatus>, EngineError>> {
        let now = now_ms();
        let statuses = self
            .attached()
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
