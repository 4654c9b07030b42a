//! An in-process `mesa-server` for tests, on `127.0.0.1`, with the authentication and echo handler most tests
//! want.

use std::net::SocketAddr;
use std::time::Duration;

use mesa_server::{AuthError, Identity, Mesa, MesaBuilder};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ws::WsTarget;

/// How long [`TestServer::stop`] waits for `serve` to return.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Mesa`] serving on a local port in a task of the test's runtime.
pub struct TestServer {
    /// The server handle, for sends, metrics and client look-ups.
    pub mesa: Mesa,
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// The gateway's URL, `ws://<addr>/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Starts graceful shutdown (op 7 to every client, then close 1012) and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await;
    }
}

impl WsTarget for TestServer {
    fn ws_url(&self) -> String {
        self.url()
    }
}

/// Builds `builder` and serves it on a fresh port of 127.0.0.1.
pub async fn start(builder: MesaBuilder) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve(builder, listener)
}

/// Builds `builder` and serves it on `addr`, a port a previous server used (a restart).
pub async fn start_on(builder: MesaBuilder, addr: SocketAddr) -> TestServer {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the same port again");
    serve(builder, listener)
}

fn serve(builder: MesaBuilder, listener: TcpListener) -> TestServer {
    let addr = listener.local_addr().expect("addr");
    let mesa = builder.build();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = mesa.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    TestServer {
        mesa,
        addr,
        stop: Some(stop),
        task,
    }
}

/// Adds token authentication: token `user:<id>` authenticates as `<id>` with user `{"id": id}`; anything else
/// is refused with the reason `invalid token`.
pub fn with_token_auth(builder: MesaBuilder) -> MesaBuilder {
    builder.authenticate(|data, _client| async move {
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match token.strip_prefix("user:") {
            Some(id) => Ok(Identity::new(id, json!({ "id": id }))),
            None => Err(AuthError::new("invalid token")),
        }
    })
}

/// A builder with [`with_token_auth`] whose message handler echoes every dispatch back to its sender.
pub fn echo_server() -> MesaBuilder {
    with_token_auth(Mesa::builder()).on_message(|client, frame| async move {
        let _ = client.send(&frame);
    })
}
