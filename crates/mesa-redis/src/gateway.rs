//! One gateway node's side of the engine: publishing (local first), and the background work that keeps
//! Redis in step with the node: subscriptions, presence, liveness, dead-node cleanup and the probe.
//!
//! Three tasks per node, all ending with the link's shutdown token: the link's supervisor (connect,
//! resubscribe through [`Hooks`]), the sync loop (one pass at a time: subscriptions and presence of the
//! users that changed, the heartbeat, reaping), and the probe loop. A pass and a resubscription never run
//! at once (they share the `subscribed` lock), so the set of channels believed subscribed is exact.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesa_engine::{
    BoxFuture, Claimed, ConnectionId, Delivery, EncodedFrame, EngineError, LocalNode, NodeId,
    NodeStatus, Opened, Presence, Publication, PublishError, Release, ResumeRefusal, SessionId,
    StreamGap, StreamRead,
};
use redis::{RedisError, RedisResult, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::backend::PushHandler;
use crate::config::RedisConfig;
use crate::envelope;
use crate::inbound::Inbound;
use crate::link::{Connections, Hooks, Link};
use crate::mesa15;
use crate::presence;
use crate::publisher::Publisher;
use crate::routing;
use crate::sessions::Sessions;
use crate::streams::Streams;

/// What the current subscriber connection is subscribed to.
#[derive(Default)]
struct Subscribed {
    /// The connections' generation these channels were subscribed on.
    generation: u64,
    channels: HashSet<String>,
    /// Whether this node's liveness entry was written on this generation (a later "it was missing" means
    /// another node removed it as dead).
    registered: bool,
}

/// Why a background pass did not complete (it is retried).
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis refused a write: {0}")]
    Refused(String),
}

impl PassError {
    /// Whether the server answered READONLY (it is a replica now).
    fn is_read_only(&self) -> bool {
        match self {
            PassError::Redis(e) => {
                e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            }
            PassError::Refused(e) => e.starts_with("READONLY") || e.contains("read-only"),
            _ => false,
        }
    }
}

async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = RedisResult<T>>,
) -> Result<T, PassError> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PassError::Timeout(limit)),
    }
}

/// The state of one gateway node's engine.
pub(crate) struct Gateway {
    pub(crate) link: Arc<Link>,
    publisher: Publisher,
    inbound: Arc<Inbound>,
    sessions: Mutex<Sessions>,
    /// Wakes the sync loop: sessions changed or a flush waits.
    wake: Notify,
    /// The newest change number written to Redis.
    confirmed: watch::Sender<u64>,
    subscribed: tokio::sync::Mutex<Subscribed>,
    probe_nonce: AtomicU64,
    /// Mesa 1.5 compatibility: this node's connections as last added to `connected_clients_count`.
    counted: AtomicI64,
    /// Per-user streams and resumable sessions, when configured.
    pub(crate) streams: Option<Streams>,
}

impl Gateway {
    /// Starts the node's tasks on the current Tokio runtime. Connecting happens in them.
    pub(crate) fn start(config: RedisConfig) -> Arc<Gateway> {
        let link = Link::new(config);
        let gateway = Arc::new(Gateway {
            publisher: Publisher::start(link.clone()),
            inbound: Arc::new(Inbound::new(link.clone())),
            link: link.clone(),
            sessions: Mutex::default(),
            wake: Notify::new(),
            confirmed: watch::Sender::new(0),
            subscribed: tokio::sync::Mutex::default(),
            probe_nonce: AtomicU64::new(0),
            counted: AtomicI64::new(0),
            streams: config_streams(&link.config),
        });
        tokio::spawn(link.supervise(gateway.clone()));
        tokio::spawn(gateway.clone().sync_loop());
        tokio::spawn(gateway.clone().probe_loop());
        gateway
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // Every update leaves the mirror consistent before anything can panic.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> &RedisConfig {
        &self.link.config
    }

    fn mesa15(&self) -> bool {
        self.config().mesa15_compat
    }

