//! Presence and liveness in Redis: the commands and scripts, stateless (the gateway decides when).
//!
//! A node's liveness is its score in the nodes sorted set, the Redis server's clock in milliseconds (so
//! nodes' clocks do not matter). A node is live while its score is newer than `node_ttl`. Scripts touch only
//! the two `{nodes}` keys, which share a hash tag: each runs on one shard, atomically.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use mesa_engine::{NodeId, NodeStatus, Presence};
use redis::{Cmd, RedisResult, Script, Value};

use crate::backend::Conn;
use crate::keys::Keys;
use crate::mesa15;

/// KEYS: nodes, info. ARGV: node, connections. Refreshes the node's score (now) and info; returns 1 when
/// the node was not in the set (first beat, or removed as dead meanwhile).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return added",
    )
});

/// KEYS: nodes, info. ARGV: ttl ms, the calling node, max. Removes up to `max` nodes older than ttl (never
/// the caller) from both keys and returns them with their last connection count (node, count, node, …):
/// exactly one caller gets each dead node to clean up after.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'LIMIT', 0, tonumber(ARGV[3]))
local removed = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], node)
    table.insert(removed, node)
    table.insert(removed, redis.call('HGET', KEYS[2], node) or '0')
    redis.call('HDEL', KEYS[2], node)
  end
end
return removed",
    )
});

/// KEYS: nodes, info. ARGV: ttl ms. Returns node, score, info triples of the live nodes.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  table.insert(out, live[i])
  table.insert(out, live[i + 1])
  table.insert(out, redis.call('HGET', KEYS[2], live[i]) or '0')
end
return out",
    )
});

/// Dead nodes cleaned up per reaping pass at most.
const REAP_BATCH: usize = 64;

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The writes that bring Redis to `users` (count per user on `node`): HSET/HDEL of the user's presence
/// field, SADD/SREM in the node's user set. Absolute counts, so a retried write never counts twice. With
/// `mesa15`, Mesa 1.5's `connected_clients` follows: SADD on join, SREM with the HDEL (one script) once no
/// node holds the user.
pub(crate) fn user_writes(
    keys: &Keys,
    node: NodeId,
    users: &[(String, usize)],
    mesa15: bool,
) -> Vec<Cmd> {
    let field = node.to_string();
    let set = keys.node_users(node);
    let mut cmds = Vec::with_capacity(users.len() * 2);
    for (user, count) in users {
        let mut presence = Cmd::new();
        let mut membership = Cmd::new();
        if *count > 0 {
            presence
                .arg("HSET")
                .arg(keys.presence(user))
                .arg(&field)
                .arg(*count);
            membership.arg("SADD").arg(&set).arg(user);
            if mesa15 {
                cmds.push(mesa15::joined(keys, user));
            }
        } else if mesa15 {
            presence = mesa15::left(keys, &field, user);
            membership.arg("SREM").arg(&set).arg(user);
        } else {
            presence.arg("HDEL").arg(keys.presence(user)).arg(&field);
            membership.arg("SREM").arg(&set).arg(user);
        }
        cmds.push(presence);
        cmds.push(membership);
    }
    cmds
}

/// Refreshes `node`'s liveness; `Ok(true)` when it had been removed (or never written).
pub(crate) async fn heartbeat(
    conn: &Conn,
    keys: &Keys,
    node: NodeId,
    connections: usize,
) -> RedisResult<bool> {
    let mut call = HEARTBEAT.key(keys.nodes());
    call.key(keys.node_info())
        .arg(node.to_string())
        .arg(connections);
    let added: i64 = conn.invoke(&call).await?;
    Ok(added == 1)
}

