//! At-least-once mode: one Redis Stream per namespace and a consumer group (every stream command but
//! `XACK`, which is in `delivery.rs`, is here).
//!
//! A node `XADD`s each event (one field, `event`, the event's JSON). Workers of the group read new entries
//! with `XREADGROUP`; an entry stays pending until acknowledged. Every `claim_interval` each worker
//! `XAUTOCLAIM`s entries pending longer than `claim_idle` — those of a dead worker — and delivers them again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use crate::portal::config::{PortalConfig, StreamOptions};
use crate::portal::connect;
use crate::portal::delivery::{PortalDelivery, Receipt};
use crate::portal::error::PortalError;
use crate::portal::event::PortalEvent;

/// The stream entry's one field.
const FIELD: &str = "event";

/// The node side.
pub(crate) struct StreamSender {
    conn: ConnectionManager,
    key: String,
    max_len: usize,
}

impl StreamSender {
    /// Connects and creates the group, so that events handed before any worker joined wait for it.
    pub(crate) async fn connect(
        config: &PortalConfig,
        options: &StreamOptions,
    ) -> Result<StreamSender, PortalError> {
        let mut conn = connect::connection(&config.url, config.response_timeout).await?;
        let key = config.names().stream;
        ensure_group(&mut conn, &key, &options.group).await?;
        Ok(StreamSender {
            conn,
            key,
            max_len: options.max_len,
        })
    }

    pub(crate) async fn hand(&self, event: &PortalEvent) -> Result<(), PortalError> {
        let mut conn = self.conn.clone();
        redis::cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg(FIELD)
            .arg(event.to_json())
            .query_async::<String>(&mut conn)
            .await?;
        Ok(())
    }
}

/// Creates the consumer group (and the stream) unless it exists. From id 0: entries already in the stream
/// are delivered, none is skipped.
async fn ensure_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
) -> Result<(), PortalError> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await;
    match created {
        Err(error) if error.code() != Some("BUSYGROUP") => Err(error.into()),
        _ => Ok(()),
    }
}

/// Whether Redis lost the group (restarted empty, or the key was deleted): create it again and retry.
fn lost_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// The worker side: one consumer of the group.
pub(crate) struct StreamWorker {
    consumer: String,
    /// Acknowledgements, claims, group creation.
    conn: ConnectionManager,
    /// Blocking reads only: a blocked read would hold up every command queued behind it.
    reader: ConnectionManager,
    key: Arc<str>,
    group: Arc<str>,
    options: StreamOptions,
    buffer: VecDeque<PortalDelivery>,
    next_claim: Instant,
    /// Where the current `XAUTOCLAIM` scan of the pending list resumes (`0-0`: from the start).
    cursor: String,
}

impl StreamWorker {
    pub(crate) async fn join(
        config: &PortalConfig,
        options: &StreamOptions,
        consumer: String,
    ) -> Result<StreamWorker, PortalError> {
        let mut conn = connect::connection(&config.url, config.response_timeout).await?;
        let reader =
            connect::connection(&config.url, options.block + config.response_timeout).await?;
        let key = config.names().stream;
        ensure_group(&mut conn, &key, &options.group).await?;
        Ok(StreamWorker {
            consumer,
            conn,
            reader,
            key: key.into(),
            group: options.group.as_str().into(),
            options: options.clone(),
            buffer: VecDeque::new(),
            // A worker that joins first looks for what a dead one left.
            next_claim: Instant::now(),
            cursor: "0-0".to_owned(),
        })
    }

