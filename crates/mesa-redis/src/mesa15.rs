//! Mesa 1.5's Redis formats, for the compatibility mode ([`RedisConfig::mesa15_compat`](crate::RedisConfig)):
//! the `ws` channel both ways, the `connected_clients` set, the `connected_clients_count` counter and the
//! `undelivered_messages` hash (names in [`Keys`]). Pure: the commands and scripts, and the decoding of what
//! arrives on `ws`; the gateway and the Dispatcher decide when.
//!
//! A `ws` message is `{"message": {op, d, t}, "recipients": ["*"] or [ids]}`. Ours add `"mesa_rs"`:
//! `{"origin": <node>, "excluding": [ids], "code": n, "reason": "…"}` (each only when there is one), which a
//! 1.5.8 node ignores (it reads `message` and `recipients` only): the origin lets our node skip what it
//! published itself, exclusions of a send to everyone and a disconnect's code and reason reach our nodes (a
//! 1.5 node delivers to everyone and closes with 1000, as 1.5 itself does).
//!
//! Scripts run with `EVAL`, not `EVALSHA`: they travel in the publisher's pipeline, where a `NOSCRIPT` (after
//! a Redis restart) could not be retried in place; Redis caches the compiled script by its hash.

use mesa_engine::{Action, DeliveryClass, EngineError, NodeId, Publication, Recipients, Target};
use redis::Cmd;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::keys::Keys;

/// The field of a `ws` message that carries what Mesa 1.5 has no place for.
const EXTENSION: &str = "mesa_rs";

/// KEYS: connected_clients, undelivered_messages, the ws channel. ARGV: the frame, `1` to store for offline users, the
/// `ws` message's tail (`,"mesa_rs":…` or empty), then per user: id, id as a JSON string, `1` when the
/// origin node holds a session of it. Publishes to the users in connected_clients and appends the frame to
/// the stored list of the others, in one step: a user who authenticates (see [`TAKE`]) either finds the
/// message stored or is a member when it is published, never neither nor both. A user the origin holds is
/// online (served locally) and never stored. Returns PUBLISH's count (0 when nobody was online).
const SEND: &str = r#"local online = {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], id) == 1 then
    table.insert(online, ARGV[i + 1])
  elseif ARGV[2] == '1' and ARGV[i + 2] == '0' then
    local old = redis.call('HGET', KEYS[2], id)
    local body = old and string.match(old, '^%s*%[(.*)%]%s*$')
    if body and string.find(body, '%S') then
      redis.call('HSET', KEYS[2], id, '[' .. body .. ',' .. ARGV[1] .. ']')
    else
      redis.call('HSET', KEYS[2], id, '[' .. ARGV[1] .. ']')
    end
  end
end
if #online == 0 then
  return 0
end
return redis.call('PUBLISH', KEYS[3], '{"message":' .. ARGV[1] .. ',"recipients":[' .. table.concat(online, ',') .. ']' .. ARGV[3] .. '}')"#;

