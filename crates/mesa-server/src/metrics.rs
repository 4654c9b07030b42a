//! Counters for what the server did, readable as a snapshot or as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mesa_protocol::CloseCode;

/// Why an upgrade request was refused before it became a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a valid WebSocket upgrade (HTTP 400 or 426).
    BadRequest,
    /// `Origin` not in `allowed_origins` (HTTP 403).
    Origin,
    /// `limits.max_connections` reached (HTTP 503).
    Capacity,
    /// The server is shutting down (HTTP 503).
    ShuttingDown,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::BadRequest,
        Rejection::Origin,
        Rejection::Capacity,
        Rejection::ShuttingDown,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::Origin => "origin",
            Rejection::Capacity => "capacity",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

/// Live counters. Read them with [`Metrics::snapshot`] or [`Metrics::render_prometheus`].
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    rejections: [AtomicU64; 4],
    frames_received: AtomicU64,
    frames_sent: AtomicU64,
    server_closes: [AtomicU64; CloseCode::ALL.len()],
    peer_closes: AtomicU64,
    unknown_opcodes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MetricsSnapshot {
    /// WebSocket connections open now.
    pub connections_open: u64,
    /// WebSocket connections accepted since start.
    pub connections_total: u64,
    /// Refused upgrades by reason label.
    pub rejections: Vec<(&'static str, u64)>,
    /// Frames received from clients.
    pub frames_received: u64,
    /// Frames written to client sockets.
    pub frames_sent: u64,
    /// Connections the server closed, by close code (codes with a zero count are left out).
    pub server_closes: Vec<(u16, u64)>,
    /// Connections the client closed or dropped.
    pub peer_closes: u64,
    /// Frames ignored because of an unknown or client-forbidden opcode.
    pub unknown_opcodes: u64,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self, by_server: Option<u16>) {
        self.connections_open.fetch_sub(1, Relaxed);
        match by_server.and_then(CloseCode::from_code) {
            Some(code) => {
                if let Some(i) = CloseCode::ALL.iter().position(|c| *c == code) {
                    self.server_closes[i].fetch_add(1, Relaxed);
                }
            }
            None if by_server.is_none() => {
                self.peer_closes.fetch_add(1, Relaxed);
            }
            None => {}
        }
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.rejections[why.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn frame_received(&self) {
        self.frames_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn frames_sent(&self, n: usize) {
        self.frames_sent.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn unknown_opcode(&self) {
        self.unknown_opcodes.fetch_add(1, Relaxed);
    }

    /// WebSocket connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections_open: self.connections_open.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            rejections: Rejection::ALL
                .iter()
                .map(|r| (r.label(), self.rejections[r.index()].load(Relaxed)))
                .collect(),
            frames_received: self.frames_received.load(Relaxed),
            frames_sent: self.frames_sent.load(Relaxed),
            server_closes: CloseCode::ALL
                .iter()
                .zip(&self.server_closes)
                .map(|(code, n)| (code.code(), n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            peer_closes: self.peer_closes.load(Relaxed),
            unknown_opcodes: self.unknown_opcodes.load(Relaxed),
        }
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE mesa_connections_open gauge\nmesa_connections_open {}",
            s.connections_open
        );
        let _ = writeln!(
            out,
            "# TYPE mesa_connections_total counter\nmesa_connections_total {}",
            s.connections_total
        );
        let _ = writeln!(out, "# TYPE mesa_upgrades_rejected_total counter");
        for (label, n) in &s.rejections {
            let _ = writeln!(
                out,
                "mesa_upgrades_rejected_total{{reason=\"{label}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# TYPE mesa_frames_received_total counter\nmesa_frames_received_total {}",
            s.frames_received
        );
        let _ = writeln!(
            out,
            "# TYPE mesa_frames_sent_total counter\nmesa_frames_sent_total {}",
            s.frames_sent
        );
        let _ = writeln!(out, "# TYPE mesa_server_closes_total counter");
        for (code, n) in &s.server_closes {
            let _ = writeln!(out, "mesa_server_closes_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# TYPE mesa_peer_closes_total counter\nmesa_peer_closes_total {}",
            s.peer_closes
        );
        let _ = writeln!(
            out,
            "# TYPE mesa_unknown_opcodes_total counter\nmesa_unknown_opcodes_total {}",
            s.unknown_opcodes
        );
        out
    }
}
