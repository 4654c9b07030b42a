//! Smoke runs of the resumable-session scenarios against an in-process mesa-server with the conformance
//! contract (in-memory engine: its Hello offers `c_resume`): durable and volatile sends to user ids through
//! a sender connection (`targeted --via client`), idle connections on resumable sessions, and a resume
//! storm (`resume`) with the messages sent while the sessions are disconnected and before they drop. Each
//! fails if anything is lost, duplicated, out of order, or out of sequence.

mod common;

use common::{run, start_mesa_server, u64_at};
use mesa_bench::report::Report;

fn assert_nothing_lost(report: &Report) {
    let r = &report.results;
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_gaps",
        "seq_dups",
        "connections.closed_by_server",
        "connections.open_failed",
        "connections.unreadable_frames",
    ] {
        assert_eq!(u64_at(report, key), 0, "{key} in {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_and_volatile_sends_to_resumable_sessions() {
    let url = start_mesa_server().await;
    let base = [
        "targeted",
        "--via",
        "client",
        "--url",
        url.as_str(),
        "-r",
        "40",
        "--fanout",
        "10",
        "-p",
        "128",
        "-d",
        "1s",
        "--drain",
        "5s",
        "--resumable",
        "--sources",
        "2",
    ];
    for rate in ["0", "300"] {
        let mut durable_args = base.to_vec();
        durable_args.extend(["--rate", rate]);
        let durable = run(&durable_args).await;
        assert_nothing_lost(&durable);
        let delivered = u64_at(&durable, "delivered");
        assert!(u64_at(&durable, "sent") > 0, "{}", durable.results);
        assert_eq!(delivered, u64_at(&durable, "sent") * 10);
        assert_eq!(u64_at(&durable, "connections.resumable"), 40);
        assert_eq!(u64_at(&durable, "connections.sessions_started"), 40);
        // Every durable delivery to a resumable session carries the next `s`.
        assert_eq!(
            u64_at(&durable, "sequenced"),
            delivered,
            "{}",
            durable.results
        );

        let mut volatile_args = durable_args.clone();
        volatile_args.push("--volatile");
        let volatile = run(&volatile_args).await;
        assert_nothing_lost(&volatile);
        assert!(u64_at(&volatile, "delivered") > 0);
        assert_eq!(u64_at(&volatile, "connections.resumable"), 40);
        // Volatile sends take no position in the stream.
        assert_eq!(u64_at(&volatile, "sequenced"), 0, "{}", volatile.results);
        assert_eq!(volatile.params["volatile"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_on_resumable_sessions() {
    let url = start_mesa_server().await;
    let pid = std::process::id().to_string();
    let idle = run(&[
        "idle",
        "--url",
        &url,
        "-n",
        "30",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
        "--sources",
        "2",
        "--resumable",
    ])
    .await;
    assert_eq!(u64_at(&idle, "connections_open"), 30);
    assert_eq!(u64_at(&idle, "connections.resumable"), 30);
    assert_eq!(u64_at(&idle, "connections.sessions_started"), 30);
    assert_eq!(u64_at(&idle, "connections.closed_by_server"), 0);
    assert!(u64_at(&idle, "connections.heartbeats_answered") >= 30);
    assert!(idle.results["server_rss_per_conn_bytes"].is_number());
    assert_eq!(idle.params["resumable"], true);
}

const SESSIONS: u64 = 60;
const MESSAGES: u64 = 7;

async fn resume_storm(url: &str, send: &str, from: &str) -> Report {
    let sessions = SESSIONS.to_string();
    let messages = MESSAGES.to_string();
    run(&[
        "resume",
        "--url",
        url,
        "-n",
        &sessions,
        "-m",
        &messages,
        "-p",
        "96",
        "--send",
        send,
        "--resume-from",
        from,
        "--gap",
        "300ms",
        "--linger",
        "300ms",
        "--timeout",
        "10s",
        "--batch",
        "25",
        "--sources",
        "2",
    ])
    .await
}

fn assert_all_resumed(report: &Report, replayed: u64) {
    let r = &report.results;
    assert_eq!(u64_at(report, "sessions_opened"), SESSIONS, "{r}");
    assert_eq!(u64_at(report, "messages_sent"), SESSIONS * MESSAGES, "{r}");
    assert_eq!(r["sends_handled"], true, "{r}");
    assert_eq!(u64_at(report, "dropped"), SESSIONS, "{r}");
    assert_eq!(u64_at(report, "reconnected"), SESSIONS, "{r}");
    assert_eq!(u64_at(report, "resumed"), SESSIONS, "{r}");
    assert_eq!(u64_at(report, "refused"), 0, "{r}");
    assert_eq!(u64_at(report, "resume_failed"), 0, "{r}");
    assert_eq!(u64_at(report, "caught_up"), SESSIONS, "{r}");
    assert_eq!(u64_at(report, "not_caught_up"), 0, "{r}");
    assert_eq!(u64_at(report, "expected_replay"), replayed, "{r}");
    assert_eq!(u64_at(report, "replayed"), replayed, "{r}");
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_gaps",
        "seq_dups",
        "after_caught_up",
        "connections.closed_by_server",
        "connections.unreadable_frames",
        "resume_connections.unreadable_frames",
    ] {
        assert_eq!(u64_at(report, key), 0, "{key} in {r}");
    }
    assert_eq!(
        u64_at(report, "resume_connections.sessions_resumed"),
        SESSIONS
    );
    assert_eq!(u64_at(report, "per_session_caught_up.count"), SESSIONS);
    assert!(r["time_to_caught_up_ms"].is_number(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storms_replay_exactly_what_was_missed() {
    let url = start_mesa_server().await;
    // Sent while disconnected: everything is replayed.
    let dropped = resume_storm(&url, "dropped", "processed").await;
    assert_all_resumed(&dropped, SESSIONS * MESSAGES);
    assert_eq!(u64_at(&dropped, "delivered_live"), 0);
    assert_eq!(dropped.params["same_node"], true);

    // Received live and left unacknowledged, resumed from what was processed: nothing is missing.
    let processed = resume_storm(&url, "connected", "processed").await;
    assert_all_resumed(&processed, 0);
    assert_eq!(u64_at(&processed, "delivered_live"), SESSIONS * MESSAGES);
    // Live, every message took the next position.
    assert_eq!(
        u64_at(&processed, "connections.sequenced"),
        SESSIONS * MESSAGES
    );

    // The same, resumed from the last acknowledged position: every unacknowledged message comes again.
    let acked = resume_storm(&url, "connected", "acked").await;
    assert_all_resumed(&acked, SESSIONS * MESSAGES);
    assert_eq!(u64_at(&acked, "delivered_live"), SESSIONS * MESSAGES);
}
