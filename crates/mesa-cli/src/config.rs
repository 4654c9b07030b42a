//! The configuration of `mesa serve`: one struct filled from defaults, a TOML file, environment variables and
//! flags, later sources overriding earlier ones key by key.
//!
//! # Sources, lowest precedence first
//! 1. Defaults: Mesa 1.5's (see [`mesa_server::Config`]) plus the defaults documented on each field here.
//! 2. A TOML file, when `--config PATH` or `MESA_CONFIG=PATH` names one (a named file that does not exist is
//!    an error). Sections: `[server]` (with `[server.heartbeat]`, `[server.reconnect]`,
//!    `[server.authentication]`, `[server.client]`, `[server.limits]`), `[auth]`, `[api]`, `[log]`, `[proxy]`,
//!    `[tls]`, `[cluster]`, `[portal]`, and the top-level keys `redis_url` (an alias of `cluster.redis_url`) and
//!    `trusted_proxies`.
//! 3. `RUST_LOG`, read as `log.filter`.
//! 4. Environment variables `MESA_<SECTION>__<KEY>`: `__` separates levels, names are case-insensitive, e.g.
//!    `MESA_SERVER__PORT=5000`, `MESA_SERVER__HEARTBEAT__INTERVAL_MS=15000`, `MESA_AUTH__MODE=jwt`,
//!    `MESA_API__KEY_ENV=MY_KEY`, `MESA_LOG__FORMAT=json`, `MESA_CLUSTER__REDIS_URL=redis://…`, `MESA_DEMO=true`. A variable with `__`
//!    must name a key, so that a typo fails loudly; variables without `__` (other than the top-level `MESA_REDIS_URL`, `MESA_TRUSTED_PROXIES`, `MESA_DEMO`) are
//!    not configuration: secrets named by `*_env` (`MESA_KEY`) and other programs' variables (Mesa 3D's
//!    `MESA_GL_VERSION_OVERRIDE`) are left alone, with a warning when one looks like a misspelt key
//!    (`MESA_SERVER_PORT`). A variable that a `*_ENV` variable names is never read as configuration.
//! 5. Flags: `--host`, `--port`, `--path`, `--log-format`, `--log-filter`, `--redis-url`.
//!
//! Unknown keys in any source are errors. Durations are milliseconds (`*_ms`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;

/// The key that makes authentication required; defaults to `true` when `auth.mode` is not `none`.
const REQUIRED_KEY: &str = "server.authentication.required";

/// `cluster.namespace` when none is given: the Redis engine's own default.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// URL schemes a Redis URL may have (`cluster.redis_url`, `mesa dispatch --redis-url`); the Redis engine checks
/// the rest of the URL when it starts.
pub(crate) const REDIS_SCHEMES: [&str; 6] = [
    "redis",
    "rediss",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
];

/// Paths the HTTP API owns; the gateway path must not be one of them (or under `/api/`).
pub(crate) const RESERVED_PATHS: [&str; 3] = ["/healthz", "/metrics", "/api"];

/// Everything `mesa serve` reads. See the module docs for where each value may come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// Mesa 1.5's name for `cluster.redis_url` (also `MESA_REDIS_URL`), moved there at load; setting both is
    /// an error. Default: none.
    pub(crate) redis_url: Option<Secret>,
    /// Several nodes on one Redis (`[cluster]`). Default: none, the gateway runs alone, in memory.
    pub(crate) cluster: Option<ClusterConfig>,
    /// The gateway: address, path, heartbeats, authentication rules, limits (`[server]`).
    pub(crate) server: mesa_server::Config,
    /// How op 2 credentials are checked (`[auth]`).
    pub(crate) auth: AuthConfig,
    /// The HTTP API on the gateway's port (`[api]`).
    pub(crate) api: ApiConfig,
    /// Logging (`[log]`).
    pub(crate) log: LogConfig,
    /// Serve the demo chat page at `/demo` (see `demo.rs`); `--demo` also turns it on. Default: off.
    pub(crate) demo: bool,
    /// The HTTP event proxy: client events POSTed to the application's backend (`[proxy]`).
    pub(crate) proxy: ProxyConfig,
    /// Reverse proxies whose `X-Forwarded-For` names the client address (IPs or CIDR blocks, e.g.
    /// `["127.0.0.1", "10.0.0.0/8"]`). Default: none (the TCP peer is the client).
    pub(crate) trusted_proxies: Vec<String>,
    /// `wss://` terminated by `mesa serve` (`[tls]`).
    pub(crate) tls: crate::tls::TlsConfig,
    /// Client events handed to Portal workers through Redis (`[portal]`). Default: off.
    pub(crate) portal: PortalSection,
    /// Warnings found while loading (logged once logging is set up).
    #[serde(skip)]
    pub(crate) warnings: Vec<String>,
}

