//! The HTTP event proxy (`[proxy]`): what clients send reaches the application's backend without any Rust.
//!
//! Each client dispatch (op 0) whose `t` matches a rule is POSTed as JSON to the rule's URL; the lifecycle
//! events listed in `proxy.events` go to `proxy.url`:
//!
//! ```json
//! {"event": "dispatch", "connection_id": "…", "user_id": "alice", "frame": {"op": 0, "t": "SAY", "d": {…}}}
//! {"event": "connection", "connection_id": "…", "user_id": null, "remote_addr": "203.0.113.7:0"}
//! {"event": "authentication", "connection_id": "…", "user_id": "alice", "user": {…}}
//! {"event": "disconnection", "connection_id": "…", "user_id": "alice", "code": 1000, "reason": ""}
//! ```
//!
//! A 2xx answer (an empty body is `{}`) may hold, all optional:
//! `{"reply": {"t": …, "d": …}, "send": [<POST /api/send body>, …], "refuse": "reason"}` — `reply` goes to the
//! sender's connection, each `send` entry to its recipients (everyone / ids / excluding), `refuse` (alone)
//! answers the sender with a `PROXY_ERROR` `refused`. A 403 refuses too (reason: the body's `error` or
//! `reason`).
//!
//! # Failures
//! Every event has an outcome. When the backend does not give a usable answer the sender gets
//! `{"op": 0, "t": "PROXY_ERROR", "d": {"code": …, "reason": …, "event": …, "t": …}}` with `code` one of
//! `refused`, `timeout`, `unavailable` (connection error, a status other than 2xx/403), `bad_answer`,
//! `overloaded` (the connection's queue is full) or `no_route` (no rule matches the `t`); a warning is logged
//! for backend failures. A disconnection's failure can only be logged. Each outcome is counted in
//! `mesa_proxy_requests_total`, each call's latency in `mesa_proxy_request_duration_seconds`.
//!
//! # Order and bounds
//! Each connection's events go through one queue of `proxy.queue` events, one call at a time, so the
//! backend sees them, and the client gets the replies, in the order sent; at most `proxy.max_concurrency`
//! calls are in flight across all connections. The connection's own task only queues (it never waits for
//! the backend), so heartbeats and other input are not delayed by a slow backend. A `PROXY_ERROR`
//! `overloaded` is sent at once and may arrive before replies to earlier events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mesa_protocol::{Frame, OpCode};
use mesa_server::{ConnectionId, Disconnection, Middleware, Session, Target};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::api::SendRequest;
use crate::config::{ConfigError, LifecycleEvent, ProxyConfig, Secret};
use crate::metrics::CliMetrics;

/// The event type of the error frame the sender gets when its event had no usable answer.
pub(crate) const PROXY_ERROR: &str = "PROXY_ERROR";

/// Backend answers larger than this are `bad_answer`: an unbounded read would let a misbehaving backend
/// exhaust the gateway's memory.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Which backend a dispatch type goes to.
#[derive(Debug)]
struct Rule {
    pattern: String,
    url: reqwest::Url,
}

impl Rule {
    fn matches(&self, t: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => t.starts_with(prefix),
            None => self.pattern == t,
        }
    }
}

/// One queued event of a connection.
#[derive(Debug)]
enum Job {
    Dispatch { frame: Frame, url: reqwest::Url },
    Connection,
    Authentication,
    Disconnection(Disconnection),
}

impl Job {
    /// The `event` field and metric label.
    fn event(&self) -> &'static str {
        match self {
            Job::Dispatch { .. } => "dispatch",
            Job::Connection => "connection",
            Job::Authentication => "authentication",
            Job::Disconnection(_) => "disconnection",
        }
    }

    fn t(&self) -> Option<&str> {
        match self {
            Job::Dispatch { frame, .. } => frame.t.as_deref(),
            _ => None,
        }
    }
}

/// Why an event got no usable answer; the `code` of `PROXY_ERROR`.
#[derive(Debug)]
enum Failure {
    Refused(String),
    Timeout,
    Unavailable(String),
    BadAnswer(String),
    Overloaded,
    NoRoute,
}

