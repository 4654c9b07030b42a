//! The redis-rs side: opening one connection for a [`Topology`], and the few operations the engine needs on
//! it, the same whether it is one server or a Cluster.
//!
//! Connections speak RESP3, so that one connection carries both commands and pushed messages: a
//! subscription's messages reach the push handler given at connect time, in the connection's reading task.
//! There is no reconnection here: a lost connection reports a [`PushKind::Disconnection`] to its handler,
//! and [`crate::link`] opens new ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, RedisError, RedisResult, ScriptInvocation, TlsMode, Value,
};

use crate::config::Topology;
use crate::keys::slot_group;

pub(crate) use redis::PushKind;

/// Where a connection's pushes go (messages, subscription confirmations, its loss). Must not block.
pub(crate) type PushHandler = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// One connection to Redis: a multiplexed connection to a server, or a Cluster connection (one per node,
/// routed by slot). Cloning shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Subscribes or publishes per slot in a Cluster, in chunks elsewhere: how many channels per command.
const SUBSCRIBE_CHUNK: usize = 512;

impl Conn {
    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Runs a Lua script (EVALSHA, loading it after a Redis restart).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => script.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await,
        }
    }

    /// Runs `cmds` in order and returns their replies in order (a command Redis refused has a
    /// `Value::ServerError` in its place). One pipeline on a server; in a Cluster one pipeline per slot
    /// group (a key's hash tag, or the key), run side by side: commands on one key keep their order.
    /// Every command's first argument must be its key or channel (for `EVAL`/`EVALSHA`: its first key).
    pub(crate) async fn run(&self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match self.clone() {
            Conn::Single(mut c) => pipeline(&mut c, &cmds).await,
            Conn::Cluster(c) => {
                let mut groups: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
                for (at, cmd) in cmds.iter().enumerate() {
                    let key = match routing_key(cmd) {
                        Some(key) => slot_group(key).to_vec(),
                        None => Vec::new(),
                    };
                    groups.entry(key).or_default().push(at);
                }
                let runs = groups.into_values().map(|indexes| {
                    let mut c = c.clone();
                    let group: Vec<Cmd> = indexes.iter().map(|&i| cmds[i].clone()).collect();
                    async move { (indexes, pipeline(&mut c, &group).await) }
                });
                let mut replies = vec![Value::Nil; cmds.len()];
                for (indexes, result) in futures_util::future::join_all(runs).await {
                    for (at, value) in indexes.into_iter().zip(result?) {
                        replies[at] = value;
                    }
                }
                Ok(replies)
            }
        }
    }

    /// `PUBLISH`, or `SPUBLISH` in a Cluster (sharded pub/sub: only the channel's shard carries it).
    pub(crate) fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(match self {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Subscribes to `channels` and returns once Redis confirmed them (`SSUBSCRIBE` per channel in a
    /// Cluster, where one command may not span slots).
    pub(crate) async fn subscribe(&self, channels: &[String]) -> RedisResult<()> {
        match self.clone() {
            Conn::Single(mut c) => {
                for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                    c.subscribe(chunk).await?;
                }
                Ok(())
            }
            Conn::Cluster(c) => {
                let runs = channels.iter().map(|channel| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(channel).await }
                });
                futures_util::future::try_join_all(runs).await.map(|_| ())
            }
        }
    }

    /// Unsubscribes from `channels`.
    pub(crate) async fn unsubscribe(&self, channels: &[String]) -> RedisResult<()> {
        match self.clone() {
            Conn::Single(mut c) => {
                for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                    c.unsubscribe(chunk).await?;
                }
                Ok(())
            }
            Conn::Cluster(c) => {
                let runs = channels.iter().map(|channel| {
                    let mut c = c.clone();
                    async move { c.sunsubscribe(channel).await }
                });
                futures_util::future::try_join_all(runs).await.map(|_| ())
            }
        }
    }
}

/// The key (or channel) a command is routed by: its first argument, or a script call's first key.
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter();
    let name = match args.next()? {
        redis::Arg::Simple(name) => name,
        _ => return None,
    };
    let at = if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        2
    } else {
        0
    };
    match args.nth(at)? {
        redis::Arg::Simple(key) => Some(key),
        _ => None,
    }
}

async fn pipeline(
    c: &mut impl redis::aio::ConnectionLike,
    cmds: &[Cmd],
) -> RedisResult<Vec<Value>> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd.clone());
    }
    c.req_packed_commands(&pipe, 0, cmds.len()).await
}

/// rustls needs a process-wide crypto provider; the workspace builds rustls with ring only.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile: that one is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Opens one RESP3 connection for `topology`, giving its pushes to `push`.
pub(crate) async fn connect(
    topology: &Topology,
    timeout: Duration,
    push: PushHandler,
) -> RedisResult<Conn> {
    ensure_crypto_provider();
    let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
        push(info);
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(sender.clone());
    match topology {
        Topology::Standalone { .. } | Topology::Sentinel { .. } => {
            let client = server_client(topology, ProtocolVersion::RESP3)
                .await?
                .ok_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "not one server"))
                })?;
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok(Conn::Single(conn))
        }
        Topology::Cluster { nodes } => {
            let client =
                redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .push_sender(sender)
                    .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// A client of the one server a standalone or Sentinel topology names (for Sentinel, the master the
/// Sentinels name now: call it again at every reconnect to follow a failover); `None` for a Cluster.
pub(crate) async fn server_client(
    topology: &Topology,
    protocol: ProtocolVersion,
) -> RedisResult<Option<Client>> {
    ensure_crypto_provider();
    match topology {
        Topology::Standalone { url } => {
            let info = url.as_str().into_connection_info()?;
            let redis = info.redis_settings().clone().set_protocol(protocol);
            Ok(Some(Client::open(info.set_redis_settings(redis))?))
        }
        Topology::Sentinel {
            sentinels,
            master,
            username,
            password,
            db,
            tls,
        } => {
            let mut redis = redis::RedisConnectionInfo::default()
                .set_protocol(protocol)
                .set_db(*db);
            if let Some(username) = username {
                redis = redis.set_username(username);
            }
            if let Some(password) = password {
                redis = redis.set_password(password);
            }
            let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
            if *tls {
                node = node.set_tls_mode(TlsMode::Secure);
            }
            let mut sentinel = SentinelClient::build(
                sentinels.iter().map(String::as_str).collect(),
                master.as_str(),
                Some(node),
                SentinelServerType::Master,
            )?;
            Ok(Some(sentinel.async_get_client().await?))
        }
        Topology::Cluster { .. } => Ok(None),
    }
}

/// Whether a push says its connection is gone.
pub(crate) fn is_disconnection(info: &PushInfo) -> bool {
    info.kind == PushKind::Disconnection
}
