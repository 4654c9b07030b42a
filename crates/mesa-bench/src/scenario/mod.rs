//! The scenarios, and what they share: preparing the connector under the open-files limit, opening many
//! connections at once (each in its own task, answering heartbeats from the moment it opens), and counting
//! what went wrong.

pub mod cluster;
pub mod connect;
pub mod echo;
pub mod fanout;
pub mod idle;
pub mod resume;
pub mod sender;
pub mod storm;
pub mod targeted;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::args::{CommonArgs, InvalidArgs};
use crate::conn::{Conn, Connector, SessionOptions};
use crate::limits::{cap_connections, raise_nofile_limit, Capped};
use crate::procfs;
use crate::report::Report;
use crate::target::{SourceAddrs, MAX_SOURCES};

/// How long the generator waits for all connections of a scenario to open.
pub const RAMP_TIMEOUT: Duration = Duration::from_secs(180);

/// A connector sized for a scenario, and the notes about how it was sized.
#[derive(Debug)]
pub struct Setup {
    /// Opens the connections.
    pub connector: Arc<Connector>,
    /// The connection count after the open-files cap.
    pub capped: Capped,
    /// Remarks for the report (capping, extra source addresses).
    pub notes: Vec<String>,
}

/// Raises the open-files limit, caps `connections` to it (saying so on stderr) and picks enough source
/// addresses.
pub fn prepare(common: &CommonArgs, connections: usize) -> Result<Setup, InvalidArgs> {
    let target = common.target()?;
    let nofile = match raise_nofile_limit() {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("warning: cannot read or raise RLIMIT_NOFILE ({error}); assuming 1024");
            1024
        }
    };
    let capped = cap_connections(connections, nofile);
    let mut notes = Vec::new();
    if let Some(notice) = capped.notice() {
        eprintln!("{notice}");
        notes.push(notice);
    }
    if capped.granted == 0 {
        return Err(InvalidArgs(format!(
            "no connection fits under the open-files limit ({nofile})"
        )));
    }
    let needed = SourceAddrs::needed_for(capped.granted);
    let count = common.sources.max(needed).min(MAX_SOURCES);
    if count > common.sources {
        let note = format!(
            "using {count} source addresses instead of {} for {} connections",
            common.sources, capped.granted
        );
        eprintln!("{note}");
        notes.push(note);
    }
    let sources = SourceAddrs::new(&target, count);
    Ok(Setup {
        connector: Connector::with_sessions(target, sources, common.session_options()),
        capped,
        notes,
    })
}

impl CommonArgs {
    /// How the connections of this run log in (`--resumable`, `--ack-interval`).
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            resumable: self.resumable,
            ack_interval: (!self.ack_interval.is_zero()).then_some(self.ack_interval),
        }
    }
}

/// Counters of a ramp (opening many connections) and of connections that ended early.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open (and authenticated when asked).
    pub opened: AtomicU64,
    /// Connections that failed to open.
    pub failed: AtomicU64,
    /// Open connections the server closed (or dropped) before the scenario ended.
    pub closed: AtomicU64,
    /// Heartbeats answered, summed when connections end.
    pub heartbeats: AtomicU64,
    /// Frames that could not be read, summed when connections end.
    pub unreadable: AtomicU64,
    /// Connections on a resumable session (opened or resumed).
    pub resumable: AtomicU64,
    /// Resumable sessions opened (op 22 with `resumed: false`).
    pub sessions_started: AtomicU64,
    /// Resumable sessions resumed (op 22 with `resumed: true`).
    pub sessions_resumed: AtomicU64,
    /// Sequenced dispatches accepted, summed when connections end.
    pub sequenced: AtomicU64,
    /// Sequenced dispatches that skipped positions, summed when connections end.
    pub seq_gaps: AtomicU64,
    /// Positions those skipped.
    pub seq_missing: AtomicU64,
    /// Sequenced dispatches with `s` at or below the last one (dropped), summed when connections end.
    pub seq_dups: AtomicU64,
    /// Acknowledgements sent (op 11 with `s`), summed when connections end.
    pub acks_sent: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    close_codes: Mutex<BTreeMap<String, u64>>,
}

