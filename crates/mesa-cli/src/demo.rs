//! `mesa serve --demo`: a chat page at `GET /demo`, relayed by the gateway itself (no backend).
//!
//! Off unless asked for (`--demo`, `demo = true` in the file, or `MESA_DEMO=true`). The page
//! (`assets/demo/index.html`) and the browser client (`assets/demo/mesa-client.js`, the build of `clients/js`)
//! are embedded in the binary and served beside the gateway on its port.
//!
//! # Demo events (op 0)
//! | direction | `t` | `d` |
//! |-----------|-----|-----|
//! | client → server | `CHAT` | `{"text": "…"}`; only from an authenticated connection |
//! | server → everyone | `CHAT` | `{"from": <user id>, "text": "…", "at": <ms since the epoch>}` |
//! | server → everyone | `PRESENCE` | `{"online": [<user id>, …]}` (sorted, once per user), after every authentication and disconnection, and to each new connection |
//! | server → one client | `DEMO_ERROR` | `{"reason": "…"}`, e.g. chat before choosing a name |
//!
//! Names are whatever op 2 authenticates as: with `auth.mode = "none"` (the default) the page's `{"id": name}`,
//! so anyone may take any name, which the page says.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mesa_server::{ConnectionId, Frame, MesaBuilder, Session, Target};
use serde_json::json;

use crate::config::ConfigError;

/// The page, with `__MESA_GATEWAY_PATH__` standing for the gateway path (a JSON string).
const PAGE: &str = include_str!("../assets/demo/index.html");
/// The browser client, built from `clients/js` by `npm run vendor` there.
const CLIENT_JS: &str = include_str!("../assets/demo/mesa-client.js");

/// Longest chat text relayed, in characters; longer texts are cut.
const MAX_TEXT_CHARS: usize = 500;
/// Longest name shown, in characters (`auth.mode = "none"` accepts any id).
const MAX_NAME_CHARS: usize = 32;

/// The route of the page; the gateway must not be mounted on or under it.
pub(crate) const DEMO_PATH: &str = "/demo";

/// Refuses a gateway path that the demo routes would collide with (axum panics on a duplicate route).
pub(crate) fn check_gateway_path(path: &str) -> Result<(), ConfigError> {
    let trimmed = path.trim_end_matches('/');
    if trimmed == DEMO_PATH || path.starts_with("/demo/") {
        return Err(ConfigError::invalid(format!(
            "server.path {path:?} collides with the demo page (/demo): choose another path or turn the demo off"
        )));
    }
    Ok(())
}

/// Who is online: user id per authenticated connection. One owner, changed only by the hooks below.
#[derive(Debug, Default)]
struct Presence {
    by_connection: Mutex<HashMap<ConnectionId, String>>,
}

impl Presence {
    /// Records (or replaces, after a re-authentication) a connection's user id.
    fn join(&self, connection: ConnectionId, user: String) {
        self.lock().insert(connection, user);
    }

    /// Forgets a connection; whether it was authenticated.
    fn leave(&self, connection: ConnectionId) -> bool {
        self.lock().remove(&connection).is_some()
    }

    /// The `PRESENCE` frame: every user id once, sorted.
    fn frame(&self) -> Frame {
        let online: BTreeSet<String> = self.lock().values().cloned().collect();
        Frame::dispatch("PRESENCE", json!({ "online": online }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, String>> {
        // A poisoned map is still a valid map (every change is a single insert or remove).
        self.by_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Adds the demo's relay to the gateway: chat and presence handlers on the builder.
pub(crate) fn install(builder: MesaBuilder) -> MesaBuilder {
    let presence = Arc::new(Presence::default());
    let on_connection = presence.clone();
    let on_authenticated = presence.clone();
    let on_disconnection = presence;
    builder
        .on_connection(move |session| {
            let frame = on_connection.frame();
            async move {
                // A viewer sees who is online before choosing a name.
                let _ = session.send(&frame);
            }
        })
        .on_authenticated(move |session| {
            let presence = on_authenticated.clone();
            async move {
                if let Some(id) = session.id() {
                    presence.join(session.connection_id(), shorten(&id, MAX_NAME_CHARS));
                    broadcast(&session, &presence.frame()).await;
                }
            }
        })
        .on_disconnection(move |session, _why| {
            let presence = on_disconnection.clone();
            async move {
                if presence.leave(session.connection_id()) {
                    broadcast(&session, &presence.frame()).await;
                }
            }
        })
        .on_message(|session, frame| async move {
            if frame.t.as_deref() != Some("CHAT") {
                return;
            }
            let Some(from) = session.id() else {
                let reason = json!({ "reason": "choose a name before chatting" });
                let _ = session.send(&Frame::dispatch("DEMO_ERROR", reason));
                return;
            };
            let Some(text) = frame.d.get("text").and_then(|text| text.as_str()) else {
                return;
            };
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default();
            let chat = json!({
                "from": shorten(&from, MAX_NAME_CHARS),
                "text": shorten(text, MAX_TEXT_CHARS),
                "at": at,
            });
            broadcast(&session, &Frame::dispatch("CHAT", chat)).await;
        })
}

/// Sends to every connection (the sender included, so every page shows the same list in the same order).
async fn broadcast(session: &Session, frame: &Frame) {
    if let Some(mesa) = session.server() {
        let _ = mesa.send(frame, &Target::all()).await;
    }
}

/// At most `max` characters of `text`.
fn shorten(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The demo's routes (`GET /demo`, `GET /demo/mesa-client.js`), to merge into the application. The page
/// connects to the gateway at `gateway_path` on the host it was loaded from.
pub(crate) fn router(gateway_path: &str) -> Router {
    let gateway = serde_json::Value::from(gateway_path).to_string();
    let page: Arc<str> = PAGE.replace("__MESA_GATEWAY_PATH__", &gateway).into();
    Router::new()
        .route(
            DEMO_PATH,
            get(move || {
                let page = page.clone();
                async move { asset("text/html; charset=utf-8", page.to_string()) }
            }),
        )
        .route(
            "/demo/mesa-client.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT_JS.to_string()) }),
        )
}

/// An embedded file with its type; not cached, so a newer binary's page is what a reload shows.
fn asset(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_paths_that_collide_with_the_demo_are_refused() {
        assert!(check_gateway_path("/").is_ok());
        assert!(check_gateway_path("/ws").is_ok());
        assert!(check_gateway_path("/demos").is_ok());
        assert!(check_gateway_path("/demo").is_err());
        assert!(check_gateway_path("/demo/").is_err());
        assert!(check_gateway_path("/demo/ws").is_err());
    }

    #[test]
    fn presence_lists_each_user_once_sorted() {
        let presence = Presence::default();
        let id = |n| ConnectionId::new(mesa_server::NodeId(1), n);
        presence.join(id(1), "bob".into());
        presence.join(id(2), "ada".into());
        presence.join(id(3), "bob".into());
        assert_eq!(presence.frame().d, json!({"online": ["ada", "bob"]}));
        assert!(presence.leave(id(1)));
        assert!(!presence.leave(id(1)));
        assert_eq!(presence.frame().d, json!({"online": ["ada", "bob"]}));
        assert!(presence.leave(id(3)));
        assert_eq!(presence.frame().d, json!({"online": ["ada"]}));
    }

    #[test]
    fn page_names_the_gateway_path_and_loads_the_client() {
        assert!(PAGE.contains("__MESA_GATEWAY_PATH__"));
        assert!(PAGE.contains("/demo/mesa-client.js"));
        assert!(CLIENT_JS.contains("export default class MesaClient"));
    }
}
