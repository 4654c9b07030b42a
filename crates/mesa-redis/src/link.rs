//! The engine's connections to Redis and their supervisor: the one place that connects, notices a loss,
//! backs off, reconnects and says whether Redis is reachable ([`Health`]).
//!
//! A [`Link`] holds the current [`Connections`] (none while Redis is unreachable). Whoever notices that a
//! connection of one generation is broken (its push handler on a close, the probe, a failed command) calls
//! [`Link::lost`]; the supervisor drops that generation, reports Degraded and opens a new one, which its
//! [`Hooks`] prepare (resubscribe) before it is used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use mesa_engine::{BoxFuture, Health};
use redis::RedisResult;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{self, Conn, PushHandler};
use crate::config::RedisConfig;
use crate::keys::Keys;
use crate::metrics::RedisMetrics;

/// The connections of one generation (one successful connect).
pub(crate) struct Connections {
    /// Which connect this is (from 1), to ignore losses reported for older connections.
    pub(crate) generation: u64,
    /// Publishes, presence writes and queries: one multiplexed connection, so one origin's publishes
    /// reach Redis in the order they were queued.
    pub(crate) commands: Conn,
    /// Subscriptions and the messages they bring (a gateway's; a Dispatcher has none).
    pub(crate) subscriber: Option<Conn>,
}

/// What the owner of a link does with new connections.
pub(crate) trait Hooks: Send + Sync + 'static {
    /// The push handler of generation `generation`'s subscriber connection; `None`: open none.
    fn subscriber(&self, generation: u64) -> Option<PushHandler>;
    /// Prepares new connections (resubscribes) before they become current; an error retries the connect.
    fn connected<'a>(&'a self, connections: &'a Arc<Connections>)
        -> BoxFuture<'a, RedisResult<()>>;
    /// The prepared connections are now current (what waits for a connection may go on).
    fn current(&self) {}
}

/// The connections to Redis, shared by the engine's tasks.
pub(crate) struct Link {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) metrics: RedisMetrics,
    /// Cancelled when the engine stops: every task ends.
    pub(crate) shutdown: CancellationToken,
    current: watch::Sender<Option<Arc<Connections>>>,
    /// Set once the first connect succeeded: from then on a send while disconnected fails at once
    /// (before, it waits for the first connection within its timeout).
    ever_connected: AtomicBool,
    health: Mutex<Health>,
    lost_tx: mpsc::UnboundedSender<(u64, String)>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, String)>>>,
}

impl Link {
    /// A link that is not connected yet (Degraded until [`Link::supervise`] connects).
    pub(crate) fn new(config: RedisConfig) -> Arc<Link> {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let metrics = RedisMetrics::default();
        metrics.set_degraded(true);
        Arc::new(Link {
            keys: Keys::new(&config.namespace),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            current: watch::Sender::new(None),
            ever_connected: AtomicBool::new(false),
            health: Mutex::new(Health::Degraded {
                reason: "connecting to Redis".into(),
                since: SystemTime::now(),
            }),
            lost_tx,
            lost_rx: Mutex::new(Some(lost_rx)),
        })
    }

