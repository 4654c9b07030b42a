//! [`Mesa`], the server handle, and [`MesaBuilder`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use mesa_protocol::{ConnectionRules, Frame, OpCode, RateLimit};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{AuthError, ConnectionError, SendError};
use crate::events::{Disconnection, Hooks, Middleware};
use crate::ids::{ConnectionId, NodeId};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::{Node, Router};
use crate::session::{Identity, Session};
use crate::target::{Delivery, Target};
use mesa_engine::{Engine, EngineError, Health, MemoryEngine, NodeStatus, Presence};

/// Bytes of queued frames gathered before one socket write: large enough to batch a burst into few
/// syscalls, small enough that a connection's write buffer stays modest after one.
const WRITE_BATCH_BYTES: usize = 8 * 1024;

/// State shared by the server handle, the upgrade service and every connection task.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) rules: ConnectionRules,
    /// The Hello (op 10) as a whole WebSocket frame, encoded once and written to each new socket past
    /// tungstenite: its write buffer keeps the capacity of the largest frame it ever wrote, and the Hello
    /// (with `c_resume`) is larger than anything an idle connection writes after it.
    pub(crate) hello_frame: bytes::Bytes,
    /// `config.allowed_origins`, parsed once (entries that are not origins are left out; the config warns
    /// about them).
    pub(crate) allowed_origins: Vec<crate::origin::Origin>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) router: Router,
    pub(crate) hooks: Hooks,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when a graceful shutdown starts.
    pub(crate) shutdown: CancellationToken,
    /// When the graceful shutdown started: each connection's op 7 goes at its own point of the drain
    /// window from here.
    pub(crate) shutdown_started: std::sync::OnceLock<tokio::time::Instant>,
    /// Every connection task, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// This process's node id, the first half of every connection id it hands out.
    pub(crate) node_id: NodeId,
    pub(crate) next_connection_id: AtomicU64,
    /// Connections open or being upgraded, for `limits.max_connections`.
    pub(crate) slots: AtomicUsize,
}

/// A Mesa gateway server: configuration, hooks, connected clients and the send API.
///
/// Cheap to clone (it is a handle). Serve it standalone with [`Mesa::serve`], or mount [`Mesa::service`] in an
/// axum/hyper application.
///
/// ```no_run
/// use mesa_server::{Mesa, Identity, AuthError, Target};
/// use mesa_protocol::Frame;
/// use serde_json::json;
///
/// # async fn run() -> std::io::Result<()> {
/// let mesa = Mesa::builder()
///     .authenticate(|data, _client| async move {
///         match data.get("token").and_then(|t| t.as_str()) {
///             Some("secret") => Ok(Identity::new("alice", json!({"name": "Alice"}))),
///             _ => Err(AuthError::new("bad token")),
///         }
///     })
///     .on_message(|client, frame| async move {
///         let _ = client.send(&frame); // echo
///     })
///     .build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
/// mesa.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Clone)]
pub struct Mesa {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesa")
            .field("config", &self.inner.config)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl Mesa {
    /// A builder with Mesa 1.5's defaults.
    pub fn builder() -> MesaBuilder {
        MesaBuilder::default()
    }

    /// A server with this configuration and no hooks.
    pub fn new(config: Config) -> Mesa {
        MesaBuilder::default().config(config).build()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Sends `frame` to the sessions `target` names: encoded once, queued on each without waiting, and
    /// reports how many it was queued for.
    ///
    /// Sends to everyone skip unauthenticated sessions when authentication is required. A recipient whose
    /// queue is full does not get it and is closed with 4010 (counted in [`Delivery::slow_consumers`]); the
    /// others still get the message. Two sends to one session arrive in the order they were made. An `Err`
    /// means the message was not handed to anyone (with the in-memory engine of one node this does not
    /// happen; a remote engine reports its failures here).
    pub async fn send(&self, frame: &Frame, target: &Target) -> Result<Delivery, SendError> {
        self.inner.hooks.sent(frame, target);
        self.inner.router.send(frame, target).await
    }

    /// Sends `frame` to every session (Mesa 1.5 `mesa.send(message)`).
    pub async fn broadcast(&self, frame: &Frame) -> Result<Delivery, SendError> {
        self.send(frame, &Target::all()).await
    }

    /// Sends `frame` to every session of these user ids (Mesa 1.5 `mesa.send(message, ids)`).
    pub async fn send_to<I, S>(&self, ids: I, frame: &Frame) -> Result<Delivery, SendError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.send(frame, &Target::users(ids)).await
    }

    /// Closes every connection `target` names, on every node, with `code` and `reason` (Mesa 1.5
    /// `DISCONNECT_CLIENT`, which uses 1000). Queued frames are written first. [`Delivery::queued`] counts the
    /// connections asked to close (on this node, or on all nodes with the in-memory engine).
    pub async fn disconnect(
        &self,
        target: &Target,
        code: u16,
        reason: &str,
    ) -> Result<Delivery, SendError> {
        self.inner.router.disconnect(target, code, reason).await
    }

    /// Closes every connection of these user ids, on every node, with `code` and `reason`.
    pub async fn disconnect_users(
        &self,
        ids: &[String],
        code: u16,
        reason: &str,
    ) -> Result<Delivery, SendError> {
        self.disconnect(&Target::users(ids.iter().cloned()), code, reason)
            .await
    }

    /// Where `user_id` is connected, across every node of the engine.
    pub async fn presence(&self, user_id: &str) -> Result<Presence, EngineError> {
        self.inner.router.engine().presence(user_id).await
    }

    /// The live nodes of the engine, with their connection counts.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, EngineError> {
        self.inner.router.engine().nodes().await
    }

