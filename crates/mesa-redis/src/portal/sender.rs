//! The node side: a gateway hands each client event to its `PortalSender`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::portal::config::{PortalConfig, PortalMode};
use crate::portal::error::PortalError;
use crate::portal::event::PortalEvent;
use crate::portal::pool::PoolSender;
use crate::portal::stream::StreamSender;

/// Hands client events to Portal workers. Cheap to share behind an `Arc`; `hand` takes `&self`.
///
/// One client's events reach workers in the order they were handed when each `hand` is awaited before the
/// next (see `docs/portal.md` for what each mode guarantees).
pub struct PortalSender {
    mode: Mode,
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

impl PortalSender {
    /// Connects to Redis in `config`'s mode. At-least-once: also creates the consumer group, so that events
    /// handed before any worker joins wait in the stream.
    pub async fn connect(config: &PortalConfig) -> Result<PortalSender, PortalError> {
        let mode = match &config.mode {
            PortalMode::FireAndForget => Mode::Pool(PoolSender::connect(config).await?),
            PortalMode::AtLeastOnce(options) => {
                Mode::Stream(StreamSender::connect(config, options).await?)
            }
        };
        Ok(PortalSender {
            mode,
            refused: AtomicU64::new(0),
            logged: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        })
    }

    /// Hands one event. `Ok` means Redis took it: published to a live worker (fire-and-forget) or appended
    /// to the stream (at-least-once). An error means it was not taken — never a silent drop; it is counted
    /// ([`PortalSender::refused`]) and logged here (at most one line per 5 s, with the number not logged).
    pub async fn hand(&self, event: &PortalEvent) -> Result<(), PortalError> {
        let result = match &self.mode {
            Mode::Pool(sender) => sender.hand(event).await,
            Mode::Stream(sender) => sender.hand(event).await,
        };
        if let Err(error) = &result {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.log_refusal(event, error);
        }
        result
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
