//! What the integration tests share: running a scenario from its command line, and an in-process mesa-server
//! with the conformance contract's settings and handlers.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use clap::Parser;
use mesa_bench::args::{Cli, Command};
use mesa_bench::report::Report;
use mesa_bench::scenario;
use mesa_server::{AuthError, Frame, Identity, Mesa, Target};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Parses `args` as a `mesa-bench` command line, runs the scenario and checks its JSON line.
pub async fn run(args: &[&str]) -> Report {
    let cli = Cli::try_parse_from(std::iter::once("mesa-bench").chain(args.iter().copied()))
        .expect("valid arguments");
    let outcome = match &cli.command {
        Command::Idle(a) => scenario::idle::run(a).await,
        Command::Fanout(a) => scenario::fanout::run(a).await,
        Command::Echo(a) => scenario::echo::run(a).await,
        Command::Connect(a) => scenario::connect::run(a).await,
        Command::Storm(a) => scenario::storm::run(a).await,
        Command::Targeted(a) => scenario::targeted::run(a).await,
        Command::Resume(a) => scenario::resume::run(a).await,
        Command::Compare(_) => panic!("not a scenario"),
    };
    let report = outcome.expect("scenario runs");
    // The machine-readable line is one line of JSON.
    let line = report.json_line();
    assert!(!line.contains('\n'));
    let _: Value = serde_json::from_str(&line).expect("JSON line");
    report
}

/// mesa-server with the conformance contract's settings and handlers (ECHO, BROADCAST, SEND_TO with the
/// sender's message options `o` passed through, as `mesa-conformance` does), on the in-memory engine, which
/// keeps resumable sessions (its Hello offers `c_resume`).
pub async fn start_mesa_server() -> String {
    let mesa = Mesa::builder()
        .heartbeat(Duration::from_millis(1000), 2)
        .rate_limit(None)
        .authenticate(|data, _client| async move {
            let id = data["token"]
                .as_str()
                .and_then(|t| t.strip_prefix("user:"))
                .filter(|id| !id.is_empty())
                .map(str::to_string);
            match id {
                Some(id) => Ok(Identity::new(
                    id.clone(),
                    json!({"id": id, "name": format!("User {id}")}),
                )),
                None => Err(AuthError::new("invalid token")),
            }
        })
        .on_message(|client, frame| async move {
            match frame.t.as_deref() {
                Some("ECHO") => {
                    let _ = client.send(&Frame::dispatch("ECHO", frame.d));
                }
                Some("BROADCAST") => {
                    if let Some(mesa) = client.server() {
                        let _ = mesa
                            .send(&Frame::dispatch("BROADCAST", frame.d), &Target::all())
                            .await;
                    }
                }
                Some("SEND_TO") => {
                    let d = frame.d.into_value();
                    let to: Vec<String> = d["to"]
                        .as_array()
                        .map(|ids| {
                            ids.iter()
                                .filter_map(|id| id.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut direct = Frame::dispatch("DIRECT", d["payload"].clone());
                    direct.o = frame.o;
                    if let Some(mesa) = client.server() {
                        let _ = mesa.send(&direct, &Target::users(to)).await;
                    }
                }
                _ => {}
            }
        })
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("address"));
    tokio::spawn(async move { mesa.serve(listener, std::future::pending()).await });
    url
}

/// The unsigned integer at a dotted path of the report's results.
pub fn u64_at(report: &Report, path: &str) -> u64 {
    path.split('.')
        .fold(&report.results, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} in {}", report.results))
}
