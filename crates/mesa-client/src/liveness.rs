//! Dead-server detection, without I/O and without a clock of its own.
//!
//! A TCP connection whose peer vanished (a crashed host, a dropped NAT mapping) can stay "open" for hours:
//! reads simply never complete. The client therefore expects to *hear* from the server regularly and treats
//! silence as death:
//!
//! - When the Hello advertises `c_heartbeat_interval`, the server sends op 1 at that cadence (Mesa 1.5 and
//!   this project's server both do, whether or not the client answers). The client expects some frame
//!   within `interval + slack` of the previous one and sends nothing extra. (It does not send op 1 itself:
//!   a Mesa 1.5 server does not answer it and would hand it to the application as a message.)
//! - When the Hello advertises no heartbeat, the client sends a WebSocket Ping every `ping_interval` (every
//!   server's WebSocket layer answers with a Pong) and expects some frame within `ping_interval + slack`.
//!   With no ping interval configured there is no detection at all: a documented limitation.
//!
//! Any inbound message (text, ping, pong) counts as hearing from the server.

use std::time::{Duration, Instant};

/// How the client probes the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The server sends heartbeats on its own every `interval`.
    ServerHeartbeat {
        /// The advertised `c_heartbeat_interval`.
        interval: Duration,
    },
    /// The client sends a WebSocket Ping every `interval`.
    ClientPing {
        /// Time between two pings.
        interval: Duration,
    },
}

/// What a deadline asks the connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessAction {
    /// Send a WebSocket Ping.
    Ping,
    /// Nothing arrived for `silent_for`: the server is considered dead; drop the connection and reconnect.
    Dead {
        /// Time since the last frame from the server.
        silent_for: Duration,
    },
}

/// The dead-peer detector of one connection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Liveness {
    probe: Probe,
    timeout: Duration,
    last_heard: Instant,
    next_ping: Option<Instant>,
}

/// The default slack: half the interval, at least one second (scheduling and network jitter on short
/// intervals must not look like death).
pub fn default_slack(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_secs(1))
}

impl Liveness {
    /// A detector for a connection whose Hello arrived at `now`; silence longer than `interval + slack` is death.
    pub fn new(probe: Probe, slack: Duration, now: Instant) -> Liveness {
        let interval = match probe {
            Probe::ServerHeartbeat { interval } | Probe::ClientPing { interval } => interval,
        };
        Liveness {
            probe,
            timeout: interval.saturating_add(slack),
            last_heard: now,
            next_ping: match probe {
                Probe::ClientPing { interval } => Some(now + interval),
                Probe::ServerHeartbeat { .. } => None,
            },
        }
    }

    /// The probe in use.
    pub fn probe(&self) -> Probe {
        self.probe
    }

    /// The silence tolerated before the server is declared dead.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records that something arrived from the server at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When [`Liveness::poll`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let dead_at = self.last_heard + self.timeout;
        match self.next_ping {
            Some(ping) => ping.min(dead_at),
            None => dead_at,
        }
    }

    /// Runs the deadlines that passed at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<LivenessAction> {
        let silent_for = now.saturating_duration_since(self.last_heard);
        if silent_for >= self.timeout {
            return Some(LivenessAction::Dead { silent_for });
        }
        if let (Some(at), Probe::ClientPing { interval }) = (self.next_ping, self.probe) {
            if now >= at {
                // A stalled caller does not get a burst of pings.
                self.next_ping = Some((at + interval).max(now + interval / 2));
                return Some(LivenessAction::Ping);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn silent_server_is_dead_after_interval_plus_slack() {
        let t0 = Instant::now();
        let probe = Probe::ServerHeartbeat {
            interval: 10 * SECOND,
        };
        let mut live = Liveness::new(probe, 5 * SECOND, t0);
        assert_eq!(live.next_deadline(), ms(t0, 15_000));
        assert_eq!(live.poll(ms(t0, 14_999)), None);
        assert_eq!(
            live.poll(ms(t0, 15_000)),
            Some(LivenessAction::Dead {
                silent_for: 15 * SECOND
            })
        );
    }

    #[test]
    fn heartbeats_keep_the_server_alive() {
        let t0 = Instant::now();
        let probe = Probe::ServerHeartbeat { interval: SECOND };
        let mut live = Liveness::new(probe, SECOND / 2, t0);
        for beat in 1..100u64 {
            assert_eq!(live.poll(ms(t0, beat * 1000)), None);
            live.heard(ms(t0, beat * 1000));
            assert_eq!(live.next_deadline(), ms(t0, beat * 1000 + 1500));
        }
        // A heartbeat that is late but within the slack is fine; an old timestamp does not move time back.
        live.heard(ms(t0, 10));
        assert_eq!(live.poll(ms(t0, 99_000 + 1400)), None);
    }

    #[test]
    fn client_pings_when_the_server_has_no_heartbeat() {
        let t0 = Instant::now();
        let mut live = Liveness::new(
            Probe::ClientPing {
                interval: 2 * SECOND,
            },
            SECOND,
            t0,
        );
        assert_eq!(live.next_deadline(), ms(t0, 2000));
        assert_eq!(live.poll(ms(t0, 2000)), Some(LivenessAction::Ping));
        assert_eq!(live.poll(ms(t0, 2000)), None);
        assert_eq!(live.next_deadline(), ms(t0, 3000)); // dead_at comes before the next ping
        live.heard(ms(t0, 2010)); // the pong
        assert_eq!(live.next_deadline(), ms(t0, 4000));
        assert_eq!(live.poll(ms(t0, 4000)), Some(LivenessAction::Ping));
        assert_eq!(
            live.poll(ms(t0, 5010)),
            Some(LivenessAction::Dead {
                silent_for: 3 * SECOND
            })
        );
    }

    #[test]
    fn stalled_caller_gets_one_ping_not_a_burst() {
        let t0 = Instant::now();
        let mut live = Liveness::new(Probe::ClientPing { interval: SECOND }, SECOND, t0);
        live.heard(ms(t0, 9000));
        assert_eq!(live.poll(ms(t0, 9000)), Some(LivenessAction::Ping));
        assert_eq!(live.poll(ms(t0, 9000)), None);
    }

    #[test]
    fn default_slack_is_half_the_interval_at_least_a_second() {
        assert_eq!(default_slack(10 * SECOND), 5 * SECOND);
        assert_eq!(default_slack(SECOND / 10), SECOND);
    }
}
