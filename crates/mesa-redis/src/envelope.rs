//! The bytes published on a channel: a compact binary header, then the frame's bytes unchanged.
//!
//! ```text
//! 0     'm' (0x6d)                          magic
//! 1     1                                   version
//! 2     kind: 1 send, 2 disconnect, 3 probe
//! 3     target: 0 everyone, 1 the channel's user, 2 one connection
//! 4     flags: bit 0 = origin node present, bit 1 = written by the stream script
//! [8]   origin node id (u64, big endian)    if flag bit 0
//! [8]   sequence in the user's stream (u64, big endian; 0: not kept)   if flag bit 1
//! [16]  connection: node u64, seq u64       if target 2
//! 4     exclusions: count u32, then each: length u32 + UTF-8 user id
//! send:        the frame's bytes, to the end (what `LocalNode::deliver` gets, not copied)
//! disconnect:  code u16, reason length u32 + UTF-8 reason
//! probe:       nonce u64
//! ```
//!
//! Only what the receiver needs: a user's channel names the user, so a send to users carries no id list;
//! exclusions travel with sends to everyone and to one connection. Decoding checks every length.
//!
//! A durable send to a user whose stream Redis keeps is published by the stream script itself
//! (`crate::streams`), right after it appended the frame: the script writes the header this module makes
//! ([`encode_stream_head`]), then the sequence, the empty exclusion list and the frame. Such envelopes are
//! delivered by every node holding the user, the origin too (it did not serve them itself), so that each
//! node sees one user's sequence in the order the script numbered it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mesa_engine::{Action, ConnectionId, EncodedFrame, NodeId};

const MAGIC: u8 = b'm';
const VERSION: u8 = 1;

const KIND_SEND: u8 = 1;
const KIND_DISCONNECT: u8 = 2;
const KIND_PROBE: u8 = 3;

const TARGET_ALL: u8 = 0;
const TARGET_CHANNEL_USER: u8 = 1;
const TARGET_CONNECTION: u8 = 2;

const FLAG_ORIGIN: u8 = 1;
const FLAG_STREAM: u8 = 2;

/// Who an envelope is for, as far as the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireTarget {
    /// Everyone on the receiving node, minus `excluding`.
    All {
        /// User ids that must not receive it.
        excluding: Vec<String>,
    },
    /// The user whose channel it came on.
    ChannelUser,
    /// One connection, unless its user is excluded.
    Connection {
        /// The connection.
        id: ConnectionId,
        /// User ids that must not receive it.
        excluding: Vec<String>,
    },
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Envelope {
    /// A send or disconnect for local sessions.
    Publication {
        /// The node it was made on (`None`: a Dispatcher).
        origin: Option<NodeId>,
        /// Who it is for.
        target: WireTarget,
        /// What to do (a send's frame is a slice of the received payload).
        action: Action,
        /// Published by the stream script (see the module docs): the origin did not serve it itself.
        via_stream: bool,
        /// Its position in the user's stream, if it was kept there.
        sequence: Option<u64>,
    },
    /// A node's check that its own subscription still receives.
    Probe {
        /// The node that sent it.
        origin: NodeId,
        /// Which probe.
        nonce: u64,
    },
}

/// Why a payload is not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EnvelopeError {
    /// Too short for what its header announces.
    #[error("truncated envelope")]
    Truncated,
    /// Not this format or an unknown version.
    #[error("not a Mesa envelope (magic {0:#04x}, version {1})")]
    Foreign(u8, u8),
    /// An unknown kind or target byte.
    #[error("unknown {what} {value}")]
    Unknown {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u8,
    },
    /// A user id, reason or frame that is not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// Encodes a send or disconnect. The frame's bytes are copied once, after the header.
