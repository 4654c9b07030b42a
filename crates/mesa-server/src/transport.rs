//! The standalone listener: accepts TCP connections, speaks HTTP/1.1 with a header deadline, and hands
//! upgrades to [`MesaService`](crate::MesaService) (alone, or inside the application's own service).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::server::Mesa;
use crate::service::RemoteAddr;

type BoxError = Box<dyn StdError + Send + Sync>;

impl Mesa {
    /// Serves this gateway alone on `listener` (the endpoint at `config.path`, 404 elsewhere) until
    /// `shutdown` resolves, then shuts down gracefully (see [`Mesa::shutdown`]).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let path = self.config().path.clone();
        let service = self.service();
        let app = tower::service_fn(move |request: Request<Incoming>| {
            let service = service.clone();
            let matches = request.uri().path() == path;
            async move {
                if matches {
                    service.oneshot(request).await
                } else {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    Ok(response)
                }
            }
        });
        self.serve_with(listener, app, shutdown).await
    }

    /// Serves an application (for example an axum `Router` that mounts [`Mesa::service`] and other routes)
    /// on `listener` with this server's limits (header deadline, graceful shutdown) until `shutdown` resolves.
    ///
    /// Each request carries a [`RemoteAddr`] extension. On shutdown the listener closes, WebSocket clients
    /// get op 7 and 1012, and open HTTP requests get `shutdown_timeout_ms` to finish.
    pub async fn serve_with<S, B>(
        &self,
        listener: TcpListener,
        app: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_with_handshake(
            listener,
            app,
            |stream| std::future::ready(Ok(stream)),
            shutdown,
        )
        .await
    }

    /// [`Mesa::serve_with`] with a handshake in front of HTTP on every accepted connection: a TLS
    /// acceptor, for example (`mesa serve` terminates `wss://` this way). The handshake runs on the
    /// connection's own task, bounded by `limits.handshake_timeout_ms`; one that fails or times out drops
    /// that connection (logged at debug) and nothing else.
    pub async fn serve_with_handshake<S, B, H, HF, IO>(
        &self,
        listener: TcpListener,
        app: S,
        handshake: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        H: Fn(TcpStream) -> HF + Clone + Send + 'static,
        HF: Future<Output = io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake_timeout =
            Duration::from_millis(self.config().limits.handshake_timeout_ms.max(1));
        let stop_http = CancellationToken::new();
        let http_tasks = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, addr) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(RemoteAddr(addr));
                app.clone().oneshot(request)
            });
            let stop = stop_http.clone();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout);
            let handshake = handshake.clone();
            http_tasks.spawn(async move {
                let io = match tokio::time::timeout(handshake_timeout, handshake(stream)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(error)) => {
                        tracing::debug!(%addr, %error, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "handshake timed out");
                        return;
                    }
                };
                let connection = builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%addr, %error, "HTTP connection ended with an error");
                        }
                    }
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down");
        // One deadline for everything: WebSocket clients and plain HTTP requests drain in parallel.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout();
        stop_http.cancel();
        http_tasks.close();
        let finished = self.shutdown_until(deadline).await;
        let _ = tokio::time::timeout_at(deadline, http_tasks.wait()).await;
        if !finished {
            tracing::warn!("some connections did not close before the shutdown deadline");
        }
        Ok(())
    }
}
