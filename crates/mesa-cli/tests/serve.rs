//! `mesa serve` as a process: zero-config defaults, configuration precedence, startup errors, health and
//! metrics, and graceful shutdown on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn zero_config_serve_sends_hello_with_mesa_defaults() {
    let mesa = MesaProcess::start(&[], &[]);
    let (_ws, hello) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(
        hello,
        json!({"op": 10, "d": {
            "c_heartbeat_interval": 10000,
            "c_reconnect_interval": 5000,
            "c_authentication_timeout": 10000,
            "rules": ["sends_user_object"],
            "c_resume": {
                "session_ttl": 300000,
                "max_messages": 1000,
                "max_bytes": 1048576,
                "max_age": 900000,
            },
        }})
    );
    // No authentication configured: the server says so instead of staying quiet.
    mesa.wait_for_log("auth.mode = \"none\"");
}

#[tokio::test]
async fn the_example_config_file_loads_and_states_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/mesa.example.toml");
    let mesa = MesaProcess::start(&["--config", example], &[]);
    let (_ws, hello) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(hello["d"]["c_heartbeat_interval"], 10000);
    assert_eq!(hello["d"]["c_reconnect_interval"], 5000);
    assert_eq!(hello["d"]["c_authentication_timeout"], 10000);
}

/// The example's commented `[cluster]` section, uncommented, has only real keys: without Redis support the
/// only complaint is the missing feature (an unknown key would be named instead).
#[cfg(not(feature = "redis"))]
#[test]
fn the_example_cluster_section_names_real_keys() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mesa.example.toml"))
            .expect("read the example");
    let (before, section) = example
        .split_once("# [cluster]")
        .expect("a [cluster] section");
    let mut text = format!("{before}[cluster]\n");
    for line in section.lines() {
        if let Some(key) = line.strip_prefix("# ").filter(|l| l.contains(" = ")) {
            text.push_str(key);
            text.push('\n');
        }
    }
    assert!(
        text.matches(" = ").count() > 5 && text.contains("redis_url = "),
        "{text}"
    );
    let file = temp_file("example-cluster.toml", &text);
    let (status, stderr) = run_to_exit(&["--config", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("built without Redis support"), "{stderr}");
}

#[tokio::test]
async fn config_file_then_env_then_flags_override_in_order() {
    let file = temp_file(
        "precedence.toml",
        r#"
        [server]
        host = "0.0.0.0"        # overridden by --host 127.0.0.1
        port = 1                # overridden by --port 0
        path = "/from-file"     # overridden by the environment, then by --path

        [server.heartbeat]
        interval_ms = 1111      # file only

        [server.reconnect]
        interval_ms = 2222      # overridden by the environment

        [server.authentication]
        timeout_ms = 3333       # file only
        "#,
    );
    let file = file.to_str().expect("utf-8 path");
    let mesa = MesaProcess::start(
        &["--path", "/from-flag"],
        &[
            ("MESA_CONFIG", file),
            ("MESA_SERVER__RECONNECT__INTERVAL_MS", "4444"),
            ("MESA_SERVER__PATH", "/from-env"),
        ],
    );
    assert!(mesa.addr.ip().is_loopback(), "--host wins: {}", mesa.addr);
    assert_ne!(mesa.addr.port(), 1, "--port wins");

    let (_ws, hello) = connect_hello(&mesa.ws_url("/from-flag")).await;
    assert_eq!(hello["d"]["c_heartbeat_interval"], 1111);
    assert_eq!(hello["d"]["c_reconnect_interval"], 4444);
    assert_eq!(hello["d"]["c_authentication_timeout"], 3333);
    for overridden in ["/from-env", "/from-file"] {
        let (status, _) = get(&mesa.http_url(overridden)).await;
        assert_eq!(status, 404, "{overridden} is not the gateway");
    }
}

