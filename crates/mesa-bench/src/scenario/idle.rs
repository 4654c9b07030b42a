//! `idle`: hold N connections (authenticated or not) open, answering heartbeats, and report the server's RSS
//! per connection: (RSS after the ramp and the hold − RSS before the first connection) / connections open.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{join_all, prepare, report, server_rss, spawn_connections, wait_for_ramp, ConnStats};
use crate::args::{IdleArgs, InvalidArgs};
use crate::conn::Incoming;
use crate::procfs;
use crate::report::{round3, with_progress, Report};

/// Time after the ramp before the hold starts, so that every connection has answered a heartbeat.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the scenario.
pub async fn run(args: &IdleArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    let setup = prepare(common, args.connections)?;
    let count = setup.capped.granted;
    let own_pid = std::process::id();
    let server_before = server_rss(common);
    let own_before = procfs::rss_kib(own_pid).ok();

    let stats = Arc::new(ConnStats::default());
    let stop = CancellationToken::new();
    let role_stop = stop.clone();
    let role_stats = stats.clone();
    let tasks = spawn_connections(
        &setup.connector,
        count,
        common.ramp_concurrency,
        (!args.no_auth).then_some("idle-"),
        &stats,
        move |_, mut conn| {
            let stop = role_stop.clone();
            let stats = role_stats.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        incoming = conn.recv() => {
                            if let Incoming::Closed(code) = incoming {
                                stats.closed_by_server(code);
                                stats.finished(&conn);
                                return;
                            }
                        }
                    }
                }
                stats.finished(&conn);
                conn.close().await;
            }
        },
    );
    let ramp = wait_for_ramp(&stats, count, "idle").await;
    let opened = stats.opened.load(Ordering::Relaxed);

    let mut server_max = 0u64;
    let hold = SETTLE + args.hold;
    let progress_stats = stats.clone();
    let pid = common.server_pid;
    with_progress(
        "idle",
        move || {
            let rss = pid.and_then(|p| procfs::rss_kib(p).ok()).map_or_else(
                || "?".into(),
                |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
            );
            format!(
                "open {}, closed by server {}, server RSS {rss}",
                progress_stats.opened.load(Ordering::Relaxed),
                progress_stats.closed.load(Ordering::Relaxed)
            )
        },
        async {
            let end = tokio::time::Instant::now() + hold;
            while tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(rss) = server_rss(common) {
                    server_max = server_max.max(rss);
                }
            }
        },
    )
    .await;
    let server_after = server_rss(common);
    let own_after = procfs::rss_kib(own_pid).ok();
    let still_open = opened.saturating_sub(stats.closed.load(Ordering::Relaxed));

    stop.cancel();
    join_all(tasks, Duration::from_secs(10)).await;

    let per_conn = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if still_open > 0 => {
            json!(round3(
                a.saturating_sub(b) as f64 * 1024.0 / still_open as f64
            ))
        }
        _ => serde_json::Value::Null,
    };
    let mut notes = setup.notes;
    if common.server_pid.is_none() {
        notes.push("no --server-pid: server RSS not measured".into());
    }
    let results = json!({
        "connections_open": still_open,
        "ramp_s": round3(ramp.as_secs_f64()),
        "server_rss_before_kib": server_before,
        "server_rss_after_kib": server_after,
        "server_rss_max_kib": (server_max > 0).then_some(server_max),
        "server_rss_per_conn_bytes": per_conn(server_before, server_after),
        "generator_rss_per_conn_bytes": per_conn(own_before, own_after),
        "connections": stats.to_json(),
    });
    let params = json!({
        "connections_requested": args.connections,
        "connections": count,
        "authenticated": !args.no_auth,
        "hold_s": round3(args.hold.as_secs_f64()),
        "source_addresses": setup.connector.sources().addrs().len(),
    });
    Ok(report(
        "idle",
        common,
        &setup.connector.target().url,
        params,
        results,
        notes,
    ))
}
