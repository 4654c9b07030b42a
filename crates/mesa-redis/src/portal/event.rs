//! What a gateway hands to Portal workers, as plain data, and its JSON form.
//!
//! The JSON is Mesa 1.5's `portal` message — `{"type", "message"?, "clientId"?, "portalId"}` — with extra
//! fields a Mesa 1.5 `Portal` ignores (it reads only those three): `connectionId`, `nodeId`, `timestamp`,
//! `code`, `reason`. The same object (without `portalId`) is the `event` field of an at-least-once stream
//! entry, so both modes share one codec.

use std::time::{SystemTime, UNIX_EPOCH};

use mesa_engine::{ConnectionId, NodeId};
use mesa_protocol::Frame;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened to a client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PortalEventKind {
    /// A connection was opened (Hello sent). Mesa 1.5 sends no `clientId` with it.
    Connection,
    /// The connection authenticated (or was re-identified); the event's `user_id` is who.
    Authentication,
    /// The client sent this frame (Mesa 1.5 hands every received frame but heartbeat ACKs and, when an
    /// authentication check is set, op 2).
    Message(Frame),
    /// The connection closed. Code and reason are ours: a Mesa 1.5 node does not send them.
    Disconnection {
        /// The WebSocket close code, when known.
        code: Option<u16>,
        /// The close reason, when one was given.
        reason: Option<String>,
    },
}

impl PortalEventKind {
    /// The Mesa 1.5 `type`: `connection`, `authentication`, `message` or `disconnection`.
    pub fn name(&self) -> &'static str {
        match self {
            PortalEventKind::Connection => "connection",
            PortalEventKind::Authentication => "authentication",
            PortalEventKind::Message(_) => "message",
            PortalEventKind::Disconnection { .. } => "disconnection",
        }
    }
}

/// One client event on its way to a worker.
///
/// Events made by this crate's users always carry `connection`, `node` and `timestamp_ms`; those fields are
/// `None` only in events published by a Mesa 1.5 node, whose format lacks them.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalEvent {
    /// What happened.
    pub kind: PortalEventKind,
    /// The connection it happened to (Mesa 1.5 has no connection ids: `None` from a 1.5 node).
    pub connection: Option<ConnectionId>,
    /// The authenticated user id of the connection, when it has one (Mesa 1.5's `clientId`).
    pub user_id: Option<String>,
    /// The gateway node that holds the connection.
    pub node: Option<NodeId>,
    /// When the node made the event, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<u64>,
}

impl PortalEvent {
    /// An event of `connection` on `node`, stamped now, with no user yet.
    pub fn new(kind: PortalEventKind, node: NodeId, connection: ConnectionId) -> PortalEvent {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .ok();
        PortalEvent {
            kind,
            connection: Some(connection),
            user_id: None,
            node: Some(node),
            timestamp_ms,
        }
    }

    /// The same event, of the authenticated user `user_id`.
    pub fn with_user(mut self, user_id: impl Into<String>) -> PortalEvent {
        self.user_id = Some(user_id.into());
        self
    }

    /// Encodes the event as its JSON object (no `portalId`).
    pub fn to_json(&self) -> String {
        encode(&Wire::from_event(self, None))
    }

    /// Encodes the event for Mesa 1.5's `portal` channel, addressed to `portal_id`.
    pub fn to_mesa_json(&self, portal_id: &str) -> String {
        encode(&Wire::from_event(self, Some(portal_id.to_owned())))
    }

    /// The JSON object without its closing brace, ending with `,"portalId":` — completed by the script that
    /// picks the portal in Redis (`pool.rs`).
    pub(crate) fn to_mesa_json_prefix(&self) -> String {
        let mut json = self.to_json();
        // `to_json` always writes an object with at least `type`, so it ends with `}` and needs a comma.
        json.pop();
        json.push_str(",\"portalId\":");
        json
    }

    /// Decodes a JSON object of either mode; returns the event and the `portalId` it was addressed to.
    pub fn from_json(text: &str) -> Result<(PortalEvent, Option<String>), DecodeError> {
        let wire: Wire = serde_json::from_str(text).map_err(DecodeError::Json)?;
        wire.into_event()
    }
}

/// A JSON object that is not a Portal event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON, or not an object of the expected shape.
    #[error("not a portal event: {0}")]
    Json(#[source] serde_json::Error),
    /// A `type` that is none of the four.
    #[error("unknown portal event type {0:?}")]
    UnknownType(String),
    /// A `message` event without its `message`.
    #[error("a message event without a message")]
    MissingMessage,
}

