//! Error types, one per operation.

use std::fmt;

/// Why a message could not be queued for sending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The client's outbound queue was full: it reads slower than it is sent to. The connection is being closed
    /// with 4010. Raise `limits.outbound_queue` if legitimate clients hit this.
    #[error("outbound queue full (limits.outbound_queue); the client is being closed with 4010")]
    QueueFull,
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
    /// The engine could not hand the message to every node it was for (Redis unreachable, its queue full):
    /// this node's own sessions got it (`local`), the others did not. Retry, or report it (the HTTP API
    /// answers 503).
    #[error(transparent)]
    Engine(#[from] mesa_engine::PublishError),
}

/// A refusal from the application's authentication check. The reason is sent to the client in the close
/// frame (1008) or in op 9, so it must not contain secrets.
///
/// [`AuthError::unavailable`] is not a refusal but a check that could not decide (its backend is down, slow
/// or failing): the server's problem, so the client is closed with 1013 (retry later) instead of 1008.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    reason: String,
    retryable: bool,
}

impl AuthError {
    /// A refusal with this reason: closes with 1008 (terminal), or op 9 without `disconnect_on_fail`.
    pub fn new(reason: impl Into<String>) -> AuthError {
        AuthError {
            reason: reason.into(),
            retryable: false,
        }
    }

    /// The check could not decide, through no fault of the client (an auth backend that is down, slow or
    /// answering 5xx): closes with 1013 "try again later" and this reason, or op 9 without
    /// `disconnect_on_fail`. Put a retry hint in the reason, never the backend's details.
    pub fn unavailable(reason: impl Into<String>) -> AuthError {
        AuthError {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// The reason given to the client.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether this is [`AuthError::unavailable`]: the same credentials may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for AuthError {}

/// Something that went wrong on one connection, reported to `on_error` handlers and middleware.
///
/// Each of these also closes (or has already closed) the connection with the code [`ConnectionError::close_code`] gives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The client sent a text message that is not a frame.
    #[error("invalid frame: {0}")]
    Decode(#[from] mesa_protocol::DecodeError),
    /// The WebSocket layer refused the client's input (oversized message, invalid UTF-8, protocol violation).
    #[error("websocket protocol: {0}")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    /// A batch of frames took longer than `limits.write_timeout_ms` to write: the client does not read.
    #[error("write timed out: the client does not read (limits.write_timeout_ms)")]
    WriteTimeout,
}

impl ConnectionError {
    /// The close code this error leads to, or `None` when the socket is already unusable.
    pub fn close_code(&self) -> Option<mesa_protocol::CloseCode> {
        use mesa_protocol::CloseCode;
        use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
        match self {
            ConnectionError::Decode(_) => Some(CloseCode::DecodeError),
            // An oversized message or frame (and, on the client side only, too many headers).
            ConnectionError::WebSocket(WsError::Capacity(_)) => Some(CloseCode::MessageTooBig),
            ConnectionError::WebSocket(WsError::Utf8(_)) => Some(CloseCode::InvalidPayload),
            // EOF without a close frame: the peer is gone, there is nobody to send a close frame to.
            ConnectionError::WebSocket(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake,
            )) => None,
            ConnectionError::WebSocket(WsError::Protocol(_)) => Some(CloseCode::ProtocolError),
            ConnectionError::WriteTimeout => Some(CloseCode::SlowConsumer),
            ConnectionError::WebSocket(_) => None,
        }
    }
}