impl ConnStats {
    /// Counts a failure to open, by kind.
    pub fn open_failed(&self, label: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.errors).entry(label).or_default() += 1;
    }

    /// Counts an open connection that the server ended.
    pub fn closed_by_server(&self, code: Option<u16>) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        let key = code.map_or_else(|| "dropped".to_string(), |c| c.to_string());
        *lock(&self.close_codes).entry(key).or_default() += 1;
    }

    /// Counts a connection that logged in, by how (plain, fresh resumable session, resumed one).
    pub fn logged_in(&self, conn: &Conn) {
        if conn.session().is_some() {
            self.resumable.fetch_add(1, Ordering::Relaxed);
            let counter = if conn.resumed() {
                &self.sessions_resumed
            } else {
                &self.sessions_started
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a finished connection's own counters.
    pub fn finished(&self, conn: &Conn) {
        self.heartbeats
            .fetch_add(conn.heartbeats, Ordering::Relaxed);
        self.unreadable
            .fetch_add(conn.unreadable, Ordering::Relaxed);
        let seq = conn.seq;
        self.sequenced.fetch_add(seq.sequenced, Ordering::Relaxed);
        self.seq_gaps.fetch_add(seq.gaps, Ordering::Relaxed);
        self.seq_missing.fetch_add(seq.missing, Ordering::Relaxed);
        self.seq_dups.fetch_add(seq.dups, Ordering::Relaxed);
        self.acks_sent.fetch_add(seq.acks, Ordering::Relaxed);
    }

    /// Opened plus failed.
    pub fn attempted(&self) -> u64 {
        self.opened.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// The counters as JSON; the sequence counters only when some connection was on a resumable session.
    pub fn to_json(&self) -> Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = json!({
            "opened": get(&self.opened),
            "open_failed": get(&self.failed),
            "open_errors": *lock(&self.errors),
            "closed_by_server": get(&self.closed),
            "close_codes": *lock(&self.close_codes),
            "heartbeats_answered": get(&self.heartbeats),
            "unreadable_frames": get(&self.unreadable),
            "resumable": get(&self.resumable),
        });
        if get(&self.resumable) > 0 {
            if let Value::Object(map) = &mut out {
                for (key, counter) in [
                    ("sessions_started", &self.sessions_started),
                    ("sessions_resumed", &self.sessions_resumed),
                    ("sequenced", &self.sequenced),
                    ("seq_gaps", &self.seq_gaps),
                    ("seq_missing", &self.seq_missing),
                    ("seq_dups", &self.seq_dups),
                    ("acks_sent", &self.acks_sent),
                ] {
                    map.insert(key.into(), json!(get(counter)));
                }
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns `count` connection tasks. Each opens a connection (at most `ramp` at a time), authenticates as
/// `user:<token_prefix><index>` when a prefix is given, then runs `role(index, conn)`.
pub fn spawn_connections<F, Fut>(
    connector: &Arc<Connector>,
    count: usize,
    ramp: usize,
    token_prefix: Option<&str>,
    stats: &Arc<ConnStats>,
    role: F,
) -> JoinSet<()>
where
    F: Fn(usize, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connector = connector.clone();
    spawn_placed(
        move |_| connector.clone(),
        count,
        ramp,
        token_prefix,
        stats,
        role,
    )
}

/// [`spawn_connections`] where `place(index)` chooses the connector (the node) of each connection.
pub fn spawn_placed<P, F, Fut>(
    place: P,
    count: usize,
    ramp: usize,
    token_prefix: Option<&str>,
    stats: &Arc<ConnStats>,
    role: F,
) -> JoinSet<()>
where
    P: Fn(usize) -> Arc<Connector>,
    F: Fn(usize, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let semaphore = Arc::new(Semaphore::new(ramp.max(1)));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let connector = place(index);
        let semaphore = semaphore.clone();
        let stats = stats.clone();
        let role = role.clone();
        let token = token_prefix.map(|prefix| format!("user:{prefix}{index}"));
        tasks.spawn(async move {
            let opened = {
                let Ok(_permit) = semaphore.acquire().await else {
                    return;
                };
                open_one(&connector, token.as_deref()).await
            };
            match opened {
                Ok(conn) => {
                    stats.opened.fetch_add(1, Ordering::Relaxed);
                    stats.logged_in(&conn);
                    role(index, conn).await;
                }
                Err(error) => stats.open_failed(error.label()),
            }
        });
    }
    tasks
}

async fn open_one(
    connector: &Connector,
    token: Option<&str>,
) -> Result<Conn, crate::conn::OpenError> {
    let mut conn = connector.open().await?;
    if let Some(token) = token {
        connector.login(&mut conn, token).await?;
    }
    Ok(conn)
}

/// Waits (printing progress) until every connection of a ramp opened or failed, at most [`RAMP_TIMEOUT`].
/// Returns how long the ramp took.
pub async fn wait_for_ramp(stats: &ConnStats, count: usize, label: &str) -> Duration {
    let start = Instant::now();
    let mut last_print = Instant::now();
    while (stats.attempted() as usize) < count && start.elapsed() < RAMP_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{label} ramp {:>4.0}s] open {}/{count}, failed {}",
                start.elapsed().as_secs_f64(),
                stats.opened.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed)
            );
        }
    }
    start.elapsed()
}

