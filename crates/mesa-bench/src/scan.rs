//! A fast, allocation-free look into server frames.
//!
//! At a million deliveries a second the generator cannot afford a full JSON parse of every frame. Every
//! Mesa server writes `op` first (`{"op":0,"d":…,"t":"…"}`), and the payloads this tool sends carry their
//! numbers under short keys of its own choosing, so finding a key's first occurrence is enough. Anything
//! that does not scan is counted as unreadable, never trusted.

/// Key of the sequence number inside payloads this tool sends.
pub const SEQ_KEY: &str = "i";
/// Key of the send time (microseconds since the run's start) inside payloads this tool sends.
pub const TS_KEY: &str = "j";
/// Key of the padding that brings a payload to its requested size.
pub const PAD_KEY: &str = "p";

/// The position just after `"key":` (and any spaces), searching for the quoted key `quoted` (`"\"op\""`).
fn value_start(text: &str, quoted: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = 0;
    loop {
        let found = at + text.get(at..)?.find(quoted)?;
        let mut i = found + quoted.len();
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes.get(i) == Some(&b':') {
            i += 1;
            while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            return Some(i);
        }
        at = found + 1;
    }
}

fn digits(text: &str, start: usize) -> Option<u64> {
    let rest = text.get(start..)?;
    let end = rest
        .as_bytes()
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// The `op` of a frame.
pub fn op(text: &str) -> Option<u64> {
    digits(text, value_start(text, "\"op\"")?)
}

/// The unsigned integer under `key` (first occurrence).
pub fn u64_field(text: &str, key: &str) -> Option<u64> {
    match key {
        SEQ_KEY => digits(text, value_start(text, "\"i\"")?),
        TS_KEY => digits(text, value_start(text, "\"j\"")?),
        _ => digits(text, value_start(text, &format!("\"{key}\""))?),
    }
}

/// The string under `"t"` (the event type of a dispatch), when it has no escapes.
pub fn event_type(text: &str) -> Option<&str> {
    let start = value_start(text, "\"t\"")?;
    let rest = text.get(start..)?.strip_prefix('"')?;
    let end = rest.find('"')?;
    let value = &rest[..end];
    (!value.contains('\\')).then_some(value)
}

/// Whether the quoted key `key` occurs anywhere in `text` (followed by `:`), e.g. Hello's `c_resume`.
pub fn has_key(text: &str, key: &str) -> bool {
    value_start(text, &format!("\"{key}\"")).is_some()
}

/// The top-level `s` of a server frame (a resumable session's stream position), or `None` when it has none.
///
/// Mesa servers write `s` last (`{"op":0,"d":…,"t":"…","s":7}`), which is read without a parse; a frame
/// that has `"s"` elsewhere is parsed in full, so a payload's own `s` is never taken for it.
pub fn stream_seq(text: &str) -> Option<u64> {
    let body = text.trim_end().strip_suffix('}')?.trim_end();
    let start = body
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let number = &body[start..];
    let key_before = body[..start]
        .trim_end()
        .strip_suffix(':')
        .is_some_and(|rest| rest.trim_end().ends_with("\"s\""));
    // The last `}` closes the top-level object, so a member right before it is top-level; a string
    // cannot end there (it would end in `"`).
    if !number.is_empty() && key_before {
        return number.parse().ok();
    }
    if !text.contains("\"s\"") {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("s")?
        .as_u64()
}

/// What a frame from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// Op 0 with this event type.
    Dispatch(&'a str),
    /// Op 1: answer with op 11.
    Heartbeat,
    /// Op 10.
    Hello,
    /// Op 22.
    AuthenticationAck,
    /// Any other opcode.
    Other(u64),
    /// Not a frame this scanner can read.
    Unreadable,
}

/// Classifies a text frame.
pub fn classify(text: &str) -> Kind<'_> {
    match op(text) {
        Some(0) => event_type(text).map_or(Kind::Unreadable, Kind::Dispatch),
        Some(1) => Kind::Heartbeat,
        Some(10) => Kind::Hello,
        Some(22) => Kind::AuthenticationAck,
        Some(other) => Kind::Other(other),
        None => Kind::Unreadable,
    }
}

/// A probe payload `{"i":seq,"j":ts,"p":"xxx…"}` padded so that its JSON is `size` bytes long (or as short as
/// it can be when `size` is smaller than the numbers need).
pub fn probe_payload(seq: u64, ts_us: u64, size: usize) -> String {
    let mut out = format!(r#"{{"{SEQ_KEY}":{seq},"{TS_KEY}":{ts_us},"{PAD_KEY}":""#);
    // The closing `"}` adds 2 bytes.
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The sequence number and send time of a probe payload inside a frame.
pub fn probe(text: &str) -> Option<(u64, u64)> {
    Some((u64_field(text, SEQ_KEY)?, u64_field(text, TS_KEY)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_frames() {
        assert_eq!(classify(r#"{"op":1,"d":{}}"#), Kind::Heartbeat);
        assert_eq!(
            classify(r#"{"op":1,"d":{"tries":1,"max":2}}"#),
            Kind::Heartbeat
        );
        assert_eq!(
            classify(r#"{"op":10,"d":{"c_heartbeat_interval":1000,"rules":[]}}"#),
            Kind::Hello
        );
        assert_eq!(
            classify(r#"{"op":22,"d":{"id":"7","name":"User 7"}}"#),
            Kind::AuthenticationAck
        );
        assert_eq!(
            classify(r#"{"op":0,"d":{"i":1,"j":2,"p":"x"},"t":"BROADCAST"}"#),
            Kind::Dispatch("BROADCAST")
        );
        assert_eq!(
            classify(r#"{ "op" : 0 , "t" : "ECHO", "d":null}"#),
            Kind::Dispatch("ECHO")
        );
        assert_eq!(classify(r#"{"op":7,"d":{}}"#), Kind::Other(7));
        for bad in [
            "",
            "null",
            r#"{"op":"x"}"#,
            r#"{"op":0,"d":1}"#,
            r#"{"op":0,"t":"a\"b"}"#,
            "{\"op\":",
        ] {
            assert_eq!(classify(bad), Kind::Unreadable, "{bad}");
        }
    }

    #[test]
    fn stream_positions_are_top_level_only() {
        assert_eq!(
            stream_seq(r#"{"op":0,"d":{"i":1},"t":"DIRECT","s":42}"#),
            Some(42)
        );
        assert_eq!(stream_seq(r#"{"op":0,"d":{"i":1},"t":"DIRECT"}"#), None);
        // A payload's own `s` is not the frame's.
        assert_eq!(stream_seq(r#"{"op":0,"t":"X","d":{"s":5}}"#), None);
        assert_eq!(stream_seq(r#"{"op":0,"t":"X","d":{"a":1,"s":5}}"#), None);
        assert_eq!(stream_seq(r#"{"op":0,"t":"X\"s\":5"}"#), None);
        // Elsewhere than last, or with spaces: still found.
        assert_eq!(stream_seq(r#"{"op":0,"s":7,"d":{"s":5},"t":"X"}"#), Some(7));
        assert_eq!(stream_seq(r#"{"op":0,"d":null, "s" : 8 }"#), Some(8));
        assert_eq!(stream_seq("{\"op\":0,\"s\":-1}"), None);
        assert_eq!(stream_seq("nonsense"), None);
        assert!(has_key(
            r#"{"op":10,"d":{"rules":[],"c_resume":{"session_ttl":1}}}"#,
            "c_resume"
        ));
        assert!(!has_key(
            r#"{"op":10,"d":{"rules":["c_resume"]}}"#,
            "c_resume"
        ));
    }

    #[test]
    fn keys_are_matched_whole() {
        // "ts" and "top" must not be taken for "t" and "op".
        let text = r#"{"top":5,"op":0,"d":{"ts":1},"t":"X"}"#;
        assert_eq!(op(text), Some(0));
        assert_eq!(event_type(text), Some("X"));
        assert_eq!(u64_field(r#"{"ii":1,"i":2}"#, "i"), Some(2));
    }

    #[test]
    fn probe_payloads_round_trip_at_their_size() {
        for size in [0, 16, 64, 256, 1024] {
            let p = probe_payload(123, 456_789, size);
            assert!(p.len() == size || size < 30, "{size}: {}", p.len());
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["i"], 123);
            let frame = format!(r#"{{"op":0,"d":{p},"t":"BROADCAST"}}"#);
            assert_eq!(probe(&frame), Some((123, 456_789)));
        }
        // serde_json (without preserve_order) sorts keys: the probe still reads.
        let sorted: serde_json::Value = serde_json::from_str(&probe_payload(9, 8, 64)).unwrap();
        assert_eq!(
            probe(&serde_json::json!({"op":0,"d":sorted,"t":"ECHO"}).to_string()),
            Some((9, 8))
        );
    }
}
