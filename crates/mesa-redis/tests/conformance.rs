//! The engine conformance suite (`mesa_engine::conformance`) against real Redis: a standalone server and a
//! local three-master Redis Cluster (sharded pub/sub). Each case gets three engines (three nodes) on a fresh
//! namespace; the previous case's engines are aborted.

mod common;

use std::sync::Arc;

use mesa_engine::conformance::{run_all, run_sessions};
use mesa_engine::Engine;
use mesa_redis::{RedisConfig, RedisEngine};
use mesa_testkit::redis::{RedisCluster, RedisServer};

/// Three nodes (engines) of `config` for one case; the previous case's engines are aborted first.
fn next_cluster(
    config: &RedisConfig,
    previous: &mut Vec<Arc<RedisEngine>>,
) -> std::future::Ready<Vec<Arc<dyn Engine>>> {
    for engine in previous.drain(..) {
        engine.abort();
    }
    *previous = (0..3).map(|_| common::engine(config)).collect();
    std::future::ready(
        previous
            .iter()
            .map(|e| e.clone() as Arc<dyn Engine>)
            .collect(),
    )
}

async fn run_suite(base: RedisConfig) {
    let mut case = 0;
    let mut previous = Vec::new();
    run_all(|| {
        case += 1;
        let config = base
            .clone()
            .with_namespace(common::namespace(&format!("conformance{case}x")));
        next_cluster(&config, &mut previous)
    })
    .await;
    for engine in previous {
        engine.abort();
    }
}

/// The session cases: three engines keeping streams in Redis within the case's policy.
async fn run_session_suite(base: RedisConfig) {
    let mut case = 0;
    let mut previous = Vec::new();
    run_sessions(|policy| {
        case += 1;
        let config = base
            .clone()
            .with_namespace(common::namespace(&format!("sessions{case}x")))
            .with_sessions(Some(policy));
        next_cluster(&config, &mut previous)
    })
    .await;
    for engine in previous {
        engine.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_standalone_redis() {
    let redis = RedisServer::start();
    run_suite(common::config(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_standalone_redis_keeping_streams() {
    let redis = RedisServer::start();
    run_suite(common::config(&redis.url()).with_sessions(Some(Default::default()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_suite_passes_on_standalone_redis() {
    let redis = RedisServer::start();
    run_session_suite(common::config(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_suite_passes_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster started");
    let mut config = RedisConfig::cluster(cluster.urls());
    common::fast(&mut config);
    run_session_suite(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_a_redis_cluster_with_sharded_pubsub() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster started");
    let mut config = RedisConfig::cluster(cluster.urls());
    common::fast(&mut config);
    run_suite(config).await;
}
