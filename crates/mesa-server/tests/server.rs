//! Core behaviour over real sockets: Hello, heartbeats, authentication, dispatch, sends, hooks, shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesa_server::{Client, Disconnection, Frame, Identity, Mesa, Middleware, Target};
use serde_json::{json, Value};

#[tokio::test]
async fn hello_is_the_first_frame_with_mesa_fields() {
    let server = start(Mesa::builder()).await;
    let mut ws = connect(&server).await;
    // Key order inside `d` is not significant in JSON; the values and the set of fields are.
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 10, "d": {
            "c_heartbeat_interval": 10000,
            "c_reconnect_interval": 5000,
            "c_authentication_timeout": 10000,
            "rules": ["sends_user_object"],
        }})
    );
    server.stop().await;
}

#[tokio::test]
async fn authentication_acknowledges_with_the_user_object() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    send(&mut ws, json!({"op": 2, "d": {"token": "user:alice"}})).await;
    assert_eq!(recv_text(&mut ws).await, r#"{"op":22,"d":{"id":"alice"}}"#);
    let client = server.mesa.client(mesa_server::ConnectionId(1)).expect("client handle");
    assert_eq!(client.id().as_deref(), Some("alice"));
    assert!(server.mesa.is_user_connected("alice"));
    server.stop().await;
}

#[tokio::test]
async fn echo_dispatch_round_trip() {
    let server = start(echo_server()).await;
    let (mut ws, _) = connect_hello(&server).await;
    assert_echo_works(&mut ws).await;
    server.stop().await;
}
