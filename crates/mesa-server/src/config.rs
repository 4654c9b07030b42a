//! Server configuration: one serde struct (for config files and env vars) with Mesa 1.5's defaults.
//!
//! Every duration is in milliseconds so that a TOML file or an environment variable maps onto it directly.
//! [`MesaBuilder`](crate::MesaBuilder) sets the same fields from code.

use std::time::Duration;

use mesa_protocol::{AttemptLimit, ConnectionRules, HeartbeatRules, RateLimit};
use serde::{Deserialize, Serialize};

/// The whole server configuration. `Config::default()` is Mesa 1.5's defaults plus this project's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the standalone server binds. Default `0.0.0.0`.
    pub host: String,
    /// Port the standalone server binds. Default `4000` (Mesa 1.5).
    pub port: u16,
    /// Path of the WebSocket endpoint. Default `/`.
    pub path: String,
    /// Heartbeats (op 1 / op 11) and dead-peer detection.
    pub heartbeat: HeartbeatConfig,
    /// The reconnect interval advertised to clients.
    pub reconnect: ReconnectConfig,
    /// Authentication rules.
    pub authentication: AuthenticationConfig,
    /// Client rules (Mesa 1.5 `client` option).
    pub client: ClientConfig,
    /// Limits on what one peer may cost the server.
    pub limits: Limits,
    /// Allowed origins of the upgrade request's `Origin` header, compared as origins (scheme, host and port;
    /// the host case-insensitively; a missing port is the scheme's default). Empty (the default) allows any
    /// origin; otherwise a request whose `Origin` is not listed gets HTTP 403 (logged with its value).
    pub allowed_origins: Vec<String>,
    /// Whether an upgrade request without an `Origin` header is refused (HTTP 403) when `allowed_origins`
    /// is set. Default `false`: browsers always send `Origin`, so a request without one is not a browser
    /// page of another site (native apps, servers, command-line clients).
    pub require_origin: bool,
    /// Which upgrade request headers a session keeps for [`Session::headers`](crate::Session::headers).
    pub headers: HeadersConfig,
    /// How long a graceful shutdown waits for connections to close before dropping them. Default 5000 ms.
    pub shutdown_timeout_ms: u64,
    /// In a graceful shutdown, how long after op 7 a client may take to leave by itself (its messages are
    /// still handled meanwhile) before the server closes it with 1012. At most half of `shutdown_timeout_ms`
    /// is used, so that the close still fits in the shutdown. Default 500 ms.
    pub shutdown_grace_ms: u64,
    /// In a graceful shutdown, the window over which op 7 is sent: each connection gets it at its own
    /// point in the window, so that a node's clients do not all land on the next node in the same second.
    /// At most half of `shutdown_timeout_ms` is used. Default 0 (all at once).
    pub shutdown_drain_window_ms: u64,
    /// The most a client is told to wait (op 7 `retry_after_ms`, each connection its own value from 0 up to
    /// this) before it reconnects. Default 1000 ms.
    pub shutdown_retry_jitter_ms: u64,
    /// Resumable sessions (op 2 `resumable`, op 6).
    pub resume: ResumeConfig,
}

/// Resumable sessions: what the default in-memory engine keeps (another engine, such as Redis, has its own
/// settings; the server offers what its engine keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// Whether clients may ask for resumable sessions. Default `true`.
    pub enabled: bool,
    /// The most messages kept per user. Default 1000.
    pub max_messages: usize,
    /// The most bytes of messages kept per user. Default 1 MiB.
    pub max_bytes: usize,
    /// The longest a message is kept, in milliseconds. Default 900000 (15 minutes).
    pub max_age_ms: u64,
    /// How long a session can be resumed after its connection ended, in milliseconds. Default 300000.
    pub session_ttl_ms: u64,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        let policy = mesa_engine::SessionPolicy::default();
        ResumeConfig {
            enabled: true,
            max_messages: policy.retention.max_messages,
            max_bytes: policy.retention.max_bytes,
            max_age_ms: u64::try_from(policy.retention.max_age.as_millis()).unwrap_or(u64::MAX),
            session_ttl_ms: u64::try_from(policy.session_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl ResumeConfig {
    /// The engine policy these settings describe.
    pub fn policy(&self) -> mesa_engine::SessionPolicy {
        mesa_engine::SessionPolicy {
            retention: mesa_engine::Retention {
                max_messages: self.max_messages.max(1),
                max_bytes: self.max_bytes.max(1),
                max_age: std::time::Duration::from_millis(self.max_age_ms.max(1)),
            },
            session_ttl: std::time::Duration::from_millis(self.session_ttl_ms.max(1)),
        }
    }
}

/// Which headers of the upgrade request a session keeps for its whole life. A peer chooses how many headers
/// it sends, so what is kept is bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    /// Header names to keep (case-insensitive), or `"*"` for every header. Default `["*"]`.
    /// The WebSocket handshake headers are never kept.
    pub keep: Vec<String>,
    /// Bytes of kept headers per session (`name`, `value` and 2 per header); headers past it are left out.
    /// Default 4096.
    pub max_bytes: usize,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            keep: vec!["*".into()],
            max_bytes: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 4000,
            path: "/".into(),
            heartbeat: HeartbeatConfig::default(),
            reconnect: ReconnectConfig::default(),
            authentication: AuthenticationConfig::default(),
            client: ClientConfig::default(),
            limits: Limits::default(),
            allowed_origins: Vec::new(),
            require_origin: false,
            headers: HeadersConfig::default(),
            shutdown_timeout_ms: 5000,
            shutdown_grace_ms: 500,
            shutdown_drain_window_ms: 0,
            shutdown_retry_jitter_ms: 1000,
            resume: ResumeConfig::default(),
        }
    }
}

