//! Real `redis-server` processes for tests, on free ports of 127.0.0.1, that a test can kill and restart.
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
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }
}
