//! What the cluster variants share: two nodes on one Redis, where each connection goes, and the processes
//! watched (CPU and RSS of node A, node B and redis-server from `/proc`; the bytes each node's sockets to
//! Redis received, from the kernel's `tcp_info`).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::args::{ClusterArgs, InvalidArgs};
use crate::conn::Connector;
use crate::procfs::{self, CpuMeter};
use crate::report::round3;
use crate::sockets::{self, SocketBytes};
use crate::target::SourceAddrs;

/// One of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The node of `--url`: senders are always here.
    A,
    /// The node of `--url-b`.
    B,
}

impl Node {
    /// 0 for A, 1 for B (index into per-node counters).
    pub fn index(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }
}

/// How connection indexes are placed on the nodes.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// The first `pinned` on A, the others alternately on B and A (B first, so that a sender on A and its
    /// receivers balance).
    Alternate {
        /// Connections placed on A before alternating (the senders).
        pinned: usize,
    },
    /// The first `on_a` on A, the rest on B.
    Split {
        /// Connections on A.
        on_a: usize,
    },
}

/// The connectors of the two nodes (B absent: everything on A) and the placement rule.
#[derive(Debug, Clone)]
pub struct Placement {
    a: Arc<Connector>,
    b: Option<Arc<Connector>>,
    rule: Rule,
}

impl Placement {
    /// Node A's connector (from `prepare`) and, when `--url-b` is given, node B's with as many source
    /// addresses.
    pub fn new(
        a: &Arc<Connector>,
        cluster: &ClusterArgs,
        rule: Rule,
    ) -> Result<Placement, InvalidArgs> {
        let b = cluster.target_b()?.map(|target| {
            let sources = SourceAddrs::new(&target, a.sources().addrs().len());
            a.sibling(target, sources)
        });
        Ok(Placement {
            a: a.clone(),
            b,
            rule,
        })
    }

    /// Whether node B is in play.
    pub fn is_cluster(&self) -> bool {
        self.b.is_some()
    }

    /// The node of connection `index`.
    pub fn node(&self, index: usize) -> Node {
        if self.b.is_none() {
            return Node::A;
        }
        match self.rule {
            Rule::Alternate { pinned } if index < pinned => Node::A,
            Rule::Alternate { pinned } if (index - pinned).is_multiple_of(2) => Node::B,
            Rule::Alternate { .. } => Node::A,
            Rule::Split { on_a } if index < on_a => Node::A,
            Rule::Split { .. } => Node::B,
        }
    }

    /// How many of the first `count` connections go to each node (A, B).
    pub fn counts(&self, count: usize) -> [usize; 2] {
        let mut counts = [0, 0];
        for index in 0..count {
            counts[self.node(index).index()] += 1;
        }
        counts
    }

    /// The connector for connection `index`.
    pub fn connector(&self, index: usize) -> Arc<Connector> {
        match (self.node(index), &self.b) {
            (Node::B, Some(b)) => b.clone(),
            _ => self.a.clone(),
        }
    }

    /// Node B's URL, when in play.
    pub fn url_b(&self) -> Option<&str> {
        self.b.as_ref().map(|b| b.target().url.as_str())
    }
}

/// One watched process: CPU over the interval, RSS and socket counters at its start.
#[derive(Debug, Clone, Copy)]
struct Watched {
    pid: u32,
    cpu: CpuMeter,
    rss_before: Option<u64>,
    redis_bytes_before: Option<SocketBytes>,
}

impl Watched {
    fn start(pid: u32, redis_port: Option<u16>) -> Watched {
        Watched {
            pid,
            rss_before: procfs::rss_kib(pid).ok(),
            redis_bytes_before: redis_port.and_then(|port| sockets::to_port(pid, port).ok()),
            cpu: CpuMeter::start(pid),
        }
    }

    fn finish(&self, redis_port: Option<u16>) -> Value {
        let rss_after = procfs::rss_kib(self.pid).ok();
        let mut out = json!({
            "pid": self.pid,
            "cpu_pct": self.cpu.percent().map(round3),
            "rss_before_kib": self.rss_before,
            "rss_after_kib": rss_after,
        });
        if let (Some(port), Some(before)) = (redis_port, self.redis_bytes_before) {
            if let Ok(now) = sockets::to_port(self.pid, port) {
                let carried = now.since(&before);
                out["redis_sockets"] = json!(carried.sockets);
                out["redis_bytes_received"] = json!(carried.received);
                out["redis_bytes_sent"] = json!(carried.sent);
            }
        }
        out
    }
}

/// CPU, RSS and Redis socket bytes of node A, node B and redis-server over one interval (each only when its
/// pid was given).
#[derive(Debug, Clone, Copy)]
pub struct Meters {
    node_a: Option<Watched>,
    node_b: Option<Watched>,
    redis: Option<Watched>,
    redis_port: Option<u16>,
}

impl Meters {
    /// Starts measuring; `server_pid` is node A's.
    pub fn start(server_pid: Option<u32>, cluster: &ClusterArgs) -> Meters {
        let port = cluster.redis_port;
        Meters {
            node_a: server_pid.map(|pid| Watched::start(pid, port)),
            node_b: cluster.server_b_pid.map(|pid| Watched::start(pid, port)),
            redis: cluster.redis_pid.map(|pid| Watched::start(pid, None)),
            redis_port: port,
        }
    }

    /// `{"node_a": {...}, "node_b": {...}, "redis": {...}}` since the start (`null` for a process not given).
    pub fn finish(&self) -> Value {
        let port = self.redis_port;
        json!({
            "node_a": self.node_a.map(|w| w.finish(port)),
            "node_b": self.node_b.map(|w| w.finish(port)),
            "redis": self.redis.map(|w| w.finish(None)),
        })
    }
}

/// `part / whole`, rounded, or `null` when the whole is zero or unknown.
pub fn per(part: Option<f64>, whole: u64) -> Value {
    match part {
        Some(p) if whole > 0 => json!(round3(p / whole as f64)),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    fn placement(rule: Rule, with_b: bool) -> Placement {
        let target = Target::parse("ws://127.0.0.1:1/").unwrap();
        let a = Connector::new(target.clone(), SourceAddrs::new(&target, 1));
        let cluster = ClusterArgs {
            url_b: with_b.then(|| "ws://127.0.0.1:2/".to_string()),
            ..ClusterArgs::default()
        };
        Placement::new(&a, &cluster, rule).unwrap()
    }

    #[test]
    fn senders_stay_on_a_and_receivers_alternate() {
        let p = placement(Rule::Alternate { pinned: 2 }, true);
        let nodes: Vec<Node> = (0..6).map(|i| p.node(i)).collect();
        assert_eq!(
            nodes,
            [Node::A, Node::A, Node::B, Node::A, Node::B, Node::A]
        );
        assert_eq!(p.counts(6), [4, 2]);
        assert_eq!(p.connector(2).target().addr.port(), 2);
        assert_eq!(p.connector(3).target().addr.port(), 1);
    }

    #[test]
    fn split_and_single_node() {
        let p = placement(Rule::Split { on_a: 3 }, true);
        assert_eq!(p.counts(5), [3, 2]);
        assert_eq!(p.node(3), Node::B);
        let alone = placement(Rule::Split { on_a: 3 }, false);
        assert!(!alone.is_cluster());
        assert_eq!(alone.counts(5), [5, 0]);
    }
}
