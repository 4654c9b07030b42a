//! `docs/protocol.schema.json` against the frames a real server sends and a client sends, over real sockets.
//!
//! Every frame on a connection is recorded ([`Peer`]), both directions, and checked afterwards with
//! [`assert_conforms`]: the server's against `#/$defs/ServerFrame`, the client's against `#/$defs/ClientFrame`.
//! The schema is also checked against the examples in `docs/protocol.md` and against frames it must refuse.
//!
//! Resumable-session cases (op 6, op 22's resumable form, dispatches with a stream `s`) plug in the same way:
//! drive [`Peer`]s, then [`assert_conforms`], and [`Schema::assert_def`] for a specific form.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mesa_engine::{
    BoxFuture, Delivery, EncodedFrame, EngineError, Health, LocalNode, NodeStatus, Presence,
    Publication, PublishError,
};
use mesa_server::{Engine, Frame, MemoryEngine, NodeId};
use mesa_testkit::server::{echo_server, start, TestServer};
use mesa_testkit::ws::{connect, Ws, FRAME_TIMEOUT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The protocol schema, with a validator per direction, and per opcode for readable errors.
struct Schema {
    root: Value,
    client: jsonschema::Validator,
    server: jsonschema::Validator,
    /// `(direction, op)` -> the validator of that frame's own definition (the `oneOf` branches).
    by_op: HashMap<(Direction, u64), jsonschema::Validator>,
}

impl Schema {
    fn load() -> Schema {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.schema.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let root: Value = serde_json::from_str(&text).expect("the schema is JSON");
        if let Err(error) = jsonschema::meta::validate(&root) {
            panic!("the schema breaks the draft 2020-12 meta-schema: {error}");
        }
        let client = Self::validator(&root, "ClientFrame");
        let server = Self::validator(&root, "ServerFrame");
        let mut by_op = HashMap::new();
        for (direction, name) in [
            (Direction::Sent, "ClientFrame"),
            (Direction::Received, "ServerFrame"),
        ] {
            let branches = root["$defs"][name]["oneOf"].as_array().cloned();
            for branch in branches.unwrap_or_default() {
                let Some(def) = branch["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                else {
                    panic!("$defs/{name}: a oneOf branch that is not a local $ref: {branch}");
                };
                let op = root["$defs"][def]["properties"]["op"]["const"].as_u64();
                let op = op.unwrap_or_else(|| panic!("$defs/{def} has no const op"));
                by_op.insert((direction, op), Self::validator(&root, def));
            }
        }
        Schema {
            root,
            client,
            server,
            by_op,
        }
    }

    /// A validator for `#/$defs/<name>`: the whole document (so every `$ref` resolves) with its root
    /// assertion replaced by a reference to that definition.
    fn validator(root: &Value, name: &str) -> jsonschema::Validator {
        assert!(
            root["$defs"].get(name).is_some(),
            "the schema has no $defs/{name}"
        );
        let mut schema = root.clone();
        let object = schema.as_object_mut().expect("the schema is an object");
        object.remove("anyOf");
        object.insert("$ref".into(), json!(format!("#/$defs/{name}")));
        jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("compiling $defs/{name}: {e}"))
    }

    /// Why `instance` does not match `validator` (empty: it does).
    fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
        validator
            .iter_errors(instance)
            .map(|e| format!("{} (at `{}`)", e, e.instance_path()))
            .collect()
    }

    /// Why `frame` is not a frame of that direction (empty: it is one). The errors are those of the
    /// definition of the frame's opcode when there is one (a bare `oneOf` failure says little).
    fn check(&self, direction: Direction, frame: &Value) -> Vec<String> {
        let validator = match direction {
            Direction::Sent => &self.client,
            Direction::Received => &self.server,
        };
        if validator.is_valid(frame) {
            return Vec::new();
        }
        let own = frame["op"]
            .as_u64()
            .and_then(|op| self.by_op.get(&(direction, op)));
        let detail = own.map(|v| Self::errors(v, frame)).unwrap_or_default();
        if detail.is_empty() {
            Self::errors(validator, frame)
        } else {
            detail
        }
    }

    /// Asserts that `instance` matches `#/$defs/<name>`, e.g. `ResumableAuthentication` for op 22's `d`.
    fn assert_def(&self, name: &str, instance: &Value) {
        let errors = Self::errors(&Self::validator(&self.root, name), instance);
        assert!(errors.is_empty(), "{instance} is not a {name}: {errors:#?}");
    }
}

