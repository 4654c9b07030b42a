//! Running the real Mesa 1.5 Node packages (`@cryb/mesa` 1.5.8 in `compat/node-client` and `compat/node-server`)
//! from Rust tests: `node`/`npm` checks, a guarded `npm ci`, and `check-client.js`.
//!
//! One copy, included by the tests of `mesa-conformance`, `mesa-cli` and `mesa-client` with
//! `#[path = "../../../compat/node_harness.rs"] mod node_harness;`. The crates live in `crates/<name>`, so
//! `CARGO_MANIFEST_DIR/../../compat/node-client` is the client's directory for each.
//!
//! Needs `node` and `npm` on `PATH`: without them a test fails with a clear message (it is never skipped).
//! On a fresh clone the first test to ask runs `npm ci` here once; later runs reuse `node_modules`. The
//! install is guarded in the process (a mutex) and across processes (a lock directory in the system temporary
//! directory, named after this directory's path, so that the test binaries of both crates share it while other
//! checkouts do not). A lock left by a killed test process is taken over once its owner is gone or once it is
//! older than any install may take; waiting longer than that fails with the lock's path.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Longer than the script's own 20 s limit, so that the script's message is what a failure shows.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

/// How long `npm ci` may take before it is killed and the test fails.
pub const NPM_TIMEOUT: Duration = Duration::from_secs(300);

/// A lock older than this is stale whoever holds it: its install has been killed by [`NPM_TIMEOUT`].
const LOCK_STALE_AFTER: Duration = Duration::from_secs(360);

/// How long a test waits for another process's install before failing.
const LOCK_WAIT: Duration = Duration::from_secs(420);

/// `compat/node-client`, canonicalized.
pub fn node_client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../compat/node-client")
        .canonicalize()
        .expect("compat/node-client exists")
}

/// Runs `tool --version`, failing the test with a clear message when the tool is missing.
pub fn require_tool(tool: &str) -> String {
    match Command::new(tool).arg("--version").output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        }
        Ok(output) => panic!(
            "`{tool} --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!(
            "`{tool}` is required by the Node client compatibility test but cannot be run ({error}); \
             install Node.js and npm (for example `apt-get install nodejs npm`)"
        ),
    }
}

/// Whether a complete install is present (npm writes `node_modules/.package-lock.json` last).
fn installed(dir: &Path) -> bool {
    dir.join("node_modules/.package-lock.json").is_file()
        && dir.join("node_modules/@cryb/mesa/package.json").is_file()
}

/// FNV-1a: a hash that is the same in every build (std's hashers promise no such thing).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cross-process lock for installing into `dir`: in the system temporary directory (shared by every test
/// binary, unlike `CARGO_TARGET_TMPDIR`), named after `dir`'s path.
fn lock_path(dir: &Path) -> PathBuf {
    let hash = fnv1a(dir.to_string_lossy().as_bytes());
    std::env::temp_dir().join(format!("mesa-compat-node-client-npm-{hash:016x}.lock"))
}

/// A lock directory holding an `owner` file (`pid <pid>`); removed on drop, also when the install panics.
struct InstallLock(PathBuf);

