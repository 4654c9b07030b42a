//! Command-line arguments and their validation.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::target::{Target, TargetError};

/// Load generator for Mesa-protocol WebSocket gateways (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "mesa-bench", version, about)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios, plus the comparison table.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold N connections open (answering heartbeats) and report the server's RSS per connection.
    Idle(IdleArgs),
    /// Broadcast from senders to receivers: deliveries/s, lost, duplicated, latency percentiles.
    Fanout(FanoutArgs),
    /// C connections × K ECHO requests in flight: round trips/s and latency percentiles.
    Echo(EchoArgs),
    /// Connect + authenticate (+ close) as fast as possible with a given concurrency.
    Connect(ConnectArgs),
    /// Open N connections, send some traffic, drop them all at once, then watch the server's RSS for 30 s.
    Storm(StormArgs),
    /// Sends to user ids, through Redis to users of node A only while node B holds idle users (node B's CPU
    /// and the bytes it reads from Redis), or through a client's SEND_TO (durable or volatile); lost,
    /// duplicated, out of order.
    Targeted(TargetedArgs),
    /// A resume storm: N resumable sessions get M messages each, all drop at once, then all resume at once
    /// (on --url-b): time to caught-up, resumed and refused, replayed, lost, duplicated, out of order.
    Resume(ResumeArgs),
    /// Prints a side-by-side table (with ratios) of JSON result lines from several servers.
    Compare(CompareArgs),
}

impl Command {
    /// The longest a run of this command may take before the process gives up on itself: the ramp limit, the
    /// scenario's own durations and a minute of margin.
    pub fn time_limit(&self) -> Duration {
        let ramp = crate::scenario::RAMP_TIMEOUT;
        let margin = Duration::from_secs(60);
        match self {
            Command::Idle(a) => ramp + a.hold + margin,
            Command::Fanout(a) => ramp + a.duration + a.drain + margin,
            Command::Echo(a) => ramp + a.duration + margin,
            Command::Connect(a) => a.duration + margin,
            Command::Storm(a) => {
                ramp + crate::scenario::storm::SETTLE
                    + crate::scenario::storm::ECHO_TIMEOUT
                    + a.hold
                    + crate::scenario::storm::END_TIMEOUT
                    + a.watch
                    + margin
            }
            Command::Targeted(a) => {
                ramp + crate::scenario::targeted::WARMUP_TIMEOUT + a.duration + a.drain + margin
            }
            Command::Resume(a) => {
                // Two ramps (open, reconnect), the live sends and their barrier, the gap, the resume
                // phase and the linger.
                ramp * 2
                    + crate::scenario::resume::DELIVERY_TIMEOUT * 2
                    + a.gap
                    + a.timeout
                    + a.linger
                    + margin
            }
            Command::Compare(_) => margin,
        }
    }
}

/// Settings shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The server's WebSocket URL; loopback only (127.0.0.0/8, localhost, `[::1]`).
    #[arg(long, default_value = "ws://127.0.0.1:4000/")]
    pub url: String,
    /// Process id of the server, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Loopback source addresses to spread connections over (127.0.0.1, 127.0.0.2, …); raised
    /// automatically when the connections need more.
    #[arg(long, default_value_t = 8)]
    pub sources: usize,
    /// Name of this run in the report (default: the scenario).
    #[arg(long)]
    pub name: Option<String>,
    /// Label of the server under test in the report (e.g. ours, baseline, node).
    #[arg(long)]
    pub label: Option<String>,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub ramp_concurrency: usize,
    /// Authenticate with resumable sessions (op 2 `resumable: true`; the server's Hello must offer
    /// `c_resume`): every sequenced dispatch's `s` is checked (gaps and duplicates counted) and
    /// acknowledged.
    #[arg(long)]
    pub resumable: bool,
    /// With --resumable: besides every heartbeat answer, acknowledge this long after the first dispatch
    /// not yet acknowledged (as mesa-client does); 0 = in heartbeat answers only.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub ack_interval: Duration,
}