/// `[cluster]`: this node joins the other `mesa serve` nodes on one Redis: sends, disconnects and presence
/// reach every node (see `docs/clustering.md`). Present as soon as one of its keys is set.
///
/// Defaults: `namespace = "default"`, `node_ttl_ms = 15000`, `node_id` random at each start,
/// `mesa15_compat = false`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterConfig {
    /// Where Redis is: `redis://[:password@]host:port[/db]`, `rediss://…` (TLS) or `redis+sentinel://…`.
    /// Required.
    pub(crate) redis_url: Option<Secret>,
    /// Separates gateways sharing one Redis: nodes see only nodes of their namespace. Default `default`.
    pub(crate) namespace: String,
    /// A node that has not refreshed its liveness for this long is dead: its presence entries are removed by
    /// the others. It refreshes every third of it. Default 15000; at least 500.
    pub(crate) node_ttl_ms: u64,
    /// This node's id, 16 hex digits (the first half of its connection ids). Default: random at start. Fix
    /// it only to recognise a node across restarts; two live nodes must never share one.
    pub(crate) node_id: Option<String>,
    /// Also speak Mesa 1.5's Redis formats, so that Mesa 1.5 nodes and Dispatchers share the cluster.
    /// Default `false`.
    pub(crate) mesa15_compat: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            namespace: DEFAULT_NAMESPACE.into(),
            node_ttl_ms: 15_000,
            node_id: None,
            mesa15_compat: false,
        }
    }
}

/// The smallest `cluster.node_ttl_ms`: liveness is refreshed every third of it, and a shorter period would
/// mostly measure Redis latency.
const MIN_NODE_TTL_MS: u64 = 500;

impl ClusterConfig {
    /// Checks the URL's scheme, the namespace, the ttl and the node id; every message names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.redis_url else {
            return Err(ConfigError::invalid(
                "cluster.redis_url: required when [cluster] is set (MESA_CLUSTER__REDIS_URL)",
            ));
        };
        validate_redis_url("cluster.redis_url", url.expose())?;
        validate_namespace("cluster.namespace", &self.namespace)?;
        if self.node_ttl_ms < MIN_NODE_TTL_MS {
            return Err(ConfigError::invalid(format!(
                "cluster.node_ttl_ms: must be at least {MIN_NODE_TTL_MS} (got {})",
                self.node_ttl_ms
            )));
        }
        if let Some(id) = &self.node_id {
            id.parse::<mesa_server::NodeId>()
                .map_err(|problem| ConfigError::invalid(format!("cluster.node_id: {problem}")))?;
        }
        Ok(())
    }

    /// `node_id`, parsed (validated at load).
    pub(crate) fn node_id(&self) -> Option<mesa_server::NodeId> {
        self.node_id.as_deref().and_then(|id| id.parse().ok())
    }
}

/// Refuses a Redis URL whose scheme is not one of [`REDIS_SCHEMES`]. The message names `key` and the scheme,
/// never the URL (it may hold a password).
pub(crate) fn validate_redis_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let schemes = REDIS_SCHEMES.map(|s| format!("{s}://")).join(", ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::invalid(format!(
            "{key}: not a URL (expected {schemes})"
        )));
    };
    let known = REDIS_SCHEMES
        .iter()
        .any(|known| known.eq_ignore_ascii_case(scheme));
    if !known {
        let scheme: String = scheme.chars().take(32).collect();
        return Err(ConfigError::invalid(format!(
            "{key}: scheme {scheme:?} is not a Redis URL (expected {schemes})"
        )));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ConfigError::invalid(format!(
            "{key}: the URL names no host"
        )));
    }
    Ok(())
}

/// Refuses an empty namespace and one with characters that would break Redis key names (`{`, `}` are hash
/// tags in a Redis Cluster; spaces and control characters do not survive copy and paste).
pub(crate) fn validate_namespace(key: &str, namespace: &str) -> Result<(), ConfigError> {
    if namespace.is_empty() || namespace.len() > 64 {
        return Err(ConfigError::invalid(format!(
            "{key}: must be 1 to 64 bytes long (got {})",
            namespace.len()
        )));
    }
    if namespace
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err(ConfigError::invalid(format!(
            "{key}: must not contain spaces, control characters, '{{' or '}}' (got {namespace:?})"
        )));
    }
    Ok(())
}

/// A string that must not appear in logs: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub(crate) fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Call it only where the value is used, never to log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which authentication check op 2 goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuthMode {
    /// No credentials are checked: the client's `d.id` (or `d.token`) is its id. Insecure, for development.
    #[default]
    None,
    /// `d.token` is a JWT verified with a shared secret (HS256) or an RSA public key (RS256).
    Jwt,
    /// `d` is POSTed to the application's backend, which answers with the identity.
    Webhook,
}

