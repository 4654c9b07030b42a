//! The one routing layer every send goes through: encode once, then deliver.
//!
//! Today delivery is local (this node's registry of connections). A broker for several nodes sits here: the router
//! publishes the encoded frame with its [`Target`], and every node's subscriber hands it to its own registry.

use std::sync::Arc;

use mesa_protocol::Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::client::ConnectionId;
use crate::registry::Registry;

/// Who a message is for, before exclusions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recipients {
    /// Every connection (only authenticated ones when authentication is required). Mesa 1.5 `['*']`.
    All,
    /// Every connection authenticated as one of these user ids, each connection once.
    Users(Vec<String>),
    /// One connection.
    Connection(ConnectionId),
}

/// The recipients of a send: who it is for, minus the user ids in `excluding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Who the message is for.
    pub recipients: Recipients,
    /// User ids that must not receive it, even when `recipients` names them.
    pub excluding: Vec<String>,
}

impl Target {
    /// Everyone.
    pub fn all() -> Target {
        Target {
            recipients: Recipients::All,
            excluding: Vec::new(),
        }
    }

    /// Every connection of these user ids.
    pub fn users<I, S>(ids: I) -> Target
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Target {
            recipients: Recipients::Users(ids.into_iter().map(Into::into).collect()),
            excluding: Vec::new(),
        }
    }

    /// One connection.
    pub fn connection(id: ConnectionId) -> Target {
        Target {
            recipients: Recipients::Connection(id),
            excluding: Vec::new(),
        }
    }

    /// The same target without these user ids.
    pub fn excluding<I, S>(mut self, ids: I) -> Target
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.excluding.extend(ids.into_iter().map(Into::into));
        self
    }

    /// The target Mesa 1.5 means by `send(message, recipients, excluding)`: no recipients or any `"*"` is
    /// everyone, otherwise those user ids.
    pub fn from_mesa(recipients: Option<Vec<String>>, excluding: Option<Vec<String>>) -> Target {
        let recipients = match recipients {
            Some(ids) if !ids.iter().any(|id| id == "*") => Recipients::Users(ids),
            _ => Recipients::All,
        };
        Target {
            recipients,
            excluding: excluding.unwrap_or_default(),
        }
    }
}

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

    /// Encodes `frame` once and queues the same bytes on every matching connection.
    /// Returns how many local connections it was queued on.
    pub(crate) fn send(&self, frame: &Frame, target: &Target) -> usize {
        let text = Utf8Bytes::from(frame.encode());
        self.registry
            .deliver(&text, target, self.authenticated_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesa_star_means_everyone() {
        assert_eq!(Target::from_mesa(None, None), Target::all());
        assert_eq!(
            Target::from_mesa(Some(vec!["*".into()]), None),
            Target::all()
        );
        assert_eq!(
            Target::from_mesa(Some(vec!["a".into()]), Some(vec!["b".into()])),
            Target::users(["a"]).excluding(["b"])
        );
    }
}