#[test]
fn unknown_keys_and_bad_values_stop_startup_with_status_2() {
    let file = temp_file("typo.toml", "[server]\nprot = 5000\n");
    let (status, stderr) = run_to_exit(&["--config", file.to_str().expect("path")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("prot"), "{stderr}");

    let (status, stderr) = run_to_exit(&[], &[("MESA_SERVER__HEARTBEAT__INTERVAL_MS", "soon")]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("MESA_"),
        "the error names the source: {stderr}"
    );

    let (status, stderr) = run_to_exit(&["--config", "/nonexistent/mesa.toml"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let (status, stderr) = run_to_exit(&["--path", "/healthz"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("collides"), "{stderr}");
}

/// `[cluster]` in a build without Redis support is refused: running alone while the operator believes the
/// nodes share their clients would lose messages silently.
#[cfg(not(feature = "redis"))]
#[test]
fn a_cluster_without_redis_support_is_refused() {
    for (args, env) in [
        (
            &["--redis-url", "redis://:hunter2@127.0.0.1:6379"][..],
            &[][..],
        ),
        (
            &[][..],
            &[("MESA_REDIS_URL", "redis://:hunter2@127.0.0.1:6379")][..],
        ),
        (
            &[][..],
            &[("MESA_CLUSTER__REDIS_URL", "redis://:hunter2@127.0.0.1:6379")][..],
        ),
    ] {
        let (status, stderr) = run_to_exit(args, env);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("built without Redis support"), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the URL's password is not printed: {stderr}"
        );
    }
}

#[test]
fn cluster_settings_are_checked_and_errors_name_the_key() {
    let url = ("MESA_CLUSTER__REDIS_URL", "redis://127.0.0.1:6379");
    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[("MESA_CLUSTER__REDIS_URL", "http://:hunter2@127.0.0.1")],
            "cluster.redis_url: scheme \"http\"",
        ),
        (
            &[("MESA_CLUSTER__REDIS_URL", "127.0.0.1:6379")],
            "cluster.redis_url: not a URL",
        ),
        (
            &[("MESA_CLUSTER__NAMESPACE", "app")],
            "cluster.redis_url: required",
        ),
        (
            &[url, ("MESA_CLUSTER__NODE_TTL_MS", "10")],
            "cluster.node_ttl_ms",
        ),
        (
            &[url, ("MESA_CLUSTER__NODE_ID", "not-hex")],
            "cluster.node_id",
        ),
        (
            &[url, ("MESA_CLUSTER__NAMESPACE", "a{b}")],
            "cluster.namespace",
        ),
        (
            &[url, ("MESA_REDIS_URL", "redis://127.0.0.1:6380")],
            "both set",
        ),
    ];
    for (env, needle) in cases {
        let (status, stderr) = run_to_exit(&[], env);
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    // Unknown keys are errors here as everywhere.
    let file = temp_file(
        "cluster.toml",
        "[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\nnode_ttl = 5\n",
    );
    let (status, stderr) = run_to_exit(&["--config", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("node_ttl"), "{stderr}");
}

#[tokio::test]
async fn json_log_format_prints_one_object_per_line() {
    let mesa = MesaProcess::start(&["--log-format", "json"], &[]);
    let line = mesa.wait_for_log("listening on");
    let entry: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["level"], "INFO");
    assert_eq!(entry["addr"], mesa.addr.to_string());
    assert_eq!(
        entry["message"],
        format!("listening on {}", mesa.addr).as_str()
    );
}

#[tokio::test]
async fn healthz_counts_connections_and_metrics_are_prometheus_text() {
    let mesa = MesaProcess::start(&[], &[]);
    let (status, body) = get(&mesa.http_url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": "ok", "connections": 0})
    );

    let (_ws, _) = connect_hello(&mesa.ws_url("/")).await;
    let (_, body) = get(&mesa.http_url("/healthz")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": "ok", "connections": 1})
    );

    let response = http()
        .get(mesa.http_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("body");
    assert!(
        text.contains("# TYPE mesa_connections_open gauge"),
        "{text}"
    );
    assert!(text.contains("mesa_connections_open 1"), "{text}");
    // Every family, the gateway's and mesa serve's own, says what it is.
    let lines: Vec<_> = text.lines().collect();
    let mut families = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().expect("name");
            assert!(
                i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                "{name} has no HELP: {text}"
            );
        }
    }
    for family in [
        "mesa_proxy_requests_total",
        "mesa_proxy_request_duration_seconds",
        "mesa_auth_total",
        "mesa_auth_duration_seconds",
        "mesa_api_requests_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}: {text}"
        );
    }
    assert!(families >= 15, "{text}");
    assert!(text.contains("mesa_connections_total 1"), "{text}");

    let (status, body) = get(&mesa.http_url("/nowhere")).await;
    assert_eq!(status, 404);
    assert!(body.contains("error"), "{body}");
}