/// `[auth]`: one table for every mode; keys that belong to another mode than `mode` are refused.
///
/// Defaults: `mode = "none"`, `leeway_ms = 60000`, `id_claim = "sub"`, `timeout_ms = 5000`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthConfig {
    /// `none` (default), `jwt` or `webhook`.
    pub(crate) mode: AuthMode,

    /// JWT: the HS256 shared secret. Prefer `secret_env` so that the secret stays out of files.
    pub(crate) secret: Option<Secret>,
    /// JWT: name of an environment variable holding the HS256 shared secret.
    pub(crate) secret_env: Option<String>,
    /// JWT: path of a PEM RSA public key (PKCS#1 or SPKI) for RS256.
    pub(crate) public_key_path: Option<PathBuf>,
    /// JWT: required `iss`. Default: not checked.
    pub(crate) issuer: Option<String>,
    /// JWT: required `aud`. Default: not checked (an `aud` claim is then ignored).
    pub(crate) audience: Option<String>,
    /// JWT: clock skew tolerated on `exp` and `nbf`, rounded up to whole seconds. Default 60000 (the
    /// `jsonwebtoken` crate's own default).
    pub(crate) leeway_ms: u64,
    /// JWT: the claim holding the user id (a string or a number). Default `sub`.
    pub(crate) id_claim: String,
    /// JWT: accept tokens without an `exp` claim (they never expire). Default `false`: refused.
    pub(crate) allow_no_exp: bool,

    /// Webhook: the URL op 2's `d` is POSTed to (http or https).
    pub(crate) url: Option<String>,
    /// Webhook: time the backend has to answer. Default 5000.
    pub(crate) timeout_ms: u64,
    /// Webhook: headers sent with every request, e.g. `Authorization = "Bearer …"` for the backend.
    /// Values are secrets (redacted in logs).
    pub(crate) headers: BTreeMap<String, Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            secret: None,
            secret_env: None,
            public_key_path: None,
            issuer: None,
            audience: None,
            leeway_ms: 60_000,
            id_claim: "sub".into(),
            allow_no_exp: false,
            url: None,
            timeout_ms: 5000,
            headers: BTreeMap::new(),
        }
    }
}

/// `[api]`: the HTTP API (`POST /api/send`). `/healthz` and `/metrics` are always served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApiConfig {
    /// The bearer key `POST /api/send` requires. Without `key` or `key_env` the send API is disabled (404).
    pub(crate) key: Option<Secret>,
    /// Name of an environment variable holding the key (it must be set and non-empty when named).
    pub(crate) key_env: Option<String>,
    /// Largest request body, in bytes. Default: `server.limits.max_message_size` + 16384 (the envelope
    /// around a message the gateway would accept from a client).
    pub(crate) max_body_bytes: Option<usize>,
}

/// `[proxy]`: client dispatches (and, when listed in `events`, connection, authentication and
/// disconnection) POSTed to the application's backend, whose answer may reply, send or refuse (see
/// `proxy.rs`).
///
/// Defaults: no URL (off), no rules, no lifecycle events, `timeout_ms = 5000`, `max_concurrency = 64`,
/// `queue = 64`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ProxyConfig {
    /// The backend every rule without its own `url`, and every lifecycle event, goes to. With a `url` and no
    /// `rules`, every dispatch goes there. Default: none.
    pub(crate) url: Option<String>,
    /// Which dispatches go where, first match wins (`t = "SAY"`, `t = "CHAT_*"`, `t = "*"`). A dispatch no
    /// rule matches is answered with a `PROXY_ERROR` `no_route`. Default: none.
    pub(crate) rules: Vec<ProxyRule>,
    /// Lifecycle events also POSTed to `url`: any of `connection`, `authentication`, `disconnection`.
    /// Default: none.
    pub(crate) events: Vec<LifecycleEvent>,
    /// Time one call may take, connecting included. Default 5000.
    pub(crate) timeout_ms: u64,
    /// Calls in flight at once, across all connections. Default 64.
    pub(crate) max_concurrency: usize,
    /// Events of one connection waiting for their call (they are sent one at a time, in order); one more is
    /// answered with a `PROXY_ERROR` `overloaded`. Default 64.
    pub(crate) queue: usize,
    /// Headers sent with every call, e.g. `Authorization`. Values are secrets (redacted in logs).
    pub(crate) headers: BTreeMap<String, Secret>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            url: None,
            rules: Vec::new(),
            events: Vec::new(),
            timeout_ms: 5000,
            max_concurrency: 64,
            queue: 64,
            headers: BTreeMap::new(),
        }
    }
}

/// One `[[proxy.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyRule {
    /// The event type: exact, a prefix ending in `*`, or `*` for any.
    pub(crate) t: String,
    /// Where matching dispatches go. Default: `proxy.url`.
    #[serde(default)]
    pub(crate) url: Option<String>,
}

/// Lifecycle events the proxy may forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LifecycleEvent {
    /// A connection opened (after Hello).
    Connection,
    /// A connection authenticated (after op 22).
    Authentication,
    /// A connection closed.
    Disconnection,
}

