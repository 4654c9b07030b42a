//! The names of every key and channel the engine uses (documented in `docs/clustering.md`, "Redis layout").
//!
//! Everything starts with `mesa:<namespace>:`. What one user or one node owns carries its id as a hash tag
//! (`{…}`), so that in a Redis Cluster a user's channel and presence hash live on one shard, and a script
//! never touches keys of two slots.

use mesa_engine::NodeId;

/// The key and channel names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `mesa:<namespace>:`
    prefix: String,
    /// What Mesa 1.5 appends to its names: `_<namespace>`, nothing for the default namespace.
    mesa15_suffix: String,
}

/// What a channel the engine subscribes to is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel<'a> {
    /// One user's channel: sends to that user.
    User(&'a str),
    /// One node's channel: sends to one connection, disconnects, probes.
    Node,
    /// The broadcast channel.
    All,
    /// Mesa 1.5's `ws` channel (compatibility mode).
    Mesa15,
}

impl Keys {
    /// The names of `namespace` (validated by [`RedisConfig`](crate::RedisConfig): no `:`, `{` or `}`).
    pub fn new(namespace: &str) -> Keys {
        let mesa15_suffix = if namespace == crate::config::DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!("_{namespace}")
        };
        Keys {
            prefix: format!("mesa:{namespace}:"),
            mesa15_suffix,
        }
    }

    /// Mesa 1.5's `ws` (`ws_<ns>`): the pub/sub channel every 1.5 node reads (compatibility mode). Our
    /// namespace `default` is 1.5's "no namespace"; any other is 1.5's namespace of the same name.
    pub fn mesa15_ws(&self) -> String {
        format!("ws{}", self.mesa15_suffix)
    }

    /// Mesa 1.5's `connected_clients` set: ids of users connected to any node.
    pub fn mesa15_connected_clients(&self) -> String {
        format!("connected_clients{}", self.mesa15_suffix)
    }

    /// Mesa 1.5's `connected_clients_count`: connections across nodes.
    pub fn mesa15_connected_clients_count(&self) -> String {
        format!("connected_clients_count{}", self.mesa15_suffix)
    }

    /// Mesa 1.5's `undelivered_messages` hash: field = user id, value = JSON array of stored messages.
    pub fn mesa15_undelivered_messages(&self) -> String {
        format!("undelivered_messages{}", self.mesa15_suffix)
    }

    /// `mesa:<ns>:u:{<user>}`: the channel of one user id, subscribed by the nodes holding a session of it.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}u:{{{user}}}", self.prefix)
    }

    /// `mesa:<ns>:n:{<node as 16 hex digits>}`: the channel of one node.
    pub fn node_channel(&self, node: NodeId) -> String {
        format!("{}n:{{{node}}}", self.prefix)
    }

    /// `mesa:<ns>:all`: the broadcast channel, subscribed by every node.
    pub fn broadcast_channel(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// `mesa:<ns>:p:{<user>}`: hash of one user's presence, field = node (16 hex digits), value = its
    /// sessions of the user (decimal).
    pub fn presence(&self, user: &str) -> String {
        format!("{}p:{{{user}}}", self.prefix)
    }

    /// `mesa:<ns>:st:{<user>}`: the user's stream of durable frames (a Redis Stream; see `crate::streams`).
    pub fn stream(&self, user: &str) -> String {
        format!("{}st:{{{user}}}", self.prefix)
    }

    /// `mesa:<ns>:sm:{<user>}`: hash of the user's stream positions (`head`, `bytes`, `marker`).
    pub fn stream_meta(&self, user: &str) -> String {
        format!("{}sm:{{{user}}}", self.prefix)
    }

    /// `mesa:<ns>:ss:{<user>}`: hash of the user's resumable sessions, field = session id.
    pub fn stream_sessions(&self, user: &str) -> String {
        format!("{}ss:{{{user}}}", self.prefix)
    }

    /// `mesa:<ns>:nu:{<node>}`: set of the user ids with a session on one node (what a dead node's cleanup
    /// reads).
    pub fn node_users(&self, node: NodeId) -> String {
        format!("{}nu:{{{node}}}", self.prefix)
    }

    /// `mesa:<ns>:{nodes}`: sorted set of nodes, member = node, score = last liveness (ms, Redis clock).
    pub fn nodes(&self) -> String {
        format!("{}{{nodes}}", self.prefix)
    }

    /// `mesa:<ns>:{nodes}:info`: hash of node info, field = node, value = its open connections (decimal).
    /// Same hash tag as [`Keys::nodes`]: the liveness scripts touch both.
    pub fn node_info(&self) -> String {
        format!("{}{{nodes}}:info", self.prefix)
    }

    /// What a channel of this namespace is for; `None` for any other name.
    pub(crate) fn classify<'a>(&self, channel: &'a str) -> Option<Channel<'a>> {
        if channel.strip_prefix("ws") == Some(self.mesa15_suffix.as_str()) {
            return Some(Channel::Mesa15);
        }
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        if rest == "all" {
            return Some(Channel::All);
        }
        if let Some(user) = rest.strip_prefix("u:{").and_then(|r| r.strip_suffix('}')) {
            return Some(Channel::User(user));
        }
        if rest.starts_with("n:{") {
            return Some(Channel::Node);
        }
        None
    }
}

/// The part of a key Redis Cluster hashes (its hash tag if it has one, else all of it): keys with equal
/// groups are on one slot, so commands on them may share a pipeline.
pub(crate) fn slot_group(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner_as_hash_tag() {
        let keys = Keys::new("chat");
        assert_eq!(keys.user_channel("bob"), "mesa:chat:u:{bob}");
        assert_eq!(
            keys.node_channel(NodeId(0xab)),
            "mesa:chat:n:{00000000000000ab}"
        );
        assert_eq!(keys.presence("bob"), "mesa:chat:p:{bob}");
        assert_eq!(
            slot_group(keys.presence("bob").as_bytes()),
            slot_group(keys.user_channel("bob").as_bytes())
        );
        assert_eq!(
            slot_group(keys.nodes().as_bytes()),
            slot_group(keys.node_info().as_bytes())
        );
        for key in [
            keys.stream("bob"),
            keys.stream_meta("bob"),
            keys.stream_sessions("bob"),
        ] {
            assert_eq!(slot_group(key.as_bytes()), b"bob");
        }
        assert_eq!(slot_group(b"mesa:chat:all"), b"mesa:chat:all");
        assert_eq!(slot_group(b"a{}b"), b"a{}b");
    }

    #[test]
    fn channels_are_recognised_and_users_recovered() {
        let keys = Keys::new("chat");
        for user in ["bob", "a}b", "", "x}:n:{y"] {
            assert_eq!(
                keys.classify(&keys.user_channel(user)),
                Some(Channel::User(user))
            );
        }
        assert_eq!(
            keys.classify(&keys.node_channel(NodeId(1))),
            Some(Channel::Node)
        );
        assert_eq!(keys.classify(&keys.broadcast_channel()), Some(Channel::All));
        assert_eq!(keys.classify("mesa:other:all"), None);
        assert_eq!(keys.classify("ws_chat"), Some(Channel::Mesa15));
        assert_eq!(keys.classify("ws"), None);
        assert_eq!(Keys::new("default").classify("ws"), Some(Channel::Mesa15));
        assert_eq!(
            Keys::new("default").mesa15_connected_clients(),
            "connected_clients"
        );
        assert_eq!(
            keys.mesa15_undelivered_messages(),
            "undelivered_messages_chat"
        );
        assert_eq!(keys.classify("mesa:chat:p:{bob}"), None);
    }
}