/// Waits for the connection tasks to finish (they were told to stop), at most `limit`; aborts the rest.
pub async fn join_all(mut tasks: JoinSet<()>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    tasks.abort_all();
}

/// The server's RSS in KiB, when a pid was given and is readable.
pub fn server_rss(common: &CommonArgs) -> Option<u64> {
    common.server_pid.and_then(|pid| procfs::rss_kib(pid).ok())
}

/// Starts measuring the server's CPU time, when a pid was given.
pub fn server_cpu(common: &CommonArgs) -> Option<procfs::CpuMeter> {
    common.server_pid.map(procfs::CpuMeter::start)
}

/// Starts measuring the generator's own CPU time.
pub fn own_cpu() -> procfs::CpuMeter {
    procfs::CpuMeter::start(std::process::id())
}

/// A report with the fields every scenario fills the same way.
pub fn report(
    scenario: &'static str,
    common: &CommonArgs,
    url: &str,
    params: Value,
    results: Value,
    notes: Vec<String>,
) -> Report {
    Report {
        tool: "mesa-bench",
        scenario,
        name: common.name.clone().unwrap_or_else(|| scenario.to_string()),
        label: common.label.clone(),
        target: url.to_string(),
        server_pid: common.server_pid,
        params,
        results,
        notes,
    }
}

/// A short tag that tells this run's users apart from earlier runs' on the same server (the process id and
/// the clock), e.g. `3f2a1c9`: a resumable session's user gets its mailbox, what no device of that user
/// acknowledged, so users must not be shared between runs.
pub fn run_tag() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let count = RUNS.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}{:x}{count:x}",
        std::process::id() & 0xfff,
        millis & 0xf_ffff
    )
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Microseconds since `epoch`, the time base of the timestamps in probe payloads.
pub fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `per_second` divided by the server's share of a core: work per second of server CPU, or `null` when the
/// server's CPU use is unknown or negligible. This is the server's efficiency, and stays meaningful when the
/// generator, not the server, is what limits the rate.
pub fn per_server_cpu_second(per_second: f64, cpu_pct: &Value) -> Value {
    match cpu_pct.as_f64() {
        Some(pct) if pct >= 1.0 => json!(crate::report::round3(per_second / (pct / 100.0))),
        _ => Value::Null,
    }
}

/// A CPU percentage rounded for the report, or `null`.
pub fn cpu_json(meter: Option<procfs::CpuMeter>) -> Value {
    meter
        .and_then(|m| m.percent())
        .map_or(Value::Null, |p| json!(crate::report::round3(p)))
}
