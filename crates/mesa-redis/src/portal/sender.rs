//! The node side: a gateway hands each client event to its `PortalSender`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::portal::config::{PortalConfig, PortalMode};
use crate::portal::connect;
use crate::portal::error::PortalError;
use crate::portal::event::PortalEvent;
use crate::portal::pool::PoolSender;
use crate::portal::stream::StreamSender;

/// Hands client events to Portal workers. Cheap to share behind an `Arc`; `hand` takes `&self`.
///
/// One client's events reach workers in the order they were handed when each `hand` is awaited before the
/// next (see `docs/portal.md` for what each mode guarantees).
pub struct PortalSender {
    /// Replaced after a Sentinel failover (see [`PortalSender::hand`]).
    mode: RwLock<Arc<Mode>>,
    config: PortalConfig,
    /// Through Sentinel: whether a reconnect (asking the Sentinels for the master) is under way.
    reconnecting: Option<AtomicBool>,
    refused: AtomicU64,
    /// When a refusal was last logged: while Redis is down every event is refused, so at most one line per
    /// [`LOG_EVERY`] says so, with the count of those not logged.
    logged: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

/// At most one `portal: event refused` line per this long.
const LOG_EVERY: Duration = Duration::from_secs(5);

enum Mode {
    Pool(PoolSender),
    Stream(StreamSender),
}

impl Mode {
    async fn connect(config: &PortalConfig) -> Result<Mode, PortalError> {
        Ok(match &config.mode {
            PortalMode::FireAndForget => Mode::Pool(PoolSender::connect(config).await?),
            PortalMode::AtLeastOnce(options) => {
                Mode::Stream(StreamSender::connect(config, options).await?)
            }
        })
    }

    async fn hand(&self, event: &PortalEvent) -> Result<(), PortalError> {
        match self {
            Mode::Pool(sender) => sender.hand(event).await,
            Mode::Stream(sender) => sender.hand(event).await,
        }
    }
}

/// Whether an error may mean the master moved: it became a replica, or its address stopped answering.
fn moved(error: &PortalError) -> bool {
    match error {
        PortalError::Redis(error) => {
            error.code() == Some("READONLY")
                || error.is_io_error()
                || error.is_connection_refusal()
                || error.is_connection_dropped()
                || error.is_timeout()
        }
        _ => false,
    }
}

impl PortalSender {
    /// Connects to Redis in `config`'s mode. At-least-once: also creates the consumer group, so that events
    /// handed before any worker joins wait in the stream.
    pub async fn connect(config: &PortalConfig) -> Result<PortalSender, PortalError> {
        let sentinel = matches!(
            connect::topology(&config.url)?,
            crate::config::Topology::Sentinel { .. }
        );
        Ok(PortalSender {
            mode: RwLock::new(Arc::new(Mode::connect(config).await?)),
            config: config.clone(),
            reconnecting: sentinel.then(|| AtomicBool::new(false)),
            refused: AtomicU64::new(0),
            logged: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        })
    }

    /// Hands one event. `Ok` means Redis took it: published to a live worker (fire-and-forget) or appended
    /// to the stream (at-least-once). An error means it was not taken — never a silent drop; it is counted
    /// ([`PortalSender::refused`]) and logged here (at most one line per 5 s, with the number not logged).
    ///
    /// Through Sentinel, an error that says the server is no longer the master (`READONLY`) or cannot be
    /// reached makes the sender ask the Sentinels for the master and connect to it (within the response
    /// timeout) before returning the error: the next event goes to the new master. The failed event is not
    /// retried (it might have been taken).
    pub async fn hand(&self, event: &PortalEvent) -> Result<(), PortalError> {
        let mode = self.mode.read().unwrap_or_else(|p| p.into_inner()).clone();
        let result = mode.hand(event).await;
        if let Err(error) = &result {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.log_refusal(event, error);
            if moved(error) {
                self.follow_failover(&mode).await;
            }
        }
        result
    }

    /// Asks the Sentinels again and replaces the connection that failed (one reconnect at a time; others
    /// fail meanwhile as they would have).
    async fn follow_failover(&self, failed: &Arc<Mode>) {
        let Some(reconnecting) = &self.reconnecting else {
            return;
        };
        if reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let connected =
            tokio::time::timeout(self.config.response_timeout, Mode::connect(&self.config)).await;
        match connected {
            Ok(Ok(mode)) => {
                let mut current = self.mode.write().unwrap_or_else(|p| p.into_inner());
                if Arc::ptr_eq(&current, failed) {
                    *current = Arc::new(mode);
                    tracing::info!("portal: reconnected to the master the Sentinels name");
                }
            }
            Ok(Err(error)) => tracing::debug!(%error, "portal: cannot reach the master yet"),
            Err(_) => tracing::debug!("portal: the Sentinels or the master did not answer in time"),
        }
        reconnecting.store(false, Ordering::Release);
    }

    fn log_refusal(&self, event: &PortalEvent, error: &PortalError) {
        let now = Instant::now();
        let due = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let due = logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
            if due {
                *logged = Some(now);
            }
            due
        };
        if due {
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(kind = event.kind.name(), %error, unlogged, "portal: event refused");
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many events [`PortalSender::hand`] refused since this sender was made.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