impl Failure {
    fn code(&self) -> &'static str {
        match self {
            Failure::Refused(_) => "refused",
            Failure::Timeout => "timeout",
            Failure::Unavailable(_) => "unavailable",
            Failure::BadAnswer(_) => "bad_answer",
            Failure::Overloaded => "overloaded",
            Failure::NoRoute => "no_route",
        }
    }

    /// What the client is told: the backend's own reason for a refusal, a fixed text otherwise (details
    /// of the backend are for the operator's log).
    fn reason(&self) -> String {
        match self {
            Failure::Refused(reason) => reason.clone(),
            Failure::Timeout => "the application did not answer in time".into(),
            Failure::Unavailable(_) => "the application is unavailable".into(),
            Failure::BadAnswer(_) => "the application gave an invalid answer".into(),
            Failure::Overloaded => "too many events waiting for the application".into(),
            Failure::NoRoute => "no application receives this event type".into(),
        }
    }
}

/// A 2xx answer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default)]
    reply: Option<Frame>,
    /// One `POST /api/send` body or a list of them; read by [`sends`] (an untagged enum would buffer the
    /// frames, which raw payloads do not survive).
    #[serde(default)]
    send: Option<Value>,
    #[serde(default)]
    refuse: Option<String>,
}

/// The `send` entries of an answer.
fn sends(send: Option<Value>) -> Result<Vec<SendRequest>, String> {
    let entries = match send {
        None => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(entry) => vec![entry],
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            serde_json::from_value(entry).map_err(|error| format!("send[{i}]: {error}"))
        })
        .collect()
}

struct ProxyInner {
    client: reqwest::Client,
    /// `proxy.url`: lifecycle events go there.
    url: Option<reqwest::Url>,
    rules: Vec<Rule>,
    connection: bool,
    authentication: bool,
    disconnection: bool,
    permits: Semaphore,
    queue: usize,
    /// Each connection's queue, created with its first event, dropped at its disconnection (its worker
    /// then finishes what is queued and exits).
    queues: Mutex<HashMap<ConnectionId, mpsc::Sender<Job>>>,
    metrics: Arc<CliMetrics>,
}

/// The event proxy, installed as a middleware (it only queues; workers make the calls).
#[derive(Clone)]
pub(crate) struct Proxy {
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("rules", &self.inner.rules.len())
            .finish_non_exhaustive()
    }
}

/// Parses an http(s) URL, naming the key in the error.
pub(crate) fn http_url(key: &str, raw: &str) -> Result<reqwest::Url, ConfigError> {
    reqwest::Url::parse(raw)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| {
            ConfigError::invalid(format!(
                "{key}: must be an http:// or https:// URL: {raw:?}"
            ))
        })
}

/// Static headers from configuration, values marked sensitive.
pub(crate) fn header_map(
    key: &str,
    headers: &BTreeMap<String, Secret>,
) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| ConfigError::invalid(format!("{key}: invalid header name {name:?}")))?;
        let mut value = HeaderValue::try_from(value.expose())
            .map_err(|_| ConfigError::invalid(format!("{key}.{name}: invalid header value")))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

