//! The one routing layer every send goes through: encode once, then deliver.
//!
//! Today delivery is local (this node's registry of sessions). An engine for several nodes goes under this
//! layer: the router hands it the encoded frame and its [`Target`], and each node hands what reaches it to its
//! own registry. Its errors come back through [`Router::send`]'s `Result`, which is why a send can fail.

use std::sync::Arc;

use mesa_protocol::Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::SendError;
use crate::registry::Registry;
use crate::target::{Delivery, Target};

/// Encodes and routes sends. Owned by the server; cheap to share.
pub(crate) struct Router {
    registry: Arc<Registry>,
    authenticated_only: bool,
}

impl Router {
    pub(crate) fn new(registry: Arc<Registry>, authenticated_only: bool) -> Router {
        Router {
            registry,
            authenticated_only,
        }
    }

    /// Encodes `frame` once and queues the same bytes on every session `target` names.
    pub(crate) fn send(&self, frame: &Frame, target: &Target) -> Result<Delivery, SendError> {
        let text = Utf8Bytes::from(frame.encode());
        Ok(self
            .registry
            .deliver(&text, target, self.authenticated_only))
    }

    /// Asks every session `target` names to close; returns how many were asked.
    pub(crate) fn disconnect(&self, target: &Target, code: u16, reason: &str) -> usize {
        let mut closed = 0;
        self.registry.for_each(target, false, |session| {
            session.disconnect(code, reason);
            closed += 1;
        });
        closed
    }
}
