//! Opcodes: the `op` field of every frame.

/// The operation a frame carries, from its `op` field.
///
/// Opcodes 0, 1, 2, 5, 10, 11 and 22 are Mesa 1.5; 6, 7 and 9 are extensions of this project, chosen to match
/// Discord's gateway where the meaning is the same. A frame with any other number still decodes (its
/// [`Frame::op`](crate::Frame::op) keeps the raw value) and the server ignores it, as Mesa 1.5 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpCode {
    /// `0`, both directions: an application event; `t` names its type and `d` carries its payload.
    Dispatch,
    /// `1`, server → client: liveness probe, answered with [`OpCode::HeartbeatAck`].
    /// A client may also send it (extension): the server then answers with op 11.
    Heartbeat,
    /// `2`, client → server: credentials in `d` (plus `shouldSync`).
    Authenticate,
    /// `5`, server-internal (Mesa 1.5 Redis channel): `t: "DISCONNECT_CLIENT"`. Never sent to clients.
    Internal,
    /// `6`, client → server (extension): resume a session. `d` holds the credentials (as op 2's `d`) plus
    /// `session_id` and `seq`, the last `s` the client processed.
    Resume,
    /// `7`, server → client (extension): the server is going away; reconnect (to any node) now.
    Reconnect,
    /// `9`, server → client (extension): a session cannot go on, the connection stays open. Either
    /// authentication was refused (only when `disconnect_on_fail` is off), or a resume (op 6) was refused
    /// and the client must start a fresh session with op 2. `d = {"code": "…", "reason": "…"}`.
    InvalidSession,
    /// `10`, server → client: first frame after the upgrade, `d` is a [`Hello`](crate::Hello).
    Hello,
    /// `11`, client → server: the answer to op 1 (and server → client, as the answer to a client's op 1).
    HeartbeatAck,
    /// `22`, server → client: authentication succeeded; `d` is the user object or `{}`.
    AuthenticationAck,
}

impl OpCode {
    /// The number on the wire.
    pub const fn code(self) -> u64 {
        match self {
            OpCode::Dispatch => 0,
            OpCode::Heartbeat => 1,
            OpCode::Authenticate => 2,
            OpCode::Internal => 5,
            OpCode::Resume => 6,
            OpCode::Reconnect => 7,
            OpCode::InvalidSession => 9,
            OpCode::Hello => 10,
            OpCode::HeartbeatAck => 11,
            OpCode::AuthenticationAck => 22,
        }
    }

    /// The opcode for a wire number, or `None` for a number this protocol does not define.
    pub const fn from_code(code: u64) -> Option<OpCode> {
        Some(match code {
            0 => OpCode::Dispatch,
            1 => OpCode::Heartbeat,
            2 => OpCode::Authenticate,
            5 => OpCode::Internal,
            6 => OpCode::Resume,
            7 => OpCode::Reconnect,
            9 => OpCode::InvalidSession,
            10 => OpCode::Hello,
            11 => OpCode::HeartbeatAck,
            22 => OpCode::AuthenticationAck,
            _ => return None,
        })
    }

    /// Whether Mesa 1.5 defines this opcode (as opposed to an extension of this project).
    pub const fn is_mesa_1_5(self) -> bool {
        !matches!(
            self,
            OpCode::Resume | OpCode::Reconnect | OpCode::InvalidSession
        )
    }
}

impl From<OpCode> for u64 {
    fn from(op: OpCode) -> u64 {
        op.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=255u64 {
            if let Some(op) = OpCode::from_code(code) {
                assert_eq!(op.code(), code);
            }
        }
        assert_eq!(OpCode::from_code(3), None);
        assert_eq!(OpCode::AuthenticationAck.code(), 22);
    }
}
