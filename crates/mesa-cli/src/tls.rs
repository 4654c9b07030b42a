//! `wss://` terminated by `mesa serve` itself (`[tls]`): rustls with the ring provider, a PEM certificate
//! chain and private key, reloaded without a restart.
//!
//! The files are checked every `tls.reload_ms` (default 10000; 0 turns reloading off): when either one's
//! modification time or size changed, both are read again and, if they make a valid pair, new handshakes
//! use them; open connections keep theirs. A pair that does not load (half-written by a renewal, a key that
//! does not match) is logged and the previous one stays in use, so a renewal can never take the gateway down.
//!
//! The accept loop is `Mesa::serve_with_handshake` (HTTP/1.1 with upgrades, header deadline, remote address,
//! graceful shutdown) with the TLS handshake, bounded by `server.limits.handshake_timeout_ms`, in front.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use mesa_server::Mesa;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// `[tls]`: off unless both paths are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// PEM certificate chain, the server's certificate first. Default: none (plain `ws://`).
    pub(crate) cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate. Default: none.
    pub(crate) key_path: Option<PathBuf>,
    /// How often the files are checked for a change, in ms; 0: never reloaded. Default 10000.
    pub(crate) reload_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: None,
            key_path: None,
            reload_ms: 10_000,
        }
    }
}

/// What a file looked like when it was loaded; a change triggers a reload.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The certificate new handshakes get; replaced whole by a reload.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A loaded `[tls]`: the acceptor and what the reload task needs.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
    reload: Option<Duration>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads a certificate chain and its key; the message names the key of the file at fault.
fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| format!("tls.cert_path {}: {error}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert_path {}: no PEM certificate in it",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| format!("tls.key_path {}: {error}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        format!(
            "tls.key_path {}: not a usable key for tls.cert_path {} ({error})",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(Arc::new(certified))
}

impl Tls {
    /// Loads `[tls]`; `None` when it is off. Both paths or neither.
    pub(crate) fn from_config(config: &TlsConfig) -> Result<Option<Tls>, ConfigError> {
        let (cert_path, key_path) = match (&config.cert_path, &config.key_path) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key_path: must be set with tls.cert_path",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.cert_path: must be set with tls.key_path",
                ))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load(&cert_path, &key_path, &provider).map_err(ConfigError::Invalid)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(certified),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| ConfigError::invalid(format!("tls: {error}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // HTTP/1.1 only: the WebSocket upgrade needs it.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            provider,
            cert_path,
            key_path,
            reload: (config.reload_ms > 0).then(|| Duration::from_millis(config.reload_ms)),
        }))
    }

    /// Checks the files every `reload` and swaps in a new pair when they changed and load; runs until the
    /// runtime stops.
    fn spawn_reload(&self) {
        let Some(every) = self.reload else {
            return;
        };
        let (resolver, provider) = (self.resolver.clone(), self.provider.clone());
        let (cert_path, key_path) = (self.cert_path.clone(), self.key_path.clone());
        tokio::spawn(async move {
            let mut seen = (stamp(&cert_path), stamp(&key_path));
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (stamp(&cert_path), stamp(&key_path));
                if now == seen {
                    continue;
                }
                match load(&cert_path, &key_path, &provider) {
                    Ok(certified) => {
                        *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = certified;
                        seen = now;
                        tracing::info!(cert = %cert_path.display(), "TLS certificate reloaded");
                    }
                    // Half-written by a renewal, or a key that does not match yet: retried at the next
                    // tick (`seen` is left as it was), the previous pair stays in use.
                    Err(problem) => {
                        tracing::warn!(
                            "TLS reload failed, keeping the current certificate: {problem}"
                        )
                    }
                }
            }
        });
    }

    /// Serves `app` over TLS on `listener` until `shutdown` resolves, then shuts down like
    /// `Mesa::serve_with` (it is that loop, with the TLS handshake in front).
    pub(crate) async fn serve(
        self,
        mesa: &Mesa,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.spawn_reload();
        let acceptor = self.acceptor.clone();
        mesa.serve_with_handshake(
            listener,
            app,
            move |stream| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(stream).await }
            },
            shutdown,
        )
        .await
    }
}
