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
use crate::publication::{Action, EncodedFrame, Publication};
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
}

#[derive(Default)]
struct Recorded {
    /// Session id → user id (None: not authenticated).
    sessions: Vec<(ConnectionId, Option<String>)>,
    received: Vec<Received>,
    /// `deliver` calls, matching or not: what routing is measured by.
    calls: usize,
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
            }
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
