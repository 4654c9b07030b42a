//! Fire-and-forget mode: Mesa 1.5's Portal over pub/sub (every Redis command of this mode is here).
//!
//! Workers are ids in the set `available_portals_pool[_<ns>]`, announced on the channel of the same name
//! with `{"id", "ready"}`. A sender picks one id per event and publishes the event with its `portalId` on
//! `portal[_<ns>]`; every worker hears every event and keeps those addressed to it.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};

use crate::portal::config::{Names, PortalConfig};
use crate::portal::connect;
use crate::portal::delivery::PortalDelivery;
use crate::portal::error::PortalError;
use crate::portal::event::PortalEvent;

/// Picks the `turn`-th live portal (ids sorted, so turns go round robin) and publishes the event to it, in
/// one step: the pool is read fresh for every event, nothing is cached on the node. Returns the number of
/// subscribers that received it, or -1 when the pool is empty.
/// KEYS[1] = pool set; ARGV = channel, the event's JSON up to `"portalId":`, turn.
const PICK_AND_PUBLISH: &str = r#"
local ids = redis.call('SMEMBERS', KEYS[1])
if #ids == 0 then return -1 end
table.sort(ids)
local id = ids[(tonumber(ARGV[3]) % #ids) + 1]
return redis.call('PUBLISH', ARGV[1], ARGV[2] .. cjson.encode(id) .. '}')
"#;

/// The node side.
pub(crate) struct PoolSender {
    conn: ConnectionManager,
    names: Names,
    script: redis::Script,
    turn: AtomicU64,
}

impl PoolSender {
    pub(crate) async fn connect(config: &PortalConfig) -> Result<PoolSender, PortalError> {
        Ok(PoolSender {
            conn: connect::connection(&config.url, config.response_timeout).await?,
            names: config.names(),
            script: redis::Script::new(PICK_AND_PUBLISH),
            turn: AtomicU64::new(0),
        })
    }

    pub(crate) async fn hand(&self, event: &PortalEvent) -> Result<(), PortalError> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let receivers: i64 = self
            .script
            .key(&self.names.pool)
            .arg(&self.names.channel)
            .arg(event.to_mesa_json_prefix())
            .arg(turn)
            .invoke_async(&mut conn)
            .await?;
        // -1: nobody in the pool; 0: ids in the pool but nobody listening (workers that died without leaving).
        // A dead id among live ones is not detectable here: its events are lost, as in Mesa 1.5.
        if receivers <= 0 {
            return Err(PortalError::NoWorker {
                pool: self.names.pool.clone(),
            });
        }
        Ok(())
    }
}

/// The worker side: subscribed to the event channel, registered in the pool.
pub(crate) struct PoolWorker {
    id: String,
    url: String,
    conn: ConnectionManager,
    names: Names,
    messages: PubSubStream,
    registered: bool,
}

impl PoolWorker {
    pub(crate) async fn join(config: &PortalConfig, id: String) -> Result<PoolWorker, PortalError> {
        let names = config.names();
        let messages = subscribe(&config.url, &names).await?;
        let mut conn = connect::connection(&config.url, config.response_timeout).await?;
        // Subscribed before announcing: no event addressed to us can be published before we listen.
        announce(&mut conn, &names, &id, true).await?;
        Ok(PoolWorker {
            id,
            url: config.url.clone(),
            conn,
            names,
            messages,
            registered: true,
        })
    }

    /// The next event addressed to this worker. When the subscription is lost, subscribes and announces
    /// again (events published meanwhile are lost: fire-and-forget).
    pub(crate) async fn next(&mut self) -> Result<PortalDelivery, PortalError> {
        loop {
            let Some(message) = self.messages.next().await else {
                self.messages = subscribe(&self.url, &self.names).await?;
                announce(&mut self.conn, &self.names, &self.id, true).await?;
                self.registered = true;
                continue;
            };
            let payload: String = match message.get_payload() {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::warn!(%error, "portal: skipping a non-text message");
                    continue;
                }
            };
            match PortalEvent::from_json(&payload) {
                Ok((event, Some(portal))) if portal == self.id => {
                    return Ok(PortalDelivery::unacknowledged(event));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "portal: skipping an undecodable event"),
            }
        }
    }

    /// Leaves the pool: removed from the set, `ready: false` announced.
    pub(crate) async fn leave(&mut self) -> Result<(), PortalError> {
        if self.registered {
            self.registered = false;
            announce(&mut self.conn, &self.names, &self.id, false).await?;
        }
        Ok(())
    }
}

impl Drop for PoolWorker {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        // Best effort: without a runtime (or if it fails) the id stays in the pool, as a crashed worker's does.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut conn, names, id) = (self.conn.clone(), self.names.clone(), self.id.clone());
            runtime.spawn(async move {
                if let Err(error) = announce(&mut conn, &names, &id, false).await {
                    tracing::warn!(%error, id, "portal: could not leave the pool");
                }
            });
        }
    }
}

async fn subscribe(url: &str, names: &Names) -> Result<PubSubStream, PortalError> {
    let mut pubsub = connect::subscriber(url).await?;
    pubsub.subscribe(&names.channel).await?;
    Ok(pubsub.into_on_message())
}

/// Joins (`SADD` then `ready: true`) or leaves (`SREM` then `ready: false`) the pool, as a 1.5 `Portal` does.
async fn announce(
    conn: &mut ConnectionManager,
    names: &Names,
    id: &str,
    ready: bool,
) -> Result<(), PortalError> {
    let state = serde_json::json!({ "id": id, "ready": ready }).to_string();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if ready {
        pipe.cmd("SADD").arg(&names.pool).arg(id).ignore();
    } else {
        pipe.cmd("SREM").arg(&names.pool).arg(id).ignore();
    }
    pipe.cmd("PUBLISH").arg(&names.pool).arg(state).ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(())
}