/// Which way a frame went, seen from the test's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    /// Client → server.
    Sent,
    /// Server → client.
    Received,
}

/// A client connection that records every text frame it sends and receives, in order.
struct Peer {
    name: String,
    ws: Ws,
    log: Vec<(Direction, Value)>,
    close: Option<(u16, String)>,
}

impl Peer {
    /// Connects and reads the Hello, which must come first.
    async fn connect(server: &TestServer, name: &str) -> Peer {
        let mut peer = Peer {
            name: name.to_string(),
            ws: connect(server).await,
            log: Vec::new(),
            close: None,
        };
        let hello = peer.recv_raw().await;
        assert_eq!(hello["op"], 10, "{name}: the first frame must be Hello");
        peer
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
        self.log.push((Direction::Sent, frame));
    }

    /// The next text frame, heartbeats included and not answered; pings and pongs skipped.
    async fn recv_raw(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for a frame", self.name))
                .unwrap_or_else(|| panic!("{}: the connection ended", self.name))
                .unwrap_or_else(|e| panic!("{}: websocket error {e}", self.name));
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", self.name));
                    self.log.push((Direction::Received, frame.clone()));
                    return frame;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            }
        }
    }

    /// The next frame that is not a heartbeat; heartbeats on the way are answered with `{"op":11}`.
    async fn recv(&mut self) -> Value {
        for _ in 0..100 {
            let frame = self.recv_raw().await;
            if frame["op"] == 1 {
                self.send(json!({"op": 11})).await;
                continue;
            }
            return frame;
        }
        panic!("{}: only heartbeats arrived", self.name);
    }

    /// Reads (answering heartbeats) up to the server's close frame; records and returns its code and reason.
    async fn expect_close(&mut self) -> (u16, String) {
        for _ in 0..1000 {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for the close", self.name));
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", self.name));
                    let heartbeat = frame["op"] == 1;
                    self.log.push((Direction::Received, frame));
                    if heartbeat {
                        // The server may be closing already: a refused answer is no failure.
                        let answer = json!({"op": 11});
                        if self
                            .ws
                            .send(Message::text(answer.to_string()))
                            .await
                            .is_ok()
                        {
                            self.log.push((Direction::Sent, answer));
                        }
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    let close = close
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Finish the closing handshake (tungstenite replies when polled).
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    self.close = Some(close.clone());
                    return close;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: failed before a close frame: {e}", self.name),
                None => panic!("{}: ended without a close frame", self.name),
            }
        }
        panic!("{}: no close frame after 1000 messages", self.name);
    }

    /// The frames received so far with this opcode.
    fn received(&self, op: u64) -> Vec<&Value> {
        self.log
            .iter()
            .filter(|(direction, frame)| *direction == Direction::Received && frame["op"] == op)
            .map(|(_, frame)| frame)
            .collect()
    }
}

