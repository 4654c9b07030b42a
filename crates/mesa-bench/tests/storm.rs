//! The `storm` scenario end to end, at small scale, against an in-process mesa-server with the conformance
//! contract: every connection opens, sends its requests, gets its echoes and is ended by the generator, and the
//! report has the memory figures. No timing and no memory figure is asserted: the server shares this process
//! with the generator and the test harness, so its RSS says nothing here; `docs/benchmarks.md` has real runs.

mod common;

use common::{run, start_mesa_server, u64_at};

const CONNECTIONS: u64 = 200;
const MESSAGES: u64 = 3;

async fn storm(url: &str, ending: &str) -> mesa_bench::report::Report {
    let pid = std::process::id().to_string();
    let connections = CONNECTIONS.to_string();
    let messages = MESSAGES.to_string();
    run(&[
        "storm",
        "--url",
        url,
        "--server-pid",
        &pid,
        "-n",
        &connections,
        "-m",
        &messages,
        "-p",
        "512",
        "--hold",
        "200ms",
        "--watch",
        "2s",
        "--ending",
        ending,
        "--sources",
        "2",
    ])
    .await
}

fn assert_counted(report: &mesa_bench::report::Report) {
    let r = &report.results;
    assert_eq!(u64_at(report, "connections.opened"), CONNECTIONS, "{r}");
    assert_eq!(u64_at(report, "connections.open_failed"), 0, "{r}");
    assert_eq!(u64_at(report, "connections.closed_by_server"), 0, "{r}");
    assert_eq!(u64_at(report, "connections_open_at_storm"), CONNECTIONS);
    // Every connection was ended by the generator, at the storm.
    assert_eq!(u64_at(report, "connections_ended"), CONNECTIONS, "{r}");
    // What was sent came back, one echo per request.
    assert_eq!(u64_at(report, "requests_sent"), CONNECTIONS * MESSAGES);
    assert_eq!(u64_at(report, "echoes_received"), CONNECTIONS * MESSAGES);
    assert_eq!(u64_at(report, "unanswered"), 0);
    assert_eq!(u64_at(report, "unexpected_frames"), 0);
    assert_eq!(u64_at(report, "connections.unreadable_frames"), 0);

    // The memory figures are there: before, peak, end and one sample per second of the watch.
    for key in [
        "server_rss_before_kib",
        "server_rss_loaded_kib",
        "server_rss_peak_kib",
        "server_rss_end_kib",
        "storm_added_kib",
        "given_back_kib",
    ] {
        assert!(r[key].is_u64(), "{key} in {r}");
    }
    let series = r["server_rss_after_kib"].as_array().expect("series");
    assert_eq!(series.len(), 2, "{r}");
    assert!(series.iter().all(|v| v.is_u64()), "{r}");
    assert!(u64_at(report, "server_rss_peak_kib") >= u64_at(report, "server_rss_before_kib"));
    // The descriptors of this process rose by at least the connections (both ends are in this process).
    assert!(
        u64_at(report, "server_fds_peak") >= u64_at(report, "server_fds_before") + CONNECTIONS,
        "{r}"
    );
    assert_eq!(report.params["watch_s"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_against_mesa_server_drop_and_close() {
    let url = start_mesa_server().await;
    let dropped = storm(&url, "drop").await;
    assert_counted(&dropped);
    assert_eq!(dropped.params["ending"], "drop");

    let closed = storm(&url, "close").await;
    assert_counted(&closed);
    assert_eq!(closed.params["ending"], "close");
}
