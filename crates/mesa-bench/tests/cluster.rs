//! Smoke runs of the cluster scenarios against two real `mesa-conformance` processes on one real
//! `redis-server`: a few hundred numbered messages each, checked for correctness (nothing lost, duplicated or
//! out of order; nothing delivered where it should not be), never for speed.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run, u64_at};
use mesa_bench::report::Report;
use mesa_testkit::process::{free_port, ChildGuard};
use mesa_testkit::redis::RedisServer;

/// The `mesa-conformance` binary: next to this test's own profile directory, as `cargo test --workspace`
/// builds it; built here (into a target directory of its own, since the outer cargo may hold the lock of the
/// usual one) when this test runs alone.
fn conformance_binary() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<this test> → target/<profile>/mesa-conformance
    if let Some(profile_dir) = test_exe.parent().and_then(|deps| deps.parent()) {
        let built = profile_dir.join("mesa-conformance");
        if built.is_file() {
            return built;
        }
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target/bench-cluster-test");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "mesa-conformance"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&workspace)
        .status()
        .expect("cargo build of mesa-conformance");
    assert!(status.success(), "cargo build of mesa-conformance failed");
    target.join("debug").join("mesa-conformance")
}

/// One `mesa-conformance` node on `redis`, killed on drop.
struct Node {
    process: ChildGuard,
    port: u16,
}

impl Node {
    fn start(redis: &RedisServer) -> Node {
        let binary = conformance_binary();
        for _ in 0..3 {
            let port = free_port();
            let mut process = ChildGuard::spawn(
                Command::new(&binary)
                    .env("PORT", port.to_string())
                    .env("REDIS_URL", redis.url())
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if process.wait_until_accepting(addr, Duration::from_secs(10)) {
                return Node { process, port };
            }
        }
        panic!("mesa-conformance did not start listening");
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

/// A redis-server, node A and node B, and the arguments that point a scenario at them.
struct Cluster {
    redis: RedisServer,
    a: Node,
    b: Node,
}

impl Cluster {
    fn start() -> Cluster {
        let redis = RedisServer::start();
        let a = Node::start(&redis);
        let b = Node::start(&redis);
        Cluster { redis, a, b }
    }

    /// `--url`, `--url-b`, the three pids and the Redis port.
    fn args(&self) -> Vec<String> {
        let redis_pid = self
            .redis
            .cli(&["info", "server"])
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .expect("process_id in INFO server")
            .trim()
            .to_string();
        [
            "--url".to_string(),
            self.a.url(),
            "--url-b".into(),
            self.b.url(),
            "--server-pid".into(),
            self.a.process.pid().to_string(),
            "--server-b-pid".into(),
            self.b.process.pid().to_string(),
            "--redis-pid".into(),
            redis_pid,
            "--redis-port".into(),
            self.redis.port().to_string(),
        ]
        .into()
    }

    async fn run(&self, scenario: &[&str]) -> Report {
        let mut args: Vec<String> = scenario.iter().map(|s| s.to_string()).collect();
        args.extend(self.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args).await
    }
}

fn number(report: &Report, path: &str) -> f64 {
    path.split('.')
        .fold(&report.results, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} in {}", report.results))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_two_nodes_loses_nothing() {
    let cluster = Cluster::start();
    let fanout = cluster
        .run(&[
            "fanout", "-r", "40", "-p", "64", "--rate", "100", "-d", "1s", "--drain", "5s",
        ])
        .await;
    let sent = u64_at(&fanout, "broadcasts_sent");
    assert!(sent >= 50, "{}", fanout.results);
    assert_eq!(u64_at(&fanout, "lost"), 0, "{}", fanout.results);
    assert_eq!(u64_at(&fanout, "duplicated"), 0);
    assert_eq!(u64_at(&fanout, "out_of_order"), 0);
    // One sender + 40 receivers: 21 on node A, 20 on node B, each got every broadcast.
    assert_eq!(u64_at(&fanout, "cluster.connections_on_a"), 21);
    assert_eq!(u64_at(&fanout, "cluster.connections_on_b"), 20);
    assert_eq!(u64_at(&fanout, "cluster.delivered_on_b"), sent * 20);
    assert_eq!(u64_at(&fanout, "cluster.lost_on_b"), 0);
    // Node B got the broadcasts from Redis: its sockets to Redis carried them.
    assert!(number(&fanout, "cluster.processes.node_b.redis_bytes_received") >= (sent * 64) as f64);
    assert!(number(&fanout, "cluster.processes.redis.cpu_pct") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_sends_reach_node_a_only() {
    let cluster = Cluster::start();
    let redis_url = cluster.redis.url();
    let targeted = cluster
        .run(&[
            "targeted",
            "-r",
            "20",
            "--rate",
            "300",
            "-p",
            "128",
            "-d",
            "1s",
            "--drain",
            "5s",
            "--redis-url",
            &redis_url,
            "--dispatch",
            "ours",
        ])
        .await;
    let sent = u64_at(&targeted, "sent");
    assert!(sent >= 200, "{}", targeted.results);
    assert_eq!(u64_at(&targeted, "warmed_recipients"), 20);
    assert_eq!(u64_at(&targeted, "lost"), 0, "{}", targeted.results);
    assert_eq!(u64_at(&targeted, "duplicated"), 0);
    assert_eq!(u64_at(&targeted, "out_of_order"), 0);
    assert_eq!(u64_at(&targeted, "publish_failed"), 0);
    assert_eq!(u64_at(&targeted, "misdelivered_on_b"), 0);
    assert_eq!(u64_at(&targeted, "cluster.connections_on_b"), 20);
    // Each send is more than 128 bytes on the wire; node B read far less than one per send (liveness only).
    let b_bytes = number(&targeted, "cluster.processes.node_b.redis_bytes_received");
    let a_bytes = number(&targeted, "cluster.processes.node_a.redis_bytes_received");
    assert!(a_bytes >= (sent * 128) as f64, "{}", targeted.results);
    assert!(b_bytes < (sent * 10) as f64, "{}", targeted.results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_over_two_nodes_counts_each_node_and_redis() {
    let cluster = Cluster::start();
    let idle = cluster
        .run(&["idle", "-n", "40", "--hold", "200ms", "--sources", "2"])
        .await;
    assert_eq!(u64_at(&idle, "connections_open"), 40);
    assert_eq!(u64_at(&idle, "connections.closed_by_server"), 0);
    assert_eq!(u64_at(&idle, "cluster.connections_on_a"), 20);
    assert_eq!(u64_at(&idle, "cluster.connections_on_b"), 20);
    for role in ["node_a", "node_b", "redis", "total"] {
        assert!(
            idle.results["cluster"]["rss_per_conn_bytes"][role].is_number(),
            "{role}: {}",
            idle.results
        );
    }
}