    /// Whether the engine reaches its backend (always healthy in memory).
    pub fn engine_health(&self) -> Health {
        self.inner.router.engine().health()
    }

    /// The engine this node publishes through.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        self.inner.router.engine()
    }

    /// The session of a connection of this node.
    pub fn session(&self, id: ConnectionId) -> Option<Session> {
        self.inner.registry.get(id)
    }

    /// The sessions on this node authenticated as `user_id` (one per device).
    pub fn sessions_of(&self, user_id: &str) -> Vec<Session> {
        self.inner.registry.sessions_of(user_id)
    }

    /// Whether a session on this node is authenticated as `user_id`.
    pub fn is_user_connected(&self, user_id: &str) -> bool {
        self.user_session_count(user_id) > 0
    }

    /// How many sessions on this node are authenticated as `user_id` (one per device).
    pub fn user_session_count(&self, user_id: &str) -> usize {
        self.inner.registry.user_session_count(user_id)
    }

    /// This node's id, the first half of every [`ConnectionId`] it hands out.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Open WebSocket connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether a graceful shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Gracefully closes every WebSocket connection: new upgrades get HTTP 503; each session's queued frames
    /// are written, then op 7 (reconnect); a client that has not left by itself within `shutdown_grace_ms`
    /// gets a 1012 close (what it sends meanwhile still reaches the handlers). Waits for the connection tasks
    /// (reconnect) and a 1012 close, and this waits for the connection tasks to finish, at most
    /// `shutdown_timeout_ms`. Returns `true` when every task finished in time.
    pub async fn shutdown(&self) -> bool {
        self.shutdown_until(tokio::time::Instant::now() + self.shutdown_timeout())
            .await
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.shutdown_timeout_ms)
    }

    pub(crate) async fn shutdown_until(&self, deadline: tokio::time::Instant) -> bool {
        let _ = self.inner.shutdown_started.set(tokio::time::Instant::now());
        self.inner.shutdown.cancel();
        // Connection tasks look at the token when they wake; a session registered after this sees it on its
        // first turn.
        self.inner.registry.wake_all();
        self.inner.tasks.close();
        let finished = tokio::time::timeout_at(deadline, self.inner.tasks.wait())
            .await
            .is_ok();
        // Leave presence once no session of this node is left (or the deadline passed).
        let _ = tokio::time::timeout_at(
            deadline,
            self.inner.router.engine().detach(self.inner.node_id),
        )
        .await;
        finished
    }
}