impl Proxy {
    /// Builds the proxy `[proxy]` describes; `None` when it is off (no `url` and no `rules`).
    pub(crate) fn from_config(
        config: &ProxyConfig,
        metrics: Arc<CliMetrics>,
    ) -> Result<Option<Proxy>, ConfigError> {
        if config.url.is_none() && config.rules.is_empty() {
            if !config.events.is_empty() {
                return Err(ConfigError::invalid(
                    "proxy.events: lifecycle events go to proxy.url, which is not set",
                ));
            }
            return Ok(None);
        }
        let url = config
            .url
            .as_deref()
            .map(|raw| http_url("proxy.url", raw))
            .transpose()?;
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.t.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "proxy.rules[{i}].t: must not be empty (use \"*\" for every type)"
                )));
            }
            let url = match (&rule.url, &url) {
                (Some(raw), _) => http_url(&format!("proxy.rules[{i}].url"), raw)?,
                (None, Some(url)) => url.clone(),
                (None, None) => {
                    return Err(ConfigError::invalid(format!(
                        "proxy.rules[{i}] (t = {:?}) has no url and proxy.url is not set",
                        rule.t
                    )))
                }
            };
            rules.push(Rule {
                pattern: rule.t.clone(),
                url,
            });
        }
        // A URL without rules takes every dispatch.
        if rules.is_empty() {
            if let Some(url) = &url {
                rules.push(Rule {
                    pattern: "*".into(),
                    url: url.clone(),
                });
            }
        }
        if config.timeout_ms == 0 {
            return Err(ConfigError::invalid("proxy.timeout_ms: must be at least 1"));
        }
        if config.max_concurrency == 0 {
            return Err(ConfigError::invalid(
                "proxy.max_concurrency: must be at least 1",
            ));
        }
        if config.queue == 0 {
            return Err(ConfigError::invalid("proxy.queue: must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(header_map("proxy.headers", &config.headers)?)
            .user_agent(concat!("mesa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ConfigError::invalid(format!("proxy: HTTP client: {error}")))?;
        let has = |event| config.events.contains(&event);
        Ok(Some(Proxy {
            inner: Arc::new(ProxyInner {
                client,
                url,
                rules,
                connection: has(LifecycleEvent::Connection),
                authentication: has(LifecycleEvent::Authentication),
                disconnection: has(LifecycleEvent::Disconnection),
                permits: Semaphore::new(config.max_concurrency),
                queue: config.queue,
                queues: Mutex::new(HashMap::new()),
                metrics,
            }),
        }))
    }

    /// Queues an event on the session's queue (starting its worker on the first one). A full queue answers
    /// the sender with `overloaded` at once.
    fn enqueue(&self, session: &Session, job: Job) {
        let inner = &self.inner;
        let mut queues = inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        let sender = queues.entry(session.connection_id()).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(inner.queue);
            tokio::spawn(worker(inner.clone(), session.clone(), receiver));
            sender
        });
        if let Err(error) = sender.try_send(job) {
            let job = match error {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            drop(queues);
            inner.fail(session, &job, &Failure::Overloaded);
        }
    }
}

impl Middleware for Proxy {
    fn on_connection(&self, session: &Session) {
        if self.inner.connection {
            self.enqueue(session, Job::Connection);
        }
    }

    fn on_authenticated(&self, session: &Session) {
        if self.inner.authentication {
            self.enqueue(session, Job::Authentication);
        }
    }

    fn on_message_received(&self, session: &Session, frame: &Frame) {
        let t = frame.t.as_deref().unwrap_or("");
        match self.inner.rules.iter().find(|rule| rule.matches(t)) {
            Some(rule) => self.enqueue(
                session,
                Job::Dispatch {
                    frame: frame.clone(),
                    url: rule.url.clone(),
                },
            ),
            None => no_route(&self.inner.metrics, session, frame),
        }
    }

    fn on_disconnection(&self, session: &Session, disconnection: &Disconnection) {
        if self.inner.disconnection {
            self.enqueue(session, Job::Disconnection(disconnection.clone()));
        }
        // Dropping the sender lets the worker finish the queue and exit.
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.remove(&session.connection_id());
    }
}

/// Without a proxy, dispatches have nowhere to go: the sender is told so (`PROXY_ERROR` `no_route`) and the
/// log says how to route them, instead of dropping them silently.
#[derive(Debug)]
pub(crate) struct NoProxy {
    pub(crate) metrics: Arc<CliMetrics>,
    pub(crate) warned: std::sync::atomic::AtomicBool,
}

impl Middleware for NoProxy {
    fn on_message_received(&self, session: &Session, frame: &Frame) {
        use std::sync::atomic::Ordering;
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a client sent a dispatch, but no [proxy] is configured: it is answered with PROXY_ERROR \
                 no_route (set proxy.url to forward client events to your backend)"
            );
        }
        no_route(&self.metrics, session, frame);
    }
}

/// Answers a dispatch no backend receives.
pub(crate) fn no_route(metrics: &CliMetrics, session: &Session, frame: &Frame) {
    metrics.proxy_outcome("dispatch", "no_route");
    tracing::debug!(t = frame.t.as_deref(), "event proxy: no rule for this type");
    let _ = session.send(&error_frame(
        "dispatch",
        frame.t.as_deref(),
        &Failure::NoRoute,
    ));
}

fn error_frame(event: &str, t: Option<&str>, failure: &Failure) -> Frame {
    refusal_frame(event, t, failure.code(), &failure.reason())
}

/// The `PROXY_ERROR` frame a client gets when its event reached no application, whichever way events go
/// (this proxy or Portal): one shape for clients to handle.
pub(crate) fn refusal_frame(event: &str, t: Option<&str>, code: &str, reason: &str) -> Frame {
    Frame::dispatch(
        PROXY_ERROR,
        json!({
            "code": code,
            "reason": reason,
            "event": event,
            "t": t,
        }),
    )
}

/// Runs one connection's events in order.
async fn worker(inner: Arc<ProxyInner>, session: Session, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        let outcome = {
            // Closed only if the semaphore were closed, which it never is.
            let Ok(_permit) = inner.permits.acquire().await else {
                return;
            };
            inner.call(&session, &job).await
        };
        match outcome {
            Ok(answer) => inner.apply(&session, &job, answer).await,
            Err(failure) => inner.fail(&session, &job, &failure),
        }
    }
}