/// The JSON object, Mesa 1.5's field names first.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<Frame>,
    /// A string from us; Mesa 1.5 passes whatever id the application authenticated with (maybe a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    portal_id: Option<String>,
}

impl Wire {
    fn from_event(event: &PortalEvent, portal_id: Option<String>) -> Wire {
        let (message, code, reason) = match &event.kind {
            PortalEventKind::Message(frame) => (Some(frame.clone()), None, None),
            PortalEventKind::Disconnection { code, reason } => (None, *code, reason.clone()),
            _ => (None, None, None),
        };
        Wire {
            kind: event.kind.name().to_owned(),
            message,
            client_id: event.user_id.clone().map(Value::String),
            connection_id: event.connection.map(|c| c.to_string()),
            node_id: event.node.map(|n| n.to_string()),
            timestamp: event.timestamp_ms,
            code,
            reason,
            portal_id,
        }
    }

    fn into_event(self) -> Result<(PortalEvent, Option<String>), DecodeError> {
        let kind = match self.kind.as_str() {
            "connection" => PortalEventKind::Connection,
            "authentication" => PortalEventKind::Authentication,
            "message" => PortalEventKind::Message(self.message.ok_or(DecodeError::MissingMessage)?),
            "disconnection" => PortalEventKind::Disconnection {
                code: self.code,
                reason: self.reason,
            },
            _ => return Err(DecodeError::UnknownType(self.kind)),
        };
        let user_id = match self.client_id {
            Some(Value::String(id)) => Some(id),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        // Our own extension fields: a foreign writer's malformed ones read as absent.
        let event = PortalEvent {
            kind,
            connection: self.connection_id.and_then(|c| c.parse().ok()),
            user_id,
            node: self.node_id.and_then(|n| n.parse().ok()),
            timestamp_ms: self.timestamp,
        };
        Ok((event, self.portal_id))
    }
}

fn encode(wire: &Wire) -> String {
    // Strings, integers and a frame that was decoded from JSON: serialising cannot fail.
    serde_json::to_string(wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(kind: PortalEventKind) -> PortalEvent {
        PortalEvent::new(kind, NodeId(7), ConnectionId::new(NodeId(7), 3)).with_user("alice")
    }

    #[test]
    fn mesa_fields_are_exactly_those_of_1_5() {
        let frame = Frame::dispatch("SAY", json!({"text": "hi"}));
        let event = sample(PortalEventKind::Message(frame));
        let value: Value = serde_json::from_str(&event.to_mesa_json("p1")).unwrap_or_default();
        assert_eq!(value["type"], "message");
        assert_eq!(value["portalId"], "p1");
        assert_eq!(value["clientId"], "alice");
        assert_eq!(
            value["message"],
            json!({"op": 0, "d": {"text": "hi"}, "t": "SAY"})
        );
        let prefix = event.to_mesa_json_prefix();
        assert_eq!(
            serde_json::from_str::<Value>(&format!("{prefix}\"p1\"}}")).unwrap_or_default(),
            value
        );
    }

    #[test]
    fn events_round_trip_and_mesa_events_decode() {
        for kind in [
            PortalEventKind::Connection,
            PortalEventKind::Authentication,
            PortalEventKind::Message(Frame::dispatch("X", json!([1]))),
            PortalEventKind::Disconnection {
                code: Some(1000),
                reason: Some("bye".into()),
            },
        ] {
            let event = sample(kind);
            let (back, portal) = PortalEvent::from_json(&event.to_json()).expect("decodes");
            assert_eq!(back, event);
            assert_eq!(portal, None);
        }
        // What a Mesa 1.5.8 node publishes: no ids of ours, maybe a numeric clientId.
        let (event, portal) =
            PortalEvent::from_json(r#"{"type":"disconnection","clientId":42,"portalId":"p"}"#)
                .expect("decodes");
        assert_eq!(event.user_id.as_deref(), Some("42"));
        assert_eq!(event.connection, None);
        assert_eq!(portal.as_deref(), Some("p"));
        assert!(PortalEvent::from_json(r#"{"type":"message"}"#).is_err());
        assert!(PortalEvent::from_json(r#"{"type":"nope"}"#).is_err());
        assert!(PortalEvent::from_json("null").is_err());
    }
}
