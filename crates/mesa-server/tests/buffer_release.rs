//! One large message does not pin its size on a connection for the connection's life (issue #7, defect 10):
//! tungstenite's buffers keep their largest size, so the server rebuilds them after a large message.
//!
//! In its own test binary so that no other test allocates in the same process while memory is measured. The
//! clients are raw TCP sockets that write pre-built frames, so that they hold no WebSocket buffers of their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesa_server::Mesa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_bytes() -> isize {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Opens a WebSocket by hand and reads the 101 answer and the Hello.
async fn raw_connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    // The 101 head and the Hello arrive in the first reads; the test does not need their bytes.
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    tcp
}

/// A masked text frame (mask key 0, so the payload is written as is).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_does_not_pin_its_size_on_the_connection() {
    const N: usize = 100;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let builder = Mesa::builder()
        .without_heartbeat()
        .on_message(move |_session, _frame| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
    let server = mesa_testkit::server::start(builder).await;
    let mut sockets = Vec::new();
    for _ in 0..N {
        sockets.push(raw_connect(server.addr).await);
    }
    let mesa = server.mesa.clone();
    wait_until("every connection is registered", || {
        mesa.connection_count() == N
    })
    .await;
    let big =
        text_frame(format!(r#"{{"op":0,"t":"BIG","d":"{}"}}"#, "x".repeat(60_000)).as_bytes());
    let small = text_frame(br#"{"op":0,"t":"SMALL","d":1}"#);
    // Settle the runtime's and the test's own allocations with one small message each first.
    for tcp in &mut sockets {
        tcp.write_all(&small).await.expect("write");
    }
    wait_until("the small messages are handled", || {
        handled.load(Ordering::SeqCst) == N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = live_bytes();
    for tcp in &mut sockets {
        tcp.write_all(&big).await.expect("write");
    }
    wait_until("the large messages are handled", || {
        handled.load(Ordering::SeqCst) == 2 * N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_connection = (live_bytes() - before) / N as isize;
    println!("live heap per connection after one 60 KB message: {per_connection} B");
    assert!(
        per_connection < 8 * 1024,
        "{per_connection} bytes per connection stay allocated after one 60 KB message"
    );
    // The connections still work after their buffers were rebuilt.
    for tcp in &mut sockets {
        tcp.write_all(&small).await.expect("write");
    }
    wait_until("messages after the rebuild are handled", || {
        handled.load(Ordering::SeqCst) == 3 * N
    })
    .await;
    server.stop().await;
}