pub(crate) fn encode(origin: Option<NodeId>, target: &WireTarget, action: &Action) -> Bytes {
    let frame_len = match action {
        Action::Send(frame) => frame.len(),
        Action::Disconnect { reason, .. } => reason.len() + 6,
    };
    let mut out = BytesMut::with_capacity(32 + frame_len);
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(match action {
        Action::Send(_) => KIND_SEND,
        Action::Disconnect { .. } => KIND_DISCONNECT,
    });
    let (target_byte, connection, excluding): (u8, Option<ConnectionId>, &[String]) = match target {
        WireTarget::All { excluding } => (TARGET_ALL, None, excluding),
        WireTarget::ChannelUser => (TARGET_CHANNEL_USER, None, &[]),
        WireTarget::Connection { id, excluding } => (TARGET_CONNECTION, Some(*id), excluding),
    };
    out.put_u8(target_byte);
    out.put_u8(if origin.is_some() { FLAG_ORIGIN } else { 0 });
    if let Some(origin) = origin {
        out.put_u64(origin.0);
    }
    if let Some(id) = connection {
        out.put_u64(id.node().0);
        out.put_u64(id.seq());
    }
    out.put_u32(excluding.len() as u32);
    for user in excluding {
        put_str(&mut out, user);
    }
    match action {
        Action::Send(frame) => out.put_slice(frame.as_bytes()),
        Action::Disconnect { code, reason } => {
            out.put_u16(*code);
            put_str(&mut out, reason);
        }
    }
    out.freeze()
}

/// The header of a send the stream script publishes, up to where the script appends the sequence, the
/// empty exclusion list (`u32` 0) and the frame.
pub(crate) fn encode_stream_head(origin: Option<NodeId>) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    let flags = FLAG_STREAM | if origin.is_some() { FLAG_ORIGIN } else { 0 };
    out.put_slice(&[MAGIC, VERSION, KIND_SEND, TARGET_CHANNEL_USER, flags]);
    if let Some(origin) = origin {
        out.put_u64(origin.0);
    }
    out.freeze()
}

/// Encodes a probe from `origin`.
pub(crate) fn encode_probe(origin: NodeId, nonce: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    out.put_slice(&[MAGIC, VERSION, KIND_PROBE, TARGET_ALL, FLAG_ORIGIN]);
    out.put_u64(origin.0);
    out.put_u32(0);
    out.put_u64(nonce);
    out.freeze()
}

