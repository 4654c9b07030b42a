//! Token expiry on long connections: a session authenticated with a credential that expires (a JWT's `exp`,
//! a webhook answer's `exp`) is closed with [`TOKEN_EXPIRED`] at that time (plus `auth.leeway_ms`), unless the
//! client refreshed it before then with a new op 2 for the same identity (the library closes another
//! identity with 4005). A token checked once at the handshake and never again would otherwise outlive its
//! revocation for as long as the connection lasts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesa_server::{ConnectionId, Disconnection, Middleware, Session};

/// The close code of an expired session: "refresh the token and reconnect" (reconnect: yes, with new
/// credentials). In the application range (4000–4999) next to the protocol's own 4002–4010.
pub(crate) const TOKEN_EXPIRED: u16 = 4011;

/// The close reason that goes with [`TOKEN_EXPIRED`].
pub(crate) const TOKEN_EXPIRED_REASON: &str = "token expired: refresh the token and reconnect";

/// The expiry of every session that has one, and a timer task per such session.
#[derive(Debug, Clone)]
pub(crate) struct Expiry {
    inner: Arc<ExpiryInner>,
}

#[derive(Debug)]
struct ExpiryInner {
    /// Unix seconds at which each session's credential expires.
    deadlines: Mutex<HashMap<ConnectionId, u64>>,
    /// Tolerated clock skew (`auth.leeway_ms`), added to every deadline.
    leeway: Duration,
}

impl ExpiryInner {
    fn get(&self, id: ConnectionId) -> Option<u64> {
        let deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        deadlines.get(&id).copied()
    }

    fn remove(&self, id: ConnectionId) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        deadlines.remove(&id);
    }
}

impl Expiry {
    /// No session watched yet.
    pub(crate) fn new(leeway: Duration) -> Expiry {
        Expiry {
            inner: Arc::new(ExpiryInner {
                deadlines: Mutex::new(HashMap::new()),
                leeway,
            }),
        }
    }

    /// Records the expiry of the credential `session` just authenticated with (`None`: it does not expire),
    /// replacing the previous one: a refresh moves the deadline.
    pub(crate) fn watch(&self, session: &Session, expires_at: Option<u64>) {
        let id = session.connection_id();
        let mut deadlines = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match expires_at {
            None => {
                deadlines.remove(&id);
            }
            Some(exp) => {
                if deadlines.insert(id, exp).is_none() {
                    tokio::spawn(timer(self.inner.clone(), session.clone()));
                }
            }
        }
    }
}

/// Sleeps until the session's deadline; closes it then unless the deadline moved meanwhile.
async fn timer(inner: Arc<ExpiryInner>, session: Session) {
    let id = session.connection_id();
    loop {
        let Some(exp) = inner.get(id) else {
            return;
        };
        let at = UNIX_EPOCH + Duration::from_secs(exp) + inner.leeway;
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        match inner.get(id) {
            None => return,
            Some(later) if later > exp => continue,
            Some(_) => {
                inner.remove(id);
                tracing::info!(connection = %id, user = session.id(), "token expired: closing with {TOKEN_EXPIRED}");
                session.disconnect(TOKEN_EXPIRED, TOKEN_EXPIRED_REASON);
                return;
            }
        }
    }
}

impl Middleware for Expiry {
    fn on_disconnection(&self, session: &Session, _disconnection: &Disconnection) {
        self.inner.remove(session.connection_id());
    }
}