/// Node B and Redis, for the cluster variants of the scenarios (two nodes on one Redis). Without `--url-b` a
/// scenario runs against node A (`--url`) alone.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Node B's WebSocket URL (loopback only). Receivers are spread over node A (`--url`) and node B,
    /// alternately; senders stay on node A.
    #[arg(long)]
    pub url_b: Option<String>,
    /// Process id of node B, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_b_pid: Option<u32>,
    /// Process id of the redis-server both nodes use, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Port of that redis-server on 127.0.0.1: the bytes each node's TCP connections to it received are read
    /// from the kernel (`ss -tinp`, `tcp_info.bytes_received`).
    #[arg(long)]
    pub redis_port: Option<u16>,
}

/// `idle` settings.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Do not authenticate (default: each connection authenticates as `user:idle-<i>`).
    #[arg(long)]
    pub no_auth: bool,
    /// How long to hold the connections once all are open (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Node B and Redis (connections alternate between the nodes).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `fanout` settings.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections that only receive.
    #[arg(long, short = 'r', default_value_t = 1000)]
    pub receivers: usize,
    /// Connections that send BROADCAST (they receive every broadcast too).
    #[arg(long, short = 's', default_value_t = 1)]
    pub senders: usize,
    /// Size in bytes of each broadcast's `d` (JSON), at least about 30 for the sequence number and timestamp.
    #[arg(long, short = 'p', default_value_t = 64)]
    pub payload: usize,
    /// Broadcasts per second across all senders; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate 0: broadcasts each sender may have in flight (sent, its own copy not yet back).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// How long to send.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After sending stops, how long to wait for the remaining deliveries; what has not arrived then is lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Do not authenticate the connections.
    #[arg(long)]
    pub no_auth: bool,
    /// Node B and Redis (receivers alternate between the nodes, senders on node A).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The format in which `targeted` hands its sends to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DispatchFormat {
    /// This project's engine: `mesa_redis::Dispatcher`, one publish per recipient user's channel.
    Ours,
    /// Mesa 1.5's `Dispatcher`: `{"message":{op,d,t},"recipients":[ids]}` published on the `ws` channel,
    /// which every Mesa 1.5 node receives.
    Mesa15,
}

impl DispatchFormat {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DispatchFormat::Ours => "ours",
            DispatchFormat::Mesa15 => "mesa15",
        }
    }
}

/// How `targeted` hands its sends to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Straight to Redis, as an application backend (`--redis-url`, `--dispatch`; two nodes).
    Redis,
    /// Through a sender connection on node A, as the conformance contract's `SEND_TO` dispatch (one node
    /// or two).
    Client,
}

impl Via {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Via::Redis => "redis",
            Via::Client => "client",
        }
    }
}

/// `targeted` settings.
#[derive(Debug, Clone, Args)]
pub struct TargetedArgs {
    /// Shared settings; `--url` is node A, which holds the recipients.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Node B (`--url-b`: required with `--via redis`) and Redis.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Recipients: users connected to node A, one connection each; sends go to them in turn.
    #[arg(long, short = 'r', default_value_t = 1000)]
    pub recipients: usize,
    /// Idle users connected to node B (default: as many as recipients with `--url-b`, none without); none
    /// of them is ever a recipient.
    #[arg(long)]
    pub idle_b: Option<usize>,
    /// How the sends reach the gateway: through Redis (as an application backend) or through a client
    /// connection's `SEND_TO` dispatches.
    #[arg(long, value_enum, default_value_t = Via::Redis)]
    pub via: Via,
    /// The Redis both nodes use (`--via redis`: the generator sends through it, as an application backend
    /// would).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// How the sends are handed to Redis: as this project's Dispatcher or as Mesa 1.5's.
    #[arg(long, value_enum, default_value_t = DispatchFormat::Ours)]
    pub dispatch: DispatchFormat,
    /// Namespace of the nodes (ours: `default` when not given; Mesa 1.5: none).
    #[arg(long)]
    pub namespace: Option<String>,
    /// `--via client`: mark every send volatile (Mesa 1.5 message options `"o": {"sync": false}` on the
    /// `SEND_TO` dispatch): never kept, never sequenced, never replayed.
    #[arg(long)]
    pub volatile: bool,
    /// `--via client`: users named in each send (consecutive recipients, in turn); at most the recipients.
    #[arg(long, default_value_t = 1)]
    pub fanout: usize,
    /// Sends per second (each to `--fanout` recipients), on a fixed schedule; `--via client` also takes 0:
    /// as fast as the window allows.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// With `--via client --rate 0`: sends not yet delivered to all their recipients at most.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Size in bytes of each send's `d` (JSON).
    #[arg(long, short = 'p', default_value_t = 64)]
    pub payload: usize,
    /// How long to send.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After sending stops, how long to wait for the remaining deliveries; what has not arrived then is lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// `echo` settings.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// ECHO requests each connection keeps in flight.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub in_flight: usize,
    /// Size in bytes of each request's `d` (JSON).
    #[arg(long, short = 'p', default_value_t = 64)]
    pub payload: usize,
    /// How long to run.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Do not authenticate the connections.
    #[arg(long)]
    pub no_auth: bool,
}

