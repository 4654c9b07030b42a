//! `mesa dispatch`: one send or disconnect handed to every node of a cluster through Redis, from a shell or a
//! script, without a gateway (the Redis engine's Dispatcher; see `cluster.rs`).
//!
//! ```sh
//! mesa dispatch --redis-url redis://127.0.0.1:6379 --to alice,bob --event NEWS --data '{"text":"hi"}'
//! mesa dispatch --redis-url redis://127.0.0.1:6379 --all --exclude bob --event NEWS
//! mesa dispatch --redis-url redis://127.0.0.1:6379 --connection 00c0ffee00c0ffee-42 --disconnect --code 4000 --reason bye
//! mesa dispatch --config mesa.toml --to alice --event NEWS
//! ```
//!
//! With `--config` (the gateway's own file) the Redis URL, namespace and Mesa 1.5 formats come from its
//! `[cluster]` unless a flag says otherwise, and what is kept per user follows its `[server.resume]` (the
//! bounds, or nothing kept when resume is off), so that a dispatch keeps what a send through a node would.
//! Without it, sends to users are kept within the default bounds.
//!
//! Everything is checked before Redis is contacted. Exit status: 0 when Redis took the message (stdout:
//! `{"ok":true,"nodes":N}`, N = nodes that received it); 1 when Redis is unreachable or refused it (retry);
//! 2 for invalid arguments (bad JSON, a bad close code, a bad URL scheme, …; nothing was sent); 3 when this
//! `mesa` was built without Redis support (cargo feature `redis`).

// Without Redis support the checked command is never sent, so its fields are never read.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args};
use mesa_protocol::Frame;
use mesa_server::{ConnectionId, Delivery, SessionPolicy, Target};

use crate::config::{
    validate_namespace, validate_redis_url, Overrides, Secret, ServeConfig, DEFAULT_NAMESPACE,
};

/// Longest close reason: a close frame carries at most 123 bytes of it.
const MAX_REASON_BYTES: usize = 123;

/// Flags of `mesa dispatch`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("recipients").required(true).args(["to", "all", "connection"])))]
#[command(group(ArgGroup::new("action").required(true).args(["event", "disconnect"])))]
pub(crate) struct DispatchArgs {
    /// The gateway's configuration file: its [cluster] where no flag says otherwise, and its
    /// [server.resume] for what is kept per user.
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Redis of the cluster, as the nodes' cluster.redis_url (required without --config).
    #[arg(
        long,
        env = "MESA_CLUSTER__REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis_url: Option<String>,
    /// The nodes' cluster.namespace [default: the file's, else default].
    #[arg(long, env = "MESA_CLUSTER__NAMESPACE", value_name = "NS")]
    namespace: Option<String>,
    /// Also publish in Mesa 1.5's format (cluster.mesa15_compat), for Mesa 1.5 nodes.
    #[arg(long)]
    mesa15_compat: bool,
    /// Every connection of these user ids (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    to: Vec<String>,
    /// Every connection (only authenticated ones where authentication is required).
    #[arg(long)]
    all: bool,
    /// One connection, `<node>-<n>` as the gateway names it.
    #[arg(long, value_name = "ID")]
    connection: Option<String>,
    /// User ids that must not receive it (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    exclude: Vec<String>,
    /// Send a dispatch (op 0) of this type.
    #[arg(long, value_name = "T")]
    event: Option<String>,
    /// The dispatch's payload `d`, JSON [default: {}].
    #[arg(long, value_name = "JSON", requires = "event")]
    data: Option<String>,
    /// Close the recipients' connections instead of sending.
    #[arg(long)]
    disconnect: bool,
    /// Close code of --disconnect: 1000-4999 except 1004-1006 and 1015 [default: 1000].
    #[arg(long, value_name = "N")]
    code: Option<u16>,
    /// Close reason of --disconnect, at most 123 bytes [default: none].
    #[arg(long, value_name = "R")]
    reason: Option<String>,
}

/// What a dispatch does to its recipients.
#[derive(Debug)]
pub(crate) enum DispatchAction {
    /// Queue this dispatch on their connections.
    Send(Frame),
    /// Close their connections.
    Disconnect {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// A checked `mesa dispatch` command line.
#[derive(Debug)]
pub(crate) struct Dispatch {
    /// Redis of the cluster.
    pub(crate) redis_url: Secret,
    /// The cluster's namespace.
    pub(crate) namespace: String,
    /// Whether Mesa 1.5 nodes share the cluster.
    pub(crate) mesa15_compat: bool,
    /// The bounds of what is kept per user (the gateways' `[server.resume]`); `None`: nothing is kept.
    pub(crate) sessions: Option<SessionPolicy>,
    /// Who it is for.
    pub(crate) target: Target,
    /// What to do.
    pub(crate) action: DispatchAction,
}

/// Why a dispatch was not sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    /// The arguments are unusable (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Redis is unreachable or did not take it (exit 1).
    #[error("not sent: {0}")]
    NotSent(String),
    /// No Redis support in this build (exit 3).
    #[cfg_attr(feature = "redis", allow(dead_code))]
    #[error("this mesa was built without Redis support (cargo feature `redis`): nothing was sent")]
    NoRedis,
}

impl DispatchError {
    /// The exit status documented in the module docs.
    fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            DispatchError::NotSent(_) => 1,
            DispatchError::Invalid(_) => 2,
            DispatchError::NoRedis => 3,
        })
    }
}

