//! `connect`: `--concurrency` workers each repeat connect → Hello → authenticate → op 22 → clean close until
//! the duration ends. Reports completed authentications per second and the latency from the TCP connect to
//! op 22.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use super::{cpu_json, join_all, own_cpu, per_server_cpu_second, prepare, report, server_cpu};
use crate::args::{ConnectArgs, InvalidArgs};
use crate::conn::Connector;
use crate::report::{round3, with_progress, Report};
use crate::stats::{per_second, SharedLatencies};

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// Runs the scenario.
pub async fn run(args: &ConnectArgs) -> Result<Report, InvalidArgs> {
    args.validate()?;
    let common = &args.common;
    // Each worker holds one connection at a time (plus one closing); size the sources for a busy minute of
    // connections whose ports may linger.
    let setup = prepare(common, args.concurrency * 2)?;
    let workers = setup.capped.granted.div_ceil(2).max(1);
    let counters = Arc::new(Counters::default());
    let latencies = SharedLatencies::default();
    let server_meter = server_cpu(common);
    let own_meter = own_cpu();
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let connector = setup.connector.clone();
        let counters = counters.clone();
        let latencies = latencies.local();
        tasks.spawn(worker_loop(
            worker, connector, counters, latencies, deadline,
        ));
    }
    let last = Mutex::new((Instant::now(), 0u64));
    let print = || {
        let done = counters.succeeded.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let rate = per_second(done.saturating_sub(last.1), now - last.0);
        *last = (now, done);
        format!(
            "authenticated {done} ({rate:.0}/s), failed {}",
            counters.failed.load(Ordering::Relaxed)
        )
    };
    with_progress(
        "connect",
        print,
        join_all(tasks, args.duration + Duration::from_secs(15)),
    )
    .await;
    let elapsed = started.elapsed().min(args.duration);
    let succeeded = counters.succeeded.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let errors = counters
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let connects_per_s = per_second(succeeded, elapsed);
    let server_cpu_pct = cpu_json(server_meter);
    let results = json!({
        "authenticated": succeeded,
        "failed": failed,
        "errors": errors,
        "connects_per_s": round3(connects_per_s),
        "connects_per_server_cpu_s": per_server_cpu_second(connects_per_s, &server_cpu_pct),
        "latency": latencies.snapshot().summary(),
        "server_cpu_pct": server_cpu_pct,
        "generator_cpu_pct": cpu_json(Some(own_meter)),
    });
    let params = json!({
        "concurrency": workers,
        "duration_s": round3(args.duration.as_secs_f64()),
        "source_addresses": setup.connector.sources().addrs().len(),
    });
    Ok(report(
        "connect",
        common,
        &setup.connector.target().url,
        params,
        results,
        setup.notes,
    ))
}

async fn worker_loop(
    worker: usize,
    connector: Arc<Connector>,
    counters: Arc<Counters>,
    mut latencies: crate::stats::LocalLatencies,
    deadline: Instant,
) {
    let mut n = 0u64;
    while Instant::now() < deadline {
        let begin = Instant::now();
        let token = format!("user:connect-{worker}-{n}");
        n += 1;
        let outcome = async {
            let mut conn = connector.open().await?;
            connector.login(&mut conn, &token).await?;
            Ok::<_, crate::conn::OpenError>(conn)
        }
        .await;
        match outcome {
            Ok(conn) => {
                let us = u64::try_from(begin.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.record_us(us);
                if Instant::now() <= deadline {
                    counters.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                conn.close().await;
            }
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                *counters
                    .errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(error.label())
                    .or_default() += 1;
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    latencies.flush();
}
