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
    /// The URL is not one the engine reads (`RedisConfig::from_url`).
    #[error("portal: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A `redis+cluster://` URL: Portal does not run over Redis Cluster yet (its stream reads and pool script
    /// use one server's connection); give it a standalone or Sentinel-managed Redis.
    #[error(
        "portal: Redis Cluster (redis+cluster://) is not supported yet: use a standalone or Sentinel-managed          Redis (redis://, rediss://, redis+sentinel://)"
    )]
    ClusterUnsupported,
    /// Redis answered something Portal did not write (a foreign writer, or a bug).
    #[error("unexpected reply from redis: {0}")]
    UnexpectedReply(String),
}
