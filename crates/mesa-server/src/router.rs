//! The one routing layer every send goes through: encode once, then hand to the engine.
//!
//! The engine ([`mesa_engine::Engine`]; in memory unless the builder was given another) carries the encoded
//! frame to every node holding a recipient, this one first; each node's [`Node`] queues it on its own
//! sessions through the registry. A remote engine's failures come back through [`Router::send`]'s `Result`.

use std::sync::Arc;

use mesa_engine::{
    Action, Delivery, DeliveryClass, Engine, LocalNode, NodeId, Publication, Recipients, Target,
};
use mesa_protocol::Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::SendError;
use crate::registry::Registry;

/// This node as the engine sees it: publications in, local sessions served.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) registry: Arc<Registry>,
    /// Sends to everyone skip unauthenticated sessions (`authentication.required`).
    pub(crate) authenticated_only: bool,
}

impl LocalNode for Node {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn deliver(&self, publication: &Publication) -> Delivery {
        match &publication.action {
            Action::Send(frame) => {
                // Validated once per node, then shared by every session (a reference count each).
                let Ok(text) = Utf8Bytes::try_from(frame.as_bytes().clone()) else {
                    return Delivery::default();
                };
                match (publication.sequence, &publication.target.recipients) {
                    // An engine hands sequenced publications for one user each.
                    (Some(seq), Recipients::Users(ids)) if ids.len() == 1 => {
                        self.registry.deliver_sequenced(&text, &ids[0], seq)
                    }
                    _ => self
                        .registry
                        .deliver(&text, &publication.target, self.authenticated_only),
                }
            }
            Action::Disconnect { code, reason } => {
                let mut delivery = Delivery::default();
                self.registry
                    .for_each(&publication.target, false, |session| {
                        session.disconnect(*code, reason);
                        delivery.queued += 1;
                    });
                delivery
            }
        }
    }

    fn user_session_count(&self, user_id: &str) -> usize {
        self.registry.user_session_count(user_id)
    }

    fn connection_count(&self) -> usize {
        self.registry.len()
    }

    fn user_sessions(&self) -> Vec<(String, usize)> {
        self.registry.user_sessions()
    }

    fn resync_streams(&self) {
        self.registry.resync_streams();
    }
}

/// Encodes and routes sends. Owned by the server; cheap to share.
pub(crate) struct Router {
    node: NodeId,
    engine: Arc<dyn Engine>,
    /// The server offers resumable sessions.
    resumable: bool,
}

impl Router {
    /// `resumable`: the server offers resumable sessions (its engine keeps per-user streams).
    pub(crate) fn new(node: NodeId, engine: Arc<dyn Engine>, resumable: bool) -> Router {
        Router {
            node,
            engine,
            resumable,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Whether the server offers resumable sessions.
    pub(crate) fn resumable(&self) -> bool {
        self.resumable
    }

    /// Encodes `frame` once and has the engine queue the same bytes on every session `target` names.
    ///
    /// The frame's `o` (Mesa 1.5 message options) is read here and never sent: `o.sync: false` makes the
    /// send [`DeliveryClass::Volatile`] (an engine that keeps messages for offline users skips it).
    pub(crate) async fn send(&self, frame: &Frame, target: &Target) -> Result<Delivery, SendError> {
        // A durable send to users gets its `s` per resumable session, from the user's stream: one the
        // application set would appear twice.
        let numbered = frame.s.is_some()
            && self.resumable
            && matches!(target.recipients, Recipients::Users(_));
        let (class, encoded) = match &frame.o {
            None if !numbered => (DeliveryClass::Durable, frame.encode()),
            options => {
                let sync = options
                    .as_ref()
                    .and_then(|options| options.get("sync"))
                    .and_then(serde_json::Value::as_bool);
                let class = if sync == Some(false) {
                    DeliveryClass::Volatile
                } else {
                    DeliveryClass::Durable
                };
                let mut bare = frame.clone();
                bare.o = None;
                if numbered && class == DeliveryClass::Durable {
                    bare.s = None;
                }
                (class, bare.encode())
            }
        };
        let publication =
            Publication::send(Some(self.node), target.clone(), encoded.into()).with_class(class);
        Ok(self.engine.publish(publication).await?)
    }

    /// Asks every session `target` names, on every node, to close.
    pub(crate) async fn disconnect(
        &self,
        target: &Target,
        code: u16,
        reason: &str,
    ) -> Result<Delivery, SendError> {
        let publication = Publication::disconnect(Some(self.node), target.clone(), code, reason);
        Ok(self.engine.publish(publication).await?)
    }
}
