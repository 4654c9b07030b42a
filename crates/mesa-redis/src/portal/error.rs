//! What can go wrong handing or taking Portal events.

/// Why an event was not handed, or a worker could not take the next one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// Fire-and-forget: no live worker took the event (the pool is empty, or no listener received the
    /// publication). The event is not delivered; Mesa 1.5 drops it silently, we say so.
    #[error("no live portal worker in `{pool}`: event refused")]
    NoWorker {
        /// The pool that was empty.
        pool: String,
    },
    /// Redis refused the command, timed out, or cannot be reached (the connection is re-established in the
    /// background; retry).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A fire-and-forget worker's subscription ended (the connection was lost). Join again.
    #[error("the portal subscription ended (connection lost)")]
    SubscriptionClosed,
    /// Redis answered something Portal did not write (a foreign writer, or a bug).
    #[error("unexpected reply from redis: {0}")]
    UnexpectedReply(String),
}
