//! The one place Portal opens Redis connections, so that the engine's own connection handling can replace
//! it later without touching the rest.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};

use crate::portal::error::PortalError;

/// A command connection that reconnects in the background; commands fail after `response_timeout`.
pub(crate) async fn connection(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, PortalError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(response_timeout));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// A connection in subscriber mode (it ends when the connection is lost).
pub(crate) async fn subscriber(url: &str) -> Result<PubSub, PortalError> {
    let client = redis::Client::open(url)?;
    Ok(client.get_async_pubsub().await?)
}