/// Heartbeats: the server sends op 1 every `interval_ms`; after more than `max_attempts` unanswered beats in a
/// row it closes the connection with 4009.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Default `true` (Mesa 1.5 defaulted to off; a production gateway needs dead-peer detection).
    pub enabled: bool,
    /// Default 10000 ms (Mesa 1.5).
    pub interval_ms: u64,
    /// Default 3 (Mesa 1.5).
    pub max_attempts: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            enabled: true,
            interval_ms: 10_000,
            max_attempts: 3,
        }
    }
}

/// The reconnect interval advertised in Hello (`c_reconnect_interval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// Default `true`: the interval is advertised. When `false`, Mesa 1.5 clients do not reconnect.
    pub enabled: bool,
    /// Default 5000 ms (Mesa 1.5).
    pub interval_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            interval_ms: 5000,
        }
    }
}

/// Authentication rules (Mesa 1.5 `authentication` option).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthenticationConfig {
    /// Time a client has to authenticate, advertised in Hello. Default 10000 ms (Mesa 1.5).
    /// Enforced (close 4006) when `required`; advertised only otherwise.
    pub timeout_ms: u64,
    /// Time one run of the application's authentication check may take. A slower check is the server's
    /// problem, not a refusal: the client is closed with 1013 (retry later), or answered op 9 without
    /// `disconnect_on_fail`. Default 10000 ms.
    pub check_timeout_ms: u64,
    /// Default `false` (Mesa 1.5). When `true`: sends to everyone skip unauthenticated clients, a dispatch from
    /// an unauthenticated client closes it with 4003, and the timeout is enforced.
    pub required: bool,
    /// Op 22 carries the user object (rule `sends_user_object`). Default `true` (Mesa 1.5).
    pub send_user_object: bool,
    /// A refused authentication closes the connection with 1008. Default `true` (Mesa 1.5). When `false`,
    /// the server answers op 9 `{"reason": …}` and the connection stays open, unauthenticated.
    pub disconnect_on_fail: bool,
}

impl Default for AuthenticationConfig {
    fn default() -> Self {
        AuthenticationConfig {
            timeout_ms: 10_000,
            check_timeout_ms: 10_000,
            required: false,
            send_user_object: true,
            disconnect_on_fail: true,
        }
    }
}

/// Client rules (Mesa 1.5 `client` option).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Rule `enforce_equal_versions`: clients announce their version with op 0 `CLIENT_VERSION` and a
    /// version other than `version` is closed with 1002. Default `false`.
    pub enforce_equal_versions: bool,
    /// The client version required under `enforce_equal_versions`. Default: none (the rule then refuses
    /// every announced version, so set it whenever the rule is on).
    pub version: Option<String>,
}

/// Limits on what one peer may cost the server. Every limit has a documented outcome in `docs/protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest text message (after reassembling fragments) and largest single frame, in bytes.
    /// Larger input closes the connection with 1009. Default 65536.
    pub max_message_size: usize,
    /// Inbound frames per connection, or `None` for no limit (as is `burst = 0` or `per_second = 0`, for
    /// config files). Exceeding it closes with 4008. Default: burst 200, 100 per second.
    pub rate_limit: Option<RateLimit>,
    /// Frames that may wait in one session's outbound queue. A send that would exceed it (or
    /// `outbound_queue_bytes`) is refused and the session is closed with 4010 after the frames already
    /// queued, instead of buffering without end. Default 1024.
    pub outbound_queue: usize,
    /// Bytes of encoded frames that may wait in one session's outbound queue (a single larger frame still
    /// passes an empty queue). Default 1048576 (1 MiB).
    pub outbound_queue_bytes: usize,
    /// How often one connection may send op 2: each runs the authentication check, often a call to an auth
    /// backend. Exceeding it closes with 4008. `burst = 0` turns it off. Default burst 5, one more every 10 s.
    pub authentication_attempts: AttemptsConfig,
    /// Open WebSocket connections the server accepts; further upgrades get HTTP 503. Default 100000.
    pub max_connections: usize,
    /// Time a client has to send a complete HTTP request head; slower (or non-HTTP) peers are dropped.
    /// Applies to the standalone server. Default 10000 ms.
    pub handshake_timeout_ms: u64,
    /// Time one batch of outbound frames may take to write; a peer that does not read is dropped after it.
    /// Default 10000 ms.
    pub write_timeout_ms: u64,
    /// Size of tungstenite's read buffer per connection, in bytes. It is allocated whole for every
    /// connection, so it dominates idle memory; the socket itself is read in chunks of up to 4 KiB, held
    /// only while input is waiting, so a small buffer does not mean one system call per small message.
    /// At least 256; default 256.
    pub read_buffer_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            rate_limit: Some(RateLimit::default()),
            outbound_queue: 1024,
            outbound_queue_bytes: 1 << 20,
            authentication_attempts: AttemptsConfig::default(),
            max_connections: 100_000,
            handshake_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            read_buffer_size: 256,
        }
    }
}

