//! What travels through an engine: an encoded frame (or a disconnect) and who it is for.

use bytes::Bytes;

use crate::ids::NodeId;
use crate::target::Target;

/// One frame, encoded once as JSON text, shared by every node and session it reaches (cloning is a
/// reference count, never a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame(Bytes);

/// Bytes that are not UTF-8 text, so not an encoded frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an encoded frame must be UTF-8 text")]
pub struct NotUtf8;

impl EncodedFrame {
    /// Frame bytes received from another node: checked to be UTF-8 (the WebSocket layer sends text frames).
    pub fn from_bytes(bytes: Bytes) -> Result<EncodedFrame, NotUtf8> {
        std::str::from_utf8(&bytes).map_err(|_| NotUtf8)?;
        Ok(EncodedFrame(bytes))
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Checked at construction: only `From<String>` and `from_bytes` build one.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for a frame the protocol encoded).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for EncodedFrame {
    fn from(text: String) -> EncodedFrame {
        EncodedFrame(Bytes::from(text))
    }
}

impl From<&'static str> for EncodedFrame {
    fn from(text: &'static str) -> EncodedFrame {
        EncodedFrame(Bytes::from_static(text.as_bytes()))
    }
}

/// What a publication asks the recipients' nodes to do. Engines match on every variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue this frame on every session the target names.
    Send(EncodedFrame),
    /// Close every session the target names with this code and reason (Mesa 1.5 `DISCONNECT_CLIENT`); their
    /// queued frames are written first.
    Disconnect {
        /// WebSocket close code.
        code: u16,
        /// Close reason (at most 123 bytes are sent).
        reason: String,
    },
}

/// Whether a send may be kept for recipients who are offline (Mesa 1.5 "sync").
///
/// Only an engine that stores messages reads it (the Redis engine in Mesa 1.5 compatibility mode); the
/// in-memory engine ignores it. Sends to everyone and disconnects are never stored, whatever the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryClass {
    /// The default (Mesa 1.5 `o.sync` absent or `true`): kept for offline recipient users and redelivered
    /// when they authenticate.
    #[default]
    Durable,
    /// Only for who is connected now (Mesa 1.5 `o.sync: false`): never stored.
    Volatile,
}

/// A send or disconnect on its way to the nodes that hold its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The node it was made on (`None` for a Dispatcher, which is no node). An engine never hands a
    /// publication back to its origin: the origin delivers to its own sessions itself, at once.
    pub origin: Option<NodeId>,
    /// Who it is for.
    pub target: Target,
    /// What to do.
    pub action: Action,
    /// Whether a send to users may be stored for the offline ones ([`DeliveryClass::Durable`] unless set).
    pub class: DeliveryClass,
    /// Set by an engine that keeps per-user streams, on what it hands to nodes: the position of this
    /// (one-user) durable send in the user's stream, which resumable sessions send as `s`. `None` for
    /// everything else (what a publisher builds, sends to everyone, volatile sends, disconnects).
    pub sequence: Option<u64>,
}

impl Publication {
    /// A frame for `target`, made on `origin`.
    pub fn send(origin: Option<NodeId>, target: Target, frame: EncodedFrame) -> Publication {
        Publication {
            origin,
            target,
            action: Action::Send(frame),
            class: DeliveryClass::Durable,
            sequence: None,
        }
    }

    /// The same publication with another [`DeliveryClass`].
    pub fn with_class(mut self, class: DeliveryClass) -> Publication {
        self.class = class;
        self
    }

    /// A disconnect of the sessions `target` names.
    pub fn disconnect(
        origin: Option<NodeId>,
        target: Target,
        code: u16,
        reason: impl Into<String>,
    ) -> Publication {
        Publication {
            origin,
            target,
            action: Action::Disconnect {
                code,
                reason: reason.into(),
            },
            class: DeliveryClass::Volatile,
            sequence: None,
        }
    }
}