/// `[portal]`: client events handed to Portal workers through Redis (see `portal.rs` and `docs/portal.md`),
/// instead of the HTTP event proxy.
///
/// Defaults (once `enabled = true`): `mode = "at_least_once"`, `redis_url` = `cluster.redis_url`,
/// `namespace` = `cluster.namespace` (none without `[cluster]`; `""` for none), `max_len = 1000000`,
/// `group = "mesa-portal"`, all four `events`, every message type, `timeout_ms = 2000`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PortalSection {
    /// Hand events to Portal. Default `false`; every other key needs it.
    pub(crate) enabled: bool,
    /// `at_least_once` (a Redis Stream and a consumer group) or `fire_and_forget` (Mesa 1.5's Portal).
    pub(crate) mode: Option<PortalModeName>,
    /// The Redis Portal uses, in the engine's URL forms (`redis+cluster://` is refused). Default
    /// `cluster.redis_url`.
    pub(crate) redis_url: Option<Secret>,
    /// Workers see only events of their namespace. Default the cluster's; `""`: none (Mesa 1.5's names
    /// without a suffix).
    pub(crate) namespace: Option<String>,
    /// At-least-once: approximate bound on the stream's length (older entries are trimmed, handled or not).
    pub(crate) max_len: Option<usize>,
    /// At-least-once: the consumer group the workers read with (created by `mesa serve` too).
    pub(crate) group: Option<String>,
    /// Which events are handed: any of `connection`, `authentication`, `message`, `disconnection`.
    pub(crate) events: Option<Vec<PortalEventName>>,
    /// Which client dispatches are handed, by `t`: exact, a prefix ending in `*`, or `*`. Others are
    /// answered with a `PROXY_ERROR` `no_route`. Default: all.
    pub(crate) message_types: Option<Vec<String>>,
    /// How long one hand may wait for Redis before the event is refused. Default 2000.
    pub(crate) timeout_ms: Option<u64>,
}

/// `portal.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PortalModeName {
    /// A Redis Stream read by a consumer group: every event is handled at least once.
    AtLeastOnce,
    /// Mesa 1.5's Portal: pub/sub to one live worker per event, nothing kept.
    FireAndForget,
}

/// An event `[portal]` may hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PortalEventName {
    /// A connection opened (after Hello).
    Connection,
    /// A connection authenticated (after op 22).
    Authentication,
    /// A client dispatch (op 0).
    Message,
    /// A connection closed.
    Disconnection,
}

/// `[portal]` resolved against `[cluster]` (validated at load).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct PortalSettings {
    /// The Redis URL.
    pub(crate) redis_url: Secret,
    /// The key the URL came from, for error messages.
    pub(crate) redis_url_key: &'static str,
    /// `None`: Mesa 1.5's names without a suffix.
    pub(crate) namespace: Option<String>,
    /// `Some((max_len, group))` for at-least-once, `None` for fire-and-forget.
    pub(crate) stream: Option<(usize, String)>,
    /// The events handed.
    pub(crate) events: Vec<PortalEventName>,
    /// The `t` patterns of handed dispatches.
    pub(crate) message_types: Vec<String>,
    /// The hand timeout.
    pub(crate) timeout_ms: u64,
}

impl PortalSection {
    /// Checks every key; messages name them.
    fn validate(
        &self,
        cluster: Option<&ClusterConfig>,
        proxy: &ProxyConfig,
    ) -> Result<(), ConfigError> {
        let set = [
            ("mode", self.mode.is_some()),
            ("redis_url", self.redis_url.is_some()),
            ("namespace", self.namespace.is_some()),
            ("max_len", self.max_len.is_some()),
            ("group", self.group.is_some()),
            ("events", self.events.is_some()),
            ("message_types", self.message_types.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
        ];
        if !self.enabled {
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(format!(
                    "portal.{key} is set but portal.enabled is false: set portal.enabled = true                      (MESA_PORTAL__ENABLED=true) or remove it"
                )));
            }
            return Ok(());
        }
        if proxy.url.is_some() || !proxy.rules.is_empty() || !proxy.events.is_empty() {
            return Err(ConfigError::invalid(
                "portal.enabled and [proxy] are both set: client events go to one of them (Portal workers or                  the HTTP backend), so that each client gets one answer; remove one",
            ));
        }
        match (&self.redis_url, cluster.and_then(|c| c.redis_url.as_ref())) {
            (Some(url), _) => validate_redis_url("portal.redis_url", url.expose())?,
            (None, Some(_)) => {}
            (None, None) => {
                return Err(ConfigError::invalid(
                    "portal.redis_url: required when [cluster] is not set (MESA_PORTAL__REDIS_URL)",
                ))
            }
        }
        if let Some(namespace) = self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            validate_namespace("portal.namespace", namespace)?;
        }
        if self.mode == Some(PortalModeName::FireAndForget) {
            for (key, is_set) in [
                ("max_len", self.max_len.is_some()),
                ("group", self.group.is_some()),
            ] {
                if is_set {
                    return Err(ConfigError::invalid(format!(
                        "portal.{key} is only used with portal.mode = \"at_least_once\" (portal.mode is \
                         \"fire_and_forget\")"
                    )));
                }
            }
        }
        if self.max_len == Some(0) {
            return Err(ConfigError::invalid(
                "portal.max_len: must be at least 1 (got 0)",
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err(ConfigError::invalid(
                "portal.timeout_ms: must be at least 1 (got 0)",
            ));
        }
        if self
            .group
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.contains(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "portal.group: must be a non-empty name without spaces",
            ));
        }
        if self.events.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::invalid(
                "portal.events: empty: list at least one of connection, authentication, message,                  disconnection (or set portal.enabled = false)",
            ));
        }
        if let Some(types) = &self.message_types {
            if types.is_empty() {
                return Err(ConfigError::invalid(
                    "portal.message_types: empty: use [\"*\"] for every type, or leave message out of \
                     portal.events",
                ));
            }
            if let Some(i) = types.iter().position(String::is_empty) {
                return Err(ConfigError::invalid(format!(
                    "portal.message_types[{i}]: must not be empty (use \"*\" for every type)"
                )));
            }
            let messages = self
                .events
                .as_ref()
                .is_none_or(|events| events.contains(&PortalEventName::Message));
            if !messages {
                return Err(ConfigError::invalid(
                    "portal.message_types is set but portal.events does not list message",
                ));
            }
        }
        Ok(())
    }
}

