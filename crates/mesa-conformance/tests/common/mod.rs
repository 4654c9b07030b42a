//! Shared test helpers: the real `mesa-conformance` binary on a free port (its `PORT`), and the conformance
//! app's exact op 22. The raw WebSocket client comes from `mesa-testkit`.
//!
//! The server process is owned by a [`Server`] guard that kills it (by its own child handle) when dropped, so a
//! failing test never leaves it behind. Set `MESA_CONFORMANCE_TEST_LOG=1` to see the server's log.
#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use mesa_testkit::process::{free_port, ChildGuard};
use serde_json::{json, Value};

pub use mesa_testkit::ws::{
    assert_echo_works, connect, connect_hello, expect_close, expect_silence, recv, recv_raw, send,
    without_retry_hint, Close, Ws, WsTarget,
};

/// The `mesa-conformance` process, killed on drop.
pub struct Server {
    child: ChildGuard,
    pub port: u16,
}

impl Server {
    /// Starts the binary on a free port and waits until it accepts connections.
    pub fn start() -> Server {
        Server::start_with(&[], None)
    }

    /// Like [`Server::start`], with extra environment variables, and the log written to `log` if given.
    pub fn start_with(env: &[(&str, &str)], log: Option<&Path>) -> Server {
        // Another process may take the port between our probe and the server's bind; then try another.
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_mesa-conformance"));
            command
                .env("PORT", port.to_string())
                .env_remove("REDIS_URL")
                .env_remove("RUST_LOG")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if let Some(log) = log {
                let file = std::fs::File::create(log).expect("create log file");
                command.env("NO_COLOR", "1").stderr(file);
            } else if std::env::var_os("MESA_CONFORMANCE_TEST_LOG").is_some() {
                command.env("RUST_LOG", "debug").stderr(Stdio::inherit());
            } else {
                command.stderr(Stdio::null());
            }
            let mut server = Server {
                child: ChildGuard::spawn(&mut command),
                port,
            };
            if server
                .child
                .wait_until_accepting(server.addr(), Duration::from_secs(10))
            {
                return server;
            }
        }
        panic!("mesa-conformance did not start listening");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) to this server process, by pid.
    pub fn signal(&self, signal: &str) {
        self.child.signal(signal);
    }

    /// Waits for the process to exit, polling; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_exit_async(limit).await
    }
}

impl WsTarget for Server {
    fn ws_url(&self) -> String {
        self.url()
    }
}

/// Connects, reads Hello, authenticates with token `user:<id>` and checks the conformance app's exact op 22.
pub async fn connect_as(server: &Server, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(server).await;
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": format!("user:{id}")}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 22, "d": {"id": id, "name": format!("User {id}")}})
    );
    ws
}
