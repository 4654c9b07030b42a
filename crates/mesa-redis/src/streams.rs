//! Per-user streams and resumable sessions in Redis: the scripts, and the calls that run them. Every rule of
//! `mesa_engine::sessions` is applied here, inside Redis, atomically per user.
//!
//! Three keys per user, all with the user's hash tag (one shard in a Cluster, with the user's channel and
//! presence hash, so that one script may touch them all):
//!
//! - `mesa:<ns>:st:{<user>}`: a Redis Stream of the user's durable frames; entry id `<seq>-0`, fields
//!   `f` (the frame) and `t` (when it was appended, ms of the Redis clock);
//! - `mesa:<ns>:sm:{<user>}`: hash `head` (the last sequence appended), `bytes` (frame bytes kept),
//!   `marker` (the highest position any session of the user acknowledged);
//! - `mesa:<ns>:ss:{<user>}`: hash of the user's resumable sessions, field = session id (32 hex digits),
//!   value = `<cursor>|<holder>|<expires>`: the last position acknowledged, the connection serving it
//!   (`<node hex>:<seq hex>`, empty once released) and when a released session is forgotten (ms; 0 while
//!   held).
//!
//! Every script first forgets expired sessions and evicts entries older than the age bound, and last sets
//! the keys' lifetime: kept for good while a session is held (a node that dies holding one has it released
//! by whoever reaps the node), else until the last session or entry could still matter, else deleted.
//! Each bound is exact, as in memory: the count and byte bounds apply at every append, the age bound at
//! every operation.

use std::sync::LazyLock;

use bytes::Bytes;
use mesa_engine::{
    Claimed, ConnectionId, EncodedFrame, NodeId, Opened, Release, ResumeRefusal, SessionId,
    SessionPolicy, StreamEntry, StreamGap, StreamRead,
};
use redis::{Cmd, RedisResult, Script, Value};

use crate::backend::Conn;
use crate::keys::Keys;
use crate::presence::millis;

/// Shared by every script. KEYS[1..3]: stream, meta, sessions; ARGV[1..4]: max messages, max bytes, max
/// age (ms), session TTL (ms). Redis freezes its clock during a script: `NOW` is one instant.
const PRELUDE: &str = r"
local ST, SM, SS = KEYS[1], KEYS[2], KEYS[3]
local MAX_N, MAX_B = tonumber(ARGV[1]), tonumber(ARGV[2])
local MAX_AGE, TTL = tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function head() return tonumber(redis.call('HGET', SM, 'head') or '0') end
local function marker() return tonumber(redis.call('HGET', SM, 'marker') or '0') end
local function record(cursor, holder, expires) return cursor .. '|' .. holder .. '|' .. expires end

-- The user's sessions, expired ones forgotten: id -> {cursor, holder, expires}.
local function sessions()
  local all = redis.call('HGETALL', SS)
  local out = {}
  for i = 1, #all, 2 do
    local c, h, e = string.match(all[i + 1], '^(%d+)|([^|]*)|(%d+)$')
    if c == nil or (tonumber(e) > 0 and tonumber(e) <= NOW) then
      redis.call('HDEL', SS, all[i])
    else
      out[all[i]] = {tonumber(c), h, tonumber(e)}
    end
  end
  return out
end

local function entry_fields(entry)
  local frame, at = '', 0
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'f' then frame = f[i + 1] elseif f[i] == 't' then at = tonumber(f[i + 1]) end
  end
  return frame, at
end

local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end

-- The oldest position kept (head + 1 when nothing is).
local function oldest(h)
  local first = redis.call('XRANGE', ST, '-', '+', 'COUNT', 1)
  if #first == 0 then return h + 1 end
  return seq_of(first[1][1])
end