impl ServeConfig {
    /// `[portal]` with its defaults filled in from `[cluster]`; `None` when it is off.
    pub(crate) fn portal(&self) -> Option<PortalSettings> {
        let portal = &self.portal;
        if !portal.enabled {
            return None;
        }
        let cluster = self.cluster.as_ref();
        let (redis_url, redis_url_key) =
            match (&portal.redis_url, cluster.and_then(|c| c.redis_url.clone())) {
                (Some(url), _) => (url.clone(), "portal.redis_url"),
                (None, url) => (url?, "cluster.redis_url"),
            };
        let namespace = match &portal.namespace {
            Some(ns) if ns.is_empty() => None,
            Some(ns) => Some(ns.clone()),
            None => cluster.map(|c| c.namespace.clone()),
        };
        let stream = match portal.mode.unwrap_or(PortalModeName::AtLeastOnce) {
            PortalModeName::AtLeastOnce => Some((
                portal.max_len.unwrap_or(1_000_000),
                portal.group.clone().unwrap_or_else(|| "mesa-portal".into()),
            )),
            PortalModeName::FireAndForget => None,
        };
        Some(PortalSettings {
            redis_url,
            redis_url_key,
            namespace,
            stream,
            events: portal.events.clone().unwrap_or_else(|| {
                vec![
                    PortalEventName::Connection,
                    PortalEventName::Authentication,
                    PortalEventName::Message,
                    PortalEventName::Disconnection,
                ]
            }),
            message_types: portal
                .message_types
                .clone()
                .unwrap_or_else(|| vec!["*".into()]),
            timeout_ms: portal.timeout_ms.unwrap_or(2000),
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// `text` (default) or `json`.
    pub(crate) format: LogFormat,
    /// A `RUST_LOG`-style filter, e.g. `info` or `mesa_server=debug,info`. Default `info`.
    pub(crate) filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Values given as flags; they override every other source.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// `--host`.
    pub(crate) host: Option<String>,
    /// `--port`.
    pub(crate) port: Option<u16>,
    /// `--path`.
    pub(crate) path: Option<String>,
    /// `--log-format`.
    pub(crate) log_format: Option<LogFormat>,
    /// `--log-filter`.
    pub(crate) log_filter: Option<String>,
    /// `--redis-url` (`cluster.redis_url`).
    pub(crate) redis_url: Option<String>,
}

/// Why the configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A source could not be parsed or a value has the wrong type (figment names the key and the source).
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// `--config`/`MESA_CONFIG` names a file that does not exist.
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A file the configuration names (a key) could not be read.
    #[error("{what} {}: {source}", .path.display())]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Values that parse but do not make sense together; the message names the keys.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] with this message.
    pub(crate) fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(message.into())
    }
}

impl ServeConfig {
    /// Reads every source (see the module docs) and validates the result.
    pub(crate) fn load(
        file: Option<&Path>,
        overrides: Overrides,
    ) -> Result<ServeConfig, ConfigError> {
        // The server section's defaults are merged in as values (not only as serde defaults) so that a
        // source may set one field of a nested struct, e.g. only `server.limits.rate_limit.burst`.
        let mut user = Figment::new();
        if let Some(path) = file {
            // figment silently skips a missing file; a file the user named must exist.
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            user = user.merge(Toml::file_exact(path));
        }
        if let Ok(filter) = std::env::var("RUST_LOG") {
            user = user.merge(Serialized::default("log.filter", filter));
        }
        let env = EnvVars::new();
        let warnings = env.warnings();
        user = user.merge(env);
        let required_set = user.find_value(REQUIRED_KEY).is_ok();
        let figment = Figment::new()
            .merge(Serialized::default(
                "server",
                mesa_server::Config::default(),
            ))
            .merge(user);
        // Lossy: a string such as "5000" from the environment is accepted where a number is expected.
        let mut config: ServeConfig = figment.extract_lossy().map_err(Box::new)?;
        // With credentials configured, an anonymous connection must not receive sends to everyone or
        // dispatch: required unless the operator said otherwise.
        if config.auth.mode != AuthMode::None && !required_set {
            config.server.authentication.required = true;
        }
        config.move_redis_url()?;
        config.apply(overrides);
        config.warnings = warnings;
        config.validate()?;
        Ok(config)
    }

