//! What the engine connects to and how it behaves: [`RedisConfig`], [`Topology`], and their validation.

use mesa_engine::SessionPolicy;
use std::fmt;
use std::time::Duration;

/// The namespace when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server: `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS (rustls, the
    /// system's root certificates).
    Standalone {
        /// The server's URL.
        url: String,
    },
    /// A master found through Sentinel, asked again at every reconnect (so a failover is followed).
    Sentinel {
        /// The Sentinels, each `redis://host:port` (or `rediss://` for TLS to the Sentinels).
        sentinels: Vec<String>,
        /// The master's name in the Sentinels' configuration.
        master: String,
        /// User name for the master, if it requires one.
        username: Option<String>,
        /// Password for the master, if it requires one.
        password: Option<String>,
        /// The database on the master. Default 0.
        db: i64,
        /// TLS to the master.
        tls: bool,
    },
    /// A Redis Cluster: any of its nodes, each `redis://` or `rediss://`. Uses sharded pub/sub.
    Cluster {
        /// Seed nodes; the others are discovered.
        nodes: Vec<String>,
    },
}

/// The URL without its password, for logs and `Debug`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Standalone { url } => f
                .debug_struct("Standalone")
                .field("url", &redact(url))
                .finish(),
            Topology::Sentinel {
                sentinels,
                master,
                username,
                password,
                db,
                tls,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|s| redact(s)).collect::<Vec<_>>(),
                )
                .field("master", master)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .field("db", db)
                .field("tls", tls)
                .finish(),
            Topology::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|s| redact(s)).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// A configuration the engine cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL that is not a Redis URL (the password is not shown).
    #[error("invalid Redis URL {url:?}: {reason}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace that is empty or has characters other than `A-Z a-z 0-9 _ - .`.
    #[error("invalid namespace {0:?}: use 1 to 64 of A-Z a-z 0-9 _ - .")]
    Namespace(String),
    /// A duration or size that cannot work.
    #[error("invalid {what}: {reason}")]
    Value {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// How the Redis engine (and a [`Dispatcher`](crate::Dispatcher)) connects and behaves.
///
/// Build one with [`RedisConfig::from_url`], [`RedisConfig::new`] or [`RedisConfig::cluster`], then set the
/// fields; [`RedisConfig::validate`] says what is wrong with it (connecting validates too).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where Redis is.
    pub topology: Topology,
    /// Separates gateways sharing one Redis: every key and channel starts with `mesa:<namespace>:`.
    /// Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// How long a node that stopped refreshing its liveness counts as alive; its presence entries are removed
    /// after that. It refreshes every `node_ttl / 3`; other nodes look for dead ones every `node_ttl / 2`.
    /// Default 15 s.
    pub node_ttl: Duration,
    /// How long a send (or a presence query, or [`flush`](mesa_engine::Engine::flush)) may wait for Redis
    /// before it fails with `Unavailable`. Default 2 s.
    pub publish_timeout: Duration,
    /// How long one connection attempt (including resubscribing) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// First wait before reconnecting after a failure; doubled each time up to `reconnect_max`. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts. Default 5 s.
    pub reconnect_max: Duration,
    /// How often a node checks that its subscription connection still receives, by publishing a probe to its
    /// own channel; a probe not back within `publish_timeout` makes it reconnect. Default 3 s.
    pub probe_interval: Duration,
    /// Publications waiting to be handed to Redis at most; beyond, sends fail with `Overloaded`. Default 65536.
    pub publish_queue: usize,
    /// Also speak Mesa 1.5's Redis formats, so that `@cryb/mesa` 1.5.8 nodes, Dispatchers and clients keep
    /// working with ours on the same Redis (`docs/clustering.md`, "Mesa 1.5 compatibility"): sends to users
    /// and to everyone go on 1.5's `ws` channel (which every node reads) instead of being routed, presence
    /// is mirrored in `connected_clients` and `connected_clients_count`, and sends to offline users are
    /// kept in `undelivered_messages` and redelivered when they authenticate (1.5's sync). Every node of a
    /// namespace needs the same setting. Not with a Redis Cluster (1.5 does not run on one). Default false.
    pub mesa15_compat: bool,
    /// Keep a stream per user in Redis for resumable sessions and the offline mailbox, within this policy
    /// (`docs/delivery.md`): durable sends to users are appended and published in one script, and a session
    /// can be resumed on any node. `None`: nothing is kept, every send is live only, and the gateway offers
    /// no resume. Every node and Dispatcher of a namespace needs the same policy. Not with
    /// `mesa15_compat` (Mesa 1.5 clients keep 1.5's own sync). Default `None`.
    pub sessions: Option<SessionPolicy>,
}