    fn health_lock(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether Redis is reachable now.
    pub(crate) fn health(&self) -> Health {
        self.health_lock().clone()
    }

    /// Why Redis cannot be used now, for errors.
    pub(crate) fn down_reason(&self) -> String {
        match self.health() {
            Health::Degraded { reason, .. } => reason,
            Health::Healthy => "Redis connection lost".into(),
        }
    }

    /// The current connections, if any.
    pub(crate) fn connections(&self) -> Option<Arc<Connections>> {
        self.current.borrow().clone()
    }

    /// Whether a send now must fail at once: Redis was reachable and is not any more.
    pub(crate) fn is_lost(&self) -> bool {
        self.ever_connected.load(Ordering::Acquire) && self.current.borrow().is_none()
    }

    /// The current connections, waiting for them until `deadline`.
    pub(crate) async fn wait_connected(
        &self,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<Connections>> {
        let mut rx = self.current.subscribe();
        let wait = async {
            rx.wait_for(|c| c.is_some())
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        tokio::time::timeout_at(deadline, wait).await.ok().flatten()
    }

    /// Reports that a connection of `generation` is broken; the supervisor replaces it (if it is current).
    pub(crate) fn lost(&self, generation: u64, reason: impl Into<String>) {
        let _ = self.lost_tx.send((generation, reason.into()));
    }

    fn set_degraded(&self, reason: String) {
        let mut health = self.health_lock();
        let since = match &*health {
            Health::Healthy => {
                tracing::warn!(%reason, "Redis engine degraded: other nodes are not reached");
                SystemTime::now()
            }
            Health::Degraded { since, .. } => {
                tracing::debug!(%reason, "Redis still unreachable");
                *since
            }
        };
        *health = Health::Degraded { reason, since };
        self.metrics.set_degraded(true);
    }

    fn set_healthy(&self) {
        let mut health = self.health_lock();
        if let Health::Degraded { since, .. } = &*health {
            let down = since.elapsed().unwrap_or_default();
            tracing::info!(down_ms = down.as_millis() as u64, "Redis engine healthy");
        }
        *health = Health::Healthy;
        self.metrics.set_degraded(false);
    }

    async fn open(&self, generation: u64, hooks: &dyn Hooks) -> RedisResult<Arc<Connections>> {
        let lost = self.lost_tx.clone();
        let on_commands: PushHandler = Arc::new(move |info| {
            if backend::is_disconnection(&info) {
                let _ = lost.send((generation, "Redis connection closed".into()));
            }
        });
        let timeout = self.config.connect_timeout;
        let commands = backend::connect(&self.config.topology, timeout, on_commands).await?;
        let subscriber = match hooks.subscriber(generation) {
            Some(handler) => Some(backend::connect(&self.config.topology, timeout, handler).await?),
            None => None,
        };
        let connections = Arc::new(Connections {
            generation,
            commands,
            subscriber,
        });
        hooks.connected(&connections).await?;
        Ok(connections)
    }

    /// Connects, and reconnects after every loss with exponential backoff (jittered) between
    /// `reconnect_min` and `reconnect_max`, until the shutdown token is cancelled.
    pub(crate) async fn supervise(self: Arc<Self>, hooks: Arc<dyn Hooks>) {
        let taken = self
            .lost_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut lost) = taken else {
            return;
        };
        let mut backoff = self.config.reconnect_min;
        let mut generation = 0;
        loop {
            generation += 1;
            let attempt =
                tokio::time::timeout(self.config.connect_timeout, self.open(generation, &*hooks));
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                result = attempt => result,
            };
            match result {
                Ok(Ok(connections)) => {
                    if self.ever_connected.swap(true, Ordering::AcqRel) {
                        self.metrics.reconnected();
                    }
                    self.current.send_replace(Some(connections));
                    self.set_healthy();
                    hooks.current();
                    backoff = self.config.reconnect_min;
                    let reason = loop {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {
                                self.current.send_replace(None);
                                return;
                            }
                            report = lost.recv() => match report {
                                Some((g, reason)) if g == generation => break reason,
                                Some(_) => continue,
                                None => return,
                            },
                        }
                    };
                    self.current.send_replace(None);
                    self.set_degraded(reason);
                }
                Ok(Err(error)) => self.set_degraded(format!("cannot connect to Redis: {error}")),
                Err(_) => self.set_degraded(format!(
                    "connecting to Redis took more than {:?}",
                    self.config.connect_timeout
                )),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(self.config.reconnect_max);
        }
        self.current.send_replace(None);
    }
}

/// Between half of `d` and `d`, so that nodes that lost Redis together do not all return at once.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or_default();
    let half = d / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}
