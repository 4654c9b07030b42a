//! What the Redis engine's tests share: a configuration with short timeouts, fresh namespaces, polling.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesa_redis::{RedisConfig, RedisEngine};

/// `url` with timeouts short enough for tests (reconnect within 300 ms, probe every second).
pub fn config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).expect("a valid Redis URL");
    fast(&mut config);
    config
}

/// The test timings on any configuration.
pub fn fast(config: &mut RedisConfig) {
    config.publish_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(300);
    config.probe_interval = Duration::from_secs(1);
}

/// A namespace no other test of this process uses.
pub fn namespace(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An engine for `config`.
pub fn engine(config: &RedisConfig) -> Arc<RedisEngine> {
    RedisEngine::connect(config.clone()).expect("a valid configuration")
}

/// Polls `check` every 25 ms until it holds, or panics after `limit` saying what it waited for.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
