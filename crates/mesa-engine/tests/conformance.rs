//! The engine conformance suite against the in-memory engine: three nodes of one process.

use std::sync::Arc;

use mesa_engine::{Engine, MemoryEngine};

#[tokio::test]
async fn the_memory_engine_passes_the_conformance_suite() {
    mesa_engine::conformance::run_all(|| async {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        vec![engine.clone(), engine.clone(), engine]
    })
    .await;
}

#[tokio::test]
async fn the_memory_engine_without_sessions_passes_the_conformance_suite() {
    mesa_engine::conformance::run_all(|| async {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::without_sessions());
        assert_eq!(engine.session_policy(), None);
        vec![engine.clone(), engine.clone(), engine]
    })
    .await;
}

#[tokio::test]
async fn the_memory_engine_passes_the_session_suite() {
    mesa_engine::conformance::run_sessions(|policy| async move {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::with_sessions(policy));
        vec![engine.clone(), engine.clone(), engine]
    })
    .await;
}
