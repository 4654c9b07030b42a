//! The Redis engine glue (cargo feature `redis`), the only module that names `mesa_redis` but for Portal
//! (`portal.rs`): `[cluster]` and the `mesa dispatch` flags made into a `RedisConfig`, the engine of
//! `mesa serve` with its metrics, and the Dispatcher of `mesa dispatch`.
//!

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use mesa_redis::{Dispatcher, RedisConfig, RedisEngine, RedisMetricsSnapshot};
use mesa_server::SessionPolicy;
use mesa_server::{Delivery, Engine, EngineError};

use crate::api::EngineMetrics;
use crate::config::ClusterConfig;
use crate::dispatch::{Dispatch, DispatchAction, DispatchError};

/// How long `mesa dispatch` waits for Redis in all (connecting and publishing) before giving up with exit 1.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis engine's configuration for a URL, a namespace and Mesa 1.5's formats on or off; the rest keeps
/// `mesa-redis`'s defaults (publish timeout, reconnect backoff).
fn redis_config(
    url: &str,
    namespace: &str,
    mesa15_compat: bool,
) -> Result<RedisConfig, EngineError> {
    let config = RedisConfig::from_url(url)
        .map(|config| {
            config
                .with_namespace(namespace)
                .with_mesa15_compat(mesa15_compat)
        })
        .map_err(|problem| EngineError::Backend(problem.to_string()))?;
    config
        .validate()
        .map_err(|problem| EngineError::Backend(format!("cluster.mesa15_compat: {problem}")))?;
    Ok(config)
}

/// `mesa serve`'s engine for `[cluster]` (validated at load), and its metrics. Fails only on a configuration
/// the engine cannot use; an unreachable Redis makes it start degraded and retry.
pub(crate) async fn join(
    cluster: &ClusterConfig,
    sessions: Option<SessionPolicy>,
) -> Result<(Arc<dyn Engine>, EngineMetrics), EngineError> {
    let url = cluster
        .redis_url
        .as_ref()
        .map(|url| url.expose())
        .unwrap_or_default();
    let config = redis_config(url, &cluster.namespace, cluster.mesa15_compat)?
        .with_node_ttl(Duration::from_millis(cluster.node_ttl_ms))
        .with_sessions(sessions);
    let engine = RedisEngine::connect(config)?;
    let for_metrics = engine.clone();
    let metrics = EngineMetrics(Box::new(move |out| render(for_metrics.metrics(), out)));
    Ok((engine as Arc<dyn Engine>, metrics))
}

/// `mesa dispatch`: one send or disconnect through the Dispatcher, within [`DISPATCH_TIMEOUT`].
pub(crate) async fn dispatch(dispatch: &Dispatch) -> Result<Delivery, DispatchError> {
    let config = redis_config(
        dispatch.redis_url.expose(),
        &dispatch.namespace,
        dispatch.mesa15_compat,
    )
    .map_err(|problem| DispatchError::Invalid(format!("--redis-url: {problem}")))?
    // Sends to users are appended to their streams within the gateways' bounds (see `dispatch.rs`).
    .with_sessions(dispatch.sessions);
    let sent = async {
        let dispatcher = Dispatcher::connect(config).map_err(|problem| match problem {
            EngineError::Unavailable(_) | EngineError::Overloaded(_) => {
                DispatchError::NotSent(problem.to_string())
            }
            other => DispatchError::Invalid(format!("--redis-url: {other}")),
        })?;
        let target = dispatch.target.clone();
        match &dispatch.action {
            DispatchAction::Send(frame) => dispatcher.send(frame, &target).await,
            DispatchAction::Disconnect { code, reason } => {
                dispatcher.disconnect(&target, *code, reason).await
            }
        }
        .map_err(|problem| DispatchError::NotSent(problem.to_string()))
    };
    tokio::time::timeout(DISPATCH_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| {
            Err(DispatchError::NotSent(format!(
                "Redis did not take it within {} s",
                DISPATCH_TIMEOUT.as_secs()
            )))
        })
}

/// The Redis engine's counters as Prometheus families (`mesa_redis_*`); its degraded flag is
/// `mesa_engine_degraded`, rendered for every engine.
fn render(metrics: RedisMetricsSnapshot, out: &mut String) {
    let counters = [
        (
            "mesa_redis_publishes_total",
            "Publications handed to Redis.",
            metrics.publishes,
        ),
        (
            "mesa_redis_publish_errors_total",
            "Publications Redis did not take (unreachable, timed out): the sender got an error.",
            metrics.publish_errors,
        ),
        (
            "mesa_redis_received_total",
            "Publications received from other nodes.",
            metrics.received,
        ),
        (
            "mesa_redis_malformed_total",
            "Messages on Mesa channels that were not valid envelopes (dropped and logged).",
            metrics.malformed,
        ),
        (
            "mesa_redis_reconnects_total",
            "Reconnections to Redis.",
            metrics.reconnects,
        ),
        (
            "mesa_redis_resubscribes_total",
            "Times the subscriptions were restored after a reconnection.",
            metrics.resubscribes,
        ),
        (
            "mesa_redis_probes_failed_total",
            "Subscription probes that did not come back in time.",
            metrics.probes_failed,
        ),
        (
            "mesa_redis_dead_nodes_removed_total",
            "Nodes found dead (liveness older than cluster.node_ttl_ms) and removed from presence.",
            metrics.dead_nodes_removed,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "mesa_redis_releases_waiting";
    let _ = writeln!(
        out,
        "# HELP {name} Session releases Redis has not taken yet (unreachable): queued again once it is back."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {}", metrics.releases_waiting);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesa15_compat_is_passed_on_and_refused_with_a_redis_cluster() {
        let config = redis_config("redis://127.0.0.1:6379", "chat", true).expect("accepted");
        assert!(config.mesa15_compat);
        assert_eq!(config.namespace, "chat");
        assert!(redis_config("redis+cluster://127.0.0.1:7000", "chat", true).is_err());
        assert!(redis_config("redis+cluster://127.0.0.1:7000", "chat", false).is_ok());
    }
}