    /// Moves the top-level `redis_url` (Mesa 1.5's name) into `[cluster]`.
    fn move_redis_url(&mut self) -> Result<(), ConfigError> {
        let Some(url) = self.redis_url.take() else {
            return Ok(());
        };
        let cluster = self.cluster.get_or_insert_with(ClusterConfig::default);
        if cluster.redis_url.is_some() {
            return Err(ConfigError::invalid(
                "redis_url and cluster.redis_url are both set: keep cluster.redis_url",
            ));
        }
        cluster.redis_url = Some(url);
        Ok(())
    }

    /// Applies flag values.
    fn apply(&mut self, overrides: Overrides) {
        let Overrides {
            host,
            port,
            path,
            log_format,
            log_filter,
            redis_url,
        } = overrides;
        if let Some(host) = host {
            self.server.host = host;
        }
        if let Some(port) = port {
            self.server.port = port;
        }
        if let Some(path) = path {
            self.server.path = path;
        }
        if let Some(format) = log_format {
            self.log.format = format;
        }
        if let Some(filter) = log_filter {
            self.log.filter = filter;
        }
        if let Some(url) = redis_url {
            self.cluster
                .get_or_insert_with(ClusterConfig::default)
                .redis_url = Some(Secret::new(url));
        }
    }

    /// Checks what serde cannot: the gateway path, values that parse but make no sense, and keys that
    /// belong to another auth mode.
    fn validate(&self) -> Result<(), ConfigError> {
        validate_gateway_path(&self.server.path)?;
        self.validate_values()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.portal.validate(self.cluster.as_ref(), &self.proxy)?;
        self.auth.validate()
    }

    /// Refuses values that would make the gateway misbehave instead of running with them: a heartbeat
    /// interval of 0 sent hundreds of heartbeats a second, a `max_message_size` of 0 refuses every frame.
    fn validate_values(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        let limits = &server.limits;
        let positive: [(&str, u64, bool); 13] = [
            (
                "server.heartbeat.interval_ms",
                server.heartbeat.interval_ms,
                server.heartbeat.enabled,
            ),
            (
                "server.reconnect.interval_ms",
                server.reconnect.interval_ms,
                server.reconnect.enabled,
            ),
            (
                "server.authentication.timeout_ms",
                server.authentication.timeout_ms,
                server.authentication.required,
            ),
            (
                "server.authentication.check_timeout_ms",
                server.authentication.check_timeout_ms,
                true,
            ),
            (
                "server.limits.max_message_size",
                limits.max_message_size as u64,
                true,
            ),
            (
                "server.limits.outbound_queue",
                limits.outbound_queue as u64,
                true,
            ),
            (
                "server.limits.outbound_queue_bytes",
                limits.outbound_queue_bytes as u64,
                true,
            ),
            (
                "server.limits.max_connections",
                limits.max_connections as u64,
                true,
            ),
            (
                "server.limits.handshake_timeout_ms",
                limits.handshake_timeout_ms,
                true,
            ),
            (
                "server.limits.write_timeout_ms",
                limits.write_timeout_ms,
                true,
            ),
            (
                "server.limits.authentication_attempts.every_ms",
                limits.authentication_attempts.every_ms,
                limits.authentication_attempts.burst > 0,
            ),
            (
                "auth.timeout_ms",
                self.auth.timeout_ms,
                self.auth.mode == AuthMode::Webhook,
            ),
            (
                "api.max_body_bytes",
                self.api.max_body_bytes.map_or(1, |bytes| bytes as u64),
                true,
            ),
        ];
        for (key, value, applies) in positive {
            if applies && value == 0 {
                return Err(ConfigError::invalid(format!(
                    "{key}: must be at least 1 (got 0)"
                )));
            }
        }
        if let Some(bad) = server.invalid_origins().first() {
            return Err(ConfigError::invalid(format!(
                "server.allowed_origins: {bad:?} is not an origin (scheme://host[:port], e.g. \
                 \"https://app.example\")"
            )));
        }
        if limits.read_buffer_size < 256 {
            return Err(ConfigError::invalid(format!(
                "server.limits.read_buffer_size: must be at least 256 (got {})",
                limits.read_buffer_size
            )));
        }
        if server.client.enforce_equal_versions && server.client.version.is_none() {
            return Err(ConfigError::invalid(
                "server.client.version: must be set when server.client.enforce_equal_versions is true \
                 (every client would be refused)",
            ));
        }
        Ok(())
    }

    /// The largest `POST /api/send` body accepted.
    pub(crate) fn api_body_limit(&self) -> usize {
        self.api.max_body_bytes.unwrap_or_else(|| {
            self.server
                .limits
                .max_message_size
                .saturating_add(16 * 1024)
        })
    }
}

/// The gateway is mounted as an exact route beside the API routes, so it must be a plain absolute path that
/// none of them uses (axum would panic on a duplicate route; better to say so at startup).
fn validate_gateway_path(path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(ConfigError::invalid(format!(
            "server.path must start with '/': {path:?}"
        )));
    }
    if path.contains(['{', '}', '?', '#']) {
        return Err(ConfigError::invalid(format!(
            "server.path must be a plain path without '{{', '}}', '?' or '#': {path:?}"
        )));
    }
    let trimmed = path.trim_end_matches('/');
    let reserved = RESERVED_PATHS
        .iter()
        .any(|r| trimmed == *r || path.starts_with(&format!("{r}/")));
    if reserved {
        return Err(ConfigError::invalid(format!(
            "server.path {path:?} collides with the HTTP API (/healthz, /metrics, /api/*): choose another path"
        )));
    }
    Ok(())
}

