//! The task that owns one WebSocket: the glue between the socket and the I/O-free [`Session`].
//!
//! One task per connection, one `select!` over: shutdown, the outbound queue, the socket, and the session's
//! next deadline. Inbound frames are decoded here, classified by the session and acted on; outbound frames are
//! drained from the [`Outbox`](crate::outbox::Outbox) and written as one batch.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use mesa_protocol::{CloseCode, Frame, Inbound, OpCode, Session, TimerAction};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::client::Client;
use crate::error::ConnectionError;
use crate::events::{BoxFuture, Disconnection};
use crate::server::Inner;

/// Messages handled back to back before the queued replies are written.
const READ_BATCH: usize = 64;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the loop ended.
enum End {
    /// The server closes with this code and reason.
    Close(u16, String),
    /// Graceful shutdown: op 7, then 1012.
    Shutdown,
    /// The client sent a close frame.
    PeerClosed(u16, String),
    /// The socket failed or reached EOF without a close frame.
    Dropped,
}

impl End {
    fn close(code: CloseCode) -> End {
        End::Close(code.code(), code.reason().to_string())
    }
}

/// What one inbound message calls for, decided without awaiting.
enum Step {
    Continue,
    End(End),
    Fail(Box<ConnectionError>),
    Reply(Utf8Bytes),
    Authenticate(serde_json::Value),
    Dispatch(BoxFuture<()>),
}

struct Connection<S> {
    ws: WebSocketStream<S>,
    client: Client,
    session: Session,
    inner: Arc<Inner>,
    write_timeout: Duration,
}

