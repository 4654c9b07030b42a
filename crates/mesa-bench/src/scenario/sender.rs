//! The sender connection of the scenarios that send to user ids through a client: the conformance contract's
//! `SEND_TO` dispatch (`{"op":0,"t":"SEND_TO","d":{"to":[ids],"payload":<p>}}`, delivered to those users as
//! `DIRECT`), with Mesa 1.5's message options `o` when asked (`{"sync":false}`: volatile).

use std::time::Duration;

use crate::conn::{Conn, Connector, Incoming, OpenError};
use crate::scan::{self, Kind};

/// The dispatch type the sender sends.
pub const SEND_TO: &str = "SEND_TO";

/// The message options that make a send volatile.
pub const VOLATILE: &str = r#","o":{"sync":false}"#;

/// The dispatch type of the barrier (see [`SendToConn::barrier`]).
const ECHO: &str = "ECHO";

/// A connection that sends `SEND_TO` dispatches (authenticated, plain: never on a resumable session).
#[derive(Debug)]
pub struct SendToConn {
    /// The connection.
    pub conn: Conn,
    /// `,"o":{"sync":false}` or nothing.
    options: &'static str,
    /// The close code when the server ended it (`Some(None)`: dropped, or a write failed).
    pub closed: Option<Option<u16>>,
}

impl SendToConn {
    /// Opens it on `connector`'s node, authenticated as `user`; every send volatile when `volatile`.
    pub async fn open(
        connector: &Connector,
        user: &str,
        volatile: bool,
    ) -> Result<SendToConn, OpenError> {
        let mut conn = connector.open().await?;
        conn.authenticate(&format!("user:{user}")).await?;
        Ok(SendToConn {
            conn,
            options: if volatile { VOLATILE } else { "" },
            closed: None,
        })
    }

    /// Queues one `SEND_TO` of `payload` (JSON) to `users`; `options` overrides the sender's message options
    /// (`Some("")`: none). `false` when the connection is gone.
    pub async fn send<'a>(
        &mut self,
        users: impl Iterator<Item = &'a str>,
        payload: &str,
        options: Option<&str>,
    ) -> bool {
        let to = serde_json::to_string(&users.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into());
        let options = options.unwrap_or(self.options);
        let frame =
            format!(r#"{{"op":0,"t":"{SEND_TO}","d":{{"to":{to},"payload":{payload}}}{options}}}"#);
        let ok = self.conn.send(frame).await.is_ok();
        if !ok {
            self.closed.get_or_insert(None);
        }
        ok
    }

    /// Writes what is queued. `false` when the connection is gone.
    pub async fn flush(&mut self) -> bool {
        let ok = self.conn.flush().await.is_ok();
        if !ok {
            self.closed.get_or_insert(None);
        }
        ok
    }

    /// Reads (answering heartbeats) until `period` passes or the server ends the connection.
    pub async fn idle(&mut self, period: Duration) {
        if self.closed.is_some() {
            tokio::time::sleep(period).await;
            return;
        }
        let _ = tokio::time::timeout(period, async {
            loop {
                if let Incoming::Closed(code) = self.conn.recv().await {
                    self.closed = Some(code);
                    return;
                }
            }
        })
        .await;
    }

    /// Sends an `ECHO` and waits for it, at most `limit`: the server hands a connection's dispatches to the
    /// application one at a time, in order, so once the echo is back every `SEND_TO` before it was handled
    /// (its sends made). `false` when the echo did not come back.
    pub async fn barrier(&mut self, limit: Duration) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let frame = format!(r#"{{"op":0,"t":"{ECHO}","d":{{"barrier":1}}}}"#);
        if self.conn.send(frame).await.is_err() || !self.flush().await {
            self.closed.get_or_insert(None);
            return false;
        }
        let wait = async {
            loop {
                match self.conn.recv().await {
                    Incoming::Closed(code) => {
                        self.closed = Some(code);
                        return false;
                    }
                    Incoming::Text(text) => {
                        if scan::classify(&text) == Kind::Dispatch(ECHO) {
                            return true;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }
}