    /// The channels a node always listens on: its own and the broadcast channel, and Mesa 1.5's `ws` in
    /// compatibility mode.
    fn base_channels(&self, node: NodeId) -> Vec<String> {
        let keys = &self.link.keys;
        let mut channels = vec![keys.node_channel(node), keys.broadcast_channel()];
        if self.mesa15() {
            channels.push(keys.mesa15_ws());
        }
        channels
    }

    pub(crate) fn attach(&self, node: Arc<dyn LocalNode>) {
        self.inbound.attach(node);
        // Subscribe the node's channels and write everything known so far.
        self.sessions().rebuild();
        self.wake.notify_one();
    }

    pub(crate) fn user_session_added(&self, user: &str) {
        self.sessions().added(user);
        self.wake.notify_one();
    }

    pub(crate) fn user_session_removed(&self, user: &str) {
        self.sessions().removed(user);
        self.wake.notify_one();
    }

    /// Serves this node's own sessions now, then queues the publication for Redis (both before returning,
    /// so publications keep the order of the calls). A durable send to users with streams is not served
    /// here: the stream script publishes it and this node delivers it from the user's channel.
    pub(crate) fn publish(
        &self,
        publication: Publication,
    ) -> BoxFuture<'static, Result<Delivery, PublishError>> {
        if self.inbound.is_closed() {
            return Box::pin(std::future::ready(Err(PublishError {
                local: Delivery::default(),
                cause: EngineError::Closed,
            })));
        }
        let node = self.inbound.node();
        let this = node.as_ref().map(|(id, _)| *id);
        let route = {
            let sessions = self.sessions();
            routing::route(
                &self.link.keys,
                &publication,
                this,
                |user| sessions.count(user) > 0,
                self.mesa15(),
                self.streams.as_ref(),
            )
        };
        let route = match route {
            Ok(route) => route,
            Err(cause) => {
                return Box::pin(std::future::ready(Err(PublishError {
                    local: Delivery::default(),
                    cause,
                })))
            }
        };
        let local = match &node {
            Some((_, node)) if route.local => node.deliver(&publication),
            _ => Delivery::default(),
        };
        let mine = route.mine;
        let pending = self.publisher.submit(route.sends);
        Box::pin(async move {
            match pending.await {
                Ok(counts) => {
                    let mut remote = Delivery::default();
                    remote.nodes = counts
                        .iter()
                        .zip(mine)
                        .map(|(n, mine)| {
                            usize::try_from(*n).unwrap_or(0).saturating_sub(mine.into())
                        })
                        .sum();
                    Ok(local.merge(remote))
                }
                Err(cause) => Err(PublishError { local, cause }),
            }
        })
    }

    /// Waits until every session change so far (and a fresh heartbeat) is in Redis, and with streams every
    /// acknowledgement and release queued so far.
    pub(crate) async fn flush(&self) -> Result<(), EngineError> {
        if self.inbound.is_closed() {
            return Ok(());
        }
        let target = self.sessions().request(true);
        self.wake.notify_one();
        let mut confirmed = self.confirmed.subscribe();
        let limit = self.config().publish_timeout;
        let waited = tokio::time::timeout(limit, confirmed.wait_for(|v| *v >= target))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => {
                // Acknowledgements and releases queued before this call are written too: a command
                // behind them in the one ordered queue comes back only after they did.
                if self.streams.is_some() {
                    let _ = self.publisher.barrier().await;
                }
                Ok(())
            }
            Ok(Err(_)) => Err(EngineError::Closed),
            Err(_) => Err(EngineError::Unavailable(format!(
                "session changes not confirmed by Redis within {limit:?} ({})",
                self.link.down_reason()
            ))),
        }
    }

    /// The current connections, or the first ones if they come within the timeout.
    async fn connections(&self) -> Result<Arc<Connections>, EngineError> {
        if let Some(c) = self.link.connections() {
            return Ok(c);
        }
        if !self.link.is_lost() {
            let deadline = Instant::now() + self.config().publish_timeout;
            if let Some(c) = self.link.wait_connected(deadline).await {
                return Ok(c);
            }
        }
        Err(EngineError::Unavailable(self.link.down_reason()))
    }

    pub(crate) async fn presence(&self, user: &str) -> Result<Presence, EngineError> {
        let c = self.connections().await?;
        let config = self.config();
        within(
            config.publish_timeout,
            presence::presence(&c.commands, &self.link.keys, user, config.node_ttl),
        )
        .await
        .map_err(engine_error)
    }

    /// Mesa 1.5 sync: marks `user` connected and takes (or, without `deliver`, drops) what was stored for
    /// it. Nothing outside compatibility mode.
    pub(crate) async fn take_stored(
        &self,
        user: &str,
        deliver: bool,
    ) -> Result<Vec<EncodedFrame>, EngineError> {
        if !self.mesa15() {
            return Ok(Vec::new());
        }
        let c = self.connections().await?;
        let cmd = mesa15::take(&self.link.keys, user, deliver);
        let stored: Option<String> = within(self.config().publish_timeout, c.commands.query(&cmd))
            .await
            .map_err(engine_error)?;
        let Some(list) = stored else {
            return Ok(Vec::new());
        };
        match mesa15::stored_frames(&list) {
            Ok(frames) => Ok(frames.into_iter().map(EncodedFrame::from).collect()),
            Err(error) => {
                self.link.metrics.malformed();
                tracing::warn!(%error, "dropped stored messages that are not a JSON array");
                Ok(Vec::new())
            }
        }
    }

    fn streams(&self) -> Result<&Streams, EngineError> {
        self.streams.as_ref().ok_or(EngineError::Unsupported)
    }

    pub(crate) async fn open_session(
        &self,
        user: &str,
        session: SessionId,
        holder: ConnectionId,
    ) -> Result<Opened, EngineError> {
        let streams = self.streams()?;
        let c = self.connections().await?;
        let work = streams.open(&c.commands, &self.link.keys, user, session, holder);
        within(self.config().publish_timeout, work)
            .await
            .map_err(engine_error)
    }

    pub(crate) async fn claim_session(
        &self,
        user: &str,
        session: SessionId,
        holder: ConnectionId,
        after: u64,
    ) -> Result<Result<Claimed, ResumeRefusal>, EngineError> {
        let streams = self.streams()?;
        let c = self.connections().await?;
        let work = streams.claim(&c.commands, &self.link.keys, user, session, holder, after);
        within(self.config().publish_timeout, work)
            .await
            .map_err(engine_error)
    }

    pub(crate) async fn read_stream(
        &self,
        user: &str,
        session: Option<SessionId>,
        after: u64,
        limit: usize,
    ) -> Result<Result<StreamRead, StreamGap>, EngineError> {
        let streams = self.streams()?;
        let c = self.connections().await?;
        let work = streams.read(&c.commands, &self.link.keys, user, session, after, limit);
        within(self.config().publish_timeout, work)
            .await
            .map_err(engine_error)
    }

    /// Queues a stream script that nobody waits for (an acknowledgement, a release) behind the
    /// publications, without a task per call: a lost one is covered by a later acknowledgement, or by the
    /// session TTL.
    /// Session releases Redis did not take yet.
    pub(crate) fn releases_waiting(&self) -> usize {
        self.publisher.redo().len()
    }

    /// Not retried: a later acknowledgement, or the session's resume, covers a lost one.
    pub(crate) fn acknowledge(&self, user: &str, session: SessionId, seq: u64) {
        if let Some(streams) = &self.streams {
            let call = streams.acknowledge(&self.link.keys, user, session, seq);
            let queued = self
                .publisher
                .submit_detached(crate::routing::Sends::Scripts(vec![call]));
            if let Err(error) = queued {
                tracing::debug!(%error, "acknowledgement not written to Redis");
            }
        }
    }

    pub(crate) fn release_session(
        &self,
        user: &str,
        session: SessionId,
        holder: ConnectionId,
        release: Release,
    ) {
        if let Some(streams) = &self.streams {
            // Retried until Redis takes it: a session left held would keep its stream for good.
            let call = streams.release(&self.link.keys, user, session, holder, release);
            self.publisher
                .submit_retried(crate::routing::Sends::Scripts(vec![call]));
        }
    }

    pub(crate) async fn nodes(&self) -> Result<Vec<NodeStatus>, EngineError> {
        let c = self.connections().await?;
        let config = self.config();
        within(
            config.publish_timeout,
            presence::live_nodes(&c.commands, &self.link.keys, config.node_ttl),
        )
        .await
        .map_err(engine_error)
    }

    /// Leaves: nothing more reaches the node, its presence and liveness are removed, the tasks end.
    pub(crate) async fn detach(&self, node: NodeId) {
        match self.inbound.node() {
            Some((id, _)) if id == node => {}
            _ => return,
        }
        let connections = self.link.connections();
        self.inbound.close();
        self.link.shutdown.cancel();
        // Wait for a pass in flight: nothing of this node is written after the goodbye.
        let _pass = self.subscribed.lock().await;
        let users = self.sessions().users();
        let Some(c) = connections else {
            tracing::warn!(%node, "left while Redis was unreachable: other nodes remove its entries after node_ttl");
            return;
        };
        let goodbye = presence::goodbye(
            &c.commands,
            &self.link.keys,
            node,
            &users,
            self.mesa15(),
            self.counted.load(Ordering::Acquire),
        );
        if let Err(error) = within(self.config().publish_timeout, goodbye).await {
            tracing::warn!(%node, %error, "could not remove this node's presence: other nodes do after node_ttl");
        }
    }

    /// Stops at once without a goodbye, as a crashed process would: the tasks end and the connections
    /// close; other nodes remove this node's entries once its liveness is older than `node_ttl`.
    pub(crate) fn abort(&self) {
        self.inbound.close();
        self.link.shutdown.cancel();
    }

    fn confirm(&self, version: u64) {
        self.confirmed.send_if_modified(|confirmed| {
            let newer = version > *confirmed;
            *confirmed = (*confirmed).max(version);
            newer
        });
    }

    async fn sync_loop(self: Arc<Self>) {
        let ttl = self.config().node_ttl;
        let mut heartbeat = tokio::time::interval(ttl / 3);
        let mut reap = tokio::time::interval(ttl / 2);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry: Option<Instant> = None;
        loop {
            let retry_at = retry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = self.link.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = heartbeat.tick() => {
                    self.sessions().request(true);
                }
                _ = reap.tick() => {
                    self.reap().await;
                    continue;
                }
                _ = tokio::time::sleep_until(retry_at), if retry.is_some() => {}
            }
            retry = match self.pass().await {
                Ok(()) | Err(PassError::NotConnected) => None,
                Err(error) if error.is_read_only() => {
                    // A Sentinel failover made our server a replica: ask the Sentinels again.
                    if let Some(c) = self.link.connections() {
                        self.link
                            .lost(c.generation, format!("Redis refused a write: {error}"));
                    }
                    None
                }
                Err(error) => {
                    tracing::debug!(%error, "presence and subscription pass failed; retrying");
                    Some(Instant::now() + self.config().reconnect_min)
                }
            };
        }
    }

    /// Writes what changed: subscriptions, presence entries, and the heartbeat when due.
    async fn pass(&self) -> Result<(), PassError> {
        let Some((id, node)) = self.inbound.node() else {
            // Not attached (or closed): nothing to write; what was asked is done.
            let issued = self.sessions().request(false);
            self.confirm(issued);
            return Ok(());
        };
        let Some(connections) = self.link.connections() else {
            return Err(PassError::NotConnected);
        };
        let mut subscribed = self.subscribed.lock().await;
        if subscribed.generation != connections.generation || self.inbound.is_closed() {
            return Err(PassError::NotConnected);
        }
        let pass = self.sessions().take();
        match self
            .write(&connections, &mut subscribed, id, &*node, &pass)
            .await
        {
            Ok(()) => {
                self.confirm(pass.version);
                // Redis takes writes again: what it did not take before is queued again.
                let requeued = self.publisher.resubmit();
                if requeued > 0 {
                    tracing::debug!(requeued, "session releases queued again");
                }
                Ok(())
            }
            Err(error) => {
                self.sessions().give_back(pass);
                Err(error)
            }
        }
    }

    async fn write(
        &self,
        connections: &Connections,
        subscribed: &mut Subscribed,
        id: NodeId,
        node: &dyn LocalNode,
        pass: &crate::sessions::Pass,
    ) -> Result<(), PassError> {
        let keys = &self.link.keys;
        let limit = self.config().publish_timeout;
        let mut subscribe: Vec<String> = self
            .base_channels(id)
            .into_iter()
            .filter(|c| !subscribed.channels.contains(c))
            .collect();
        let mut unsubscribe = Vec::new();
        for (user, count) in &pass.users {
            let channel = keys.user_channel(user);
            match (*count > 0, subscribed.channels.contains(&channel)) {
                (true, false) => subscribe.push(channel),
                (false, true) => unsubscribe.push(channel),
                _ => {}
            }
        }
        if let Some(subscriber) = &connections.subscriber {
            if !subscribe.is_empty() {
                within(limit, subscriber.subscribe(&subscribe)).await?;
                subscribed.channels.extend(subscribe);
            }
            if !unsubscribe.is_empty() {
                within(limit, subscriber.unsubscribe(&unsubscribe)).await?;
                for channel in &unsubscribe {
                    subscribed.channels.remove(channel);
                }
            }
        }
        let writes = presence::user_writes(keys, id, &pass.users, self.mesa15());
        if !writes.is_empty() {
            let replies = within(limit, connections.commands.run(writes)).await?;
            if let Some(Value::ServerError(error)) =
                replies.iter().find(|v| matches!(v, Value::ServerError(_)))
            {
                return Err(PassError::Refused(error.to_string()));
            }
        }
        if pass.heartbeat {
            let connections_now = node.connection_count();
            let beat = presence::heartbeat(&connections.commands, keys, id, connections_now);
            let was_missing = within(limit, beat).await?;
            if self.mesa15() {
                self.count_connections(connections, was_missing, connections_now)
                    .await?;
            }
            if was_missing && subscribed.registered {
                tracing::warn!(
                    node = %id,
                    "this node had been removed as dead (silent for more than node_ttl): rebuilding its presence"
                );
                self.sessions().rebuild();
                self.wake.notify_one();
            }
            subscribed.registered = true;
        }
        Ok(())
    }

    /// Mesa 1.5's `connected_clients_count` follows this node's connections, by difference at every
    /// heartbeat. A missing liveness entry means Redis lost this node's state (restart, or reaped as dead,
    /// which removed its count): it is added whole again.
    async fn count_connections(
        &self,
        connections: &Connections,
        was_missing: bool,
        now: usize,
    ) -> Result<(), PassError> {
        if was_missing {
            self.counted.store(0, Ordering::Release);
        }
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let delta = now - self.counted.load(Ordering::Acquire);
        if delta != 0 {
            let cmd = mesa15::count(&self.link.keys, delta);
            within(
                self.config().publish_timeout,
                connections.commands.query::<i64>(&cmd),
            )
            .await?;
            self.counted.store(now, Ordering::Release);
        }
        Ok(())
    }

    async fn reap(&self) {
        let (Some((id, _)), Some(c)) = (self.inbound.node(), self.link.connections()) else {
            return;
        };
        let config = self.config();
        let work = presence::reap(
            &c.commands,
            &self.link.keys,
            config.node_ttl,
            id,
            self.mesa15(),
        );
        match within(config.publish_timeout, work).await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => {
                self.link.metrics.dead_nodes_removed(removed.len() as u64);
                self.release_dead_sessions(&removed);
            }
            Err(error) => tracing::debug!(%error, "dead-node cleanup failed; retried later"),
        }
    }

    /// The resumable sessions that connections of dead nodes held are released (kept for the session TTL),
    /// so that they expire if nobody resumes them; retried like this node's own releases (only this
    /// caller reaped those nodes).
    fn release_dead_sessions(&self, removed: &[(NodeId, Vec<String>)]) {
        let Some(streams) = &self.streams else {
            return;
        };
        let keys = &self.link.keys;
        let calls: Vec<_> = removed
            .iter()
            .flat_map(|(node, users)| {
                users
                    .iter()
                    .map(|user| streams.release_node(keys, user, *node))
            })
            .collect();
        for chunk in calls.chunks(512) {
            self.publisher
                .submit_retried(crate::routing::Sends::Scripts(chunk.to_vec()));
        }
    }

    /// Every `probe_interval`, publishes a probe on this node's channel and reconnects if it does not come
    /// back within `publish_timeout`: a subscription that went silent without the connection closing.
    async fn probe_loop(self: Arc<Self>) {
        let config = self.config().clone();
        let mut tick = tokio::time::interval(config.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.link.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (Some((id, _)), Some(c)) = (self.inbound.node(), self.link.connections()) else {
                continue;
            };
            let channel = self.link.keys.node_channel(id);
            {
                let subscribed = self.subscribed.lock().await;
                if subscribed.generation != c.generation || !subscribed.channels.contains(&channel)
                {
                    continue;
                }
            }
            let nonce = self.probe_nonce.fetch_add(1, Ordering::Relaxed) + 1;
            let publish = c
                .commands
                .publish(&channel, &envelope::encode_probe(id, nonce));
            let round_trip = async {
                c.commands.query::<i64>(&publish).await?;
                self.inbound.probe_returned(nonce).await;
                Ok::<(), RedisError>(())
            };
            let failure = match tokio::time::timeout(config.publish_timeout, round_trip).await {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => format!("probe could not be published: {error}"),
                Err(_) => format!(
                    "subscription probe did not come back within {:?}",
                    config.publish_timeout
                ),
            };
            self.link.metrics.probe_failed();
            tracing::warn!(node = %id, "{failure}; reconnecting");
            self.link.lost(c.generation, failure);
        }
    }
}

