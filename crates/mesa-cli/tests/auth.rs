//! The authentication modes of `mesa serve` over real sockets: none, JWT (HS256, RS256) and webhook.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use mesa_testkit::process::free_port;
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn hs256(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn jwt_server() -> MesaProcess {
    MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "jwt"),
            ("MESA_AUTH__SECRET_ENV", "TEST_JWT_SECRET"),
            ("TEST_JWT_SECRET", SECRET),
        ],
    )
}

#[tokio::test]
async fn none_mode_takes_the_id_then_the_token() {
    let mesa = MesaProcess::start(&[], &[]);
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        authenticate(&mut ws, json!({"id": "alice", "token": "x"})).await,
        json!({"id": "alice"})
    );
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        authenticate(&mut ws, json!({"token": "bob"})).await,
        json!({"id": "bob"})
    );
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"id": 5})).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("\"id\" or \"token\""), "{reason}");
}

#[tokio::test]
async fn jwt_hs256_token_is_accepted_with_the_user_claim() {
    let mesa = jwt_server().await;
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let token = hs256(
        json!({"sub": "alice", "exp": get_current_timestamp() + 3600, "user": {"name": "Alice"}}),
        SECRET,
    );
    assert_eq!(
        authenticate(&mut ws, json!({"token": token})).await,
        json!({"name": "Alice"})
    );
    // Without a `user` claim, op 22 carries only the id (the other claims are not echoed); a numeric `sub`
    // is accepted as the id.
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let token = hs256(
        json!({"sub": 42, "exp": get_current_timestamp() + 3600, "role": "admin"}),
        SECRET,
    );
    assert_eq!(
        authenticate(&mut ws, json!({"token": token})).await,
        json!({"id": "42"})
    );
}

#[tokio::test]
async fn jwt_with_a_bad_signature_is_refused_with_1008() {
    let mesa = jwt_server().await;
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let token = hs256(
        json!({"sub": "mallory"}),
        "some-other-secret-of-32-bytes-or-more",
    );
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": token.clone()})).await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "invalid token signature");
    assert!(!mesa.logs().contains(&token), "tokens never reach the logs");
}

#[tokio::test]
async fn expired_jwt_is_refused_with_1008() {
    let mesa = jwt_server().await;
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let token = hs256(
        json!({"sub": "alice", "exp": get_current_timestamp() - 3600}),
        SECRET,
    );
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": token})).await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "token expired");

    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"id": "alice"})).await;
    assert_eq!((code, reason.as_str()), (1008, "missing token"));
}

#[tokio::test]
async fn jwt_rs256_with_the_committed_test_key_pair() {
    // tests/fixtures/jwt-test-*.pem is a test-only key pair (see tests/fixtures/README.md).
    let private = std::fs::read(fixture("jwt-test-private.pem")).expect("private key");
    let public = fixture("jwt-test-public.pem");
    let file = temp_file(
        "rs256.toml",
        &format!(
            "[auth]\nmode = \"jwt\"\npublic_key_path = {:?}\nissuer = \"https://issuer.test\"\nid_claim = \"uid\"\n",
            public.to_str().expect("utf-8 path")
        ),
    );
    let mesa = MesaProcess::start(&["--config", file.to_str().expect("path")], &[]);
    let sign = |claims: Value| {
        encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&private).expect("pem"),
        )
        .expect("sign")
    };

    let claims =
        json!({"uid": "carol", "iss": "https://issuer.test", "exp": get_current_timestamp() + 60});
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        authenticate(&mut ws, json!({"token": sign(claims.clone())})).await,
        json!({"id": "carol"})
    );

    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let wrong_issuer = json!({"uid": "carol", "iss": "https://elsewhere.test", "exp": get_current_timestamp() + 60});
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": sign(wrong_issuer)})).await;
    assert_eq!((code, reason.as_str()), (1008, "invalid token issuer"));

    // An HS256 token cannot pass for RS256 (no algorithm confusion with the public key as a secret).
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let pem = std::fs::read_to_string(&public).expect("public key");
    let forged = hs256(
        json!({"uid": "eve", "iss": "https://issuer.test", "exp": get_current_timestamp() + 60}),
        &pem,
    );
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": forged})).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "token algorithm not accepted")
    );
}

