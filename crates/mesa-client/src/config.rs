//! [`ClientBuilder`]: the URL, headers, TLS, credentials and every limit and timing, each with its default.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use mesa_protocol::RateLimit;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderMap, HeaderName, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::backoff::{Backoff, Jitter};
use crate::client::Client;
use crate::error::{ConnectError, ConnectErrorKind};
use crate::event::Events;
use crate::liveness::default_slack;
use crate::transport::{BoxedIo, Dial};

/// Credentials sent as op 2's `d`. Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq)]
pub(crate) struct Credentials(pub(crate) Value);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Builds a [`Client`]. Every setter documents its default; nothing connects before
/// [`ClientBuilder::build`] (or [`ClientBuilder::connect`]).
///
/// `Debug` prints header names but never header values or credentials.
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    credentials: Option<Credentials>,
    auto_connect: bool,
    reconnect: bool,
    reconnect_interval: Duration,
    reconnect_cap: Duration,
    jitter_seed: Option<u64>,
    queue_capacity: usize,
    event_capacity: usize,
    connect_timeout: Duration,
    hello_timeout: Duration,
    authentication_timeout: Duration,
    heartbeat_slack: Option<Duration>,
    ping_interval: Option<Duration>,
    write_timeout: Duration,
    linger: Duration,
    max_message_size: usize,
    client_version: Option<String>,
    send_rate: Option<RateLimit>,
    resume_sessions: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    dial: Option<Dial>,
}

/// The default [`ClientBuilder::linger`]: time left to deliver queued sends after the last handle is
/// dropped. At the default pace ([`DEFAULT_SEND_RATE`]) a full default queue (1024 frames) takes about
/// 11 s; most queues are far shorter.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(10);

