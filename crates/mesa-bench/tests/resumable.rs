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
