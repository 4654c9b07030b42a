//! The interface between a node and the engine that connects it to other nodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::ids::{ConnectionId, NodeId};
use crate::publication::{EncodedFrame, Publication};
use crate::sessions::{
    Claimed, Opened, Release, ResumeRefusal, SessionId, SessionPolicy, StreamGap, StreamRead,
};
use crate::target::Delivery;

/// A boxed, sendable future (what the object-safe [`Engine`] methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node as its engine sees it: somewhere to hand publications, with counts for presence.
///
/// The server implements this over its registry of sessions. Calls come from the engine's own tasks and must
/// not block: [`LocalNode::deliver`] queues on sessions' bounded outbound queues and returns.
pub trait LocalNode: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// Queues a publication's frame on (or closes) the local sessions its target names, honouring
    /// `target.excluding`; returns what it did.
    fn deliver(&self, publication: &Publication) -> Delivery;
    /// How many authenticated sessions of `user_id` this node holds (0: none).
    fn user_session_count(&self, user_id: &str) -> usize;
    /// Open connections on this node (reported in [`NodeStatus::connections`]).
    fn connection_count(&self) -> usize;
    /// Every user id with an authenticated session on this node, with how many sessions: what an engine
    /// rebuilds its presence entries and subscriptions from after losing its backend.
    fn user_sessions(&self) -> Vec<(String, usize)>;

    /// The engine may have missed sequenced publications (it lost and regained its backend, or a buffer
    /// overflowed): every resumable session re-reads its user's stream from the last position it delivered,
    /// since no later publication may come to reveal the gap. Must not block.
    fn resync_streams(&self) {}
}

/// Why an engine could not take a publication or answer a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine's backend cannot be reached (Redis down, failing over, timing out). Retry later.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine's bounded queue towards its backend is full: the caller sends faster than it can forward.
    #[error("engine overloaded: {0}")]
    Overloaded(String),
    /// The engine has been shut down.
    #[error("engine closed")]
    Closed,
    /// The backend answered something the engine cannot use (a bug or a foreign writer).
    #[error("engine backend error: {0}")]
    Backend(String),
    /// The engine does not keep streams for resumable sessions ([`Engine::session_policy`] is `None`).
    #[error("this engine does not keep resumable sessions")]
    Unsupported,
}

/// A publication that could not be handed to every node it was for. The origin's own sessions were served
/// first (`local`); the others were not reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cause} (queued for {} session(s) of this node)", local.queued)]
pub struct PublishError {
    /// What the origin node itself queued before the engine failed.
    pub local: Delivery,
    /// Why the other nodes were not reached.
    pub cause: EngineError,
}

/// Whether the engine can reach its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything works.
    Healthy,
    /// The backend is unreachable or a subscription is silent: local clients are still served, other nodes
    /// are not reached. The engine is retrying.
    Degraded {
        /// What is wrong, for logs and `/healthz`.
        reason: String,
        /// When it started.
        since: SystemTime,
    },
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Where one user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    /// Nodes with at least one authenticated session of the user, with how many, ordered by node id.
    pub nodes: Vec<(NodeId, usize)>,
}

impl Presence {
    /// Whether the user has a session anywhere.
    pub fn is_online(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The user's sessions across nodes (one per device).
    pub fn sessions(&self) -> usize {
        self.nodes.iter().map(|(_, n)| n).sum()
    }
}

/// One live node, as the engine last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeId,
    /// Its open connections when it last reported.
    pub connections: usize,
    /// When it last reported (milliseconds since the Unix epoch).
    pub last_seen_ms: u64,
}