impl ProxyInner {
    /// The body POSTed for one event.
    fn body(session: &Session, job: &Job) -> Value {
        let mut body = json!({
            "event": job.event(),
            "connection_id": session.connection_id().to_string(),
            "user_id": session.id(),
        });
        match job {
            Job::Dispatch { frame, .. } => body["frame"] = json!(frame),
            Job::Authentication => body["user"] = session.user().unwrap_or(Value::Null),
            Job::Disconnection(why) => {
                body["code"] = json!(why.code);
                body["reason"] = json!(why.reason);
            }
            Job::Connection => {
                body["remote_addr"] = json!(session.remote_addr().map(|addr| addr.to_string()))
            }
        }
        body
    }

    async fn call(&self, session: &Session, job: &Job) -> Result<Answer, Failure> {
        let url = match job {
            Job::Dispatch { url, .. } => url.clone(),
            _ => match &self.url {
                Some(url) => url.clone(),
                None => return Err(Failure::NoRoute),
            },
        };
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .json(&Self::body(session, job))
            .send()
            .await;
        let result = match sent {
            Ok(response) => {
                let status = response.status();
                match read_limited(response).await {
                    Ok(body) => interpret(status, &body),
                    Err(error) if error.is_timeout() => Err(Failure::Timeout),
                    Err(error) => Err(Failure::Unavailable(format!(
                        "reading the answer failed: {error}"
                    ))),
                }
            }
            Err(error) if error.is_timeout() => Err(Failure::Timeout),
            Err(error) => Err(Failure::Unavailable(error.without_url().to_string())),
        };
        self.metrics.proxy_latency(job.event(), started.elapsed());
        result
    }

    /// Sends what a 2xx answer asks for: the reply first, then each send, in order.
    async fn apply(&self, session: &Session, job: &Job, answer: Answer) {
        if let Some(reason) = answer.refuse {
            if answer.reply.is_some() || answer.send.is_some() {
                let failure =
                    Failure::BadAnswer("\"refuse\" cannot be combined with reply or send".into());
                return self.fail(session, job, &failure);
            }
            return self.fail(session, job, &Failure::Refused(reason));
        }
        let sends = match sends(answer.send) {
            Ok(sends) => sends,
            Err(problem) => return self.fail(session, job, &Failure::BadAnswer(problem)),
        };
        // Checked before anything is sent, so that an answer is applied whole or not at all.
        if let Some(reply) = &answer.reply {
            if let Err(problem) = client_frame(reply) {
                return self.fail(
                    session,
                    job,
                    &Failure::BadAnswer(format!("reply: {problem}")),
                );
            }
        }
        for (i, send) in sends.iter().enumerate() {
            if let Err(problem) = client_frame(&send.message) {
                let failure = Failure::BadAnswer(format!("send[{i}].message: {problem}"));
                return self.fail(session, job, &failure);
            }
        }
        if let Some(mut reply) = answer.reply {
            reply.o = None;
            if session.send(&reply).is_err() {
                tracing::debug!(connection = %session.connection_id(), "proxy reply not delivered: the connection is closed or its queue is full");
            }
        }
        if !sends.is_empty() {
            let Some(mesa) = session.server() else {
                return;
            };
            for send in sends {
                // `o` (Mesa 1.5 `sync`) is read and stripped by the router.
                let SendRequest {
                    message,
                    recipients,
                    excluding,
                } = send;
                let target = Target::from_mesa(recipients, excluding);
                if let Err(error) = mesa.send(&message, &target).await {
                    tracing::warn!(%error, "proxy answer: a send failed");
                }
            }
        }
        self.metrics.proxy_outcome(job.event(), "ok");
    }

    /// Counts and logs a failure and tells the sender (a disconnected sender cannot be told).
    fn fail(&self, session: &Session, job: &Job, failure: &Failure) {
        let event = job.event();
        self.metrics.proxy_outcome(event, failure.code());
        match failure {
            Failure::Timeout => {
                tracing::warn!(
                    event,
                    t = job.t(),
                    "event proxy: the backend timed out (proxy.timeout_ms)"
                )
            }
            Failure::Unavailable(detail) | Failure::BadAnswer(detail) => {
                tracing::warn!(event, t = job.t(), %detail, "event proxy: {}", failure.code())
            }
            Failure::Overloaded => tracing::warn!(
                event,
                t = job.t(),
                connection = %session.connection_id(),
                "event proxy: the connection's queue is full (proxy.queue)"
            ),
            Failure::Refused(_) | Failure::NoRoute => {
                tracing::debug!(
                    event,
                    t = job.t(),
                    code = failure.code(),
                    "event proxy: not accepted"
                )
            }
        }
        if matches!(job, Job::Disconnection(_)) {
            return;
        }
        let _ = session.send(&error_frame(event, job.t(), failure));
    }
}

