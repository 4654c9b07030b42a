//! The conformance app itself: its settings, its authentication check and its dispatch handler.
//!
//! Everything here is fixed on purpose (see the [crate docs](crate) for the contract); `main` only adds the
//! listener and the signals.

use std::sync::Arc;
use std::time::Duration;

use mesa_server::{AuthError, Engine, Frame, Identity, Mesa, MesaBuilder, Session, Target};
use serde::Deserialize;
use serde_json::{json, Value};

/// Heartbeat interval announced in Hello and used for op 1.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Unanswered beats tolerated (Mesa 1.5 counting): a silent client is closed on the fourth beat, about 4 s in.
pub(crate) const HEARTBEAT_MAX_ATTEMPTS: u32 = 2;
/// Reconnect interval announced in Hello.
pub(crate) const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// Authentication timeout announced in Hello (authentication is optional, so it is not enforced).
pub(crate) const AUTHENTICATION_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long a graceful shutdown waits for clients to finish the closing handshake: 400 ms keeps a SIGTERM
/// under a second even when clients never answer the close.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(400);

/// Dispatch type echoed back to its sender.
pub(crate) const ECHO: &str = "ECHO";
/// Dispatch type relayed to every connection.
pub(crate) const BROADCAST: &str = "BROADCAST";
/// Dispatch type whose payload is delivered to chosen users, as [`DIRECT`].
pub(crate) const SEND_TO: &str = "SEND_TO";
/// Dispatch type of what a [`SEND_TO`] delivers.
pub(crate) const DIRECT: &str = "DIRECT";

/// Prefix of the only tokens accepted: `user:<id>`.
const TOKEN_PREFIX: &str = "user:";

/// The gateway with the conformance settings and handlers, on `engine` (the Redis engine of a cluster) or
/// alone in memory.
pub(crate) fn build(engine: Option<Arc<dyn Engine>>) -> Mesa {
    let builder = match engine {
        Some(engine) => Mesa::builder().engine(engine),
        None => Mesa::builder(),
    };
    configure(builder)
        .authenticate(|data, _client| async move { authenticate(&data) })
        .on_message(|client, frame| async move {
            match client.server() {
                Some(mesa) => on_dispatch(&mesa, &client, frame).await,
                None => tracing::debug!("dispatch after the server was dropped; ignored"),
            }
        })
        .build()
}

/// The fixed settings: timings, rules and limits. Everything else keeps the library's defaults.
fn configure(builder: MesaBuilder) -> MesaBuilder {
    builder
        .path("/")
        .heartbeat(HEARTBEAT_INTERVAL, HEARTBEAT_MAX_ATTEMPTS)
        .reconnect_interval(RECONNECT_INTERVAL)
        .authentication_timeout(AUTHENTICATION_TIMEOUT)
        .send_user_object(true)
        .rate_limit(None)
        .shutdown_timeout(SHUTDOWN_TIMEOUT)
}

/// `{"token": "user:<id>"}` (with a non-empty `<id>`) is user `<id>`, named `User <id>`; anything else is refused.
fn authenticate(data: &Value) -> Result<Identity, AuthError> {
    let id = data
        .get("token")
        .and_then(Value::as_str)
        .and_then(|token| token.strip_prefix(TOKEN_PREFIX))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| AuthError::new("invalid token"))?;
    Ok(Identity::new(
        id,
        json!({ "id": id, "name": format!("User {id}") }),
    ))
}

/// The payload of a `SEND_TO` dispatch.
#[derive(Debug, Deserialize, PartialEq)]
struct SendTo {
    /// User ids to deliver to.
    to: Vec<String>,
    /// User ids never to deliver to, even when listed in `to`.
    #[serde(default)]
    excluding: Vec<String>,
    /// What the recipients receive as `d` of a `DIRECT` dispatch. Required (`null` is a valid payload).
    payload: Value,
}

