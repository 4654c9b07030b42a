//! The Redis glue (cargo feature `redis`), the only module that names `mesa_redis`: the engine `REDIS_URL`
//! asks for.

use std::sync::Arc;

use mesa_redis::{RedisConfig, RedisEngine};
use mesa_server::Engine;

/// The Redis engine for `url` with `mesa-redis`'s defaults (namespace `default`) and Mesa 1.5's Redis
/// formats on, so that 1.5 nodes and Dispatchers on that Redis reach the app's clients and the other way
/// round. Fails only on a URL the engine cannot use (the message never holds the URL, which may hold a
/// password); an unreachable Redis makes it start degraded and retry.
///
/// With `streams`, Mesa 1.5's formats are off and per-user streams are kept in Redis instead (resumable
/// sessions on any node, with the default `SessionPolicy`): what the resume benchmarks across nodes need.
pub(crate) async fn engine(url: &str, streams: bool) -> Result<Arc<dyn Engine>, String> {
    let config = RedisConfig::from_url(url).map_err(|problem| format!("REDIS_URL: {problem}"))?;
    let config = if streams {
        config.with_sessions(Some(mesa_server::SessionPolicy::default()))
    } else {
        config.with_mesa15_compat(true)
    };
    config
        .validate()
        .map_err(|problem| format!("REDIS_URL: {problem}"))?;
    let engine = RedisEngine::connect(config).map_err(|problem| format!("REDIS_URL: {problem}"))?;
    Ok(engine as Arc<dyn Engine>)
}
