//! The real Mesa 1.5 Node client (`@cryb/mesa` 1.5.8, in `compat/node-client`) against the conformance app.
//!
//! Needs `node` and `npm` on `PATH`: without them these tests fail (they are never skipped silently).
//! On a fresh clone the first test runs `npm ci` in `compat/node-client` once (guarded against concurrent tests,
//! in this process and across processes); later runs reuse `node_modules`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::Server;
use serde_json::{json, Value};

/// Longer than the script's own 20 s limit, so that the script's message is what a failure shows.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

fn node_client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../compat/node-client")
        .canonicalize()
        .expect("compat/node-client exists")
}

/// Runs `tool --version`, failing the test with a clear message when the tool is missing.
fn require_tool(tool: &str) -> String {
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

/// A lock directory shared by every test process of this workspace; removed on drop.
struct InstallLock(PathBuf);

impl InstallLock {
    fn acquire() -> InstallLock {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-node-client-install.lock");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return InstallLock(path),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock left by a killed test process: older than any install takes.
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|at| SystemTime::now().duration_since(at).ok())
                        .is_some_and(|age| age > Duration::from_secs(600));
                    if stale {
                        let _ = std::fs::remove_dir(&path);
                        continue;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "waited 10 minutes for another process's npm install ({})",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => panic!("cannot create {}: {error}", path.display()),
            }
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes sure `compat/node-client/node_modules` is installed: `npm ci` (or `npm install` without a lock file),
/// once, whoever asks first.
fn ensure_node_modules(dir: &Path) {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if installed(dir) {
        return;
    }
    let _lock = InstallLock::acquire();
    if installed(dir) {
        return;
    }
    let subcommand = if dir.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    eprintln!("running `npm {subcommand}` in {}", dir.display());
    let output = Command::new("npm")
        .args([subcommand, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .expect("run npm");
    assert!(
        output.status.success() && installed(dir),
        "`npm {subcommand}` in {} failed ({}):\n{}\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `node check-client.js <args>` against `server`, bounded by [`SCRIPT_TIMEOUT`]; prints its output.
async fn run_check_client(server: &Server, args: &[&str]) -> Output {
    let node = require_tool("node");
    let npm = require_tool("npm");
    eprintln!("node {node}, npm {npm}");
    let dir = node_client_dir();
    ensure_node_modules(&dir);
    let child = tokio::process::Command::new("node")
        .arg("check-client.js")
        .arg(server.url())
        .args(args)
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A timeout drops the child, which kills it.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .expect("check-client.js did not exit in time")
        .expect("wait for node");
    println!(
        "check-client.js {args:?} exited with {}\nstdout:\n{}stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The script's one-line JSON summary (its last stdout line).
fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .expect("check-client.js printed nothing");
    serde_json::from_str(line).expect("check-client.js summary is JSON")
}

#[tokio::test]
async fn real_mesa_node_client_works_against_the_conformance_app() {
    let server = Server::start();
    let output = run_check_client(&server, &["user:alice"]).await;
    assert!(
        output.status.success(),
        "check-client.js failed: see its output above"
    );
    let summary = summary(&output);
    assert_eq!(summary["ok"], true);
    assert_eq!(
        summary["user"],
        json!({"id": "alice", "name": "User alice"})
    );
    assert_eq!(summary["heartbeat_interval_ms"], 1000);
    let answered = summary["heartbeats_answered"].as_u64().unwrap_or(0);
    assert!(answered >= 6, "answered {answered} heartbeats");
    assert_eq!(summary["echo"]["type"], "ECHO");
    assert_eq!(summary["broadcast"]["type"], "BROADCAST");
}

#[tokio::test]
async fn node_client_check_fails_on_a_refused_authentication() {
    // The script's failure path: a refused token is reported, not mistaken for success.
    let server = Server::start();
    let output = run_check_client(&server, &["not-a-user-token", "--beats", "0"]).await;
    assert_eq!(output.status.code(), Some(1), "expected exit status 1");
    let summary = summary(&output);
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["phase"], "authentication");
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1008"),
        "error should name the 1008 close: {error}"
    );
}
