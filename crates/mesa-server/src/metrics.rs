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
    other_server_closes: AtomicU64,
    peer_closes: AtomicU64,
    unknown_opcodes: AtomicU64,
    frames_undelivered: AtomicU64,
    handler_panics: AtomicU64,
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
    /// Connections the application closed with a code of its own (not a [`CloseCode`]).
    pub other_server_closes: u64,
    /// Connections the client closed or dropped.
    pub peer_closes: u64,
    /// Frames ignored because of an unknown or client-forbidden opcode.
    pub unknown_opcodes: u64,
    /// Frames that were queued for a session whose connection then dropped before they could be written.
    pub frames_undelivered: u64,
    /// Handlers or middleware that panicked (each closed its connection with 1011).
    pub handler_panics: u64,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self, by_server: Option<u16>) {
        self.connections_open.fetch_sub(1, Relaxed);
        let Some(code) = by_server else {
            self.peer_closes.fetch_add(1, Relaxed);
            return;
        };
        match CloseCode::ALL.iter().position(|c| c.code() == code) {
            Some(i) => self.server_closes[i].fetch_add(1, Relaxed),
            // A code of the application's own (`Session::disconnect`).
            None => self.other_server_closes.fetch_add(1, Relaxed),
        };
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

    pub(crate) fn frames_undelivered(&self, n: usize) {
        if n > 0 {
            self.frames_undelivered.fetch_add(n as u64, Relaxed);
        }
    }

    pub(crate) fn handler_panicked(&self) {
        self.handler_panics.fetch_add(1, Relaxed);
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
            other_server_closes: self.other_server_closes.load(Relaxed),
            peer_closes: self.peer_closes.load(Relaxed),
            unknown_opcodes: self.unknown_opcodes.load(Relaxed),
            frames_undelivered: self.frames_undelivered.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
        }
    }

    /// The counters in the Prometheus text exposition format, each with `# HELP` and `# TYPE`.
    pub fn render_prometheus(&self) -> String {
        fn metric(out: &mut String, name: &str, kind: &str, samples: &[(String, u64)]) {
            let _ = writeln!(out, "# HELP {name} {}", help(name));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        fn help(name: &str) -> &'static str {
            match name {
                "mesa_connections_open" => "WebSocket connections open now.",
                "mesa_connections_total" => "WebSocket connections opened since start.",
                "mesa_upgrades_rejected_total" => {
                    "Upgrade requests refused before the WebSocket opened, by reason."
                }
                "mesa_frames_received_total" => "Text frames received from clients.",
                "mesa_frames_sent_total" => "Frames written to clients.",
                "mesa_server_closes_total" => "Connections the server closed, by close code.",
                "mesa_peer_closes_total" => "Connections the client closed or that dropped.",
                "mesa_unknown_opcodes_total" => "Client frames with an opcode the server ignores.",
                "mesa_frames_undelivered_total" => {
                    "Frames still queued when their connection dropped without a close."
                }
                "mesa_handler_panics_total" => {
                    "Handlers or middleware that panicked (closed with 1011)."
                }
                _ => "Mesa server metric.",
            }
        }
        let one = |value: u64| [(String::new(), value)];
        let s = self.snapshot();
        let mut out = String::new();
        metric(
            &mut out,
            "mesa_connections_open",
            "gauge",
            &one(s.connections_open),
        );
        metric(
            &mut out,
            "mesa_connections_total",
            "counter",
            &one(s.connections_total),
        );
        let rejections: Vec<_> = s
            .rejections
            .iter()
            .map(|(label, n)| (format!("{{reason=\"{label}\"}}"), *n))
            .collect();
        metric(
            &mut out,
            "mesa_upgrades_rejected_total",
            "counter",
            &rejections,
        );
        metric(
            &mut out,
            "mesa_frames_received_total",
            "counter",
            &one(s.frames_received),
        );
        metric(
            &mut out,
            "mesa_frames_sent_total",
            "counter",
            &one(s.frames_sent),
        );
        let mut closes: Vec<_> = s
            .server_closes
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), *n))
            .collect();
        if s.other_server_closes > 0 {
            closes.push(("{code=\"other\"}".to_string(), s.other_server_closes));
        }
        metric(&mut out, "mesa_server_closes_total", "counter", &closes);
        metric(
            &mut out,
            "mesa_peer_closes_total",
            "counter",
            &one(s.peer_closes),
        );
        metric(
            &mut out,
            "mesa_unknown_opcodes_total",
            "counter",
            &one(s.unknown_opcodes),
        );
        metric(
            &mut out,
            "mesa_frames_undelivered_total",
            "counter",
            &one(s.frames_undelivered),
        );
        metric(
            &mut out,
            "mesa_handler_panics_total",
            "counter",
            &one(s.handler_panics),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_counted_by_who_closed_and_why() {
        let metrics = Metrics::default();
        for by_server in [None, Some(4009), Some(1002), Some(4321)] {
            metrics.connection_opened();
            metrics.connection_closed(by_server);
        }
        let s = metrics.snapshot();
        assert_eq!(
            (s.connections_open, s.connections_total, s.peer_closes),
            (0, 4, 1)
        );
        assert_eq!(s.server_closes, vec![(1002, 1), (4009, 1)]);
        assert_eq!(s.other_server_closes, 1);
        let text = metrics.render_prometheus();
        assert!(
            text.contains("# TYPE mesa_connections_open gauge\nmesa_connections_open 0\n"),
            "{text}"
        );
        // Every family has its HELP line right before its TYPE line, and no generic help is left.
        let lines: Vec<_> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                    "{name}"
                );
            }
        }
        assert!(!text.contains("Mesa server metric."), "{text}");
        assert!(
            text.contains("mesa_server_closes_total{code=\"4009\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mesa_server_closes_total{code=\"other\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mesa_upgrades_rejected_total{reason=\"capacity\"} 0\n"),
            "{text}"
        );
    }
}
