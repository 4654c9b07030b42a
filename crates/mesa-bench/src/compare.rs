//! The side-by-side table: JSON result lines of several servers (told apart by their `label`), grouped by run
//! `name`, with the ratio of one server to each of the others.

use std::fmt::Write as _;

use serde_json::Value;

/// The metrics shown for each scenario: (JSON path inside `results`, row title). `idle-cluster` and
/// `fanout-cluster` are the runs of those scenarios against two nodes (`--url-b`); `targeted-client` is
/// `targeted --via client` (sends through a client's `SEND_TO`).
pub fn metrics(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "idle-cluster" => &[
            (
                "cluster.rss_per_conn_bytes.total",
                "RSS per connection, A + B + Redis (bytes)",
            ),
            (
                "cluster.rss_per_conn_bytes.node_a",
                "node A RSS per connection (bytes)",
            ),
            (
                "cluster.rss_per_conn_bytes.node_b",
                "node B RSS per connection (bytes)",
            ),
            (
                "cluster.rss_per_conn_bytes.redis",
                "Redis RSS per connection (bytes)",
            ),
            ("connections_open", "connections open"),
            ("connections.closed_by_server", "closed by server"),
        ],
        "fanout-cluster" => &[
            ("deliveries_per_s", "deliveries/s"),
            ("broadcasts_per_s", "broadcasts/s"),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p90_ms", "latency p90 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("latency.max_ms", "latency max (ms)"),
            ("lost", "lost"),
            ("cluster.lost_on_b", "lost on node B"),
            ("duplicated", "duplicated"),
            ("out_of_order", "out of order"),
            (
                "cluster.processes.node_a.cpu_pct",
                "node A CPU (% of a core)",
            ),
            (
                "cluster.processes.node_b.cpu_pct",
                "node B CPU (% of a core)",
            ),
            ("cluster.processes.redis.cpu_pct", "Redis CPU (% of a core)"),
            (
                "cluster.processes.node_b.redis_bytes_received",
                "bytes node B read from Redis",
            ),
            ("generator_cpu_pct", "generator CPU (% of a core)"),
        ],
        "targeted" => &[
            ("sends_per_s", "sends/s"),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("latency.max_ms", "latency max (ms)"),
            ("lost", "lost"),
            ("duplicated", "duplicated"),
            ("out_of_order", "out of order"),
            ("misdelivered_on_b", "delivered to node B's users"),
            (
                "cluster.processes.node_b.cpu_pct",
                "node B CPU (% of a core)",
            ),
            (
                "cluster.processes.node_b.redis_bytes_received",
                "bytes node B read from Redis",
            ),
            (
                "cluster.node_b_redis_bytes_per_send",
                "bytes node B read from Redis per send",
            ),
            (
                "cluster.processes.node_a.cpu_pct",
                "node A CPU (% of a core)",
            ),
            (
                "cluster.processes.node_a.redis_bytes_received",
                "bytes node A read from Redis",
            ),
            ("cluster.processes.redis.cpu_pct", "Redis CPU (% of a core)"),
        ],
        "targeted-client" => &[
            ("sends_per_s", "sends/s"),
            ("deliveries_per_s", "deliveries/s"),
            (
                "deliveries_per_server_cpu_s",
                "deliveries per server CPU-second",
            ),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p90_ms", "latency p90 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("latency.max_ms", "latency max (ms)"),
            ("expected_deliveries", "deliveries expected"),
            ("delivered", "delivered"),
            ("lost", "lost"),
            ("duplicated", "duplicated"),
            ("out_of_order", "out of order"),
            ("sequenced", "deliveries with s"),
            ("seq_gaps", "gaps in s"),
            ("seq_dups", "s at or below the last"),
            ("connections.closed_by_server", "closed by server"),
            ("server_cpu_pct", "server CPU (% of a core)"),
            ("server_rss_after_kib", "server RSS at the end (KiB)"),
            ("generator_cpu_pct", "generator CPU (% of a core)"),
        ],
        "resume" => &[
            ("sessions_opened", "sessions opened"),
            ("messages_sent", "messages sent"),
            ("delivered_live", "delivered live (before the drop)"),
            ("resumed", "resumed"),
            ("refused", "refused (op 9)"),
            ("resume_failed", "resume failed"),
            ("not_caught_up", "not caught up"),
            (
                "time_to_caught_up_ms",
                "first op 6 to last session caught up (ms)",
            ),
            (
                "per_session_caught_up.p50_ms",
                "per session: caught up p50 (ms)",
            ),
            (
                "per_session_caught_up.p99_ms",
                "per session: caught up p99 (ms)",
            ),
            (
                "per_session_caught_up.max_ms",
                "per session: caught up max (ms)",
            ),
            ("per_session_op22.p50_ms", "per session: op 22 p50 (ms)"),
            ("per_session_op22.p99_ms", "per session: op 22 p99 (ms)"),
            ("op6_spread_ms", "first to last op 6 written (ms)"),
            ("expected_replay", "replay expected"),
            ("replayed", "replayed"),
            ("lost", "lost"),
            ("duplicated", "duplicated"),
            ("out_of_order", "out of order"),
            ("seq_gaps", "gaps in s"),
            (
                "server_cpu_ms",
                "server CPU time during the storm (ms, 10 ms ticks)",
            ),
            (
                "server_cpu_pct",
                "server CPU during the storm (% of a core)",
            ),
            (
                "generator_cpu_pct",
                "generator CPU during the storm (% of a core)",
            ),
            (
                "server_rss_detached_kib",
                "server RSS, sessions detached (KiB)",
            ),
        ],
        "idle" => &[
            (
                "server_rss_per_conn_bytes",
                "server RSS per connection (bytes)",
            ),
            ("connections_open", "connections open"),
            ("connections.closed_by_server", "closed by server"),
        ],
        "fanout" => &[
            ("deliveries_per_s", "deliveries/s"),
            (
                "deliveries_per_server_cpu_s",
                "deliveries per server CPU-second",
            ),
            ("broadcasts_per_s", "broadcasts/s"),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p90_ms", "latency p90 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("latency.max_ms", "latency max (ms)"),
            ("lost", "lost"),
            ("duplicated", "duplicated"),
            ("out_of_order", "out of order"),
            ("server_cpu_pct", "server CPU (% of a core)"),
            ("generator_cpu_pct", "generator CPU (% of a core)"),
        ],
        "echo" => &[
            ("round_trips_per_s", "round trips/s"),
            (
                "round_trips_per_server_cpu_s",
                "round trips per server CPU-second",
            ),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("server_cpu_pct", "server CPU (% of a core)"),
            ("generator_cpu_pct", "generator CPU (% of a core)"),
        ],
        "connect" => &[
            ("connects_per_s", "connect+auth/s"),
            (
                "connects_per_server_cpu_s",
                "connect+auth per server CPU-second",
            ),
            ("latency.p50_ms", "latency p50 (ms)"),
            ("latency.p99_ms", "latency p99 (ms)"),
            ("failed", "failed"),
            ("server_cpu_pct", "server CPU (% of a core)"),
        ],
        "storm" => &[
            ("server_rss_before_kib", "server RSS before (KiB)"),
            ("server_rss_peak_kib", "server RSS at the peak (KiB)"),
            (
                "server_rss_end_kib",
                "server RSS at the end of the watch (KiB)",
            ),
            ("given_back_fraction", "share of the storm's RSS given back"),
            ("half_given_back_after_s", "half given back after (s)"),
            ("connections_ended", "connections ended"),
            ("connections.closed_by_server", "closed by server"),
            ("unanswered", "requests unanswered"),
        ],
        _ => &[],
    }
}