impl InstallLock {
    fn acquire(dir: &Path) -> InstallLock {
        let path = lock_path(dir);
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let owner = format!("pid {}\ndir {}\n", std::process::id(), dir.display());
                    let _ = std::fs::write(path.join("owner"), owner);
                    return InstallLock(path);
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some(why) = stale(&path) {
                        eprintln!(
                            "taking over the npm install lock {} ({why})",
                            path.display()
                        );
                        // Renaming first: of several waiters that found it stale, one removes it.
                        let aside = path.with_extension(format!(
                            "stale-{}-{}",
                            std::process::id(),
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos())
                        ));
                        if std::fs::rename(&path, &aside).is_ok() {
                            let _ = std::fs::remove_dir_all(&aside);
                        }
                        continue;
                    }
                    if Instant::now() >= deadline {
                        let owner = std::fs::read_to_string(path.join("owner")).unwrap_or_default();
                        panic!(
                            "waited {} s for the npm install lock {} (owner: {}); if no `npm ci` is running \
                             in {}, remove it: rm -r {}",
                            LOCK_WAIT.as_secs(),
                            path.display(),
                            owner.trim().replace('\n', ", "),
                            dir.display(),
                            path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => panic!("cannot create {}: {error}", path.display()),
            }
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why the lock at `path` is stale, if it is: its owner process is gone, or it is older than any install.
fn stale(path: &Path) -> Option<String> {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok());
    if let Some(age) = age.filter(|age| *age > LOCK_STALE_AFTER) {
        return Some(format!("{} s old", age.as_secs()));
    }
    // The owner's pid, checked where /proc lists processes. No owner file yet: its creator is writing it.
    let owner = std::fs::read_to_string(path.join("owner")).ok()?;
    let pid: u32 = owner
        .lines()
        .find_map(|line| line.strip_prefix("pid "))?
        .trim()
        .parse()
        .ok()?;
    let proc = Path::new("/proc");
    (proc.join("self").exists() && !proc.join(pid.to_string()).exists())
        .then(|| format!("its owner, process {pid}, is gone"))
}

/// Runs `command` with its output captured, killing it after `limit`; `None` as the status on a timeout.
fn run_bounded(mut command: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    (status, output)
}

/// Makes sure `dir/node_modules` is installed: `npm ci` (or `npm install` without a lock file), once,
/// whoever asks first.
pub fn ensure_node_modules(dir: &Path) {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if installed(dir) {
        return;
    }
    let _lock = InstallLock::acquire(dir);
    if installed(dir) {
        return;
    }
    let subcommand = if dir.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    eprintln!("running `npm {subcommand}` in {}", dir.display());
    let mut command = Command::new("npm");
    command
        .args([subcommand, "--no-audit", "--no-fund"])
        .current_dir(dir);
    let (status, output) = run_bounded(command, NPM_TIMEOUT);
    match status {
        Some(status) if status.success() && installed(dir) => {}
        Some(status) => panic!(
            "`npm {subcommand}` in {} failed ({status}):\n{output}",
            dir.display()
        ),
        None => panic!(
            "`npm {subcommand}` in {} did not finish in {} s (killed):\n{output}",
            dir.display(),
            NPM_TIMEOUT.as_secs()
        ),
    }
}

/// Checks for `node` and `npm`, installs `node_modules` if needed, and returns the script's directory.
pub fn prepare() -> PathBuf {
    let node = require_tool("node");
    let npm = require_tool("npm");
    eprintln!("node {node}, npm {npm}");
    let dir = node_client_dir();
    ensure_node_modules(&dir);
    dir
}

/// Starts `node check-client.js <url> <args>` (after [`prepare`]); the child is killed if dropped.
pub fn spawn_check_client(url: &str, args: &[&str]) -> tokio::process::Child {
    let dir = prepare();
    tokio::process::Command::new("node")
        .arg("check-client.js")
        .arg(url)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timeout drops the child, which kills it.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node")
}

/// Waits for a child of [`spawn_check_client`], bounded by [`SCRIPT_TIMEOUT`], and prints its output.
pub async fn wait_check_client(child: tokio::process::Child, args: &[&str]) -> Output {
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "check-client.js {args:?} did not exit in {} s (killed)",
                SCRIPT_TIMEOUT.as_secs()
            )
        })
        .expect("wait for node");
    println!(
        "check-client.js {args:?} exited with {}\nstdout:\n{}stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `node check-client.js <url> <args>` to completion, bounded by [`SCRIPT_TIMEOUT`]; prints its output.
pub async fn run_check_client(url: &str, args: &[&str]) -> Output {
    let child = spawn_check_client(url, args);
    wait_check_client(child, args).await
}

/// The script's one-line JSON summary (its last stdout line).
pub fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .expect("check-client.js printed nothing");
    serde_json::from_str(line).expect("check-client.js summary is JSON")
}

/// `compat/<name>` (a Node fixture package), canonicalized, with `node` and `npm` checked and its packages
/// installed.
pub fn fixture_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../compat")
        .join(name)
        .canonicalize()
        .unwrap_or_else(|e| panic!("compat/{name} exists: {e}"));
    require_tool("node");
    require_tool("npm");
    ensure_node_modules(&dir);
    dir
}

/// A `node <script> <args>` process of a fixture package, talking in lines on stdin and stdout, killed when
/// dropped (tests that run Node peers: Portal, Dispatcher, nodes and clients of Mesa 1.5).
pub struct NodeScript {
    /// The process, for its exit status.
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl NodeScript {
    /// Starts `script` in `compat/<fixture>` with `args`.
    pub fn spawn(fixture: &str, script: &str, args: &[&str]) -> NodeScript {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(fixture_dir(fixture))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        NodeScript {
            stdin: child.stdin.take(),
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next line it prints, within [`SCRIPT_TIMEOUT`].
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(SCRIPT_TIMEOUT, self.lines.next_line())
            .await
            .expect("a line from node in time")
            .expect("read node's output")
            .expect("node exited early")
    }

    /// Writes `line` as one JSON line on its stdin.
    pub async fn write(&mut self, line: &Value) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to node");
        stdin.flush().await.expect("flush");
    }

    /// Waits for it to exit, within [`SCRIPT_TIMEOUT`].
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(SCRIPT_TIMEOUT, self.child.wait())
            .await
            .expect("node exits in time")
            .expect("wait for node")
    }
}
