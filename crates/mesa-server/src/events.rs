//! Application hooks: async event handlers set on the builder, and synchronous middleware.
//!
//! Handlers run on the connection's own task, in the order its frames arrived: a handler that awaits
//! delays that connection's next frame (and only that connection's). Spawn a task for long work.
//!
//! A handler or middleware that panics does not take the server down or leak its session: the panic is
//! caught, counted (`mesa_handler_panics_total`), and the connection is closed with 1011 and cleaned up like
//! any other (its `on_disconnection` still runs).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use mesa_protocol::Frame;
use serde_json::Value;

use crate::error::{AuthError, ConnectionError};
use crate::session::{Identity, Session};
use crate::target::Target;

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
    fn on_connection(&self, _session: &Session) {}
    /// A connection closed.
    fn on_disconnection(&self, _session: &Session, _disconnection: &Disconnection) {}
    /// A connection authenticated.
    fn on_authenticated(&self, _session: &Session) {}
    /// A dispatch arrived from a client, before the message handler runs.
    fn on_message_received(&self, _session: &Session, _frame: &Frame) {}
    /// The application sent a message through the server (once per send, not per recipient).
    fn on_message_sent(&self, _frame: &Frame, _target: &Target) {}
    /// A connection hit an error (it is also being closed).
    fn on_error(&self, _session: &Session, _error: &ConnectionError) {}
}

pub(crate) type AuthenticateFn =
    Arc<dyn Fn(Value, Session) -> BoxFuture<Result<Identity, AuthError>> + Send + Sync>;
pub(crate) type SessionFn = Arc<dyn Fn(Session) -> BoxFuture<()> + Send + Sync>;
pub(crate) type MessageFn = Arc<dyn Fn(Session, Frame) -> BoxFuture<()> + Send + Sync>;
pub(crate) type DisconnectionFn =
    Arc<dyn Fn(Session, Disconnection) -> BoxFuture<()> + Send + Sync>;
pub(crate) type ErrorFn = Arc<dyn Fn(Session, Arc<ConnectionError>) -> BoxFuture<()> + Send + Sync>;

/// Everything the application registered.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) authenticate: Option<AuthenticateFn>,
    pub(crate) on_connection: Option<SessionFn>,
    pub(crate) on_message: Option<MessageFn>,
    pub(crate) on_authenticated: Option<SessionFn>,
    pub(crate) on_disconnection: Option<DisconnectionFn>,
    pub(crate) on_error: Option<ErrorFn>,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
}

/// A handler or middleware panicked; the connection closes with 1011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Panicked;

/// Runs a handler's future, turning a panic into [`Panicked`].
pub(crate) async fn guarded<T>(future: impl Future<Output = T>) -> Result<T, Panicked> {
    AssertUnwindSafe(future).catch_unwind().await.map_err(|_| {
        tracing::error!("a handler panicked; its connection is closed with 1011");
        Panicked
    })
}

/// Runs every middleware's hook, turning a panic into [`Panicked`].
fn each(
    middleware: &[Arc<dyn Middleware>],
    hook: impl Fn(&dyn Middleware),
) -> Result<(), Panicked> {
    for m in middleware {
        std::panic::catch_unwind(AssertUnwindSafe(|| hook(m.as_ref()))).map_err(|_| {
            tracing::error!("a middleware panicked; its connection is closed with 1011");
            Panicked
        })?;
    }
    Ok(())
}

impl Hooks {
    pub(crate) async fn connection(&self, session: &Session) -> Result<(), Panicked> {
        each(&self.middleware, |m| m.on_connection(session))?;
        if let Some(handler) = &self.on_connection {
            guarded(handler(session.clone())).await?;
        }
        Ok(())
    }

    /// Runs the middleware and returns the handler's future: the caller awaits only a boxed future, so the
    /// frame does not sit in every connection's task state.
    pub(crate) fn message(
        &self,
        session: &Session,
        frame: Frame,
    ) -> Result<Option<BoxFuture<()>>, Panicked> {
        each(&self.middleware, |m| m.on_message_received(session, &frame))?;
        Ok(self
            .on_message
            .as_ref()
            .map(|handler| handler(session.clone(), frame)))
    }

    pub(crate) async fn authenticated(&self, session: &Session) -> Result<(), Panicked> {
        each(&self.middleware, |m| m.on_authenticated(session))?;
        if let Some(handler) = &self.on_authenticated {
            guarded(handler(session.clone())).await?;
        }
        Ok(())
    }

    pub(crate) async fn disconnection(
        &self,
        session: &Session,
        disconnection: Disconnection,
    ) -> Result<(), Panicked> {
        each(&self.middleware, |m| {
            m.on_disconnection(session, &disconnection)
        })?;
        if let Some(handler) = &self.on_disconnection {
            guarded(handler(session.clone(), disconnection)).await?;
        }
        Ok(())
    }

    pub(crate) async fn error(
        &self,
        session: &Session,
        error: ConnectionError,
    ) -> Result<(), Panicked> {
        tracing::debug!(connection = %session.connection_id(), %error, "connection error");
        each(&self.middleware, |m| m.on_error(session, &error))?;
        if let Some(handler) = &self.on_error {
            guarded(handler(session.clone(), Arc::new(error))).await?;
        }
        Ok(())
    }

    /// Middleware `on_message_sent`; a panicking middleware is logged and skipped (there is no connection
    /// to close).
    pub(crate) fn sent(&self, frame: &Frame, target: &Target) {
        let _ = each(&self.middleware, |m| m.on_message_sent(frame, target));
    }
}
