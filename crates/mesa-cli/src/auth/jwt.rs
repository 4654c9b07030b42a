//! `mode = "jwt"`: op 2's `d.token` is a JSON Web Token.
//!
//! - Key: `secret` or `secret_env` (HMAC: HS256, also HS384/HS512) or `public_key_path` (RSA: RS256, also
//!   RS384/RS512/PS256/PS384/PS512). Only algorithms of the configured key's family are accepted, so a token
//!   cannot pick an algorithm that would make the key mean something else.
//! - `exp` is required (unless `allow_no_exp = true`) and checked with `leeway_ms`, as is `nbf` when present;
//!   `iss`/`aud` are required and checked when `issuer`/`audience` are configured (a warning at startup when
//!   neither is: a token minted for another service would be accepted).
//! - The id is the `id_claim` claim (default `sub`, a string or a number); the user object (op 22) is the
//!   `user` claim when present, otherwise `{"id": id}`: the other claims are not echoed to the client.
//! - The session ends at `exp` (plus `leeway_ms`) unless the client sends a new op 2 with a fresher token for
//!   the same id before then (see `expiry.rs`).

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesa_server::{AuthError, Identity};
use serde_json::{json, Value};

use super::Checked;

use crate::config::{resolve_secret, AuthConfig, ConfigError};

/// HMAC secrets shorter than this are brute-forceable offline from one captured token (RFC 7518 §3.2 asks
/// for at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

/// A JWT verifier built from `[auth]`.
pub(crate) struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    id_claim: String,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("key", &"<redacted>")
            .field("algorithms", &self.validation.algorithms)
            .field("id_claim", &self.id_claim)
            .finish()
    }
}

impl JwtAuth {
    /// Loads the key and sets up validation.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<JwtAuth, ConfigError> {
        let secret = resolve_secret(
            "auth.secret",
            config.secret.as_ref(),
            config.secret_env.as_deref(),
        )?;
        let (key, algorithms) = match (secret, &config.public_key_path) {
            (Some(secret), None) => {
                if secret.expose().len() < MIN_SECRET_BYTES {
                    tracing::warn!(
                        "auth.secret is shorter than {MIN_SECRET_BYTES} bytes: tokens signed with it can be forged \
                         by brute force"
                    );
                }
                let key = DecodingKey::from_secret(secret.expose().as_bytes());
                (key, vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
                    what: "auth.public_key_path",
                    path: path.clone(),
                    source,
                })?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|error| {
                    ConfigError::invalid(format!(
                        "auth.public_key_path {}: not a PEM RSA public key ({error})",
                        path.display()
                    ))
                })?;
                let algorithms = vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ];
                (key, algorithms)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "auth.mode = \"jwt\" takes either a secret (auth.secret or auth.secret_env, HS256) or \
                     auth.public_key_path (RS256), not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "auth.mode = \"jwt\" needs auth.secret or auth.secret_env (HS256) or \
                     auth.public_key_path (RS256)",
                ))
            }
        };
        if config.id_claim.is_empty() {
            return Err(ConfigError::invalid("auth.id_claim must not be empty"));
        }

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // A token without `exp` is valid for ever, even after its user was banned: only when asked for.
        validation.required_spec_claims = HashSet::new();
        if !config.allow_no_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway_ms.div_ceil(1000);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Without a configured audience an `aud` claim cannot be checked, so it is ignored rather than
            // refused (the crate's default would refuse every token that carries one).
            None => validation.validate_aud = false,
        }
        if config.issuer.is_none() && config.audience.is_none() {
            tracing::warn!(
                "auth.issuer and auth.audience are not set: any token signed with this key is accepted, \
                 including one minted for another service that shares it (set either to check iss / aud)"
            );
        }
        Ok(JwtAuth {
            key,
            validation,
            id_claim: config.id_claim.clone(),
        })
    }

    /// Verifies `d.token`.
    pub(crate) fn authenticate(&self, data: &Value) -> Result<Checked, AuthError> {
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::new("missing token"))?;
        let mut claims = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|error| AuthError::new(refusal_reason(error.kind())))?
            .claims;
        let id = super::id_from_value(claims.get(&self.id_claim)).ok_or_else(|| {
            AuthError::new(format!(
                "token has no string or number \"{}\" claim",
                self.id_claim
            ))
        })?;
        let expires_at = claims.get("exp").and_then(Value::as_u64);
        let user = match claims.get_mut("user") {
            Some(user) if !user.is_null() => user.take(),
            _ => json!({ "id": id }),
        };
        Ok(Checked {
            identity: Identity::new(id, user),
            expires_at,
        })
    }
}

