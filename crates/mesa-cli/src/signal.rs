//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once
//! (for an operator who does not want to wait for slow clients).

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C), and arms the immediate exit on the next one.
pub(crate) async fn shutdown() {
    let name = next_signal().await;
    tracing::info!(
        signal = name,
        "shutting down gracefully (send the signal again to exit at once)"
    );
    tokio::spawn(async {
        let name = next_signal().await;
        tracing::warn!(signal = name, "second signal: exiting without waiting");
        std::process::exit(130);
    });
}

/// Waits for SIGTERM or SIGINT and names it.
#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
            interrupt().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        () = interrupt() => "SIGINT",
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn next_signal() -> &'static str {
    interrupt().await;
    "Ctrl-C"
}

/// Resolves on SIGINT/Ctrl-C; never when the handler cannot be installed (which must not read as a signal).
async fn interrupt() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for SIGINT");
        std::future::pending::<()>().await;
    }
}