/// The report lines among `text` (lines that parse as JSON objects with `"tool":"mesa-bench"`).
pub fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["tool"] == "mesa-bench")
        .collect()
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn format_value(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "–".into(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() && f.abs() < 100.0 => format!("{f:.2}"),
            Some(f) => format!("{f:.0}"),
            None => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// `ours / other`, when both are positive numbers.
pub fn ratio(ours: Option<&Value>, other: Option<&Value>) -> Option<f64> {
    let a = ours?.as_f64()?;
    let b = other?.as_f64()?;
    (a >= 0.0 && b > 0.0).then(|| a / b)
}

/// A Markdown table: one row per run and metric, one column per label, then `ours/<label>` ratio columns.
pub fn table(reports: &[Value], ours: &str, against: &[String]) -> String {
    let against: Vec<&String> = against.iter().filter(|l| !l.is_empty()).collect();
    let mut names: Vec<(String, String)> = Vec::new();
    for r in reports {
        let name = r["name"].as_str().unwrap_or("?").to_string();
        let scenario = r["scenario"].as_str().unwrap_or("?");
        let scenario = match (scenario, r["results"]["cluster"].is_object()) {
            ("idle" | "fanout", true) => format!("{scenario}-cluster"),
            ("targeted", _) if r["params"]["via"] == "client" => "targeted-client".to_string(),
            _ => scenario.to_string(),
        };
        if !names.iter().any(|(n, _)| *n == name) {
            names.push((name, scenario));
        }
    }
    let find = |name: &str, label: &str| {
        reports
            .iter()
            .rev()
            .find(|r| r["name"] == name && r["label"] == label)
    };
    let mut out = String::new();
    let _ = write!(out, "| run | metric | {ours} |");
    for label in &against {
        let _ = write!(out, " {label} |");
    }
    for label in &against {
        let _ = write!(out, " {ours}/{label} |");
    }
    out.push('\n');
    out.push_str("|---|---|---:|");
    for _ in 0..against.len() * 2 {
        out.push_str("---:|");
    }
    out.push('\n');
    for (name, scenario) in &names {
        for (path, title) in metrics(scenario) {
            let mine = find(name, ours).and_then(|r| lookup(&r["results"], path));
            let _ = write!(out, "| {name} | {title} | {} |", format_value(mine));
            let others: Vec<Option<&Value>> = against
                .iter()
                .map(|label| find(name, label.as_str()).and_then(|r| lookup(&r["results"], path)))
                .collect();
            for other in &others {
                let _ = write!(out, " {} |", format_value(*other));
            }
            for other in &others {
                match ratio(mine, *other) {
                    Some(x) => {
                        let _ = write!(out, " {x:.2}× |");
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_a_side_by_side_table() {
        let text = [
            "some log line",
            &json!({"tool":"mesa-bench","scenario":"echo","name":"echo-100x10","label":"ours",
                "results":{"round_trips_per_s":600000.0,"latency":{"p50_ms":1.0,"p99_ms":2.0}}})
            .to_string(),
            &json!({"tool":"mesa-bench","scenario":"echo","name":"echo-100x10","label":"baseline",
                "results":{"round_trips_per_s":500000.0,"latency":{"p50_ms":1.0,"p99_ms":4.0}}})
            .to_string(),
            &json!({"tool":"other"}).to_string(),
            "{not json",
        ]
        .join("\n");
        let reports = parse_lines(&text);
        assert_eq!(reports.len(), 2);
        let t = table(&reports, "ours", &["baseline".into(), "node".into()]);
        assert!(
            t.contains("| echo-100x10 | round trips/s | 600000 | 500000 | – | 1.20× | – |"),
            "{t}"
        );
        assert!(
            t.contains("| echo-100x10 | latency p99 (ms) | 2.00 | 4.00 | – | 0.50× | – |"),
            "{t}"
        );
    }

    #[test]
    fn cluster_runs_get_their_own_rows() {
        let line = |label: &str, b_bytes: u64| {
            json!({"tool":"mesa-bench","scenario":"fanout","name":"c-fanout","label":label,
                "results":{"lost":0,"cluster":{"processes":{"node_b":{"redis_bytes_received":b_bytes}}}}})
        };
        let t = table(
            &[line("ours", 100), line("node", 400)],
            "ours",
            &["node".into()],
        );
        assert!(
            t.contains("| c-fanout | bytes node B read from Redis | 100 | 400 | 0.25× |"),
            "{t}"
        );
        assert!(!t.contains("deliveries per server CPU-second"), "{t}");
    }

    #[test]
    fn sends_through_a_client_have_their_own_rows() {
        let line = |label: &str, per_s: f64| {
            json!({"tool":"mesa-bench","scenario":"targeted","name":"sendto","label":label,
                "params":{"via":"client"},
                "results":{"deliveries_per_s":per_s,"lost":0,"cluster":{}}})
        };
        let t = table(
            &[line("durable", 40.0), line("volatile", 80.0)],
            "durable",
            &["volatile".into()],
        );
        assert!(
            t.contains("| sendto | deliveries/s | 40.00 | 80.00 | 0.50× |"),
            "{t}"
        );
        assert!(t.contains("| sendto | lost | 0 | 0 | – |"), "{t}");
        assert!(!t.contains("bytes node B"), "{t}");
    }

    #[test]
    fn ratios_need_positive_denominators() {
        assert_eq!(ratio(Some(&json!(2.0)), Some(&json!(4))), Some(0.5));
        assert_eq!(ratio(Some(&json!(2.0)), Some(&json!(0))), None);
        assert_eq!(ratio(None, Some(&json!(1))), None);
        assert_eq!(ratio(Some(&json!("x")), Some(&json!(1))), None);
    }
}
