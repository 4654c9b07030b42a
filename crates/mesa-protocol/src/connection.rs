//! The per-connection protocol rules, without I/O and without a clock of their own.
//!
//! A [`ConnectionState`] (one per WebSocket connection; the server's session, which can outlive a socket, is
//! `mesa_server::Session`) is fed the decoded frames a client sends and the current time, and answers what the
//! connection must do: reply, hand a dispatch to the application, send a heartbeat, or close with a code.
//! [`ConnectionState::next_deadline`] says when to call [`ConnectionState::on_timeout`] next. The server's connection task is the
//! only caller; tests drive it on a virtual clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::rate_limit::{RateLimit, TokenBucket};
use crate::{CloseCode, Frame, OpCode};

/// The event type of the Mesa 1.5 version handshake dispatch.
pub const CLIENT_VERSION_EVENT: &str = "CLIENT_VERSION";

/// Heartbeat timing: the server sends op 1 every `interval` and closes after more than `max_attempts`
/// consecutive unanswered beats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatRules {
    /// Time between two op 1 frames.
    pub interval: Duration,
    /// Unanswered beats tolerated in a row; the next one closes the connection with 4009.
    pub max_attempts: u32,
}

/// The rules one connection follows, derived from the server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRules {
    /// Heartbeats, or `None` when they are off.
    pub heartbeat: Option<HeartbeatRules>,
    /// Time a client has to authenticate. Enforced (close 4006) only when `authentication_required`.
    pub authentication_timeout: Duration,
    /// Dispatches before authentication are refused (close 4003) and the timeout is enforced.
    pub authentication_required: bool,
    /// The inbound rate limit, or `None` for none (a limit with a zero field is none too).
    pub rate_limit: Option<RateLimit>,
    /// With `enforce_equal_versions`: the version a client must announce in `CLIENT_VERSION` (shared by
    /// every connection's state, not copied into each).
    pub required_client_version: Option<Arc<str>>,
    /// How often a client may send op 2, apart from the inbound rate limit: each op 2 runs the application's
    /// authentication check (often a call to an auth backend), so one connection must not be able to drive
    /// that backend at the general rate limit. `None` for no limit. Exceeding it closes with 4008.
    pub authentication_attempts: Option<AttemptLimit>,
}

/// A token bucket for rare events (authentication attempts): `burst` at once, one more every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimit {
    /// Attempts allowed back to back.
    pub burst: u32,
    /// Time to earn one more attempt.
    pub every: Duration,
}

#[derive(Debug, Clone)]
struct AttemptBucket {
    limit: AttemptLimit,
    tokens: f64,
    updated: Instant,
}

impl AttemptBucket {
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = now;
        let every = self.limit.every.as_secs_f64().max(1e-9);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / every).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionPhase {
    /// Hello was sent; the client has not authenticated (it may never need to).
    HelloSent,
    /// The client authenticated.
    Authenticated,
    /// The session decided to close; it accepts nothing more.
    Closing(CloseCode),
}

/// What an inbound frame asks the connection to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// Op 11: the client answered a heartbeat. Nothing to send.
    HeartbeatAck {
        /// The frame's `s`: the last sequence number the client processed (resumable sessions).
        ack: Option<u64>,
    },
    /// Op 1 from the client (extension): answer with op 11.
    HeartbeatRequest {
        /// The frame's `s`, as for [`Inbound::HeartbeatAck`].
        ack: Option<u64>,
    },
    /// Op 2: run the application's authentication check on `data` (the whole `d`).
    Authenticate {
        /// The credentials as the client sent them.
        data: Value,
        /// Mesa 1.5 `shouldSync` (default `true`): whether stored messages should be redelivered.
        should_sync: bool,
        /// `d.resumable` (extension, default `false`): the client asks for a resumable session.
        resumable: bool,
    },
    /// Op 6 (extension): run the authentication check on `data` (the whole `d`), then resume `session`
    /// after `seq`.
    Resume {
        /// The credentials as the client sent them (with `session_id` and `seq` in them).
        data: Value,
        /// `d.session_id`, unparsed.
        session: String,
        /// `d.seq`: the last `s` the client processed.
        seq: u64,
    },
    /// The client announced the version the server requires.
    VersionAccepted,
    /// Op 0: hand the dispatch to the application.
    Dispatch(Frame),
    /// An opcode the client may not send or this protocol does not define; ignored, as Mesa 1.5 does.
    Ignored {
        /// The raw opcode.
        op: u64,
    },
    /// The frame breaks a rule: close the connection with this code.
    Close(CloseCode),
}

