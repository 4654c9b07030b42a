//! The browser client (`clients/js`) and the demo page, run by `cargo test`: `npm ci` when `node_modules` is
//! missing, then `npm test` there (build, unit tests on a fake clock, browser tests in Debian's Chromium
//! against this crate's `mesa` binary, passed as `MESA_BIN`). Screenshots go to `<repo>/target/test-output/browser/`.
//!
//! Needs `node`, `npm` and `/usr/bin/chromium` (`.ci/run` installs them): without them the test fails with a
//! clear message; it is never skipped. The npm processes run in their own process group, which is killed
//! (by its id) when they overrun, so no gateway or browser they started outlives the test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `npm ci` on a fresh machine (downloads typescript, playwright-core, mesa-js-client).
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);
/// The whole `npm test` (about 20 s here; generous for a loaded CI machine).
const NPM_TEST_TIMEOUT: Duration = Duration::from_secs(240);

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../clients/js")
        .canonicalize()
        .expect("clients/js exists")
}

/// Runs `npm <args>` in `dir` in its own process group with output to a file; returns the status (`None` when
/// it was killed for overrunning `limit`) and the output.
fn npm(dir: &Path, args: &[&str], limit: Duration) -> (Option<ExitStatus>, String) {
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "npm-{}-{}.log",
        args.join("-"),
        std::process::id()
    ));
    let log = File::create(&log_path).expect("create the npm log");
    let mut child = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("MESA_BIN", env!("CARGO_BIN_EXE_mesa"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run npm ({error}): install Node.js and npm (apt-get install nodejs npm)")
        });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for npm") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // The whole group: npm, node, and the gateways and browsers the tests started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status, output)
}

#[test]
fn npm_test_in_clients_js_passes_in_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "the browser tests need Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium \
         (.ci/run does this)"
    );
    let dir = client_dir();
    if !dir.join("node_modules/.package-lock.json").is_file() {
        let (status, output) = npm(&dir, &["ci", "--no-audit", "--no-fund"], NPM_CI_TIMEOUT);
        assert!(
            status.is_some_and(|status| status.success()),
            "npm ci in {} failed ({status:?}):\n{output}",
            dir.display()
        );
    }
    let (status, output) = npm(&dir, &["test"], NPM_TEST_TIMEOUT);
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("npm test in {} failed ({status}):\n{output}", dir.display()),
        None => panic!(
            "npm test in {} took longer than {NPM_TEST_TIMEOUT:?} and was killed:\n{output}",
            dir.display()
        ),
    }
    // The runner's summary, so a passing run still shows what ran (`cargo test -- --nocapture`).
    for line in output
        .lines()
        .filter(|line| line.starts_with("# pass") || line.starts_with("# fail"))
    {
        println!("{line}");
    }
}