/// `connect` settings.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections being opened at any moment.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub concurrency: usize,
    /// How long to run.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// How the connections of a storm end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ending {
    /// Every socket is closed at once without a close frame, as when clients crash or a network path fails.
    Drop,
    /// Every connection starts a clean close handshake at once (close frame, reply, end of stream).
    Close,
}

impl Ending {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Ending::Drop => "drop",
            Ending::Close => "close",
        }
    }
}

/// The longest `storm --watch` may be.
pub const MAX_WATCH: Duration = Duration::from_secs(600);

/// `storm` settings.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections opened for the storm (capped to the open-files limit).
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub connections: usize,
    /// `ECHO` requests each connection writes at once when it is open (0: none), so that the server
    /// allocates per-connection buffers.
    #[arg(long, short = 'm', default_value_t = 4)]
    pub messages: usize,
    /// Size in bytes of each request's `d` (JSON).
    #[arg(long, short = 'p', default_value_t = 1024)]
    pub payload: usize,
    /// Do not wait for the echoes (for servers that do not answer `ECHO`, such as `mesa serve`); echoes that
    /// arrive anyway are still counted.
    #[arg(long)]
    pub no_echo: bool,
    /// How long to keep the connections open once all are open and their echoes are back.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub hold: Duration,
    /// How the connections end, all at the same moment.
    #[arg(long, value_enum, default_value_t = Ending::Drop)]
    pub ending: Ending,
    /// How long to watch the server's RSS after the storm, sampled every second (at most 10 minutes).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub watch: Duration,
    /// Do not authenticate (default: each connection authenticates as `user:storm-<i>`).
    #[arg(long)]
    pub no_auth: bool,
}

/// When a resume storm's messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendWhen {
    /// While every session is disconnected (between the drop and the resume): all are replayed.
    Dropped,
    /// Before the drop, while connected: received live and left unacknowledged.
    Connected,
}

impl SendWhen {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SendWhen::Dropped => "dropped",
            SendWhen::Connected => "connected",
        }
    }
}

/// The position a resume storm's sessions resume from (op 6 `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResumeFrom {
    /// The last `s` processed (what the protocol asks of a client that kept its state).
    Processed,
    /// The last `s` acknowledged (a client that lost what it processed since: e.g. it restarted without
    /// having persisted it); with `--send connected` every message is then replayed.
    Acked,
}

impl ResumeFrom {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ResumeFrom::Processed => "processed",
            ResumeFrom::Acked => "acked",
        }
    }
}

