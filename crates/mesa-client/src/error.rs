//! Error types, one per operation: [`ConnectError`] (building and connecting), [`AuthenticateError`]
//! ([`Client::authenticate`](crate::Client::authenticate)) and [`SendError`] ([`Client::send`](crate::Client::send)).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The source of an error, shared so that one failure can be reported to several waiters and an event.
type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// Why a frame could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The send queue holds `capacity` frames already: the client is disconnected (or the socket is slower
    /// than the sender) for longer than the queue covers. Nothing was queued. Raise
    /// [`ClientBuilder::queue_capacity`](crate::ClientBuilder::queue_capacity) or slow down.
    #[error("send queue full ({capacity} frames; raise ClientBuilder::queue_capacity)")]
    QueueFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// The client is closed ([`Client::disconnect`](crate::Client::disconnect) was called, the server closed
    /// with a code that forbids reconnecting, or reconnection is off): nothing would send the frame.
    /// [`Client::connect`](crate::Client::connect) reopens it.
    #[error("client closed; call connect() to reopen it")]
    Closed,
}

/// Why [`Client::authenticate`](crate::Client::authenticate) did not return a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthenticateError {
    /// The server refused the credentials: a 1008 close (Mesa 1.5; `close_code` is `Some(1008)`, the client
    /// does not reconnect) or op 9 (`close_code` is `None`, the connection stays open, unauthenticated).
    /// The client forgets refused credentials; queued sends stay queued until a later
    /// [`Client::authenticate`](crate::Client::authenticate) succeeds.
    #[error("authentication refused: {reason}")]
    Refused {
        /// The server's reason (close reason or op 9 `d.reason`).
        reason: String,
        /// The close code when the server closed the connection.
        close_code: Option<u16>,
    },
    /// No op 22 within the Hello's `c_authentication_timeout` (or the configured default). The client closes
    /// that connection with 4006 and reconnects; the credentials are sent again on the new connection.
    #[error("no answer to authentication within {after:?}")]
    TimedOut {
        /// The timeout that passed.
        after: Duration,
    },
    /// The connection carrying the credentials closed before the server answered. The client keeps the
    /// credentials and sends them again after reconnecting (watch for [`Event::Authenticated`](crate::Event)).
    #[error("connection lost before the server answered (close {code}: {reason})")]
    ConnectionLost {
        /// The close code (1006 when the connection dropped without one).
        code: u16,
        /// The close reason or what went wrong.
        reason: String,
    },
    /// A newer [`Client::authenticate`](crate::Client::authenticate) call with other credentials replaced
    /// these before they were sent: the server never saw them. (Credentials already sent are answered
    /// instead, in order; see [`Client::authenticate`](crate::Client::authenticate).)
    #[error("authentication superseded by a newer authenticate() call before it was sent")]
    Superseded,
    /// The client is idle (never connected, or closed): call [`Client::connect`](crate::Client::connect) first.
    /// The credentials were not kept.
    #[error("client is not connected; call connect() first")]
    NotConnected,
    /// The client was closed (disconnected, or every handle dropped) while waiting.
    #[error("client closed while authenticating")]
    Closed,
}

/// Why a connection could not be made (or the client not built): a kind and, where there is one, the
/// underlying error as [`source`](StdError::source).
#[derive(Clone)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    source: Option<Source>,
}

/// What kind of failure a [`ConnectError`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The URL does not parse, or its scheme is not `ws` or `wss`.
    InvalidUrl,
    /// A custom header name or value is not valid HTTP.
    InvalidHeader {
        /// The header name as given.
        name: String,
    },
    /// The client was built outside a Tokio runtime: there is nowhere to run its task.
    NoRuntime,
    /// The TCP connection failed, or the socket failed during the handshake.
    Io,
    /// TLS could not be set up or its handshake failed (certificate, name, protocol).
    Tls,
    /// The server answered the upgrade request with this HTTP status instead of 101.
    Rejected {
        /// The HTTP status code.
        status: u16,
    },
    /// The WebSocket handshake failed for another reason (a malformed answer, a protocol error).
    Handshake,
    /// The TCP, TLS and WebSocket handshakes together took longer than the connect timeout.
    Timeout {
        /// The connect timeout.
        after: Duration,
    },
    /// The WebSocket opened but no Hello (op 10) arrived within the Hello timeout.
    HelloTimeout {
        /// The Hello timeout.
        after: Duration,
    },
    /// The server closed the WebSocket (or it dropped: code 1006) before sending Hello.
    ClosedBeforeHello {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The first frame was not a valid Hello.
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The client was disconnected (or every handle dropped) while connecting.
    Closed,
}

impl ConnectError {
    pub(crate) fn new(kind: ConnectErrorKind) -> ConnectError {
        ConnectError { kind, source: None }
    }

    pub(crate) fn with_source(
        kind: ConnectErrorKind,
        source: impl StdError + Send + Sync + 'static,
    ) -> ConnectError {
        ConnectError {
            kind,
            source: Some(Arc::new(source)),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &ConnectErrorKind {
        &self.kind
    }

    /// The kind and the underlying error.
    pub fn into_parts(self) -> (ConnectErrorKind, Option<Arc<dyn StdError + Send + Sync>>) {
        (self.kind, self.source)
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("kind", &self.kind)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConnectErrorKind::InvalidUrl => f.write_str("invalid URL: expected ws://… or wss://…"),
            ConnectErrorKind::InvalidHeader { name } => write!(f, "invalid header {name:?}"),
            ConnectErrorKind::NoRuntime => f.write_str("not inside a Tokio runtime"),
            ConnectErrorKind::Io => f.write_str("connection failed"),
            ConnectErrorKind::Tls => f.write_str("TLS failed"),
            ConnectErrorKind::Rejected { status } => {
                write!(f, "upgrade refused with HTTP status {status}")
            }
            ConnectErrorKind::Handshake => f.write_str("WebSocket handshake failed"),
            ConnectErrorKind::Timeout { after } => {
                write!(f, "connecting took longer than {after:?}")
            }
            ConnectErrorKind::HelloTimeout { after } => write!(f, "no Hello within {after:?}"),
            ConnectErrorKind::ClosedBeforeHello { code, reason } => {
                write!(f, "closed before Hello (close {code}: {reason})")
            }
            ConnectErrorKind::Protocol { detail } => write!(f, "protocol error: {detail}"),
            ConnectErrorKind::Closed => f.write_str("client closed while connecting"),
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_keeps_its_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = ConnectError::with_source(ConnectErrorKind::Io, io);
        assert_eq!(error.to_string(), "connection failed");
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("refused")
        );
        let (kind, source) = error.clone().into_parts();
        assert_eq!(kind, ConnectErrorKind::Io);
        assert!(source.is_some());
        assert!(format!("{error:?}").contains("refused"));
    }
}
