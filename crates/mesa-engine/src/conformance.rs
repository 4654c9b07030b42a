//! The test suite every engine passes, run against nodes that record what reaches them.
//!
//! An engine's tests build a fresh cluster of engines for each case (one [`Engine`] per node; for the
//! in-memory engine the same one three times; for Redis three connections to one namespace) and call
//! [`run_all`]. Negative checks ("node B received nothing") need no sleeps: each case ends with a
//! barrier, a broadcast from the same origin, and an engine delivers one origin's publications in order, so
//! whatever B would have received arrives before the barrier does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::engine::{BoxFuture, Engine, LocalNode};
use crate::ids::{ConnectionId, NodeId};
use crate::publication::{Action, DeliveryClass, EncodedFrame, Publication};
use crate::sessions::{
    Claimed, Release, ResumeRefusal, Retention, SessionId, SessionPolicy, StreamGap, StreamRead,
};
use crate::target::{Delivery, Recipients, Target};

/// How long a case waits for a publication to arrive before it fails.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A publication as one recorded session saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The session that got it.
    pub session: ConnectionId,
    /// What it was asked to do.
    pub action: Action,
    /// The position in the user's stream the engine gave it ([`Publication::sequence`]).
    pub sequence: Option<u64>,
}

#[derive(Default)]
struct Recorded {
    /// Session id → user id (None: not authenticated).
    sessions: Vec<(ConnectionId, Option<String>)>,
    received: Vec<Received>,
    /// `deliver` calls, matching or not: what routing is measured by.
    calls: usize,
    /// `resync_streams` calls.
    resyncs: usize,
}

/// A node with fake sessions that records every delivery.
pub struct RecordingNode {
    id: NodeId,
    engine: Arc<dyn Engine>,
    recorded: Mutex<Recorded>,
    changed: Notify,
    next: std::sync::atomic::AtomicU64,
}

