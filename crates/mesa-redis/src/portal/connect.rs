//! The one place Portal opens Redis connections. URLs are read by the engine's own
//! [`RedisConfig::from_url`], so Portal takes the same forms: `redis://`, `rediss://` and
//! `redis+sentinel://` connect (through the engine's `backend::server_client`); `redis+cluster://` is refused
//! with [`PortalError::ClusterUnsupported`] (see `docs/portal.md`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{Client, ProtocolVersion};

use crate::backend;
use crate::config::{RedisConfig, Topology};
use crate::portal::error::PortalError;

/// The topology `url` names, if Portal can use it (no I/O).
pub(crate) fn topology(url: &str) -> Result<Topology, PortalError> {
    let config = RedisConfig::from_url(url)?;
    if config.is_cluster() {
        return Err(PortalError::ClusterUnsupported);
    }
    Ok(config.topology)
}

/// A client of the server: the URL's, or the master the Sentinels name now. RESP2: Portal's subscriber is a
/// dedicated pub/sub connection, which RESP2 gives without push handling.
async fn client(url: &str) -> Result<Client, PortalError> {
    let topology = topology(url)?;
    backend::server_client(&topology, ProtocolVersion::RESP2)
        .await?
        .ok_or(PortalError::ClusterUnsupported)
}

/// A command connection that reconnects in the background; commands fail after `response_timeout`.
///
/// Through Sentinel the master is asked once, here: the connection's own reconnects go back to that address
/// (a sender makes a new connection when the old master fails it; see `docs/portal.md`).
pub(crate) async fn connection(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, PortalError> {
    let client = client(url).await?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(response_timeout));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// A connection in subscriber mode (it ends when the connection is lost; the master is asked again then).
pub(crate) async fn subscriber(url: &str) -> Result<PubSub, PortalError> {
    Ok(client(url).await?.get_async_pubsub().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_url_forms_are_read_and_cluster_is_refused() {
        assert!(matches!(
            topology("redis://127.0.0.1:6379/1"),
            Ok(Topology::Standalone { .. })
        ));
        assert!(matches!(
            topology("rediss://:pw@127.0.0.1:6380"),
            Ok(Topology::Standalone { .. })
        ));
        assert!(matches!(
            topology("redis+sentinel://127.0.0.1:26379/mymaster"),
            Ok(Topology::Sentinel { .. })
        ));
        assert!(matches!(
            topology("redis+cluster://127.0.0.1:7000"),
            Err(PortalError::ClusterUnsupported)
        ));
        assert!(matches!(topology("http://x"), Err(PortalError::Config(_))));
    }
}