#[tokio::test]
async fn sigterm_drains_clients_with_op_7_and_1012_then_exits_and_frees_the_port() {
    let mut mesa = MesaProcess::start(&[], &[]);
    let (mut ws, _) = connect_hello(&mesa.ws_url("/")).await;
    authenticate(&mut ws, json!({"id": "alice"})).await;
    // A load balancer's kept-alive health-check connection must not hold the shutdown up.
    let health_checker = http();
    let status = health_checker
        .get(mesa.http_url("/healthz"))
        .send()
        .await
        .expect("GET /healthz")
        .status();
    assert_eq!(status, 200);

    let signalled = Instant::now();
    mesa.sigterm();
    let reconnect = recv(&mut ws).await;
    assert_eq!(reconnect["op"], 7, "{reconnect}");
    let code = expect_close(&mut ws).await.heartbeats_only().code;
    assert_eq!(code, 1012);
    // Reading on completes the closing handshake, as a well-behaved client does.
    let _ = tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await;

    let status = mesa
        .wait_exit(Duration::from_secs(5))
        .expect("mesa exits after SIGTERM");
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", mesa.logs());
    assert!(
        took < Duration::from_millis(1500),
        "exit took {took:?}\n{}",
        mesa.logs()
    );
    std::net::TcpListener::bind(mesa.addr).expect("the port is free again");
}

#[tokio::test]
async fn sigterm_with_an_unresponsive_client_exits_after_the_shutdown_timeout() {
    let mut mesa = MesaProcess::start(&[], &[("MESA_SERVER__SHUTDOWN_TIMEOUT_MS", "300")]);
    // Connected, but never reads again: it will not answer the close.
    let (_silent, _) = connect_hello(&mesa.ws_url("/")).await;
    let signalled = Instant::now();
    mesa.sigterm();
    let status = mesa
        .wait_exit(Duration::from_secs(5))
        .expect("mesa exits once the shutdown timeout has passed");
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM with an unresponsive client");
    assert!(status.success(), "{status:?}\n{}", mesa.logs());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
}

#[tokio::test]
async fn secret_and_foreign_mesa_variables_do_not_stop_startup() {
    // The documented example: the key lives in MESA_KEY, named by MESA_API__KEY_ENV; Mesa 3D's variable and
    // a misspelt key (one underscore) are not configuration; the misspelling gets a warning.
    let key = "a-long-enough-api-key-for-the-test-0001";
    let mesa = MesaProcess::start(
        &[],
        &[
            ("MESA_KEY", key),
            ("MESA_API__KEY_ENV", "MESA_KEY"),
            ("MESA_GL_VERSION_OVERRIDE", "4.5"),
            ("MESA_SERVER_PORT", "1"),
        ],
    );
    mesa.wait_for_log("MESA_SERVER_PORT is not read as configuration");
    let answer = http()
        .post(mesa.http_url("/api/send"))
        .bearer_auth(key)
        .json(&json!({"message": {"op": 0, "t": "X", "d": 1}}))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 202);
}

#[test]
fn nonsense_values_are_refused_with_status_2_naming_the_key() {
    for (var, value, key) in [
        (
            "MESA_SERVER__HEARTBEAT__INTERVAL_MS",
            "0",
            "server.heartbeat.interval_ms",
        ),
        (
            "MESA_SERVER__LIMITS__MAX_MESSAGE_SIZE",
            "0",
            "server.limits.max_message_size",
        ),
        (
            "MESA_SERVER__LIMITS__OUTBOUND_QUEUE",
            "0",
            "server.limits.outbound_queue",
        ),
        ("MESA_PROXY__URL", "ftp://x", "proxy.url"),
    ] {
        let (status, stderr) = run_to_exit(&[], &[(var, value)]);
        assert_eq!(status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("mesa: configuration error: {key}")),
            "{var}: {stderr}"
        );
    }
}

#[tokio::test]
async fn listening_on_is_printed_whatever_the_log_level() {
    let mesa = MesaProcess::start(&["--log-filter", "error"], &[]);
    let (_ws, hello) = connect_hello(&mesa.ws_url("/")).await;
    assert_eq!(hello["op"], 10);
}

#[tokio::test]
async fn origins_are_compared_as_origins_and_refusals_are_logged() {
    let mesa = MesaProcess::start(
        &[],
        &[("MESA_SERVER__ALLOWED_ORIGINS", r#"["https://app.example"]"#)],
    );
    let request = |origin: Option<&str>| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                mesa.ws_url("/"),
            )
            .expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("header"));
        }
        request
    };
    for origin in [Some("https://APP.example:443"), None] {
        let (mut ws, _) = tokio_tungstenite::connect_async(request(origin))
            .await
            .unwrap_or_else(|error| panic!("{origin:?}: {error}"));
        assert_eq!(recv(&mut ws).await["op"], 10);
    }
    match tokio_tungstenite::connect_async(request(Some("http://app.example"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    mesa.wait_for_log("\"http://app.example\"");

    let (status, stderr) = run_to_exit(
        &[],
        &[("MESA_SERVER__ALLOWED_ORIGINS", r#"["app.example"]"#)],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.allowed_origins"), "{stderr}");
}
