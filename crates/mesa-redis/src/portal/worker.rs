//! The worker side: a service that is not a gateway joins and takes client events.

use crate::portal::config::{PortalConfig, PortalMode};
use crate::portal::delivery::PortalDelivery;
use crate::portal::error::PortalError;
use crate::portal::pool::PoolWorker;
use crate::portal::stream::StreamWorker;

/// One Portal worker.
///
/// Fire-and-forget: registered in `available_portals_pool` (as a Mesa 1.5 `Portal`) from `join` until
/// [`PortalWorker::leave`] or drop. At-least-once: a consumer named `worker_id` of the stream's group; it
/// reclaims entries other consumers left unacknowledged for longer than `claim_idle`. Reuse a worker id
/// across restarts so that the group's consumer list does not grow.
pub struct PortalWorker {
    id: String,
    mode: Mode,
}

enum Mode {
    Pool(PoolWorker),
    Stream(StreamWorker),
}

impl PortalWorker {
    /// Joins as `worker_id` (unique among live workers of the namespace).
    pub async fn join(
        config: &PortalConfig,
        worker_id: impl Into<String>,
    ) -> Result<PortalWorker, PortalError> {
        let id = worker_id.into();
        let mode = match &config.mode {
            PortalMode::FireAndForget => Mode::Pool(PoolWorker::join(config, id.clone()).await?),
            PortalMode::AtLeastOnce(options) => {
                Mode::Stream(StreamWorker::join(config, options, id.clone()).await?)
            }
        };
        Ok(PortalWorker { id, mode })
    }

    /// The worker's id (its portal id, or its consumer name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the next event for this worker. An error is a Redis failure: call again (after a pause)
    /// to retry, the worker reconnects.
    pub async fn next(&mut self) -> Result<PortalDelivery, PortalError> {
        match &mut self.mode {
            Mode::Pool(worker) => worker.next().await,
            Mode::Stream(worker) => worker.next().await,
        }
    }

    /// Leaves: fire-and-forget, out of the pool (no more events are addressed to it); at-least-once, what it
    /// read but did not yet return is handed back at once, and the consumer is removed if it holds nothing.
    pub async fn leave(mut self) -> Result<(), PortalError> {
        match &mut self.mode {
            Mode::Pool(worker) => worker.leave().await,
            Mode::Stream(worker) => worker.leave().await,
        }
    }
}
