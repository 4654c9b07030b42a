//! What arrives on the subscriber connection: envelopes decoded and handed to the attached node.
//!
//! The handler runs in the connection's reading task (redis-rs calls it for every push), and
//! `LocalNode::deliver` only queues on sessions' bounded queues: there is no buffer between Redis and the
//! node that could fill up and drop. A full session queue is the server's business (it closes that slow
//! session with 4010), counted there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use mesa_engine::{DeliveryClass, LocalNode, NodeId, Publication, Recipients, Target};
use redis::{PushInfo, Value};
use tokio::sync::watch;

use crate::backend::{self, PushKind};
use crate::envelope::{self, Envelope, WireTarget};
use crate::keys::Channel;
use crate::link::Link;
use crate::mesa15;

/// The receiving side of one gateway node.
pub(crate) struct Inbound {
    link: Arc<Link>,
    node: RwLock<Option<(NodeId, Arc<dyn LocalNode>)>>,
    /// Set by `detach`/`abort`: nothing more is handed to the node.
    closed: AtomicBool,
    /// The newest probe nonce of this node that came back.
    probes: watch::Sender<u64>,
}

impl Inbound {
    pub(crate) fn new(link: Arc<Link>) -> Inbound {
        Inbound {
            link,
            node: RwLock::new(None),
            closed: AtomicBool::new(false),
            probes: watch::Sender::new(0),
        }
    }

    /// From now on, publications are handed to `node`.
    pub(crate) fn attach(&self, node: Arc<dyn LocalNode>) {
        let id = node.node_id();
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some((id, node));
    }

    /// Nothing more is handed to the node (and the engine lets go of it).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The attached node, if any.
    pub(crate) fn node(&self) -> Option<(NodeId, Arc<dyn LocalNode>)> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until probe `nonce` came back.
    pub(crate) async fn probe_returned(&self, nonce: u64) {
        let mut rx = self.probes.subscribe();
        let _ = rx.wait_for(|seen| *seen >= nonce).await;
    }

    /// The push handler of the subscriber connection of `generation`.
    pub(crate) fn handler(self: &Arc<Self>, generation: u64) -> backend::PushHandler {
        let inbound = self.clone();
        Arc::new(move |info| inbound.handle(generation, info))
    }

    fn handle(&self, generation: u64, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                        self.message(&channel, Bytes::from(payload))
                    }
                    _ => self.malformed(&"a message push without channel and payload"),
                }
            }
            PushKind::Disconnection => self
                .link
                .lost(generation, "Redis subscription connection closed"),
            _ => {}
        }
    }

    fn malformed(&self, what: &dyn std::fmt::Display) {
        let n = self.link.metrics.malformed();
        // Logged at 1, 2, 4, 8, …: a foreign writer flooding a channel does not flood the log.
        if n.is_power_of_two() {
            tracing::warn!(count = n, "dropped a malformed message from Redis: {what}");
        }
    }

    fn message(&self, channel: &[u8], payload: Bytes) {
        let Some(kind) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.link.keys.classify(c))
        else {
            return self.malformed(&"a message on a channel this engine does not use");
        };
        if kind == Channel::Mesa15 {
            return self.mesa15_message(&payload);
        }
        let envelope = match envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(error) => return self.malformed(&error),
        };
        let Some((this, node)) = self.node() else {
            return;
        };
        let (origin, target, action, via_stream, sequence) = match envelope {
            Envelope::Probe { origin, nonce } => {
                if origin == this {
                    self.probes.send_if_modified(|seen| {
                        let newer = nonce > *seen;
                        *seen = (*seen).max(nonce);
                        newer
                    });
                }
                return;
            }
            Envelope::Publication {
                origin,
                target,
                action,
                via_stream,
                sequence,
            } => (origin, target, action, via_stream, sequence),
        };
        self.link.metrics.received();
        if self.is_closed() || (origin == Some(this) && !via_stream) {
            // The origin served its own sessions before publishing (except what the stream script
            // published: that reaches every node from Redis, in the stream's order).
            return;
        }
        let target = match (target, kind) {
            (WireTarget::ChannelUser, Channel::User(user)) => Target::users([user]),
            (WireTarget::ChannelUser, _) => {
                return self.malformed(&"a send to the channel's user on a channel of no user")
            }
            (WireTarget::All { excluding }, _) => Target {
                recipients: Recipients::All,
                excluding,
            },
            (WireTarget::Connection { id, excluding }, _) => Target {
                recipients: Recipients::Connection(id),
                excluding,
            },
        };
        node.deliver(&Publication {
            origin,
            target,
            action,
            class: DeliveryClass::Durable,
            sequence,
        });
    }

    /// A message on Mesa 1.5's `ws` channel: from a 1.5 node or Dispatcher, or from one of ours in
    /// compatibility mode (skipped when it is this node's own).
    fn mesa15_message(&self, payload: &[u8]) {
        let incoming = match mesa15::decode(payload) {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return,
            Err(error) => return self.malformed(&error),
        };
        let Some((this, node)) = self.node() else {
            return;
        };
        self.link.metrics.received();
        if self.is_closed() || incoming.origin == Some(this) {
            return;
        }
        node.deliver(&Publication {
            origin: incoming.origin,
            target: incoming.target,
            action: incoming.action,
            class: DeliveryClass::Durable,
            sequence: None,
        });
    }
}
