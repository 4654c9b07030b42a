//! [`Session`], the handle the application holds for one client: who it is, where it comes from, and how to
//! send to it or close it.
//!
//! The state behind the handle is owned by the registry: identity changes and the user index that finds a
//! session by user id change together there, in one step ([`Session::update_user`] asks the registry; it does
//! not edit behind its back). The handle holds the server only weakly and without naming its type, so that this
//! module does not depend on the server module that depends on it.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock, Weak};

use http::HeaderMap;
use mesa_protocol::{CloseCode, Frame};
use serde_json::Value;

use crate::error::SendError;
use crate::ids::ConnectionId;
use crate::outbox::{Outbox, OutboxPhase, PushError};
use crate::resume::SessionStream;

/// Who a session authenticated as: the application's user id and user object.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user id. Several sessions (devices) may share one.
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

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Connected (Hello sent), not authenticated. It may never need to be.
    Connected,
    /// Authenticated as a user id: sends to that id reach it.
    Authenticated,
    /// Closing: no more sends are accepted; what was queued is being written before the close frame.
    Closing,
    /// The connection is gone. Sends return [`SendError::Closed`].
    Closed,
}

/// The upgrade request's headers the configuration keeps (`headers.keep`, within `headers.max_bytes`), as
/// one allocation of `name:value\n` lines.
///
/// A `HeaderMap` per idle connection costs about a kilobyte, and hyper's header values are slices of its
/// 8 KiB connection read buffer, which a kept map would hold on to for the life of the WebSocket; and a peer
/// controls how many headers it sends. Header names cannot contain `:` and hyper refuses values with line
/// breaks, so the lines parse back exactly.
#[derive(Debug, Default)]
pub(crate) struct KeptHeaders(Box<[u8]>);

impl KeptHeaders {
    /// Handshake headers mean nothing after the upgrade and are never kept.
    const HANDSHAKE: [http::header::HeaderName; 5] = [
        http::header::CONNECTION,
        http::header::UPGRADE,
        http::header::SEC_WEBSOCKET_KEY,
        http::header::SEC_WEBSOCKET_VERSION,
        http::header::SEC_WEBSOCKET_EXTENSIONS,
    ];

    /// Keeps the headers named in `keep` (`"*"` for all), in request order, while they fit in `max_bytes`;
    /// a header that does not fit is left out.
    pub(crate) fn keep(headers: &HeaderMap, keep: &[String], max_bytes: usize) -> KeptHeaders {
        let all = keep.iter().any(|k| k == "*");
        let mut packed = Vec::new();
        for (name, value) in headers {
            if Self::HANDSHAKE.contains(name) || value.as_bytes().contains(&b'\n') {
                continue;
            }
            if !all && !keep.iter().any(|k| k.eq_ignore_ascii_case(name.as_str())) {
                continue;
            }
            let line = name.as_str().len() + value.len() + 2;
            if packed.len() + line > max_bytes {
                tracing::debug!(header = %name, "header left out: headers.max_bytes reached");
                continue;
            }
            packed.extend_from_slice(name.as_str().as_bytes());
            packed.push(b':');
            packed.extend_from_slice(value.as_bytes());
            packed.push(b'\n');
        }
        KeptHeaders(packed.into_boxed_slice())
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

/// What a session keeps of its [`Identity`]: the id shared with the registry's user index, and the user
/// object encoded (a parsed `serde_json` object costs about half a kilobyte per session even when small).
#[derive(Debug)]
pub(crate) struct StoredIdentity {
    pub(crate) id: Arc<str>,
    user: Box<str>,
}

impl StoredIdentity {
    pub(crate) fn new(identity: Identity) -> StoredIdentity {
        StoredIdentity {
            id: Arc::from(identity.id),
            user: identity.user.to_string().into_boxed_str(),
        }
    }

    fn user(&self) -> Value {
        // Encoded by serde_json from a `Value`, so it decodes; `Null` only if that invariant ever broke.
        serde_json::from_str(&self.user).unwrap_or(Value::Null)
    }
}

pub(crate) struct SessionShared {
    pub(crate) connection_id: ConnectionId,
    remote_addr: Option<SocketAddr>,
    headers: KeptHeaders,
    /// Written only by the registry, under its lock, together with the user index.
    pub(crate) identity: RwLock<Option<Arc<StoredIdentity>>>,
    pub(crate) outbox: Outbox,
    /// Set once, when the session becomes resumable (boxed: most sessions never are).
    pub(crate) stream: OnceLock<Box<SessionStream>>,
    /// The server (`crate::server::Inner`), type-erased; see the module docs.
    pub(crate) server: Weak<dyn Any + Send + Sync>,
}

/// A handle to one client's session: who it is, where it comes from, and how to send to it or close it
/// (Mesa 1.5's `Client`).
///
/// Cheap to clone. It stays valid after the connection closes: sends then return [`SendError::Closed`] and
/// [`Session::state`] says [`SessionState::Closed`].
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<SessionShared>,
}

impl Session {
    pub(crate) fn new(
        connection_id: ConnectionId,
        remote_addr: Option<SocketAddr>,
        headers: KeptHeaders,
        outbox: Outbox,
        server: Weak<dyn Any + Send + Sync>,
    ) -> Session {
        Session {
            shared: Arc::new(SessionShared {
                connection_id,
                remote_addr,
                headers,
                identity: RwLock::new(None),
                outbox,
                stream: OnceLock::new(),
                server,
            }),
        }
    }