/// `resume` settings.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// Shared settings; `--url` is where the sessions are opened and the messages sent (every session is
    /// resumable, with or without `--resumable`).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where the sessions resume (loopback only; default: `--url`, the same node). Another node of the same
    /// cluster is just another URL.
    #[arg(long)]
    pub url_b: Option<String>,
    /// Process id of the node of `--url-b`, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_b_pid: Option<u32>,
    /// Resumable sessions (one connection each, capped to the open-files limit).
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub sessions: usize,
    /// Messages sent to each session's user (durable `SEND_TO`s).
    #[arg(long, short = 'm', default_value_t = 10)]
    pub messages: usize,
    /// Size in bytes of each message's `d` (JSON).
    #[arg(long, short = 'p', default_value_t = 64)]
    pub payload: usize,
    /// When the messages are sent: while the sessions are disconnected, or before the drop.
    #[arg(long, value_enum, default_value_t = SendWhen::Dropped)]
    pub send: SendWhen,
    /// What the sessions resume from: the last `s` processed, or the last acknowledged.
    #[arg(long, value_enum, default_value_t = ResumeFrom::Processed)]
    pub resume_from: ResumeFrom,
    /// Time between the drop and the first resume (with `--send dropped` the messages are sent in it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub gap: Duration,
    /// The most the resume phase may take: a session not caught up by then counts as not caught up, and
    /// what it has not received as lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After every session caught up, how long to go on reading (anything more is a duplicate).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub linger: Duration,
    /// Users named in one `SEND_TO` at most.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// `compare` settings.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Files of JSON result lines (other lines are skipped); `-` reads stdin.
    pub files: Vec<String>,
    /// The label the ratios are computed for.
    #[arg(long, default_value = "ours")]
    pub ours: String,
    /// Labels compared against, in column order.
    #[arg(long, value_delimiter = ',', default_value = "baseline,node")]
    pub against: Vec<String>,
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 24 h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgs(pub String);

impl std::fmt::Display for InvalidArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidArgs {}

impl From<TargetError> for InvalidArgs {
    fn from(e: TargetError) -> Self {
        InvalidArgs(e.to_string())
    }
}

fn positive(name: &str, value: usize) -> Result<(), InvalidArgs> {
    if value == 0 {
        return Err(InvalidArgs(format!("--{name} must be at least 1")));
    }
    Ok(())
}

impl CommonArgs {
    /// The target, refused unless it is loopback.
    pub fn target(&self) -> Result<Target, InvalidArgs> {
        Ok(Target::parse(&self.url)?)
    }

    fn validate(&self) -> Result<(), InvalidArgs> {
        self.target()?;
        positive("sources", self.sources)?;
        positive("ramp-concurrency", self.ramp_concurrency)
    }
}

impl ClusterArgs {
    /// Node B's target, when given; refused unless it is loopback.
    pub fn target_b(&self) -> Result<Option<Target>, InvalidArgs> {
        self.url_b
            .as_deref()
            .map(Target::parse)
            .transpose()
            .map_err(InvalidArgs::from)
    }
}

impl IdleArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        self.cluster.target_b()?;
        positive("connections", self.connections)
    }
}

impl TargetedArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        let node_b = self.cluster.target_b()?;
        positive("recipients", self.recipients)?;
        positive("fanout", self.fanout)?;
        positive("window", self.window)?;
        if self.duration.is_zero() {
            return Err(InvalidArgs("--duration must be positive".into()));
        }
        match self.via {
            Via::Redis => {
                if node_b.is_none() {
                    return Err(InvalidArgs(
                        "--url-b (node B) is required with --via redis".into(),
                    ));
                }
                if !self.rate.is_finite() || self.rate <= 0.0 {
                    return Err(InvalidArgs("--rate must be positive".into()));
                }
                if self.volatile || self.fanout != 1 {
                    return Err(InvalidArgs(
                        "--volatile and --fanout need --via client".into(),
                    ));
                }
                let url = self.redis_url.as_deref().ok_or_else(|| {
                    InvalidArgs("--redis-url is required with --via redis".into())
                })?;
                // Loopback only, as every target: the host is checked by the WebSocket target's parser.
                let host = url
                    .strip_prefix("redis://")
                    .ok_or_else(|| InvalidArgs("--redis-url must be a redis:// URL".into()))?;
                Target::parse(&format!("ws://{host}"))?;
            }
            Via::Client => {
                if !self.rate.is_finite() || self.rate < 0.0 {
                    return Err(InvalidArgs(
                        "--rate must be 0 (as fast as the window allows) or positive".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Idle users on node B.
    pub fn idle_b(&self) -> usize {
        match (&self.cluster.url_b, self.idle_b) {
            (None, _) => 0,
            (Some(_), Some(n)) => n,
            (Some(_), None) => self.recipients,
        }
    }
}

impl ResumeArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        self.target_b()?;
        positive("sessions", self.sessions)?;
        positive("messages", self.messages)?;
        positive("batch", self.batch)?;
        if self.timeout.is_zero() {
            return Err(InvalidArgs("--timeout must be positive".into()));
        }
        Ok(())
    }

    /// The node the sessions resume on: `--url-b`, or `--url`.
    pub fn target_b(&self) -> Result<Target, InvalidArgs> {
        Ok(Target::parse(
            self.url_b.as_deref().unwrap_or(&self.common.url),
        )?)
    }
}

impl FanoutArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        self.cluster.target_b()?;
        positive("senders", self.senders)?;
        positive("window", self.window)?;
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(InvalidArgs(
                "--rate must be 0 (as fast as possible) or positive".into(),
            ));
        }
        if self.duration.is_zero() {
            return Err(InvalidArgs("--duration must be positive".into()));
        }
        Ok(())
    }
}

