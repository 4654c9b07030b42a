//! What a run prints: progress on stderr once a second, then a summary table and exactly one JSON line on stdout.

use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// The result of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"mesa-bench"`, so that the line can be told apart from other output.
    pub tool: &'static str,
    /// `idle`, `fanout`, `echo`, `connect` or `storm`.
    pub scenario: &'static str,
    /// A name for this run (for example `fanout-1k-64B`), given with `--name`; the scenario otherwise.
    pub name: String,
    /// The server under test (for example `ours`, `baseline`, `node`), given with `--label`.
    pub label: Option<String>,
    /// The target URL.
    pub target: String,
    /// The server's process id, when given.
    pub server_pid: Option<u32>,
    /// The scenario's settings.
    pub params: Value,
    /// The measurements.
    pub results: Value,
    /// Remarks such as "capped to the open-files limit".
    pub notes: Vec<String>,
}

impl Report {
    /// The summary table: one `key  value` row per setting and per result.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let title = match &self.label {
            Some(label) => format!(
                "{} ({}) against {} [{}]",
                self.name, self.scenario, self.target, label
            ),
            None => format!("{} ({}) against {}", self.name, self.scenario, self.target),
        };
        out.push_str(&title);
        out.push('\n');
        out.push_str(&"-".repeat(title.len().min(100)));
        out.push('\n');
        let mut rows = Vec::new();
        flatten("", &self.params, &mut rows);
        flatten("", &self.results, &mut rows);
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            out.push_str(&format!("{key:<width$}  {value}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }

    /// The machine-readable line: compact JSON, no newline inside.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Prints the table, then the JSON line last, on stdout.
    pub fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", self.table());
        let _ = writeln!(stdout, "{}", self.json_line());
        let _ = stdout.flush();
    }
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::Number(n) => rows.push((prefix.to_string(), format_number(n))),
        Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

fn format_number(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (_, Some(i), _) => i.to_string(),
        (_, _, Some(f)) if f.abs() >= 100.0 => format!("{f:.0}"),
        (_, _, Some(f)) => format!("{f:.3}"),
        _ => n.to_string(),
    }
}

/// Rounds to three decimals for the JSON output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints `line()` on stderr once a second until `work` finishes, then returns its output.
pub async fn with_progress<F, T>(label: &str, line: impl Fn() -> String, work: F) -> T
where
    F: Future<Output = T>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                eprintln!("[{label} {:>4.0}s] {}", start.elapsed().as_secs_f64(), line());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_and_single_json_line() {
        let report = Report {
            tool: "mesa-bench",
            scenario: "echo",
            name: "echo-100x10".into(),
            label: Some("ours".into()),
            target: "ws://127.0.0.1:4000/".into(),
            server_pid: Some(42),
            params: json!({"connections": 100, "in_flight": 10}),
            results: json!({"round_trips_per_s": 123456.789, "latency": {"p99_ms": 1.23456}}),
            notes: vec!["a note".into()],
        };
        let table = report.table();
        assert!(table.contains("connections"));
        assert!(table.contains("round_trips_per_s  123457"));
        assert!(table.contains("latency.p99_ms"));
        assert!(table.contains("1.235"));
        assert!(table.contains("note: a note"));
        let line = report.json_line();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["tool"], "mesa-bench");
        assert_eq!(back["results"]["latency"]["p99_ms"], 1.23456);
        assert_eq!(round3(1.23456), 1.235);
    }
}
