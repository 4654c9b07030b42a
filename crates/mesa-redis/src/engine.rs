//! [`RedisEngine`]: the [`Engine`] of a gateway node over Redis.

use std::sync::Arc;

use mesa_engine::{
    BoxFuture, Claimed, ConnectionId, Delivery, EncodedFrame, Engine, EngineError, Health,
    LocalNode, NodeId, NodeStatus, Opened, Presence, Publication, PublishError, Release,
    ResumeRefusal, SessionId, SessionPolicy, StreamGap, StreamRead,
};

use crate::config::RedisConfig;
use crate::gateway::Gateway;
use crate::keys::Keys;
use crate::metrics::RedisMetricsSnapshot;

/// Connects the nodes of a gateway through Redis: one engine per node (process).
///
/// Sends are routed by where users are (a node subscribes to a user's channel while it holds a session of
/// that user), presence is kept in Redis with the liveness of every node, and Redis faults degrade the
/// node (local sessions are still served, sends to others fail with `Unavailable`; with
/// [`RedisConfig::sessions`] a durable send to users, stored in Redis first, fails whole) until it
/// reconnects by itself. With [`RedisConfig::sessions`] it also keeps per-user streams and resumable
/// sessions in Redis (`docs/delivery.md`, "Streams in Redis"). `docs/clustering.md` describes the keys,
/// the delivery semantics and the faults.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = tokio::runtime::Runtime::new()?;
/// # rt.block_on(async {
/// use mesa_redis::{RedisConfig, RedisEngine};
/// let config = RedisConfig::from_url("redis://127.0.0.1:6379")?.with_namespace("chat");
/// let engine = RedisEngine::connect(config)?;
/// // mesa_server::Mesa::builder().engine(engine).build() …
/// # Ok::<(), Box<dyn std::error::Error>>(()) })?;
/// # Ok(()) }
/// ```
pub struct RedisEngine {
    gateway: Arc<Gateway>,
}

impl RedisEngine {
    /// Starts an engine on the current Tokio runtime. Fails only on an invalid configuration (or outside a
    /// runtime): an unreachable Redis makes it start Degraded and keep retrying.
    pub fn connect(config: RedisConfig) -> Result<Arc<RedisEngine>, EngineError> {
        config
            .validate()
            .map_err(|e| EngineError::Backend(format!("invalid Redis configuration: {e}")))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EngineError::Backend(
                "the Redis engine must be started within a Tokio runtime".into(),
            ));
        }
        Ok(Arc::new(RedisEngine {
            gateway: Gateway::start(config),
        }))
    }

    /// The counters of this engine.
    pub fn metrics(&self) -> RedisMetricsSnapshot {
        let mut snapshot = self.gateway.link.metrics.snapshot();
        snapshot.releases_waiting = self.gateway.releases_waiting() as u64;
        snapshot
    }

    /// Its configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.gateway.link.config
    }

    /// The names of its keys and channels.
    pub fn keys(&self) -> &Keys {
        &self.gateway.link.keys
    }

    /// Stops at once without removing anything from Redis, as a crashed process would (the other nodes
    /// clean up after `node_ttl`). For tests of that, and for a process that must not wait.
    pub fn abort(&self) {
        self.gateway.abort();
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.gateway.link.shutdown.cancel();
    }
}

impl Engine for RedisEngine {
    fn attach(&self, node: Arc<dyn LocalNode>) {
        self.gateway.attach(node);
    }

    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(self.gateway.detach(node))
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Delivery, PublishError>> {
        self.gateway.publish(publication)
    }

    fn user_session_added(&self, _node: NodeId, user_id: &str) {
        self.gateway.user_session_added(user_id);
    }

    fn user_session_removed(&self, _node: NodeId, user_id: &str) {
        self.gateway.user_session_removed(user_id);
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(self.gateway.flush())
    }

    fn presence(&self, user_id: &str) -> BoxFuture<'_, Result<Presence, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move { self.gateway.presence(&user).await })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStatus>, EngineError>> {
        Box::pin(self.gateway.nodes())
    }

    fn health(&self) -> Health {
        self.gateway.link.health()
    }

    /// In Mesa 1.5 compatibility mode: `SADD connected_clients`, then `HGET` and `HDEL` of the user's
    /// `undelivered_messages` field, in one script (nothing a concurrent sender stores is lost or taken
    /// twice); within `publish_timeout`. Otherwise nothing.
    fn take_stored(
        &self,
        user_id: &str,
        deliver: bool,
    ) -> BoxFuture<'_, Result<Vec<EncodedFrame>, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move { self.gateway.take_stored(&user, deliver).await })
    }

    /// [`RedisConfig::sessions`]: the policy the streams in Redis are kept within, if any.
    fn session_policy(&self) -> Option<SessionPolicy> {
        self.gateway.streams.as_ref().map(|streams| streams.policy)
    }

    fn open_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
    ) -> BoxFuture<'_, Result<Opened, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move { self.gateway.open_session(&user, session, holder).await })
    }

    fn claim_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        after: u64,
    ) -> BoxFuture<'_, Result<Result<Claimed, ResumeRefusal>, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move {
            self.gateway
                .claim_session(&user, session, holder, after)
                .await
        })
    }

    /// Queued behind the publications, not waited for.
    fn acknowledge(&self, user_id: &str, session: SessionId, seq: u64) {
        self.gateway.acknowledge(user_id, session, seq);
    }

    /// Queued behind the publications, not waited for.
    fn release_session(
        &self,
        user_id: &str,
        session: SessionId,
        holder: ConnectionId,
        release: Release,
    ) {
        self.gateway
            .release_session(user_id, session, holder, release);
    }

    fn read_stream(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Result<StreamRead, StreamGap>, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move { self.gateway.read_stream(&user, None, after, limit).await })
    }

    /// In the same script as the read: a session Redis no longer records (it restarted empty) is a gap.
    fn read_session_stream(
        &self,
        user_id: &str,
        session: SessionId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Result<StreamRead, StreamGap>, EngineError>> {
        let user = user_id.to_owned();
        Box::pin(async move {
            self.gateway
                .read_stream(&user, Some(session), after, limit)
                .await
        })
    }
}