impl RedisConfig {
    /// A configuration for `topology` with every default.
    pub fn new(topology: Topology) -> RedisConfig {
        RedisConfig {
            topology,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            node_ttl: Duration::from_secs(15),
            publish_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            probe_interval: Duration::from_secs(3),
            publish_queue: 65536,
            mesa15_compat: false,
            sessions: None,
        }
    }

    /// A configuration from one URL:
    ///
    /// - `redis://…` or `rediss://…`: one server ([`Topology::Standalone`]);
    /// - `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]` (or `rediss+sentinel://`
    ///   for TLS to the Sentinels and the master): a master through Sentinel; the credentials are the
    ///   master's, the Sentinels are reached without;
    /// - `redis+cluster://host:port[,host:port…]` (or `rediss+cluster://`): a Redis Cluster.
    pub fn from_url(url: &str) -> Result<RedisConfig, ConfigError> {
        let bad = |reason: &str| ConfigError::Url {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let topology = match scheme {
            "redis" | "rediss" => Topology::Standalone {
                url: url.to_owned(),
            },
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme == "rediss+sentinel";
                let (auth, rest) = match rest.rsplit_once('@') {
                    Some((auth, rest)) => (Some(auth), rest),
                    None => (None, rest),
                };
                let (hosts, path) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("no master name (redis+sentinel://host:port/<master>)"))?;
                let mut path = path.split('/');
                let master = path.next().unwrap_or_default();
                if master.is_empty() {
                    return Err(bad("no master name"));
                }
                let db = match path.next() {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse()
                        .map_err(|_| bad("the database is not a number"))?,
                };
                let (username, password) = match auth {
                    None => (None, None),
                    Some(auth) => match auth.split_once(':') {
                        Some((user, password)) => (
                            (!user.is_empty()).then(|| user.to_owned()),
                            Some(password.to_owned()),
                        ),
                        None => (Some(auth.to_owned()), None),
                    },
                };
                let sentinel_scheme = if tls { "rediss" } else { "redis" };
                Topology::Sentinel {
                    sentinels: split_hosts(hosts, sentinel_scheme).map_err(&bad)?,
                    master: master.to_owned(),
                    username,
                    password,
                    db,
                    tls,
                }
            }
            "redis+cluster" | "rediss+cluster" => {
                let node_scheme = if scheme == "rediss+cluster" {
                    "rediss"
                } else {
                    "redis"
                };
                Topology::Cluster {
                    nodes: split_hosts(rest.trim_end_matches('/'), node_scheme).map_err(&bad)?,
                }
            }
            _ => return Err(bad("unknown scheme")),
        };
        let config = RedisConfig::new(topology);
        config.validate()?;
        Ok(config)
    }

    /// A Redis Cluster reached through these seed nodes (`redis://host:port` each).
    pub fn cluster<I, S>(nodes: I) -> RedisConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig::new(Topology::Cluster {
            nodes: nodes.into_iter().map(Into::into).collect(),
        })
    }

    /// The same configuration with another namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> RedisConfig {
        self.namespace = namespace.into();
        self
    }

    /// The same configuration with another node TTL.
    pub fn with_node_ttl(mut self, ttl: Duration) -> RedisConfig {
        self.node_ttl = ttl;
        self
    }

    /// The same configuration with Mesa 1.5's formats on or off (see [`RedisConfig::mesa15_compat`]).
    pub fn with_mesa15_compat(mut self, on: bool) -> RedisConfig {
        self.mesa15_compat = on;
        self
    }

    /// The same configuration keeping resumable sessions within `policy` (or not, with `None`; see
    /// [`RedisConfig::sessions`]).
    pub fn with_sessions(mut self, policy: Option<SessionPolicy>) -> RedisConfig {
        self.sessions = policy;
        self
    }

    /// Whether the engine uses sharded pub/sub (Cluster).
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// Says what would keep the engine from starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError::Namespace(ns.clone()));
        }
        let positive = |what, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Value {
                    what,
                    reason: "must be more than zero",
                })
            } else {
                Ok(())
            }
        };
        if self.node_ttl < Duration::from_millis(300) {
            return Err(ConfigError::Value {
                what: "node_ttl",
                reason: "must be at least 300 ms",
            });
        }
        positive("publish_timeout", self.publish_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("reconnect_min", self.reconnect_min)?;
        positive("probe_interval", self.probe_interval)?;
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::Value {
                what: "reconnect_max",
                reason: "must not be less than reconnect_min",
            });
        }
        if self.mesa15_compat && self.is_cluster() {
            return Err(ConfigError::Value {
                what: "mesa15_compat",
                reason: "Mesa 1.5's formats need one Redis server (standalone or Sentinel), not a Cluster",
            });
        }
        if let Some(policy) = &self.sessions {
            if self.mesa15_compat {
                return Err(ConfigError::Value {
                    what: "sessions",
                    reason: "resumable sessions are not kept in Mesa 1.5 compatibility mode (1.5 clients use 1.5's sync)",
                });
            }
            let retention = &policy.retention;
            if retention.max_messages == 0
                || retention.max_bytes == 0
                || retention.max_age.is_zero()
                || policy.session_ttl.is_zero()
            {
                return Err(ConfigError::Value {
                    what: "sessions",
                    reason: "every retention bound and the session TTL must be more than zero",
                });
            }
        }
        if self.publish_queue == 0 {
            return Err(ConfigError::Value {
                what: "publish_queue",
                reason: "must be more than zero",
            });
        }
        let urls: Vec<&String> = match &self.topology {
            Topology::Standalone { url } => vec![url],
            Topology::Sentinel {
                sentinels, master, ..
            } => {
                if master.is_empty() {
                    return Err(ConfigError::Value {
                        what: "Sentinel master name",
                        reason: "must not be empty",
                    });
                }
                sentinels.iter().collect()
            }
            Topology::Cluster { nodes } => nodes.iter().collect(),
        };
        if urls.is_empty() {
            return Err(ConfigError::Value {
                what: "Redis addresses",
                reason: "at least one is needed",
            });
        }
        for url in urls {
            check_url(url)?;
        }
        Ok(())
    }
}