/// Only what clients may receive: a dispatch (op 0, the default) with a `t`.
pub(crate) fn client_frame(frame: &Frame) -> Result<(), String> {
    if frame.opcode() != Some(OpCode::Dispatch) {
        return Err(format!(
            "op {} cannot be sent to clients: only dispatches (op 0)",
            frame.op
        ));
    }
    if frame.t.as_deref().is_none_or(str::is_empty) {
        return Err("a dispatch needs a non-empty \"t\"".into());
    }
    Ok(())
}

/// What a status and body mean.
fn interpret(status: StatusCode, body: &[u8]) -> Result<Answer, Failure> {
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::default());
        }
        // A reply without `op` is a dispatch.
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|error| Failure::BadAnswer(format!("not JSON: {error}")))?;
        if let Some(reply) = value.get_mut("reply").and_then(Value::as_object_mut) {
            reply.entry("op").or_insert(json!(0));
        }
        return serde_json::from_value(value)
            .map_err(|error| Failure::BadAnswer(format!("{status}: {error}")));
    }
    if status == StatusCode::FORBIDDEN {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let reason = ["error", "reason"]
            .iter()
            .find_map(|key| body.get(key).and_then(Value::as_str))
            .filter(|reason| !reason.is_empty())
            .unwrap_or("refused");
        return Err(Failure::Refused(reason.to_string()));
    }
    Err(Failure::Unavailable(format!("status {status}")))
}

/// Reads the answer, at most [`MAX_ANSWER_BYTES`] (more is treated as a read error).
async fn read_limited(mut response: reqwest::Response) -> Result<Bytes, ReadError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Http(reqwest::Error),
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

impl ReadError {
    fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Http(error) if error.is_timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_exactly_by_prefix_or_all() {
        let url = reqwest::Url::parse("http://127.0.0.1/").expect("url");
        let rule = |pattern: &str| Rule {
            pattern: pattern.into(),
            url: url.clone(),
        };
        assert!(rule("SAY").matches("SAY"));
        assert!(!rule("SAY").matches("SAYS"));
        assert!(rule("CHAT_*").matches("CHAT_JOIN"));
        assert!(!rule("CHAT_*").matches("CHA"));
        assert!(rule("*").matches(""));
    }

    #[test]
    fn answers_are_interpreted() {
        let ok = |body: &str| interpret(StatusCode::OK, body.as_bytes());
        assert!(matches!(
            ok(""),
            Ok(Answer {
                reply: None,
                send: None,
                refuse: None
            })
        ));
        let answer = ok(r#"{"reply": {"t": "A", "d": 1}}"#).expect("reply");
        assert_eq!(answer.reply.expect("reply").op, 0);
        let answer = ok(r#"{"send": {"message": {"op": 0, "t": "A", "d": 1}}}"#).expect("send");
        assert_eq!(sends(answer.send).expect("one send").len(), 1);
        let answer = ok(r#"{"send": [{"message": {"t": "A"}}, {"message": {"op": 0}, "x": 1}]}"#)
            .expect("send");
        assert!(sends(answer.send).is_err());
        assert!(matches!(
            ok(r#"{"replay": {}}"#),
            Err(Failure::BadAnswer(_))
        ));
        assert!(matches!(ok("nope"), Err(Failure::BadAnswer(_))));
        assert!(matches!(
            interpret(StatusCode::FORBIDDEN, br#"{"error": "muted"}"#),
            Err(Failure::Refused(reason)) if reason == "muted"
        ));
        assert!(matches!(
            interpret(StatusCode::BAD_GATEWAY, b""),
            Err(Failure::Unavailable(_))
        ));
        assert!(client_frame(&Frame::new(OpCode::AuthenticationAck, json!({}))).is_err());
        assert!(client_frame(&Frame::dispatch("", json!({}))).is_err());
        assert!(client_frame(&Frame::dispatch("A", json!({}))).is_ok());
    }
}