/// Acts on one dispatch (op 0) from `client`.
async fn on_dispatch(mesa: &Mesa, client: &Session, frame: Frame) {
    let d = frame.d;
    match frame.t.as_deref() {
        Some(ECHO) => {
            if let Err(error) = client.send(&Frame::dispatch(ECHO, d)) {
                tracing::debug!(connection = %client.connection_id(), %error, "echo not sent");
            }
        }
        Some(BROADCAST) => {
            let frame = Frame::dispatch(BROADCAST, d);
            if let Err(error) = mesa.send(&frame, &Target::all()).await {
                tracing::debug!(%error, "broadcast not sent");
            }
        }
        Some(SEND_TO) => match d.decode::<SendTo>() {
            Ok(send_to) => {
                let mut direct = Frame::dispatch(DIRECT, send_to.payload);
                // The sender's message options (Mesa 1.5 `o`, e.g. `{"sync": false}`: volatile) apply to
                // the send; the server reads them and never writes them to the recipients.
                direct.o = frame.o;
                let frame = direct;
                let target = Target::users(send_to.to).excluding(send_to.excluding);
                if let Err(error) = mesa.send(&frame, &target).await {
                    tracing::debug!(%error, "direct message not sent");
                }
            }
            Err(error) => {
                tracing::debug!(connection = %client.connection_id(), %error, "malformed SEND_TO ignored");
            }
        },
        other => {
            tracing::debug!(connection = %client.connection_id(), t = ?other, "unknown dispatch type ignored");
        }
    }
}

/// The Hello this app announces, for documentation and tests of the crate itself.
#[cfg(test)]
fn hello() -> Value {
    let mesa = configure(Mesa::builder()).build();
    json!({ "op": mesa_server::OpCode::Hello.code(), "d": mesa.config().hello(mesa.engine().session_policy()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_announces_the_fixed_timings() {
        assert_eq!(
            hello(),
            json!({"op": 10, "d": {
                "c_heartbeat_interval": 1000,
                "c_reconnect_interval": 500,
                "c_authentication_timeout": 2000,
                "rules": ["sends_user_object"],
                "c_resume": {
                    "session_ttl": 300000,
                    "max_messages": 1000,
                    "max_bytes": 1048576,
                    "max_age": 900000,
                },
            }})
        );
    }

    #[test]
    fn user_tokens_authenticate() {
        let identity =
            authenticate(&json!({"token": "user:alice", "shouldSync": true})).expect("user token");
        assert_eq!(
            identity,
            Identity::new("alice", json!({"id": "alice", "name": "User alice"}))
        );
        let odd = authenticate(&json!({"token": "user:a:b c"})).expect("any non-empty id");
        assert_eq!(odd.id, "a:b c");
    }

    #[test]
    fn other_credentials_are_refused() {
        for data in [
            json!({}),
            json!(null),
            json!("user:alice"),
            json!({"token": "user:"}),
            json!({"token": "admin:alice"}),
            json!({"token": 5}),
            json!({"Token": "user:alice"}),
        ] {
            assert!(authenticate(&data).is_err(), "{data}");
        }
    }

    #[test]
    fn send_to_payloads() {
        let parsed = SendTo::deserialize(json!({"to": ["a", "b"], "payload": {"x": 1}}))
            .expect("minimal SEND_TO");
        assert_eq!(
            parsed,
            SendTo {
                to: vec!["a".into(), "b".into()],
                excluding: vec![],
                payload: json!({"x": 1}),
            }
        );
        let null_payload =
            SendTo::deserialize(json!({"to": [], "excluding": ["a"], "payload": null}))
                .expect("null is a payload");
        assert_eq!(null_payload.payload, Value::Null);
        for malformed in [
            json!(null),
            json!({"to": ["a"]}),
            json!({"to": "a", "payload": 1}),
            json!({"to": [1], "payload": 1}),
            json!({"to": ["a"], "excluding": "b", "payload": 1}),
            json!({"payload": 1}),
        ] {
            assert!(SendTo::deserialize(&malformed).is_err(), "{malformed}");
        }
    }
}