/// The default pace of outgoing frames: below the server's default inbound limit (burst 200, 100 per
/// second), with room for heartbeat answers and for bunching on the way.
pub const DEFAULT_SEND_RATE: RateLimit = RateLimit {
    burst: 150,
    per_second: 80,
};

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("headers", &header_names)
            .field("credentials", &self.credentials)
            .field("auto_connect", &self.auto_connect)
            .field("reconnect", &self.reconnect)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("reconnect_cap", &self.reconnect_cap)
            .field("queue_capacity", &self.queue_capacity)
            .field("event_capacity", &self.event_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("authentication_timeout", &self.authentication_timeout)
            .field("heartbeat_slack", &self.heartbeat_slack)
            .field("ping_interval", &self.ping_interval)
            .field("linger", &self.linger)
            .field("client_version", &self.client_version)
            .field("send_rate", &self.send_rate)
            .field("resume_sessions", &self.resume_sessions)
            .field("custom_tls", &self.tls.is_some())
            .field("custom_dial", &self.dial.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            credentials: None,
            auto_connect: true,
            reconnect: true,
            reconnect_interval: Duration::from_secs(1),
            reconnect_cap: Duration::from_secs(30),
            jitter_seed: None,
            queue_capacity: 1024,
            event_capacity: 256,
            connect_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            authentication_timeout: Duration::from_secs(10),
            heartbeat_slack: None,
            ping_interval: Some(Duration::from_secs(15)),
            write_timeout: Duration::from_secs(10),
            linger: DEFAULT_LINGER,
            max_message_size: 16 << 20,
            client_version: None,
            send_rate: Some(DEFAULT_SEND_RATE),
            resume_sessions: true,
            tls: None,
            dial: None,
        }
    }

    /// Adds a header to every upgrade request (for example `Authorization`). Validated by `build`.
    /// `Authorization`, `Proxy-Authorization` and `Cookie` are marked sensitive. Default: none.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Credentials (op 2's `d`, for example `{"token": "…"}`) sent after the Hello of every connection,
    /// before any queued send is flushed. The same as calling [`Client::authenticate`] before connecting,
    /// without waiting for the answer. From then on the client drains its send queue only on an
    /// authenticated connection (after op 22), also after a refusal. Default: none (the client does not
    /// authenticate on its own, and flushes right after the Hello).
    pub fn credentials(mut self, data: Value) -> Self {
        self.credentials = Some(Credentials(data));
        self
    }

    /// Whether `build` starts connecting at once. When `false`, the client waits for
    /// [`Client::connect`]. Default `true`.
    pub fn auto_connect(mut self, auto_connect: bool) -> Self {
        self.auto_connect = auto_connect;
        self
    }

    /// Whether the client reconnects after a connection drops or an attempt fails. Closes whose code
    /// forbids it (1008 authentication refused, 1000, 1002, …: see
    /// [`mesa_protocol::can_reconnect_code`]) and [`Client::disconnect`] always stop it. Default `true`.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The backoff base used until a Hello advertises `c_reconnect_interval` (and when it advertises none).
    /// Default 1 s.
    pub fn reconnect_interval(mut self, base: Duration) -> Self {
        self.reconnect_interval = base;
        self
    }

    /// The largest delay between two attempts, whatever the base and the attempt count. Default 30 s.
    pub fn reconnect_cap(mut self, cap: Duration) -> Self {
        self.reconnect_cap = cap;
        self
    }

    /// Seeds the jitter of the reconnection delays, making them predictable (for tests). Default: seeded
    /// from process randomness and the clock.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Frames [`Client::send`] may queue (while disconnected, connecting, authenticating, or while the
    /// socket is busy). A full queue makes `send` return [`SendError::QueueFull`](crate::SendError).
    /// Default 1024.
    pub fn queue_capacity(mut self, frames: usize) -> Self {
        self.queue_capacity = frames.max(1);
        self
    }

    /// Events buffered for the [`Events`] stream. When the application stops reading, the client stops
    /// reading the socket (and stops reconnecting) once this many events wait. Default 256.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// Time for the TCP connection, TLS and the WebSocket upgrade together. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time from the upgrade to the Hello (op 10). Default 10 s.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Time to wait for op 22 when the Hello advertises no `c_authentication_timeout`. Default 10 s
    /// (Mesa 1.5's default).
    pub fn authentication_timeout(mut self, timeout: Duration) -> Self {
        self.authentication_timeout = timeout;
        self
    }

    /// Silence tolerated beyond the heartbeat (or ping) interval before the server is declared dead.
    /// Default: half the interval, at least 1 s.
    pub fn heartbeat_slack(mut self, slack: Duration) -> Self {
        self.heartbeat_slack = Some(slack);
        self
    }

    /// WebSocket Ping interval used when the Hello advertises no heartbeat; `None` turns dead-server
    /// detection off for such servers. Ignored when the server sends heartbeats. Default 15 s.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Time one socket write may take before the connection is considered dead. Default 10 s.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long the client's task may keep running after the last [`Client`] handle is dropped, to deliver
    /// the frames [`Client::send`] had accepted. Default 10 s ([`DEFAULT_LINGER`]).
    ///
    /// When the last handle goes and frames are still queued, the task carries on as if nothing happened
    /// (connecting, authenticating with the current credentials, reconnecting after a drop) until the queue
    /// is empty, then closes with 1000 and stops. It stops earlier, discarding what is left (logged with
    /// `tracing::warn!`), when this deadline passes, when the client is [`Lifecycle::Closed`] or
    /// [`Lifecycle::Disconnected`] (nothing would connect it again), or when the server refused the
    /// credentials and no handle is left to supply others. With an empty queue, or a zero linger, it stops
    /// at once. The task needs its runtime: a runtime shut down meanwhile ends it too.
    ///
    /// [`Lifecycle::Closed`]: crate::Lifecycle::Closed
    /// [`Lifecycle::Disconnected`]: crate::Lifecycle::Disconnected
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Largest inbound message in bytes; a larger one fails the connection. Default 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// The version announced with op 0 `CLIENT_VERSION` when the Hello carries `enforce_equal_versions`.
    /// Default: none (nothing is announced and such a server may close with 1002).
    pub fn client_version(mut self, version: impl Into<String>) -> Self {
        self.client_version = Some(version.into());
        self
    }

    /// Paces every frame the client sends (queued sends, and also op 2 and heartbeat answers, which count
    /// against the same server limit): at most `burst` back to back, then `per_second`. A server closes a
    /// client that exceeds its inbound rate limit (4008), and frames written before the close are lost, so
    /// flushing a long queue after a reconnection must not outrun it. `None` (or a zero field) sends as fast
    /// as the socket takes. Default: burst 150, 80 per second ([`DEFAULT_SEND_RATE`]), under this project's
    /// server default (200, 100 per second); match a server configured lower.
    pub fn send_rate(mut self, limit: Option<RateLimit>) -> Self {
        self.send_rate = limit;
        self
    }

    /// Whether the client asks for a resumable session when the server's Hello offers one (`c_resume`).
    /// Default `true`.
    ///
    /// On such a server the client authenticates with op 2 `d.resumable: true` (the credentials must be a
    /// JSON object), remembers the session id and the last sequence number (`s`) it handed to the
    /// application, and after a drop or a restart resumes with op 6 instead of op 2: the server replays what
    /// the session missed, and the client drops duplicates. It acknowledges what it processed (op 11 with
    /// `s`) so the server can trim. [`Event::SessionStarted`](crate::Event::SessionStarted) and
    /// [`Event::SessionResumed`](crate::Event::SessionResumed) say which happened on each connection; a
    /// started session that replaces a lost one says why it was lost, so the application can refetch its
    /// state. See the crate docs, "Resumable sessions".
    ///
    /// `false`, or a server whose Hello has no `c_resume` (Mesa 1.5): Mesa 1.5 frames exactly (op 2 with
    /// the credentials as given, op 11 without `s`), and dispatches are handed over as they come.
    pub fn resume_sessions(mut self, resume: bool) -> Self {
        self.resume_sessions = resume;
        self
    }

    /// The rustls configuration for `wss://` URLs (custom roots, client certificates). Default: the
    /// webpki (Mozilla) roots with the ring provider.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Opens the byte stream of every connection attempt with `dial` instead of a TCP connection to the
    /// URL's host and port: a Unix socket, a tunnel through a proxy, or an in-memory pipe in tests. The URL
    /// still gives the request path, the `Host` header and (with `wss://`) TLS over the stream. Each call is
    /// one attempt, bounded by the connect timeout. Default: TCP (with `TCP_NODELAY`).
    pub fn dial<F, Fut, S>(mut self, dial: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let dial: Dial = Arc::new(move || {
            let opening = dial();
            Box::pin(async move { opening.await.map(|stream| Box::new(stream) as BoxedIo) })
        });
        self.dial = Some(dial);
        self
    }

    /// Validates the configuration and starts the client's task on the current Tokio runtime; with
    /// auto-connect (the default) it starts connecting at once.
    ///
    /// Returns the cloneable [`Client`] handle and the [`Events`] stream. The task runs until every
    /// `Client` handle is dropped and the queued sends are delivered (see [`ClientBuilder::linger`]).
    pub fn build(self) -> Result<(Client, Events), ConnectError> {
        let auto_connect = self.auto_connect;
        let config = self.into_config()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| ConnectError::with_source(ConnectErrorKind::NoRuntime, e))?;
        Ok(crate::driver::spawn(&runtime, config, auto_connect))
    }

    /// Builds the client and waits for its first connection (Hello received); returns the error of that
    /// attempt if it fails (the client is then dropped).
    pub async fn connect(self) -> Result<(Client, Events), ConnectError> {
        let (client, events) = self.auto_connect(false).build()?;
        client.connect().await?;
        Ok((client, events))
    }

    fn into_config(self) -> Result<Config, ConnectError> {
        let invalid_url = |e| ConnectError::with_source(ConnectErrorKind::InvalidUrl, e);
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(invalid_url)?;
        let uri = request.uri().clone();
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(ConnectError::new(ConnectErrorKind::InvalidUrl)),
        };
        let host = match uri.host() {
            // `[::1]` in a URL is the address `::1`.
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(ConnectError::new(ConnectErrorKind::InvalidUrl)),
        }
        .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let invalid = || ConnectErrorKind::InvalidHeader { name: name.clone() };
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ConnectError::with_source(invalid(), e))?;
            let mut header_value = HeaderValue::from_str(value)
                .map_err(|e| ConnectError::with_source(invalid(), e))?;
            if matches!(
                header_name,
                header::AUTHORIZATION | header::PROXY_AUTHORIZATION | header::COOKIE
            ) {
                header_value.set_sensitive(true);
            }
            headers.append(header_name, header_value);
        }
        let tls = match (secure, self.tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls),
            (true, None) => Some(default_tls()?),
        };
        let jitter = match self.jitter_seed {
            Some(seed) => Jitter::from_seed(seed),
            None => Jitter::from_entropy(),
        };
        Ok(Config {
            uri,
            host,
            port,
            headers,
            tls,
            dial: self.dial,
            credentials: self.credentials,
            reconnect: self.reconnect,
            reconnect_interval: self.reconnect_interval,
            backoff: Backoff::new(self.reconnect_interval, self.reconnect_cap, jitter),
            queue_capacity: self.queue_capacity,
            event_capacity: self.event_capacity,
            connect_timeout: self.connect_timeout,
            hello_timeout: self.hello_timeout,
            authentication_timeout: self.authentication_timeout,
            heartbeat_slack: self.heartbeat_slack,
            ping_interval: self.ping_interval,
            write_timeout: self.write_timeout,
            linger: self.linger,
            max_message_size: self.max_message_size,
            client_version: self.client_version,
            send_rate: self.send_rate.filter(RateLimit::is_enabled),
            resume_sessions: self.resume_sessions,
        })
    }
}