/// What the fake backend received: op 2's `d` and the `Authorization` header.
type Seen = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// A tiny app backend on 127.0.0.1:0. Token `good` → alice with a user object, `numeric` → id 7 without
/// one, `banned` → 403 with a reason, `bad` → 401 without a body, anything else → 500.
async fn backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/auth",
        post(move |headers: HeaderMap, Json(d): Json<Value>| {
            let record = record.clone();
            async move {
                let authorization = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                record
                    .lock()
                    .expect("lock")
                    .push((d.clone(), authorization));
                match d["token"].as_str() {
                    Some("good") => (
                        StatusCode::OK,
                        Json(json!({"id": "alice", "user": {"name": "Alice"}})),
                    ),
                    Some("numeric") => (StatusCode::OK, Json(json!({"id": 7}))),
                    Some("banned") => (StatusCode::FORBIDDEN, Json(json!({"error": "banned"}))),
                    Some("bad") => (StatusCode::UNAUTHORIZED, Json(Value::Null)),
                    Some("expiring") => (
                        StatusCode::OK,
                        Json(json!({"id": "eve", "exp": get_current_timestamp() + 1})),
                    ),
                    Some("slow") => {
                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                        (StatusCode::OK, Json(json!({"id": "late"})))
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let url = format!("http://{}/auth", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn webhook_server(url: &str) -> MesaProcess {
    MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "webhook"),
            ("MESA_AUTH__URL", url),
            ("MESA_AUTH__TIMEOUT_MS", "2000"),
            ("MESA_AUTH__HEADERS__AUTHORIZATION", "Bearer backend-key"),
        ],
    )
}

#[tokio::test]
async fn webhook_accepts_with_the_backends_identity() {
    let (url, seen) = backend().await;
    let mesa = webhook_server(&url);
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let d = json!({"token": "good", "shouldSync": true});
    assert_eq!(
        authenticate(&mut ws, d.clone()).await,
        json!({"name": "Alice"})
    );
    assert_eq!(
        seen.lock().expect("lock").as_slice(),
        &[(d, Some("Bearer backend-key".to_string()))],
        "the backend gets op 2's d as is, with the configured header"
    );
    assert!(
        !mesa.logs().contains("backend-key"),
        "header values are secrets"
    );

    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        authenticate(&mut ws, json!({"token": "numeric"})).await,
        json!({"id": "7"})
    );
}

#[tokio::test]
async fn webhook_refusals_carry_the_backends_reason() {
    let (url, _) = backend().await;
    let mesa = webhook_server(&url);
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": "banned"})).await;
    assert_eq!((code, reason.as_str()), (1008, "banned"));

    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": "bad"})).await;
    assert_eq!((code, reason.as_str()), (1008, "authentication refused"));

    // A 5xx is the backend's problem, not a refusal: retryable 1013, and the log names the status.
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": "boom"})).await;
    assert_eq!(
        (code, reason.as_str()),
        (1013, "authentication service unavailable, retry later")
    );
    let warning = mesa.wait_for_log("unexpected status");
    assert!(warning.contains("500"), "{warning}");
}

#[tokio::test]
async fn a_slow_webhook_closes_with_1013_and_the_log_says_timeout() {
    let (url, _) = backend().await;
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "webhook"),
            ("MESA_AUTH__URL", &url),
            ("MESA_AUTH__TIMEOUT_MS", "300"),
        ],
    );
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": "slow"})).await;
    assert_eq!(
        (code, reason.as_str()),
        (1013, "authentication service unavailable, retry later")
    );
    mesa.wait_for_log("timed out (auth.timeout_ms)");
    let (_, metrics) = get(&mesa.http_url("/metrics")).await;
    assert!(
        metrics.contains("mesa_auth_total{mode=\"webhook\",outcome=\"unavailable\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesa_auth_duration_seconds_count{mode=\"webhook\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn webhook_backend_down_refuses_and_warns() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let mesa = webhook_server(&format!("http://127.0.0.1:{port}/auth"));
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": "good"})).await;
    assert_eq!(
        (code, reason.as_str()),
        (1013, "authentication service unavailable, retry later")
    );
    let warning = mesa.wait_for_log("authentication webhook");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("connection failed"), "{warning}");
}

#[tokio::test]
async fn with_an_auth_mode_anonymous_connections_get_no_broadcast_and_cannot_dispatch() {
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "jwt"),
            ("MESA_AUTH__SECRET_ENV", "TEST_JWT_SECRET"),
            ("TEST_JWT_SECRET", SECRET),
            ("MESA_API__KEY", "an-api-key-that-is-long-enough-000"),
        ],
    );
    let (mut anonymous, _) = connect_hello(&mesa.ws_url("/")).await;
    let (mut alice, _) = connect_hello(&mesa.ws_url("/")).await;
    let token = hs256(
        json!({"sub": "alice", "exp": get_current_timestamp() + 600}),
        SECRET,
    );
    authenticate(&mut alice, json!({"token": token})).await;
    let answer = http()
        .post(mesa.http_url("/api/send"))
        .bearer_auth("an-api-key-that-is-long-enough-000")
        .json(&json!({"message": {"op": 0, "t": "NEWS", "d": 1}}))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 202);
    assert_eq!(recv(&mut alice).await["t"], "NEWS");
    // The anonymous connection's next frame is not NEWS: its dispatch closes it with 4003 instead.
    send(&mut anonymous, json!({"op": 0, "t": "SAY", "d": 1})).await;
    let close = expect_close(&mut anonymous).await.heartbeats_only();
    assert_eq!(close.code_reason().0, 4003);
}

