//! The chaos test (issue 10): a cluster of 3 Mesa nodes, many users each with one `mesa-client` behind its
//! own loopback TCP proxy, numbered durable messages streamed to the users while the test cuts and pauses
//! connections at random, kills one node (no drain) and drains another, restarting both. At the end every
//! user must have received exactly `1..=sent` of its numbers, in order, with no duplicate and no gap, except
//! across a recorded invalid session (a fresh session: the application would refetch its state).
//!
//! The harness is generic over [`Nodes`] (start, drain, kill, restart node i), so that an engine other than
//! the in-memory one (Redis) only needs its own node factory. Today: [`MemoryNodes`], 3 nodes in this
//! process sharing one `MemoryEngine`, each on its own Tokio runtime so that a kill drops every task of the
//! node at once (its sockets close, nothing is released: the engine keeps the sessions, held by connections
//! that no longer exist).
//!
//! Short form (normal test suite, about 15 s of chaos): `cargo test -p mesa-client --test chaos`.
//! Long form: `MESA_CHAOS_SECS=300 cargo test -p mesa-client --test chaos -- --nocapture`
//! (`MESA_CHAOS_USERS` for more users, `MESA_CHAOS_SEED` to replay a run's random choices; the seed is
//! printed). `MESA_CHAOS_NO_RESUME=1` turns resumable sessions off in the clients: the test must then fail
//! (gaps), which shows it can.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use mesa_client::{Client, Event, Events};
use mesa_redis::{RedisConfig, RedisEngine};
use mesa_server::config::ResumeConfig;
use mesa_server::{Config, Engine, Frame, MemoryEngine, Mesa, SessionPolicy};
use mesa_testkit::redis::RedisServer;
use mesa_testkit::server::with_token_auth;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Frames a node's session may have queued before it is closed with 4010: small, so that a paused
/// connection reaches it quickly.
const OUTBOUND_QUEUE: usize = 32;
/// Messages sent to a paused user at once (past the outbound queue plus the kernel's socket buffers).
const PAUSE_BURST: u64 = 300;
/// How long a pause stops server-to-client forwarding.
const PAUSE: Duration = Duration::from_millis(1500);
/// How long a half cut keeps the server side of the connection open.
const HALF_OPEN_HOLD: Duration = Duration::from_secs(3);
/// How long the end of the test waits for every user's last message.
const CATCH_UP: Duration = Duration::from_secs(12);
/// Events kept per client for the failure report.
const LOG_EVENTS: usize = 60;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------------------
// The node factory: the one thing an engine variant provides.

/// A node that is up: where it listens and its handle (for sends).
#[derive(Clone)]
struct NodeUp {
    addr: SocketAddr,
    mesa: Mesa,
}

/// Starts and stops the nodes of one cluster. Node indexes are `0..count()`.
trait Nodes {
    fn count(&self) -> usize;
    /// An engine on the nodes' store that reads users' streams (to settle a send whose outcome is unknown).
    fn reader(&self) -> Arc<dyn Engine>;
    /// Starts node `i` (first start, or again after a drain or a kill) on a fresh port of 127.0.0.1.
    async fn start(&mut self, i: usize) -> NodeUp;
    /// Graceful shutdown of node `i`: op 7 paced over the drain window, then 1012; returns once it is done.
    async fn drain(&mut self, i: usize);
    /// Node `i` dies: every task and socket of it goes at once, nothing is released or drained.
    async fn kill(&mut self, i: usize);
    /// Starts node `i` again after a drain or a kill (the engine still holds the sessions).
    async fn restart(&mut self, i: usize) -> NodeUp {
        self.start(i).await
    }
}

/// The server configuration every variant uses.
fn node_config() -> Config {
    let mut config = Config {
        resume: ResumeConfig {
            max_messages: 4000,
            session_ttl_ms: 120_000,
            ..ResumeConfig::default()
        },
        shutdown_timeout_ms: 4000,
        shutdown_grace_ms: 500,
        shutdown_drain_window_ms: 800,
        shutdown_retry_jitter_ms: 200,
        ..Config::default()
    };
    config.limits.outbound_queue = OUTBOUND_QUEUE;
    // A stuck socket (paused proxy) gives up writing the 4010 close quickly.
    config.limits.write_timeout_ms = 1000;
    config.reconnect.interval_ms = 50;
    config
}

