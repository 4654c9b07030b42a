//! How a sender or worker reaches Redis, which mode it speaks, and the Redis names that follow.

use std::fmt;
use std::time::Duration;

use crate::portal::connect;
use crate::portal::error::PortalError;

/// How events travel from gateways to workers. Senders and workers of one namespace must use the same mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortalMode {
    /// Mesa 1.5's Portal, exactly: pub/sub on `portal[_<ns>]`, one live worker chosen per event round robin
    /// from the set `available_portals_pool[_<ns>]`. No acknowledgement: a worker that dies loses the events
    /// addressed to it; with no live worker, [`PortalSender::hand`](crate::portal::PortalSender::hand) fails
    /// (Mesa 1.5 drops the event silently).
    FireAndForget,
    /// A Redis Stream per namespace with a consumer group: every event is handled at least once (duplicates
    /// possible), events wait in the stream while no worker is live.
    AtLeastOnce(StreamOptions),
}

/// The at-least-once stream's settings. Every field says its default ([`StreamOptions::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The consumer group the workers share. Default `mesa-portal`.
    pub group: String,
    /// Approximate bound on the stream's length (`XADD MAXLEN ~`). Entries trimmed away are lost even if no
    /// worker handled them: keep it well above what workers can fall behind by. Default 1 000 000.
    pub max_len: usize,
    /// An entry delivered to a worker and not acknowledged for this long is reclaimed by another worker
    /// (its holder is presumed dead). Must exceed the longest time a worker takes to handle one event, or
    /// slow events are handled twice. Default 30 s.
    pub claim_idle: Duration,
    /// How often a worker looks for entries to reclaim. Default 5 s.
    pub claim_interval: Duration,
    /// How long one blocking read waits for new entries before the worker looks again. Default 2 s.
    pub block: Duration,
    /// Entries read (or reclaimed) per round trip. Default 64.
    pub batch: usize,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            group: "mesa-portal".to_owned(),
            max_len: 1_000_000,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            block: Duration::from_secs(2),
            batch: 64,
        }
    }
}

/// Where Portal lives: the Redis server, the namespace and the mode.
#[derive(Clone)]
pub struct PortalConfig {
    /// The engine's URL forms ([`RedisConfig::from_url`](crate::RedisConfig::from_url)): `redis://…`,
    /// `rediss://…` (TLS) or `redis+sentinel://…`. `redis+cluster://` is refused
    /// ([`PortalError::ClusterUnsupported`]).
    pub url: String,
    /// Mesa's namespace: appended as `_<ns>` to the 1.5 names, and in the stream key. Default none.
    pub namespace: Option<String>,
    /// The mode.
    pub mode: PortalMode,
    /// How long a Redis command (other than a blocking read) may take before it fails. Default 2 s.
    pub response_timeout: Duration,
}

impl PortalConfig {
    /// `url` in `mode`, without a namespace.
    pub fn new(url: impl Into<String>, mode: PortalMode) -> PortalConfig {
        PortalConfig {
            url: url.into(),
            namespace: None,
            mode,
            response_timeout: Duration::from_secs(2),
        }
    }

    /// The same, in namespace `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> PortalConfig {
        self.namespace = Some(namespace.into());
        self
    }

    /// Says, without connecting, whether the URL is one Portal can use.
    pub fn validate(&self) -> Result<(), PortalError> {
        connect::topology(&self.url).map(|_| ())
    }

    pub(crate) fn names(&self) -> Names {
        let mesa = |prefix: &str| match &self.namespace {
            Some(ns) => format!("{prefix}_{ns}"),
            None => prefix.to_owned(),
        };
        Names {
            channel: mesa("portal"),
            pool: mesa("available_portals_pool"),
            // Hash-tagged so that whatever else Portal keeps for a namespace lands on the stream's slot.
            stream: match &self.namespace {
                Some(ns) => format!("mesa:{{{ns}}}:portal:events"),
                None => "mesa:portal:events".to_owned(),
            },
        }
    }
}

impl fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalConfig")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("mode", &self.mode)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The URL with its credentials replaced by `<redacted>`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The Redis names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Mesa 1.5's event channel.
    pub(crate) channel: String,
    /// Mesa 1.5's set (and channel) of live portal ids.
    pub(crate) pool: String,
    /// The at-least-once stream.
    pub(crate) stream: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_mesa_1_5_and_debug_hides_passwords() {
        let config = PortalConfig::new("redis://u:secret@h:1", PortalMode::FireAndForget);
        let names = config.names();
        assert_eq!(
            (names.channel.as_str(), names.pool.as_str()),
            ("portal", "available_portals_pool")
        );
        let names = config.clone().namespace("chat").names();
        assert_eq!(names.channel, "portal_chat");
        assert_eq!(names.pool, "available_portals_pool_chat");
        assert_eq!(names.stream, "mesa:{chat}:portal:events");
        let debug = format!("{config:?}");
        assert!(debug.contains("redis://<redacted>@h:1") && !debug.contains("secret"));
    }
}
