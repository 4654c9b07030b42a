//! `[portal]` (cargo feature `redis`), the only module that names `mesa_redis::portal`: client events handed
//! to Portal workers through Redis, as `proxy.rs` hands them to an HTTP backend.
//!
//! The gateway's handlers (`on_connection`, `on_authenticated`, `on_message`, `on_disconnection`) await
//! [`PortalSender::hand`] on the connection's own task: one client's events are handed one after the other,
//! in the order they happened, and a slow Redis holds up that client only (its next frame is read once the
//! hand is done). Nothing is dropped silently: an event Redis did not take is counted
//! (`mesa_portal_refused_total{reason}`), logged (at most one line per 5 s), and — but for a disconnection —
//! answered to the client with the proxy's `PROXY_ERROR` frame (`code` `unavailable`). A dispatch whose `t`
//! `portal.message_types` does not list is answered `no_route`, as the proxy answers one no rule matches.
//!
//! The sender connects before the gateway listens; when Redis is unreachable then, it goes on connecting in
//! the background while the gateway serves, and events are refused (`reason="connecting"`) until it answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesa_redis::portal::{
    PortalConfig, PortalError, PortalEvent, PortalEventKind, PortalMode, PortalSender,
    StreamOptions,
};
use mesa_server::{Disconnection, Frame, MesaBuilder, Session};
use tokio::sync::OnceCell;

use crate::config::{ConfigError, PortalEventName, PortalSettings};
use crate::metrics::CliMetrics;
use crate::proxy;

/// At most one log line per this long about events refused while connecting.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Waits between connection attempts at start, doubled up to the second.
const RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What the client is told when its event was not handed (the proxy's wording for an absent backend).
const UNAVAILABLE: &str = "the application is unavailable";
const NO_WORKER: &str = "no application worker is live";

/// The handlers' shared state.
struct Portal {
    sender: OnceCell<PortalSender>,
    connection: bool,
    authentication: bool,
    message: bool,
    disconnection: bool,
    /// `t` patterns: exact, a prefix ending in `*`, or `*`.
    types: Vec<String>,
    /// Bounds one hand, whatever Redis does (the commands have their own timeout too).
    timeout: Duration,
    metrics: Arc<CliMetrics>,
    logged: Mutex<Option<Instant>>,
}

/// The Portal configuration `[portal]` describes; an unusable URL is a configuration error naming its key.
fn portal_config(settings: &PortalSettings) -> Result<PortalConfig, ConfigError> {
    let mode = match &settings.stream {
        Some((max_len, group)) => PortalMode::AtLeastOnce(StreamOptions {
            max_len: *max_len,
            group: group.clone(),
            ..StreamOptions::default()
        }),
        None => PortalMode::FireAndForget,
    };
    let mut config = PortalConfig::new(settings.redis_url.expose(), mode);
    config.namespace = settings.namespace.clone();
    config.response_timeout = Duration::from_millis(settings.timeout_ms);
    config.validate().map_err(|problem| {
        ConfigError::invalid(format!(
            "{} (used by [portal]): {problem}",
            settings.redis_url_key
        ))
    })?;
    Ok(config)
}

/// Connects (once; on failure, in the background until Redis answers) and installs the handlers. Fails only
/// on an unusable configuration.
pub(crate) async fn install(
    builder: MesaBuilder,
    settings: &PortalSettings,
    metrics: Arc<CliMetrics>,
) -> Result<MesaBuilder, ConfigError> {
    let config = portal_config(settings)?;
    let has = |event| settings.events.contains(&event);
    let portal = Arc::new(Portal {
        sender: OnceCell::new(),
        connection: has(PortalEventName::Connection),
        authentication: has(PortalEventName::Authentication),
        message: has(PortalEventName::Message),
        disconnection: has(PortalEventName::Disconnection),
        types: settings.message_types.clone(),
        timeout: Duration::from_millis(settings.timeout_ms.saturating_mul(2)),
        metrics,
        logged: Mutex::new(None),
    });
    tracing::info!(
        mode = if settings.stream.is_some() {
            "at_least_once"
        } else {
            "fire_and_forget"
        },
        namespace = settings.namespace.as_deref().unwrap_or(""),
        "handing client events to Portal workers"
    );
    // One attempt within the hand timeout before listening, so that the first clients are not refused.
    let first = tokio::time::timeout(portal.timeout, PortalSender::connect(&config)).await;
    match first {
        Ok(Ok(sender)) => {
            let _ = portal.sender.set(sender);
            tracing::info!("portal: connected to Redis");
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "portal: cannot connect to Redis, retrying; events are refused meanwhile");
            tokio::spawn(connect(portal.clone(), config));
        }
        Err(_) => {
            tracing::warn!(
                "portal: Redis did not answer in time, retrying; events are refused meanwhile"
            );
            tokio::spawn(connect(portal.clone(), config));
        }
    }
    let (on_connection, on_authenticated, on_message, on_disconnection) =
        (portal.clone(), portal.clone(), portal.clone(), portal);
    Ok(builder
        .on_connection(move |session| {
            let portal = on_connection.clone();
            async move {
                if portal.connection {
                    portal
                        .hand(&session, PortalEventKind::Connection, None)
                        .await;
                }
            }
        })
        .on_authenticated(move |session| {
            let portal = on_authenticated.clone();
            async move {
                if portal.authentication {
                    portal
                        .hand(&session, PortalEventKind::Authentication, None)
                        .await;
                }
            }
        })
        .on_message(move |session, frame| {
            let portal = on_message.clone();
            async move { portal.message(&session, frame).await }
        })
        .on_disconnection(move |session, why: Disconnection| {
            let portal = on_disconnection.clone();
            async move {
                if portal.disconnection {
                    let kind = PortalEventKind::Disconnection {
                        code: Some(why.code),
                        reason: (!why.reason.is_empty()).then_some(why.reason),
                    };
                    portal.hand(&session, kind, None).await;
                }
            }
        }))
}

