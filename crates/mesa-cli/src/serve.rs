//! `mesa serve`: builds the gateway from a [`ServeConfig`], binds, serves the gateway and the HTTP API, and
//! shuts down gracefully on SIGTERM or SIGINT.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mesa_server::Mesa;
use tokio::net::TcpListener;

use crate::api::{self, ApiState, EngineMetrics};
use crate::auth::Authenticator;
use crate::config::{
    resolve_secret, AuthMode, ClusterConfig, ConfigError, PortalSettings, ServeConfig,
};
use crate::forwarded::Network;
use crate::metrics::CliMetrics;
use crate::proxy::{NoProxy, Proxy};
use crate::tls::Tls;

/// API keys shorter than this are guessable; a warning says so at startup.
const MIN_API_KEY_BYTES: usize = 32;

/// Why `mesa serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The configuration is unusable (a key file, a secret variable, …).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `host:port` as configured.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] io::Error),
}

/// Runs the gateway until a signal asks it to stop, then drains clients (op 7, close 1012).
pub(crate) async fn run(config: ServeConfig) -> Result<(), ServeError> {
    tracing::debug!(?config, "configuration");
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let authenticator = Authenticator::from_config(&config.auth, &config.server)?;
    if config.auth.mode != AuthMode::None && !config.server.authentication.required {
        tracing::warn!(
            "server.authentication.required = false with auth.mode = \"{}\": anonymous connections receive \
             sends to everyone and may dispatch",
            config.auth.mode.name()
        );
    }
    let key = resolve_secret(
        "api.key",
        config.api.key.as_ref(),
        config.api.key_env.as_deref(),
    )?;
    if key
        .as_ref()
        .is_some_and(|key| key.expose().len() < MIN_API_KEY_BYTES)
    {
        tracing::warn!(
            "api.key is shorter than {MIN_API_KEY_BYTES} bytes: anyone who guesses it can send to every client \
             (generate one with `openssl rand -hex 32`)"
        );
    }
    if key.is_none() {
        tracing::info!("POST /api/send is disabled: set api.key or api.key_env to enable it");
    }

    let tls = Tls::from_config(&config.tls)?;
    let trusted_proxies = config
        .trusted_proxies
        .iter()
        .map(|entry| Network::parse(entry))
        .collect::<Result<Vec<_>, _>>()?;
    let body_limit = config.api_body_limit();
    let metrics = Arc::new(CliMetrics::default());
    let leeway = std::time::Duration::from_millis(config.auth.leeway_ms);
    let mut builder = authenticator.install(
        Mesa::builder().config(config.server.clone()),
        metrics.clone(),
        leeway,
    );
    let mut engine_metrics = None;
    if let Some(cluster) = &config.cluster {
        // The streams behind resumable sessions are kept in Redis when clustered (not in Mesa 1.5
        // compatibility mode, where 1.5 clients keep 1.5's sync).
        let resume = &config.server.resume;
        let sessions = (resume.enabled && !cluster.mesa15_compat).then(|| resume.policy());
        let joined = join_cluster(cluster, sessions).await?;
        builder = builder.engine(joined.engine);
        if let Some(id) = cluster.node_id() {
            builder = builder.node_id(id);
        }
        engine_metrics = Some(joined.metrics);
    }
    if config.demo {
        crate::demo::check_gateway_path(&config.server.path)?;
        builder = crate::demo::install(builder);
    }
    let portal = config.portal();
    if let Some(portal) = &portal {
        if config.demo {
            return Err(ConfigError::invalid(
                "portal.enabled and demo (--demo) are both set: the demo relays client events itself; turn one off",
            )
            .into());
        }
        builder = install_portal(builder, portal, metrics.clone()).await?;
    }
    builder = match Proxy::from_config(&config.proxy, metrics.clone())? {
        Some(proxy) => builder.middleware(proxy),
        // The demo relays its chat itself, Portal answers what it does not hand: only without either is a
        // dispatch with no backend an error.
        None if config.demo || portal.is_some() => builder,
        None => builder.middleware(NoProxy {
            metrics: metrics.clone(),
            warned: AtomicBool::new(false),
        }),
    };
    let mesa = builder.build();
    let mut app = api::router(
        &config.server.path,
        ApiState {
            mesa: mesa.clone(),
            key,
            body_limit,
            metrics,
            trusted_proxies,
            engine_metrics,
        },
    );
    if config.demo {
        app = app.merge(crate::demo::router(&config.server.path));
    }

    let addr = format!("{}:{}", config.server.host, config.server.port);
    let listener = TcpListener::bind((config.server.host.as_str(), config.server.port))
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr()?;
    if let Some(cluster) = &config.cluster {
        tracing::info!(
            node = %mesa.node_id(),
            namespace = %cluster.namespace,
            "joining the cluster on Redis (namespace {})",
            cluster.namespace
        );
    }
    tracing::info!(
        addr = %local,
        path = %config.server.path,
        auth = config.auth.mode.name(),
        tls = tls.is_some(),
        "listening on {local}"
    );
    if config.demo {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::warn!("demo chat without authentication: {scheme}://{local}/demo");
    }
    // Scripts and supervisors wait for this line: it is printed even when the log level hides it.
    if !tracing::enabled!(tracing::Level::INFO) {
        eprintln!("mesa: listening on {local}");
    }
    match tls {
        Some(tls) => {
            tls.serve(&mesa, listener, app, crate::signal::shutdown())
                .await?
        }
        None => {
            mesa.serve_with(listener, app, crate::signal::shutdown())
                .await?
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The engine that connects this node to the others of its cluster, and its metrics.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Joined {
    /// The engine the gateway is built with.
    pub(crate) engine: Arc<dyn mesa_server::Engine>,
    /// Renders the engine's metric families.
    pub(crate) metrics: EngineMetrics,
}

/// Starts the Redis engine of `[cluster]`. It does not wait for Redis: an unreachable Redis at start leaves the
/// node degraded (and serving its own clients) until Redis answers; only an unusable configuration fails.
#[cfg(feature = "redis")]
async fn join_cluster(
    cluster: &ClusterConfig,
    sessions: Option<mesa_server::SessionPolicy>,
) -> Result<Joined, ServeError> {
    match crate::cluster::join(cluster, sessions).await {
        Ok((engine, metrics)) => Ok(Joined { engine, metrics }),
        Err(problem) => Err(ConfigError::invalid(format!("cluster: {problem}")).into()),
    }
}

/// Without Redis support, `[cluster]` cannot be honoured: refused rather than running alone while the
/// operator believes the nodes share their clients.
#[cfg(not(feature = "redis"))]
async fn join_cluster(
    _cluster: &ClusterConfig,
    _sessions: Option<mesa_server::SessionPolicy>,
) -> Result<Joined, ServeError> {
    Err(ConfigError::invalid(
        "cluster.redis_url (or redis_url, --redis-url, MESA_REDIS_URL) is set, but this mesa was built without \
         Redis support (cargo feature `redis`): remove it to run a single node in memory, or rebuild with \
         --features redis",
    )
    .into())
}

/// Hands client events to Portal workers (`[portal]`, see `portal.rs`).
#[cfg(feature = "redis")]
async fn install_portal(
    builder: mesa_server::MesaBuilder,
    portal: &PortalSettings,
    metrics: Arc<CliMetrics>,
) -> Result<mesa_server::MesaBuilder, ServeError> {
    Ok(crate::portal::install(builder, portal, metrics).await?)
}

/// Without Redis support there is no Portal: refused rather than leaving client events unhandled.
#[cfg(not(feature = "redis"))]
async fn install_portal(
    _builder: mesa_server::MesaBuilder,
    _portal: &PortalSettings,
    _metrics: Arc<CliMetrics>,
) -> Result<mesa_server::MesaBuilder, ServeError> {
    Err(ConfigError::invalid(
        "portal.enabled is set, but this mesa was built without Redis support (cargo feature `redis`): \
         rebuild with --features redis",
    )
    .into())
}
