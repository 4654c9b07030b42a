//! The HTTP side of `mesa serve`: the gateway and a small API on one port.
//!
//! | route | answer |
//! |-------|--------|
//! | `<server.path>` (default `/`) | the WebSocket gateway (`mesa.service()`) |
//! | `GET /healthz` | 200 `{"status":"ok","connections":N}`; 503 `{"status":"shutting_down"}` during shutdown |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/send` | sends a message to clients (below) |
//!
//! The gateway is an exact route like the others, so even at `/` the API routes win; the gateway path must
//! not be `/healthz`, `/metrics` or under `/api/` (checked at startup).
//!
//! # `POST /api/send`
//! Requires `Authorization: Bearer <api.key>`. The body is Mesa 1.5's Redis `ws` channel message, so services
//! that published to Redis can post the same JSON:
//! `{"message": {"op": 0, "d": …, "t": "…"}, "recipients": ["*"] | ["id", …], "excluding": ["id", …]}`.
//! `recipients` is optional (everyone), as is `excluding`; an empty `recipients` list reaches nobody.
//! `{"op": 5, "t": "DISCONNECT_CLIENT"}` closes the recipients' connections with 1000 instead of sending.
//!
//! Only what clients may receive is sent: a dispatch (op 0, with a `t`); any other opcode (op 22, op 10, op 7, …)
//! is refused with 400.
//!
//! Answers: 202 `{"ok":true}`; 400 malformed body or an opcode clients may not receive; 401 missing or wrong key; 404 when no key is configured
//! (the API is disabled); 413 body larger than `api.max_body_bytes`. Errors are `{"error": "…"}`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mesa_protocol::{Frame, OpCode};
use mesa_server::{Mesa, Target};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::forwarded::Network;
use crate::metrics::CliMetrics;

/// Mesa 1.5's internal event that closes the recipients' connections.
const DISCONNECT_CLIENT: &str = "DISCONNECT_CLIENT";

/// What the API handlers share.
#[derive(Debug)]
pub(crate) struct ApiState {
    /// The gateway.
    pub(crate) mesa: Mesa,
    /// The bearer key of `POST /api/send`; `None` disables it.
    pub(crate) key: Option<Secret>,
    /// Largest `POST /api/send` body in bytes.
    pub(crate) body_limit: usize,
    /// The counters of `mesa serve` itself, rendered after the gateway's.
    pub(crate) metrics: Arc<CliMetrics>,
    /// Peers whose `X-Forwarded-For` is believed (see `forwarded.rs`).
    pub(crate) trusted_proxies: Vec<Network>,
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

/// `GET /healthz`: liveness plus the open connection count; 503 once a graceful shutdown has started.
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    if state.mesa.is_shutting_down() {
        let body = Json(json!({ "status": "shutting_down" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let connections = state.mesa.connection_count();
    Json(json!({ "status": "ok", "connections": connections })).into_response()
}

/// `GET /metrics`: the server's counters in the Prometheus text format.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    let mut text = state.mesa.metrics().render_prometheus();
    state.metrics.render(&mut text);
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
    let Some(key) = &state.key else {
        return refused(error(
            StatusCode::NOT_FOUND,
            "the send API is disabled: set [api] key or key_env (MESA_API__KEY or MESA_API__KEY_ENV) to enable it",
        ));
    };
    if !authorized(request.headers(), key) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer <api.key>)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
        mut message,
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
    // `o` holds server-side options of a message (Mesa 1.5 `sync`); clients never see it.
    message.o = None;
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
        Err(problem) => refused(error(StatusCode::SERVICE_UNAVAILABLE, problem.to_string())),
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
        Err(problem) => error(StatusCode::SERVICE_UNAVAILABLE, problem.to_string()),
    }
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