impl Dispatch {
    /// Checks every argument; nothing here contacts Redis.
    pub(crate) fn from_args(args: DispatchArgs) -> Result<Dispatch, DispatchError> {
        let invalid = |message: String| DispatchError::Invalid(message);
        let gateway = match &args.config {
            Some(path) => Some(
                ServeConfig::load(Some(path), Overrides::default())
                    .map_err(|problem| invalid(format!("--config: {problem}")))?,
            ),
            None => None,
        };
        let cluster = gateway.as_ref().and_then(|g| g.cluster.as_ref());
        let redis_url = args
            .redis_url
            .or_else(|| {
                cluster
                    .and_then(|c| c.redis_url.as_ref())
                    .map(|url| url.expose().to_owned())
            })
            .ok_or_else(|| {
                invalid("--redis-url is required (or --config with cluster.redis_url)".into())
            })?;
        validate_redis_url("--redis-url", &redis_url)
            .map_err(|problem| invalid(problem.to_string()))?;
        let namespace = args
            .namespace
            .or_else(|| cluster.map(|c| c.namespace.clone()))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        validate_namespace("--namespace", &namespace)
            .map_err(|problem| invalid(problem.to_string()))?;
        let mesa15_compat = args.mesa15_compat || cluster.is_some_and(|c| c.mesa15_compat);
        // As `mesa serve` decides for its engine: Mesa 1.5's sync keeps offline messages in that mode.
        let sessions = match &gateway {
            _ if mesa15_compat => None,
            Some(gateway) => {
                let resume = &gateway.server.resume;
                resume.enabled.then(|| resume.policy())
            }
            None => Some(SessionPolicy::default()),
        };
        if args.to.iter().chain(&args.exclude).any(String::is_empty) {
            return Err(invalid(
                "--to and --exclude take non-empty user ids separated by commas".into(),
            ));
        }
        let target = if args.all {
            Target::all()
        } else if let Some(id) = &args.connection {
            let id: ConnectionId = id
                .parse()
                .map_err(|problem| invalid(format!("--connection: {problem}")))?;
            Target::connection(id)
        } else {
            Target::users(args.to)
        }
        .excluding(args.exclude);
        // Checked here: clap's `requires` counts a flag's default `false` as present.
        if !args.disconnect && (args.code.is_some() || args.reason.is_some()) {
            return Err(invalid("--code and --reason go with --disconnect".into()));
        }
        let action = match args.event {
            Some(t) => {
                let d = match &args.data {
                    Some(text) => serde_json::from_str(text)
                        .map_err(|problem| invalid(format!("--data: not JSON: {problem}")))?,
                    None => serde_json::json!({}),
                };
                let frame = Frame::dispatch(t, d);
                crate::proxy::client_frame(&frame)
                    .map_err(|problem| invalid(format!("--event: {problem}")))?;
                DispatchAction::Send(frame)
            }
            None => {
                let code = args.code.unwrap_or(1000);
                if !(1000..5000).contains(&code) || matches!(code, 1004..=1006 | 1015) {
                    return Err(invalid(format!(
                        "--code: {code} cannot be sent in a close frame (1000-4999 except 1004-1006 and 1015)"
                    )));
                }
                let reason = args.reason.unwrap_or_default();
                if reason.len() > MAX_REASON_BYTES {
                    return Err(invalid(format!(
                        "--reason: at most {MAX_REASON_BYTES} bytes (got {})",
                        reason.len()
                    )));
                }
                DispatchAction::Disconnect { code, reason }
            }
        };
        Ok(Dispatch {
            redis_url: Secret::new(redis_url),
            namespace,
            mesa15_compat,
            sessions,
            target,
            action,
        })
    }
}

/// `mesa dispatch`: checks the arguments, hands them to `deliver` (Redis, or the refusal of a build without
/// it; chosen by `main`, so that this module does not depend on `cluster.rs`, which depends on it), prints the
/// outcome and returns the documented exit status.
pub(crate) fn run(
    args: DispatchArgs,
    deliver: impl FnOnce(&Dispatch) -> Result<Delivery, DispatchError>,
) -> ExitCode {
    match Dispatch::from_args(args).and_then(|dispatch| deliver(&dispatch)) {
        Ok(delivery) => {
            println!(
                "{}",
                serde_json::json!({ "ok": true, "nodes": delivery.nodes })
            );
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("mesa dispatch: {problem}");
            problem.exit_code()
        }
    }
}