/// Builds a [`Mesa`] server. Every setter documents its default.
#[derive(Default)]
pub struct MesaBuilder {
    config: Config,
    hooks: Hooks,
    node_id: Option<NodeId>,
    engine: Option<Arc<dyn Engine>>,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl MesaBuilder {
    /// Replaces the whole configuration (for example one read from a file). Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Endpoint path. Default `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }

    /// Heartbeat interval and tolerated missed beats. Default 10 s and 3.
    pub fn heartbeat(mut self, interval: Duration, max_attempts: u32) -> Self {
        self.config.heartbeat.enabled = true;
        self.config.heartbeat.interval_ms = ms(interval);
        self.config.heartbeat.max_attempts = max_attempts;
        self
    }

    /// Turns heartbeats off (no dead-peer detection). Default: on.
    pub fn without_heartbeat(mut self) -> Self {
        self.config.heartbeat.enabled = false;
        self
    }

    /// Reconnect interval advertised in Hello. Default 5 s.
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.config.reconnect.enabled = true;
        self.config.reconnect.interval_ms = ms(interval);
        self
    }

    /// Time a client has to authenticate, advertised in Hello (enforced with 4006 when authentication is
    /// required). Default 10 s.
    pub fn authentication_timeout(mut self, timeout: Duration) -> Self {
        self.config.authentication.timeout_ms = ms(timeout);
        self
    }

    /// Time one run of the authentication check may take; longer closes with 1013. Default 10 s.
    pub fn authentication_check_timeout(mut self, timeout: Duration) -> Self {
        self.config.authentication.check_timeout_ms = ms(timeout);
        self
    }

    /// Whether authentication is required. Default `false`.
    pub fn authentication_required(mut self, required: bool) -> Self {
        self.config.authentication.required = required;
        self
    }

    /// Whether op 22 carries the user object. Default `true`.
    pub fn send_user_object(mut self, send: bool) -> Self {
        self.config.authentication.send_user_object = send;
        self
    }

    /// Whether a refused authentication closes the connection with 1008. Default `true`.
    pub fn disconnect_on_fail(mut self, disconnect: bool) -> Self {
        self.config.authentication.disconnect_on_fail = disconnect;
        self
    }

    /// Turns on `enforce_equal_versions` with this required client version. Default: off.
    pub fn enforce_equal_versions(mut self, version: impl Into<String>) -> Self {
        self.config.client.enforce_equal_versions = true;
        self.config.client.version = Some(version.into());
        self
    }

