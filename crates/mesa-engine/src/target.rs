//! Who a send is for ([`Target`], [`Recipients`]) and what became of it ([`Delivery`]): plain data, shared by
//! the server's router and registry, the engines and the application.

use crate::ids::ConnectionId;

/// Who a message is for, before exclusions.
/// Engines match on every variant: a new one is a breaking change on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What became of one send (or disconnect): how many sessions it was queued for on the nodes that could
/// count, and how many other nodes it was handed to.
///
/// Queued means accepted by the session's bounded outbound queue, in order, before any later send to the same
/// session; a connection that drops before writing it loses it (the delivery-guarantees work replays such
/// frames). Sessions whose queue was full are counted in `slow_consumers` and are being closed with 4010.
/// A remote engine counts the sessions of the sending node only; what other nodes queued is not known to
/// the sender, only that `nodes` of them received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Delivery {
    /// Sessions the frame was queued for (on the sending node, or on every node the engine could count).
    pub queued: usize,
    /// Sessions the target named whose outbound queue was full: they are closing with 4010 and did not get it.
    pub slow_consumers: usize,
    /// Other nodes the engine handed the message to (0 on a single node).
    pub nodes: usize,
}

impl Delivery {
    /// The sum of two deliveries (a node's own and what other nodes reported).
    pub fn merge(self, other: Delivery) -> Delivery {
        Delivery {
            queued: self.queued + other.queued,
            slow_consumers: self.slow_consumers + other.slow_consumers,
            nodes: self.nodes + other.nodes,
        }
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