    /// The resumable session's id (what the client resumes with), or `None` when the client did not ask
    /// for a resumable session or the server offers none.
    pub fn session_id(&self) -> Option<mesa_engine::SessionId> {
        self.stream().map(|stream| stream.id)
    }

    pub(crate) fn stream(&self) -> Option<&SessionStream> {
        self.shared.stream.get().map(|stream| &**stream)
    }

    /// The id of this session's connection, unique across nodes.
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

    /// Whether the session is authenticated (and still open).
    pub fn is_authenticated(&self) -> bool {
        self.state() == SessionState::Authenticated
    }

    /// Where the session is in its life.
    pub fn state(&self) -> SessionState {
        match self.shared.outbox.phase() {
            OutboxPhase::Closed => SessionState::Closed,
            OutboxPhase::Closing => SessionState::Closing,
            OutboxPhase::Open if self.has_identity() => SessionState::Authenticated,
            OutboxPhase::Open => SessionState::Connected,
        }
    }

    pub(crate) fn has_identity(&self) -> bool {
        self.shared
            .identity
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    /// The peer's address, when known (standalone server, or axum with `ConnectInfo`).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// The headers of the upgrade request that the configuration keeps (`headers.keep`, default all, within
    /// `headers.max_bytes`, default 4096), never the WebSocket handshake's own (`Connection`, `Upgrade`,
    /// `Sec-WebSocket-*`). Built on each call from a compact copy; call it once per need.
    pub fn headers(&self) -> HeaderMap {
        self.shared.headers.unpack()
    }

    /// Queues a frame for this session only. Never waits. A full queue (`limits.outbound_queue` frames or
    /// `limits.outbound_queue_bytes`) refuses it with [`SendError::QueueFull`] and closes the session with
    /// 4010 after the frames already queued; a closing or closed session refuses it with [`SendError::Closed`].
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        // `o` (Mesa 1.5 message options) is for the server; it is never sent to a client.
        if frame.o.is_some() {
            let mut bare = frame.clone();
            bare.o = None;
            return self.send_encoded(bare.encode().into());
        }
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

    /// Closes the session with `code` and `reason` after the frames already queued are written; later sends
    /// are refused. A `code` outside 1000–4999 or one reserved by RFC 6455 (1004–1006, 1015) is sent as 1000.
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
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("connection_id", &self.shared.connection_id)
            .field("id", &self.id())
            .field("state", &self.state())
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
        let unpacked = KeptHeaders::keep(&headers, &["*".into()], 4096).unpack();
        assert_eq!(unpacked.get("x-device").unwrap(), "phone");
        let multi: Vec<_> = unpacked.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b: c"]);
        assert!(unpacked.get(http::header::SEC_WEBSOCKET_KEY).is_none());
        assert_eq!(unpacked.len(), 3);
    }

    #[test]
    fn kept_headers_are_the_configured_ones_within_the_byte_bound() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("x-big", "x".repeat(500).parse().unwrap());
        headers.insert("x-small", "y".parse().unwrap());
        let kept = KeptHeaders::keep(&headers, &["Authorization".into(), "x-small".into()], 4096);
        assert_eq!(kept.unpack().len(), 2);
        let bounded = KeptHeaders::keep(&headers, &["*".into()], 100).unpack();
        assert!(bounded.get("x-big").is_none());
        assert_eq!(bounded.get("x-small").unwrap(), "y");
        assert!(KeptHeaders::keep(&headers, &[], 4096).unpack().is_empty());
    }

    /// Every session holds one `Arc<SessionShared>`: with its 16-byte header it fits jemalloc's 256 B
    /// class at 240 B, and a few bytes more cost 64 B per connection (a resumable-session field once did).
    #[test]
    fn the_shared_state_stays_in_its_allocator_class() {
        let size = std::mem::size_of::<SessionShared>();
        assert!(size <= 240, "SessionShared grew to {size} bytes");
    }
}
