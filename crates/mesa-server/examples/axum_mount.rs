//! Run with: `cargo run -p mesa-server --example axum_mount` (listens on 127.0.0.1:3000, Ctrl-C to stop).
//!
//! Mesa mounted inside an existing axum application (Mesa 1.5's `server` option): the gateway lives at `/ws`
//! next to the app's own routes, and an HTTP route broadcasts to every authenticated WebSocket client.
//! Clients authenticate with `{"op":2,"d":{"token":"user:<id>"}}` (authentication is required: an anonymous
//! connection gets no broadcast, and is closed with 4006 after the authentication timeout).
//! Try: `cargo run -p mesa-client --example chat -- --url ws://127.0.0.1:3000/ws --token user:alice`, then
//! `curl -X POST 127.0.0.1:3000/announce -d hello`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use mesa_server::{AuthError, Frame, Identity, Mesa};
use serde_json::{json, Value};

async fn announce(State(mesa): State<Mesa>, body: String) -> String {
    match mesa
        .broadcast(&Frame::dispatch("ANNOUNCEMENT", json!({ "text": body })))
        .await
    {
        Ok(delivery) => format!("queued for {} sessions\n", delivery.queued),
        Err(error) => format!("not sent: {error}\n"),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mesa = Mesa::builder()
        // A real app verifies a signed token here (or runs `mesa serve` with `auth.mode = "jwt"`).
        .authenticate(|data, _client| async move {
            match data
                .get("token")
                .and_then(Value::as_str)
                .and_then(|t| t.strip_prefix("user:"))
            {
                Some(id) if !id.is_empty() => Ok(Identity::new(id, json!({ "id": id }))),
                _ => Err(AuthError::new("expected a token of the form user:<id>")),
            }
        })
        .authentication_required(true)
        // Echo: every dispatch goes back to its sender.
        .on_message(|client, frame| async move {
            let _ = client.send(&frame);
        })
        .build();

    let app = Router::new()
        .route(
            "/",
            get(|| async { "an existing app; the gateway is at /ws\n" }),
        )
        .route("/announce", post(announce))
        .route_service("/ws", mesa.service())
        .with_state(mesa.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!(
        "app on http://{}/, gateway on ws://{0}/ws",
        listener.local_addr()?
    );
    // `serve_with` adds the gateway's header deadline, remote addresses and graceful shutdown;
    // `axum::serve(listener, app)` works too.
    mesa.serve_with(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