/// What a deadline asks the connection to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TimerAction {
    /// Send this op 1 frame.
    SendHeartbeat(Frame),
    /// Close the connection with this code.
    Close(CloseCode),
}

#[derive(Debug, Clone)]
struct HeartbeatState {
    rules: HeartbeatRules,
    next_beat: Instant,
    sent_any: bool,
    acked: bool,
    attempts: u32,
}

/// One connection's protocol state. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ConnectionState {
    phase: ConnectionPhase,
    heartbeat: Option<HeartbeatState>,
    authentication_deadline: Option<Instant>,
    authentication_required: bool,
    rate: Option<TokenBucket>,
    required_client_version: Option<Arc<str>>,
    authentication_timeout: Duration,
    authentication_attempts: Option<AttemptBucket>,
}

impl ConnectionState {
    /// A session whose Hello was sent at `now`.
    pub fn new(rules: &ConnectionRules, now: Instant) -> ConnectionState {
        ConnectionState {
            phase: ConnectionPhase::HelloSent,
            heartbeat: rules.heartbeat.map(|hb| HeartbeatState {
                rules: hb,
                next_beat: now + hb.interval,
                sent_any: false,
                acked: false,
                attempts: 0,
            }),
            authentication_deadline: rules
                .authentication_required
                .then(|| now + rules.authentication_timeout),
            authentication_required: rules.authentication_required,
            rate: rules
                .rate_limit
                .filter(RateLimit::is_enabled)
                .map(|limit| TokenBucket::new(limit, now)),
            required_client_version: rules.required_client_version.clone(),
            authentication_timeout: rules.authentication_timeout,
            authentication_attempts: rules
                .authentication_attempts
                .filter(|limit| limit.burst > 0)
                .map(|limit| AttemptBucket {
                    limit,
                    tokens: f64::from(limit.burst),
                    updated: now,
                }),
        }
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> ConnectionPhase {
        self.phase
    }

    /// Whether the client authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.phase == ConnectionPhase::Authenticated
    }