-- Removes the oldest entry; false when there is none.
local function drop_oldest()
  local first = redis.call('XRANGE', ST, '-', '+', 'COUNT', 1)
  if #first == 0 then return false end
  local frame = entry_fields(first[1])
  redis.call('XDEL', ST, first[1][1])
  redis.call('HINCRBY', SM, 'bytes', -#frame)
  return true
end

-- The age bound.
local function evict_aged()
  while true do
    local first = redis.call('XRANGE', ST, '-', '+', 'COUNT', 1)
    if #first == 0 then return end
    local frame, at = entry_fields(first[1])
    if NOW - at < MAX_AGE then return end
    redis.call('XDEL', ST, first[1][1])
    redis.call('HINCRBY', SM, 'bytes', -#frame)
  end
end

-- Removes what every kept session, and some device, acknowledged.
local function trim_acknowledged(sess)
  local floor = marker()
  for _, r in pairs(sess) do if r[1] < floor then floor = r[1] end end
  while true do
    local first = redis.call('XRANGE', ST, '-', '+', 'COUNT', 1)
    if #first == 0 or seq_of(first[1][1]) > floor then return end
    drop_oldest()
  end
end

-- The keys' lifetime, from what they keep.
local function settle(sess)
  local held, longest = false, -1
  for _, r in pairs(sess) do
    if r[3] == 0 then held = true elseif r[3] - NOW > longest then longest = r[3] - NOW end
  end
  if held then
    redis.call('PERSIST', ST); redis.call('PERSIST', SM); redis.call('PERSIST', SS)
    return
  end
  local kept = redis.call('XLEN', ST)
  if longest < 0 and kept == 0 then
    redis.call('DEL', ST, SM, SS)
    return
  end
  local ms = MAX_AGE
  if longest > ms then ms = longest end
  ms = ms + 1000
  redis.call('PEXPIRE', ST, ms); redis.call('PEXPIRE', SM, ms); redis.call('PEXPIRE', SS, ms)
end
";

/// KEYS: +channel. ARGV: +frame, envelope head, `PUBLISH` or `SPUBLISH`. Appends the frame when the user
/// keeps a stream (a session is kept, or the user is offline: the mailbox), applies the count and byte
/// bounds, and publishes the envelope with its sequence (0: not kept) on the user's channel in the same
/// step. Returns the channel's subscriber count.
///
/// Offline: no node is subscribed to the user's channel — the publication would reach nobody, so it is
/// kept. Not the presence hash: a dead node's entries stay until it is reaped (`node_ttl`) while Redis
/// dropped its subscriptions at once, and a node subscribes before it writes the entry, so a send between
/// the two would be delivered live and kept (the next connection would get it again).
const APPEND: &str = r"
local sess = sessions()
evict_aged()
local seq = 0
local NUMSUB = 'NUMSUB'
if ARGV[7] == 'SPUBLISH' then NUMSUB = 'SHARDNUMSUB' end
if next(sess) ~= nil or redis.call('PUBSUB', NUMSUB, KEYS[4])[2] == 0 then
  seq = head() + 1
  redis.call('XADD', ST, seq .. '-0', 'f', ARGV[5], 't', NOW)
  redis.call('HSET', SM, 'head', seq)
  local bytes = redis.call('HINCRBY', SM, 'bytes', #ARGV[5])
  local kept = redis.call('XLEN', ST)
  while kept > MAX_N or bytes > MAX_B do
    if not drop_oldest() then break end
    kept = kept - 1
    bytes = tonumber(redis.call('HGET', SM, 'bytes'))
  end
end
settle(sess)
local bytes, n = {}, seq
for i = 8, 1, -1 do bytes[i] = string.char(n % 256); n = math.floor(n / 256) end
local envelope = ARGV[6] .. table.concat(bytes) .. string.char(0, 0, 0, 0) .. ARGV[5]
return redis.call(ARGV[7], KEYS[4], envelope)
";

/// ARGV: +session, holder. Records a fresh session held by `holder`, starting after what some device
/// acknowledged (the mailbox comes first). Returns the start.
const OPEN: &str = r"
local sess = sessions()
evict_aged()
local h = head()
local start = math.max(marker(), oldest(h) - 1)
redis.call('HSET', SS, ARGV[5], record(start, ARGV[6], 0))
sess[ARGV[5]] = {start, ARGV[6], 0}
settle(sess)
return start
";

/// ARGV: +session, holder, after. Returns `{'ok', previous holder or ''}`, or `{'unknown'}`,
/// `{'retention'}`, `{'ahead'}`.
const CLAIM: &str = r"
local sess = sessions()
evict_aged()
local r = sess[ARGV[5]]
if r == nil then settle(sess); return {'unknown'} end
local h, after = head(), tonumber(ARGV[7])
if after > h then settle(sess); return {'ahead'} end
if after < h and after + 1 < oldest(h) then settle(sess); return {'retention'} end
local previous = r[2]
if previous == ARGV[6] then previous = '' end
local cursor = math.max(r[1], after)
redis.call('HSET', SS, ARGV[5], record(cursor, ARGV[6], 0))
sess[ARGV[5]] = {cursor, ARGV[6], 0}
if cursor > marker() then redis.call('HSET', SM, 'marker', cursor) end
settle(sess)
return {'ok', previous}
";

/// ARGV: +session, seq. Moves the session's cursor (never past the head) and trims.
const ACKNOWLEDGE: &str = r"
local sess = sessions()
evict_aged()
local r = sess[ARGV[5]]
if r ~= nil then
  local cursor = math.max(r[1], math.min(tonumber(ARGV[6]), head()))
  redis.call('HSET', SS, ARGV[5], record(cursor, r[2], r[3]))
  r[1] = cursor
  if cursor > marker() then redis.call('HSET', SM, 'marker', cursor) end
  trim_acknowledged(sess)
end
settle(sess)
return 0
";

/// ARGV: +session, holder, `keep` or `end`. Ignored unless `holder` holds the session.
const RELEASE: &str = r"
local sess = sessions()
local r = sess[ARGV[5]]
if r ~= nil and r[2] == ARGV[6] then
  if ARGV[7] == 'keep' then
    local expires = NOW + TTL
    redis.call('HSET', SS, ARGV[5], record(r[1], '', expires))
    sess[ARGV[5]] = {r[1], '', expires}
  else
    redis.call('HDEL', SS, ARGV[5])
    sess[ARGV[5]] = nil
    trim_acknowledged(sess)
  end
end
settle(sess)
return 0
";

/// ARGV: +holder prefix (`<node hex>:`). Releases (keeps) every session held by a connection of that node:
/// the node died without releasing them.
const RELEASE_NODE: &str = r"
local sess = sessions()
local prefix = ARGV[5]
for id, r in pairs(sess) do
  if r[3] == 0 and string.sub(r[2], 1, #prefix) == prefix then
    local expires = NOW + TTL
    redis.call('HSET', SS, id, record(r[1], '', expires))
    sess[id] = {r[1], '', expires}
  end
end
settle(sess)
return 0
";

/// ARGV: +after, limit, session (or empty). Returns `{head, 1, seq, frame, seq, frame, …}` (up to `limit`
/// entries after `after`), or `{oldest, 0}` when an entry after `after` is no longer kept, the stream is
/// behind `after`, or the session reading is no longer recorded (Redis lost it: restarted empty).
const READ: &str = r"
local sess = sessions()
evict_aged()
settle(sess)
local h, after = head(), tonumber(ARGV[5])
local first = oldest(h)
if after > h or (after < h and after + 1 < first) then return {first, 0} end
if ARGV[7] ~= '' and sess[ARGV[7]] == nil then return {first, 0} end
local out = {h, 1}
local page = redis.call('XRANGE', ST, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[6]))
for _, entry in ipairs(page) do
  table.insert(out, seq_of(entry[1]))
  table.insert(out, (entry_fields(entry)))
end
return out
";

/// A script: its text (the prelude and its own part) and its SHA-1.
pub(crate) struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    fn new(body: &str) -> Lua {
        let code = format!("{PRELUDE}{body}");
        Lua {
            hash: Script::new(&code).get_hash().to_owned(),
            code,
        }
    }
}

static APPEND_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(APPEND));
static OPEN_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(OPEN));
static CLAIM_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(CLAIM));
static ACKNOWLEDGE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(ACKNOWLEDGE));
static RELEASE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE));
static RELEASE_NODE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_NODE));
static READ_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(READ));

