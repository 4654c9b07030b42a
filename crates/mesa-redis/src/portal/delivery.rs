//! What a worker receives, and how it acknowledges it.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::portal::error::PortalError;
use crate::portal::event::PortalEvent;

/// One event taken by a worker. In at-least-once mode, [`PortalDelivery::ack`] it once handled: until then
/// it stays pending and is handed to another worker if this one dies.
pub struct PortalDelivery {
    event: PortalEvent,
    receipt: Option<Receipt>,
    redelivered: bool,
}

/// Where an at-least-once delivery is acknowledged.
pub(crate) struct Receipt {
    pub(crate) conn: ConnectionManager,
    pub(crate) stream: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) id: String,
}

impl PortalDelivery {
    /// A fire-and-forget delivery: nothing to acknowledge.
    pub(crate) fn unacknowledged(event: PortalEvent) -> PortalDelivery {
        PortalDelivery {
            event,
            receipt: None,
            redelivered: false,
        }
    }

    /// A stream entry; `redelivered` when it was reclaimed from another consumer (or an earlier read).
    pub(crate) fn entry(event: PortalEvent, receipt: Receipt, redelivered: bool) -> PortalDelivery {
        PortalDelivery {
            event,
            receipt: Some(receipt),
            redelivered,
        }
    }

    /// The event.
    pub fn event(&self) -> &PortalEvent {
        &self.event
    }

    /// At-least-once: the stream entry id (`<ms>-<seq>`), the same on every redelivery of the event and
    /// increasing in the order events were handed, so workers can deduplicate and order by it. `None` in
    /// fire-and-forget mode.
    pub fn entry_id(&self) -> Option<&str> {
        self.receipt.as_ref().map(|r| r.id.as_str())
    }

    /// Whether this entry was reclaimed after another delivery that was not acknowledged in time (so it may
    /// already have been handled: at-least-once allows duplicates). Always `false` in fire-and-forget mode.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Acknowledges the event (`XACK`): it will not be delivered again. A no-op in fire-and-forget mode.
    pub async fn ack(self) -> Result<(), PortalError> {
        let Some(mut receipt) = self.receipt else {
            return Ok(());
        };
        redis::cmd("XACK")
            .arg(&*receipt.stream)
            .arg(&*receipt.group)
            .arg(&receipt.id)
            .query_async::<i64>(&mut receipt.conn)
            .await?;
        Ok(())
    }
}

impl fmt::Debug for PortalDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalDelivery")
            .field("event", &self.event)
            .field("entry_id", &self.entry_id())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}
