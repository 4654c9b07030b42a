//! Run with: `cargo run -p mesa-server --example echo_broadcast` (listens on 127.0.0.1:4000, Ctrl-C to stop).
//!
//! A small chat gateway: clients authenticate with `{"op":2,"d":{"token":"user:<id>"}}`, `ECHO` dispatches
//! come back to the sender, `SAY {text}` goes to everyone else as `SAY {from, text}`, and `WHISPER {to, text}`
//! to one user's connections as `WHISPER {from, text}`. The same shapes as `mesa serve` with
//! `examples/chat_backend.py`, so the chat client works with both:
//! `cargo run -p mesa-client --example chat -- --url ws://127.0.0.1:4000/ --token user:alice`.

use mesa_server::{AuthError, Frame, Identity, Mesa, Session, Target};
use serde_json::{json, Value};

/// The demo's authentication: any token of the form `user:<id>`. A real app verifies a signed token.
async fn check_token(data: Value, _session: Session) -> Result<Identity, AuthError> {
    let token = data
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match token.strip_prefix("user:") {
        Some(id) if !id.is_empty() => Ok(Identity::new(
            id,
            json!({ "id": id, "name": format!("User {id}") }),
        )),
        _ => Err(AuthError::new("expected a token of the form user:<id>")),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,mesa_server=debug")
        .init();

    let mesa = Mesa::builder()
        .authenticate(check_token)
        .on_authenticated(|client| async move {
            tracing::info!(id = ?client.id(), addr = ?client.remote_addr(), "authenticated");
        })
        .on_message(|client, frame| {
            async move {
                // The handle of the server this client belongs to, to send to other clients.
                let Some(mesa) = client.server() else { return };
                let sender = client.id().unwrap_or_else(|| format!("guest-{}", client.connection_id()));
                match frame.t.as_deref() {
                    Some("ECHO") => {
                        let _ = client.send(&frame);
                    }
                    Some("SAY") => {
                        let text = frame.d.get("text").cloned().unwrap_or(Value::Null);
                        let message = Frame::dispatch("SAY", json!({ "from": sender, "text": text }));
                        let _ = mesa.send(&message, &Target::all().excluding([sender])).await;
                    }
                    Some("WHISPER") => {
                        let to = frame.d.get("to").and_then(Value::as_str).unwrap_or_default().to_string();
                        let text = frame.d.get("text").cloned().unwrap_or(Value::Null);
                        let message = Frame::dispatch("WHISPER", json!({ "from": sender, "text": text }));
                        let _ = mesa.send_to([to], &message).await;
                    }
                    _ => {}
                }
            }
        })
        .on_disconnection(|client, why| async move {
            tracing::info!(id = ?client.id(), code = why.code, reason = %why.reason, "disconnected");
        })
        .build();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
    tracing::info!("listening on ws://{}/", listener.local_addr()?);
    mesa.serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