/// One script call, as `EVALSHA` and, when Redis does not have the script (restarted, failed over), as
/// `EVAL`.
#[derive(Clone)]
pub(crate) struct ScriptCall {
    lua: &'static Lua,
    keys: Vec<String>,
    args: Vec<Bytes>,
}

impl std::fmt::Debug for ScriptCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptCall")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl ScriptCall {
    fn cmd(&self, name: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script).arg(self.keys.len()).arg(&self.keys);
        for arg in &self.args {
            cmd.arg(arg.as_ref());
        }
        cmd
    }

    /// `EVALSHA <sha> <n> keys… args…`.
    pub(crate) fn evalsha(&self) -> Cmd {
        self.cmd("EVALSHA", &self.lua.hash)
    }

    /// `EVAL <script> <n> keys… args…` (which also caches the script for the next `EVALSHA`).
    pub(crate) fn eval(&self) -> Cmd {
        self.cmd("EVAL", &self.lua.code)
    }

    /// Runs it alone: `EVALSHA`, then `EVAL` if Redis lacks the script.
    pub(crate) async fn run(&self, conn: &Conn) -> RedisResult<Value> {
        match conn.query::<Value>(&self.evalsha()).await {
            Err(error) if is_no_script(&error) => conn.query(&self.eval()).await,
            Ok(Value::ServerError(error)) if error.code() == "NOSCRIPT" => {
                conn.query(&self.eval()).await
            }
            other => other,
        }
    }
}