impl RecordingNode {
    /// Attaches a new node with this id to `engine`.
    pub async fn attach(id: u64, engine: Arc<dyn Engine>) -> Arc<RecordingNode> {
        let node = Arc::new(RecordingNode {
            id: NodeId(id),
            engine: engine.clone(),
            recorded: Mutex::default(),
            changed: Notify::new(),
            next: 1.into(),
        });
        engine.attach(node.clone());
        node
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session authenticated as `user` (or not authenticated), announced to the engine.
    pub fn open(&self, user: Option<&str>) -> ConnectionId {
        let id = ConnectionId::new(
            self.id,
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        self.recorded().sessions.push((id, user.map(str::to_owned)));
        if let Some(user) = user {
            self.engine.user_session_added(self.id, user);
        }
        id
    }

    /// Ends a session.
    pub fn close(&self, session: ConnectionId) {
        let user = {
            let mut recorded = self.recorded();
            let at = recorded.sessions.iter().position(|(id, _)| *id == session);
            at.and_then(|at| recorded.sessions.remove(at).1)
        };
        if let Some(user) = user {
            self.engine.user_session_removed(self.id, &user);
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.recorded().received.clone()
    }

    /// How many publications reached this node at all.
    pub fn calls(&self) -> usize {
        self.recorded().calls
    }

    /// How many times the engine asked this node to re-read its sessions' streams
    /// ([`LocalNode::resync_streams`]).
    pub fn resyncs(&self) -> usize {
        self.recorded().resyncs
    }

    /// The frames `session` received, as text, each with the sequence it came with.
    pub fn sequenced_frames_of(&self, session: ConnectionId) -> Vec<(String, Option<u64>)> {
        self.recorded()
            .received
            .iter()
            .filter(|r| r.session == session)
            .filter_map(|r| match &r.action {
                Action::Send(frame) => Some((unquote(frame.as_str()).to_owned(), r.sequence)),
                _ => None,
            })
            .collect()
    }

    /// The frames `session` received, as text.
    pub fn frames_of(&self, session: ConnectionId) -> Vec<String> {
        self.recorded()
            .received
            .iter()
            .filter(|r| r.session == session)
            .filter_map(|r| match &r.action {
                Action::Send(frame) => Some(unquote(frame.as_str()).to_owned()),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done` holds for what was received, or panics after [`ARRIVAL_TIMEOUT`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        loop {
            let changed = self.changed.notified();
            if done(&self.recorded().received) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "node {}: timed out waiting for {what}; received {:?}",
                    self.id,
                    self.received()
                );
            }
        }
    }

    /// Waits until the engine asked this node at least `n` times in all to re-read its streams, or
    /// panics after [`ARRIVAL_TIMEOUT`].
    pub async fn wait_for_resyncs(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        loop {
            let changed = self.changed.notified();
            if self.resyncs() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "node {}: timed out waiting for {n} stream resyncs (got {})",
                    self.id,
                    self.resyncs()
                );
            }
        }
    }

    /// Waits until `session` has received a frame with this text.
    pub async fn wait_for_frame(&self, session: ConnectionId, text: &str) {
        self.wait_for(&format!("{text} on {session}"), |received| {
            received.iter().any(|r| {
                r.session == session
                    && matches!(&r.action, Action::Send(f) if unquote(f.as_str()) == text)
            })
        })
        .await
    }
}

impl LocalNode for RecordingNode {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn deliver(&self, publication: &Publication) -> Delivery {
        let mut recorded = self.recorded();
        recorded.calls += 1;
        let target = &publication.target;
        let excluded = |user: &Option<String>| {
            user.as_ref()
                .is_some_and(|u| target.excluding.iter().any(|x| x == u))
        };
        let matching: Vec<ConnectionId> = recorded
            .sessions
            .iter()
            .filter(|(id, user)| {
                !excluded(user)
                    && match &target.recipients {
                        Recipients::All => true,
                        Recipients::Users(ids) => {
                            user.as_ref().is_some_and(|u| ids.iter().any(|i| i == u))
                        }
                        Recipients::Connection(c) => c == id,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        let queued = matching.len();
        for session in matching {
            recorded.received.push(Received {
                session,
                action: publication.action.clone(),
                sequence: publication.sequence,
            });
        }
        drop(recorded);
        self.changed.notify_waiters();
        Delivery {
            queued,
            ..Delivery::default()
        }
    }

    fn user_session_count(&self, user_id: &str) -> usize {
        self.recorded()
            .sessions
            .iter()
            .filter(|(_, user)| user.as_deref() == Some(user_id))
            .count()
    }

    fn connection_count(&self) -> usize {
        self.recorded().sessions.len()
    }

    fn resync_streams(&self) {
        self.recorded().resyncs += 1;
        self.changed.notify_waiters();
    }

    fn user_sessions(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, user) in &self.recorded().sessions {
            if let Some(user) = user {
                *counts.entry(user.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

/// Three nodes (ids 1, 2, 3), each attached to its own engine of the cluster.
pub async fn three_nodes(engines: &[Arc<dyn Engine>]) -> [Arc<RecordingNode>; 3] {
    assert!(
        engines.len() >= 3,
        "the conformance suite needs three engines"
    );
    [
        RecordingNode::attach(1, engines[0].clone()).await,
        RecordingNode::attach(2, engines[1].clone()).await,
        RecordingNode::attach(3, engines[2].clone()).await,
    ]
}

async fn flush_all(engines: &[Arc<dyn Engine>]) {
    for engine in engines {
        engine.flush().await.expect("the engine flushes");
    }
}

/// The cases' frames are protocol frames named by their `d` (`{"op":0,"d":"hello"}`): an engine may carry
/// only frames (Mesa 1.5's format does). Names are plain ASCII, so quoting is enough.
fn text(s: &str) -> EncodedFrame {
    EncodedFrame::from(format!("{FRAME_HEAD}{s}{FRAME_TAIL}"))
}

const FRAME_HEAD: &str = r#"{"op":0,"d":""#;
const FRAME_TAIL: &str = r#""}"#;

/// A frame's name (its `d`) if it is one of the cases' frames, else the text as it is.
fn unquote(s: &str) -> &str {
    s.strip_prefix(FRAME_HEAD)
        .and_then(|s| s.strip_suffix(FRAME_TAIL))
        .unwrap_or(s)
}

async fn publish(
    engine: &Arc<dyn Engine>,
    origin: &RecordingNode,
    target: Target,
    frame: &str,
) -> Delivery {
    engine
        .publish(Publication::send(Some(origin.id), target, text(frame)))
        .await
        .expect("the engine publishes")
}

/// Broadcasts a barrier from `origin` and waits until `nodes` (each with a session `watchers[i]`) have it.
async fn barrier(
    engine: &Arc<dyn Engine>,
    origin: &RecordingNode,
    watchers: &[(&RecordingNode, ConnectionId)],
    name: &str,
) {
    publish(engine, origin, Target::all(), name).await;
    for (node, session) in watchers {
        node.wait_for_frame(*session, name).await;
    }
}

/// A send to everyone reaches every session of every node exactly once, the origin's own at once.
pub async fn broadcast_reaches_every_node_once(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let (sa, sb, sc) = (a.open(None), b.open(Some("bob")), c.open(Some("carol")));
    flush_all(&engines).await;
    let delivery = publish(&engines[0], &a, Target::all(), "hello").await;
    assert_eq!(
        a.frames_of(sa),
        ["hello"],
        "the origin's session is served before publish returns"
    );
    assert!(delivery.queued >= 1);
    barrier(&engines[0], &a, &[(&b, sb), (&c, sc)], "barrier").await;
    assert_eq!(
        a.frames_of(sa),
        ["hello", "barrier"],
        "the origin never gets its own publication back"
    );
    assert_eq!(b.frames_of(sb), ["hello", "barrier"]);
    assert_eq!(c.frames_of(sc), ["hello", "barrier"]);
}

/// A send to user ids reaches only the nodes holding those users; the others receive nothing at all.
pub async fn user_sends_reach_only_their_nodes(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let sa = a.open(Some("alice"));
    let sb = b.open(Some("bob"));
    let sc = c.open(Some("carol"));
    flush_all(&engines).await;
    for i in 0..20 {
        publish(
            &engines[0],
            &a,
            Target::users(["bob"]),
            &format!("to-bob-{i}"),
        )
        .await;
    }
    let calls_before = c.calls();
    barrier(&engines[0], &a, &[(&b, sb), (&c, sc)], "barrier").await;
    assert_eq!(b.frames_of(sb).len(), 21);
    assert_eq!(c.frames_of(sc), ["barrier"]);
    assert_eq!(
        calls_before, 0,
        "node 3 holds no recipient: it must receive nothing"
    );
    assert_eq!(c.calls(), 1, "node 3 received only the barrier");
    assert_eq!(a.frames_of(sa), ["barrier"]);
}

/// Excluded user ids get nothing, whether the send is to everyone or to users.
pub async fn exclusions_apply_on_every_node(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let sa = a.open(Some("alice"));
    let sb = b.open(Some("bob"));
    let sb2 = b.open(Some("eve"));
    let sc = c.open(Some("eve"));
    flush_all(&engines).await;
    publish(&engines[0], &a, Target::all().excluding(["eve"]), "not-eve").await;
    publish(
        &engines[0],
        &a,
        Target::users(["bob", "eve"]).excluding(["eve"]),
        "bob-only",
    )
    .await;
    barrier(&engines[0], &a, &[(&b, sb), (&c, sc)], "barrier").await;
    assert_eq!(a.frames_of(sa), ["not-eve", "barrier"]);
    assert_eq!(b.frames_of(sb), ["not-eve", "bob-only", "barrier"]);
    assert_eq!(b.frames_of(sb2), ["barrier"]);
    assert_eq!(c.frames_of(sc), ["barrier"]);
}

/// A send to one connection reaches that connection only, on whichever node holds it.
pub async fn connection_sends_reach_one_session(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let sa = a.open(None);
    let sb = b.open(None);
    let sb2 = b.open(None);
    let sc = c.open(None);
    flush_all(&engines).await;
    publish(&engines[0], &a, Target::connection(sb), "just-you").await;
    barrier(&engines[0], &a, &[(&b, sb), (&c, sc)], "barrier").await;
    assert_eq!(b.frames_of(sb), ["just-you", "barrier"]);
    assert_eq!(b.frames_of(sb2), ["barrier"]);
    assert_eq!(c.calls(), 1, "node 3 received only the barrier");
    assert_eq!(a.frames_of(sa), ["barrier"]);
}

/// Disconnects travel like sends.
pub async fn disconnects_reach_their_sessions(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let _sa = a.open(None);
    let sb = b.open(Some("bob"));
    let sc = c.open(Some("carol"));
    flush_all(&engines).await;
    engines[0]
        .publish(Publication::disconnect(
            Some(a.id),
            Target::users(["bob"]),
            1000,
            "bye",
        ))
        .await
        .expect("published");
    barrier(&engines[0], &a, &[(&b, sb), (&c, sc)], "barrier").await;
    assert_eq!(
        b.received()[0],
        Received {
            session: sb,
            action: Action::Disconnect {
                code: 1000,
                reason: "bye".into()
            },
            sequence: None,
        }
    );
    assert_eq!(c.frames_of(sc), ["barrier"]);
}

/// Many sends from one origin to one user on another node arrive in the order published; so do sends with
/// no origin node (a Dispatcher).
pub async fn one_origin_is_delivered_in_order(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, _c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    flush_all(&engines).await;
    let sent: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    let mut handles = Vec::new();
    for frame in &sent {
        // Published without waiting for each answer, as a busy node does.
        handles.push(engines[0].publish(Publication::send(
            Some(a.id),
            Target::users(["bob"]),
            text(frame),
        )));
    }
    for handle in handles {
        handle.await.expect("published");
    }
    for i in 0..50 {
        engines[2]
            .publish(Publication::send(
                None,
                Target::users(["bob"]),
                text(&format!("d{i}")),
            ))
            .await
            .expect("published");
    }
    b.wait_for("every frame", |r| r.len() == 550).await;
    let frames = b.frames_of(sb);
    let (from_a, from_dispatcher): (Vec<String>, Vec<String>) =
        frames.into_iter().partition(|f| f.starts_with('m'));
    assert_eq!(from_a, sent);
    assert_eq!(
        from_dispatcher,
        (0..50).map(|i| format!("d{i}")).collect::<Vec<_>>()
    );
}

/// Presence counts every device on every node; one device leaving does not make the user offline.
pub async fn presence_counts_devices_across_nodes(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, _c] = three_nodes(&engines).await;
    let a1 = a.open(Some("ann"));
    let _a2 = a.open(Some("ann"));
    let b1 = b.open(Some("ann"));
    flush_all(&engines).await;
    let presence = engines[2].presence("ann").await.expect("presence");
    assert_eq!(presence.nodes, vec![(NodeId(1), 2), (NodeId(2), 1)]);
    assert_eq!(presence.sessions(), 3);
    b.close(b1);
    a.close(a1);
    flush_all(&engines).await;
    let presence = engines[2].presence("ann").await.expect("presence");
    assert_eq!(
        presence.nodes,
        vec![(NodeId(1), 1)],
        "ann is still online on node 1"
    );
    assert!(!engines[0]
        .presence("nobody")
        .await
        .expect("presence")
        .is_online());
    let mut nodes: Vec<_> = engines[1]
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|s| (s.node, s.connections))
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec![(NodeId(1), 1), (NodeId(2), 0), (NodeId(3), 0)]);
}

/// A node that detaches leaves presence and receives nothing more.
pub async fn a_detached_node_leaves_presence(engines: Vec<Arc<dyn Engine>>) {
    let [a, b, c] = three_nodes(&engines).await;
    let _sb = b.open(Some("bob"));
    let sc = c.open(Some("bob"));
    flush_all(&engines).await;
    engines[1].detach(NodeId(2)).await;
    flush_all(&engines).await;
    let presence = engines[0].presence("bob").await.expect("presence");
    assert_eq!(presence.nodes, vec![(NodeId(3), 1)]);
    let nodes: Vec<NodeId> = engines[0]
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|s| s.node)
        .collect();
    assert!(!nodes.contains(&NodeId(2)), "{nodes:?}");
    let calls = b.calls();
    publish(&engines[0], &a, Target::users(["bob"]), "after").await;
    barrier(&engines[0], &a, &[(&c, sc)], "barrier").await;
    assert_eq!(b.calls(), calls, "a detached node receives nothing");
}

/// One case of the suite.
pub type Case = fn(Vec<Arc<dyn Engine>>) -> BoxFuture<'static, ()>;

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("broadcast_reaches_every_node_once", |e| {
        Box::pin(broadcast_reaches_every_node_once(e))
    }),
    ("user_sends_reach_only_their_nodes", |e| {
        Box::pin(user_sends_reach_only_their_nodes(e))
    }),
    ("exclusions_apply_on_every_node", |e| {
        Box::pin(exclusions_apply_on_every_node(e))
    }),
    ("connection_sends_reach_one_session", |e| {
        Box::pin(connection_sends_reach_one_session(e))
    }),
    ("disconnects_reach_their_sessions", |e| {
        Box::pin(disconnects_reach_their_sessions(e))
    }),
    ("one_origin_is_delivered_in_order", |e| {
        Box::pin(one_origin_is_delivered_in_order(e))
    }),
    ("presence_counts_devices_across_nodes", |e| {
        Box::pin(presence_counts_devices_across_nodes(e))
    }),
    ("a_detached_node_leaves_presence", |e| {
        Box::pin(a_detached_node_leaves_presence(e))
    }),
];

/// Runs every case, each on a fresh cluster from `cluster` (three or more engines that share one backend
/// and nothing with any other cluster).
pub async fn run_all<F, Fut>(mut cluster: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<Arc<dyn Engine>>>,
{
    for (name, case) in CASES {
        println!("engine conformance: {name}");
        case(cluster().await).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Resumable sessions: what every engine whose `session_policy()` is `Some` does (see `crate::sessions`).
// Acknowledgements and releases must not block, so a remote engine may write them in the background:
// the cases call `flush` on every engine before they look at what an acknowledgement or release did.
// ---------------------------------------------------------------------------------------------------------

/// A durable send to users from `origin` (`None`: no node, as a Dispatcher).
fn durable(origin: Option<&RecordingNode>, users: &[&str], frame: &str) -> Publication {
    Publication::send(
        origin.map(|o| o.id),
        Target::users(users.iter().copied()),
        text(frame),
    )
}

async fn send_durable(
    engine: &Arc<dyn Engine>,
    origin: Option<&RecordingNode>,
    users: &[&str],
    frame: &str,
) {
    engine
        .publish(durable(origin, users, frame))
        .await
        .expect("the engine publishes");
}

async fn open_session(engine: &Arc<dyn Engine>, user: &str, holder: ConnectionId) -> SessionId {
    let id = SessionId::random();
    engine
        .open_session(user, id, holder)
        .await
        .expect("the engine opens a session");
    id
}

async fn claim(
    engine: &Arc<dyn Engine>,
    user: &str,
    id: SessionId,
    holder: ConnectionId,
    after: u64,
) -> Result<Claimed, ResumeRefusal> {
    engine
        .claim_session(user, id, holder, after)
        .await
        .expect("the engine answers a claim")
}

async fn read(engine: &Arc<dyn Engine>, user: &str, after: u64) -> Result<StreamRead, StreamGap> {
    engine
        .read_stream(user, after, 100_000)
        .await
        .expect("the engine reads a stream")
}

/// The names and positions of a read's entries.
fn entries(read: &StreamRead) -> Vec<(String, u64)> {
    read.entries
        .iter()
        .map(|e| (unquote(e.frame.as_str()).to_owned(), e.seq))
        .collect()
}

fn named(names: &[&str], first: u64) -> Vec<(String, u64)> {
    names
        .iter()
        .zip(first..)
        .map(|(n, s)| ((*n).to_owned(), s))
        .collect()
}

/// Waits until `session` has `n` frames, then returns them with their sequences.
async fn frames_when(
    node: &RecordingNode,
    session: ConnectionId,
    n: usize,
) -> Vec<(String, Option<u64>)> {
    node.wait_for(&format!("{n} frames on {session}"), |received| {
        received.iter().filter(|r| r.session == session).count() >= n
    })
    .await;
    node.sequenced_frames_of(session)
}

/// A durable send to a user with a kept session is appended and handed to every node holding the user
/// with its position: 1, 2, 3 … in order, across a pipelined burst from one node and sends from no node,
/// on the session's node and on the origin (which holds another, plain session of the user). None lost,
/// duplicated or reordered; the stream holds the same.
pub async fn durable_sends_are_sequenced_in_order(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    const BURST: usize = 600;
    const UNORIGINATED: usize = 50;
    let [a, b, c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    let sa = a.open(Some("bob"));
    flush_all(&engines).await;
    let opened = engines[1]
        .open_session("bob", SessionId::random(), sb)
        .await
        .expect("opened");
    assert_eq!(opened.start, 0, "nothing was ever sent to bob");
    let burst: Vec<String> = (0..BURST).map(|i| format!("m{i}")).collect();
    let pending: Vec<_> = burst
        .iter()
        .map(|frame| engines[0].publish(durable(Some(&a), &["bob"], frame)))
        .collect();
    for publish in pending {
        publish.await.expect("published");
    }
    let unoriginated: Vec<String> = (0..UNORIGINATED).map(|i| format!("d{i}")).collect();
    for frame in &unoriginated {
        send_durable(&engines[2], None, &["bob"], frame).await;
    }
    let total = BURST + UNORIGINATED;
    let expected: Vec<Option<u64>> = (1..=total as u64).map(Some).collect();
    for (node, session) in [(&b, sb), (&a, sa)] {
        let got = frames_when(node, session, total).await;
        assert_eq!(got.len(), total, "node {}: none duplicated", node.id);
        let sequences: Vec<Option<u64>> = got.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            sequences, expected,
            "node {}: positions 1..={total}, in order",
            node.id
        );
        let (from_a, from_none): (Vec<String>, Vec<String>) = got
            .into_iter()
            .map(|(f, _)| f)
            .partition(|f| f.starts_with('m'));
        assert_eq!(from_a, burst, "node {}: the burst in order", node.id);
        assert_eq!(from_none, unoriginated, "node {}", node.id);
    }
    let stream = read(&engines[2], "bob", 0).await.expect("nothing evicted");
    assert_eq!(stream.head, total as u64);
    let delivered: Vec<(String, u64)> = b
        .sequenced_frames_of(sb)
        .into_iter()
        .map(|(f, s)| (f, s.unwrap_or(0)))
        .collect();
    assert_eq!(
        entries(&stream),
        delivered,
        "the stream holds what was handed out"
    );
    assert_eq!(c.calls(), 0, "node 3 holds no session of bob");
}

/// Volatile sends, sends to everyone and sends to one connection are never sequenced nor stored.
pub async fn only_durable_sends_to_users_are_sequenced(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, _c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    flush_all(&engines).await;
    open_session(&engines[1], "bob", sb).await;
    let origin = Some(a.id);
    let sends = [
        durable(Some(&a), &["bob"], "volatile").with_class(DeliveryClass::Volatile),
        Publication::send(origin, Target::all(), text("everyone")),
        Publication::send(origin, Target::connection(sb), text("just-you")),
        durable(Some(&a), &["bob"], "durable"),
    ];
    for publication in sends {
        engines[0].publish(publication).await.expect("published");
    }
    let mut got = frames_when(&b, sb, 4).await;
    got.sort();
    assert_eq!(
        got,
        [
            ("durable".to_owned(), Some(1)),
            ("everyone".to_owned(), None),
            ("just-you".to_owned(), None),
            ("volatile".to_owned(), None),
        ]
    );
    let stream = read(&engines[0], "bob", 0).await.expect("no gap");
    assert_eq!(stream.head, 1);
    assert_eq!(entries(&stream), named(&["durable"], 1));
}

/// A user whose only sessions are live and not resumable gets the plain publication: no sequence, nothing
/// stored; a send to that user and one with a kept session sequences only the latter.
pub async fn live_users_without_kept_sessions_get_no_sequence(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    let sc = c.open(Some("carol"));
    flush_all(&engines).await;
    open_session(&engines[1], "bob", sb).await;
    send_durable(&engines[0], Some(&a), &["bob", "carol"], "both").await;
    send_durable(&engines[0], Some(&a), &["carol"], "carol-only").await;
    assert_eq!(frames_when(&b, sb, 1).await, [("both".to_owned(), Some(1))]);
    assert_eq!(
        frames_when(&c, sc, 2).await,
        [("both".to_owned(), None), ("carol-only".to_owned(), None)]
    );
    let stream = read(&engines[0], "carol", 0).await.expect("no gap");
    assert_eq!((stream.head, stream.entries.len()), (0, 0));
}

/// Durable sends to a user with no session anywhere are kept (the mailbox): a fresh session starts before
/// them and reads them all, in order; live sends follow; once acknowledged, a later device starts after.
pub async fn an_offline_users_mailbox_is_read_in_order(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, _c] = three_nodes(&engines).await;
    flush_all(&engines).await;
    let mail = ["mail0", "mail1", "mail2", "mail3", "mail4"];
    let pending: Vec<_> = mail
        .iter()
        .map(|frame| engines[0].publish(durable(Some(&a), &["dave"], frame)))
        .collect();
    for publish in pending {
        publish.await.expect("published");
    }
    engines[0]
        .publish(durable(Some(&a), &["dave"], "volatile").with_class(DeliveryClass::Volatile))
        .await
        .expect("published");
    let sb = b.open(Some("dave"));
    flush_all(&engines).await;
    let first = SessionId::random();
    let opened = engines[1]
        .open_session("dave", first, sb)
        .await
        .expect("opened");
    assert_eq!(opened.start, 0, "the mailbox follows the session's start");
    let stream = read(&engines[1], "dave", 0).await.expect("no gap");
    assert_eq!(stream.head, 5, "the volatile send was not kept");
    assert_eq!(entries(&stream), named(&mail, 1));
    let page = engines[1]
        .read_stream("dave", 2, 2)
        .await
        .expect("read")
        .expect("no gap");
    assert_eq!(
        entries(&page),
        named(&mail[2..4], 3),
        "at most `limit` entries"
    );
    send_durable(&engines[0], Some(&a), &["dave"], "live").await;
    assert_eq!(frames_when(&b, sb, 1).await, [("live".to_owned(), Some(6))]);
    engines[1].acknowledge("dave", first, 6);
    flush_all(&engines).await;
    let sa = a.open(Some("dave"));
    flush_all(&engines).await;
    let opened = engines[0]
        .open_session("dave", SessionId::random(), sa)
        .await
        .expect("opened");
    assert_eq!(
        opened.start, 6,
        "a later device starts after what one acknowledged"
    );
    let stream = read(&engines[0], "dave", 6).await.expect("no gap");
    assert_eq!((stream.head, stream.entries.len()), (6, 0));
    assert_eq!(
        read(&engines[0], "dave", 0).await,
        Err(StreamGap {
            after: 0,
            oldest: 7
        }),
        "acknowledged by every kept session: trimmed"
    );
}

/// Entries leave the stream only once every kept session (held or released within its TTL) has
/// acknowledged them; ending a session lets go of what only it held back.
pub async fn trim_waits_for_every_kept_session(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, c] = three_nodes(&engines).await;
    let sa = a.open(Some("ed"));
    let sb = b.open(Some("ed"));
    flush_all(&engines).await;
    let phone = open_session(&engines[0], "ed", sa).await;
    let laptop = open_session(&engines[1], "ed", sb).await;
    let names = ["e1", "e2", "e3", "e4"];
    for name in names {
        send_durable(&engines[2], Some(&c), &["ed"], name).await;
    }
    frames_when(&a, sa, 4).await;
    frames_when(&b, sb, 4).await;
    engines[0].acknowledge("ed", phone, 4);
    flush_all(&engines).await;
    let stream = read(&engines[2], "ed", 0)
        .await
        .expect("the laptop holds them");
    assert_eq!(entries(&stream), named(&names, 1));
    engines[1].acknowledge("ed", laptop, 2);
    flush_all(&engines).await;
    assert_eq!(
        read(&engines[2], "ed", 0).await,
        Err(StreamGap {
            after: 0,
            oldest: 3
        })
    );
    // The laptop's connection ends; its session is kept, and still holds 3 and 4.
    b.close(sb);
    engines[1].release_session("ed", laptop, sb, Release::Keep);
    flush_all(&engines).await;
    let stream = read(&engines[2], "ed", 2)
        .await
        .expect("kept for the laptop");
    assert_eq!(entries(&stream), named(&names[2..], 3));
    let sc = c.open(Some("ed"));
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[2], "ed", laptop, sc, 3).await,
        Ok(Claimed { previous: None })
    );
    engines[2].acknowledge("ed", laptop, 4);
    flush_all(&engines).await;
    assert_eq!(
        read(&engines[2], "ed", 2).await,
        Err(StreamGap {
            after: 2,
            oldest: 5
        })
    );
    let stream = read(&engines[2], "ed", 4).await.expect("nothing after 4");
    assert_eq!((stream.head, stream.entries.len()), (4, 0));
    engines[2].release_session("ed", laptop, sc, Release::End);
    engines[0].release_session("ed", phone, sa, Release::End);
    flush_all(&engines).await;
}

/// A released session of `user` (kept, nobody connected), opened on node 2's engine; and a connection of
/// the user on node 3 to claim it with.
async fn kept_session(
    engines: &[Arc<dyn Engine>],
    user: &str,
) -> ([Arc<RecordingNode>; 3], SessionId, ConnectionId) {
    let nodes = three_nodes(engines).await;
    let holder = nodes[1].open(Some(user));
    flush_all(engines).await;
    let id = open_session(&engines[1], user, holder).await;
    nodes[1].close(holder);
    engines[1].release_session(user, id, holder, Release::Keep);
    let claimer = nodes[2].open(Some(user));
    flush_all(engines).await;
    (nodes, id, claimer)
}

/// `max_messages` is exact: the oldest entries go first and a resume that needs one is refused, while one
/// from just before the oldest kept succeeds.
pub async fn the_message_bound_is_exact(engines: Vec<Arc<dyn Engine>>, policy: SessionPolicy) {
    assert_eq!(policy.retention.max_messages, 3);
    let ([a, ..], id, claimer) = kept_session(&engines, "bob").await;
    let names = ["c1", "c2", "c3", "c4", "c5"];
    for name in names {
        send_durable(&engines[0], Some(&a), &["bob"], name).await;
    }
    assert_eq!(
        read(&engines[0], "bob", 1).await,
        Err(StreamGap {
            after: 1,
            oldest: 3
        })
    );
    let stream = read(&engines[0], "bob", 2).await.expect("3 kept");
    assert_eq!(entries(&stream), named(&names[2..], 3));
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 1).await,
        Err(ResumeRefusal::RetentionExceeded)
    );
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 2).await,
        Ok(Claimed { previous: None })
    );
}

/// The length of every frame [`the_byte_bound_is_exact`] sends but the last.
fn small_frame_len() -> usize {
    text("b1").len()
}

/// `max_bytes` is exact: two frames of `max_bytes / 2` fit, a third evicts the oldest; a frame larger
/// than the bound is not kept at all (its position is still taken).
pub async fn the_byte_bound_is_exact(engines: Vec<Arc<dyn Engine>>, policy: SessionPolicy) {
    assert_eq!(policy.retention.max_bytes, 2 * small_frame_len());
    let ([a, ..], id, claimer) = kept_session(&engines, "bob").await;
    let names = ["b1", "b2", "b3", "b4"];
    for name in names {
        send_durable(&engines[0], Some(&a), &["bob"], name).await;
    }
    let stream = read(&engines[0], "bob", 2).await.expect("2 kept");
    assert_eq!(
        entries(&stream),
        named(&names[2..], 3),
        "exactly max_bytes kept"
    );
    assert_eq!(
        read(&engines[0], "bob", 1).await,
        Err(StreamGap {
            after: 1,
            oldest: 3
        })
    );
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 1).await,
        Err(ResumeRefusal::RetentionExceeded)
    );
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 2).await,
        Ok(Claimed { previous: None })
    );
    send_durable(
        &engines[0],
        Some(&a),
        &["bob"],
        "a-frame-larger-than-max-bytes",
    )
    .await;
    assert_eq!(
        read(&engines[0], "bob", 4).await,
        Err(StreamGap {
            after: 4,
            oldest: 6
        })
    );
    let stream = read(&engines[0], "bob", 5).await.expect("nothing after 5");
    assert_eq!((stream.head, stream.entries.len()), (5, 0));
}

/// `max_age` is exact to the entry: one older than the bound is evicted when the user is next touched, a
/// younger one is kept.
pub async fn the_age_bound_is_exact(engines: Vec<Arc<dyn Engine>>, policy: SessionPolicy) {
    let age = policy.retention.max_age;
    let ([a, ..], id, claimer) = kept_session(&engines, "bob").await;
    send_durable(&engines[0], Some(&a), &["bob"], "old").await;
    tokio::time::sleep(age + age / 4).await;
    send_durable(&engines[0], Some(&a), &["bob"], "new").await;
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 0).await,
        Err(ResumeRefusal::RetentionExceeded)
    );
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 1).await,
        Ok(Claimed { previous: None })
    );
    let stream = read(&engines[2], "bob", 1)
        .await
        .expect("the young one is kept");
    assert_eq!(entries(&stream), named(&["new"], 2));
}

/// A claim is refused for an id the user never had (or another user's) and for a position the stream
/// never reached; it takes a session over from the connection that held it (which is reported, and whose
/// late release changes nothing).
pub async fn claims_are_refused_or_take_over_exactly(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    let sa = a.open(Some("alice"));
    let sc = c.open(Some("bob"));
    let sc2 = c.open(Some("bob"));
    flush_all(&engines).await;
    let bob = open_session(&engines[1], "bob", sb).await;
    let alice = open_session(&engines[0], "alice", sa).await;
    send_durable(&engines[0], Some(&a), &["bob"], "x1").await;
    send_durable(&engines[0], Some(&a), &["bob"], "x2").await;
    let unknown = Err(ResumeRefusal::UnknownSession);
    assert_eq!(
        claim(&engines[2], "bob", SessionId::random(), sc, 0).await,
        unknown
    );
    assert_eq!(
        claim(&engines[2], "bob", alice, sc, 0).await,
        unknown,
        "alice's id"
    );
    assert_eq!(
        claim(&engines[2], "alice", bob, sc, 0).await,
        unknown,
        "bob's id"
    );
    assert_eq!(
        claim(&engines[2], "bob", bob, sc, 3).await,
        Err(ResumeRefusal::SequenceAhead)
    );
    assert_eq!(
        claim(&engines[2], "bob", bob, sc, 2).await,
        Ok(Claimed { previous: Some(sb) }),
        "taken over from node 2's connection"
    );
    assert_eq!(
        claim(&engines[2], "bob", bob, sc, 2).await,
        Ok(Claimed { previous: None }),
        "its own holder"
    );
    // Node 2's connection ends late: the session is not its own any more.
    engines[1].release_session("bob", bob, sb, Release::End);
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[2], "bob", bob, sc2, 2).await,
        Ok(Claimed { previous: Some(sc) })
    );
    engines[2].release_session("bob", bob, sc2, Release::Keep);
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[2], "bob", bob, sc, 2).await,
        Ok(Claimed { previous: None }),
        "released: nobody to close"
    );
}

/// A released session can be resumed within the session TTL and is forgotten after it.
pub async fn released_sessions_expire_after_the_ttl(
    engines: Vec<Arc<dyn Engine>>,
    policy: SessionPolicy,
) {
    let ttl = policy.session_ttl;
    let ([_a, _b, c], id, claimer) = kept_session(&engines, "bob").await;
    assert_eq!(
        claim(&engines[2], "bob", id, claimer, 0).await,
        Ok(Claimed { previous: None }),
        "within the TTL"
    );
    engines[2].release_session("bob", id, claimer, Release::Keep);
    c.close(claimer);
    flush_all(&engines).await;
    tokio::time::sleep(ttl + ttl / 2).await;
    let late = c.open(Some("bob"));
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[2], "bob", id, late, 0).await,
        Err(ResumeRefusal::UnknownSession),
        "the TTL passed"
    );
}

/// An ended session is forgotten at once, and a user whose only kept session ended gets plain
/// publications again.
pub async fn ended_sessions_are_forgotten(engines: Vec<Arc<dyn Engine>>, _policy: SessionPolicy) {
    let [a, b, _c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    flush_all(&engines).await;
    let id = open_session(&engines[1], "bob", sb).await;
    send_durable(&engines[0], Some(&a), &["bob"], "kept").await;
    assert_eq!(frames_when(&b, sb, 1).await, [("kept".to_owned(), Some(1))]);
    engines[1].release_session("bob", id, sb, Release::End);
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[1], "bob", id, sb, 1).await,
        Err(ResumeRefusal::UnknownSession)
    );
    send_durable(&engines[0], Some(&a), &["bob"], "plain").await;
    assert_eq!(
        frames_when(&b, sb, 2).await,
        [("kept".to_owned(), Some(1)), ("plain".to_owned(), None)]
    );
}

/// A session whose connection dropped is resumed on another node: what it missed is read from the stream,
/// after the position the client processed, and live sends continue from there.
pub async fn a_resume_on_another_node_reads_what_was_missed(
    engines: Vec<Arc<dyn Engine>>,
    _policy: SessionPolicy,
) {
    let [a, b, c] = three_nodes(&engines).await;
    let sb = b.open(Some("bob"));
    flush_all(&engines).await;
    let id = open_session(&engines[1], "bob", sb).await;
    for name in ["r1", "r2", "r3"] {
        send_durable(&engines[0], Some(&a), &["bob"], name).await;
    }
    frames_when(&b, sb, 3).await;
    engines[1].acknowledge("bob", id, 2);
    b.close(sb);
    engines[1].release_session("bob", id, sb, Release::Keep);
    flush_all(&engines).await;
    for name in ["r4", "r5"] {
        send_durable(&engines[0], Some(&a), &["bob"], name).await;
    }
    let sc = c.open(Some("bob"));
    flush_all(&engines).await;
    assert_eq!(
        claim(&engines[2], "bob", id, sc, 3).await,
        Ok(Claimed { previous: None })
    );
    let missed = read(&engines[2], "bob", 3).await.expect("kept");
    assert_eq!(missed.head, 5);
    assert_eq!(entries(&missed), named(&["r4", "r5"], 4));
    send_durable(&engines[0], Some(&a), &["bob"], "r6").await;
    assert_eq!(frames_when(&c, sc, 1).await, [("r6".to_owned(), Some(6))]);
    assert_eq!(
        b.sequenced_frames_of(sb),
        [
            ("r1".to_owned(), Some(1)),
            ("r2".to_owned(), Some(2)),
            ("r3".to_owned(), Some(3))
        ],
        "the closed connection got nothing more"
    );
}

/// One case of the session suite: the engines (built with the policy) and that policy.
pub type SessionCase = fn(Vec<Arc<dyn Engine>>, SessionPolicy) -> BoxFuture<'static, ()>;

/// The policy a session case needs.
pub type PolicyFor = fn() -> SessionPolicy;

/// The policy most session cases run with: the defaults, with a short TTL.
fn short_ttl() -> SessionPolicy {
    SessionPolicy {
        session_ttl: Duration::from_secs(1),
        ..SessionPolicy::default()
    }
}

/// The defaults with other bounds (and the default TTL: the age case outlives a short one).
fn with_retention(retention: Retention) -> SessionPolicy {
    SessionPolicy {
        retention,
        ..SessionPolicy::default()
    }
}

/// Every session case, by name, with the policy it needs.
pub const SESSION_CASES: &[(&str, PolicyFor, SessionCase)] = &[
    ("durable_sends_are_sequenced_in_order", short_ttl, |e, p| {
        Box::pin(durable_sends_are_sequenced_in_order(e, p))
    }),
    (
        "only_durable_sends_to_users_are_sequenced",
        short_ttl,
        |e, p| Box::pin(only_durable_sends_to_users_are_sequenced(e, p)),
    ),
    (
        "live_users_without_kept_sessions_get_no_sequence",
        short_ttl,
        |e, p| Box::pin(live_users_without_kept_sessions_get_no_sequence(e, p)),
    ),
    (
        "an_offline_users_mailbox_is_read_in_order",
        short_ttl,
        |e, p| Box::pin(an_offline_users_mailbox_is_read_in_order(e, p)),
    ),
    ("trim_waits_for_every_kept_session", short_ttl, |e, p| {
        Box::pin(trim_waits_for_every_kept_session(e, p))
    }),
    (
        "the_message_bound_is_exact",
        || {
            with_retention(Retention {
                max_messages: 3,
                ..Retention::default()
            })
        },
        |e, p| Box::pin(the_message_bound_is_exact(e, p)),
    ),
    (
        "the_byte_bound_is_exact",
        || {
            with_retention(Retention {
                max_bytes: 2 * small_frame_len(),
                ..Retention::default()
            })
        },
        |e, p| Box::pin(the_byte_bound_is_exact(e, p)),
    ),
    (
        "the_age_bound_is_exact",
        || {
            with_retention(Retention {
                max_age: Duration::from_millis(1500),
                ..Retention::default()
            })
        },
        |e, p| Box::pin(the_age_bound_is_exact(e, p)),
    ),
    (
        "claims_are_refused_or_take_over_exactly",
        short_ttl,
        |e, p| Box::pin(claims_are_refused_or_take_over_exactly(e, p)),
    ),
    (
        "released_sessions_expire_after_the_ttl",
        short_ttl,
        |e, p| Box::pin(released_sessions_expire_after_the_ttl(e, p)),
    ),
    ("ended_sessions_are_forgotten", short_ttl, |e, p| {
        Box::pin(ended_sessions_are_forgotten(e, p))
    }),
    (
        "a_resume_on_another_node_reads_what_was_missed",
        short_ttl,
        |e, p| Box::pin(a_resume_on_another_node_reads_what_was_missed(e, p)),
    ),
];

/// Runs every session case, each on a fresh cluster from `cluster(policy)`: three or more engines that
/// share one backend (and nothing with any other cluster), each keeping resumable sessions within
/// `policy` ([`Engine::session_policy`] must say so).
pub async fn run_sessions<F, Fut>(mut cluster: F)
where
    F: FnMut(SessionPolicy) -> Fut,
    Fut: std::future::Future<Output = Vec<Arc<dyn Engine>>>,
{
    for (name, policy, case) in SESSION_CASES {
        println!("engine session conformance: {name}");
        let policy = policy();
        let engines = cluster(policy).await;
        for engine in &engines {
            assert_eq!(
                engine.session_policy(),
                Some(policy),
                "{name}: the engine keeps sessions with the policy asked"
            );
        }
        case(engines, policy).await;
    }
}

/// An engine whose backend is down, for tests of what callers do with engine failures: the origin's own
/// sessions are served (through a [`MemoryEngine`](crate::MemoryEngine)), then every publication fails with
/// [`EngineError::Unavailable`](crate::EngineError::Unavailable); presence and node queries fail the same way; health is Degraded.
#[derive(Default)]
pub struct UnreachableEngine(crate::MemoryEngine);

impl UnreachableEngine {
    /// The reason it gives, in errors and in [`Health::Degraded`](crate::Health::Degraded).
    pub const REASON: &'static str = "backend down (test)";

    fn down() -> crate::EngineError {
        crate::EngineError::Unavailable(Self::REASON.into())
    }
}

impl Engine for UnreachableEngine {
    fn attach(&self, node: Arc<dyn LocalNode>) {
        self.0.attach(node)
    }

    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()> {
        self.0.detach(node)
    }

    fn publish(
        &self,
        publication: Publication,
    ) -> BoxFuture<'_, Result<Delivery, crate::PublishError>> {
        Box::pin(async move {
            let local = self.0.publish(publication).await?;
            Err(crate::PublishError {
                local,
                cause: Self::down(),
            })
        })
    }

    fn user_session_added(&self, node: NodeId, user_id: &str) {
        self.0.user_session_added(node, user_id)
    }

    fn user_session_removed(&self, node: NodeId, user_id: &str) {
        self.0.user_session_removed(node, user_id)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), crate::EngineError>> {
        self.0.flush()
    }

    fn presence(
        &self,
        _user_id: &str,
    ) -> BoxFuture<'_, Result<crate::Presence, crate::EngineError>> {
        Box::pin(std::future::ready(Err(Self::down())))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<crate::NodeStatus>, crate::EngineError>> {
        Box::pin(std::future::ready(Err(Self::down())))
    }

    fn health(&self) -> crate::Health {
        crate::Health::Degraded {
            reason: Self::REASON.into(),
            since: std::time::SystemTime::now(),
        }
    }
}
