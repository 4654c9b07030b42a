//! The per-connection handle the application holds.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};

use http::HeaderMap;
use mesa_protocol::{CloseCode, Frame};
use serde_json::Value;

use crate::error::SendError;
use crate::outbox::{Outbox, PushError};
use crate::server::{Inner, Mesa};

/// Who a connection authenticated as: the application's user id and user object.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user id. Several connections (devices) may share one.
    pub id: String,
    /// The user object, sent in op 22 when `send_user_object` is on.
    pub user: Value,
}

impl Identity {
    /// An identity with this id and user object.
    pub fn new(id: impl Into<String>, user: Value) -> Identity {
        Identity {
            id: id.into(),
            user,
        }
    }
}

/// A connection's number, unique within one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The upgrade request's headers as one allocation of `name:value\n` lines.
///
/// A `HeaderMap` per idle connection costs about a kilobyte, and hyper's header values are slices of its
/// 8 KiB connection read buffer, which a kept map would hold on to for the life of the WebSocket.
/// Header names cannot contain `:` and hyper refuses values with line breaks, so the lines parse back exactly.
#[derive(Debug, Default)]
pub(crate) struct PackedHeaders(Box<[u8]>);

impl PackedHeaders {
    /// Handshake headers mean nothing after the upgrade and are left out.
    const HANDSHAKE: [http::header::HeaderName; 5] = [
        http::header::CONNECTION,
        http::header::UPGRADE,
        http::header::SEC_WEBSOCKET_KEY,
        http::header::SEC_WEBSOCKET_VERSION,
        http::header::SEC_WEBSOCKET_EXTENSIONS,
    ];

    pub(crate) fn pack(headers: &HeaderMap) -> PackedHeaders {
        let mut packed = Vec::new();
        for (name, value) in headers {
            if Self::HANDSHAKE.contains(name) || value.as_bytes().contains(&b'\n') {
                continue;
            }
            packed.extend_from_slice(name.as_str().as_bytes());
            packed.push(b':');
            packed.extend_from_slice(value.as_bytes());
            packed.push(b'\n');
        }
        PackedHeaders(packed.into_boxed_slice())
    }