/// Runs again, as `EVAL` and in their order, the script calls whose reply in `replies` (at the given
/// index) is NOSCRIPT: Redis restarted or failed over since it last ran them, so they did not run.
pub(crate) async fn rerun_missing(
    conn: &Conn,
    calls: impl IntoIterator<Item = (usize, &ScriptCall)>,
    replies: &mut [Value],
) -> RedisResult<()> {
    let (places, cmds): (Vec<usize>, Vec<Cmd>) = calls
        .into_iter()
        .filter(|(at, _)| {
            matches!(replies.get(*at), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT")
        })
        .map(|(at, call)| (at, call.eval()))
        .unzip();
    if cmds.is_empty() {
        return Ok(());
    }
    for (place, reply) in places.into_iter().zip(conn.run(cmds).await?) {
        replies[place] = reply;
    }
    Ok(())
}

/// Whether Redis answered that it does not have the script.
pub(crate) fn is_no_script(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

/// What every script call of one user starts with.
struct UserCall<'a> {
    keys: &'a Keys,
    policy_args: &'a [Bytes; 4],
    user: &'a str,
}

impl UserCall<'_> {
    fn call(&self, lua: &'static Lua, extra_keys: Vec<String>, extra: Vec<Bytes>) -> ScriptCall {
        let mut keys = vec![
            self.keys.stream(self.user),
            self.keys.stream_meta(self.user),
            self.keys.stream_sessions(self.user),
        ];
        keys.extend(extra_keys);
        let mut args = Vec::with_capacity(4 + extra.len());
        args.extend(self.policy_args.iter().cloned());
        args.extend(extra);
        ScriptCall { lua, keys, args }
    }
}

fn number(n: u64) -> Bytes {
    Bytes::from(n.to_string())
}

fn holder(connection: ConnectionId) -> Bytes {
    Bytes::from(format!("{}:{:x}", connection.node(), connection.seq()))
}

/// The stream calls of one namespace and policy.
#[derive(Debug, Clone)]
pub(crate) struct Streams {
    pub(crate) policy: SessionPolicy,
    /// The policy as the scripts' first four arguments, encoded once.
    policy_args: [Bytes; 4],
    /// Sharded pub/sub (Cluster): the append script publishes with `SPUBLISH`.
    cluster: bool,
}

impl Streams {
    pub(crate) fn new(policy: SessionPolicy, cluster: bool) -> Streams {
        let retention = &policy.retention;
        let policy_args = [
            number(retention.max_messages as u64),
            number(retention.max_bytes as u64),
            number(millis(retention.max_age)),
            number(millis(policy.session_ttl)),
        ];
        Streams {
            policy,
            policy_args,
            cluster,
        }
    }