    /// The earliest time at which [`ConnectionState::on_timeout`] has something to do, or `None`.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let ConnectionPhase::Closing(_) = self.phase {
            return None;
        }
        let beat = self.heartbeat.as_ref().map(|hb| hb.next_beat);
        match (beat, self.authentication_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the deadlines that passed at `now`. Call it again until it returns `None`.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TimerAction> {
        if let ConnectionPhase::Closing(_) = self.phase {
            return None;
        }
        if self.authentication_deadline.is_some_and(|at| now >= at) {
            return Some(self.close(CloseCode::AuthenticationTimeout));
        }
        let hb = self.heartbeat.as_mut()?;
        if now < hb.next_beat {
            return None;
        }
        hb.next_beat += hb.rules.interval;
        if hb.next_beat <= now {
            // The caller fell behind (a stalled task); do not fire a burst of beats to catch up.
            hb.next_beat = now + hb.rules.interval;
        }
        // Mesa 1.5: a beat not answered since the previous one counts an attempt; beyond the maximum, close.
        if hb.sent_any && !hb.acked {
            hb.attempts += 1;
            if hb.attempts > hb.rules.max_attempts {
                return Some(self.close(CloseCode::HeartbeatTimeout));
            }
        } else {
            hb.attempts = 0;
        }
        hb.sent_any = true;
        hb.acked = false;
        let d = if hb.attempts == 0 {
            json!({})
        } else {
            json!({ "tries": hb.attempts, "max": hb.rules.max_attempts })
        };
        Some(TimerAction::SendHeartbeat(Frame::new(OpCode::Heartbeat, d)))
    }

    /// Classifies a frame the client sent at `now`.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) -> Inbound {
        if let ConnectionPhase::Closing(code) = self.phase {
            return Inbound::Close(code);
        }
        if let Some(bucket) = self.rate.as_mut() {
            if !bucket.try_take(now) {
                return Inbound::Close(self.close_code(CloseCode::RateLimited));
            }
        }
        match frame.opcode() {
            Some(OpCode::HeartbeatAck) => {
                if let Some(hb) = self.heartbeat.as_mut() {
                    hb.acked = true;
                    hb.attempts = 0;
                }
                Inbound::HeartbeatAck { ack: frame.s }
            }
            Some(OpCode::Heartbeat) => Inbound::HeartbeatRequest { ack: frame.s },
            Some(OpCode::Authenticate) => {
                if let Some(bucket) = self.authentication_attempts.as_mut() {
                    if !bucket.try_take(now) {
                        return Inbound::Close(self.close_code(CloseCode::RateLimited));
                    }
                }
                let should_sync = frame
                    .d
                    .get("shouldSync")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let resumable = frame
                    .d
                    .get("resumable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Inbound::Authenticate {
                    data: frame.d.into_value(),
                    should_sync,
                    resumable,
                }
            }
            Some(OpCode::Resume) => {
                if let Some(bucket) = self.authentication_attempts.as_mut() {
                    if !bucket.try_take(now) {
                        return Inbound::Close(self.close_code(CloseCode::RateLimited));
                    }
                }
                let session = frame.d.get("session_id").and_then(Value::as_str);
                let seq = frame.d.get("seq").and_then(Value::as_u64);
                match (session, seq) {
                    (Some(session), Some(seq)) => Inbound::Resume {
                        session: session.to_string(),
                        seq,
                        data: frame.d.into_value(),
                    },
                    // A resume without its two fields is a malformed frame.
                    _ => Inbound::Close(self.close_code(CloseCode::DecodeError)),
                }
            }
            Some(OpCode::Dispatch) => {
                if frame.t.as_deref() == Some(CLIENT_VERSION_EVENT) {
                    if let Some(required) = &self.required_client_version {
                        let announced = frame.d.get("v").and_then(Value::as_str);
                        return if announced == Some(&**required) {
                            Inbound::VersionAccepted
                        } else {
                            Inbound::Close(self.close_code(CloseCode::VersionMismatch))
                        };
                    }
                }
                if self.authentication_required && !self.is_authenticated() {
                    return Inbound::Close(self.close_code(CloseCode::NotAuthenticated));
                }
                Inbound::Dispatch(frame)
            }
            _ => Inbound::Ignored { op: frame.op },
        }
    }

    /// Records a successful authentication: the authentication deadline no longer applies.
    pub fn authenticated(&mut self) {
        if !matches!(self.phase, ConnectionPhase::Closing(_)) {
            self.phase = ConnectionPhase::Authenticated;
            self.authentication_deadline = None;
        }
    }

    /// Records that an authentication check refused the client while the connection stays open (op 9): a
    /// connection that was authenticated is no longer, and when authentication is required the client has a
    /// fresh authentication timeout from `now` to succeed.
    pub fn authentication_refused(&mut self, now: Instant) {
        if matches!(self.phase, ConnectionPhase::Closing(_)) {
            return;
        }
        self.phase = ConnectionPhase::HelloSent;
        if self.authentication_required && self.authentication_deadline.is_none() {
            self.authentication_deadline = Some(now + self.authentication_timeout);
        }
    }

    /// Records that the connection is closing with `code`; the session then accepts nothing more.
    pub fn close(&mut self, code: CloseCode) -> TimerAction {
        TimerAction::Close(self.close_code(code))
    }

    fn close_code(&mut self, code: CloseCode) -> CloseCode {
        self.phase = ConnectionPhase::Closing(code);
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ConnectionRules {
        ConnectionRules {
            heartbeat: Some(HeartbeatRules {
                interval: Duration::from_millis(1000),
                max_attempts: 2,
            }),
            authentication_timeout: Duration::from_millis(2000),
            authentication_required: false,
            rate_limit: None,
            required_client_version: None,
            authentication_attempts: None,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn ack() -> Frame {
        Frame::new(OpCode::HeartbeatAck, Value::Null)
    }

    #[test]
    fn silent_client_is_closed_after_max_attempts_plus_one_beat() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        assert_eq!(s.next_deadline(), Some(ms(t0, 1000)));
        assert_eq!(s.on_timeout(ms(t0, 999)), None);
        let first = s.on_timeout(ms(t0, 1000));
        assert_eq!(
            first,
            Some(TimerAction::SendHeartbeat(Frame::new(
                OpCode::Heartbeat,
                json!({})
            )))
        );
        let second = s.on_timeout(ms(t0, 2000));
        assert_eq!(
            second,
            Some(TimerAction::SendHeartbeat(Frame::new(
                OpCode::Heartbeat,
                json!({"tries": 1, "max": 2})
            )))
        );
        assert!(matches!(
            s.on_timeout(ms(t0, 3000)),
            Some(TimerAction::SendHeartbeat(_))
        ));
        assert_eq!(
            s.on_timeout(ms(t0, 4000)),
            Some(TimerAction::Close(CloseCode::HeartbeatTimeout))
        );
        assert_eq!(
            s.phase(),
            ConnectionPhase::Closing(CloseCode::HeartbeatTimeout)
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn answering_client_is_never_closed() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        for beat in 1..=50u64 {
            let action = s.on_timeout(ms(t0, beat * 1000));
            assert_eq!(
                action,
                Some(TimerAction::SendHeartbeat(Frame::new(
                    OpCode::Heartbeat,
                    json!({})
                )))
            );
            assert_eq!(
                s.on_frame(ack(), ms(t0, beat * 1000 + 10)),
                Inbound::HeartbeatAck { ack: None }
            );
        }
    }

    #[test]
    fn a_late_answer_resets_the_attempts() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        s.on_timeout(ms(t0, 1000));
        s.on_timeout(ms(t0, 2000)); // tries 1
        s.on_timeout(ms(t0, 3000)); // tries 2
        s.on_frame(ack(), ms(t0, 3500));
        assert_eq!(
            s.on_timeout(ms(t0, 4000)),
            Some(TimerAction::SendHeartbeat(Frame::new(
                OpCode::Heartbeat,
                json!({})
            )))
        );
    }

    #[test]
    fn a_stalled_caller_does_not_burst_beats() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        assert!(s.on_timeout(ms(t0, 10_000)).is_some());
        assert_eq!(s.on_timeout(ms(t0, 10_000)), None);
        assert_eq!(s.next_deadline(), Some(ms(t0, 11_000)));
    }

    #[test]
    fn authentication_timeout_is_enforced_only_when_required() {
        let t0 = Instant::now();
        let mut optional = ConnectionState::new(
            &ConnectionRules {
                heartbeat: None,
                ..rules()
            },
            t0,
        );
        assert_eq!(optional.next_deadline(), None);
        assert_eq!(optional.on_timeout(ms(t0, 60_000)), None);

        let required_rules = ConnectionRules {
            heartbeat: None,
            authentication_required: true,
            ..rules()
        };
        let mut required = ConnectionState::new(&required_rules, t0);
        assert_eq!(required.next_deadline(), Some(ms(t0, 2000)));
        assert_eq!(
            required.on_timeout(ms(t0, 2000)),
            Some(TimerAction::Close(CloseCode::AuthenticationTimeout))
        );

        let mut in_time = ConnectionState::new(&required_rules, t0);
        in_time.authenticated();
        assert_eq!(in_time.next_deadline(), None);
        assert_eq!(in_time.on_timeout(ms(t0, 60_000)), None);
    }

    #[test]
    fn dispatch_before_authentication_when_required_is_refused() {
        let t0 = Instant::now();
        let required = ConnectionRules {
            authentication_required: true,
            ..rules()
        };
        let mut s = ConnectionState::new(&required, t0);
        let dispatch = Frame::dispatch("MSG", json!({}));
        assert_eq!(
            s.on_frame(dispatch.clone(), t0),
            Inbound::Close(CloseCode::NotAuthenticated)
        );

        let mut s = ConnectionState::new(&required, t0);
        s.authenticated();
        assert_eq!(
            s.on_frame(dispatch.clone(), t0),
            Inbound::Dispatch(dispatch.clone())
        );

        let mut optional = ConnectionState::new(&rules(), t0);
        assert_eq!(
            optional.on_frame(dispatch.clone(), t0),
            Inbound::Dispatch(dispatch)
        );
    }

    #[test]
    fn authentication_frames_carry_should_sync() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        let auth = Frame::new(OpCode::Authenticate, json!({"token": "x"}));
        assert_eq!(
            s.on_frame(auth, t0),
            Inbound::Authenticate {
                data: json!({"token": "x"}),
                should_sync: true,
                resumable: false,
            }
        );
        let auth = Frame::new(
            OpCode::Authenticate,
            json!({"token": "x", "shouldSync": false}),
        );
        assert!(matches!(
            s.on_frame(auth, t0),
            Inbound::Authenticate {
                should_sync: false,
                ..
            }
        ));
    }

    #[test]
    fn resumable_sessions_and_acknowledgements() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        let auth = Frame::new(
            OpCode::Authenticate,
            json!({"token": "x", "resumable": true}),
        );
        assert!(matches!(
            s.on_frame(auth, t0),
            Inbound::Authenticate {
                resumable: true,
                ..
            }
        ));
        let resume = Frame::new(
            OpCode::Resume,
            json!({"token": "x", "session_id": "ab", "seq": 7}),
        );
        assert_eq!(
            s.on_frame(resume, t0),
            Inbound::Resume {
                data: json!({"token": "x", "session_id": "ab", "seq": 7}),
                session: "ab".into(),
                seq: 7,
            }
        );
        let mut ack = Frame::new(OpCode::HeartbeatAck, json!({}));
        ack.s = Some(12);
        assert_eq!(s.on_frame(ack, t0), Inbound::HeartbeatAck { ack: Some(12) });
        // A resume without `seq` is malformed.
        let broken = Frame::new(OpCode::Resume, json!({"session_id": "ab"}));
        assert_eq!(
            s.on_frame(broken, t0),
            Inbound::Close(CloseCode::DecodeError)
        );
    }

    #[test]
    fn version_rule() {
        let t0 = Instant::now();
        let versioned = ConnectionRules {
            required_client_version: Some("1.2.0".into()),
            ..rules()
        };
        let good = Frame::dispatch(CLIENT_VERSION_EVENT, json!({"v": "1.2.0"}));
        let bad = Frame::dispatch(CLIENT_VERSION_EVENT, json!({"v": "1.1.0"}));
        assert_eq!(
            ConnectionState::new(&versioned, t0).on_frame(good.clone(), t0),
            Inbound::VersionAccepted
        );
        assert_eq!(
            ConnectionState::new(&versioned, t0).on_frame(bad, t0),
            Inbound::Close(CloseCode::VersionMismatch)
        );
        // Without the rule, CLIENT_VERSION is an ordinary dispatch.
        assert_eq!(
            ConnectionState::new(&rules(), t0).on_frame(good.clone(), t0),
            Inbound::Dispatch(good)
        );
    }

    #[test]
    fn unknown_and_server_only_opcodes_are_ignored() {
        let t0 = Instant::now();
        let mut s = ConnectionState::new(&rules(), t0);
        for op in [3u64, 5, 10, 22, 1000] {
            let frame = Frame {
                op,
                ..Frame::new(OpCode::Dispatch, Value::Null)
            };
            assert_eq!(s.on_frame(frame, t0), Inbound::Ignored { op });
        }
        let ping = Frame::new(OpCode::Heartbeat, Value::Null);
        assert_eq!(
            s.on_frame(ping, t0),
            Inbound::HeartbeatRequest { ack: None }
        );
    }

    #[test]
    fn a_zero_rate_limit_is_no_limit() {
        let t0 = Instant::now();
        for limit in [
            RateLimit {
                burst: 0,
                per_second: 10,
            },
            RateLimit {
                burst: 10,
                per_second: 0,
            },
        ] {
            let mut s = ConnectionState::new(
                &ConnectionRules {
                    rate_limit: Some(limit),
                    ..rules()
                },
                t0,
            );
            for _ in 0..1000 {
                assert_eq!(s.on_frame(ack(), t0), Inbound::HeartbeatAck { ack: None });
            }
        }
    }

    #[test]
    fn flood_is_closed_by_the_rate_limit() {
        let t0 = Instant::now();
        let limited = ConnectionRules {
            rate_limit: Some(RateLimit {
                burst: 5,
                per_second: 5,
            }),
            ..rules()
        };
        let mut s = ConnectionState::new(&limited, t0);
        for _ in 0..5 {
            assert!(matches!(
                s.on_frame(ack(), t0),
                Inbound::HeartbeatAck { ack: None }
            ));
        }
        assert_eq!(
            s.on_frame(ack(), t0),
            Inbound::Close(CloseCode::RateLimited)
        );
        assert_eq!(
            s.on_frame(ack(), ms(t0, 10_000)),
            Inbound::Close(CloseCode::RateLimited)
        );
    }

    fn op2() -> Frame {
        Frame::new(OpCode::Authenticate, json!({"token": "t"}))
    }

    #[test]
    fn authentication_attempts_are_limited_apart_from_the_rate_limit() {
        let t0 = Instant::now();
        let limited = ConnectionRules {
            authentication_attempts: Some(AttemptLimit {
                burst: 2,
                every: Duration::from_secs(10),
            }),
            ..rules()
        };
        let mut s = ConnectionState::new(&limited, t0);
        assert!(matches!(
            s.on_frame(op2(), t0),
            Inbound::Authenticate { .. }
        ));
        assert!(matches!(
            s.on_frame(op2(), ms(t0, 1)),
            Inbound::Authenticate { .. }
        ));
        assert_eq!(
            s.on_frame(op2(), ms(t0, 2)),
            Inbound::Close(CloseCode::RateLimited)
        );
        // One attempt is earned back per interval.
        let mut s = ConnectionState::new(&limited, t0);
        s.on_frame(op2(), t0);
        s.on_frame(op2(), t0);
        assert!(matches!(
            s.on_frame(op2(), ms(t0, 10_001)),
            Inbound::Authenticate { .. }
        ));
    }

    #[test]
    fn a_refused_reauthentication_leaves_the_connection_unauthenticated() {
        let t0 = Instant::now();
        let required = ConnectionRules {
            authentication_required: true,
            ..rules()
        };
        let mut s = ConnectionState::new(&required, t0);
        s.authenticated();
        assert!(s.is_authenticated());
        s.authentication_refused(ms(t0, 5000));
        assert_eq!(s.phase(), ConnectionPhase::HelloSent);
        // Dispatches are refused again, and a new authentication deadline runs from the refusal.
        assert_eq!(
            s.on_frame(Frame::dispatch("A", json!({})), ms(t0, 5001)),
            Inbound::Close(CloseCode::NotAuthenticated)
        );
        let quiet = ConnectionRules {
            heartbeat: None,
            ..required
        };
        let mut s = ConnectionState::new(&quiet, t0);
        s.authenticated();
        assert_eq!(s.next_deadline(), None);
        s.authentication_refused(ms(t0, 5000));
        assert_eq!(s.next_deadline(), Some(ms(t0, 7000)));
        assert_eq!(
            (0..3).find_map(|_| match s.on_timeout(ms(t0, 7000)) {
                Some(TimerAction::Close(code)) => Some(code),
                _ => None,
            }),
            Some(CloseCode::AuthenticationTimeout)
        );
    }
}