/// The in-memory variant: nodes of this process sharing one [`MemoryEngine`], each on its own runtime.
struct MemoryNodes {
    engine: MemoryEngine,
    running: Vec<Option<RunningNode>>,
}

/// One node, on its own runtime.
struct RunningNode {
    up: NodeUp,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serve: JoinHandle<std::io::Result<()>>,
}

fn node_runtime(i: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("node-{i}"))
        .enable_all()
        .build()
        .expect("node runtime")
}

impl RunningNode {
    /// Serves a node with `engine` on `runtime`, on a fresh port of 127.0.0.1.
    fn serve(runtime: tokio::runtime::Runtime, engine: Arc<dyn Engine>) -> RunningNode {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let mesa = with_token_auth(Mesa::builder())
            .config(node_config())
            .engine(engine)
            .build();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = mesa.clone();
        let serve = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        RunningNode {
            up: NodeUp { addr, mesa },
            runtime,
            stop: Some(stop),
            serve,
        }
    }

    /// Graceful shutdown: op 7 paced over the drain window, then 1012.
    async fn drain(mut self, i: usize) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(10), &mut self.serve).await;
        assert!(
            done.is_ok(),
            "node {i} did not finish its graceful shutdown"
        );
        self.runtime.shutdown_background();
    }
}

impl MemoryNodes {
    fn new(count: usize, policy: SessionPolicy) -> MemoryNodes {
        MemoryNodes {
            engine: MemoryEngine::with_sessions(policy),
            running: (0..count).map(|_| None).collect(),
        }
    }
}

impl Nodes for MemoryNodes {
    fn count(&self) -> usize {
        self.running.len()
    }

    fn reader(&self) -> Arc<dyn Engine> {
        Arc::new(self.engine.clone())
    }

    async fn start(&mut self, i: usize) -> NodeUp {
        assert!(self.running[i].is_none(), "node {i} is already up");
        let node = RunningNode::serve(node_runtime(i), Arc::new(self.engine.clone()));
        let up = node.up.clone();
        self.running[i] = Some(node);
        up
    }

    async fn drain(&mut self, i: usize) {
        if let Some(node) = self.running[i].take() {
            node.drain(i).await;
        }
    }

    async fn kill(&mut self, i: usize) {
        let Some(node) = self.running[i].take() else {
            return;
        };
        // Every task of the node is dropped where it stands: sockets close without a close frame, no
        // session is released (holders stay set to connections that no longer exist).
        node.runtime.shutdown_background();
        // The engine notices the death (a remote engine by the node's expiry): no more routing to it.
        let engine = node.up.mesa.engine().clone();
        engine.detach(node.up.mesa.node_id()).await;
    }
}

/// The Redis variant: each node with its own [`RedisEngine`] (on the node's runtime) on one real
/// `redis-server` this test starts; streams and sessions live in Redis, so a session outlives its node. A
/// kill aborts the engine without a goodbye: the other nodes reap the dead node after its TTL and release
/// the sessions it held.
struct RedisNodes {
    config: RedisConfig,
    running: Vec<Option<(RunningNode, Arc<RedisEngine>)>>,
    /// Attached to no node: reads streams only.
    reader: Arc<RedisEngine>,
}

impl RedisNodes {
    fn new(count: usize, url: &str, policy: SessionPolicy) -> RedisNodes {
        let mut config = RedisConfig::from_url(url)
            .expect("a Redis URL")
            .with_namespace("chaos")
            .with_node_ttl(Duration::from_millis(1500))
            .with_sessions(Some(policy));
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(300);
        RedisNodes {
            reader: RedisEngine::connect(config.clone()).expect("a valid Redis configuration"),
            config,
            running: (0..count).map(|_| None).collect(),
        }
    }
}

impl Nodes for RedisNodes {
    fn count(&self) -> usize {
        self.running.len()
    }

    fn reader(&self) -> Arc<dyn Engine> {
        self.reader.clone()
    }

    async fn start(&mut self, i: usize) -> NodeUp {
        assert!(self.running[i].is_none(), "node {i} is already up");
        let runtime = node_runtime(i);
        let config = self.config.clone();
        // The engine's tasks belong to the node: started on its runtime.
        let engine = runtime
            .spawn(async move { RedisEngine::connect(config) })
            .await
            .expect("engine task")
            .expect("a valid Redis configuration");
        let node = RunningNode::serve(runtime, engine.clone());
        let up = node.up.clone();
        self.running[i] = Some((node, engine));
        up
    }