/// KEYS: undelivered_messages, connected_clients. ARGV: user id, `1` to return the stored messages.
/// Marks the user connected and takes (or drops) its stored list in one step; returns it or nil.
const TAKE: &str = r"redis.call('SADD', KEYS[2], ARGV[1])
local stored = false
if ARGV[2] == '1' then
  stored = redis.call('HGET', KEYS[1], ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
return stored";

/// KEYS: the user's presence hash, connected_clients. ARGV: node field, user id. Removes the node's field and,
/// if no node holds the user any more, the user from connected_clients (one device leaving keeps the user
/// connected while another remains on any of our nodes).
const LEAVE: &str = r"redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0";

fn eval(script: &str, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

/// The `"mesa_rs"` member (with its leading comma), or nothing when there is nothing to say.
fn extension(
    origin: Option<NodeId>,
    excluding: &[String],
    disconnect: Option<(u16, &str)>,
) -> String {
    let mut ext = Map::new();
    if let Some(origin) = origin {
        ext.insert("origin".into(), Value::String(origin.to_string()));
    }
    if !excluding.is_empty() {
        ext.insert("excluding".into(), json!(excluding));
    }
    if let Some((code, reason)) = disconnect {
        ext.insert("code".into(), json!(code));
        ext.insert("reason".into(), json!(reason));
    }
    if ext.is_empty() {
        return String::new();
    }
    format!(",\"{EXTENSION}\":{}", Value::Object(ext))
}

fn ws_message(frame: &str, recipients: &str, tail: &str) -> String {
    format!("{{\"message\":{frame},\"recipients\":{recipients}{tail}}}")
}

const DISCONNECT_CLIENT: &str = r#"{"op":5,"d":{},"t":"DISCONNECT_CLIENT"}"#;

/// The commands that carry `publication` in Mesa 1.5's format, in order; `None` when 1.5 has no format for
/// it (a send to one connection: the native node channel carries it). Every command is a `PUBLISH` on `ws`
/// or a script that may publish there. `holds` says whether the origin holds a session of a user.
pub(crate) fn commands(
    keys: &Keys,
    publication: &Publication,
    holds: impl Fn(&str) -> bool,
) -> Result<Option<Vec<Cmd>>, EngineError> {
    let target = &publication.target;
    let users: Vec<&String> = match &target.recipients {
        Recipients::Connection(_) => return Ok(None),
        Recipients::All => Vec::new(),
        Recipients::Users(ids) => {
            let mut seen = std::collections::HashSet::new();
            ids.iter()
                .filter(|id| !target.excluding.contains(id) && seen.insert(id.as_str()))
                .collect()
        }
    };
    let all = matches!(target.recipients, Recipients::All);
    if !all && users.is_empty() {
        return Ok(Some(Vec::new()));
    }
    // Excluded ids of a send to users were removed above, as 1.5 does.
    let excluding: &[String] = if all { &target.excluding } else { &[] };
    let ws = keys.mesa15_ws();
    let cmd = match &publication.action {
        Action::Send(frame) => {
            // A 1.5 node that cannot parse a `ws` message emits `error`, which ends a process without a
            // listener: nothing that is not JSON goes there.
            if serde_json::from_str::<&RawValue>(frame.as_str()).is_err() {
                return Err(EngineError::Backend(
                    "a frame that is not JSON cannot be sent in Mesa 1.5's format".into(),
                ));
            }
            let tail = extension(publication.origin, excluding, None);
            if all {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&ws)
                    .arg(ws_message(frame.as_str(), r#"["*"]"#, &tail));
                cmd
            } else {
                let store = publication.class == DeliveryClass::Durable;
                let mut cmd = eval(
                    SEND,
                    &[
                        keys.mesa15_connected_clients(),
                        keys.mesa15_undelivered_messages(),
                        ws,
                    ],
                );
                cmd.arg(frame.as_str())
                    .arg(if store { "1" } else { "0" })
                    .arg(tail);
                for user in users {
                    cmd.arg(user.as_str())
                        .arg(Value::String(user.clone()).to_string())
                        .arg(if holds(user) { "1" } else { "0" });
                }
                cmd
            }
        }
        Action::Disconnect { code, reason } => {
            let tail = extension(publication.origin, excluding, Some((*code, reason)));
            let recipients = if all {
                json!(["*"]).to_string()
            } else {
                json!(users).to_string()
            };
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&ws)
                .arg(ws_message(DISCONNECT_CLIENT, &recipients, &tail));
            cmd
        }
    };
    Ok(Some(vec![cmd]))
}

/// Marks `user` connected and takes (`deliver`) or drops its stored messages.
pub(crate) fn take(keys: &Keys, user: &str, deliver: bool) -> Cmd {
    let mut cmd = eval(
        TAKE,
        &[
            keys.mesa15_undelivered_messages(),
            keys.mesa15_connected_clients(),
        ],
    );
    cmd.arg(user).arg(if deliver { "1" } else { "0" });
    cmd
}

/// The stored list of one user (a JSON array) as frames, oldest first. Elements that are not objects are
/// skipped; a value that is not an array is an error (a foreign writer).
pub(crate) fn stored_frames(list: &str) -> Result<Vec<String>, serde_json::Error> {
    let items: Vec<&RawValue> = serde_json::from_str(list)?;
    Ok(items
        .into_iter()
        .map(RawValue::get)
        .filter(|item| item.trim_start().starts_with('{'))
        .map(str::to_owned)
        .collect())
}

/// `user` joined on `node` (its presence field was written): it is connected for Mesa 1.5.
pub(crate) fn joined(keys: &Keys, user: &str) -> Cmd {
    let mut cmd = redis::cmd("SADD");
    cmd.arg(keys.mesa15_connected_clients()).arg(user);
    cmd
}

/// `user` has no session left on `node`: its presence field goes, and the user leaves connected_clients if
/// no node holds it any more.
pub(crate) fn left(keys: &Keys, node: &str, user: &str) -> Cmd {
    let mut cmd = eval(
        LEAVE,
        &[keys.presence(user), keys.mesa15_connected_clients()],
    );
    cmd.arg(node).arg(user);
    cmd
}

/// Adds `delta` (negative: removes) to `connected_clients_count`.
pub(crate) fn count(keys: &Keys, delta: i64) -> Cmd {
    let mut cmd = redis::cmd("INCRBY");
    cmd.arg(keys.mesa15_connected_clients_count()).arg(delta);
    cmd
}

/// What a `ws` message asks of the node that received it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Our node that published it (`None`: a 1.5 node, a 1.5 Dispatcher or our Dispatcher).
    pub(crate) origin: Option<NodeId>,
    pub(crate) target: Target,
    pub(crate) action: Action,
}

#[derive(Deserialize)]
struct WsMessage<'a> {
    #[serde(borrow)]
    message: &'a RawValue,
    recipients: Vec<String>,
    #[serde(default, rename = "mesa_rs")]
    extension: Extension,
}

