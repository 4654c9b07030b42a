//! The HTTP side of `mesa serve`: the gateway and a small API on one port.
//!
//! | route | answer |
//! |-------|--------|
//! | `<server.path>` (default `/`) | the WebSocket gateway (`mesa.service()`) |
//! | `GET /healthz` | 200 `{"status":"ok","connections":N}`; 200 `{"status":"degraded",…,"reason":…}` while the engine cannot reach its backend; 503 `{"status":"shutting_down"}` during shutdown |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/send` | sends a message to clients (below) |
//! | `GET /api/presence/<user id>` | where a user is connected, across nodes |
//! | `GET /api/nodes` | the live nodes |
//!
//! The gateway is an exact route like the others, so even at `/` the API routes win; the gateway path must
//! not be `/healthz`, `/metrics` or under `/api/` (checked at startup).
//!
//! # `/healthz` while degraded
//! A node whose engine lost Redis still serves its own clients (sends from them and from the API reach this
//! node's sessions; other nodes are not reached and `POST /api/send` says so with 503). Taking it out of a load
//! balancer's rotation would disconnect those clients for nothing and push them onto the other nodes, which
//! lost the same Redis: so `/healthz` stays 200 and says `"status":"degraded"` with the reason, for
//! monitoring (also `mesa_engine_degraded` in `/metrics`). Only a shutdown answers 503.
//!
//! # Authorisation
//! Every `/api/` route requires `Authorization: Bearer <api.key>`: 401 without it or with a wrong key, 404 when
//! no key is configured (the API is disabled). `/healthz` and `/metrics` are open.
//!
//! # `POST /api/send`
//! The body is Mesa 1.5's Redis `ws` channel message, so services that published to Redis can post the same
//! JSON: `{"message": {"op": 0, "d": …, "t": "…"}, "recipients": ["*"] | ["id", …], "excluding": ["id", …]}`.
//! `recipients` is optional (everyone), as is `excluding`; an empty `recipients` list reaches nobody.
//! `{"op": 5, "t": "DISCONNECT_CLIENT"}` closes the recipients' connections with 1000 instead of sending.
//!
//! Only what clients may receive is sent: a dispatch (op 0, with a `t`); any other opcode (op 22, op 10, op 7, …)
//! is refused with 400.
//!
//! Answers: 202 `{"ok":true,…}`; 400 malformed body or an opcode clients may not receive; 401; 404; 413 body
//! larger than `api.max_body_bytes`; 503 when the engine could not hand the message to every node (this
//! node's own sessions got it: `queued` or `disconnected` says how many). Errors are `{"error": "…"}`.
//!
//! # `GET /api/presence/<user id>`, `GET /api/nodes`
//! `{"user": id, "online": bool, "sessions": n, "nodes": [{"node": "<16 hex>", "sessions": n}]}` and
//! `{"nodes": [{"node": "<16 hex>", "connections": n, "last_seen_ms": ms}]}`, from the engine (every node of
//! the cluster); 503 `{"error": …}` when the engine cannot answer.

use std::sync::Arc;

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mesa_protocol::{Frame, OpCode};
use mesa_server::{Health, Mesa, PublishError, SendError, Target};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::forwarded::Network;
use crate::metrics::CliMetrics;

/// Mesa 1.5's internal event that closes the recipients' connections.
const DISCONNECT_CLIENT: &str = "DISCONNECT_CLIENT";

/// How long a presence or node query may wait for the engine before the API answers 503: a remote engine
/// bounds its own calls, this keeps an HTTP caller from waiting on one that does not.
const ENGINE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API handlers share.
#[derive(Debug)]
pub(crate) struct ApiState {
    /// The gateway.
    pub(crate) mesa: Mesa,
    /// The bearer key of the `/api/` routes; `None` disables them.
    pub(crate) key: Option<Secret>,
    /// Largest `POST /api/send` body in bytes.
    pub(crate) body_limit: usize,
    /// The counters of `mesa serve` itself, rendered after the gateway's.
    pub(crate) metrics: Arc<CliMetrics>,
    /// Peers whose `X-Forwarded-For` is believed (see `forwarded.rs`).
    pub(crate) trusted_proxies: Vec<Network>,
    /// The engine's own metrics (the Redis engine's counters), rendered last; `None` in memory.
    pub(crate) engine_metrics: Option<EngineMetrics>,
}

