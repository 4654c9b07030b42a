//! `mode = "none"`: no credentials are checked. Insecure, for development and demos only.
//!
//! The client names itself: the id is `d.id` when it is a string, otherwise `d.token` when it is a string
//! (so that clients written for a token-based backend work unchanged in development). The user object is
//! `{"id": <id>}`.

use mesa_server::{AuthError, Identity};
use serde_json::{json, Value};

/// Accepts any op 2 that names an id.
pub(crate) fn authenticate(data: &Value) -> Result<Identity, AuthError> {
    let named = |key: &str| data.get(key).and_then(Value::as_str);
    let id = match named("id").or_else(|| named("token")) {
        Some("") => return Err(AuthError::new("the id must not be empty")),
        Some(id) => id,
        None => {
            return Err(AuthError::new(
                "authentication data must contain a string \"id\" or \"token\"",
            ))
        }
    };
    Ok(Identity::new(id, json!({ "id": id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_then_token_then_refusal() {
        let identity = authenticate(&json!({"id": "a", "token": "b"})).expect("id");
        assert_eq!(identity, Identity::new("a", json!({"id": "a"})));
        let identity = authenticate(&json!({"id": 5, "token": "b"})).expect("token");
        assert_eq!(identity.id, "b");
        assert!(authenticate(&json!({"id": 5})).is_err());
        assert!(authenticate(&json!("a")).is_err());
        assert!(authenticate(&json!({"id": ""})).is_err());
    }
}
