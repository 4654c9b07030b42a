//! Application hooks: async event handlers set on the builder, and synchronous middleware.
//!
//! Handlers run on the connection's own task, in the order its frames arrived: a handler that awaits
//! delays that connection's next frame (and only that connection's). Spawn a task for long work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mesa_protocol::Frame;
use serde_json::Value;

use crate::client::{Client, Identity};
use crate::error::{AuthError, ConnectionError};
use crate::router::Target;

/// A boxed, sendable future, the return type of stored handlers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnection {
    /// The close code: the server's (see `CloseCode`), the client's, 1005 when the client's close frame had
    /// none, or 1006 when the connection dropped without a close frame.
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
    /// `true` when the server closed the connection, `false` when the client did or the connection dropped.
    pub by_server: bool,
}

/// Synchronous hooks for cross-cutting concerns (logging, metrics, auditing), Mesa 1.5's `mesa.use(middleware)`.
///
/// Every method has a no-op default. They run inline on hot paths: keep them cheap and never block.
pub trait Middleware: Send + Sync + 'static {
    /// A connection opened (Hello was sent).
    fn on_connection(&self, _client: &Client) {}
    /// A connection closed.
    fn on_disconnection(&self, _client: &Client, _disconnection: &Disconnection) {}
    /// A connection authenticated.
    fn on_authenticated(&self, _client: &Client) {}
    /// A dispatch arrived from a client, before the message handler runs.
    fn on_message_received(&self, _client: &Client, _frame: &Frame) {}
    /// The application sent a message through the server (once per send, not per recipient).
    fn on_message_sent(&self, _frame: &Frame, _target: &Target) {}
    /// A connection hit an error (it is also being closed).
    fn on_error(&self, _client: &Client, _error: &ConnectionError) {}
}

pub(crate) type AuthenticateFn =
    Arc<dyn Fn(Value, Client) -> BoxFuture<Result<Identity, AuthError>> + Send + Sync>;
pub(crate) type ClientFn = Arc<dyn Fn(Client) -> BoxFuture<()> + Send + Sync>;
pub(crate) type MessageFn = Arc<dyn Fn(Client, Frame) -> BoxFuture<()> + Send + Sync>;
pub(crate) type DisconnectionFn = Arc<dyn Fn(Client, Disconnection) -> BoxFuture<()> + Send + Sync>;
pub(crate) type ErrorFn = Arc<dyn Fn(Client, Arc<ConnectionError>) -> BoxFuture<()> + Send + Sync>;

/// Everything the application registered.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) authenticate: Option<AuthenticateFn>,
    pub(crate) on_connection: Option<ClientFn>,
    pub(crate) on_message: Option<MessageFn>,
    pub(crate) on_authenticated: Option<ClientFn>,
    pub(crate) on_disconnection: Option<DisconnectionFn>,
    pub(crate) on_error: Option<ErrorFn>,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
}

impl Hooks {
    pub(crate) async fn connection(&self, client: &Client) {
        for m in &self.middleware {
            m.on_connection(client);
        }
        if let Some(handler) = &self.on_connection {
            handler(client.clone()).await;
        }
    }

    /// Runs the middleware and returns the handler's future: the caller awaits only a boxed future, so the
    /// frame does not sit in every connection's task state.
    pub(crate) fn message(&self, client: &Client, frame: Frame) -> Option<BoxFuture<()>> {
        for m in &self.middleware {
            m.on_message_received(client, &frame);
        }
        self.on_message
            .as_ref()
            .map(|handler| handler(client.clone(), frame))
    }

    pub(crate) async fn authenticated(&self, client: &Client) {
        for m in &self.middleware {
            m.on_authenticated(client);
        }
        if let Some(handler) = &self.on_authenticated {
            handler(client.clone()).await;
        }
    }

    pub(crate) async fn disconnection(&self, client: &Client, disconnection: Disconnection) {
        for m in &self.middleware {
            m.on_disconnection(client, &disconnection);
        }
        if let Some(handler) = &self.on_disconnection {
            handler(client.clone(), disconnection).await;
        }
    }

    pub(crate) async fn error(&self, client: &Client, error: ConnectionError) {
        tracing::debug!(connection = %client.connection_id(), %error, "connection error");
        for m in &self.middleware {
            m.on_error(client, &error);
        }
        if let Some(handler) = &self.on_error {
            handler(client.clone(), Arc::new(error)).await;
        }
    }

    pub(crate) fn sent(&self, frame: &Frame, target: &Target) {
        for m in &self.middleware {
            m.on_message_sent(frame, target);
        }
    }
}
