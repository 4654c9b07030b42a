//! Where a publication goes: which channels, with which envelope, and whether the origin serves it itself.
//! Pure: the same for a gateway node and for a [`Dispatcher`](crate::Dispatcher) (which is no node).

use bytes::Bytes;
use mesa_engine::{Action, DeliveryClass, EngineError, NodeId, Publication, Recipients, Target};
use redis::Cmd;

use crate::envelope::{self, WireTarget};
use crate::keys::Keys;
use crate::mesa15;
use crate::streams::{ScriptCall, Streams};

/// What to hand Redis for one publication.
#[derive(Debug, Clone)]
pub(crate) enum Sends {
    /// The same envelope on each channel, in order (none when only this node holds the recipients).
    Publish {
        /// One per recipient user, or the broadcast or a node channel.
        channels: Vec<String>,
        /// The envelope, the same bytes on every channel.
        payload: Bytes,
    },
    /// Commands in Mesa 1.5's formats (compatibility mode), each answering a subscriber count.
    Commands(Vec<Cmd>),
    /// Stream scripts (append and publish, one per user), each answering a subscriber count.
    Scripts(Vec<ScriptCall>),
}

impl Sends {
    /// Commands Redis answers for it (what a batch counts).
    pub(crate) fn len(&self) -> usize {
        match self {
            Sends::Publish { channels, .. } => channels.len(),
            Sends::Commands(cmds) => cmds.len(),
            Sends::Scripts(calls) => calls.len(),
        }
    }

    /// Nothing to hand Redis.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A publication's way through Redis.
#[derive(Debug)]
pub(crate) struct Route {
    /// The origin is this node: it delivers to its own sessions itself, first.
    pub(crate) local: bool,
    /// What goes to Redis.
    pub(crate) sends: Sends,
    /// Per channel or command: whether this node is one of its subscribers (not counted in
    /// `Delivery::nodes`).
    pub(crate) mine: Vec<bool>,
}

/// The user ids a send goes to: each once, in order, minus the excluded ones.
fn distinct_recipients<'a>(ids: &'a [String], excluding: &[String]) -> Vec<&'a String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .filter(|id| !excluding.contains(id) && seen.insert(id.as_str()))
        .collect()
}

/// Routes `publication` from `this_node` (`None`: a Dispatcher). `holds` says whether this node has a
/// session of a user (so is subscribed to that user's channel). With `mesa15`, sends to users and to
/// everyone take Mesa 1.5's `ws` channel instead (every node, ours included, reads it); sends to one
/// connection keep the node channel. With `streams`, a durable send to users goes through each user's
/// stream script (appended, then published by Redis), and the origin does not serve it itself: it
/// receives it on the user's channel like every other node, in the stream's order. Fails only on a frame
/// Mesa 1.5's format cannot carry.
pub(crate) fn route(
    keys: &Keys,
    publication: &Publication,
    this_node: Option<NodeId>,
    holds: impl Fn(&str) -> bool,
    mesa15: bool,
    streams: Option<&Streams>,
) -> Result<Route, EngineError> {
    if let (
        Some(streams),
        Publication {
            action: Action::Send(frame),
            class: DeliveryClass::Durable,
            target:
                Target {
                    recipients: Recipients::Users(ids),
                    excluding,
                },
            origin,
            ..
        },
    ) = (streams, publication)
    {
        let head = envelope::encode_stream_head(*origin);
        let users = distinct_recipients(ids, excluding);
        return Ok(Route {
            local: false,
            mine: users
                .iter()
                .map(|u| this_node.is_some() && holds(u))
                .collect(),
            sends: Sends::Scripts(
                users
                    .iter()
                    .map(|user| streams.append(keys, user, frame, &head))
                    .collect(),
            ),
        });
    }
    let local = this_node.is_some() && publication.origin == this_node;
    if mesa15 {
        let held = |user: &str| this_node.is_some() && holds(user);
        if let Some(cmds) = mesa15::commands(keys, publication, held)? {
            return Ok(Route {
                local,
                mine: vec![this_node.is_some(); cmds.len()],
                sends: Sends::Commands(cmds),
            });
        }
    }
    let target = &publication.target;
    let (wire, channels, mine): (WireTarget, Vec<String>, Vec<bool>) = match &target.recipients {
        Recipients::All => (
            WireTarget::All {
                excluding: target.excluding.clone(),
            },
            vec![keys.broadcast_channel()],
            vec![this_node.is_some()],
        ),
        Recipients::Users(ids) => {
            let users = distinct_recipients(ids, &target.excluding);
            (
                WireTarget::ChannelUser,
                users.iter().map(|u| keys.user_channel(u)).collect(),
                users
                    .iter()
                    .map(|u| this_node.is_some() && holds(u))
                    .collect(),
            )
        }
        Recipients::Connection(id) => {
            let wire = WireTarget::Connection {
                id: *id,
                excluding: target.excluding.clone(),
            };
            if local && Some(id.node()) == this_node {
                (wire, Vec::new(), Vec::new())
            } else {
                let mine = Some(id.node()) == this_node;
                (wire, vec![keys.node_channel(id.node())], vec![mine])
            }
        }
    };
    let payload = if channels.is_empty() {
        Bytes::new()
    } else {
        envelope::encode(publication.origin, &wire, &publication.action)
    };
    Ok(Route {
        local,
        sends: Sends::Publish { channels, payload },
        mine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesa_engine::{ConnectionId, EncodedFrame, Target};

    fn send(origin: Option<u64>, target: Target) -> Publication {
        Publication::send(origin.map(NodeId), target, EncodedFrame::from("{}"))
    }

    fn route(
        keys: &Keys,
        publication: &Publication,
        this_node: Option<NodeId>,
        holds: impl Fn(&str) -> bool,
    ) -> Route {
        super::route(keys, publication, this_node, holds, false, None).expect("routed")
    }

    fn channels(route: &Route) -> &[String] {
        match &route.sends {
            Sends::Publish { channels, .. } => channels,
            Sends::Commands(_) | Sends::Scripts(_) => panic!("native channels expected"),
        }
    }

    #[test]
    fn users_get_one_channel_each_minus_exclusions() {
        let keys = Keys::new("t");
        let r = route(
            &keys,
            &send(
                Some(1),
                Target::users(["a", "b", "a", "eve"]).excluding(["eve"]),
            ),
            Some(NodeId(1)),
            |u| u == "b",
        );
        assert!(r.local);
        assert_eq!(channels(&r), ["mesa:t:u:{a}", "mesa:t:u:{b}"]);
        assert_eq!(r.mine, [false, true]);
    }

    #[test]
    fn a_connection_of_this_node_stays_local() {
        let keys = Keys::new("t");
        let here = ConnectionId::new(NodeId(1), 5);
        let r = route(
            &keys,
            &send(Some(1), Target::connection(here)),
            Some(NodeId(1)),
            |_| false,
        );
        assert!(r.local && channels(&r).is_empty());
        // Without an origin (a Dispatcher's publication made through an engine) it goes through Redis.
        let r = route(
            &keys,
            &send(None, Target::connection(here)),
            Some(NodeId(1)),
            |_| false,
        );
        assert!(!r.local);
        assert_eq!(channels(&r), [keys.node_channel(NodeId(1))]);
        let r = route(&keys, &send(None, Target::all()), None, |_| true);
        assert_eq!((r.local, r.mine.as_slice()), (false, &[false][..]));
    }
}
