//! Bursts far past the server's read batch (64 messages) and write budget, through the Rust client, both
//! ways, counting what was sent and what arrived (issue #7).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use mesa_client::{Client, Event};
use mesa_server::{Frame, Mesa};
use serde_json::json;

const N: u64 = 1000;

/// Every frame the client's send queue accepted reaches the server's handler, once and in order.
#[tokio::test]
async fn a_burst_of_1000_sends_reaches_the_server_in_order() {
    let received: Arc<Mutex<Vec<u64>>> = Arc::default();
    let record = received.clone();
    let builder =
        with_token_auth(Mesa::builder().rate_limit(None)).on_message(move |_session, frame| {
            let record = record.clone();
            async move {
                if let Some(i) = frame.d["i"].as_u64() {
                    record.lock().unwrap_or_else(|p| p.into_inner()).push(i);
                }
            }
        });
    let server = start(builder).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:alice"}))
        .send_rate(None)
        .queue_capacity(N as usize)
        .build()
        .expect("client");
    // Queued before the connection is ready: the whole queue is flushed back to back after op 22.
    for i in 0..N {
        client.dispatch("BURST", json!({ "i": i })).expect("queued");
    }
    wait_event(&mut events, |e| {
        matches!(e, Event::Authenticated(_)).then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if got.len() as u64 >= N {
            assert_eq!(got, (0..N).collect::<Vec<_>>(), "sent {N}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {N} sends reached the server",
            got.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    client.disconnect().await;
    server.stop().await;
}

/// A burst the server queues at once reaches the client's event stream complete and in order.
#[tokio::test]
async fn a_burst_of_1000_server_sends_reaches_the_client_in_order() {
    let server = start(echo_server()).await;
    let (client, mut events) = Client::builder(server.url())
        .credentials(json!({"token": "user:bob"}))
        .build()
        .expect("client");
    wait_event(&mut events, |e| {
        matches!(e, Event::Authenticated(_)).then_some(())
    })
    .await;
    for i in 0..N {
        let delivery = server
            .mesa
            .send_to(["bob"], &Frame::dispatch("NEWS", json!({ "i": i })))
            .await
            .expect("send");
        assert_eq!(delivery.queued, 1, "frame {i}");
    }
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        let i = wait_event(&mut events, |e| match e {
            Event::Message(frame) => frame.d["i"].as_u64(),
            _ => None,
        })
        .await;
        got.push(i);
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    client.disconnect().await;
    server.stop().await;
}