/// Renders an engine's own metric families in the Prometheus text format.
pub(crate) struct EngineMetrics(pub(crate) Box<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineMetrics")
    }
}

/// The application: the gateway at `gateway_path` and the API routes. The path must have been validated
/// (see `config::validate_gateway_path`): axum panics on a route that collides with another.
pub(crate) fn router(gateway_path: &str, state: ApiState) -> Router {
    let gateway = state.mesa.service();
    let trusted = Arc::new(state.trusted_proxies.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/send", post(send))
        .route("/api/presence/{user}", get(presence))
        .route("/api/nodes", get(nodes))
        .route_service(gateway_path, gateway)
        .fallback(not_found)
        .with_state(Arc::new(state))
        .layer(tower::util::MapRequestLayer::new(move |request| {
            crate::forwarded::apply(&trusted, request)
        }))
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Any other path: 404 `{"error": "not found"}`.
async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// `GET /healthz`: liveness plus the open connection count; `degraded` (still 200, see the module docs)
/// while the engine cannot reach its backend; 503 once a graceful shutdown has started.
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    if state.mesa.is_shutting_down() {
        let body = Json(json!({ "status": "shutting_down" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let connections = state.mesa.connection_count();
    match state.mesa.engine_health() {
        Health::Healthy => Json(json!({ "status": "ok", "connections": connections })),
        Health::Degraded { reason, since } => Json(json!({
            "status": "degraded",
            "connections": connections,
            "reason": reason,
            "since_ms": since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        })),
    }
    .into_response()
}

/// `GET /metrics`: the server's counters in the Prometheus text format.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    let mut text = state.mesa.metrics().render_prometheus();
    state.metrics.render(&mut text);
    crate::metrics::render_engine_health(&state.mesa.engine_health(), &mut text);
    if let Some(EngineMetrics(render)) = &state.engine_metrics {
        render(&mut text);
    }
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The body of `POST /api/send`: Mesa 1.5's Redis `ws` channel format. Unknown fields are refused, so that a
/// misspelt `recipients` cannot silently turn a private message into a broadcast.
/// The event proxy's answers use the same shape for their `send` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    /// The frame to send (`op`, `d`, `t`; `o` is dropped).
    pub(crate) message: Frame,
    /// `["*"]` or absent: everyone; otherwise these user ids.
    #[serde(default)]
    pub(crate) recipients: Option<Vec<String>>,
    /// User ids that must not receive the message.
    #[serde(default)]
    pub(crate) excluding: Option<Vec<String>>,
}

/// `POST /api/send` (see the module docs), counted in `mesa_api_requests_total` by outcome.
async fn send(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let (outcome, response) = send_inner(&state, request).await;
    state.metrics.api(outcome);
    response
}

/// The outcome label for a response that is not an accepted send.
fn refused(response: Response) -> (&'static str, Response) {
    let outcome = match response.status() {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "disabled",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "bad_request",
    };
    (outcome, response)
}

async fn send_inner(state: &ApiState, request: Request) -> (&'static str, Response) {
    // Authorise before reading the body, so that anonymous peers cannot make the server buffer anything.
    if let Some(response) = key_refusal(state, request.headers()) {
        return refused(response);
    }
    let body = match read_body(request, state.body_limit).await {
        Ok(body) => body,
        Err(response) => return refused(response),
    };
    let request: SendRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(problem) => {
            return refused(error(
                StatusCode::BAD_REQUEST,
                format!("invalid body: {problem}"),
            ))
        }
    };
    let SendRequest {
        message,
        recipients,
        excluding,
    } = request;

    if message.opcode() == Some(OpCode::Internal) {
        let response = disconnect(&state.mesa, &message, recipients, excluding).await;
        if response.status() == StatusCode::ACCEPTED {
            return ("disconnected", response);
        }
        return refused(response);
    }
    // Only what a client may receive: op 22, op 10, op 7 … from the API would break the protocol.
    if let Err(problem) = crate::proxy::client_frame(&message) {
        return refused(error(
            StatusCode::BAD_REQUEST,
            format!("message: {problem}; op 5 DISCONNECT_CLIENT closes connections"),
        ));
    }
    // `o` (Mesa 1.5 message options, `sync`) is read and stripped by the router: clients never see it.
    let target = Target::from_mesa(recipients, excluding);
    match state.mesa.send(&message, &target).await {
        Ok(delivery) => (
            "sent",
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "ok": true,
                    "queued": delivery.queued,
                    "slow_consumers": delivery.slow_consumers,
                })),
            )
                .into_response(),
        ),
        Err(problem) => refused(not_every_node(&problem, "queued")),
    }
}

