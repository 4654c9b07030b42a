//! The counters and histograms of `mesa serve` itself (event proxy, authentication, HTTP API), rendered after
//! the gateway's own in `GET /metrics`, each with `# HELP` and `# TYPE`.
//!
//! They count rare-ish events (one per HTTP call or op 2), so a mutex per family is cheap enough and keeps
//! label sets open (an event type or an outcome).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A counter family: one value per label set (already rendered as `a="x",b="y"`).
#[derive(Debug)]
struct Counter {
    name: &'static str,
    help: &'static str,
    values: Mutex<BTreeMap<String, u64>>,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, labels: String) {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *values.entry(labels).or_default() += 1;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, value) in values.iter() {
            let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
        }
    }
}

/// Per label set: the count in each bucket (not cumulative), the sum and the count.
#[derive(Debug, Default, Clone)]
struct Series {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// A latency histogram family.
#[derive(Debug)]
struct Histogram {
    name: &'static str,
    help: &'static str,
    series: Mutex<BTreeMap<String, Series>>,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Histogram {
        Histogram {
            name,
            help,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, labels: String, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let entry = series.entry(labels).or_default();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            entry.buckets[bucket] += 1;
        }
        entry.sum += seconds;
        entry.count += 1;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, series) in series.iter() {
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(series.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "{}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}",
                    self.name
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                self.name, series.count
            );
            let _ = writeln!(out, "{}_sum{{{labels}}} {}", self.name, series.sum);
            let _ = writeln!(out, "{}_count{{{labels}}} {}", self.name, series.count);
        }
    }
}

/// `mesa_engine_degraded`: 1 while the engine cannot reach its backend (other nodes are not reached), else 0.
/// A gauge read from the engine at each scrape, so it never disagrees with `/healthz`.
pub(crate) fn render_engine_health(health: &mesa_server::Health, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP mesa_engine_degraded Whether the engine cannot reach its backend (1: other nodes are not \
         reached, this node's clients still are; the reason is in /healthz and the log)."
    );
    let _ = writeln!(out, "# TYPE mesa_engine_degraded gauge");
    let _ = writeln!(
        out,
        "mesa_engine_degraded {}",
        u8::from(!health.is_healthy())
    );
}

/// A label value made safe for the text format (event types come from clients).
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars().take(64) {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Everything `mesa serve` counts beside the gateway.
#[derive(Debug)]
pub(crate) struct CliMetrics {
    proxy_requests: Counter,
    proxy_duration: Histogram,
    auth_outcomes: Counter,
    auth_duration: Histogram,
    api_requests: Counter,
    portal_handed: Counter,
    portal_refused: Counter,
}

impl Default for CliMetrics {
    fn default() -> Self {
        CliMetrics {
            proxy_requests: Counter::new(
                "mesa_proxy_requests_total",
                "Events handed to the HTTP event proxy, by event and outcome (ok, refused, timeout, unavailable, \
                 bad_answer, overloaded, no_route).",
            ),
            proxy_duration: Histogram::new(
                "mesa_proxy_request_duration_seconds",
                "Time the event proxy backend took to answer (every call that reached the network).",
            ),
            auth_outcomes: Counter::new(
                "mesa_auth_total",
                "Authentication checks (op 2), by mode and outcome (accepted, refused, unavailable).",
            ),
            auth_duration: Histogram::new(
                "mesa_auth_duration_seconds",
                "Time one authentication check took, by mode (the webhook's backend latency).",
            ),
            api_requests: Counter::new(
                "mesa_api_requests_total",
                "POST /api/send requests, by outcome (sent, disconnected, bad_request, unauthorized, disabled, too_large, unavailable).",
            ),
            portal_handed: Counter::new(
                "mesa_portal_handed_total",
                "Client events Redis took for Portal workers, by event (connection, authentication, message, \
                 disconnection).",
            ),
            portal_refused: Counter::new(
                "mesa_portal_refused_total",
                "Client events Portal did not take, by reason (no_worker: fire-and-forget found no live worker; \
                 unavailable: Redis unreachable, timed out or refused; connecting: not connected to Redis yet).",
            ),
        }
    }
}

impl CliMetrics {
    /// One proxied event and its outcome.
    pub(crate) fn proxy_outcome(&self, event: &str, outcome: &str) {
        self.proxy_requests.inc(format!(
            "event=\"{}\",outcome=\"{}\"",
            escape(event),
            escape(outcome)
        ));
    }

    /// The latency of one call to the proxy backend.
    pub(crate) fn proxy_latency(&self, event: &str, elapsed: Duration) {
        self.proxy_duration
            .observe(format!("event=\"{}\"", escape(event)), elapsed);
    }

    /// One authentication check and its outcome and duration.
    pub(crate) fn auth(&self, mode: &str, outcome: &str, elapsed: Duration) {
        let labels = format!("mode=\"{mode}\"");
        self.auth_outcomes
            .inc(format!("{labels},outcome=\"{outcome}\""));
        self.auth_duration.observe(labels, elapsed);
    }

    /// One `POST /api/send` and its outcome.
    pub(crate) fn api(&self, outcome: &str) {
        self.api_requests.inc(format!("outcome=\"{outcome}\""));
    }

    /// One event handed to Portal.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn portal_handed(&self, event: &str) {
        self.portal_handed
            .inc(format!("event=\"{}\"", escape(event)));
    }

    /// One event Portal refused.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn portal_refused(&self, reason: &str) {
        self.portal_refused
            .inc(format!("reason=\"{}\"", escape(reason)));
    }

    /// The Prometheus text of every family.
    pub(crate) fn render(&self, out: &mut String) {
        self.proxy_requests.render(out);
        self.proxy_duration.render(out);
        self.auth_outcomes.render(out);
        self.auth_duration.render(out);
        self.api_requests.render(out);
        self.portal_handed.render(out);
        self.portal_refused.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_cumulative_buckets() {
        let metrics = CliMetrics::default();
        metrics.proxy_outcome("SA\"Y", "ok");
        metrics.proxy_latency("SAY", Duration::from_millis(3));
        metrics.proxy_latency("SAY", Duration::from_secs(9));
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("# HELP mesa_proxy_requests_total "), "{out}");
        assert!(out.contains("# TYPE mesa_proxy_requests_total counter\n"));
        assert!(out.contains("mesa_proxy_requests_total{event=\"SA\\\"Y\",outcome=\"ok\"} 1\n"));
        assert!(out.contains(
            "mesa_proxy_request_duration_seconds_bucket{event=\"SAY\",le=\"0.005\"} 1\n"
        ));
        assert!(
            out.contains("mesa_proxy_request_duration_seconds_bucket{event=\"SAY\",le=\"5\"} 1\n")
        );
        assert!(out
            .contains("mesa_proxy_request_duration_seconds_bucket{event=\"SAY\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("# TYPE mesa_auth_total counter\n"));
        assert!(out.contains("# TYPE mesa_api_requests_total counter\n"));
    }

    #[test]
    fn engine_health_is_a_gauge() {
        let mut out = String::new();
        render_engine_health(&mesa_server::Health::Healthy, &mut out);
        assert!(
            out.contains("# TYPE mesa_engine_degraded gauge\nmesa_engine_degraded 0\n"),
            "{out}"
        );
        let mut out = String::new();
        let degraded = mesa_server::Health::Degraded {
            reason: "redis down".into(),
            since: std::time::SystemTime::now(),
        };
        render_engine_health(&degraded, &mut out);
        assert!(out.ends_with("mesa_engine_degraded 1\n"), "{out}");
    }
}