    async fn drain(&mut self, i: usize) {
        if let Some((node, _engine)) = self.running[i].take() {
            node.drain(i).await;
        }
    }

    async fn kill(&mut self, i: usize) {
        let Some((node, engine)) = self.running[i].take() else {
            return;
        };
        engine.abort();
        node.runtime.shutdown_background();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The nodes that are up, shared by the proxies (where to connect) and the sender (which node sends).

#[derive(Clone, Default)]
struct Book(Arc<Mutex<Vec<Option<NodeUp>>>>);

impl Book {
    fn set(&self, i: usize, up: Option<NodeUp>) {
        let mut nodes = lock(&self.0);
        if nodes.len() <= i {
            nodes.resize(i + 1, None);
        }
        nodes[i] = up;
    }

    fn pick(&self, rng: &mut Rng) -> Option<NodeUp> {
        let nodes = lock(&self.0);
        let up: Vec<&NodeUp> = nodes.iter().flatten().collect();
        if up.is_empty() {
            return None;
        }
        Some(up[rng.below(up.len())].clone())
    }
}

// ---------------------------------------------------------------------------------------------------------
// One loopback proxy per client: picks a live node for each TCP connection, and can cut or pause it.

struct Proxy {
    url: String,
    /// Bumped to cut the current connection (both sides dropped at once).
    cut: watch::Sender<u64>,
    /// Bumped to cut only the client side: the server side stays open (half-open, silent) for a while, so
    /// the client's resume on another connection takes the session over (4012 to the old one).
    half_cut: watch::Sender<u64>,
    /// While true, nothing is read from the server side (its queue fills up: 4010).
    paused: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(book: Book, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("ws://{}/", listener.local_addr().expect("addr"));
        let (cut, cut_rx) = watch::channel(0u64);
        let (half_cut, half_cut_rx) = watch::channel(0u64);
        let (paused, paused_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let mut pipes: Vec<JoinHandle<()>> = Vec::new();
            while let Ok((down, _)) = listener.accept().await {
                pipes.retain(|p| !p.is_finished());
                // No node up: the client sees a failed connection and retries.
                let Some(node) = book.pick(&mut rng) else {
                    continue;
                };
                pipes.push(tokio::spawn(pipe(
                    down,
                    node.addr,
                    cut_rx.clone(),
                    half_cut_rx.clone(),
                    paused_rx.clone(),
                )));
            }
            for p in pipes {
                p.abort();
            }
        });
        Proxy {
            url,
            cut,
            half_cut,
            paused,
            task,
        }
    }

    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn half_cut(&self) {
        self.half_cut.send_modify(|n| *n += 1);
    }

    fn pause(&self, on: bool) {
        let _ = self.paused.send(on);
    }
}

async fn pipe(
    down: TcpStream,
    node: SocketAddr,
    mut cut: watch::Receiver<u64>,
    mut half_cut: watch::Receiver<u64>,
    paused: watch::Receiver<bool>,
) {
    cut.mark_unchanged();
    half_cut.mark_unchanged();
    let Ok(socket) = TcpSocket::new_v4() else {
        return;
    };
    // A small receive buffer: a pause backs up into the server quickly.
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(Ok(up)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(node)).await
    else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let (mut down_read, mut down_write) = down.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let to_server = tokio::io::copy(&mut down_read, &mut up_write);
    let to_client = async {
        let mut paused = paused;
        let mut buf = vec![0u8; 4096];
        loop {
            if paused.wait_for(|p| !*p).await.is_err() {
                return;
            }
            match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if down_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let half = tokio::select! {
        _ = to_server => false,
        () = to_client => false,
        _ = cut.changed() => false,
        _ = half_cut.changed() => true,
    };
    if half {
        drop(down_read);
        drop(down_write);
        // The server side stays open and silent (nothing read, nothing written) until the server gives
        // up on it (heartbeat) or the hold ends.
        let _ = tokio::time::timeout(HALF_OPEN_HOLD, cut.changed()).await;
        drop((up_read, up_write));
    }
}

// ---------------------------------------------------------------------------------------------------------
// What each client saw.

#[derive(Default)]
struct Record {
    /// The last number handed over (0 before the first).
    last: u64,
    /// Distinct numbers handed over.
    delivered: u64,
    duplicates: u64,
    /// Jumps past `last + 1` outside an invalid session: must not happen.
    gaps: u64,
    missing: u64,
    /// Numbers skipped right after an invalid session (allowed: the application refetches).
    allowed_loss: u64,
    /// Numbers handed over again right after an invalid session (the fresh session's mailbox).
    redelivered: u64,
    invalid_sessions: u64,
    /// An invalid session was reported and no new number arrived since.
    after_invalidation: bool,
    started: u64,
    resumed: u64,
    disconnects: u64,
    closes_4010: u64,
    misrouted: u64,
    unsequenced: u64,
    log: VecDeque<String>,
}

impl Record {
    fn note(&mut self, entry: String) {
        if self.log.len() == LOG_EVENTS {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    fn event(&mut self, user: &str, event: &Event) {
        match event {
            Event::Message(frame) => {
                let d: &Value = &frame.d;
                if d["user"] != user {
                    self.misrouted += 1;
                    self.note(format!("misrouted {}", d));
                    return;
                }
                let Some(n) = d["n"].as_u64() else {
                    self.misrouted += 1;
                    return;
                };
                if frame.s.is_none() {
                    self.unsequenced += 1;
                }
                self.note(format!("n={n} s={:?}", frame.s));
                if n <= self.last {
                    if self.after_invalidation {
                        self.redelivered += 1;
                    } else {
                        self.duplicates += 1;
                        self.note(format!("DUPLICATE n={n} last={}", self.last));
                    }
                    return;
                }
                if n > self.last + 1 {
                    if self.after_invalidation {
                        self.allowed_loss += n - self.last - 1;
                    } else {
                        self.gaps += 1;
                        self.missing += n - self.last - 1;
                        self.note(format!("GAP {}..{}", self.last + 1, n - 1));
                    }
                }
                self.after_invalidation = false;
                self.last = n;
                self.delivered += 1;
            }
            Event::SessionStarted(started) => {
                self.started += 1;
                self.note(format!("started {:?}", started));
                if started.invalidated.is_some() {
                    self.invalid_sessions += 1;
                    self.after_invalidation = true;
                }
            }
            Event::SessionResumed(resumed) => {
                self.resumed += 1;
                self.note(format!("resumed after {}", resumed.resumed_after));
            }
            Event::AuthenticationRefused { reason } => {
                self.invalid_sessions += 1;
                self.after_invalidation = true;
                self.note(format!("op 9 {reason}"));
            }
            Event::Disconnected(why) => {
                self.disconnects += 1;
                if why.code == 4010 {
                    self.closes_4010 += 1;
                }
                self.note(format!("closed {} {:?}", why.code, why.reason));
            }
            Event::ConnectionFailed(failed) => self.note(format!("failed: {}", failed.error)),
            _ => {}
        }
    }
}

struct User {
    name: String,
    client: Client,
    proxy: Proxy,
    record: Arc<Mutex<Record>>,
    reader: JoinHandle<()>,
}

async fn read_events(name: String, mut events: Events, record: Arc<Mutex<Record>>) {
    while let Some(event) = events.next().await {
        lock(&record).event(&name, &event);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The sender: numbered messages, consecutive per user, through random live nodes.

struct Sender {
    /// Per user: the last number sent (accepted by a node).
    sent: Arc<Vec<AtomicU64>>,
    bursts: mpsc::UnboundedSender<(usize, u64)>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sender {
    /// `reader` settles a send that failed with its outcome unknown (the node died or the engine timed out
    /// after handing it to the store): with resumable sessions every durable send to a user is appended to
    /// the user's stream, so whether the stream's head moved says whether it was sent. A retry of a send
    /// that was in fact appended would be the producer's duplicate, not the gateway's.
    fn start(
        book: Book,
        users: Vec<String>,
        budget: u64,
        per_second: u64,
        reader: Option<Arc<dyn Engine>>,
        seed: u64,
    ) -> Sender {
        let sent: Arc<Vec<AtomicU64>> = Arc::new(users.iter().map(|_| AtomicU64::new(0)).collect());
        let (bursts, mut burst_rx) = mpsc::unbounded_channel::<(usize, u64)>();
        let (stop, mut stop_rx) = watch::channel(false);
        let counts = sent.clone();
        let task = tokio::spawn(async move {
            // Per user: entries appended to its stream so far (the sender is its only producer).
            let mut appended = vec![0u64; users.len()];
            let mut rng = Rng::new(seed);
            let mut total = 0u64;
            let tick = Duration::from_micros(1_000_000 / per_second.max(1));
            let mut next_tick = Instant::now();
            while total < budget && !*stop_rx.borrow() {
                let (user, count) = match burst_rx.try_recv() {
                    Ok(burst) => burst,
                    Err(_) => {
                        next_tick += tick;
                        tokio::select! {
                            () = tokio::time::sleep_until(next_tick) => {}
                            _ = stop_rx.changed() => break,
                        }
                        (rng.below(users.len()), 1)
                    }
                };
                for _ in 0..count.min(budget - total) {
                    // Retry one number until a node accepts it, so that numbers stay consecutive.
                    for _attempt in 0..50 {
                        let Some(node) = book.pick(&mut rng) else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let n = counts[user].load(Ordering::SeqCst) + 1;
                        let frame = Frame::dispatch("N", json!({"user": users[user], "n": n}));
                        let accepted = node
                            .mesa
                            .send_to([users[user].as_str()], &frame)
                            .await
                            .is_ok();
                        let sent = match &reader {
                            Some(reader) if !accepted => {
                                was_appended(&**reader, &users[user], appended[user]).await
                            }
                            _ => accepted,
                        };
                        if sent {
                            appended[user] += 1;
                            counts[user].store(n, Ordering::SeqCst);
                            total += 1;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if total.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        Sender {
            sent,
            bursts,
            stop,
            task,
        }
    }
}

/// Whether `user`'s stream holds an entry past `known` (the entries the sender knows it appended): a failed
/// send's outcome, once whatever was still on its way has landed.
async fn was_appended(reader: &dyn Engine, user: &str, known: u64) -> bool {
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        match reader.read_stream(user, known, 1).await {
            Ok(Ok(read)) => return read.head > known,
            // Entries after `known` were appended and trimmed (acknowledged) already.
            Ok(Err(_gap)) => return true,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the stream of {user} could not be read to settle a failed send");
}

// ---------------------------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Chaos {
    cuts: u64,
    half_cuts: u64,
    pauses: u64,
    kills: u64,
    drains: u64,
}

async fn run_chaos<N: Nodes>(mut nodes: N, users: usize, chaos_for: Duration, seed: u64) {
    assert!(
        nodes.count() >= 3,
        "the schedule kills node 1 and drains node 2"
    );
    let resume = std::env::var("MESA_CHAOS_NO_RESUME").is_err();
    let mut rng = Rng::new(seed);
    let book = Book::default();
    for i in 0..nodes.count() {
        let up = nodes.start(i).await;
        book.set(i, Some(up));
    }

    let mut clients = Vec::with_capacity(users);
    for u in 0..users {
        let name = format!("u{u}");
        let proxy = Proxy::start(book.clone(), seed ^ ((u as u64 + 1) * 0x9e37)).await;
        let (client, events) = Client::builder(proxy.url.clone())
            .credentials(json!({"token": format!("user:{name}")}))
            .reconnect_interval(Duration::from_millis(50))
            .reconnect_cap(Duration::from_millis(400))
            .jitter_seed(seed ^ u as u64)
            .resume_sessions(resume)
            .build()
            .expect("client");
        let record = Arc::new(Mutex::new(Record::default()));
        let reader = tokio::spawn(read_events(name.clone(), events, record.clone()));
        clients.push(User {
            name,
            client,
            proxy,
            record,
            reader,
        });
    }
    // Everyone authenticated (a session started) before the first message.
    let ready_by = Instant::now() + Duration::from_secs(10);
    for user in &clients {
        while (lock(&user.record).started == 0 && resume)
            || user.client.lifecycle() != mesa_client::Lifecycle::Ready
        {
            assert!(
                Instant::now() < ready_by,
                "{} never became ready: {:?}",
                user.name,
                lock(&user.record).log
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let secs = chaos_for.as_secs().max(1);
    let per_second = 150;
    // A bound, not a target: the steady stream plus about one burst a second.
    let budget = secs * (per_second + PAUSE_BURST);
    let sender = Sender::start(
        book.clone(),
        clients.iter().map(|u| u.name.clone()).collect(),
        budget,
        per_second,
        resume.then(|| nodes.reader()),
        seed ^ 0x5eed,
    );

    let mut chaos = Chaos::default();
    let started = Instant::now();
    let end = started + chaos_for;
    // Node events at fixed fractions of the run (repeated every 30 s in the long form).
    let period = chaos_for.min(Duration::from_secs(30));
    let mut next_kill = started + period.mul_f64(0.3);
    let mut next_drain = started + period.mul_f64(0.6);
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut next_cut = started + rng.millis(50, 250);
    let mut next_pause = started + rng.millis(300, 1500);
    let mut unpause: Vec<(Instant, usize)> = Vec::new();
    // Server-side closes with 4010 (slow consumer) and 4012 (taken over), summed over node lives.
    let (mut server_4010, mut server_4012) = (0u64, 0u64);
    let count = |mesa: &Mesa, wanted: u16| -> u64 {
        mesa.metrics()
            .snapshot()
            .server_closes
            .iter()
            .filter(|(code, _)| *code == wanted)
            .map(|(_, n)| n)
            .sum()
    };

    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_cut {
            let u = rng.below(users);
            if rng.below(4) == 0 {
                clients[u].proxy.half_cut();
                chaos.half_cuts += 1;
            } else {
                clients[u].proxy.cut();
                chaos.cuts += 1;
            }
            next_cut = now + rng.millis(30, 250);
        }
        if now >= next_pause {
            let u = rng.below(users);
            if !unpause.iter().any(|(_, p)| *p == u) {
                clients[u].proxy.pause(true);
                let _ = sender.bursts.send((u, PAUSE_BURST));
                unpause.push((now + PAUSE, u));
                chaos.pauses += 1;
            }
            next_pause = now + rng.millis(700, 1800);
        }
        unpause.retain(|(at, u)| {
            if now >= *at {
                clients[*u].proxy.pause(false);
                false
            } else {
                true
            }
        });
        if now >= next_kill {
            if let Some(up) = lock(&book.0)[1].clone() {
                server_4010 += count(&up.mesa, 4010);
                server_4012 += count(&up.mesa, 4012);
            }
            book.set(1, None);
            nodes.kill(1).await;
            chaos.kills += 1;
            restarts.push((Instant::now() + Duration::from_millis(1000), 1));
            next_kill += period;
        }
        if now >= next_drain {
            let draining = lock(&book.0)[2].clone();
            book.set(2, None);
            let before = Instant::now();
            // The drain runs to completion here (about the drain window plus the grace) while the sender
            // and the clients go on; cuts and pauses resume after it.
            nodes.drain(2).await;
            if let Some(up) = draining {
                server_4010 += count(&up.mesa, 4010);
                server_4012 += count(&up.mesa, 4012);
            }
            chaos.drains += 1;
            println!("node 2 drained in {:?}", before.elapsed());
            restarts.push((Instant::now() + Duration::from_millis(500), 2));
            next_drain += period;
        }
        let due: Vec<usize> = restarts
            .iter()
            .filter(|(at, _)| Instant::now() >= *at)
            .map(|(_, i)| *i)
            .collect();
        restarts.retain(|(at, _)| Instant::now() < *at);
        for i in due {
            let up = nodes.restart(i).await;
            book.set(i, Some(up));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Stop the chaos: every proxy forwards, every node is up, the sender stops.
    for user in &clients {
        user.proxy.pause(false);
    }
    for (_, i) in restarts.drain(..) {
        let up = nodes.restart(i).await;
        book.set(i, Some(up));
    }
    let _ = sender.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), sender.task).await;
    let sent: Vec<u64> = sender
        .sent
        .iter()
        .map(|n| n.load(Ordering::SeqCst))
        .collect();

    // Let everyone catch up.
    let caught_up_by = Instant::now() + CATCH_UP;
    loop {
        let behind = clients
            .iter()
            .zip(&sent)
            .filter(|(user, sent)| lock(&user.record).last < **sent)
            .count();
        if behind == 0 || Instant::now() >= caught_up_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer: a duplicate after the last number would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..nodes.count() {
        if let Some(up) = lock(&book.0)[i].clone() {
            server_4010 += count(&up.mesa, 4010);
            server_4012 += count(&up.mesa, 4012);
        }
    }

    // The verdict.
    let total_sent: u64 = sent.iter().sum();
    let mut totals = Record::default();
    let mut failures = Vec::new();
    for (user, sent) in clients.iter().zip(&sent) {
        let r = lock(&user.record);
        totals.delivered += r.delivered;
        totals.duplicates += r.duplicates;
        totals.gaps += r.gaps;
        totals.missing += r.missing;
        totals.allowed_loss += r.allowed_loss;
        totals.redelivered += r.redelivered;
        totals.invalid_sessions += r.invalid_sessions;
        totals.resumed += r.resumed;
        totals.started += r.started;
        totals.disconnects += r.disconnects;
        totals.closes_4010 += r.closes_4010;
        totals.misrouted += r.misrouted;
        totals.unsequenced += r.unsequenced;
        let short = *sent - r.last.min(*sent);
        if r.duplicates > 0
            || r.gaps > 0
            || r.misrouted > 0
            || r.delivered + r.allowed_loss != *sent
        {
            failures.push(format!(
                "{}: sent {sent}, last {}, delivered {}, allowed loss {}, short {short}, duplicates {}, \
                 gaps {} ({} missing), invalid sessions {}; last events: {:?}",
                user.name,
                r.last,
                r.delivered,
                r.allowed_loss,
                r.duplicates,
                r.gaps,
                r.missing,
                r.invalid_sessions,
                r.log
            ));
        }
    }
    println!(
        "chaos seed {seed}: {users} users, {:?} of chaos; sent {total_sent}, delivered {}, resumed {}, \
         sessions started {}, invalid sessions {} (allowed loss {}, redelivered {}), duplicates {}, gaps {} \
         ({} missing), misrouted {}, unsequenced {}; cuts {} (+ {} half-open), pauses {}, 4010s {} at clients / {} at \
         nodes, takeovers (4012) {}, disconnects {}; node kills {}, drains {}",
        chaos_for,
        totals.delivered,
        totals.resumed,
        totals.started,
        totals.invalid_sessions,
        totals.allowed_loss,
        totals.redelivered,
        totals.duplicates,
        totals.gaps,
        totals.missing,
        totals.misrouted,
        totals.unsequenced,
        chaos.cuts,
        chaos.half_cuts,
        chaos.pauses,
        totals.closes_4010,
        server_4010,
        server_4012,
        totals.disconnects,
        chaos.kills,
        chaos.drains
    );

    // Tear down (before asserting, so that a failure does not leave tasks behind).
    for user in &clients {
        user.client.disconnect().await;
    }
    for user in clients {
        user.proxy.task.abort();
        user.reader.abort();
        drop(user.client);
    }
    for i in 0..nodes.count() {
        nodes.kill(i).await;
    }

    assert!(
        failures.is_empty(),
        "{} of {users} users failed (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(totals.duplicates, 0, "duplicates");
    assert_eq!(totals.gaps, 0, "gaps");
    assert_eq!(totals.delivered + totals.allowed_loss, total_sent);
    assert!(chaos.kills >= 1 && chaos.drains >= 1);
    assert!(
        totals.resumed > 0,
        "nothing was resumed: the chaos did not bite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_in_memory_cluster_loses_and_duplicates_nothing() {
    let secs = env_u64("MESA_CHAOS_SECS").unwrap_or(15);
    let users = env_u64("MESA_CHAOS_USERS").unwrap_or(30) as usize;
    let seed = env_u64("MESA_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("MESA_CHAOS_SEED={seed}");
    let nodes = MemoryNodes::new(3, node_config().resume.policy());
    let chaos_for = Duration::from_secs(secs);
    // The hard deadline: chaos, catch-up and teardown.
    let limit = chaos_for + CATCH_UP + Duration::from_secs(30);
    tokio::time::timeout(limit, run_chaos(nodes, users, chaos_for, seed))
        .await
        .expect("the chaos test passed its hard deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_cluster_loses_and_duplicates_nothing() {
    let secs = env_u64("MESA_CHAOS_SECS").unwrap_or(15);
    let users = env_u64("MESA_CHAOS_USERS").unwrap_or(30) as usize;
    let seed = env_u64("MESA_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("MESA_CHAOS_SEED={seed}");
    let redis = RedisServer::start();
    let nodes = RedisNodes::new(3, &redis.url(), node_config().resume.policy());
    let chaos_for = Duration::from_secs(secs);
    let limit = chaos_for + CATCH_UP + Duration::from_secs(30);
    tokio::time::timeout(limit, run_chaos(nodes, users, chaos_for, seed))
        .await
        .expect("the chaos test passed its hard deadline");
}
