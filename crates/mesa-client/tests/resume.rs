//! Resumable sessions (docs: `resume-wire`), against a scripted server: a real WebSocket server on
//! 127.0.0.1 (tokio-tungstenite) that each test drives frame by frame, so that every frame the client
//! sends is seen and every answer is chosen. Each test counts the dispatches the server sent and the ones
//! the application received, and checks that none is lost, duplicated or reordered.

mod common;

use std::time::{Duration, Instant};

use common::{expect_no_event, next_event, wait_event, WAIT};
use futures_util::{SinkExt, StreamExt};
use mesa_client::{
    Client, Event, Events, Frame, InvalidationReason, Lifecycle, SessionInvalidated,
    SessionResumed, SessionStarted, SEQUENCE_GAP_CLOSE,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SESSION: &str = "0123456789abcdef0123456789abcdef";
const OTHER_SESSION: &str = "fedcba9876543210fedcba9876543210";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// The scripted server: accepts WebSocket connections and hands them to the test.
struct Script {
    url: String,
    peers: mpsc::UnboundedReceiver<Peer>,
}

impl Script {
    async fn start() -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/", listener.local_addr().expect("addr"));
        let (tx, peers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let at = Instant::now();
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    let peer = Peer {
                        ws,
                        at,
                        dispatched: 0,
                        received: Vec::new(),
                    };
                    if tx.send(peer).is_err() {
                        break;
                    }
                }
            }
        });
        Script { url, peers }
    }

    async fn accept(&mut self) -> Peer {
        tokio::time::timeout(WAIT, self.peers.recv())
            .await
            .expect("no connection attempt")
            .expect("listener gone")
    }

    async fn expect_no_connection(&mut self, within: Duration) {
        if let Ok(Some(peer)) = tokio::time::timeout(within, self.peers.recv()).await {
            panic!(
                "unexpected connection: {:?} after accept",
                peer.at.elapsed()
            );
        }
    }
}

/// One accepted connection, as the server sees it.
struct Peer {
    ws: WebSocketStream<TcpStream>,
    /// When the TCP connection was accepted.
    at: Instant,
    /// Dispatches (op 0) this end sent.
    dispatched: usize,
    /// Every text frame the client sent on this connection, in order.
    received: Vec<Value>,
}

impl Peer {
    async fn send(&mut self, frame: Value) {
        if frame["op"] == 0 {
            self.dispatched += 1;
        }
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("server send");
    }

    /// Hello; with `c_resume` when `resume`. Reconnection base 50 ms keeps tests quick.
    async fn hello(&mut self, resume: bool, heartbeat_ms: Option<u64>) {
        let mut d = json!({"c_reconnect_interval": 50, "rules": []});
        if resume {
            d["c_resume"] = json!({"session_ttl": 60_000, "max_messages": 1000, "max_bytes": 1 << 20, "max_age": 60_000});
        }
        if let Some(ms) = heartbeat_ms {
            d["c_heartbeat_interval"] = json!(ms);
        }
        self.send(json!({"op": 10, "d": d})).await;
    }

    /// A durable dispatch with sequence number `s` (or a volatile one without, for `None`).
    async fn dispatch(&mut self, s: Option<u64>) {
        let mut frame = json!({"op": 0, "t": "MSG", "d": {"n": s}});
        if let Some(s) = s {
            frame["s"] = json!(s);
        }
        self.send(frame).await;
    }

    async fn session_ack(&mut self, session: &str, resumed: bool, seq: u64) {
        let d =
            json!({"user": {"id": "alice"}, "session_id": session, "resumed": resumed, "seq": seq});
        self.send(json!({"op": 22, "d": d})).await;
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("close");
    }

