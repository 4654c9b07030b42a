//! The in-memory engine: the nodes of one process (usually one) share it. The default, with zero setup.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::engine::{
    BoxFuture, Engine, EngineError, Health, LocalNode, NodeStatus, Presence, PublishError,
};
use crate::ids::{ConnectionId, NodeId};
use crate::publication::{Action, DeliveryClass, Publication};
use crate::sessions::{
    Claimed, Opened, Release, ResumeRefusal, SessionId, SessionPolicy, StreamGap, StreamRead,
};
use crate::streams::{lock, Streams};
use crate::target::{Delivery, Recipients, Target};

/// Connects the nodes of one process. Clone it (or share an `Arc`) to attach several nodes, as tests do;
/// a single server builds its own.
///
/// Routing keeps no per-user state: the nodes' own user indexes are the truth, and routing and presence ask
/// them (a copy here would cost every connection a second index entry). Delivery is synchronous:
/// [`Engine::publish`] has queued the frame on every recipient's session when it returns, and it never fails.
///
/// Resumable sessions and per-user streams are kept in memory (see [`crate::sessions`]): a session
/// survives a dropped connection, not the process.
#[derive(Clone)]
pub struct MemoryEngine {
    nodes: Arc<Mutex<BTreeMap<NodeId, Arc<dyn LocalNode>>>>,
    streams: Option<Arc<Streams>>,
}

impl Default for MemoryEngine {
    fn default() -> MemoryEngine {
        MemoryEngine::with_sessions(SessionPolicy::default())
    }
}

impl MemoryEngine {
    /// An engine with no node attached yet, keeping resumable sessions with the default
    /// [`SessionPolicy`].
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// An engine that keeps resumable sessions and per-user streams within `policy`.
    pub fn with_sessions(policy: SessionPolicy) -> MemoryEngine {
        MemoryEngine {
            nodes: Arc::default(),
            streams: Some(Arc::new(Streams::new(policy))),
        }
    }

    /// An engine that keeps nothing: no resume, every send is live only.
    pub fn without_sessions() -> MemoryEngine {
        MemoryEngine {
            nodes: Arc::default(),
            streams: None,
        }
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
        let delivery = match (&self.streams, &publication) {
            (
                Some(streams),
                Publication {
                    action: Action::Send(_),
                    class: DeliveryClass::Durable,
                    target:
                        Target {
                            recipients: Recipients::Users(_),
                            ..
                        },
                    ..
                },
            ) => self.publish_durable(streams, publication),
            _ => self.route(&publication),
        };
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

    fn session_policy(&self) -> Option<SessionPolicy> {
        self.streams.as_ref().map(|streams| streams.policy)
    }

    fn open_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
    ) -> BoxFuture<'_, Result<Opened, EngineError>> {
        let result = self.sessions().map(|streams| {
            let stream = streams.get_or_create(user_id);
            let opened = lock(&stream).open(&streams.policy, session, holder, Instant::now());
            opened
        });
        Box::pin(std::future::ready(result))
    }

    fn claim_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        after: u64,
    ) -> BoxFuture<'_, Result<Result<Claimed, ResumeRefusal>, EngineError>> {
        let result = self.sessions().map(|streams| match streams.get(user_id) {
            None => Err(ResumeRefusal::UnknownSession),
            Some(stream) => {
                lock(&stream).claim(&streams.policy, session, holder, after, Instant::now())
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn acknowledge(&self, user_id: &str, session: SessionId, seq: u64) {
        if let Some(streams) = &self.streams {
            if let Some(stream) = streams.get(user_id) {
                lock(&stream).acknowledge(&streams.policy, session, seq, Instant::now());
            }
        }
    }

    fn release_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        release: Release,
    ) {
        if let Some(streams) = &self.streams {
            if let Some(stream) = streams.get(user_id) {
                lock(&stream).release(&streams.policy, session, holder, release, Instant::now());
            }
        }
    }

    fn read_stream(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Result<StreamRead, StreamGap>, EngineError>> {
        let result = self.sessions().map(|streams| match streams.get(user_id) {
            None if after == 0 => Ok(StreamRead::default()),
            None => Err(StreamGap { after, oldest: 1 }),
            Some(stream) => lock(&stream).read(&streams.policy, after, limit, Instant::now()),
        });
        Box::pin(std::future::ready(result))
    }
}

impl MemoryEngine {
    fn sessions(&self) -> Result<&Streams, EngineError> {
        self.streams.as_deref().ok_or(EngineError::Unsupported)
    }

    fn user_is_live(&self, user_id: &str) -> bool {
        self.attached()
            .iter()
            .any(|node| node.user_session_count(user_id) > 0)
    }

    /// A durable send to users: for each user that keeps a stream (a resumable session is kept, or the user
    /// is offline), appended and then handed to the user's nodes under that user's lock, so that nodes see
    /// one user's sequence in order; the other users get the plain publication.
    fn publish_durable(&self, streams: &Streams, publication: Publication) -> Delivery {
        let Publication {
            origin,
            target,
            action,
            class,
            ..
        } = publication;
        let (Action::Send(frame), Recipients::Users(ids)) = (&action, &target.recipients) else {
            return Delivery::default();
        };
        let mut delivery = Delivery::default();
        let mut plain = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if target.excluding.contains(id) || !seen.insert(id.as_str()) {
                continue;
            }
            let live = self.user_is_live(id);
            let stream = if live {
                streams.get(id)
            } else {
                Some(streams.get_or_create(id))
            };
            let Some(stream) = stream else {
                plain.push(id.clone());
                continue;
            };
            let mut guard = lock(&stream);
            if !guard.wants_append(live) {
                drop(guard);
                plain.push(id.clone());
                continue;
            }
            let seq = guard.append(&streams.policy, frame.clone(), Instant::now());
            let one = Publication {
                origin,
                target: Target::users([id.clone()]),
                action: action.clone(),
                class,
                sequence: Some(seq),
            };
            delivery = delivery.merge(self.route(&one));
            drop(guard);
        }
        if !plain.is_empty() {
            let rest = Publication {
                origin,
                target: Target::users(plain),
                action,
                class,
                sequence: None,
            };
            delivery = delivery.merge(self.route(&rest));
        }
        delivery
    }
}