impl AuthConfig {
    /// Refuses keys of another mode: a `secret` next to `mode = "none"` is almost certainly a forgotten
    /// `mode = "jwt"`, and running without authentication by mistake is the worst outcome.
    fn validate(&self) -> Result<(), ConfigError> {
        let jwt_keys = [
            ("secret", self.secret.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("public_key_path", self.public_key_path.is_some()),
            ("issuer", self.issuer.is_some()),
            ("audience", self.audience.is_some()),
            ("allow_no_exp", self.allow_no_exp),
        ];
        let webhook_keys = [
            ("url", self.url.is_some()),
            ("headers", !self.headers.is_empty()),
        ];
        let misplaced = |keys: &[(&str, bool)], owner: &str| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(ConfigError::invalid(format!(
                    "auth.{key} is only used with auth.mode = \"{owner}\" (auth.mode is \"{}\")",
                    self.mode.name()
                ))),
                None => Ok(()),
            }
        };
        if self.mode != AuthMode::Jwt {
            misplaced(&jwt_keys, "jwt")?;
        }
        if self.mode != AuthMode::Webhook {
            misplaced(&webhook_keys, "webhook")?;
        }
        Ok(())
    }
}

impl AuthMode {
    /// The name used in configuration.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
            AuthMode::Webhook => "webhook",
        }
    }
}

/// Resolves a secret given either inline (`key`) or through an environment variable (`key_env`).
/// A named variable that is unset or empty is an error: silently running without the secret would disable
/// a check the operator asked for.
pub(crate) fn resolve_secret(
    name: &str,
    inline: Option<&Secret>,
    env_name: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    let secret = match (inline, env_name) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(format!(
                "{name} and {name}_env are both set: set one of them"
            )))
        }
        (Some(secret), None) => secret.clone(),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => Secret::new(value),
            Err(_) => {
                return Err(ConfigError::invalid(format!(
                "{name}_env names the environment variable {var}, which is not set (or not UTF-8)"
            )))
            }
        },
        (None, None) => return Ok(None),
    };
    if secret.expose().is_empty() {
        return Err(ConfigError::invalid(format!("{name} must not be empty")));
    }
    Ok(Some(secret))
}

/// The `MESA_*` environment variables as a figment provider.
///
/// figment's own `Env` parses values, so `MESA_API__KEY=123456` would become a number and fail to load into a
/// string, and `MESA_SERVER__CLIENT__VERSION=1.0` a float. This provider keeps scalars as strings (the lossy
/// extraction turns them into numbers or booleans where a field wants one) and parses only arrays and tables,
/// e.g. `MESA_SERVER__ALLOWED_ORIGINS='["https://a.example"]'`.
struct EnvVars {
    env: Env,
}

/// Top-level keys, the only configuration variables without `__`.
const TOP_LEVEL_KEYS: [&str; 3] = ["redis_url", "trusted_proxies", "demo"];

/// Sections: a `MESA_<SECTION>_…` variable without `__` is probably a misspelt key.
const SECTIONS: [&str; 8] = [
    "server", "auth", "api", "log", "proxy", "tls", "cluster", "portal",
];

