//! Child processes for tests: a guard that kills the child when dropped, so that a failing test never leaves a
//! server behind; free ports; and the address in a server's `listening on <addr>` log line.
//!
//! Processes are signalled and killed by their own child handle or pid, never by name.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a wait for a child's exit checks on it.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A port that was free a moment ago on 127.0.0.1 (another process may take it before the test binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The address in a `listening on <addr>` log line, in text or JSON log format.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    const MARKER: &str = "listening on ";
    let rest = &line[line.find(MARKER)? + MARKER.len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A child process that is killed (if still running) and reaped when the guard drops.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `command`; panics if it cannot be started.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
        ChildGuard { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) to this process by pid, with the `kill` utility (the workspace forbids
    /// `unsafe`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits at most `limit` for the process to exit, polling (blocking the thread); `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let ControlFlow::Break(status) = self.exited_by(deadline) {
                return status;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// [`ChildGuard::wait_exit`] that sleeps on the tokio timer, so the test's runtime keeps running meanwhile.
    pub async fn wait_exit_async(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let ControlFlow::Break(status) = self.exited_by(deadline) {
                return status;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// One poll of a wait for the exit: the status once the process has exited, `None` once `deadline` has
    /// passed, and `Continue` to poll again.
    fn exited_by(&mut self, deadline: Instant) -> ControlFlow<Option<ExitStatus>> {
        if let Some(status) = self.try_status() {
            return ControlFlow::Break(Some(status));
        }
        if Instant::now() >= deadline {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// Retries a TCP connect to `addr` until it is accepted, within `limit`; `false` if the process exited
    /// first or nothing accepted in time.
    pub fn wait_until_accepting(&mut self, addr: SocketAddr, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            if self.try_status().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The lines a child printed on stderr so far, collected by a background thread.
#[derive(Clone, Default)]
pub struct OutputLog(Arc<Mutex<Vec<String>>>);

impl OutputLog {
    fn push(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    /// Everything collected so far, one line per line.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// Waits (polling) at most `limit` for a line containing `needle` and returns it; panics with the whole
    /// output otherwise (a child writes its log asynchronously).
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A server process that announced its address with a `listening on <addr>` line on stderr.
pub struct ListeningChild {
    /// The process, killed when this drops.
    pub guard: ChildGuard,
    /// The address from the `listening on` line.
    pub addr: SocketAddr,
    /// Its stderr, collected line by line.
    pub stderr: OutputLog,
}

impl ListeningChild {
    /// Spawns `command` with stderr piped, collects its stderr lines and waits at most `limit` for its
    /// `listening on <addr>` line; panics with the exit status and the output if none comes.
    pub fn spawn(command: &mut Command, limit: Duration) -> ListeningChild {
        let mut guard = ChildGuard::spawn(command.stderr(Stdio::piped()));
        let pipe = guard.child_mut().stderr.take().expect("stderr");
        let stderr = OutputLog::default();
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                collected.push(line.clone());
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return ListeningChild {
                            guard,
                            addr,
                            stderr,
                        };
                    }
                }
                Err(_) => panic!(
                    "{:?} did not print its address; status {:?}; output:\n{}",
                    command.get_program(),
                    guard.try_status(),
                    stderr.text()
                ),
            }
        }
    }
}

/// Runs `command` (stderr piped) expecting it to exit by itself within `limit`, as on a configuration error;
/// returns its status and stderr. Panics, killing it, if it keeps running.
pub fn run_to_exit(command: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut guard = ChildGuard::spawn(command.stderr(Stdio::piped()));
    let Some(status) = guard.wait_exit(limit) else {
        panic!("{:?} kept running", command.get_program());
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = guard.child_mut().stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}
