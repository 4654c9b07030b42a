//! Thousands of connections that vanish without a close frame give back their file descriptors and memory.
//!
//! In its own test binary so that no other test allocates in the same process while memory is measured.

use std::time::Duration;

use mesa_testkit::server::*;
use mesa_testkit::ws::*;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Counts allocations, so the test measures the bytes the process holds rather than what the allocator
/// keeps cached for reuse (RSS).
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_kib() -> isize {
    let stats = ALLOCATOR.stats();
    (stats.bytes_allocated as isize - stats.bytes_deallocated as isize) / 1024
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn open_and_drop(server: &TestServer, count: usize) {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        // Small client read buffers, so the test's own side does not dominate the memory figures.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(server.url(), Some(config), false)
                .await
                .expect("connect");
        sockets.push(ws);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.mesa.connection_count() < count + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Dropping the streams closes the TCP sockets without a WebSocket close frame.
    drop(sockets);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.mesa.connection_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connections never cleaned up",
            server.mesa.connection_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_dropped_connections_release_their_resources() {
    const N: usize = 2000;
    let server = start(echo_server()).await;
    let mut bystander = connect_as(&server, "bystander").await;
    // One round warms up the runtime's and the registry's tables (they keep their capacity).
    open_and_drop(&server, N).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fds_before, heap_before, rss_before) = (open_fds(), live_kib(), rss_kib());
    for _ in 0..3 {
        open_and_drop(&server, N).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fds_after, heap_after, rss_after) = (open_fds(), live_kib(), rss_kib());
    println!(
        "fds {fds_before} -> {fds_after}; live heap {heap_before} KiB -> {heap_after} KiB; \
         RSS {rss_before} KiB -> {rss_after} KiB (RSS includes pages the allocator keeps for reuse)"
    );

    assert!(
        fds_after <= fds_before + 5,
        "file descriptors: {fds_before} before, {fds_after} after"
    );
    // A leak of 100 bytes per connection would leave about 600 KiB behind after 6000 connections.
    assert!(
        heap_after <= heap_before + 256,
        "live heap: {heap_before} KiB before, {heap_after} KiB after"
    );
    assert_eq!(server.mesa.metrics().connections_open(), 1);
    assert_echo_works(&mut bystander).await;
    server.stop().await;
}
