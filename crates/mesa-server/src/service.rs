//! The HTTP side: validating an upgrade request and handing the upgraded socket to a connection task.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::ids::ConnectionId;
use crate::metrics::Rejection;
use crate::outbox::Outbox;
use crate::server::{Inner, Mesa};
use crate::session::{KeptHeaders, Session};

/// The peer address of a request, inserted as a request extension by the standalone server.
/// Insert it yourself (or use axum's `ConnectInfo`) to give [`Session::remote_addr`](crate::Session::remote_addr) a value when mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// A tower service that turns WebSocket upgrade requests into Mesa connections.
///
/// Answers `101 Switching Protocols` to a valid upgrade; `426` to a request without one; `400` to a malformed
/// one; `403` when `Origin` is not allowed; `503` when `limits.max_connections` is reached or the server is
/// shutting down.
#[derive(Clone, Debug)]
pub struct MesaService {
    mesa: Mesa,
}

impl Mesa {
    /// A tower service that upgrades requests to Mesa connections. Mount it on a path of an axum app with
    /// `Router::route_service(path, mesa.service())`, or serve it with hyper.
    pub fn service(&self) -> MesaService {
        MesaService { mesa: self.clone() }
    }
}

impl<B> tower_service::Service<Request<B>> for MesaService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(upgrade(&self.mesa.inner, request)))
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn reject(
    inner: &Inner,
    why: Rejection,
    status: StatusCode,
    body: &'static str,
) -> Response<Full<Bytes>> {
    inner.metrics.rejected(why);
    tracing::debug!(reason = why.label(), "upgrade refused");
    let mut response = plain(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn header_has_token(
    request_headers: &http::HeaderMap,
    name: header::HeaderName,
    token: &str,
) -> bool {
    request_headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// Frees a connection slot when the connection (or a failed upgrade) ends.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

fn remote_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    if let Some(RemoteAddr(addr)) = request.extensions().get::<RemoteAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0);
    }
    None
}

fn upgrade<B>(inner: &Arc<Inner>, mut request: Request<B>) -> Response<Full<Bytes>> {
    if inner.shutdown.is_cancelled() {
        return reject(
            inner,
            Rejection::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        );
    }
    let headers = request.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        let mut response = reject(
            inner,
            Rejection::BadRequest,
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket upgrade required\n",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    if request.method() != Method::GET || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return reject(
            inner,
            Rejection::BadRequest,
            StatusCode::BAD_REQUEST,
            "invalid WebSocket upgrade\n",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = reject(
            inner,
            Rejection::BadRequest,
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version\n",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return reject(
            inner,
            Rejection::BadRequest,
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    if !inner.config.allowed_origins.is_empty() && !origin_allowed(inner, headers) {
        return reject(
            inner,
            Rejection::Origin,
            StatusCode::FORBIDDEN,
            "origin not allowed\n",
        );
    }
    let max = inner.config.limits.max_connections;
    if inner
        .slots
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        return reject(
            inner,
            Rejection::Capacity,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections\n",
        );
    }
    let slot = Slot(inner.clone());

    let connection_id = ConnectionId::new(
        inner.node_id,
        inner.next_connection_id.fetch_add(1, Ordering::Relaxed),
    );
    let limits = &inner.config.limits;
    let server: std::sync::Weak<dyn std::any::Any + Send + Sync> =
        Arc::downgrade(inner) as std::sync::Weak<Inner>;
    let session = Session::new(
        connection_id,
        remote_addr(&request),
        KeptHeaders::keep(
            request.headers(),
            &inner.config.headers.keep,
            inner.config.headers.max_bytes,
        ),
        Outbox::new(limits.outbound_queue, limits.outbound_queue_bytes),
        server,
    );
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ws_config = inner.ws_config;
    // Boxed, and made outside the task's future: what the upgrade needs (its config included) must not stay
    // in the long-lived connection future, where every idle connection would pay for it.
    let socket = Box::pin(async move {
        let upgraded = on_upgrade.await.ok()?;
        let io = crate::socket::BufferedSocket::new(TokioIo::new(upgraded));
        Some(WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await)
    });
    let task_inner = inner.clone();
    inner.tasks.spawn(async move {
        let _slot = slot;
        match socket.await {
            Some(ws) => crate::connection::run(ws, session, task_inner).await,
            None => {
                tracing::debug!(connection = %session.connection_id(), "upgrade did not complete")
            }
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Whether the request's `Origin` is in `allowed_origins` (compared as origins), or absent and
/// `require_origin` is off. A refusal is logged with the value (escaped, bounded) so that an operator can
/// tell a misconfigured list from an attack.
fn origin_allowed(inner: &Inner, headers: &http::HeaderMap) -> bool {
    let config = &inner.config;
    let Some(value) = headers.get(header::ORIGIN) else {
        if config.require_origin {
            tracing::info!("upgrade refused: no Origin header (require_origin)");
        }
        return !config.require_origin;
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let allowed = crate::origin::Origin::parse(&text)
        .is_some_and(|origin| inner.allowed_origins.contains(&origin));
    if !allowed {
        let shown: String = text.chars().take(200).collect();
        tracing::info!(origin = ?shown, "upgrade refused: origin not in allowed_origins");
    }
    allowed
}
