//! [`Payload`], a frame's `d`: kept as the JSON text it arrived as until something reads it.
//!
//! A gateway mostly forwards payloads (echo, fan-out, relays to a backend) without looking inside them. Parsing
//! `d` into a [`Value`] tree and encoding it again is most of the CPU such a message costs, so a decoded
//! frame keeps `d` raw: encoding writes the same text back, and the tree is built only the first time
//! something reads it (through `Deref`, [`Payload::value`] or [`Payload::into_value`]).

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A frame's payload: raw JSON text, a parsed [`Value`], or both. Reads like a `&Value` (`payload["id"]`,
/// `payload.get("token")`, `payload.as_str()`), compares with a `Value`, and encodes without re-parsing.
#[derive(Clone, Default)]
pub struct Payload {
    raw: Option<Box<RawValue>>,
    value: OnceLock<Value>,
}

impl Payload {
    /// A payload from JSON text that is known to be one valid JSON value (as a decoded frame's `d` is).
    pub fn from_raw(raw: Box<RawValue>) -> Payload {
        Payload {
            raw: Some(raw),
            value: OnceLock::new(),
        }
    }

    /// The raw JSON text, when the payload was decoded (not built from a `Value`).
    pub fn raw(&self) -> Option<&RawValue> {
        self.raw.as_deref()
    }

    /// The payload as a `Value`, parsed on first use.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| match &self.raw {
            // A decoded frame's `d` is valid JSON within the nesting limit, so this parses.
            Some(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            None => Value::Null,
        })
    }

    /// Deserializes the payload into `T`, straight from the raw text when there is one (no `Value` tree).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match (&self.raw, self.value.get()) {
            (_, Some(value)) => T::deserialize(value),
            (Some(raw), None) => serde_json::from_str(raw.get()),
            (None, None) => T::deserialize(&Value::Null),
        }
    }

    /// The payload as an owned `Value`.
    pub fn into_value(mut self) -> Value {
        match self.value.take() {
            Some(value) => value,
            None => self.value().clone(),
        }
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        Payload {
            raw: None,
            value: OnceLock::from(value),
        }
    }
}

impl From<Payload> for Value {
    fn from(payload: Payload) -> Value {
        payload.into_value()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        match (&self.raw, &other.raw) {
            (Some(a), Some(b)) if a.get() == b.get() => true,
            _ => self.value() == other.value(),
        }
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        self == other.value()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.raw, self.value.get()) {
            (_, Some(value)) => fmt::Debug::fmt(value, f),
            (Some(raw), None) => write!(f, "{}", raw.get()),
            (None, None) => f.write_str("Null"),
        }
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.raw {
            Some(raw) => f.write_str(raw.get()),
            None => fmt::Display::fmt(self.value(), f),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.raw {
            Some(raw) => raw.serialize(serializer),
            None => self.value().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Payload::from_raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_raw_payload_encodes_as_it_arrived_and_reads_as_a_value() {
        let raw = RawValue::from_string(r#"{"b":1, "a":[true]}"#.into()).unwrap();
        let payload = Payload::from_raw(raw);
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"b":1, "a":[true]}"#
        );
        assert_eq!(payload["a"][0], true);
        assert_eq!(payload, json!({"a": [true], "b": 1}));
        assert_eq!(payload.into_value(), json!({"a": [true], "b": 1}));
        let built = Payload::from(json!({"x": "y"}));
        assert_eq!(serde_json::to_string(&built).unwrap(), r#"{"x":"y"}"#);
        assert!(built.raw().is_none());
    }
}