/// `host:port,host:port` as URLs of `scheme`.
fn split_hosts(hosts: &str, scheme: &str) -> Result<Vec<String>, &'static str> {
    let list: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{h}"))
        .collect();
    if list.is_empty() {
        return Err("no host");
    }
    Ok(list)
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|_| ())
        .map_err(|e| ConfigError::Url {
            url: redact(url),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_topology() {
        assert!(matches!(
            RedisConfig::from_url("redis://127.0.0.1:6379").map(|c| c.topology),
            Ok(Topology::Standalone { .. })
        ));
        let sentinel = RedisConfig::from_url("redis+sentinel://:pw@a:26379,b:26380/mymaster/2")
            .expect("valid");
        assert_eq!(
            sentinel.topology,
            Topology::Sentinel {
                sentinels: vec!["redis://a:26379".into(), "redis://b:26380".into()],
                master: "mymaster".into(),
                username: None,
                password: Some("pw".into()),
                db: 2,
                tls: false,
            }
        );
        assert!(!format!("{sentinel:?}").contains("pw"), "{sentinel:?}");
        let cluster = RedisConfig::from_url("redis+cluster://a:7000,b:7001").expect("valid");
        assert!(cluster.is_cluster());
        for bad in [
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "nope",
        ] {
            assert!(RedisConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = RedisConfig::from_url("redis://127.0.0.1").expect("valid");
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.clone().with_namespace("a:b").validate().is_err());
        assert!(ok.clone().with_namespace("{x}").validate().is_err());
        assert!(ok.clone().with_namespace("").validate().is_err());
        assert!(ok
            .clone()
            .with_node_ttl(Duration::from_millis(10))
            .validate()
            .is_err());
        assert!(RedisConfig::from_url("redis+cluster://a:7000")
            .expect("valid")
            .with_mesa15_compat(true)
            .validate()
            .is_err());
        let secret = RedisConfig::from_url("redis://:hunter2@127.0.0.1").expect("valid");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