    fn user<'a>(&'a self, keys: &'a Keys, user: &'a str) -> UserCall<'a> {
        UserCall {
            keys,
            policy_args: &self.policy_args,
            user,
        }
    }

    /// The append-and-publish of one durable frame to `user` (`head`: the envelope head, from
    /// [`crate::envelope::encode_stream_head`]).
    pub(crate) fn append(
        &self,
        keys: &Keys,
        user: &str,
        frame: &EncodedFrame,
        head: &Bytes,
    ) -> ScriptCall {
        let publish = if self.cluster { "SPUBLISH" } else { "PUBLISH" };
        self.user(keys, user).call(
            &APPEND_LUA,
            vec![keys.user_channel(user)],
            vec![
                frame.as_bytes().clone(),
                head.clone(),
                Bytes::from_static(publish.as_bytes()),
            ],
        )
    }

    pub(crate) async fn open(
        &self,
        conn: &Conn,
        keys: &Keys,
        user: &str,
        session: SessionId,
        connection: ConnectionId,
    ) -> RedisResult<Opened> {
        let call = self.user(keys, user).call(
            &OPEN_LUA,
            Vec::new(),
            vec![Bytes::from(session.to_string()), holder(connection)],
        );
        let start: u64 = redis::from_redis_value(call.run(conn).await?)?;
        Ok(Opened { start })
    }

    pub(crate) async fn claim(
        &self,
        conn: &Conn,
        keys: &Keys,
        user: &str,
        session: SessionId,
        connection: ConnectionId,
        after: u64,
    ) -> RedisResult<Result<Claimed, ResumeRefusal>> {
        let call = self.user(keys, user).call(
            &CLAIM_LUA,
            Vec::new(),
            vec![
                Bytes::from(session.to_string()),
                holder(connection),
                number(after),
            ],
        );
        let reply: Vec<String> = redis::from_redis_value(call.run(conn).await?)?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Ok(Claimed {
                previous: reply.get(1).and_then(|h| parse_holder(h)),
            }),
            Some("retention") => Err(ResumeRefusal::RetentionExceeded),
            Some("ahead") => Err(ResumeRefusal::SequenceAhead),
            _ => Err(ResumeRefusal::UnknownSession),
        })
    }

    pub(crate) fn acknowledge(
        &self,
        keys: &Keys,
        user: &str,
        session: SessionId,
        seq: u64,
    ) -> ScriptCall {
        self.user(keys, user).call(
            &ACKNOWLEDGE_LUA,
            Vec::new(),
            vec![Bytes::from(session.to_string()), number(seq)],
        )
    }

    pub(crate) fn release(
        &self,
        keys: &Keys,
        user: &str,
        session: SessionId,
        connection: ConnectionId,
        release: Release,
    ) -> ScriptCall {
        let how = match release {
            Release::Keep => "keep",
            Release::End => "end",
        };
        self.user(keys, user).call(
            &RELEASE_LUA,
            Vec::new(),
            vec![
                Bytes::from(session.to_string()),
                holder(connection),
                Bytes::from_static(how.as_bytes()),
            ],
        )
    }

    /// Releases the sessions of `user` that connections of the dead `node` held.
    pub(crate) fn release_node(&self, keys: &Keys, user: &str, node: NodeId) -> ScriptCall {
        self.user(keys, user).call(
            &RELEASE_NODE_LUA,
            Vec::new(),
            vec![Bytes::from(format!("{node}:"))],
        )
    }

    /// Reads after `after`, for `session` if given (then a session Redis no longer records is a gap).
    pub(crate) async fn read(
        &self,
        conn: &Conn,
        keys: &Keys,
        user: &str,
        session: Option<SessionId>,
        after: u64,
        limit: usize,
    ) -> RedisResult<Result<StreamRead, StreamGap>> {
        let session = session.map(|id| id.to_string()).unwrap_or_default();
        let call = self.user(keys, user).call(
            &READ_LUA,
            Vec::new(),
            vec![
                number(after),
                number(limit.max(1) as u64),
                Bytes::from(session),
            ],
        );
        let reply: Vec<Value> = redis::from_redis_value(call.run(conn).await?)?;
        let mut items = reply.into_iter();
        let (Some(first), Some(found)) = (items.next(), items.next()) else {
            return Err(backend_error("a stream read without its header"));
        };
        let first: u64 = redis::from_redis_value(first)?;
        let found: u64 = redis::from_redis_value(found)?;
        if found == 0 {
            return Ok(Err(StreamGap {
                after,
                oldest: first,
            }));
        }
        let mut entries = Vec::new();
        while let (Some(seq), Some(frame)) = (items.next(), items.next()) {
            let seq: u64 = redis::from_redis_value(seq)?;
            let frame: Vec<u8> = redis::from_redis_value(frame)?;
            let frame = EncodedFrame::from_bytes(Bytes::from(frame))
                .map_err(|_| backend_error("a stream entry that is not UTF-8"))?;
            entries.push(StreamEntry { seq, frame });
        }
        Ok(Ok(StreamRead {
            entries,
            head: first,
        }))
    }
}

fn backend_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, what))
}

fn parse_holder(text: &str) -> Option<ConnectionId> {
    let (node, seq) = text.split_once(':')?;
    let node: NodeId = node.parse().ok()?;
    let seq = u64::from_str_radix(seq, 16).ok()?;
    Some(ConnectionId::new(node, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip() {
        let id = ConnectionId::new(NodeId(0xabc), 0x1f);
        let text = holder(id);
        assert_eq!(&text[..], b"0000000000000abc:1f");
        assert_eq!(parse_holder(std::str::from_utf8(&text).unwrap()), Some(id));
        assert_eq!(parse_holder(""), None);
        assert_eq!(parse_holder("zz:1"), None);
    }

    #[test]
    fn every_call_names_the_users_keys_first() {
        let keys = Keys::new("t");
        let streams = Streams::new(SessionPolicy::default(), false);
        let call = streams.append(&keys, "bob", &EncodedFrame::from("{}"), &Bytes::new());
        assert_eq!(
            call.keys,
            [
                "mesa:t:st:{bob}",
                "mesa:t:sm:{bob}",
                "mesa:t:ss:{bob}",
                "mesa:t:u:{bob}"
            ]
        );
        // The routing key of EVALSHA is its first key.
        let cmd = call.evalsha();
        let args: Vec<_> = cmd.args_iter().collect();
        assert!(matches!(args[3], redis::Arg::Simple(k) if k == b"mesa:t:st:{bob}"));
    }
}
