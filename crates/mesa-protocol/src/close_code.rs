//! Close codes the server uses, and whether a client should reconnect after each.

/// Why the server closed a connection: the code of the WebSocket close frame.
///
/// Codes below 4000 are standard WebSocket codes (1002 and 1008 keep their Mesa 1.5 meaning);
/// codes from 4000 are this project's extensions, numbered after Discord's gateway where the meaning matches.
/// [`CloseCode::can_reconnect`] tells a client whether reconnecting can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: the server (or the application) ended the connection on purpose. Terminal.
    Normal,
    /// 1001: the endpoint is going away. Reconnect.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol (bad framing, unmasked frames, and so on). Terminal.
    ProtocolError,
    /// 1002 (Mesa 1.5): the client's version does not equal the server's under `enforce_equal_versions`.
    /// Same number as [`CloseCode::ProtocolError`], its own reason text. Terminal.
    VersionMismatch,
    /// 1003: the client sent a binary frame; the protocol is JSON text only. Terminal.
    UnsupportedData,
    /// 1007: a text frame was not valid UTF-8. Terminal.
    InvalidPayload,
    /// 1008 (Mesa 1.5): authentication was refused. Terminal: the same credentials will be refused again.
    AuthenticationFailed,
    /// 1009: a frame or message exceeded the server's maximum message size. Terminal.
    MessageTooBig,
    /// 1011: the server hit an internal error. Reconnect.
    InternalError,
    /// 1012: the server is restarting or shutting down (preceded by op 7). Reconnect, to any node.
    ServiceRestart,
    /// 1013: the server is overloaded. Reconnect later, with backoff.
    TryAgainLater,
    /// 4002: the frame was not valid JSON, or valid JSON that is not a frame. Terminal.
    DecodeError,
    /// 4003: a dispatch arrived before authentication while authentication is required. Terminal.
    NotAuthenticated,
    /// 4005: an authenticated connection tried to authenticate as a different user. Terminal.
    AlreadyAuthenticated,
    /// 4006: authentication is required and did not succeed within the authentication timeout. Reconnect.
    AuthenticationTimeout,
    /// 4008: the client sent more frames than the inbound rate limit allows. Reconnect, with backoff.
    RateLimited,
    /// 4009: the client missed too many heartbeats. Reconnect.
    HeartbeatTimeout,
    /// 4010: the client read too slowly and its outbound queue filled up. Reconnect (and resume: what
    /// did not fit is replayed).
    SlowConsumer,
    /// 4012: the session was resumed on another connection, which now serves it alone. Terminal for this
    /// connection.
    SessionTakenOver,
    /// 4013: the session cannot go on (what it missed is no longer kept; op 9 said why). Reconnect with a
    /// fresh session, not a resume.
    SessionInvalidated,
}

impl CloseCode {
    /// Every close code, for documentation and tests.
    pub const ALL: [CloseCode; 20] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::VersionMismatch,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::AuthenticationFailed,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::ServiceRestart,
        CloseCode::TryAgainLater,
        CloseCode::DecodeError,
        CloseCode::NotAuthenticated,
        CloseCode::AlreadyAuthenticated,
        CloseCode::AuthenticationTimeout,
        CloseCode::RateLimited,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::SessionTakenOver,
        CloseCode::SessionInvalidated,
    ];

    /// The number in the close frame.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError | CloseCode::VersionMismatch => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::AuthenticationFailed => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::TryAgainLater => 1013,
            CloseCode::DecodeError => 4002,
            CloseCode::NotAuthenticated => 4003,
            CloseCode::AlreadyAuthenticated => 4005,
            CloseCode::AuthenticationTimeout => 4006,
            CloseCode::RateLimited => 4008,
            CloseCode::HeartbeatTimeout => 4009,
            CloseCode::SlowConsumer => 4010,
            CloseCode::SessionTakenOver => 4012,
            CloseCode::SessionInvalidated => 4013,
        }
    }

    /// The close code for a number, or `None` for a number the server never sends.
    /// 1002 gives [`CloseCode::ProtocolError`].
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The default reason text sent in the close frame.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "disconnected",
            CloseCode::GoingAway => "going away",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::VersionMismatch => "client version mismatch",
            CloseCode::UnsupportedData => "binary frames are not supported",
            CloseCode::InvalidPayload => "text frame is not valid UTF-8",
            CloseCode::AuthenticationFailed => "authentication failed",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::ServiceRestart => "server restarting, reconnect",
            CloseCode::TryAgainLater => "server overloaded, try again later",
            CloseCode::DecodeError => "invalid frame",
            CloseCode::NotAuthenticated => "not authenticated",
            CloseCode::AlreadyAuthenticated => "already authenticated as another user",
            CloseCode::AuthenticationTimeout => "authentication timed out",
            CloseCode::RateLimited => "rate limited",
            CloseCode::HeartbeatTimeout => "heartbeat timed out",
            CloseCode::SlowConsumer => "outbound queue full: client reads too slowly",
            CloseCode::SessionTakenOver => "session resumed on another connection",
            CloseCode::SessionInvalidated => "session invalidated: start a fresh session",
        }
    }

    /// Whether a client should reconnect after this close.
    ///
    /// `false` means reconnecting cannot help without a change on the client's side (credentials, version, a bug).
    /// Unknown codes (`from_code` returns `None`) should be treated as reconnectable: use
    /// [`can_reconnect_code`].
    pub const fn can_reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::GoingAway
                | CloseCode::InternalError
                | CloseCode::ServiceRestart
                | CloseCode::TryAgainLater
                | CloseCode::AuthenticationTimeout
                | CloseCode::RateLimited
                | CloseCode::HeartbeatTimeout
                | CloseCode::SlowConsumer
                | CloseCode::SessionInvalidated
        )
    }
}

/// Whether a client should reconnect after a close with this number; unknown numbers (including 1005
/// "no status" and 1006 "abnormal closure", which mean the connection dropped) are reconnectable.
pub fn can_reconnect_code(code: u16) -> bool {
    CloseCode::from_code(code).is_none_or(CloseCode::can_reconnect)
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.code()
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for code in CloseCode::ALL {
            let round_trip = CloseCode::from_code(code.code());
            if code == CloseCode::VersionMismatch {
                assert_eq!(round_trip, Some(CloseCode::ProtocolError));
            } else {
                assert_eq!(round_trip, Some(code));
            }
        }
    }

    #[test]
    fn reconnect_policy() {
        assert!(!CloseCode::AuthenticationFailed.can_reconnect());
        assert!(!CloseCode::VersionMismatch.can_reconnect());
        assert!(CloseCode::ServiceRestart.can_reconnect());
        assert!(can_reconnect_code(1006));
        assert!(!can_reconnect_code(1008));
    }
}
