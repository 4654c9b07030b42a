//! Sends handed straight to Redis, as an application backend would, in either gateway's format: this
//! project's (`mesa_redis::Dispatcher`: one publish on each recipient user's channel, so only the node holding
//! that user receives it) or Mesa 1.5's (`Dispatcher` of `@cryb/mesa` 1.5.8: `{"message":{op,d,t},
//! "recipients":[ids]}` published on `ws` or `ws_<namespace>`, which every node receives).
//!
//! Either way the sends of one [`RedisSender`] reach Redis in the order they were made, pipelined; the
//! outcome of each is counted, never awaited by the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mesa_engine::{EncodedFrame, Target};
use mesa_redis::{Dispatcher, RedisConfig};
use tokio::sync::mpsc;

use crate::args::DispatchFormat;

/// Sends queued for Mesa 1.5's format before new ones are refused (counted as errors).
const QUEUE: usize = 65_536;
/// Publications in one pipeline at most.
const BATCH: usize = 512;

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The Redis URL or namespace is not usable (the message never holds the URL).
    #[error("Redis configuration: {0}")]
    Config(String),
    /// Redis did not accept a connection (Mesa 1.5's format connects at once).
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
}

/// Counters of a [`RedisSender`].
#[derive(Debug, Default)]
pub struct SendCounts {
    /// Sends Redis accepted.
    pub accepted: AtomicU64,
    /// Sends that failed (Redis refused or did not answer, queue full).
    pub failed: AtomicU64,
}

/// Publishes frames to single users through Redis.
pub struct RedisSender {
    way: Way,
    counts: Arc<SendCounts>,
}

enum Way {
    Ours(Box<Dispatcher>),
    Mesa15(mpsc::Sender<String>),
}

impl RedisSender {
    /// Connects to `url` for `format`; `namespace` as the gateways use it (`None`: ours `default`, Mesa 1.5
    /// none). Must run inside the Tokio runtime.
    pub async fn connect(
        format: DispatchFormat,
        url: &str,
        namespace: Option<&str>,
    ) -> Result<RedisSender, DispatchError> {
        let counts = Arc::new(SendCounts::default());
        let way = match format {
            DispatchFormat::Ours => {
                let mut config =
                    RedisConfig::from_url(url).map_err(|e| DispatchError::Config(e.to_string()))?;
                if let Some(ns) = namespace {
                    config = config.with_namespace(ns);
                }
                Way::Ours(Box::new(
                    Dispatcher::connect(config)
                        .map_err(|e| DispatchError::Config(e.to_string()))?,
                ))
            }
            DispatchFormat::Mesa15 => {
                let client = redis::Client::open(url).map_err(DispatchError::Connect)?;
                let connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(DispatchError::Connect)?;
                let channel = match namespace {
                    Some(ns) => format!("ws_{ns}"),
                    None => "ws".to_string(),
                };
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(publish_mesa15(connection, channel, rx, counts.clone()));
                Way::Mesa15(tx)
            }
        };
        Ok(RedisSender { way, counts })
    }

    /// Queues `frame` (a complete frame's JSON) for every session of `user`.
    pub fn send(&self, user: &str, frame: String) {
        match &self.way {
            Way::Ours(dispatcher) => {
                let pending = dispatcher.send(&EncodedFrame::from(frame), &Target::users([user]));
                let counts = self.counts.clone();
                tokio::spawn(async move {
                    let counter = match pending.await {
                        Ok(_) => &counts.accepted,
                        Err(_) => &counts.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
            Way::Mesa15(queue) => {
                // Mesa 1.5's Dispatcher: JSON.stringify({message: message.serialize(true), recipients}).
                let recipients = serde_json::to_string(&[user]).unwrap_or_else(|_| "[]".into());
                let payload = format!(r#"{{"message":{frame},"recipients":{recipients}}}"#);
                if queue.try_send(payload).is_err() {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// What happened to the sends so far.
    pub fn counts(&self) -> &SendCounts {
        &self.counts
    }
}

/// Publishes what `rx` yields on `channel`, in order, up to [`BATCH`] per pipeline.
async fn publish_mesa15(
    mut connection: redis::aio::MultiplexedConnection,
    channel: String,
    mut rx: mpsc::Receiver<String>,
    counts: Arc<SendCounts>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for payload in &batch {
            pipe.cmd("PUBLISH").arg(&channel).arg(payload);
        }
        let n = batch.len() as u64;
        let counter = match pipe.query_async::<Vec<i64>>(&mut connection).await {
            Ok(_) => &counts.accepted,
            Err(_) => &counts.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        batch.clear();
    }
}
