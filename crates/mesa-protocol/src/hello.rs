//! The Hello frame (op 10): the client configuration sent first on every connection.

use serde::{Deserialize, Serialize};

/// Rule names carried in [`Hello::rules`].
pub mod rules {
    /// The client must send op 0 `CLIENT_VERSION` `{"v": "…"}`; a different version is closed with 1002.
    pub const ENFORCE_EQUAL_VERSIONS: &str = "enforce_equal_versions";
    /// Mesa 1.5 `options.storeMessages`: both sides keep every message in memory (a 1.5 client then keeps
    /// all it receives, without bound). Not sync: redelivery to offline users needs no rule.
    pub const STORE_MESSAGES: &str = "store_messages";
    /// Op 22 carries the user object (otherwise `{}`).
    pub const SENDS_USER_OBJECT: &str = "sends_user_object";
}

/// The payload (`d`) of the Hello frame, with Mesa 1.5's field names.
///
/// `rules` is always present (Mesa 1.5 clients call `rules.indexOf` without a guard); absent timings are
/// omitted, as Mesa 1.5 does when the feature is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hello {
    /// Milliseconds between the server's heartbeats (op 1); omitted when heartbeats are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_heartbeat_interval: Option<u64>,
    /// Milliseconds a client should wait before reconnecting; omitted when reconnection is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_reconnect_interval: Option<u64>,
    /// Milliseconds a client has to authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_authentication_timeout: Option<u64>,
    /// The rules in force (see [`rules`]); always written, possibly empty.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Present when the server offers resumable sessions (op 2 with `resumable: true`, op 6): what it
    /// keeps. Mesa 1.5 clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_resume: Option<ResumeOffer>,
}

/// What a server that offers resumable sessions keeps ([`Hello::c_resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResumeOffer {
    /// Milliseconds a session can be resumed after its connection ended.
    pub session_ttl: u64,
    /// The most messages kept per user for resumes.
    pub max_messages: u64,
    /// The most bytes of messages kept per user.
    pub max_bytes: u64,
    /// Milliseconds a message is kept at most.
    pub max_age: u64,
}

impl Hello {
    /// Whether the named rule is on.
    pub fn has_rule(&self, rule: &str) -> bool {
        self.rules.iter().any(|r| r == rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_always_serialised() {
        let hello = Hello::default();
        assert_eq!(serde_json::to_string(&hello).unwrap(), r#"{"rules":[]}"#);
        let hello = Hello {
            c_heartbeat_interval: Some(1000),
            c_reconnect_interval: Some(500),
            c_authentication_timeout: Some(2000),
            rules: vec![rules::SENDS_USER_OBJECT.into()],
            c_resume: None,
        };
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"c_heartbeat_interval":1000,"c_reconnect_interval":500,"c_authentication_timeout":2000,"rules":["sends_user_object"]}"#
        );
    }
}
