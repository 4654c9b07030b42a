//! `idle`: hold N connections (authenticated or not) open, answering heartbeats, and report the server's RSS
//! per connection: (RSS after the ramp and the hold − RSS before the first connection) / connections open.
//!
//! With `--url-b` (two nodes on one Redis) connections alternate between node B and node A, and the report's
//! `cluster` part has the same figure for each node (its growth / its connections), for redis-server (its
//! growth / all connections: the presence entries) and for the three together / all connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cluster::{per, Meters, Placement, Rule};
use super::{join_all, prepare, report, server_rss, spawn_placed, wait_for_ramp, ConnStats};
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
    let placement = Placement::new(
        &setup.connector,
        &args.cluster,
        Rule::Alternate { pinned: 0 },
    )?;
    let meters = placement
        .is_cluster()
        .then(|| Meters::start(common.server_pid, &args.cluster));
    let server_before = server_rss(common);
    let own_before = procfs::rss_kib(own_pid).ok();
    let open_by_node: Arc<[AtomicU64; 2]> = Arc::default();

    let stats = Arc::new(ConnStats::default());
    let stop = CancellationToken::new();
    let role_stop = stop.clone();
    let role_stats = stats.clone();
    let role_nodes = open_by_node.clone();
    let role_placement = placement.clone();
    let tasks = spawn_placed(
        |index| placement.connector(index),
        count,
        common.ramp_concurrency,
        (!args.no_auth).then_some("idle-"),
        &stats,
        move |index, mut conn| {
            let stop = role_stop.clone();
            let stats = role_stats.clone();
            role_nodes[role_placement.node(index).index()].fetch_add(1, Ordering::Relaxed);
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
    let processes = meters.map(|m| m.finish());
    let still_open = opened.saturating_sub(stats.closed.load(Ordering::Relaxed));
    let on_node = open_by_node.each_ref().map(|n| n.load(Ordering::Relaxed));

    stop.cancel();
    join_all(tasks, Duration::from_secs(10)).await;

    let grown = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 * 1024.0),
        _ => None,
    };
    let per_conn = |before: Option<u64>, after: Option<u64>| per(grown(before, after), still_open);
    // In a cluster node A holds only its share of the connections.
    let server_per_conn = match &processes {
        Some(_) => per(grown(server_before, server_after), on_node[0]),
        None => per_conn(server_before, server_after),
    };
    let cluster = processes.map(|p| {
        let growth = |role: &str| {
            grown(
                p[role]["rss_before_kib"].as_u64(),
                p[role]["rss_after_kib"].as_u64(),
            )
        };
        let (a, b, redis) = (growth("node_a"), growth("node_b"), growth("redis"));
        let total = match (a, b, redis) {
            (Some(a), Some(b), Some(r)) => Some(a + b + r),
            _ => None,
        };
        json!({
            "connections_on_a": on_node[0],
            "connections_on_b": on_node[1],
            "rss_per_conn_bytes": {
                "node_a": per(a, on_node[0]),
                "node_b": per(b, on_node[1]),
                "redis": per(redis, still_open),
                "total": per(total, still_open),
            },
            "processes": p,
        })
    });
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
        "server_rss_per_conn_bytes": server_per_conn,
        "generator_rss_per_conn_bytes": per_conn(own_before, own_after),
        "connections": stats.to_json(),
        "cluster": cluster,
    });
    let params = json!({
        "url_b": placement.url_b(),
        "connections_requested": args.connections,
        "connections": count,
        "authenticated": !args.no_auth,
        "resumable": common.resumable && !args.no_auth,
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