/// A short reason for the client. Never includes the token or the key.
fn refusal_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        ErrorKind::InvalidSignature => "invalid token signature".into(),
        ErrorKind::InvalidIssuer => "invalid token issuer".into(),
        ErrorKind::InvalidAudience => "invalid token audience".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no \"{claim}\" claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("invalid \"{claim}\" claim"),
        _ => "invalid token".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{AuthMode, Secret};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn hs256() -> JwtAuth {
        JwtAuth::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            secret: Some(Secret::new(SECRET)),
            issuer: Some("issuer".into()),
            allow_no_exp: true,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn token(claims: Value, secret: &str) -> Value {
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        json!({ "token": token })
    }

    #[test]
    fn numeric_ids_user_claim_and_reasons() {
        let auth = hs256();
        let identity = auth
            .authenticate(&token(json!({"sub": 42, "iss": "issuer"}), SECRET))
            .unwrap();
        assert_eq!(identity.identity.id, "42");
        assert_eq!(
            identity.identity.user,
            json!({"id": "42"}),
            "claims are not echoed"
        );
        assert_eq!(identity.expires_at, None);
        let identity = auth
            .authenticate(&token(
                json!({"sub": "a", "iss": "issuer", "user": {"n": 1}}),
                SECRET,
            ))
            .unwrap();
        assert_eq!(identity.identity.user, json!({"n": 1}));

        let reason = |data: Value| auth.authenticate(&data).unwrap_err().to_string();
        assert_eq!(reason(json!({})), "missing token");
        assert_eq!(reason(json!({"token": "x.y.z"})), "invalid token");
        assert_eq!(
            reason(token(json!({"sub": "a"}), SECRET)),
            "token has no \"iss\" claim"
        );
        assert_eq!(
            reason(token(json!({"sub": "a", "iss": "other"}), SECRET)),
            "invalid token issuer"
        );
        assert_eq!(
            reason(token(json!({"iss": "issuer"}), SECRET)),
            "token has no string or number \"sub\" claim"
        );
        assert_eq!(
            reason(token(
                json!({"sub": "a", "iss": "issuer"}),
                "another secret"
            )),
            "invalid token signature"
        );
    }

    #[test]
    fn exp_is_required_unless_allowed_and_reported() {
        let strict = JwtAuth::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            secret: Some(Secret::new(SECRET)),
            ..AuthConfig::default()
        })
        .unwrap();
        let refused = strict
            .authenticate(&token(json!({"sub": "a"}), SECRET))
            .unwrap_err();
        assert_eq!(refused.reason(), "token has no \"exp\" claim");
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let checked = strict
            .authenticate(&token(json!({"sub": "a", "exp": exp}), SECRET))
            .unwrap();
        assert_eq!(checked.expires_at, Some(exp));
    }

    #[test]
    fn jwt_mode_needs_exactly_one_key() {
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::default()
        };
        assert!(JwtAuth::from_config(&config).is_err());
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            secret: Some(Secret::new(SECRET)),
            public_key_path: Some("key.pem".into()),
            ..AuthConfig::default()
        };
        assert!(JwtAuth::from_config(&config).is_err());
    }
}