/// Removes nodes whose liveness is older than `ttl` (not `this`), their fields in the presence hash of
/// every user in their user set, and that set (with `mesa15`, also their users from `connected_clients`
/// when no node holds them any more, and their connections from `connected_clients_count`). Returns the
/// nodes removed, each with the users it held.
pub(crate) async fn reap(
    conn: &Conn,
    keys: &Keys,
    ttl: Duration,
    this: NodeId,
    mesa15: bool,
) -> RedisResult<Vec<(NodeId, Vec<String>)>> {
    let mut call = REAP.key(keys.nodes());
    call.key(keys.node_info())
        .arg(millis(ttl))
        .arg(this.to_string())
        .arg(REAP_BATCH);
    let dead: Vec<String> = conn.invoke(&call).await?;
    let dead: Vec<(&String, i64)> = dead
        .chunks_exact(2)
        .map(|pair| (&pair[0], pair[1].parse().unwrap_or(0)))
        .collect();
    let mut removed = Vec::with_capacity(dead.len());
    for &(hex, connections) in &dead {
        let Ok(node) = hex.parse::<NodeId>() else {
            continue;
        };
        let set = keys.node_users(node);
        let users: Vec<String> = conn.query(redis::cmd("SMEMBERS").arg(&set)).await?;
        let mut cmds = leave_all(keys, hex, &users, mesa15);
        let mut del = redis::cmd("DEL");
        del.arg(&set);
        cmds.push(del);
        if mesa15 && connections != 0 {
            cmds.push(mesa15::count(keys, -connections));
        }
        conn.run(cmds).await?;
        tracing::info!(node = %hex, users = users.len(), "removed a dead node's presence");
        removed.push((node, users));
    }
    Ok(removed)
}

/// The live nodes, ordered by id.
pub(crate) async fn live_nodes(
    conn: &Conn,
    keys: &Keys,
    ttl: Duration,
) -> RedisResult<Vec<NodeStatus>> {
    let mut call = LIVE.key(keys.nodes());
    call.key(keys.node_info()).arg(millis(ttl));
    let flat: Vec<String> = conn.invoke(&call).await?;
    let mut nodes: Vec<NodeStatus> = flat
        .chunks_exact(3)
        .filter_map(|triple| {
            Some(NodeStatus {
                node: triple[0].parse().ok()?,
                last_seen_ms: triple[1].parse::<f64>().ok()? as u64,
                connections: triple[2].parse().unwrap_or(0),
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.node);
    Ok(nodes)
}

/// Where `user` is, counting only live nodes.
pub(crate) async fn presence(
    conn: &Conn,
    keys: &Keys,
    user: &str,
    ttl: Duration,
) -> RedisResult<Presence> {
    let fields: HashMap<String, Value> = conn
        .query(redis::cmd("HGETALL").arg(keys.presence(user)))
        .await?;
    if fields.is_empty() {
        return Ok(Presence::default());
    }
    let live: Vec<NodeId> = live_nodes(conn, keys, ttl)
        .await?
        .into_iter()
        .map(|n| n.node)
        .collect();
    let mut nodes: Vec<(NodeId, usize)> = fields
        .into_iter()
        .filter_map(|(hex, count)| {
            let node: NodeId = hex.parse().ok()?;
            let count: usize = redis::from_redis_value(count).ok()?;
            (count > 0 && live.contains(&node)).then_some((node, count))
        })
        .collect();
    nodes.sort();
    Ok(Presence { nodes })
}

/// Removes `node`'s presence field of each of `users` (with `mesa15`, and each user from
/// `connected_clients` once no node holds it).
fn leave_all(keys: &Keys, node: &str, users: &[String], mesa15: bool) -> Vec<Cmd> {
    users
        .iter()
        .map(|user| {
            if mesa15 {
                return mesa15::left(keys, node, user);
            }
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys.presence(user)).arg(node);
            cmd
        })
        .collect()
}

/// Removes everything of `node` at once (a node leaving): its presence fields, user set and liveness;
/// with `mesa15`, its users from `connected_clients` (unless another node holds them) and its `counted`
/// connections from `connected_clients_count`.
pub(crate) async fn goodbye(
    conn: &Conn,
    keys: &Keys,
    node: NodeId,
    users: &[String],
    mesa15: bool,
    counted: i64,
) -> RedisResult<()> {
    let hex = node.to_string();
    let mut cmds = leave_all(keys, &hex, users, mesa15);
    if mesa15 && counted != 0 {
        cmds.push(mesa15::count(keys, -counted));
    }
    let mut del = redis::cmd("DEL");
    del.arg(keys.node_users(node));
    let mut zrem = redis::cmd("ZREM");
    zrem.arg(keys.nodes()).arg(&hex);
    let mut hdel = redis::cmd("HDEL");
    hdel.arg(keys.node_info()).arg(&hex);
    cmds.extend([del, zrem, hdel]);
    conn.run(cmds).await.map(|_| ())
}
