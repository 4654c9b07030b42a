//! The API over real HTTP on 127.0.0.1 with an engine that cannot reach other nodes (what the Redis engine does
//! while Redis is down): 503 with the local counts, `/healthz` degraded but 200, `mesa_engine_degraded 1`.
//! In-process, because a test engine cannot be put into the `mesa` binary; `tests/cluster_api.rs` covers
//! the in-memory engine through the binary.

use std::sync::Arc;

use mesa_engine::conformance::UnreachableEngine as DownEngine;
use mesa_testkit::ws::{connect_as, expect_close, recv};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;

const KEY: &str = "engine-test-key";
const DOWN: &str = DownEngine::REASON;

/// The router of `mesa serve` around `mesa`, served on a free port until dropped.
struct Served {
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn serve(mesa: &Mesa) -> Served {
    let app = router(
        "/",
        ApiState {
            mesa: mesa.clone(),
            key: Some(Secret::new(KEY)),
            body_limit: 1 << 16,
            metrics: Default::default(),
            trusted_proxies: Vec::new(),
            engine_metrics: None,
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = mesa.clone();
    tokio::spawn(async move {
        server
            .serve_with(listener, app, async move {
                let _ = stopped.await;
            })
            .await
    });
    Served {
        base: format!("127.0.0.1:{}", addr.port()),
        _stop: stop,
    }
}

impl Served {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let mut request = client
            .request(method, format!("http://{}{path}", self.base))
            .bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text:?}"));
        (status, json)
    }
}

#[tokio::test]
async fn an_engine_that_reaches_no_other_node_gives_503_with_the_local_counts() {
    let mesa = mesa_testkit::server::with_token_auth(Mesa::builder())
        .engine(Arc::new(DownEngine::default()))
        .build();
    let served = serve(&mesa).await;
    let ws_url = format!("ws://{}/", served.base);
    let mut ann = connect_as(&ws_url, "ann").await;

    let (status, answer) = served
        .json(
            reqwest::Method::POST,
            "/api/send",
            Some(json!({"message": {"op": 0, "t": "HI", "d": {}}, "recipients": ["ann"]})),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"].as_str().expect("error");
    assert!(
        message.contains("other nodes were not reached") && message.contains(DOWN),
        "{message}"
    );
    assert_eq!(answer["queued"], 1, "{answer}");
    assert_eq!(
        recv(&mut ann).await["t"],
        "HI",
        "this node's sessions are still served"
    );

    let (status, answer) = served
        .json(
            reqwest::Method::POST,
            "/api/send",
            Some(json!({"message": {"op": 5, "t": "DISCONNECT_CLIENT", "d": {}}, "recipients": ["ann"]})),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains(DOWN)),
        "{answer}"
    );
    assert_eq!(answer["disconnected"], 1, "{answer}");
    assert_eq!(expect_close(&mut ann).await.heartbeats_only().code, 1000);

    for path in ["/api/presence/ann", "/api/nodes"] {
        let (status, answer) = served.json(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 503, "{path}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(DOWN)),
            "{path}: {answer}"
        );
    }

    // Degraded, yet in rotation: 200 with the reason.
    let (status, health) = served.json(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["reason"], DOWN, "{health}");
    assert!(
        health["connections"].is_u64() && health["since_ms"].is_u64(),
        "{health}"
    );

    let (_, metrics) = served.call(reqwest::Method::GET, "/metrics", None).await;
    assert!(metrics.contains("\nmesa_engine_degraded 1\n"), "{metrics}");
    assert!(
        metrics.contains("mesa_api_requests_total{outcome=\"unavailable\"} 2\n"),
        "{metrics}"
    );

    // A shutdown still wins over degraded.
    assert!(mesa.shutdown().await);
    let (status, health) = served.json(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!((status, health), (503, json!({"status": "shutting_down"})));
}
