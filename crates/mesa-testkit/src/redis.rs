//! Real `redis-server` processes for tests, on free ports of 127.0.0.1, that a test can kill and restart;
//! a three-master Redis Cluster made of them; a `redis-sentinel` watching one.
//!
//! Never a mock: the engine is tested against the server it runs against. Each process keeps nothing on disk
//! (`--save "" --appendonly no`) and works in its own temporary directory; the guard kills it on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, ChildGuard};

/// How long a started server has to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory named after `prefix`, the process id and a counter.
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one inline command and returns the first reply line (blocking, for readiness checks and simple
/// probes; tests talk to Redis through the engine or `redis-cli`).
pub fn command(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

/// Waits until `port` answers PING with PONG, or panics.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if command(port, "PING").is_ok_and(|reply| reply == "+PONG") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis on port {port} did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned()
}

/// One `redis-server` process.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    dir: TempDir,
    process: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server on a free port with extra arguments (`["--cluster-enabled", "yes"]`, …).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: TempDir::new("mesa-redis"),
            process: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(ChildGuard::spawn(&mut command));
        wait_ready(self.port);
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process at once (SIGKILL, no goodbye), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL");
            let _ = process.wait_exit(Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port, empty (it kept nothing).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Runs `redis-cli -p <port> <args>` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Waits until `channel` has at least `n` subscribers (`PUBSUB NUMSUB`), or panics: a peer that says it
    /// is ready may still be subscribing, and a publish before that reaches nobody.
    pub fn wait_for_subscribers(&self, channel: &str, n: u64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let reply = self.cli(&["PUBSUB", "NUMSUB", channel]);
            let count = reply
                .lines()
                .nth(1)
                .and_then(|c| c.trim().parse::<u64>().ok());
            if count.is_some_and(|count| count >= n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel} has {reply:?} subscribers, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a new cluster has to report `cluster_state:ok`, and a Sentinel to know its master.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

/// A local Redis Cluster of three masters (no replicas), each a [`RedisServer`] with
/// `--cluster-enabled yes`, joined with `redis-cli --cluster create … --cluster-yes`.
pub struct RedisCluster {
    /// The masters, in the order of their slot ranges.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters on free ports and waits until every one reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The bus port is chosen too: the default (port + 10000) may not exist for a high port.
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `redis://127.0.0.1:<port>` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// One `redis-sentinel` process monitoring one master under a name, with its configuration file in a
/// temporary directory (Sentinel rewrites it).
pub struct RedisSentinel {
    port: u16,
    master: String,
    _dir: TempDir,
    _process: ChildGuard,
}

impl RedisSentinel {
    /// Starts a Sentinel on a free port monitoring `master` as `name` (quorum 1) and waits until it
    /// answers `SENTINEL get-master-addr-by-name` with the master's port.
    pub fn start(master: &RedisServer, name: &str) -> RedisSentinel {
        let port = free_port();
        let dir = TempDir::new("mesa-sentinel");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 5000\n",
                dir.path().display(),
                master.port()
            ),
        )
        .expect("write sentinel.conf");
        let mut command = Command::new("redis-sentinel");
        command
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = ChildGuard::spawn(&mut command);
        wait_ready(port);
        let sentinel = RedisSentinel {
            port,
            master: name.to_owned(),
            _dir: dir,
            _process: process,
        };
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while !sentinel
            .cli(&["sentinel", "get-master-addr-by-name", name])
            .contains(&master.port().to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the Sentinel does not know its master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis+sentinel://127.0.0.1:<port>/<master name>`, the URL the engine takes.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/{}", self.port, self.master)
    }

    /// Runs `redis-cli -p <port> <args>` against the Sentinel and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}