#[derive(Deserialize, Default)]
struct Extension {
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    excluding: Vec<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// Decodes a `ws` message. `Ok(None)`: valid, but nothing for clients (an op 5 other than
/// `DISCONNECT_CLIENT`, ignored as 1.5 does). A send's frame keeps `op`, `d` and `t` only, as a 1.5 node
/// delivers it (no `o`, no `s`).
pub(crate) fn decode(payload: &[u8]) -> Result<Option<Incoming>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "a ws message that is not UTF-8")?;
    let message: WsMessage<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a Mesa 1.5 ws message: {e}"))?;
    let mut frame = mesa_protocol::Frame::decode(message.message.get())
        .map_err(|e| format!("a ws message whose message is not a frame: {e}"))?;
    let origin = match message.extension.origin {
        Some(hex) => Some(
            hex.parse::<NodeId>()
                .map_err(|e| format!("a ws message with a bad origin: {e}"))?,
        ),
        None => None,
    };
    let target = Target {
        recipients: if message.recipients.iter().any(|r| r == "*") {
            Recipients::All
        } else {
            Recipients::Users(message.recipients)
        },
        excluding: message.extension.excluding,
    };
    let action = if frame.op == 5 {
        if frame.t.as_deref() != Some("DISCONNECT_CLIENT") {
            return Ok(None);
        }
        Action::Disconnect {
            code: message.extension.code.unwrap_or(1000),
            reason: message.extension.reason.unwrap_or_default(),
        }
    } else {
        frame.o = None;
        frame.s = None;
        Action::Send(frame.encode().into())
    };
    Ok(Some(Incoming {
        origin,
        target,
        action,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesa_engine::{ConnectionId, EncodedFrame};

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn a_broadcast_is_one_ws_message_with_our_extension() {
        let keys = Keys::new("chat");
        let publication = Publication::send(
            Some(NodeId(0xab)),
            Target::all().excluding(["eve"]),
            EncodedFrame::from(r#"{"op":0,"d":{},"t":"HI"}"#),
        );
        let cmds = commands(&keys, &publication, |_| false)
            .expect("valid")
            .expect("a Mesa format");
        assert_eq!(
            args(&cmds[0]),
            [
                "PUBLISH",
                "ws_chat",
                r#"{"message":{"op":0,"d":{},"t":"HI"},"recipients":["*"],"mesa_rs":{"excluding":["eve"],"origin":"00000000000000ab"}}"#
            ]
        );
        let back = decode(args(&cmds[0])[2].as_bytes())
            .expect("decodes")
            .expect("a send");
        assert_eq!(back.origin, Some(NodeId(0xab)));
        assert_eq!(back.target, Target::all().excluding(["eve"]));
        let connection = Publication::send(
            None,
            Target::connection(ConnectionId::new(NodeId(1), 1)),
            EncodedFrame::from("{}"),
        );
        assert!(commands(&keys, &connection, |_| false)
            .expect("valid")
            .is_none());
    }

    #[test]
    fn what_a_1_5_dispatcher_publishes_is_understood() {
        let incoming = decode(
            br#"{"message":{"op":0,"d":{"a":1},"t":"N","o":{"sync":true}},"recipients":["bob"]}"#,
        )
        .expect("decodes")
        .expect("a send");
        assert_eq!(incoming.origin, None);
        assert_eq!(incoming.target, Target::users(["bob"]));
        assert_eq!(
            incoming.action,
            Action::Send(EncodedFrame::from(r#"{"op":0,"d":{"a":1},"t":"N"}"#))
        );
        let kick =
            decode(br#"{"message":{"op":5,"d":{},"t":"DISCONNECT_CLIENT"},"recipients":["*"]}"#)
                .expect("decodes")
                .expect("a disconnect");
        assert_eq!(
            kick.action,
            Action::Disconnect {
                code: 1000,
                reason: String::new()
            }
        );
        assert_eq!(
            decode(br#"{"message":{"op":5,"d":{},"t":"OTHER"},"recipients":["*"]}"#),
            Ok(None)
        );
        for bad in [
            &b"nope"[..],
            br#"{"message":{"op":0}}"#,
            br#"{"message":1,"recipients":[]}"#,
        ] {
            assert!(decode(bad).is_err());
        }
    }

    #[test]
    fn stored_lists_are_split_into_frames() {
        assert_eq!(
            stored_frames(r#"[{"op":0,"d":{"n":[1,2]},"t":"A"}, 7, {"op":0,"d":{},"t":"B"}]"#)
                .expect("an array"),
            [
                r#"{"op":0,"d":{"n":[1,2]},"t":"A"}"#,
                r#"{"op":0,"d":{},"t":"B"}"#
            ]
        );
        assert!(stored_frames("{}").is_err());
    }
}