#[tokio::test]
async fn jwt_startup_warns_without_issuer_or_audience_and_tokens_need_exp() {
    let mesa = jwt_server().await;
    mesa.wait_for_log("auth.issuer and auth.audience are not set");
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (code, reason) = authenticate_refused(
        &mut ws,
        json!({"token": hs256(json!({"sub": "a"}), SECRET)}),
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "token has no \"exp\" claim")
    );

    let allowing = MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "jwt"),
            ("MESA_AUTH__SECRET_ENV", "TEST_JWT_SECRET"),
            ("TEST_JWT_SECRET", SECRET),
            ("MESA_AUTH__ALLOW_NO_EXP", "true"),
            ("MESA_AUTH__AUDIENCE", "app"),
        ],
    );
    let (mut ws, _) = connect_hello(&allowing.ws_url("/")).await;
    let token = hs256(json!({"sub": "a", "aud": "app"}), SECRET);
    assert_eq!(
        authenticate(&mut ws, json!({"token": token})).await,
        json!({"id": "a"})
    );
    let (mut ws, _) = connect_hello(&allowing.ws_url("/")).await;
    let token = hs256(json!({"sub": "a", "aud": "other"}), SECRET);
    let (code, reason) = authenticate_refused(&mut ws, json!({"token": token})).await;
    assert_eq!((code, reason.as_str()), (1008, "invalid token audience"));
    assert!(!allowing
        .logs()
        .contains("auth.issuer and auth.audience are not set"));
}

/// A JWT server without leeway, so that sessions end exactly at `exp`.
fn strict_jwt_server() -> MesaProcess {
    MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "jwt"),
            ("MESA_AUTH__SECRET_ENV", "TEST_JWT_SECRET"),
            ("TEST_JWT_SECRET", SECRET),
            ("MESA_AUTH__LEEWAY_MS", "0"),
        ],
    )
}

#[tokio::test]
async fn a_session_ends_at_its_tokens_exp_with_4011() {
    let mesa = strict_jwt_server();
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let exp = get_current_timestamp() + 2;
    authenticate(
        &mut ws,
        json!({"token": hs256(json!({"sub": "a", "exp": exp}), SECRET)}),
    )
    .await;
    let started = std::time::Instant::now();
    let close = expect_close(&mut ws).await.heartbeats_only();
    assert_eq!(
        close.code_reason(),
        (
            4011,
            "token expired: refresh the token and reconnect".to_string()
        )
    );
    assert!(started.elapsed() <= std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_session_and_another_identity_is_refused() {
    let mesa = strict_jwt_server();
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let short = hs256(
        json!({"sub": "a", "exp": get_current_timestamp() + 2}),
        SECRET,
    );
    authenticate(&mut ws, json!({"token": short})).await;
    let longer = hs256(
        json!({"sub": "a", "exp": get_current_timestamp() + 60}),
        SECRET,
    );
    assert_eq!(
        authenticate(&mut ws, json!({"token": longer})).await,
        json!({"id": "a"})
    );
    // Past the first token's exp, the session is still open.
    mesa_testkit::ws::expect_silence(&mut ws, std::time::Duration::from_secs(3)).await;
    let other = hs256(
        json!({"sub": "b", "exp": get_current_timestamp() + 60}),
        SECRET,
    );
    send(&mut ws, json!({"op": 2, "d": {"token": other}})).await;
    assert_eq!(expect_close(&mut ws).await.code_reason().0, 4005);
}

#[tokio::test]
async fn repeated_op_2_is_rate_limited_on_its_own() {
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_SERVER__LIMITS__AUTHENTICATION_ATTEMPTS__BURST", "2"),
            (
                "MESA_SERVER__LIMITS__AUTHENTICATION_ATTEMPTS__EVERY_MS",
                "60000",
            ),
        ],
    );
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({"id": "a"})).await;
    authenticate(&mut ws, json!({"id": "a"})).await;
    send(&mut ws, json!({"op": 2, "d": {"id": "a"}})).await;
    assert_eq!(expect_close(&mut ws).await.code_reason().0, 4008);
}

#[tokio::test]
async fn a_webhook_identity_with_exp_ends_then_with_4011() {
    let (url, _) = backend().await;
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_AUTH__MODE", "webhook"),
            ("MESA_AUTH__URL", &url),
            ("MESA_AUTH__LEEWAY_MS", "0"),
        ],
    );
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({"token": "expiring"})).await;
    let close = expect_close(&mut ws).await.heartbeats_only();
    assert_eq!(close.code_reason().0, 4011);
}
