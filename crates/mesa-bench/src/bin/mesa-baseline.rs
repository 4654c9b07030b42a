//! `mesa-baseline`: the thin baseline server (see `mesa_bench::baseline`) on `127.0.0.1:$PORT` (default 4000).
//!
//! Run it with `PORT=4100 cargo run --release -p mesa-bench --bin mesa-baseline`. Stops on SIGINT or SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use mesa_bench::baseline::{self, Baseline};
use tokio::net::TcpListener;

/// The global allocator: jemalloc with its background purge thread, which returns memory freed after a burst
/// of connections to the OS within seconds, where glibc's malloc keeps most of it
/// (`docs/decisions/0002-global-allocator.md`).
/// The same as the gateway's, so that the comparison measures the code; `--no-default-features` builds with
/// the system allocator.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let port: u16 = match std::env::var("PORT") {
        Err(_) => 4000,
        Ok(value) => match value.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("mesa-baseline: PORT must be a port number, got {value:?}");
                return ExitCode::from(2);
            }
        },
    };
    let listener = match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("mesa-baseline: cannot listen on 127.0.0.1:{port}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        eprintln!("mesa-baseline: listening on ws://{addr}/");
    }
    match baseline::serve(listener, Arc::new(Baseline::default()), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesa-baseline: {error}");
            ExitCode::FAILURE
        }
    }
}
