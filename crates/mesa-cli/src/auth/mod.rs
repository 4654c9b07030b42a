//! Authentication modes usable without writing Rust: `[auth] mode = "none" | "jwt" | "webhook"`.
//!
//! Each mode reads op 2's `d` and answers an [`Identity`] (op 22 follows) or an [`AuthError`] whose reason is
//! sent to the client in the close frame: 1008 for a refusal, 1013 for a check that could not decide
//! ([`AuthError::unavailable`]: the backend is down, slow or failing). Reasons are short and never contain the
//! credentials. A credential's expiry ends the session then unless refreshed ([`expiry`]).
//!
//! - [`none`]: no check; the client names itself (development only).
//! - [`jwt`]: `d.token` is a JWT (HS256 shared secret or RS256 public key).
//! - [`webhook`]: `d` is POSTed to the application's backend, which decides.

pub(crate) mod expiry;
pub(crate) mod jwt;
pub(crate) mod none;
pub(crate) mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesa_server::{AuthError, Identity, MesaBuilder};
use serde_json::Value;

use crate::config::{AuthConfig, AuthMode, ConfigError};
use crate::metrics::CliMetrics;

/// The reason a client gets when the check could not decide (closed with 1013): a retry hint, never the
/// backend's details (those are logged).
pub(crate) const UNAVAILABLE: &str = "authentication service unavailable, retry later";

/// An accepted op 2: who the client is, and until when (Unix seconds) its credential is valid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    /// The identity op 22 acknowledges.
    pub(crate) identity: Identity,
    /// The credential's expiry (`exp`), when it has one: the session ends then unless refreshed.
    pub(crate) expires_at: Option<u64>,
}

impl Checked {
    /// An identity whose credential does not expire.
    pub(crate) fn forever(identity: Identity) -> Checked {
        Checked {
            identity,
            expires_at: None,
        }
    }
}

/// The configured authentication check.
#[derive(Debug)]
pub(crate) enum Authenticator {
    /// See [`none`].
    None,
    /// See [`jwt`].
    Jwt(jwt::JwtAuth),
    /// See [`webhook`].
    Webhook(webhook::WebhookAuth),
}

impl Authenticator {
    /// Builds the check `[auth]` describes: reads key files and secret variables now, so that a broken
    /// configuration stops the server at startup instead of refusing every client later.
    pub(crate) fn from_config(
        config: &AuthConfig,
        server: &mesa_server::Config,
    ) -> Result<Authenticator, ConfigError> {
        Ok(match config.mode {
            AuthMode::None => {
                tracing::warn!(
                    "INSECURE: auth.mode = \"none\": clients are not authenticated and may claim any id; \
                     for development only (set auth.mode to \"jwt\" or \"webhook\" in production)"
                );
                Authenticator::None
            }
            AuthMode::Jwt => Authenticator::Jwt(jwt::JwtAuth::from_config(config)?),
            AuthMode::Webhook => {
                Authenticator::Webhook(webhook::WebhookAuth::from_config(config, server)?)
            }
        })
    }

    /// The mode's name in configuration and metrics.
    fn mode(&self) -> &'static str {
        match self {
            Authenticator::None => AuthMode::None.name(),
            Authenticator::Jwt(_) => AuthMode::Jwt.name(),
            Authenticator::Webhook(_) => AuthMode::Webhook.name(),
        }
    }

    /// Checks one op 2 payload.
    pub(crate) async fn authenticate(&self, data: Value) -> Result<Checked, AuthError> {
        let outcome = match self {
            Authenticator::None => none::authenticate(&data).map(Checked::forever),
            Authenticator::Jwt(jwt) => jwt.authenticate(&data),
            Authenticator::Webhook(webhook) => webhook.authenticate(&data).await,
        };
        match &outcome {
            Ok(checked) => tracing::debug!(id = %checked.identity.id, "authenticated"),
            Err(refusal) => tracing::debug!(reason = %refusal, "authentication refused"),
        }
        outcome
    }

    /// Registers this check as the server's authentication hook, counted in `metrics`, with sessions closed
    /// at their credential's expiry (plus `leeway`) unless refreshed.
    pub(crate) fn install(
        self,
        builder: MesaBuilder,
        metrics: Arc<CliMetrics>,
        leeway: Duration,
    ) -> MesaBuilder {
        let authenticator = Arc::new(self);
        let expiry = expiry::Expiry::new(leeway);
        let watch = expiry.clone();
        builder
            .middleware(expiry)
            .authenticate(move |data, session| {
                let authenticator = authenticator.clone();
                let metrics = metrics.clone();
                let expiry = watch.clone();
                async move {
                    let started = Instant::now();
                    let outcome = authenticator.authenticate(data).await;
                    let label = match &outcome {
                        Ok(_) => "accepted",
                        Err(error) if error.is_retryable() => "unavailable",
                        Err(_) => "refused",
                    };
                    metrics.auth(authenticator.mode(), label, started.elapsed());
                    let checked = outcome?;
                    expiry.watch(&session, checked.expires_at);
                    Ok(checked.identity)
                }
            })
    }
}

/// A JSON string or number as an id (JWT `sub` claims and backend ids are either); `None` for anything
/// else or an empty string.
pub(crate) fn id_from_value(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}
