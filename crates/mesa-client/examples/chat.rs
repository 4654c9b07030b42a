//! Run: `cargo run -p mesa-client --example chat -- --url ws://127.0.0.1:4000/ --token user:alice`
//!
//! A small chat client: connects, authenticates with `{"token": <token>}`, sends each line typed on stdin as
//! a dispatch `SAY {"text": <line>}` (`--type` to change the type) and prints what it receives on stdout:
//! `SAY`/`WHISPER {from, text}` as `from: text`, anything else as `[TYPE] d`. Status lines go to stderr. It
//! reconnects by itself; lines typed while disconnected are queued and sent once it is authenticated again.
//! At the end of stdin it sends what is queued, shows replies for half a second, and disconnects. It exits
//! with status 1 when it could not connect within 10 s, or when the server refuses it for good.
//!
//! Servers that speak these shapes: `mesa serve --config examples/chat.toml` with `examples/chat_backend.py`
//! (see the README), and `cargo run -p mesa-server --example echo_broadcast`.

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
    let (mut url, mut token, mut event_type) = (None, None, String::from("SAY"));
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

/// How long the client may try before it gives up on a server it never reached.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `error: cause: cause …`, following the source chain; a cause whose text is already there (errors that
/// display their source) is not repeated.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// A received dispatch as a chat line: `from: text` for the chat shapes, `[TYPE] d` for anything else.
fn chat_line(frame: &mesa_client::Frame) -> String {
    let (from, text) = (frame.d.get("from"), frame.d.get("text"));
    match (
        frame.t.as_deref(),
        from.and_then(|f| f.as_str()),
        text.and_then(|t| t.as_str()),
    ) {
        (Some("SAY"), Some(from), Some(text)) => format!("{from}: {text}"),
        (Some("WHISPER"), Some(from), Some(text)) => format!("{from} (whisper): {text}"),
        (t, _, _) => format!("[{}] {}", t.unwrap_or("-"), frame.d),
    }
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
    let give_up_at = tokio::time::Instant::now() + FIRST_CONNECT_TIMEOUT;
    let mut ever_connected = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return ExitCode::FAILURE,
                Some(Event::Connected(connected)) => {
                    ever_connected = true;
                    let how = if connected.automatic_reconnection { "reconnected" } else { "connected" };
                    eprintln!("* {how}");
                }
                Some(Event::Authenticated(user)) => eprintln!("* authenticated as {user}"),
                Some(Event::AuthenticationRefused { reason }) => {
                    eprintln!("* authentication refused: {reason}");
                    return ExitCode::FAILURE;
                }
                Some(Event::Message(frame)) => {
                    println!("{}", chat_line(&frame));
                }
                Some(Event::Disconnected(why)) => {
                    eprintln!("* disconnected: {} {}", why.code, why.reason);
                    match why.reconnect_delay {
                        Some(delay) => eprintln!("* reconnecting in {} ms", delay.as_millis()),
                        None => return ExitCode::FAILURE,
                    }
                }
                Some(Event::ConnectionFailed(failed)) => {
                    // The error says "connection failed" itself.
                    eprintln!("* {}", with_causes(&failed.error));
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
            _ = tick.tick(), if !stdin_open || !ever_connected => {
                let now = tokio::time::Instant::now();
                if !ever_connected {
                    if now >= give_up_at {
                        eprintln!("* could not connect to {} within {} s", args.url, FIRST_CONNECT_TIMEOUT.as_secs());
                        return ExitCode::FAILURE;
                    }
                    continue;
                }
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