impl EnvVars {
    fn new() -> EnvVars {
        // Variables that `*_ENV` variables name hold secrets, not configuration (MESA_API__KEY_ENV=MESA_KEY).
        let named: Vec<String> = std::env::vars()
            .filter(|(name, _)| {
                let upper = name.to_ascii_uppercase();
                upper.starts_with("MESA_") && upper.ends_with("_ENV")
            })
            .map(|(_, value)| value.to_ascii_uppercase())
            .collect();
        // Filtered before `split`, which turns `__` into `.`.
        let env = Env::prefixed("MESA_")
            .filter(move |key| {
                let key = key.as_str();
                let named = named
                    .iter()
                    .any(|var| var.eq_ignore_ascii_case(&format!("MESA_{key}")));
                let top_level = TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key));
                !named && (key.contains("__") || top_level)
            })
            .split("__")
            .ignore(&["config"]);
        EnvVars { env }
    }

    /// Variables that are not read as configuration but look like a misspelt key.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (name, _) in std::env::vars() {
            let upper = name.to_ascii_uppercase();
            let Some(rest) = upper.strip_prefix("MESA_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            if rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.as_str()) {
                continue;
            }
            if SECTIONS
                .iter()
                .any(|section| rest.starts_with(&format!("{section}_")))
            {
                warnings.push(format!(
                    "environment variable {name} is not read as configuration: levels are separated by \
                     two underscores (MESA_SERVER__PORT, not MESA_SERVER_PORT)"
                ));
            }
        }
        warnings
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        self.env.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.env.iter() {
            let value = match raw.parse::<Value>() {
                Ok(value @ (Value::Dict(..) | Value::Array(..) | Value::String(..))) => value,
                _ => Value::from(raw),
            };
            insert_path(&mut dict, key.as_str(), value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets `a.b.c = value` in `dict`, creating (or replacing non-table values with) tables on the way.
/// Values keep figment's default tag, so that errors name the variable's provider.
fn insert_path(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_zero_config() {
        let config = ServeConfig::default();
        assert_eq!(
            (config.server.host.as_str(), config.server.port),
            ("0.0.0.0", 4000)
        );
        assert_eq!(config.server.path, "/");
        assert_eq!(config.auth.mode, AuthMode::None);
        assert!(config.api.key.is_none() && config.api.key_env.is_none());
        assert!(config.redis_url.is_none() && config.cluster.is_none());
        assert_eq!(
            (config.log.format, config.log.filter.as_str()),
            (LogFormat::Text, "info")
        );
        assert_eq!(config.api_body_limit(), 64 * 1024 + 16 * 1024);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = AuthConfig {
            secret: Some(Secret::new("hunter2")),
            headers: BTreeMap::from([("authorization".into(), Secret::new("Bearer xyz"))]),
            ..AuthConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("xyz"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn gateway_path_must_not_collide_with_the_api() {
        for ok in ["/", "/ws", "/gateway/v1", "/apis", "/healthzz"] {
            assert!(validate_gateway_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ws",
            "/healthz",
            "/metrics",
            "/api",
            "/api/",
            "/api/send",
            "/{id}",
            "/x?y",
        ] {
            assert!(validate_gateway_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_urls_namespaces_ttls_and_node_ids_are_checked() {
        for ok in [
            "redis://127.0.0.1:6379",
            "rediss://:pw@redis.example:6380/2",
            "redis+sentinel://127.0.0.1:26379/mymaster",
            "REDIS://host",
        ] {
            assert!(validate_redis_url("k", ok).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("http://:hunter2@host", "scheme \"http\""),
            ("127.0.0.1:6379", "not a URL"),
            ("redis://", "no host"),
            ("redis:///0", "no host"),
        ] {
            let error = validate_redis_url("cluster.redis_url", bad)
                .expect_err(bad)
                .to_string();
            assert!(error.starts_with("cluster.redis_url: "), "{error}");
            assert!(error.contains(needle), "{error}");
            assert!(
                !error.contains("hunter2"),
                "the URL is never printed: {error}"
            );
        }
        for ok in ["default", "app-1.prod_x", "a:b"] {
            assert!(validate_namespace("n", ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "a b", "{tag}", "tab\t", long.as_str()] {
            assert!(validate_namespace("n", bad).is_err(), "{bad:?}");
        }

        let cluster = |edit: fn(&mut ClusterConfig)| {
            let mut cluster = ClusterConfig {
                redis_url: Some(Secret::new("redis://127.0.0.1:6379")),
                ..ClusterConfig::default()
            };
            edit(&mut cluster);
            cluster.validate().map_err(|e| e.to_string())
        };
        assert_eq!(cluster(|_| {}), Ok(()));
        let error = cluster(|c| c.redis_url = None).expect_err("no URL");
        assert!(error.contains("cluster.redis_url: required"), "{error}");
        let error = cluster(|c| c.node_ttl_ms = 100).expect_err("short ttl");
        assert!(error.contains("cluster.node_ttl_ms"), "{error}");
        let error = cluster(|c| c.node_id = Some("xyz".into())).expect_err("bad id");
        assert!(error.contains("cluster.node_id"), "{error}");
        let error = cluster(|c| c.namespace = String::new()).expect_err("empty namespace");
        assert!(error.contains("cluster.namespace"), "{error}");
        let fixed = ClusterConfig {
            node_id: Some("00000000000000ff".into()),
            ..ClusterConfig::default()
        };
        assert_eq!(fixed.node_id(), Some(mesa_server::NodeId(255)));
    }

    #[test]
    fn the_top_level_redis_url_moves_into_the_cluster_section() {
        let mut config = ServeConfig {
            redis_url: Some(Secret::new("redis://a")),
            ..ServeConfig::default()
        };
        config.move_redis_url().expect("alone it moves");
        let cluster = config.cluster.as_ref().expect("a cluster");
        assert_eq!(cluster.redis_url, Some(Secret::new("redis://a")));
        assert_eq!(cluster.namespace, DEFAULT_NAMESPACE);
        assert!(config.redis_url.is_none());

        config.redis_url = Some(Secret::new("redis://b"));
        let error = config.move_redis_url().expect_err("both set");
        assert!(error.to_string().contains("both set"), "{error}");
    }

    #[test]
    fn keys_of_another_auth_mode_are_refused() {
        let config = AuthConfig {
            secret_env: Some("X".into()),
            ..AuthConfig::default()
        };
        let error = config.validate().expect_err("secret_env without mode jwt");
        assert!(error.to_string().contains("auth.secret_env"), "{error}");
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            url: Some("http://x".into()),
            ..AuthConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