/// What [`assert_conforms`] saw: frames per direction and opcode.
#[derive(Debug, Default)]
struct Tally {
    frames: BTreeMap<(&'static str, u64), usize>,
}

impl Tally {
    fn count(&self, direction: Direction, op: u64) -> usize {
        let key = match direction {
            Direction::Sent => "sent",
            Direction::Received => "received",
        };
        self.frames.get(&(key, op)).copied().unwrap_or(0)
    }
}

/// Checks every frame the peers recorded against the schema (see the [module docs](self)); panics with
/// every non-conforming frame. Returns what it counted, for the caller to assert coverage.
fn assert_conforms(schema: &Schema, peers: &[&Peer]) -> Tally {
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for peer in peers {
        for (index, (direction, frame)) in peer.log.iter().enumerate() {
            let key = match direction {
                Direction::Sent => "sent",
                Direction::Received => "received",
            };
            let op = frame["op"].as_u64().unwrap_or(u64::MAX);
            *tally.frames.entry((key, op)).or_default() += 1;
            let errors = schema.check(*direction, frame);
            if errors.is_empty() {
                continue;
            }
            failures.push(format!(
                "{} #{index} ({key}) {frame}\n    {}",
                peer.name,
                errors.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} frame(s) do not conform to docs/protocol.schema.json:\n{}",
        failures.len(),
        failures.join("\n")
    );
    tally
}

/// An in-memory engine that also keeps Mesa 1.5 stored messages (what the Redis engine does in
/// compatibility mode), so that the server sends redelivered dispatches with `s`.
struct StoringEngine {
    inner: MemoryEngine,
    stored: Mutex<HashMap<String, Vec<String>>>,
}

impl Engine for StoringEngine {
    fn attach(&self, node: Arc<dyn LocalNode>) {
        self.inner.attach(node)
    }
    fn detach(&self, node: NodeId) -> BoxFuture<'_, ()> {
        self.inner.detach(node)
    }
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Delivery, PublishError>> {
        self.inner.publish(publication)
    }
    fn user_session_added(&self, node: NodeId, user_id: &str) {
        self.inner.user_session_added(node, user_id)
    }
    fn user_session_removed(&self, node: NodeId, user_id: &str) {
        self.inner.user_session_removed(node, user_id)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        self.inner.flush()
    }
    fn presence(&self, user_id: &str) -> BoxFuture<'_, Result<Presence, EngineError>> {
        self.inner.presence(user_id)
    }
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStatus>, EngineError>> {
        self.inner.nodes()
    }
    fn health(&self) -> Health {
        self.inner.health()
    }
    fn take_stored(
        &self,
        user_id: &str,
        deliver: bool,
    ) -> BoxFuture<'_, Result<Vec<EncodedFrame>, EngineError>> {
        let taken = self
            .stored
            .lock()
            .expect("stored messages lock")
            .remove(user_id)
            .unwrap_or_default();
        let frames = if deliver {
            taken.into_iter().map(EncodedFrame::from).collect()
        } else {
            Vec::new()
        };
        Box::pin(std::future::ready(Ok(frames)))
    }
}

/// The `d` of the `n`th numbered test dispatch.
fn numbered(kind: &str, n: usize) -> Value {
    json!({"kind": kind, "n": n})
}