    fn unpack(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in self
            .0
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
        {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// What a connection keeps of its [`Identity`]: the id shared with the registry's user index, and the user
/// object encoded (a parsed `serde_json` object costs about half a kilobyte per connection even when small).
#[derive(Debug)]
pub(crate) struct StoredIdentity {
    pub(crate) id: Arc<str>,
    user: Box<str>,
}

impl StoredIdentity {
    fn user(&self) -> Value {
        // Encoded by serde_json from a `Value`, so it decodes; `Null` only if that invariant ever broke.
        serde_json::from_str(&self.user).unwrap_or(Value::Null)
    }
}

pub(crate) struct ClientShared {
    pub(crate) connection_id: ConnectionId,
    remote_addr: Option<SocketAddr>,
    headers: PackedHeaders,
    identity: RwLock<Option<Arc<StoredIdentity>>>,
    authenticated: AtomicBool,
    pub(crate) outbox: Outbox,
    server: Weak<Inner>,
}

/// A handle to one connection: who it is, where it comes from, and how to send to or close it.
///
/// Cheap to clone; it stays valid after the connection closes (sends then return [`SendError::Closed`]).
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<ClientShared>,
}

impl Client {
    pub(crate) fn new(
        connection_id: ConnectionId,
        remote_addr: Option<SocketAddr>,
        headers: PackedHeaders,
        outbound_queue: usize,
        server: Weak<Inner>,
    ) -> Client {
        Client {
            shared: Arc::new(ClientShared {
                connection_id,
                remote_addr,
                headers,
                identity: RwLock::new(None),
                authenticated: AtomicBool::new(false),
                outbox: Outbox::new(outbound_queue),
                server,
            }),
        }
    }

    /// This connection's number.
    pub fn connection_id(&self) -> ConnectionId {
        self.shared.connection_id
    }

    /// The authenticated user id (Mesa 1.5 `client.id`), or `None` before authentication.
    pub fn id(&self) -> Option<String> {
        self.stored_identity()
            .map(|identity| identity.id.to_string())
    }

    /// The authenticated user object (Mesa 1.5 `client.user`), or `None` before authentication.
    pub fn user(&self) -> Option<Value> {
        self.stored_identity().map(|identity| identity.user())
    }

    /// The authenticated identity, or `None` before authentication.
    pub fn identity(&self) -> Option<Identity> {
        self.stored_identity()
            .map(|identity| Identity::new(identity.id.to_string(), identity.user()))
    }

    pub(crate) fn stored_identity(&self) -> Option<Arc<StoredIdentity>> {
        self.shared
            .identity
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the connection authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.shared.authenticated.load(Ordering::Acquire)
    }

    /// The peer's address, when known (standalone server, or axum with `ConnectInfo`).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// The headers of the upgrade request, except the WebSocket handshake's own (`Connection`, `Upgrade`,
    /// `Sec-WebSocket-*`). Built on each call from a compact copy; call it once per need.
    pub fn headers(&self) -> HeaderMap {
        self.shared.headers.unpack()
    }

    /// Queues a frame for this connection only. Never waits: a full queue closes the connection (4010) and
    /// returns [`SendError::QueueFull`].
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        self.send_encoded(frame.encode().into())
    }

    pub(crate) fn send_encoded(
        &self,
        text: tokio_tungstenite::tungstenite::Utf8Bytes,
    ) -> Result<(), SendError> {
        self.shared.outbox.push(text).map_err(|e| match e {
            PushError::Full => SendError::QueueFull,
            PushError::Closed => SendError::Closed,
        })
    }

    /// Closes the connection with `code` and `reason` after the frames already queued are written.
    /// A `code` outside 1000–4999 or one reserved by RFC 6455 (1004–1006, 1015) is sent as 1000.
    pub fn disconnect(&self, code: u16, reason: impl Into<String>) {
        let code = if (1000..5000).contains(&code) && !matches!(code, 1004..=1006 | 1015) {
            code
        } else {
            CloseCode::Normal.code()
        };
        let mut reason: String = reason.into();
        // A close frame's payload is at most 125 bytes: 2 for the code, 123 for the reason.
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.shared.outbox.close(code, reason);
    }

    /// Replaces the identity of an authenticated connection (Mesa 1.5 `client.updateUser`): sends to the new
    /// id reach it, sends to the old id no longer do. Returns `false` (and changes nothing) when the connection
    /// has not authenticated.
    pub fn update_user(&self, identity: Identity) -> bool {
        if !self.is_authenticated() {
            return false;
        }
        self.set_identity(identity);
        true
    }

    /// The server this connection belongs to, to send to other clients from a handler; `None` once the
    /// server is gone.
    pub fn server(&self) -> Option<Mesa> {
        self.shared.server.upgrade().map(|inner| Mesa { inner })
    }

    /// Records a (new) identity and marks the connection authenticated.
    pub(crate) fn set_identity(&self, identity: Identity) {
        let identity = Arc::new(StoredIdentity {
            id: Arc::from(identity.id),
            user: identity.user.to_string().into_boxed_str(),
        });
        let old = {
            let mut slot = self
                .shared
                .identity
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.replace(identity.clone())
        };
        self.shared.authenticated.store(true, Ordering::Release);
        if let Some(server) = self.shared.server.upgrade() {
            server
                .registry
                .reindex(self, old.map(|i| i.id.clone()), &identity.id);
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection_id", &self.shared.connection_id)
            .field("id", &self.id())
            .field("remote_addr", &self.shared.remote_addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_headers_round_trip_without_the_handshake() {
        let mut headers = HeaderMap::new();
        headers.insert("x-device", "phone".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b: c".parse().unwrap());
        headers.insert(http::header::SEC_WEBSOCKET_KEY, "abc".parse().unwrap());
        headers.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        let unpacked = PackedHeaders::pack(&headers).unpack();
        assert_eq!(unpacked.get("x-device").unwrap(), "phone");
        let multi: Vec<_> = unpacked.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b: c"]);
        assert!(unpacked.get(http::header::SEC_WEBSOCKET_KEY).is_none());
        assert_eq!(unpacked.len(), 3);
    }
}