/// Op 5 `DISCONNECT_CLIENT`: closes the recipients' connections (everyone for `["*"]`, minus `excluding`) with
/// 1000, as Mesa 1.5 nodes do when it arrives on the `ws` channel.
async fn disconnect(
    mesa: &Mesa,
    message: &Frame,
    recipients: Option<Vec<String>>,
    excluding: Option<Vec<String>>,
) -> Response {
    if message.t.as_deref() != Some(DISCONNECT_CLIENT) {
        return error(
            StatusCode::BAD_REQUEST,
            "op 5 (internal event) supports only t = \"DISCONNECT_CLIENT\"",
        );
    }
    // Unlike a send, a missing `recipients` is refused: disconnecting everyone must be asked for with `["*"]`.
    if recipients.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "DISCONNECT_CLIENT needs recipients: user ids, or [\"*\"] for everyone",
        );
    }
    match mesa
        .disconnect(&Target::from_mesa(recipients, excluding), 1000, "")
        .await
    {
        Ok(delivery) => {
            let answer =
                json!({ "ok": true, "disconnected": delivery.queued, "nodes": delivery.nodes });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(problem) => not_every_node(&problem, "disconnected"),
    }
}

/// 503 for a send or disconnect the engine could not hand to every node. This node's own sessions were served
/// first, so the answer says how many (under `local_key`): a caller that retries sends those again.
fn not_every_node(problem: &SendError, local_key: &str) -> Response {
    let (message, local) = match problem {
        SendError::Engine(PublishError { local, cause }) => (
            format!(
                "other nodes were not reached ({cause}); this node's own sessions were: {} of them",
                local.queued
            ),
            local.queued,
        ),
        other => (other.to_string(), 0),
    };
    let body = json!({ "error": message, local_key: local });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /api/presence/<user id>`: where the user is connected, on every node (see the module docs).
async fn presence(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Response {
    if let Some(response) = key_refusal(&state, &headers) {
        return response;
    }
    let Ok(Path(user)) = user else {
        return error(
            StatusCode::BAD_REQUEST,
            "the user id in the path is not valid percent-encoded UTF-8",
        );
    };
    let presence = match ask_engine(state.mesa.presence(&user)).await {
        Ok(presence) => presence,
        Err(response) => return response,
    };
    let nodes: Vec<_> = presence
        .nodes
        .iter()
        .map(|(node, sessions)| json!({ "node": node.to_string(), "sessions": sessions }))
        .collect();
    Json(json!({
        "user": user,
        "online": presence.is_online(),
        "sessions": presence.sessions(),
        "nodes": nodes,
    }))
    .into_response()
}

/// `GET /api/nodes`: the live nodes of the engine, with their connection counts.
async fn nodes(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(response) = key_refusal(&state, &headers) {
        return response;
    }
    let nodes = match ask_engine(state.mesa.nodes()).await {
        Ok(nodes) => nodes,
        Err(response) => return response,
    };
    let nodes: Vec<_> = nodes
        .iter()
        .map(|status| {
            json!({
                "node": status.node.to_string(),
                "connections": status.connections,
                "last_seen_ms": status.last_seen_ms,
            })
        })
        .collect();
    Json(json!({ "nodes": nodes })).into_response()
}

/// Awaits an engine query, at most [`ENGINE_QUERY_TIMEOUT`]; 503 with the reason when it fails or is late.
async fn ask_engine<T>(
    query: impl std::future::Future<Output = Result<T, mesa_server::EngineError>>,
) -> Result<T, Response> {
    match tokio::time::timeout(ENGINE_QUERY_TIMEOUT, query).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(problem)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, problem.to_string())),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the engine did not answer within {} s",
                ENGINE_QUERY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// The `/api/` routes' key check: the refusal, if any. 404 when no key is configured (the API is disabled),
/// 401 without the key.
fn key_refusal(state: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let Some(key) = &state.key else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the HTTP API is disabled: set [api] key or key_env (MESA_API__KEY or MESA_API__KEY_ENV) to enable it",
        ));
    };
    if !authorized(headers, key) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer <api.key>)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Some(response);
    }
    None
}

/// Whether the request carries `Authorization: Bearer <key>`. Compared in constant time so that response
/// timing does not reveal how much of a guessed key is right (its length may still show).
fn authorized(headers: &HeaderMap, key: &Secret) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, token)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"Bearer ") && bool::from(token.ct_eq(key.expose().as_bytes()))
}

/// Reads at most `limit` bytes of body: 413 past it (early when `Content-Length` says so), 400 when the body
/// cannot be read.
async fn read_body(request: Request, limit: usize) -> Result<bytes::Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes (api.max_body_bytes)"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => Ok(bytes),
        Err(problem) if is_length_limit(&problem) => Err(too_large()),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
    }
}

/// Whether a body error is the length limit (anywhere in its source chain).
fn is_length_limit(problem: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(problem);
    while let Some(current) = source {
        if current
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return true;
        }
        source = current.source();
    }
    false
}

#[cfg(test)]
mod engine_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn routes_beat_a_root_gateway_and_healthz_reports_shutdown() {
        let mesa = Mesa::builder().build();
        let app = router(
            "/",
            ApiState {
                mesa: mesa.clone(),
                key: None,
                body_limit: 1024,
                metrics: Default::default(),
                trusted_proxies: Vec::new(),
                engine_metrics: None,
            },
        );
        assert_eq!(
            call(&app, "GET", "/healthz").await,
            (StatusCode::OK, json!({"status": "ok", "connections": 0}))
        );
        assert_eq!(call(&app, "GET", "/metrics").await.0, StatusCode::OK);
        assert_eq!(
            call(&app, "POST", "/api/send").await.0,
            StatusCode::NOT_FOUND
        );
        // The gateway answers a plain GET on its path: upgrade required.
        assert_eq!(call(&app, "GET", "/").await.0, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(call(&app, "GET", "/other").await.0, StatusCode::NOT_FOUND);

        assert!(mesa.shutdown().await);
        assert_eq!(
            call(&app, "GET", "/healthz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "shutting_down"})
            )
        );
    }

    #[test]
    fn bearer_key_is_checked() {
        let key = Secret::new("k3y");
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header"),
            );
            headers
        };
        assert!(authorized(&headers("Bearer k3y"), &key));
        assert!(authorized(&headers("bearer k3y"), &key));
        assert!(!authorized(&headers("Bearer k3"), &key));
        assert!(!authorized(&headers("Bearer k3yy"), &key));
        assert!(!authorized(&headers("Basic k3y"), &key));
        assert!(!authorized(&headers("Bearer"), &key));
        assert!(!authorized(&HeaderMap::new(), &key));
    }
}