/// The connection task's future. Not an `async fn`: its arguments would stay in the future next to the
/// `Connection` they are moved into, and every idle connection would pay for both.
pub(crate) fn run<S>(
    ws: WebSocketStream<S>,
    client: Client,
    inner: Arc<Inner>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Box::new(Connection {
        session: Session::new(&inner.rules, Instant::now().into_std()),
        write_timeout: Duration::from_millis(inner.config.limits.write_timeout_ms.max(1)),
        ws,
        client,
        inner,
    });
    async move { connection.run().await }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) {
        let inner = self.inner.clone();
        // Registered before Hello is written, so that a client that has read its Hello already receives every
        // send. Frames queued meanwhile wait in the outbox, which is drained only after Hello.
        inner.registry.insert(self.client.clone());
        inner.metrics.connection_opened();
        let hello = self.inner.hello.clone();
        if self.write(vec![hello]).await.is_err() {
            inner.registry.remove(&self.client);
            inner.metrics.connection_closed(None);
            return;
        }
        // Rare paths are boxed so that their state does not enlarge every idle connection's future.
        Box::pin(inner.hooks.connection(&self.client)).await;

        let end = self.serve().await;
        let (disconnection, server_code) = Box::pin(self.finish(end)).await;

        inner.registry.remove(&self.client);
        inner.metrics.connection_closed(server_code);
        Box::pin(inner.hooks.disconnection(&self.client, disconnection)).await;
    }

    async fn serve(&mut self) -> End {
        let inner = self.inner.clone();
        loop {
            let deadline = self.session.next_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return End::Shutdown,
                () = self.client.shared.outbox.ready() => {
                    if let Some(end) = self.flush_outbox().await {
                        return end;
                    }
                }
                // Before the socket, so that a client with constant input cannot delay its own deadlines.
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    if let Some(end) = self.on_deadline().await {
                        return end;
                    }
                }
                message = self.ws.next() => {
                    if let Some(end) = self.on_socket(message).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles one message from the socket, then up to [`READ_BATCH`] more that are already buffered, so
    /// that the replies they cause leave in one write instead of one write each.
    async fn on_socket(&mut self, mut message: Option<Result<Message, WsError>>) -> Option<End> {
        for _ in 0..READ_BATCH {
            match message {
                None => return Some(End::Dropped),
                Some(message) => {
                    if let Some(end) = self.on_message(message).await {
                        return Some(end);
                    }
                }
            }
            // `now_or_never` polls once: a message already received (or EOF) is handled now, anything
            // else waits for the next turn of the loop, which polls the socket with a real waker.
            message = self.ws.next().now_or_never()?;
        }
        None
    }

    async fn flush_outbox(&mut self) -> Option<End> {
        let mut batch = Vec::new();
        let close = self.client.shared.outbox.drain(&mut batch);
        if !batch.is_empty() {
            if let Err(end) = self.write(batch).await {
                return Some(end);
            }
        }
        close.map(|close| End::Close(close.code, close.reason))
    }

    async fn on_deadline(&mut self) -> Option<End> {
        loop {
            // Encoded before the write, so that the frame is not held across the await.
            let beat: Utf8Bytes = match self.session.on_timeout(Instant::now().into_std())? {
                TimerAction::SendHeartbeat(frame) => frame.encode().into(),
                TimerAction::Close(code) => return Some(End::close(code)),
                _ => return None,
            };
            if let Err(end) = self.write(vec![beat]).await {
                return Some(end);
            }
        }
    }

    /// Acts on one message from the socket. The message is classified synchronously first, so that the
    /// (large) message and error values are not part of the connection's future.
    async fn on_message(&mut self, message: Result<Message, WsError>) -> Option<End> {
        match self.classify(message) {
            Step::Continue => None,
            Step::End(end) => Some(end),
            Step::Fail(error) => Some(Box::pin(self.fail(*error)).await),
            Step::Reply(text) => self.write(vec![text]).await.err(),
            Step::Authenticate(data) => Box::pin(self.authenticate(data)).await,
            Step::Dispatch(handled) => {
                handled.await;
                None
            }
        }
    }

    fn classify(&mut self, message: Result<Message, WsError>) -> Step {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => return Step::End(End::close(CloseCode::UnsupportedData)),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Step::End(End::PeerClosed(code, reason));
            }
            // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return Step::Continue,
            Err(error) => {
                let error = ConnectionError::WebSocket(error);
                if error.close_code().is_none() {
                    // The peer vanished (EOF, reset): a drop, not an error worth reporting.
                    return Step::End(End::Dropped);
                }
                return Step::Fail(Box::new(error));
            }
        };
        self.inner.metrics.frame_received();
        let frame = match Frame::decode(&text) {
            Ok(frame) => frame,
            Err(error) => return Step::Fail(Box::new(ConnectionError::Decode(error))),
        };
        match self.session.on_frame(frame, Instant::now().into_std()) {
            Inbound::HeartbeatAck | Inbound::VersionAccepted => Step::Continue,
            Inbound::HeartbeatRequest => {
                Step::Reply(Frame::new(OpCode::HeartbeatAck, json!({})).encode().into())
            }
            Inbound::Authenticate { data, .. } => Step::Authenticate(data),
            Inbound::Dispatch(frame) => match self.inner.hooks.message(&self.client, frame) {
                Some(handled) => Step::Dispatch(handled),
                None => Step::Continue,
            },
            Inbound::Ignored { op } => {
                tracing::debug!(connection = %self.client.connection_id(), op, "ignored frame");
                self.inner.metrics.unknown_opcode();
                Step::Continue
            }
            Inbound::Close(code) => Step::End(End::close(code)),
            _ => Step::Continue,
        }
    }

    async fn fail(&mut self, error: ConnectionError) -> End {
        let code = error.close_code();
        let end = match code {
            Some(code) => End::Close(code.code(), close_reason(code, &error)),
            None => End::Dropped,
        };
        self.inner.hooks.error(&self.client, error).await;
        end
    }

    async fn authenticate(&mut self, data: serde_json::Value) -> Option<End> {
        let inner = self.inner.clone();
        let config = &inner.config.authentication;
        let outcome = match &inner.hooks.authenticate {
            None => Err("authentication is not configured".to_string()),
            Some(check) => {
                let limit = Duration::from_millis(config.timeout_ms.max(1));
                match timeout(limit, check(data, self.client.clone())).await {
                    Ok(Ok(identity)) => Ok(identity),
                    Ok(Err(refusal)) => Err(refusal.reason().to_string()),
                    // A slow check is the server's problem, not a refusal: the client may retry later.
                    Err(_) if config.disconnect_on_fail => {
                        let reason = "authentication check timed out".to_string();
                        return Some(End::Close(CloseCode::TryAgainLater.code(), reason));
                    }
                    Err(_) => Err("authentication check timed out".to_string()),
                }
            }
        };
        let identity = match outcome {
            Ok(identity) => identity,
            Err(reason) if config.disconnect_on_fail => {
                return Some(End::Close(CloseCode::AuthenticationFailed.code(), reason));
            }
            Err(reason) => {
                let refused = Frame::new(OpCode::InvalidSession, json!({ "reason": reason }));
                return self.write(vec![refused.encode().into()]).await.err();
            }
        };
        if self
            .client
            .stored_identity()
            .is_some_and(|current| *current.id != *identity.id)
        {
            return Some(End::close(CloseCode::AlreadyAuthenticated));
        }
        let user = if config.send_user_object {
            identity.user.clone()
        } else {
            json!({})
        };
        self.client.set_identity(identity);
        self.session.authenticated();
        let ack = Frame::new(OpCode::AuthenticationAck, user);
        if let Err(end) = self.write(vec![ack.encode().into()]).await {
            return Some(end);
        }
        inner.hooks.authenticated(&self.client).await;
        None
    }

    /// Writes frames as one batch, bounded by the write timeout.
    async fn write(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), End> {
        let count = frames.len();
        let ws = &mut self.ws;
        let written = timeout(self.write_timeout, async move {
            for text in frames {
                ws.feed(Message::Text(text)).await?;
            }
            ws.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.inner.metrics.frames_sent(count);
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::debug!(connection = %self.client.connection_id(), %error, "write failed");
                Err(End::Dropped)
            }
            Err(_) => Err(Box::pin(self.fail(ConnectionError::WriteTimeout)).await),
        }
    }

    /// Sends what the end calls for, runs the closing handshake, and says how the connection ended.
    async fn finish(&mut self, end: End) -> (Disconnection, Option<u16>) {
        match end {
            End::Close(code, reason) => {
                self.close(code, &reason).await;
                let disconnection = Disconnection {
                    code,
                    reason,
                    by_server: true,
                };
                (disconnection, Some(code))
            }
            End::Shutdown => {
                let reconnect = Frame::new(OpCode::Reconnect, json!({}));
                let _ = self.write(vec![reconnect.encode().into()]).await;
                let code = CloseCode::ServiceRestart;
                self.close(code.code(), code.reason()).await;
                let disconnection = Disconnection {
                    code: code.code(),
                    reason: code.reason().into(),
                    by_server: true,
                };
                (disconnection, Some(code.code()))
            }
            End::PeerClosed(code, reason) => {
                // tungstenite queued the close reply; send it.
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                let disconnection = Disconnection {
                    code,
                    reason,
                    by_server: false,
                };
                (disconnection, None)
            }
            End::Dropped => {
                let disconnection = Disconnection {
                    code: 1006,
                    reason: String::new(),
                    by_server: false,
                };
                (disconnection, None)
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        let ws = &mut self.ws;
        let _ = timeout(CLOSE_TIMEOUT, async move {
            if ws.close(Some(frame)).await.is_ok() {
                // Wait for the client's close reply (or EOF) so the client sees a clean close.
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn close_reason(code: CloseCode, error: &ConnectionError) -> String {
    match error {
        ConnectionError::Decode(_) => {
            truncate_reason(&format!("{}: {error}", code.reason())).to_string()
        }
        _ => code.reason().to_string(),
    }
}

/// A close frame's reason is at most 123 bytes.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Every open connection holds one task future and one boxed `Connection`: their sizes are a direct
    /// part of the memory per idle connection, so a change that inflates them should be a conscious one.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let mesa = crate::Mesa::builder().build();
        let (socket, _peer) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(mesa.inner.ws_config))
            .await;
        let client = Client::new(
            crate::ConnectionId(1),
            None,
            Default::default(),
            16,
            std::sync::Weak::new(),
        );
        let task = run(ws, client, mesa.inner.clone());
        let (task_size, connection_size) = (
            std::mem::size_of_val(&task),
            std::mem::size_of::<Connection<tokio::io::DuplexStream>>(),
        );
        println!("task future {task_size} B, boxed connection {connection_size} B");
        assert!(
            task_size <= 1280,
            "the connection task future grew to {task_size} bytes"
        );
        assert!(
            connection_size <= 640,
            "Connection grew to {connection_size} bytes"
        );
    }
}
