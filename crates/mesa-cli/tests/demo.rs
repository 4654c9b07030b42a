//! `mesa serve --demo` over HTTP: off by default, on by flag, file key or environment, and a gateway path
//! that would collide with `/demo` refused. The chat itself is tested in a browser (`tests/browser.rs`).

mod common;

use common::*;

#[tokio::test]
async fn demo_is_off_unless_asked_for() {
    let mesa = MesaProcess::start(&[], &[]);
    assert_eq!(get(&mesa.http_url("/demo")).await.0, 404);
    assert_eq!(get(&mesa.http_url("/demo/mesa-client.js")).await.0, 404);
}

#[tokio::test]
async fn demo_flag_serves_the_page_and_the_client() {
    let mesa = MesaProcess::start(&["--demo", "--path", "/ws"], &[]);
    let (status, page) = get(&mesa.http_url("/demo")).await;
    assert_eq!(status, 200);
    assert!(page.contains("without authentication"), "{page}");
    assert!(page.contains(r#"const gatewayPath = "/ws";"#), "{page}");
    let (status, script) = get(&mesa.http_url("/demo/mesa-client.js")).await;
    assert_eq!(status, 200);
    assert!(script.contains("export default class MesaClient"));
    // The API routes still answer beside it.
    assert_eq!(get(&mesa.http_url("/healthz")).await.0, 200);
    mesa.wait_for_log("demo chat without authentication");
}

#[tokio::test]
async fn demo_from_the_environment_and_the_file() {
    let mesa = MesaProcess::start(&[], &[("MESA_DEMO", "true")]);
    assert_eq!(get(&mesa.http_url("/demo")).await.0, 200);
    let file = temp_file("demo.toml", "demo = true\n");
    let mesa = MesaProcess::start(&["--config", file.to_str().expect("path")], &[]);
    assert_eq!(get(&mesa.http_url("/demo")).await.0, 200);
}

#[test]
fn demo_refuses_a_gateway_path_under_demo() {
    let (status, stderr) = run_to_exit(&["--demo", "--path", "/demo/ws"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("collides with the demo page"), "{stderr}");
}
