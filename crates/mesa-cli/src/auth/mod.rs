//! Authentication modes usable without writing Rust: `[auth] mode = "none" | "jwt" | "webhook"`.
//!
//! Each mode reads op 2's `d` and answers an [`Identity`] (op 22 follows) or an [`AuthError`] whose reason is
//! sent to the client in the 1008 close frame. Reasons are short and never contain the credentials.
//!
//! - [`none`]: no check; the client names itself (development only).
//! - [`jwt`]: `d.token` is a JWT (HS256 shared secret or RS256 public key).
//! - [`webhook`]: `d` is POSTed to the application's backend, which decides.

pub(crate) mod jwt;
pub(crate) mod none;
pub(crate) mod webhook;

use std::sync::Arc;

use mesa_server::{AuthError, Identity, MesaBuilder};
use serde_json::Value;

use crate::config::{AuthConfig, AuthMode, ConfigError};

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

    /// Checks one op 2 payload.
    pub(crate) async fn authenticate(&self, data: Value) -> Result<Identity, AuthError> {
        let outcome = match self {
            Authenticator::None => none::authenticate(&data),
            Authenticator::Jwt(jwt) => jwt.authenticate(&data),
            Authenticator::Webhook(webhook) => webhook.authenticate(&data).await,
        };
        match &outcome {
            Ok(identity) => tracing::debug!(id = %identity.id, "authenticated"),
            Err(refusal) => tracing::debug!(reason = %refusal, "authentication refused"),
        }
        outcome
    }

    /// Registers this check as the server's authentication hook.
    pub(crate) fn install(self, builder: MesaBuilder) -> MesaBuilder {
        let authenticator = Arc::new(self);
        builder.authenticate(move |data, _client| {
            let authenticator = authenticator.clone();
            async move { authenticator.authenticate(data).await }
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