/// rustls with the ring provider (explicit, so no process-wide default provider is needed) and the
/// webpki roots.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::with_source(ConnectErrorKind::Tls, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The validated configuration the client's task runs with.
pub(crate) struct Config {
    uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    headers: HeaderMap,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) dial: Option<Dial>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) reconnect: bool,
    pub(crate) reconnect_interval: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) queue_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) hello_timeout: Duration,
    pub(crate) authentication_timeout: Duration,
    heartbeat_slack: Option<Duration>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) write_timeout: Duration,
    pub(crate) linger: Duration,
    max_message_size: usize,
    pub(crate) client_version: Option<String>,
    pub(crate) send_rate: Option<RateLimit>,
    pub(crate) resume_sessions: bool,
}

impl Config {
    /// A fresh upgrade request: the URL plus the custom headers.
    pub(crate) fn request(&self) -> Result<Request, ConnectError> {
        let mut request = self
            .uri
            .clone()
            .into_client_request()
            .map_err(|e| ConnectError::with_source(ConnectErrorKind::InvalidUrl, e))?;
        request.headers_mut().extend(self.headers.clone());
        Ok(request)
    }

    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }

    pub(crate) fn slack(&self, interval: Duration) -> Duration {
        self.heartbeat_slack
            .unwrap_or_else(|| default_slack(interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_never_shows_secrets() {
        let builder = ClientBuilder::new("ws://127.0.0.1:4000/")
            .header("Authorization", "Bearer very-secret-token")
            .credentials(json!({"token": "another-secret"}));
        let debug = format!("{builder:?}");
        assert!(!debug.contains("very-secret-token"), "{debug}");
        assert!(!debug.contains("another-secret"), "{debug}");
        assert!(debug.contains("Authorization"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let config = builder.into_config().expect("valid config");
        let value = config.headers.get(header::AUTHORIZATION).expect("header");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("secret"));
    }

    #[test]
    fn urls_and_headers_are_validated() {
        let kind = |builder: ClientBuilder| builder.into_config().err().map(|e| e.kind().clone());
        assert_eq!(kind(ClientBuilder::new("ws://127.0.0.1:1/")), None);
        assert_eq!(
            kind(ClientBuilder::new("wss://example.invalid/gateway")),
            None
        );
        assert_eq!(
            kind(ClientBuilder::new("http://127.0.0.1:1/")),
            Some(ConnectErrorKind::InvalidUrl)
        );
        assert_eq!(
            kind(ClientBuilder::new("not a url")),
            Some(ConnectErrorKind::InvalidUrl)
        );
        assert_eq!(
            kind(ClientBuilder::new("ws://127.0.0.1:1/").header("bad header", "x")),
            Some(ConnectErrorKind::InvalidHeader {
                name: "bad header".into()
            })
        );
        assert_eq!(
            kind(ClientBuilder::new("ws://127.0.0.1:1/").header("x-ok", "line\nbreak")),
            Some(ConnectErrorKind::InvalidHeader {
                name: "x-ok".into()
            })
        );
    }

    #[test]
    fn request_carries_custom_headers() {
        let config = ClientBuilder::new("ws://127.0.0.1:4000/gateway?v=1")
            .header("Authorization", "Bearer t")
            .header("X-Trace", "1")
            .into_config()
            .expect("valid");
        let request = config.request().expect("request");
        assert_eq!(request.uri().path(), "/gateway");
        assert_eq!(request.headers()["x-trace"], "1");
        assert_eq!(request.headers()["authorization"], "Bearer t");
        assert!(config.tls.is_none());
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 4000));
        let v6 = ClientBuilder::new("wss://[::1]/")
            .into_config()
            .expect("valid");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert!(v6.tls.is_some());
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let result = ClientBuilder::new("ws://127.0.0.1:1/").build();
        assert_eq!(
            result.err().map(|e| e.kind().clone()),
            Some(ConnectErrorKind::NoRuntime)
        );
    }
}