#[tokio::test]
async fn the_frames_a_server_sends_conform_to_the_schema() {
    let schema = Schema::load();
    const STORED: usize = 3;
    const ECHOES: usize = 20;
    const SENDS: usize = 20;
    let stored = (1..=STORED)
        .map(|n| Frame::dispatch("STORED", numbered("stored", n)).encode())
        .collect();
    let engine = Arc::new(StoringEngine {
        inner: MemoryEngine::new(),
        stored: Mutex::new(HashMap::from([("carol".to_string(), stored)])),
    });
    let server = start(
        echo_server()
            .disconnect_on_fail(false)
            .heartbeat(Duration::from_millis(150), 3)
            .shutdown_grace(Duration::from_millis(100))
            .engine(engine),
    )
    .await;

    // Heartbeats both ways: the client's op 1 (with and without `d`), the server's op 1 answered and not.
    let mut alice = Peer::connect(&server, "alice").await;
    alice.send(json!({"op": 1})).await;
    assert_eq!(alice.recv().await, json!({"op": 11, "d": {}}));
    alice.send(json!({"op": 1, "d": {}})).await;
    assert_eq!(alice.recv().await, json!({"op": 11, "d": {}}));
    let mut unanswered = None;
    for _ in 0..10 {
        let frame = alice.recv_raw().await;
        assert_eq!(frame["op"], 1, "expected heartbeats only: {frame}");
        if frame["d"].get("tries").is_some() {
            unanswered = Some(frame);
            break;
        }
    }
    assert_eq!(
        unanswered,
        Some(json!({"op": 1, "d": {"tries": 1, "max": 3}}))
    );
    alice.send(json!({"op": 11, "d": {}})).await;

    // Authentication refused (op 9, the connection stays open), then accepted (op 22).
    alice
        .send(json!({"op": 2, "d": {"token": "nope", "shouldSync": true}}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(refused["op"], 9, "{refused}");
    assert_eq!(refused["d"]["reason"], "invalid token");
    alice
        .send(json!({"op": 2, "d": {"token": "user:alice"}}))
        .await;
    assert_eq!(alice.recv().await, json!({"op": 22, "d": {"id": "alice"}}));

    // Dispatches both ways: echoes (some with Mesa 1.5 `o`, never sent back), then server sends to the user.
    for n in 0..ECHOES {
        let mut frame = json!({"op": 0, "t": "ECHO", "d": numbered("echo", n)});
        if n % 2 == 1 {
            frame["o"] = json!({"sync": false});
        }
        alice.send(frame).await;
    }
    for n in 0..ECHOES {
        // `o` is the server's: the echo handler's `Session::send` never writes it to the client.
        let echo = alice.recv().await;
        assert_eq!(
            echo,
            json!({"op": 0, "d": numbered("echo", n), "t": "ECHO"}),
            "echo {n}: lost, duplicated or reordered"
        );
    }
    for n in 0..SENDS {
        let frame = Frame::dispatch("NOTE", numbered("send", n));
        let delivery = server
            .mesa
            .send_to(["alice"], &frame)
            .await
            .expect("send to alice");
        assert_eq!(delivery.queued, 1);
    }
    server
        .mesa
        .broadcast(&Frame::dispatch("NEWS", json!("to everyone")))
        .await
        .expect("broadcast");
    for n in 0..SENDS {
        assert_eq!(
            alice.recv().await,
            json!({"op": 0, "d": numbered("send", n), "t": "NOTE"}),
            "send {n}: lost, duplicated or reordered"
        );
    }
    assert_eq!(
        alice.recv().await,
        json!({"op": 0, "d": "to everyone", "t": "NEWS"})
    );

    // Mesa 1.5 sync: stored messages follow op 22, numbered s = 1, 2, 3.
    let mut carol = Peer::connect(&server, "carol").await;
    carol
        .send(json!({"op": 2, "d": {"token": "user:carol"}}))
        .await;
    assert_eq!(carol.recv().await, json!({"op": 22, "d": {"id": "carol"}}));
    for n in 1..=STORED {
        assert_eq!(
            carol.recv().await,
            json!({"op": 0, "d": numbered("stored", n), "t": "STORED", "s": n}),
            "stored message {n}: lost, duplicated or reordered"
        );
    }

    // Shutdown: op 7 on every connection, then 1012.
    let readers = [alice, carol].map(|mut peer| {
        tokio::spawn(async move {
            let close = peer.expect_close().await;
            (peer, close)
        })
    });
    server.stop().await;
    let mut peers = Vec::new();
    for reader in readers {
        let (peer, close) = reader.await.expect("reader task");
        assert_eq!(close.0, 1012, "{}: {close:?}", peer.name);
        let reconnects = peer.received(7);
        assert_eq!(reconnects.len(), 1, "{}: one op 7", peer.name);
        peers.push(peer);
    }

    let tally = assert_conforms(&schema, &peers.iter().collect::<Vec<_>>());
    for op in [0, 1, 7, 9, 10, 11, 22] {
        assert!(
            tally.count(Direction::Received, op) > 0,
            "no op {op} from the server was checked: {tally:?}"
        );
    }
    for op in [0, 1, 2, 11] {
        assert!(
            tally.count(Direction::Sent, op) > 0,
            "no op {op} from the client was checked: {tally:?}"
        );
    }
    assert_eq!(
        tally.count(Direction::Received, 0),
        ECHOES + SENDS + 1 + STORED
    );
}

#[tokio::test]
async fn hello_and_acknowledgement_variants_conform() {
    let schema = Schema::load();
    let server = start(
        echo_server()
            .send_user_object(false)
            .enforce_equal_versions("1.2.0")
            .without_heartbeat(),
    )
    .await;
    let mut dora = Peer::connect(&server, "dora").await;
    let hello = dora.received(10)[0].clone();
    assert_eq!(hello["d"]["rules"], json!(["enforce_equal_versions"]));
    assert!(hello["d"].get("c_heartbeat_interval").is_none(), "{hello}");
    dora.send(json!({"op": 0, "t": "CLIENT_VERSION", "d": {"v": "1.2.0"}}))
        .await;
    dora.send(json!({"op": 2, "d": {"token": "user:dora", "shouldSync": false}}))
        .await;
    assert_eq!(dora.recv().await, json!({"op": 22, "d": {}}));
    dora.send(json!({"op": 0, "t": "ECHO", "d": [1, 2, 3]}))
        .await;
    assert_eq!(
        dora.recv().await,
        json!({"op": 0, "d": [1, 2, 3], "t": "ECHO"})
    );

    let mut late = Peer::connect(&server, "late").await;
    late.send(json!({"op": 0, "t": "CLIENT_VERSION", "d": {"v": "0.9.0"}}))
        .await;
    assert_eq!(late.expect_close().await.0, 1002);

    let tally = assert_conforms(&schema, &[&dora, &late]);
    assert_eq!(tally.count(Direction::Received, 10), 2);
    assert_eq!(tally.count(Direction::Received, 0), 1);
    server.stop().await;
}

#[tokio::test]
async fn resumable_session_frames_conform() {
    let schema = Schema::load();
    let server = start(echo_server()).await;
    let mut eve = Peer::connect(&server, "eve").await;
    assert!(eve.received(10)[0]["d"]["c_resume"].is_object());
    eve.send(json!({"op": 2, "d": {"token": "user:eve", "resumable": true}}))
        .await;
    let opened = eve.recv().await;
    schema.assert_def("ResumableAuthentication", &opened["d"]);
    let session = opened["d"]["session_id"].as_str().expect("id").to_string();
    for n in 0..5 {
        let frame = Frame::dispatch("NOTE", numbered("send", n));
        server.mesa.send_to(["eve"], &frame).await.expect("send");
    }
    for n in 0..3u64 {
        let frame = eve.recv().await;
        assert_eq!(frame["s"], json!(n + 1), "{frame}");
    }
    eve.send(json!({"op": 11, "d": {}, "s": 3})).await;
    eve.send(json!({"op": 1, "s": 3})).await;
    assert_eq!(eve.recv().await["op"], 0);
    assert_eq!(eve.recv().await["op"], 0);
    assert_eq!(eve.recv().await, json!({"op": 11, "d": {}}));
    let mut again = Peer::connect(&server, "eve-again").await;
    again
        .send(json!({"op": 6, "d": {"token": "user:eve", "session_id": session, "seq": 3}}))
        .await;
    let resumed = again.recv().await;
    schema.assert_def("ResumableAuthentication", &resumed["d"]);
    assert_eq!(resumed["d"]["resumed"], true);
    let replayed: Vec<Value> = vec![again.recv().await, again.recv().await];
    assert_eq!(replayed[0]["s"], 4);
    assert_eq!(replayed[1]["s"], 5);
    let (code, _) = eve.expect_close().await;
    assert_eq!(code, 4012, "the old connection is taken over");
    let mut stranger = Peer::connect(&server, "stranger").await;
    stranger
        .send(json!({"op": 6, "d": {"token": "user:zed", "session_id": session, "seq": 0}}))
        .await;
    let refused = stranger.recv().await;
    assert_eq!(refused["d"]["code"], "session_unknown");
    let tally = assert_conforms(&schema, &[&eve, &again, &stranger]);
    assert_eq!(tally.count(Direction::Received, 9), 1);
    assert_eq!(tally.count(Direction::Sent, 6), 2);
    server.stop().await;
}

/// The frames of `docs/protocol.md`: every ```json block, and the `S {…}` / `C {…}` lines of its
/// `text` examples (lines whose frame is elided with `…` outside a string are not JSON and are skipped).
fn documented_frames() -> Vec<(Option<Direction>, Value)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut frames = Vec::new();
    let mut block: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start().strip_prefix("```")) {
            (None, Some(lang)) => block = Some((lang.trim().to_string(), String::new())),
            (Some((lang, body)), Some(_)) => {
                if lang == "json" {
                    let frame = serde_json::from_str(body.trim())
                        .unwrap_or_else(|e| panic!("a json block of protocol.md: {e}: {body}"));
                    frames.push((None, frame));
                }
                block = None;
            }
            (Some((lang, body)), None) if lang == "json" => {
                body.push_str(line);
                body.push('\n');
            }
            (Some(_), None) => {
                let (direction, rest) = if let Some(rest) = line.strip_prefix("S ") {
                    (Direction::Received, rest)
                } else if let Some(rest) = line.strip_prefix("C ") {
                    (Direction::Sent, rest)
                } else {
                    continue;
                };
                // A frame, then maybe a comment after spaces.
                let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                if let Some(Ok(frame)) = stream.next() {
                    frames.push((Some(direction), frame));
                }
            }
            (None, None) => {}
        }
    }
    frames
}

