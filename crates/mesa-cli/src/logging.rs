//! Structured logs on stderr: a `RUST_LOG`-style filter and a text or JSON format (`[log]`).
//!
//! Logs go to stderr so that stdout stays free for command output (e.g. a future `mesa bench` report).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogConfig, LogFormat};

/// Installs the global subscriber. Call once, before anything logs.
pub(crate) fn init(config: &LogConfig) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|error| {
        ConfigError::invalid(format!("log.filter {:?}: {error}", config.filter))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Fields at the top level of each object, which is what log shippers index.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|error| ConfigError::invalid(format!("logging: {error}")))
}