    /// Largest inbound message and frame in bytes. Default 65536.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_message_size = bytes;
        self
    }

    /// Inbound rate limit per connection, `None` for none. Default burst 200, 100 per second.
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.config.limits.rate_limit = limit;
        self
    }

    /// Frames one session's outbound queue holds. Default 1024.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.limits.outbound_queue = frames;
        self
    }

    /// Bytes of encoded frames one session's outbound queue holds. Default 1 MiB.
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.outbound_queue_bytes = bytes;
        self
    }

    /// This node's id. Default: random at build time. Set it when several nodes must be told apart by a
    /// stable id (two nodes must never share one).
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Time after op 7 in a graceful shutdown that clients get to leave by themselves before the 1012
    /// close. Default 500 ms.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace_ms = ms(grace);
        self
    }

    /// Open connections accepted. Default 100000.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.limits.max_connections = connections;
        self
    }

    /// Time to receive a complete request head (standalone server). Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.handshake_timeout_ms = ms(timeout);
        self
    }

    /// Time one batch of outbound frames may take to write. Default 10 s.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.write_timeout_ms = ms(timeout);
        self
    }

    /// Allowed `Origin` values. Default: empty, any origin.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Time a graceful shutdown waits for connections. Default 5 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout_ms = ms(timeout);
        self
    }

    /// The authentication check: given op 2's `d`, answer an [`Identity`] or refuse with an [`AuthError`].
    /// Without one, every op 2 is refused.
    pub fn authenticate<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(Value, Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, AuthError>> + Send + 'static,
    {
        self.hooks.authenticate = Some(Arc::new(move |data, session| {
            Box::pin(check(data, session))
        }));
        self
    }

    /// Runs when a connection opens, after Hello.
    pub fn on_connection<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_connection = Some(Arc::new(move |session| Box::pin(handler(session))));
        self
    }

    /// Runs for every dispatch (op 0) a client sends, in order, on that connection's task.
    pub fn on_message<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Session, Frame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_message = Some(Arc::new(move |session, frame| {
            Box::pin(handler(session, frame))
        }));
        self
    }

    /// Runs after a connection authenticates (after op 22 was sent).
    pub fn on_authenticated<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_authenticated = Some(Arc::new(move |session| Box::pin(handler(session))));
        self
    }

    /// Runs when a connection has closed.
    pub fn on_disconnection<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Session, Disconnection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_disconnection = Some(Arc::new(move |session, why| {
            Box::pin(handler(session, why))
        }));
        self
    }

    /// Runs when a connection hits an error (bad input, a failed write); the connection is closing.
    pub fn on_error<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Session, Arc<ConnectionError>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_error = Some(Arc::new(move |session, error| {
            Box::pin(handler(session, error))
        }));
        self
    }

    /// The engine that connects this node to others (for example `mesa_redis::RedisEngine`). Default: a
    /// [`MemoryEngine`] of its own (one node).
    pub fn engine(mut self, engine: Arc<dyn Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Adds a middleware; middleware run in the order added, before the handlers.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.hooks.middleware.push(Arc::new(middleware));
        self
    }

    /// The server.
    pub fn build(self) -> Mesa {
        let config = self.config;
        let node_id = self.node_id.unwrap_or_else(NodeId::random);
        let engine = self.engine.unwrap_or_else(|| {
            let engine = if config.resume.enabled {
                MemoryEngine::with_sessions(config.resume.policy())
            } else {
                MemoryEngine::without_sessions()
            };
            Arc::new(engine) as Arc<dyn Engine>
        });
        let sessions = engine.session_policy().filter(|_| config.resume.enabled);
        let hello = Frame::new(
            OpCode::Hello,
            serde_json::to_value(config.hello(sessions)).unwrap_or(Value::Null),
        );
        let max = config.limits.max_message_size.max(1);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.limits.read_buffer_size.max(256))
            .write_buffer_size(WRITE_BATCH_BYTES)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let registry = Arc::new(Registry::new(node_id, engine.clone()));
        let node = Arc::new(Node {
            id: node_id,
            registry: registry.clone(),
            authenticated_only: config.authentication.required,
        });
        // The engine holds the node (attached here, detached at the end of shutdown).
        engine.attach(node);
        let router = Router::new(node_id, engine, sessions.is_some());
        Mesa {
            inner: Arc::new(Inner {
                rules: config.connection_rules(),
                hello_frame: websocket_text_frame(hello.encode()),
                allowed_origins: config
                    .allowed_origins
                    .iter()
                    .filter_map(|allowed| crate::origin::Origin::parse(allowed))
                    .collect(),
                ws_config,
                registry,
                router,
                hooks: self.hooks,
                metrics: Arc::new(Metrics::default()),
                shutdown: CancellationToken::new(),
                shutdown_started: std::sync::OnceLock::new(),
                tasks: TaskTracker::new(),
                node_id,
                next_connection_id: AtomicU64::new(1),
                slots: AtomicUsize::new(0),
                config,
            }),
        }
    }
}

impl Session {
    /// The server this session belongs to, to send to other clients from a handler; `None` once the server
    /// is gone.
    pub fn server(&self) -> Option<Mesa> {
        let inner = self.shared.server.upgrade()?.downcast::<Inner>().ok()?;
        Some(Mesa { inner })
    }

    /// Replaces the identity of an authenticated session (Mesa 1.5 `client.updateUser`): sends to the new id
    /// reach it, sends to the old id no longer do, in one step (no send sees it half-changed). Returns `false`
    /// and changes nothing when the session is not authenticated or its connection is gone.
    pub fn update_user(&self, identity: Identity) -> bool {
        match self
            .shared
            .server
            .upgrade()
            .map(|any| any.downcast::<Inner>())
        {
            Some(Ok(inner)) => inner.registry.update_user(self, identity),
            _ => false,
        }
    }
}

/// `text` as one unmasked, final WebSocket text frame (what a server sends), encoded by tungstenite.
fn websocket_text_frame(text: String) -> bytes::Bytes {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as WsOpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    let frame = WsFrame::message(text.into_bytes(), WsOpCode::Data(Data::Text), true);
    let mut encoded = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut encoded);
    encoded.into()
}
