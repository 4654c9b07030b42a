//! Identifiers that name things across nodes: the node a server process is, and its connections.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

/// One gateway process. Random at start unless the server is given one (`MesaBuilder::node_id`), so that two
/// nodes sharing an engine never hand out the same [`ConnectionId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A random node id (from the process's hash seed, the time and the process id).
    pub fn random() -> NodeId {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.write_u32(std::process::id());
        NodeId(hasher.finish())
    }
}

/// A string that is not a [`NodeId`] (16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a node id (expected 16 hex digits): {0:?}")]
pub struct ParseNodeIdError(String);

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<NodeId, ParseNodeIdError> {
        if s.len() != 16 {
            return Err(ParseNodeIdError(s.chars().take(64).collect()));
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| ParseNodeIdError(s.chars().take(64).collect()))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A connection's id: the node that accepted it and a counter of that node, unique across nodes.
/// Written `<node as 16 hex digits>-<counter>`, for example `00c0ffee00c0ffee-42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    node: NodeId,
    seq: u64,
}

impl ConnectionId {
    /// The `seq`-th connection of `node`.
    pub const fn new(node: NodeId, seq: u64) -> ConnectionId {
        ConnectionId { node, seq }
    }

    /// The node that accepted the connection.
    pub const fn node(&self) -> NodeId {
        self.node
    }

    /// The connection's number on its node, from 1.
    pub const fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.node, self.seq)
    }
}

/// A string that is not a [`ConnectionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a connection id (expected <16 hex digits>-<number>): {0:?}")]
pub struct ParseConnectionIdError(String);

impl FromStr for ConnectionId {
    type Err = ParseConnectionIdError;

    fn from_str(s: &str) -> Result<ConnectionId, ParseConnectionIdError> {
        let error = || ParseConnectionIdError(s.chars().take(64).collect());
        let (node, seq) = s.split_once('-').ok_or_else(error)?;
        if node.len() != 16 {
            return Err(error());
        }
        let node = u64::from_str_radix(node, 16).map_err(|_| error())?;
        let seq = seq.parse().map_err(|_| error())?;
        Ok(ConnectionId::new(NodeId(node), seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_round_trip_and_differ_across_nodes() {
        let id = ConnectionId::new(NodeId(0xc0ffee), 42);
        assert_eq!(id.to_string(), "0000000000c0ffee-42");
        assert_eq!("0000000000c0ffee-42".parse(), Ok(id));
        for bad in [
            "",
            "42",
            "c0ffee-42",
            "0000000000c0ffee-",
            "zzzzzzzzzzzzzzzz-1",
        ] {
            assert!(bad.parse::<ConnectionId>().is_err(), "{bad}");
        }
        assert_ne!(
            ConnectionId::new(NodeId::random(), 1),
            ConnectionId::new(NodeId::random(), 1)
        );
    }
}