/// Connects the sender, retrying with backoff until Redis answers (the gateway serves meanwhile).
async fn connect(portal: Arc<Portal>, config: PortalConfig) {
    let mut wait = RETRY.0;
    let mut failures = 1u32;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY.1);
        match PortalSender::connect(&config).await {
            Ok(sender) => {
                if portal.sender.set(sender).is_ok() {
                    tracing::info!("portal: connected to Redis");
                }
                return;
            }
            Err(error) => {
                // One failure in 20 (about every 100 s at the longest wait); the first was logged.
                if failures.is_multiple_of(20) {
                    tracing::warn!(%error, "portal: still cannot connect to Redis");
                }
                failures = failures.wrapping_add(1);
            }
        }
    }
}

impl Portal {
    /// A client dispatch: handed when its `t` is listed, else answered `no_route`.
    async fn message(&self, session: &Session, frame: Frame) {
        let t = frame.t.as_deref().unwrap_or("");
        if !self.message || !self.types.iter().any(|pattern| matches(pattern, t)) {
            proxy::no_route(&self.metrics, session, &frame);
            return;
        }
        let t = frame.t.clone();
        self.hand(session, PortalEventKind::Message(frame), t.as_deref())
            .await;
    }

    /// Hands one event of `session`; a refusal is counted, logged and (but for a disconnection) answered.
    async fn hand(&self, session: &Session, kind: PortalEventKind, t: Option<&str>) {
        let connection = session.connection_id();
        let mut event = PortalEvent::new(kind, connection.node(), connection);
        event.user_id = session.id();
        let name = event.kind.name();
        let refused = match self.sender.get() {
            None => {
                self.log_connecting(name);
                "connecting"
            }
            Some(sender) => match tokio::time::timeout(self.timeout, sender.hand(&event)).await {
                Ok(Ok(())) => {
                    self.metrics.portal_handed(name);
                    return;
                }
                Ok(Err(PortalError::NoWorker { .. })) => "no_worker",
                // The sender logged it; a hand stuck past its commands' own timeout is logged here.
                Ok(Err(_)) => "unavailable",
                Err(_) => {
                    tracing::warn!(event = name, "portal: Redis did not answer in time");
                    "unavailable"
                }
            },
        };
        self.metrics.portal_refused(refused);
        if matches!(event.kind, PortalEventKind::Disconnection { .. }) {
            return;
        }
        let reason = if refused == "no_worker" {
            NO_WORKER
        } else {
            UNAVAILABLE
        };
        // Named as the proxy names them, so that clients handle one set of `event`s.
        let event = if name == "message" { "dispatch" } else { name };
        let _ = session.send(&proxy::refusal_frame(event, t, "unavailable", reason));
    }

    fn log_connecting(&self, event: &str) {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *logged = Some(now);
            tracing::warn!(event, "portal: event refused: not connected to Redis yet");
        }
    }
}

/// `t` against a `portal.message_types` entry.
fn matches(pattern: &str, t: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => t.starts_with(prefix),
        None => pattern == t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn types_match_exactly_by_prefix_or_all() {
        assert!(matches("SAY", "SAY") && !matches("SAY", "SAYS"));
        assert!(matches("CHAT_*", "CHAT_JOIN") && !matches("CHAT_*", "CHA"));
        assert!(matches("*", ""));
    }

    #[test]
    fn a_cluster_url_is_a_configuration_error_naming_its_key() {
        let settings = PortalSettings {
            redis_url: Secret::new("redis+cluster://127.0.0.1:7000"),
            redis_url_key: "cluster.redis_url",
            namespace: None,
            stream: None,
            events: Vec::new(),
            message_types: Vec::new(),
            timeout_ms: 10,
        };
        let error = portal_config(&settings).expect_err("refused").to_string();
        assert!(
            error.starts_with("cluster.redis_url (used by [portal]): "),
            "{error}"
        );
        assert!(error.contains("Redis Cluster"), "{error}");
        let ok = PortalSettings {
            redis_url: Secret::new("redis+sentinel://127.0.0.1:26379/mymaster"),
            ..settings
        };
        assert!(portal_config(&ok).is_ok());
    }
}