    /// The next frame within `limit` (pings and pongs skipped), or `None` after it.
    async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("client sent JSON");
                    self.received.push(frame.clone());
                    return Some(frame);
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(WAIT)
            .await
            .expect("no frame from the client")
    }

    /// The next frame that is not an unsolicited acknowledgement (op 11).
    async fn recv_skipping_acks(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] != 11 {
                return frame;
            }
        }
    }

    /// Skips frames until op 11 with `"s": s`.
    async fn wait_ack(&mut self, s: u64) {
        loop {
            let frame = self.recv().await;
            if frame["op"] == 11 && frame["s"] == s {
                return;
            }
        }
    }

    /// Reads until the client's close frame; returns its code (text frames before it are recorded).
    async fn expect_close(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close from the client")
            {
                Some(Ok(Message::Text(text))) => {
                    self.received
                        .push(serde_json::from_str(&text).expect("client sent JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                }
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// The frames the client sent with this opcode.
    fn sent_op(&self, op: u64) -> Vec<&Value> {
        self.received.iter().filter(|f| f["op"] == op).collect()
    }
}

fn credentials() -> Value {
    json!({"token": "alice"})
}

/// Reads events until `count` messages arrived; returns the messages and, in order, the other events.
async fn messages(events: &mut Events, count: usize) -> (Vec<Frame>, Vec<Event>) {
    let (mut messages, mut others) = (Vec::new(), Vec::new());
    while messages.len() < count {
        match next_event(events).await {
            Event::Message(frame) => messages.push(frame),
            other => others.push(other),
        }
    }
    (messages, others)
}

fn sequence(messages: &[Frame]) -> Vec<Option<u64>> {
    messages.iter().map(|m| m.s).collect()
}

fn session_started(event: &Event) -> Option<SessionStarted> {
    match event {
        Event::SessionStarted(started) => Some(started.clone()),
        _ => None,
    }
}

fn session_resumed(event: &Event) -> Option<SessionResumed> {
    match event {
        Event::SessionResumed(resumed) => Some(resumed.clone()),
        _ => None,
    }
}

fn disconnected(event: &Event) -> Option<mesa_client::Disconnected> {
    match event {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    }
}

fn is_session_event(event: &Event) -> bool {
    matches!(event, Event::SessionStarted(_) | Event::SessionResumed(_))
}

/// Opens a fresh session on a new connection: Hello with `c_resume`, op 2 `resumable`, op 22 at `seq`.
async fn fresh_session(script: &mut Script, session: &str, seq: u64) -> Peer {
    let mut peer = script.accept().await;
    peer.hello(true, None).await;
    let auth = peer.recv().await;
    assert_eq!(
        auth,
        json!({"op": 2, "d": {"token": "alice", "resumable": true}})
    );
    peer.session_ack(session, false, seq).await;
    peer
}

#[tokio::test]
async fn a_dropped_session_is_resumed_and_the_replay_is_delivered_once_in_order() {
    let mut script = Script::start().await;
    let (_client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 0).await;
    for s in 1..=5 {
        first.dispatch(Some(s)).await;
    }
    let (before, others) = messages(&mut events, 5).await;
    assert!(matches!(others[0], Event::Connected(_)), "{others:?}");
    assert!(
        matches!(&others[1], Event::Authenticated(user) if *user == json!({"id": "alice"})),
        "{others:?}"
    );
    let started = session_started(&others[2]).expect("SessionStarted after Authenticated");
    assert_eq!(
        (
            started.session_id.as_str(),
            started.seq,
            started.invalidated
        ),
        (SESSION, 0, None)
    );
    first.wait_ack(5).await;
    let first_dispatched = first.dispatched;
    drop(first); // no close frame: the session is kept

    let mut second = script.accept().await;
    second.hello(true, None).await;
    let resume = second.recv().await;
    assert_eq!(
        resume,
        json!({"op": 6, "d": {"token": "alice", "session_id": SESSION, "seq": 5}})
    );
    second.session_ack(SESSION, true, 5).await;
    for s in 6..=10 {
        second.dispatch(Some(s)).await;
    }
    second.dispatch(None).await; // volatile: no `s`, passes through
    for s in 11..=12 {
        second.dispatch(Some(s)).await;
    }
    let (after, others) = messages(&mut events, 8).await;
    let why = others.iter().find_map(disconnected).expect("Disconnected");
    assert_eq!((why.code, why.will_reconnect), (1006, true));
    let resumed = others
        .iter()
        .find_map(session_resumed)
        .expect("SessionResumed");
    assert_eq!(
        (resumed.session_id.as_str(), resumed.resumed_after),
        (SESSION, 5)
    );
    assert!(!others.iter().any(|e| session_started(e).is_some()));

    let mut got = sequence(&before);
    got.extend(sequence(&after));
    let mut expected: Vec<Option<u64>> = (1..=10).map(Some).collect();
    expected.push(None);
    expected.extend([Some(11), Some(12)]);
    assert_eq!(got, expected, "every dispatch once, in order");
    assert_eq!(
        first_dispatched + second.dispatched,
        got.len(),
        "sent = received"
    );
    // What the client sent: op 6 once, then at most acknowledgements.
    second.wait_ack(12).await;
    assert_eq!(second.sent_op(6).len(), 1);
    assert!(second.received.iter().skip(1).all(|f| f["op"] == 11));
    expect_no_event(&mut events, QUIET, |e| !matches!(e, Event::Message(_))).await;
}

#[tokio::test]
async fn a_refused_resume_starts_a_fresh_session_on_the_same_connection() {
    let mut script = Script::start().await;
    let (client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 0).await;
    for s in 1..=3 {
        first.dispatch(Some(s)).await;
    }
    let (before, _) = messages(&mut events, 3).await;
    first.close(1012, "restarting").await; // keeps the session
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (1012, true));
    client
        .dispatch("SAY", json!({"text": "queued"}))
        .expect("queued");

    let mut second = script.accept().await;
    second.hello(true, None).await;
    assert_eq!(
        second.recv().await,
        json!({"op": 6, "d": {"token": "alice", "session_id": SESSION, "seq": 3}})
    );
    second
        .send(json!({"op": 9, "d": {"code": "retention_exceeded", "reason": "too far behind"}}))
        .await;
    // The same connection: a fresh op 2, and the queued send only after op 22.
    assert_eq!(
        second.recv().await,
        json!({"op": 2, "d": {"token": "alice", "resumable": true}})
    );
    assert!(
        second.recv_within(QUIET).await.is_none(),
        "nothing before op 22"
    );
    second.session_ack(OTHER_SESSION, false, 7).await;
    for s in 8..=9 {
        second.dispatch(Some(s)).await; // the mailbox
    }
    let queued = second.recv_skipping_acks().await;
    assert_eq!(queued["t"], "SAY");
    let (after, others) = messages(&mut events, 2).await;
    assert!(!others
        .iter()
        .any(|e| matches!(e, Event::AuthenticationRefused { .. })));
    assert!(others.iter().find_map(session_resumed).is_none());
    let started = others
        .iter()
        .find_map(session_started)
        .expect("SessionStarted");
    assert_eq!(
        (started.session_id.as_str(), started.seq),
        (OTHER_SESSION, 7)
    );
    let lost: SessionInvalidated = started
        .invalidated
        .expect("the refused session is reported");
    assert_eq!((lost.session_id.as_str(), lost.last_seq), (SESSION, 3));
    assert_eq!(
        lost.reason,
        InvalidationReason::Refused {
            code: "retention_exceeded".into(),
            reason: "too far behind".into()
        }
    );
    let mut got = sequence(&before);
    got.extend(sequence(&after));
    assert_eq!(got, [1, 2, 3, 8, 9].map(Some));
    assert_eq!(first.dispatched + second.dispatched, got.len());
    // One op 6, one op 2, one queued dispatch: and no third connection.
    assert_eq!(second.sent_op(6).len(), 1);
    assert_eq!(second.sent_op(2).len(), 1);
    assert_eq!(second.sent_op(0).len(), 1);
    script.expect_no_connection(QUIET).await;
}

#[tokio::test]
async fn duplicates_are_dropped_and_a_gap_closes_and_resumes_from_the_last_processed() {
    let mut script = Script::start().await;
    let (_client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 10).await;
    for s in [11, 12, 12, 11, 13, 15] {
        first.dispatch(Some(s)).await;
    }
    assert_eq!(first.expect_close().await, SEQUENCE_GAP_CLOSE);
    let (before, _) = messages(&mut events, 3).await;
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (SEQUENCE_GAP_CLOSE, true));
    assert!(why.reason.contains("sequence gap"), "{}", why.reason);

    let mut second = script.accept().await;
    second.hello(true, None).await;
    assert_eq!(
        second.recv().await,
        json!({"op": 6, "d": {"token": "alice", "session_id": SESSION, "seq": 13}})
    );
    second.session_ack(SESSION, true, 13).await;
    for s in [13, 14, 15, 16] {
        second.dispatch(Some(s)).await;
    }
    let (after, others) = messages(&mut events, 3).await;
    let mut got = sequence(&before);
    got.extend(sequence(&after));
    assert_eq!(got, [11, 12, 13, 14, 15, 16].map(Some));
    assert_eq!(
        others
            .iter()
            .find_map(session_resumed)
            .map(|r| r.resumed_after),
        Some(13)
    );
    // 10 sent: 3 duplicates and the one after the gap dropped, the gap's filled by the replay.
    assert_eq!(first.dispatched + second.dispatched, 10);
    second.wait_ack(16).await;
    expect_no_event(&mut events, QUIET, |e| !matches!(e, Event::Message(_))).await;
}

#[tokio::test]
async fn acknowledgements_carry_the_last_processed_sequence_and_are_debounced() {
    let mut script = Script::start().await;
    let (_client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut peer = script.accept().await;
    peer.hello(true, Some(60_000)).await;
    assert_eq!(peer.recv().await["op"], 2);
    peer.session_ack(SESSION, false, 0).await;
    wait_event(&mut events, session_started).await;

    // A heartbeat answer always carries the position; nothing new: no unsolicited ack.
    peer.send(json!({"op": 1, "d": {}})).await;
    assert_eq!(peer.recv().await, json!({"op": 11, "d": {}, "s": 0}));
    assert_eq!(peer.recv_within(QUIET).await, None);

    let started = Instant::now();
    for s in 1..=40 {
        peer.dispatch(Some(s)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut acks = Vec::new();
    while acks.last() != Some(&40) {
        let frame = peer.recv().await;
        assert_eq!(frame["op"], 11, "{frame}");
        acks.push(frame["s"].as_u64().expect("ack with s"));
    }
    let elapsed = started.elapsed();
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
    let bound = usize::try_from(elapsed.as_millis() / 100).unwrap_or(usize::MAX) + 2;
    assert!(
        acks.len() <= bound,
        "{} acks in {elapsed:?}: not debounced ({acks:?})",
        acks.len()
    );
    // Once they stop: nothing more, until a heartbeat, which answers with the same position.
    assert_eq!(peer.recv_within(QUIET).await, None);
    peer.send(json!({"op": 1, "d": {}})).await;
    assert_eq!(peer.recv().await, json!({"op": 11, "d": {}, "s": 40}));

    let (all, _) = messages(&mut events, 40).await;
    assert_eq!(sequence(&all), (1..=40).map(Some).collect::<Vec<_>>());
    assert_eq!(peer.dispatched, all.len());
    // Everything the client sent: op 2, the acks, the two heartbeat answers.
    assert_eq!(peer.received.len(), 1 + acks.len() + 2);
}

#[tokio::test]
async fn op_7_retry_after_is_waited_before_resuming() {
    const RETRY_AFTER: Duration = Duration::from_millis(700);
    let mut script = Script::start().await;
    let (_client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 0).await;
    first.dispatch(Some(1)).await;
    first.dispatch(Some(2)).await;
    let (before, _) = messages(&mut events, 2).await;
    first
        .send(json!({"op": 7, "d": {"retry_after_ms": 700}}))
        .await;
    first.close(1012, "restarting").await;
    let closed_at = Instant::now();
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (1012, true));
    let delay = why.reconnect_delay.expect("a delay");
    // retry_after plus at most the jitter of one base interval (50 ms).
    assert!(
        delay >= RETRY_AFTER && delay <= RETRY_AFTER + Duration::from_millis(50),
        "{delay:?}"
    );

    let mut second = script.accept().await;
    let waited = second.at.duration_since(closed_at);
    assert!(waited >= RETRY_AFTER, "reconnected after {waited:?}");
    assert!(waited < RETRY_AFTER + Duration::from_secs(20), "{waited:?}");
    second.hello(true, None).await;
    assert_eq!(
        second.recv().await,
        json!({"op": 6, "d": {"token": "alice", "session_id": SESSION, "seq": 2}})
    );
    second.session_ack(SESSION, true, 2).await;
    second.dispatch(Some(3)).await;
    let (after, others) = messages(&mut events, 1).await;
    assert!(others.iter().any(|e| session_resumed(e).is_some()));
    let mut got = sequence(&before);
    got.extend(sequence(&after));
    assert_eq!(got, [1, 2, 3].map(Some));
    assert_eq!(first.dispatched + second.dispatched, 3);
}

#[tokio::test]
async fn a_session_taken_over_is_not_reconnected_and_a_later_connect_starts_fresh() {
    let mut script = Script::start().await;
    let (client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 0).await;
    first.dispatch(Some(1)).await;
    let (before, _) = messages(&mut events, 1).await;
    first
        .close(4012, "session resumed on another connection")
        .await;
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (4012, false));
    assert!(client.wait_for(Lifecycle::Closed).await);
    script.expect_no_connection(Duration::from_secs(1)).await;

    // The application asks again: the session is gone, so a fresh one (not a resume of the taken one).
    let connecting = tokio::spawn({
        let client = client.clone();
        async move { client.connect().await }
    });
    let mut second = fresh_session(&mut script, OTHER_SESSION, 1).await;
    connecting.await.expect("join").expect("connect");
    second.dispatch(Some(2)).await;
    let (after, others) = messages(&mut events, 1).await;
    let started = others
        .iter()
        .find_map(session_started)
        .expect("SessionStarted");
    let lost = started
        .invalidated
        .expect("the taken-over session is reported");
    assert_eq!((lost.session_id.as_str(), lost.last_seq), (SESSION, 1));
    assert!(
        matches!(
            lost.reason,
            InvalidationReason::ServerClosed { code: 4012, .. }
        ),
        "{:?}",
        lost.reason
    );
    assert_eq!(sequence(&before), [Some(1)]);
    assert_eq!(sequence(&after), [Some(2)]);
    assert_eq!(first.dispatched + second.dispatched, 2);
}

#[tokio::test]
async fn retention_exceeded_mid_session_and_4013_reconnect_with_a_fresh_session() {
    let mut script = Script::start().await;
    let (_client, mut events) = Client::builder(&script.url)
        .credentials(credentials())
        .build()
        .expect("build");
    let mut first = fresh_session(&mut script, SESSION, 0).await;
    first.dispatch(Some(1)).await;
    first.dispatch(Some(2)).await;
    let (before, _) = messages(&mut events, 2).await;
    first
        .send(json!({"op": 9, "d": {"code": "retention_exceeded", "reason": "queue overflow"}}))
        .await;
    first.close(4013, "session invalidated").await;
    let why = wait_event(&mut events, disconnected).await;
    assert_eq!((why.code, why.will_reconnect), (4013, true));

    let mut second = fresh_session(&mut script, OTHER_SESSION, 5).await;
    second.dispatch(Some(6)).await;
    let (after, others) = messages(&mut events, 1).await;
    assert!(!others
        .iter()
        .any(|e| matches!(e, Event::AuthenticationRefused { .. })));
    let started = others
        .iter()
        .find_map(session_started)
        .expect("SessionStarted");
    let lost = started.invalidated.expect("reported");
    assert_eq!((lost.session_id.as_str(), lost.last_seq), (SESSION, 2));
    assert!(
        matches!(&lost.reason, InvalidationReason::Refused { code, .. } if code == "retention_exceeded"),
        "{:?}",
        lost.reason
    );
    let mut got = sequence(&before);
    got.extend(sequence(&after));
    assert_eq!(got, [1, 2, 6].map(Some));
    assert_eq!(first.dispatched + second.dispatched, 3);
    assert!(second.sent_op(6).is_empty());
}

/// Mesa 1.5 behaviour, both when the server offers nothing and when the client turned resumption off:
/// op 2 is the credentials as given, op 11 has no `s`, nothing is acknowledged unasked, dispatches with
/// `s` (Mesa 1.5 redelivery) pass through unchecked, and a reconnection sends op 2 again.
#[tokio::test]
async fn without_c_resume_the_client_speaks_mesa_1_5_frames_exactly() {
    for (offered, enabled) in [(false, true), (true, false)] {
        let mut script = Script::start().await;
        let (_client, mut events) = Client::builder(&script.url)
            .credentials(credentials())
            .resume_sessions(enabled)
            .build()
            .expect("build");
        let mut first = script.accept().await;
        first.hello(offered, Some(60_000)).await;
        assert_eq!(
            first.recv().await,
            json!({"op": 2, "d": {"token": "alice"}})
        );
        first.send(json!({"op": 22, "d": {"id": "alice"}})).await;
        let user = wait_event(&mut events, |e| match e {
            Event::Authenticated(user) => Some(user.clone()),
            _ => None,
        })
        .await;
        assert_eq!(user, json!({"id": "alice"}));
        first.send(json!({"op": 1, "d": {}})).await;
        assert_eq!(first.recv().await, json!({"op": 11, "d": {}}));
        for s in [Some(1), Some(1), Some(3), None] {
            first.dispatch(s).await;
        }
        let (got, others) = messages(&mut events, 4).await;
        assert_eq!(sequence(&got), [Some(1), Some(1), Some(3), None]);
        assert!(!others.iter().any(is_session_event), "{others:?}");
        assert_eq!(first.recv_within(QUIET).await, None, "no unsolicited ack");
        assert_eq!(first.dispatched, got.len());
        assert_eq!(first.received.len(), 2);
        drop(first);

        let mut second = script.accept().await;
        second.hello(offered, None).await;
        assert_eq!(
            second.recv().await,
            json!({"op": 2, "d": {"token": "alice"}})
        );
        second.send(json!({"op": 22, "d": {"id": "alice"}})).await;
        wait_event(&mut events, |e| {
            matches!(e, Event::Authenticated(_)).then_some(())
        })
        .await;
        expect_no_event(&mut events, QUIET, |e| !is_session_event(e)).await;
        assert_eq!(second.received.len(), 1);
    }
}