/// A limit for rare events: `burst` at once, then one more every `every_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttemptsConfig {
    /// Attempts allowed back to back; 0 for no limit. Default 5.
    pub burst: u32,
    /// Time to earn one more attempt. Default 10000 ms.
    pub every_ms: u64,
}

impl Default for AttemptsConfig {
    fn default() -> Self {
        AttemptsConfig {
            burst: 5,
            every_ms: 10_000,
        }
    }
}

impl Config {
    /// The entries of `allowed_origins` that are not origins (`scheme://host[:port]`); they could never
    /// match, so a configuration should refuse them.
    pub fn invalid_origins(&self) -> Vec<&str> {
        self.allowed_origins
            .iter()
            .map(String::as_str)
            .filter(|origin| crate::origin::Origin::parse(origin).is_none())
            .collect()
    }

    /// The protocol rules every connection of this server follows.
    pub fn connection_rules(&self) -> ConnectionRules {
        ConnectionRules {
            heartbeat: self.heartbeat.enabled.then(|| HeartbeatRules {
                interval: Duration::from_millis(self.heartbeat.interval_ms.max(1)),
                max_attempts: self.heartbeat.max_attempts,
            }),
            authentication_timeout: Duration::from_millis(self.authentication.timeout_ms),
            authentication_required: self.authentication.required,
            rate_limit: self.limits.rate_limit,
            required_client_version: self
                .client
                .enforce_equal_versions
                .then(|| self.client.version.as_deref().unwrap_or_default().into()),
            authentication_attempts: (self.limits.authentication_attempts.burst > 0).then(|| {
                AttemptLimit {
                    burst: self.limits.authentication_attempts.burst,
                    every: Duration::from_millis(
                        self.limits.authentication_attempts.every_ms.max(1),
                    ),
                }
            }),
        }
    }

    /// The Hello payload this configuration announces.
    pub fn hello(&self, sessions: Option<mesa_engine::SessionPolicy>) -> mesa_protocol::Hello {
        use mesa_protocol::rules;
        let mut rule_names = Vec::new();
        if self.client.enforce_equal_versions {
            rule_names.push(rules::ENFORCE_EQUAL_VERSIONS.to_string());
        }
        if self.authentication.send_user_object {
            rule_names.push(rules::SENDS_USER_OBJECT.to_string());
        }
        mesa_protocol::Hello {
            c_heartbeat_interval: self.heartbeat.enabled.then_some(self.heartbeat.interval_ms),
            c_reconnect_interval: self.reconnect.enabled.then_some(self.reconnect.interval_ms),
            c_authentication_timeout: Some(self.authentication.timeout_ms),
            rules: rule_names,
            c_resume: sessions.filter(|_| self.resume.enabled).map(|policy| {
                let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                mesa_protocol::ResumeOffer {
                    session_ttl: ms(policy.session_ttl),
                    max_messages: policy.retention.max_messages as u64,
                    max_bytes: policy.retention.max_bytes as u64,
                    max_age: ms(policy.retention.max_age),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mesa_defaults() {
        let config = Config::default();
        assert_eq!(config.port, 4000);
        assert_eq!(config.path, "/");
        assert_eq!(config.heartbeat.interval_ms, 10_000);
        assert_eq!(config.heartbeat.max_attempts, 3);
        assert_eq!(config.reconnect.interval_ms, 5000);
        assert_eq!(config.authentication.timeout_ms, 10_000);
        let hello = serde_json::to_string(&config.hello(None)).unwrap();
        assert_eq!(
            hello,
            r#"{"c_heartbeat_interval":10000,"c_reconnect_interval":5000,"c_authentication_timeout":10000,"rules":["sends_user_object"]}"#
        );
    }

    #[test]
    fn partial_config_keeps_defaults() {
        let config: Config =
            serde_json::from_str(r#"{"port": 5000, "heartbeat": {"interval_ms": 1000}}"#).unwrap();
        assert_eq!(config.port, 5000);
        assert_eq!(config.heartbeat.interval_ms, 1000);
        assert_eq!(config.heartbeat.max_attempts, 3);
        assert!(serde_json::from_str::<Config>(r#"{"prot": 1}"#).is_err());
    }
}