/// The streams a configuration asks for.
pub(crate) fn config_streams(config: &RedisConfig) -> Option<Streams> {
    config
        .sessions
        .map(|policy| Streams::new(policy, config.is_cluster()))
}

fn engine_error(error: PassError) -> EngineError {
    match error {
        PassError::Redis(e)
            if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) =>
        {
            EngineError::Backend(e.to_string())
        }
        PassError::Refused(e) => EngineError::Backend(e),
        other => EngineError::Unavailable(other.to_string()),
    }
}

impl Hooks for Gateway {
    fn subscriber(&self, generation: u64) -> Option<PushHandler> {
        Some(self.inbound.handler(generation))
    }

    /// Subscribes the new connection to every channel this node needs, from its own record (not redis-rs's).
    fn connected<'a>(
        &'a self,
        connections: &'a Arc<Connections>,
    ) -> BoxFuture<'a, RedisResult<()>> {
        Box::pin(async move {
            let mut subscribed = self.subscribed.lock().await;
            let mut channels: Vec<String> = match self.inbound.node() {
                Some((id, _)) => self.base_channels(id),
                None => Vec::new(),
            };
            let users = self.sessions().users();
            channels.extend(users.iter().map(|u| self.link.keys.user_channel(u)));
            if let Some(subscriber) = &connections.subscriber {
                subscriber.subscribe(&channels).await?;
            }
            *subscribed = Subscribed {
                generation: connections.generation,
                channels: channels.into_iter().collect(),
                registered: false,
            };
            self.link.metrics.resubscribed();
            Ok(())
        })
    }

    /// Has the next pass write all of this node's presence and liveness again: Redis may have restarted
    /// empty, or another node may have removed this one as dead while it could not reach Redis.
    fn current(&self) {
        self.sessions().rebuild();
        self.wake.notify_one();
        // What was published while the subscriber was away never arrives: resumable sessions re-read their
        // streams from the last position they queued.
        if self.streams.is_some() {
            if let Some((_, node)) = self.inbound.node() {
                node.resync_streams();
            }
        }
    }
}