/// Carries publications between the nodes of one gateway, and keeps presence.
///
/// An engine does not know about connections: it routes by [`Target`](crate::Target) to the nodes that hold
/// recipients, and each node's [`LocalNode`] finds its own sessions. The in-memory engine
/// ([`MemoryEngine`](crate::MemoryEngine)) connects nodes of one process; the Redis engine (crate
/// `mesa-redis`) connects processes.
///
/// Routing is by where users are: a node receives a send to user ids only when it holds a session of one of
/// them (it said so with [`Engine::user_session_added`]), a send to one connection only when it holds it, and
/// every send to everyone. Two publications from one origin that reach one node arrive in the order published.
pub trait Engine: Send + Sync + 'static {
    /// Connects a node: from now on, publications for its sessions are handed to it. A node attaches once,
    /// before it accepts connections. Does not block: a remote engine connects (and reconnects) in its own
    /// tasks and reports how that goes in [`Engine::health`].
    fn attach(&self, node: Arc<dyn LocalNode>);

    /// Disconnects a node that is shutting down: its presence entries are removed and nothing more is
    /// handed to it.
    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()>;

    /// Hands `publication` to every node that holds a recipient. The origin's own sessions are served
    /// first, before this returns, except a durable send to users that an engine stores in a remote
    /// backend first (the Redis engine with streams): that reaches the origin's sessions from the backend,
    /// like every other node's, in the stream's order. `Ok` means every other node that should receive it
    /// was handed it (for Redis: the backend accepted it); `Err` says who was not reached and why.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Delivery, PublishError>>;

    /// A session of `user_id` on `node` was authenticated (or re-identified as `user_id`). Must not block:
    /// the engine updates its routing and presence in the background (see [`Engine::flush`]).
    fn user_session_added(&self, node: NodeId, user_id: &str);

    /// A session of `user_id` on `node` ended or stopped being `user_id`.
    fn user_session_removed(&self, node: NodeId, user_id: &str);

    /// Waits until the session changes made so far are in effect (subscriptions confirmed, presence written).
    fn flush(&self) -> BoxFuture<'_, Result<(), EngineError>>;

    /// Where `user_id` is connected, across nodes.
    fn presence(&self, user_id: &str) -> BoxFuture<'_, Result<Presence, EngineError>>;

    /// The live nodes.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStatus>, EngineError>>;

    /// Whether the backend can be reached now.
    fn health(&self) -> Health;

    /// A session of `user_id` was just authenticated: takes the messages stored for that user while offline
    /// (Mesa 1.5 sync), oldest first, and removes them from the store. With `deliver` false (the client's
    /// op 2 said `shouldSync: false`) they are dropped and nothing is returned. Each frame is as stored
    /// (Mesa 1.5 `{op, d, t}`); the server numbers them. One round trip to the backend at most, bounded by
    /// the engine's own timeout.
    ///
    /// The default (engines that store nothing, the in-memory one) returns nothing at once.
    fn take_stored(
        &self,
        user_id: &str,
        deliver: bool,
    ) -> BoxFuture<'_, Result<Vec<EncodedFrame>, EngineError>> {
        let _ = (user_id, deliver);
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// What the engine keeps for resumable sessions, or `None` when it keeps no per-user streams (the
    /// server then offers no resume, and every send is live only). See [`crate::sessions`].
    ///
    /// When it is `Some`, [`Engine::publish`] appends every [`DeliveryClass::Durable`](crate::DeliveryClass)
    /// send to users to each recipient user's stream first (for a user with a kept resumable session, or
    /// with no session at all: the offline mailbox), then hands each node one publication per user with
    /// [`Publication::sequence`] set, in sequence order per user.
    fn session_policy(&self) -> Option<SessionPolicy> {
        None
    }

    /// Records a fresh resumable session of `user_id`, held by `holder`, and says where it starts.
    fn open_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
    ) -> BoxFuture<'_, Result<Opened, EngineError>> {
        let _ = (user_id, session, holder);
        Box::pin(std::future::ready(Err(EngineError::Unsupported)))
    }

    /// Resumes `session` of `user_id` on `holder`, the client having processed everything up to `after`:
    /// atomically (only one connection can win a session), checks that the session is kept and that every
    /// entry after `after` still is, and makes `holder` the session's only connection.
    fn claim_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        after: u64,
    ) -> BoxFuture<'_, Result<Result<Claimed, ResumeRefusal>, EngineError>> {
        let _ = (user_id, session, holder, after);
        Box::pin(std::future::ready(Err(EngineError::Unsupported)))
    }

    /// The client of `session` processed everything up to `seq`: entries every kept session of the user
    /// has acknowledged may go. Must not block (a remote engine writes it in the background); a later
    /// acknowledgement covers a lost one.
    fn acknowledge(&self, user_id: &str, session: SessionId, seq: u64) {
        let _ = (user_id, session, seq);
    }

    /// The connection `holder` of `session` ended. With [`Release::Keep`] the session can be resumed for
    /// the session TTL from now; with [`Release::End`] it is forgotten. Ignored when another connection
    /// has claimed the session since. Must not block.
    fn release_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        release: Release,
    ) {
        let _ = (user_id, session, holder, release);
    }

    /// [`Engine::read_stream`] for `session`, which reads on behalf of that session: also `Err` (inner) when
    /// the engine no longer records the session (its backend lost it, e.g. a Redis that restarted empty),
    /// since the stream may then have restarted below the session's position. The default reads without
    /// that check (an engine that cannot lose a live session's record).
    fn read_session_stream(
        &self,
        user_id: &str,
        session: SessionId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Result<StreamRead, StreamGap>, EngineError>> {
        let _ = session;
        self.read_stream(user_id, after, limit)
    }

    /// Reads up to `limit` entries of `user_id`'s stream after position `after`, oldest first. `Err`
    /// (inner) when an entry after `after` was evicted: what follows would have a hole.
    fn read_stream(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Result<StreamRead, StreamGap>, EngineError>> {
        let _ = (user_id, after, limit);
        Box::pin(std::future::ready(Err(EngineError::Unsupported)))
    }
}
