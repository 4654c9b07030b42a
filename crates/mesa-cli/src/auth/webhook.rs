//! `mode = "webhook"`: the application's backend decides.
//!
//! Op 2's `d` is POSTed as JSON to `url` (with the static `headers`, e.g. an `Authorization` for the backend)
//! and the answer decides:
//! - 2xx with `{"id": "…", "user": {…}, "exp": 1767225600}`: accepted (`id` may be a number; `user` defaults to
//!   `{"id": id}`; `exp`, optional, in Unix seconds, ends the session then unless it is refreshed);
//! - 401 or 403, optionally with `{"error": "…"}` or `{"reason": "…"}`: refused with that reason (1008);
//! - anything else (another status, an unreadable body, a timeout after `timeout_ms`, a connection error): the
//!   backend's problem, not the client's: closed with 1013 "authentication service unavailable, retry later",
//!   and a warning says which failure it was (timeout, connection refused, status …).
//!
//! Redirects are not followed: a redirect would replay the client's credentials to another URL.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mesa_server::{AuthError, Identity};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Checked, UNAVAILABLE};
use crate::config::{AuthConfig, ConfigError};

/// Backend answers larger than this are treated as invalid: an identity is small, and an unbounded read
/// would let a misbehaving backend exhaust the gateway's memory.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A webhook client built from `[auth]`.
///
/// Uses reqwest (rustls, no native TLS) rather than a hand-written hyper client: it gives timeouts covering
/// the whole exchange, connection pooling and https in a few lines.
#[derive(Debug)]
pub(crate) struct WebhookAuth {
    client: reqwest::Client,
    url: reqwest::Url,
}

/// The body of a 2xx answer.
#[derive(Deserialize)]
struct Accepted {
    /// The user id, a string or a number.
    id: Value,
    /// The user object for op 22; `{"id": id}` when absent or null.
    #[serde(default)]
    user: Option<Value>,
    /// When the identity stops being valid, in Unix seconds.
    #[serde(default)]
    exp: Option<u64>,
}

impl WebhookAuth {
    /// Validates the URL and headers and builds the HTTP client.
    pub(crate) fn from_config(
        config: &AuthConfig,
        server: &mesa_server::Config,
    ) -> Result<WebhookAuth, ConfigError> {
        let raw_url = config.url.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                "auth.mode = \"webhook\" needs auth.url (the backend to POST op 2's d to)",
            )
        })?;
        let url = reqwest::Url::parse(raw_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ConfigError::invalid("auth.url must be an http:// or https:// URL"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header = HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::invalid(format!("auth.headers: invalid header name {name:?}"))
            })?;
            let mut value = HeaderValue::try_from(value.expose()).map_err(|_| {
                ConfigError::invalid(format!("auth.headers.{name}: invalid header value"))
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        if config.timeout_ms >= server.authentication.check_timeout_ms {
            tracing::warn!(
                "auth.timeout_ms ({}) is not below server.authentication.check_timeout_ms ({}): a slow \
                 backend will be cut off by the gateway's own deadline instead",
                config.timeout_ms,
                server.authentication.check_timeout_ms
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .user_agent(concat!("mesa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                ConfigError::invalid(format!("auth.mode = \"webhook\": HTTP client: {error}"))
            })?;
        Ok(WebhookAuth { client, url })
    }

    /// Asks the backend about one op 2 payload.
    pub(crate) async fn authenticate(&self, data: &Value) -> Result<Checked, AuthError> {
        // Errors are logged without the URL (it may carry a key in its query string).
        let response = match self.client.post(self.url.clone()).json(data).send().await {
            Ok(response) => response,
            Err(error) => {
                let what = if error.is_timeout() {
                    "timed out (auth.timeout_ms)"
                } else if error.is_connect() {
                    "connection failed (refused or unreachable)"
                } else {
                    "request failed"
                };
                return Err(unavailable(&error.without_url(), what));
            }
        };
        let status = response.status();
        let body = match read_limited(response).await {
            Ok(body) => body,
            Err(ReadError::Http(error)) if error.is_timeout() => {
                return Err(unavailable(&error, "timed out (auth.timeout_ms)"))
            }
            Err(error) => return Err(unavailable(&error, "reading the answer failed")),
        };
        if status.is_success() {
            return accepted(&body)
                .ok_or_else(|| unavailable(&status, "2xx answer without a JSON {\"id\": …} body"));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(AuthError::new(refusal_reason(&body)));
        }
        Err(unavailable(&status, "unexpected status"))
    }
}

/// Logs why the backend gave no usable answer and returns the retryable failure (1013).
fn unavailable(detail: &dyn std::fmt::Display, what: &str) -> AuthError {
    tracing::warn!(%detail, "authentication webhook: {what}; closing the client with 1013 (retry later)");
    AuthError::unavailable(UNAVAILABLE)
}

/// The identity in a 2xx body, or `None` when the body is not one.
fn accepted(body: &[u8]) -> Option<Checked> {
    let accepted: Accepted = serde_json::from_slice(body).ok()?;
    let id = super::id_from_value(Some(&accepted.id))?;
    let user = match accepted.user {
        Some(user) if !user.is_null() => user,
        _ => json!({ "id": id }),
    };
    Some(Checked {
        identity: Identity::new(id, user),
        expires_at: accepted.exp,
    })
}

/// The reason in a 401/403 body (`error` or `reason`), or a generic one.
fn refusal_reason(body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ["error", "reason"]
        .iter()
        .find_map(|key| body.get(key).and_then(Value::as_str))
        .filter(|reason| !reason.is_empty())
        .unwrap_or("authentication refused")
        .to_string()
}

/// Why reading an answer failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The connection failed or timed out mid-body.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// Reads the answer's body, at most [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Bytes, ReadError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(reqwest::Error::without_url)?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_and_header_names_are_case_insensitive() {
        let server = mesa_server::Config::default();
        let config = |url: &str, header: &str| AuthConfig {
            mode: crate::config::AuthMode::Webhook,
            url: Some(url.into()),
            headers: [(header.to_string(), crate::config::Secret::new("Bearer k"))].into(),
            ..AuthConfig::default()
        };
        assert!(WebhookAuth::from_config(
            &config("http://127.0.0.1:1/a", "Authorization"),
            &server
        )
        .is_ok());
        assert!(
            WebhookAuth::from_config(&config("ftp://127.0.0.1/a", "Authorization"), &server)
                .is_err()
        );
        assert!(WebhookAuth::from_config(&config("not a url", "Authorization"), &server).is_err());
        assert!(
            WebhookAuth::from_config(&config("http://127.0.0.1:1/a", "bad header"), &server)
                .is_err()
        );
    }

    #[test]
    fn answers_are_interpreted() {
        let checked =
            accepted(br#"{"id": "a", "user": {"name": "A"}, "exp": 9}"#).expect("identity");
        assert_eq!(checked.identity, Identity::new("a", json!({"name": "A"})));
        assert_eq!(checked.expires_at, Some(9));
        let checked = accepted(br#"{"id": 7}"#).expect("identity");
        assert_eq!(
            checked,
            Checked::forever(Identity::new("7", json!({"id": "7"})))
        );
        assert!(accepted(br#"{"user": {}}"#).is_none());
        assert!(accepted(br#"{"id": ""}"#).is_none());
        assert!(accepted(b"ok").is_none());

        assert_eq!(refusal_reason(br#"{"error": "banned"}"#), "banned");
        assert_eq!(refusal_reason(br#"{"reason": "expired"}"#), "expired");
        assert_eq!(refusal_reason(b"nope"), "authentication refused");
    }
}
