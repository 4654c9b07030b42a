//! Run: `cargo run -p mesa-client --example chat -- --url ws://127.0.0.1:4000/ --token user:alice`
//!
//! A small chat client: connects, authenticates with `{"token": <token>}`, prints every dispatch it receives
//! on stdout, and sends each line typed on stdin as a dispatch `{"text": <line>}` of type `MESSAGE`
//! (`--type` to change it). Status lines go to stderr. It reconnects by itself; lines typed while
//! disconnected are queued and sent once it is authenticated again. At the end of stdin it sends what is
//! queued, shows replies for half a second, and disconnects.
//!
//! Any Mesa server will do, for example the Mesa 1.5 Node server used by the tests, which echoes dispatches
//! and accepts `user:<id>` tokens: `cd compat/node-server && npm ci && node server.js 4000`.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use mesa_client::{Client, Event};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str = "usage: chat --url <ws://host:port/path> --token <token> [--type <event type>]";

struct Args {
    url: String,
    token: String,
    event_type: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut url, mut token, mut event_type) = (None, None, String::from("MESSAGE"));
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value("--url")?),
            "--token" => token = Some(value("--token")?),
            "--type" => event_type = value("--type")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        token: token.ok_or("--token is required")?,
        event_type,
    })
}

/// `error: cause: cause …`, following the source chain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("{problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let built = Client::builder(args.url.as_str())
        .credentials(json!({ "token": args.token }))
        .build();
    let (client, mut events) = match built {
        Ok(built) => built,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    // Set at the end of stdin: once the queue is empty, linger this long for replies, then leave.
    let mut leave_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return ExitCode::FAILURE,
                Some(Event::Connected(connected)) => {
                    let how = if connected.automatic_reconnection { "reconnected" } else { "connected" };
                    eprintln!("* {how}");
                }
                Some(Event::Authenticated(user)) => eprintln!("* authenticated as {user}"),
                Some(Event::AuthenticationRefused { reason }) => {
                    eprintln!("* authentication refused: {reason}");
                    return ExitCode::FAILURE;
                }
                Some(Event::Message(frame)) => {
                    println!("[{}] {}", frame.t.as_deref().unwrap_or("-"), frame.d);
                }
                Some(Event::Disconnected(why)) => {
                    eprintln!("* disconnected: {} {}", why.code, why.reason);
                    match why.reconnect_delay {
                        Some(delay) => eprintln!("* reconnecting in {} ms", delay.as_millis()),
                        None => return ExitCode::FAILURE,
                    }
                }
                Some(Event::ConnectionFailed(failed)) => {
                    eprintln!("* connection failed: {}", with_causes(&failed.error));
                    match failed.reconnect_delay {
                        Some(delay) => eprintln!("* retrying in {} ms", delay.as_millis()),
                        None => return ExitCode::FAILURE,
                    }
                }
                Some(_) => {}
            },
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    if let Err(error) = client.dispatch(&args.event_type, json!({ "text": line })) {
                        eprintln!("* not sent: {error}");
                    }
                }
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = tick.tick(), if !stdin_open => {
                let now = tokio::time::Instant::now();
                match leave_at {
                    None if client.queued() == 0 => leave_at = Some(now + Duration::from_millis(500)),
                    Some(at) if now >= at => break,
                    _ => {}
                }
            }
        }
    }
    client.disconnect().await;
    ExitCode::SUCCESS
}
