//! The frame `{op, d, t, s}` and its JSON encoding.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{OpCode, Payload};

/// Deepest nesting of arrays and objects a frame may have (the JSON decoder's own limit for a parsed tree).
pub const MAX_DEPTH: usize = 128;

/// One protocol frame: the JSON object carried by every WebSocket text message.
///
/// `op` keeps the raw number so that a frame with an opcode this crate does not know still decodes;
/// [`Frame::opcode`] gives the typed view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The opcode number (see [`OpCode`]).
    pub op: u64,
    /// The payload, kept raw from the wire until read (see [`Payload`]). Missing on the wire decodes as
    /// `null`; it is always written.
    #[serde(default)]
    pub d: Payload,
    /// The event type of a dispatch (op 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    /// The sequence number (Mesa 1.5 numbers redelivered messages 1, 2, 3, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<u64>,
    /// Message options a client may attach to a dispatch (Mesa 1.5 `o`); never sent to clients by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<Value>,
}

/// Why a text message did not decode into a [`Frame`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON at all, truncated JSON, or JSON nested deeper than the decoder allows.
    #[error("malformed JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Valid JSON that is not a frame: `null`, an array, an object without an integer `op`, and so on.
    #[error("not a frame: {0}")]
    NotAFrame(#[source] serde_json::Error),
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl Frame {
    /// A frame with this opcode and payload, no type and no sequence number.
    pub fn new(op: OpCode, d: impl Into<Payload>) -> Frame {
        Frame {
            op: op.code(),
            d: d.into(),
            t: None,
            s: None,
            o: None,
        }
    }

    /// A dispatch (op 0) of event type `t` with payload `d`.
    pub fn dispatch(t: impl Into<String>, d: impl Into<Payload>) -> Frame {
        Frame {
            t: Some(t.into()),
            ..Frame::new(OpCode::Dispatch, d)
        }
    }

    /// The typed opcode, or `None` when the number is not one this protocol defines.
    pub fn opcode(&self) -> Option<OpCode> {
        OpCode::from_code(self.op)
    }

    /// Decodes one text message.
    ///
    /// The input is untrusted: any text either decodes or yields a [`DecodeError`]; nothing panics.
    /// Nesting deeper than [`MAX_DEPTH`] levels is refused ([`DecodeError::TooDeep`]). `d` is kept raw.
    pub fn decode(text: &str) -> Result<Frame, DecodeError> {
        // `d` is captured raw, which the decoder does not depth-check: one pass over the bytes does.
        if nesting_depth_exceeds(text.as_bytes(), MAX_DEPTH) {
            return Err(DecodeError::TooDeep);
        }
        // serde's derived struct decoding also accepts a JSON array (`[op, d]`); a frame is an object only.
        if text.trim_start().starts_with('[') {
            let not_object =
                serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &"a frame object");
            return Err(DecodeError::NotAFrame(not_object));
        }
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DecodeError::NotAFrame(e),
            _ => DecodeError::Malformed(e),
        })
    }

    /// Encodes the frame as compact JSON, fields in the order `op, d, t, s, o`.
    pub fn encode(&self) -> String {
        // A `Value` and plain fields always serialise; the fallback is unreachable in practice.
        serde_json::to_string(self).unwrap_or_else(|_| String::from(r#"{"op":0,"d":null}"#))
    }
}

/// An encoded frame with `"s": seq` added, without decoding it: what a resumable session is sent for a
/// durable dispatch whose encoding every other recipient shares.
///
/// `encoded` must be a frame [`Frame::encode`] wrote with no `s` (a JSON object ending in `}`); anything
/// else is returned unchanged.
pub fn with_sequence(encoded: &str, seq: u64) -> String {
    let Some(body) = encoded.strip_suffix('}') else {
        return encoded.to_string();
    };
    let mut out = String::with_capacity(encoded.len() + 24);
    out.push_str(body);
    out.push_str(",\"s\":");
    out.push_str(&seq.to_string());
    out.push('}');
    out
}

/// Whether arrays and objects in `json` nest deeper than `max`, ignoring brackets inside strings.
fn nesting_depth_exceeds(json: &[u8], max: usize) -> bool {
    // Fast path for nearly every frame: with no more than `max` opening brackets in all (strings included),
    // nothing can nest deeper. This count vectorises; the exact scan below is byte by byte.
    if json.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_is_spliced_into_an_encoded_frame() {
        let frame = Frame::dispatch("X", serde_json::json!({"a": [1, "}"]}));
        let spliced = with_sequence(&frame.encode(), 42);
        let decoded = Frame::decode(&spliced).unwrap();
        assert_eq!(decoded.s, Some(42));
        assert_eq!(decoded.t.as_deref(), Some("X"));
        assert_eq!(decoded.d.value(), &serde_json::json!({"a": [1, "}"]}));
    }
    use serde_json::json;

    #[test]
    fn encodes_mesa_field_order_and_omits_empty_fields() {
        let f = Frame::dispatch("ECHO", json!({"a": 1}));
        assert_eq!(f.encode(), r#"{"op":0,"d":{"a":1},"t":"ECHO"}"#);
        let f = Frame::new(OpCode::Heartbeat, json!({}));
        assert_eq!(f.encode(), r#"{"op":1,"d":{}}"#);
    }

    #[test]
    fn decodes_frames_and_missing_d() {
        let f = Frame::decode(r#"{"op":11}"#).unwrap();
        assert_eq!(f.opcode(), Some(OpCode::HeartbeatAck));
        assert_eq!(f.d, Value::Null);
        let raw = r#"{"op":0,"d":{"b":2,  "a":"[x"},"t":"ECHO"}"#;
        let f = Frame::decode(raw).unwrap();
        assert_eq!(f.d.raw().map(|r| r.get()), Some(r#"{"b":2,  "a":"[x"}"#));
        assert_eq!(f.encode(), r#"{"op":0,"d":{"b":2,  "a":"[x"},"t":"ECHO"}"#);
        let f =
            Frame::decode(r#"{"op":0,"d":{"x":1},"t":"A","o":{"sync":false},"extra":1}"#).unwrap();
        assert_eq!(f.t.as_deref(), Some("A"));
        assert_eq!(f.o, Some(json!({"sync": false})));
        assert_eq!(Frame::decode(r#"{"op":99}"#).unwrap().opcode(), None);
    }

    #[test]
    fn bad_input_is_classified() {
        for text in ["", "{", "{\"op\":", "nope", "{\"op\":1}}"] {
            assert!(
                matches!(Frame::decode(text), Err(DecodeError::Malformed(_))),
                "{text}"
            );
        }
        for text in [
            "null",
            "[]",
            "[1,2]",
            "1",
            "\"op\"",
            "{}",
            r#"{"op":-1}"#,
            r#"{"op":1.5}"#,
            r#"{"op":"1"}"#,
            r#"{"op":0,"t":5}"#,
        ] {
            assert!(
                matches!(Frame::decode(text), Err(DecodeError::NotAFrame(_))),
                "{text}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Frame::decode(&deep).is_err());
        let deep_d = format!(
            r#"{{"op":0,"d":{}1{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(matches!(Frame::decode(&deep_d), Err(DecodeError::TooDeep)));
        let at_limit = format!(r#"{{"op":0,"d":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(Frame::decode(&at_limit).is_ok());
        let in_string = format!(r#"{{"op":0,"d":"{}"}}"#, "[".repeat(500));
        assert!(Frame::decode(&in_string).is_ok());
    }
}
