//! `wss://` through rustls: a TLS-terminating proxy (test CA in `tests/tls/`) in front of the real server.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use mesa_client::rustls::pki_types::pem::PemObject;
use mesa_client::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use mesa_client::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use mesa_client::{Client, ConnectErrorKind, Event};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA and a leaf for `localhost` and `127.0.0.1`, valid for a century; test-only keys.
const CA: &[u8] = include_bytes!("tls/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("tls/server.key");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts TLS on 127.0.0.1 and pipes the plaintext to `backend`.
async fn tls_proxy(backend: SocketAddr) -> SocketAddr {
    let certs = CertificateDer::pem_slice_iter(SERVER_CERT)
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).expect("key");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

fn trusting_the_test_ca() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA) {
        roots.add(cert.expect("CA")).expect("add CA");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn wss_with_custom_roots_connects_authenticates_and_dispatches() {
    let server = start(echo_server()).await;
    let proxy = tls_proxy(server.addr).await;
    let (client, mut events) = Client::builder(format!("wss://127.0.0.1:{}/", proxy.port()))
        .tls_config(trusting_the_test_ca())
        .credentials(json!({"token": "user:tls"}))
        .build()
        .expect("build");
    let user = wait_event(&mut events, |e| match e {
        Event::Authenticated(user) => Some(user.clone()),
        _ => None,
    })
    .await;
    assert_eq!(user, json!({"id": "tls"}));
    client
        .dispatch("ECHO", json!({"over": "tls"}))
        .expect("send");
    let echo = wait_event(&mut events, |e| match e {
        Event::Message(frame) => Some(frame.d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(echo, json!({"over": "tls"}));
    server.stop().await;
}

#[tokio::test]
async fn wss_with_default_roots_refuses_an_unknown_issuer() {
    let server = start(echo_server()).await;
    let proxy = tls_proxy(server.addr).await;
    let error = mesa_client::connect(format!("wss://127.0.0.1:{}/", proxy.port()))
        .await
        .expect_err("the test CA is not a webpki root");
    assert_eq!(error.kind(), &ConnectErrorKind::Tls, "{error:?}");
    server.stop().await;
}