impl EchoArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        positive("connections", self.connections)?;
        positive("in-flight", self.in_flight)?;
        if self.duration.is_zero() {
            return Err(InvalidArgs("--duration must be positive".into()));
        }
        Ok(())
    }
}

impl ConnectArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        positive("concurrency", self.concurrency)?;
        if self.duration.is_zero() {
            return Err(InvalidArgs("--duration must be positive".into()));
        }
        Ok(())
    }
}

impl StormArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        self.common.validate()?;
        positive("connections", self.connections)?;
        if self.watch < Duration::from_secs(1) || self.watch > MAX_WATCH {
            return Err(InvalidArgs(
                "--watch must be between 1 s and 10 minutes".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mesa-bench").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("100000").is_err());
    }

    #[test]
    fn defaults_and_validation() {
        let Command::Fanout(f) = parse(&["fanout", "-r", "5000", "--rate", "50", "-p", "256"])
            .unwrap()
            .command
        else {
            panic!("fanout expected")
        };
        assert_eq!(f.receivers, 5000);
        assert_eq!(f.senders, 1);
        assert_eq!(f.duration, Duration::from_secs(10));
        assert!(f.validate().is_ok());

        let Command::Fanout(f) = parse(&["fanout", "--rate=-5"]).unwrap().command else {
            panic!("fanout expected")
        };
        assert!(f.validate().is_err());

        let Command::Echo(e) = parse(&["echo", "-k", "0"]).unwrap().command else {
            panic!("echo expected")
        };
        assert!(e.validate().is_err());

        let Command::Idle(i) = parse(&["idle", "--url", "ws://10.1.2.3:4000/"])
            .unwrap()
            .command
        else {
            panic!("idle expected")
        };
        assert!(i.validate().unwrap_err().0.contains("loopback"));

        let Command::Connect(c) = parse(&["connect", "--sources", "0"]).unwrap().command else {
            panic!("connect expected")
        };
        assert!(c.validate().is_err());

        let Command::Storm(s) = parse(&["storm"]).unwrap().command else {
            panic!("storm expected")
        };
        assert_eq!(s.connections, 5000);
        assert_eq!(s.watch, Duration::from_secs(30));
        assert_eq!(s.ending, Ending::Drop);
        assert!(s.validate().is_ok());
        let Command::Storm(s) = parse(&["storm", "--ending", "close", "--watch", "11m"])
            .unwrap()
            .command
        else {
            panic!("storm expected")
        };
        assert_eq!(s.ending, Ending::Close);
        assert!(s.validate().is_err());
        assert!(parse(&["storm", "--ending", "later"]).is_err());

        assert!(parse(&["idle", "--hold", "forever"]).is_err());
        assert!(parse(&["nonsense"]).is_err());
    }
}