#[tokio::test]
async fn the_documented_frames_conform_and_bad_frames_are_refused() {
    let schema = Schema::load();
    let documented = documented_frames();
    let (mut client, mut server) = (0, 0);
    for (direction, frame) in &documented {
        let errors = match direction {
            Some(direction) => schema.check(*direction, frame),
            // A block without a direction: one direction must accept it.
            None => {
                let as_client = schema.check(Direction::Sent, frame);
                let as_server = schema.check(Direction::Received, frame);
                if as_client.is_empty() || as_server.is_empty() {
                    Vec::new()
                } else {
                    [as_client, as_server].concat()
                }
            }
        };
        assert!(errors.is_empty(), "documented frame {frame}: {errors:#?}");
        match direction {
            Some(Direction::Sent) => client += 1,
            Some(Direction::Received) => server += 1,
            None => {}
        }
    }
    assert!(
        documented.len() >= 20 && client >= 5 && server >= 10,
        "protocol.md examples found: {} ({client} client, {server} server)",
        documented.len()
    );

    // The resumable forms, frame by frame.
    let session = "5f0c9e1a7b3d4c2e8a6f1b0d9c8e7a6b";
    schema.assert_def(
        "ResumableAuthentication",
        &json!({"user": {}, "session_id": session, "resumed": true, "seq": 0}),
    );
    let valid_server = [
        json!({"op": 0, "d": null, "t": "X", "s": 1}),
        json!({"op": 7, "d": {"retry_after_ms": 250}}),
        json!({"op": 9, "d": {"code": "sequence_ahead", "reason": "sequence ahead of the server"}}),
        json!({"op": 22, "d": "a user object need not be an object"}),
        json!({"op": 22, "d": {"user": {"id": "a"}, "session_id": session, "resumed": false, "seq": 4}}),
        json!({"op": 10, "d": {"c_authentication_timeout": 1, "rules": [],
            "c_resume": {"session_ttl": 1, "max_messages": 0, "max_bytes": 0, "max_age": 1}}}),
        json!({"op": 0, "t": "PROXY_ERROR", "d": {"code": "no_route", "reason": "r", "event": "dispatch", "t": "SAY"}}),
    ];
    for frame in &valid_server {
        let errors = schema.check(Direction::Received, frame);
        assert!(errors.is_empty(), "{frame} should conform: {errors:#?}");
    }
    let valid_client = [
        json!({"op": 11, "s": 7}),
        json!({"op": 11, "d": null}),
        json!({"op": 1, "d": {}, "s": 0}),
        json!({"op": 6, "d": {"token": "t", "session_id": session, "seq": 0}}),
        json!({"op": 2, "d": {"token": "t", "resumable": true, "shouldSync": false}}),
        json!({"op": 0, "d": {"x": 1}}),
    ];
    for frame in &valid_client {
        let errors = schema.check(Direction::Sent, frame);
        assert!(errors.is_empty(), "{frame} should conform: {errors:#?}");
    }

    let invalid_server = [
        (json!({"op": 0, "d": {}}), "dispatch without t"),
        (json!({"op": 0, "d": {}, "t": "X", "s": 0}), "s starts at 1"),
        (
            json!({"op": 0, "d": {}, "t": "X", "s": "1"}),
            "s is a number",
        ),
        (json!({"op": 0, "t": "X"}), "server frames always carry d"),
        (
            json!({"op": 0, "d": {}, "t": "X", "o": {}}),
            "o never reaches a client",
        ),
        (json!({"op": 1, "d": {"tries": 1}}), "tries without max"),
        (json!({"op": 7, "d": {}}), "op 7 without retry_after_ms"),
        (
            json!({"op": 7, "d": {"retry_after_ms": -1}}),
            "negative delay",
        ),
        (json!({"op": 9, "d": {"reason": "r"}}), "op 9 without code"),
        (
            json!({"op": 9, "d": {"code": "nope", "reason": "r"}}),
            "unknown op 9 code",
        ),
        (
            json!({"op": 10, "d": {"c_authentication_timeout": 1}}),
            "Hello without rules",
        ),
        (
            json!({"op": 10, "d": {"c_authentication_timeout": 1, "rules": ["x"]}}),
            "unknown rule",
        ),
        (
            json!({"op": 10, "d": {"c_authentication_timeout": 1, "rules": [],
            "c_resume": {"session_ttl": 1, "max_messages": 1, "max_bytes": 1}}}),
            "c_resume without max_age",
        ),
        (json!({"op": 11, "d": {"x": 1}}), "op 11 carries nothing"),
        (
            json!({"op": 22, "d": {"user": {}, "session_id": session.to_uppercase(), "resumed": false, "seq": 1}}),
            "session ids are lowercase",
        ),
        (
            json!({"op": 22, "d": {"user": {}, "session_id": session, "resumed": "no", "seq": 1}}),
            "resumed is a boolean",
        ),
        (
            json!({"op": 22, "d": {"session_id": session, "resumed": true, "seq": 1}}),
            "resumable form without user",
        ),
        (json!({"op": 2, "d": {}}), "op 2 is client to server"),
        (
            json!({"op": 5, "d": {}, "t": "DISCONNECT_CLIENT"}),
            "op 5 never reaches a client",
        ),
        (
            json!({"op": 0, "t": "PROXY_ERROR", "d": {"code": "oops", "reason": "r", "event": "dispatch", "t": null}}),
            "unknown PROXY_ERROR code",
        ),
        (json!([0, {}]), "a frame is an object"),
    ];
    for (frame, why) in &invalid_server {
        assert!(
            !schema.check(Direction::Received, frame).is_empty(),
            "the server schema accepts {frame} ({why})"
        );
    }
    let invalid_client = [
        (json!({"op": 11, "s": -1}), "negative acknowledgement"),
        (json!({"op": 11, "s": 1.5}), "fractional acknowledgement"),
        (json!({"op": 11, "d": {"x": 1}}), "op 11 carries nothing"),
        (
            json!({"op": 0, "d": {}, "s": 3}),
            "a client dispatch has no s",
        ),
        (
            json!({"op": 0, "d": {}, "extra": 1}),
            "unknown top-level field",
        ),
        (
            json!({"op": 0, "t": "CLIENT_VERSION", "d": {}}),
            "CLIENT_VERSION without v",
        ),
        (json!({"op": 2}), "op 2 without credentials"),
        (
            json!({"op": 2, "d": {"resumable": "yes"}}),
            "resumable is a boolean",
        ),
        (
            json!({"op": 6, "d": {"session_id": session}}),
            "op 6 without seq",
        ),
        (json!({"op": 6, "d": {"seq": 1}}), "op 6 without session_id"),
        (
            json!({"op": 6, "d": {"session_id": "abc", "seq": 1}}),
            "malformed session id",
        ),
        (json!({"op": 7, "d": {}}), "op 7 is server to client"),
        (json!({"op": 22, "d": {}}), "op 22 is server to client"),
        (json!({"d": {}}), "no op"),
        (json!(null), "a frame is an object"),
    ];
    for (frame, why) in &invalid_client {
        assert!(
            !schema.check(Direction::Sent, frame).is_empty(),
            "the client schema accepts {frame} ({why})"
        );
    }
}