    /// The next entry: buffered, else reclaimed (when a claim is due), else read (waiting at most until the
    /// next claim is due). Cancel-safe in effect: entries read by a cancelled call stay pending in Redis and
    /// are reclaimed after `claim_idle`.
    pub(crate) async fn next(&mut self) -> Result<PortalDelivery, PortalError> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(delivery);
            }
            let now = Instant::now();
            if now >= self.next_claim {
                self.claim().await?;
                continue;
            }
            let wait = self.options.block.min(self.next_claim - now);
            self.read(wait.as_millis().max(1)).await?;
        }
    }

    async fn read(&mut self, block_ms: u128) -> Result<(), PortalError> {
        let reply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&*self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.options.batch.max(1))
            .arg("BLOCK")
            .arg(u64::try_from(block_ms).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&*self.key)
            .arg(">")
            .query_async::<Option<StreamReadReply>>(&mut self.reader)
            .await;
        let reply = match reply {
            Err(error) if lost_group(&error) => {
                ensure_group(&mut self.conn, &self.key, &self.group).await?;
                return Ok(());
            }
            reply => reply?,
        };
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.take(entry, false).await;
        }
        Ok(())
    }

    async fn claim(&mut self) -> Result<(), PortalError> {
        let reply = redis::cmd("XAUTOCLAIM")
            .arg(&*self.key)
            .arg(&*self.group)
            .arg(&self.consumer)
            .arg(u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(self.options.batch.max(1))
            .query_async::<StreamAutoClaimReply>(&mut self.conn)
            .await;
        let reply = match reply {
            Err(error) if lost_group(&error) => {
                ensure_group(&mut self.conn, &self.key, &self.group).await?;
                return Ok(());
            }
            reply => reply?,
        };
        if !reply.deleted_ids.is_empty() {
            // Trimmed by MAXLEN (or deleted) while pending: these events are lost.
            tracing::warn!(
                count = reply.deleted_ids.len(),
                stream = &*self.key,
                "portal: pending entries were trimmed before any worker acknowledged them"
            );
        }
        for entry in reply.claimed {
            // Our own slow-to-be-taken entries can be idle too; they are in the buffer already.
            if !self.buffer.iter().any(|d| d.entry_id() == Some(&entry.id)) {
                self.take(entry, true).await;
            }
        }
        // A full page means more may be pending: go on at the next call, else wait for the next interval.
        if reply.next_stream_id == "0-0" {
            self.cursor = reply.next_stream_id;
            self.next_claim = Instant::now() + self.options.claim_interval;
        } else {
            self.cursor = reply.next_stream_id;
        }
        Ok(())
    }

    /// Buffers an entry as a delivery; an entry that is not a Portal event is acknowledged and skipped, so
    /// that it does not come back forever.
    async fn take(&mut self, entry: StreamId, redelivered: bool) {
        let decoded = entry
            .get::<String>(FIELD)
            .map(|json| PortalEvent::from_json(&json));
        match decoded {
            Some(Ok((event, _))) => {
                let receipt = Receipt {
                    conn: self.conn.clone(),
                    stream: self.key.clone(),
                    group: self.group.clone(),
                    id: entry.id,
                };
                self.buffer
                    .push_back(PortalDelivery::entry(event, receipt, redelivered));
            }
            other => {
                let error = match other {
                    Some(Err(error)) => error.to_string(),
                    _ => format!("no `{FIELD}` field"),
                };
                tracing::warn!(id = entry.id, %error, "portal: acknowledging an entry that is not an event");
                let acked = redis::cmd("XACK")
                    .arg(&*self.key)
                    .arg(&*self.group)
                    .arg(&entry.id)
                    .query_async::<i64>(&mut self.conn)
                    .await;
                if let Err(error) = acked {
                    tracing::warn!(id = entry.id, %error, "portal: could not acknowledge a bad entry");
                }
            }
        }
    }

    /// Leaves the group: entries read but not yet taken are made claimable by others at once, and the
    /// consumer is removed when it holds nothing (entries the caller took but did not acknowledge keep it).
    pub(crate) async fn leave(&mut self) -> Result<(), PortalError> {
        let ids: Vec<String> = self
            .buffer
            .drain(..)
            .filter_map(|d| d.entry_id().map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            // Claimed by ourselves with an idle time already past `claim_idle`: the next XAUTOCLAIM of any
            // worker takes them.
            redis::cmd("XCLAIM")
                .arg(&*self.key)
                .arg(&*self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&ids)
                .arg("IDLE")
                .arg(u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg("JUSTID")
                .query_async::<redis::Value>(&mut self.conn)
                .await?;
            return Ok(());
        }
        let pending: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(&*self.key)
            .arg(&*self.group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer)
            .query_async(&mut self.conn)
            .await?;
        if pending.is_empty() {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&*self.key)
                .arg(&*self.group)
                .arg(&self.consumer)
                .query_async::<i64>(&mut self.conn)
                .await?;
        }
        Ok(())
    }
}
