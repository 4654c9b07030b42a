//! `wss://` terminated by `mesa serve` (`[tls]`) over real sockets: Hello over TLS, a certificate replaced on
//! disk is served to new connections without a restart while open ones keep working, a broken replacement
//! keeps the previous certificate, and unusable files stop startup with status 2.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

fn connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("tls-test-ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Connects over TLS (verifying against the test CA), returns the WebSocket after Hello and the DER of the
/// certificate the server presented.
async fn connect_wss(mesa: &MesaProcess) -> (Wss, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(mesa.addr)
        .await
        .expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector().connect(name, tcp).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("certificate")[0].to_vec();
    let url = format!("wss://localhost:{}/", mesa.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("upgrade");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["op"], 10, "{hello}");
    (ws, presented)
}

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).expect("json");
            if frame["op"] != 1 {
                return frame;
            }
        }
    }
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).expect("pem").to_vec()
}

/// Copies a fixture pair to files the test may overwrite.
fn install(name: &str, cert: &Path, key: &Path) {
    std::fs::copy(fixture(&format!("tls-test-{name}.pem")), cert).expect("copy cert");
    std::fs::copy(fixture(&format!("tls-test-{name}.key")), key).expect("copy key");
}

fn tls_server(cert: &Path, key: &Path) -> MesaProcess {
    let file = temp_file(
        "tls.toml",
        &format!(
            "[tls]\ncert_path = {:?}\nkey_path = {:?}\nreload_ms = 100\n",
            cert.to_str().expect("utf-8"),
            key.to_str().expect("utf-8")
        ),
    );
    MesaProcess::start(&["--config", file.to_str().expect("utf-8")], &[])
}

#[tokio::test]
async fn wss_is_served_and_a_renewed_certificate_is_picked_up_without_a_restart() {
    let cert: PathBuf = temp_file("cert.pem", "");
    let key: PathBuf = temp_file("key.pem", "");
    install("a", &cert, &key);
    let mesa = tls_server(&cert, &key);
    let (mut first, presented) = connect_wss(&mesa).await;
    assert_eq!(presented, der(&fixture("tls-test-a.pem")));
    first
        .send(Message::text(
            json!({"op": 2, "d": {"id": "alice"}}).to_string(),
        ))
        .await
        .expect("op 2");
    assert_eq!(next_json(&mut first).await["op"], 22);

    // A broken renewal (the certificate without its key) keeps the current pair.
    std::fs::copy(fixture("tls-test-b.pem"), &cert).expect("copy cert");
    mesa.wait_for_log("TLS reload failed");
    let (_, presented) = connect_wss(&mesa).await;
    assert_eq!(presented, der(&fixture("tls-test-a.pem")));

    // The key follows: the new pair is served to new connections.
    std::fs::copy(fixture("tls-test-b.key"), &key).expect("copy key");
    let deadline = Instant::now() + STEP;
    loop {
        let (_, presented) = connect_wss(&mesa).await;
        if presented == der(&fixture("tls-test-b.pem")) {
            break;
        }
        assert!(Instant::now() < deadline, "certificate b never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesa.wait_for_log("TLS certificate reloaded");
    // The connection opened before the reload still works.
    first
        .send(Message::text(json!({"op": 1, "d": {}}).to_string()))
        .await
        .expect("heartbeat");
    assert_eq!(next_json(&mut first).await["op"], 11);
}

#[test]
fn unusable_tls_files_stop_startup_with_status_2() {
    let missing = temp_file(
        "missing.toml",
        "[tls]\ncert_path = \"/nonexistent/cert.pem\"\nkey_path = \"/nonexistent/key.pem\"\n",
    );
    let (status, stderr) = run_to_exit(&["--config", missing.to_str().expect("utf-8")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mesa: configuration error: tls.cert_path"),
        "{stderr}"
    );

    let mismatched = temp_file(
        "mismatched.toml",
        &format!(
            "[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
            fixture("tls-test-a.pem").to_str().expect("utf-8"),
            fixture("tls-test-b.key").to_str().expect("utf-8")
        ),
    );
    let (status, stderr) = run_to_exit(&["--config", mismatched.to_str().expect("utf-8")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_path"), "{stderr}");

    let half = temp_file("half.toml", "[tls]\ncert_path = \"/x.pem\"\n");
    let (status, stderr) = run_to_exit(&["--config", half.to_str().expect("utf-8")], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_path"), "{stderr}");
}