fn need(buf: &Bytes, n: usize) -> Result<(), EnvelopeError> {
    if buf.remaining() < n {
        Err(EnvelopeError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u64(buf: &mut Bytes) -> Result<u64, EnvelopeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn get_u32(buf: &mut Bytes) -> Result<u32, EnvelopeError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

fn get_str(buf: &mut Bytes) -> Result<String, EnvelopeError> {
    let len = get_u32(buf)? as usize;
    need(buf, len)?;
    let bytes = buf.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| EnvelopeError::NotUtf8)
}

/// Decodes a received payload; a send's frame is a slice of `payload` (no copy).
pub(crate) fn decode(mut payload: Bytes) -> Result<Envelope, EnvelopeError> {
    need(&payload, 5)?;
    let (magic, version) = (payload.get_u8(), payload.get_u8());
    if magic != MAGIC || version != VERSION {
        return Err(EnvelopeError::Foreign(magic, version));
    }
    let (kind, target_byte, flags) = (payload.get_u8(), payload.get_u8(), payload.get_u8());
    let origin = if flags & FLAG_ORIGIN != 0 {
        Some(NodeId(get_u64(&mut payload)?))
    } else {
        None
    };
    let via_stream = flags & FLAG_STREAM != 0;
    let sequence = if via_stream {
        Some(get_u64(&mut payload)?).filter(|seq| *seq > 0)
    } else {
        None
    };
    let connection = if target_byte == TARGET_CONNECTION {
        let node = get_u64(&mut payload)?;
        let seq = get_u64(&mut payload)?;
        Some(ConnectionId::new(NodeId(node), seq))
    } else {
        None
    };
    let count = get_u32(&mut payload)? as usize;
    // Each exclusion takes at least 4 bytes: a count larger than that cannot be honest.
    need(&payload, count.saturating_mul(4))?;
    let mut excluding = Vec::with_capacity(count);
    for _ in 0..count {
        excluding.push(get_str(&mut payload)?);
    }
    let target = match (target_byte, connection) {
        (TARGET_ALL, _) => WireTarget::All { excluding },
        (TARGET_CHANNEL_USER, _) => WireTarget::ChannelUser,
        (TARGET_CONNECTION, Some(id)) => WireTarget::Connection { id, excluding },
        (value, _) => {
            return Err(EnvelopeError::Unknown {
                what: "target",
                value,
            })
        }
    };
    let action = match kind {
        KIND_SEND => {
            Action::Send(EncodedFrame::from_bytes(payload).map_err(|_| EnvelopeError::NotUtf8)?)
        }
        KIND_DISCONNECT => {
            need(&payload, 2)?;
            let code = payload.get_u16();
            let reason = get_str(&mut payload)?;
            Action::Disconnect { code, reason }
        }
        KIND_PROBE => {
            let nonce = get_u64(&mut payload)?;
            let origin = origin.ok_or(EnvelopeError::Truncated)?;
            return Ok(Envelope::Probe { origin, nonce });
        }
        value => {
            return Err(EnvelopeError::Unknown {
                what: "kind",
                value,
            })
        }
    };
    Ok(Envelope::Publication {
        origin,
        target,
        action,
        via_stream,
        sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(origin: Option<NodeId>, target: WireTarget, action: Action) {
        let bytes = encode(origin, &target, &action);
        assert_eq!(
            decode(bytes),
            Ok(Envelope::Publication {
                origin,
                target,
                action,
                via_stream: false,
                sequence: None,
            })
        );
    }

    /// What the stream script writes: the head, the sequence, no exclusions, the frame.
    fn stream_envelope(origin: Option<NodeId>, seq: u64, frame: &str) -> Bytes {
        let mut out = BytesMut::from(&encode_stream_head(origin)[..]);
        out.put_u64(seq);
        out.put_u32(0);
        out.put_slice(frame.as_bytes());
        out.freeze()
    }

    #[test]
    fn stream_envelopes_carry_their_sequence() {
        let frame = r#"{"op":0,"d":1}"#;
        for (origin, seq, sequence) in [(Some(NodeId(3)), 7, Some(7)), (None, 0, None)] {
            assert_eq!(
                decode(stream_envelope(origin, seq, frame)),
                Ok(Envelope::Publication {
                    origin,
                    target: WireTarget::ChannelUser,
                    action: Action::Send(EncodedFrame::from(frame)),
                    via_stream: true,
                    sequence,
                })
            );
        }
        let good = stream_envelope(Some(NodeId(1)), 9, "{}");
        for len in 0..good.len() - 2 {
            assert!(decode(good.slice(..len)).is_err(), "length {len}");
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let frame = || Action::Send(EncodedFrame::from(r#"{"op":0,"d":{}}"#));
        round_trip(Some(NodeId(7)), WireTarget::ChannelUser, frame());
        round_trip(
            None,
            WireTarget::All {
                excluding: vec!["eve".into(), "é".into()],
            },
            frame(),
        );
        round_trip(
            Some(NodeId(u64::MAX)),
            WireTarget::Connection {
                id: ConnectionId::new(NodeId(3), 42),
                excluding: vec![],
            },
            Action::Disconnect {
                code: 4000,
                reason: "bye".into(),
            },
        );
        assert_eq!(
            decode(encode_probe(NodeId(9), 5)),
            Ok(Envelope::Probe {
                origin: NodeId(9),
                nonce: 5
            })
        );
    }

    #[test]
    fn the_frame_is_a_slice_of_the_payload() {
        let action = Action::Send(EncodedFrame::from("hello"));
        let payload = encode(None, &WireTarget::ChannelUser, &action);
        let start = payload.as_ptr() as usize;
        let Ok(Envelope::Publication {
            action: Action::Send(frame),
            ..
        }) = decode(payload.clone())
        else {
            panic!("a send");
        };
        assert_eq!(frame.as_str(), "hello");
        assert_eq!(
            frame.as_bytes().as_ptr() as usize,
            start + payload.len() - 5
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let good = encode(
            Some(NodeId(1)),
            &WireTarget::All {
                excluding: vec!["a".into()],
            },
            &Action::Disconnect {
                code: 1000,
                reason: "r".into(),
            },
        );
        // Every truncation of a valid envelope is refused.
        for len in 0..good.len() {
            assert!(decode(good.slice(..len)).is_err(), "length {len}");
        }
        let cases: Vec<Vec<u8>> = vec![
            b"{\"message\":{}}".to_vec(),
            vec![MAGIC, 2, 1, 0, 0, 0, 0, 0, 0],
            vec![MAGIC, VERSION, 9, 0, 0, 0, 0, 0, 0],
            vec![MAGIC, VERSION, 1, 9, 0, 0, 0, 0, 0],
            vec![MAGIC, VERSION, 1, 0, 0, 0xff, 0xff, 0xff, 0xff],
            vec![MAGIC, VERSION, 1, 1, 0, 0, 0, 0, 0, 0xff, 0xfe],
            vec![MAGIC, VERSION, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for case in cases {
            assert!(decode(Bytes::from(case.clone())).is_err(), "{case:?}");
        }
    }
}
