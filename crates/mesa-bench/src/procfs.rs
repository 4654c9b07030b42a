//! What `/proc` says about a process: resident memory (`VmRSS`), CPU time and open file descriptors.

use std::io;
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`CLK_TCK`, 100 on every mainstream Linux build).
pub const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User plus system CPU time of a `/proc/<pid>/stat` text, in clock ticks (all threads of the process).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'; fields after the last ')'
    // are space-separated: state is field 3, utime field 14 and stime field 15.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss_kib(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// File descriptors process `pid` has open (entries of `/proc/<pid>/fd`; needs the same user or root).
pub fn fd_count(pid: u32) -> io::Result<u64> {
    let mut count = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
    Ok(Duration::from_millis(ticks * 1000 / CLOCK_TICKS_PER_SECOND))
}

/// CPU use of a process over an interval, sampled at its start and end.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    start: Option<Duration>,
    started_at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            start: cpu_time(pid).ok(),
            started_at: std::time::Instant::now(),
        }
    }

    /// CPU time used since the start (in clock ticks: 10 ms steps), or `None` when it could not be read.
    pub fn used(&self) -> Option<Duration> {
        let start = self.start?;
        let end = cpu_time(self.pid).ok()?;
        Some(end.saturating_sub(start))
    }

    /// CPU time used since the start as a percentage of one core, or `None` when it could not be read.
    pub fn percent(&self) -> Option<f64> {
        let start = self.start?;
        let end = cpu_time(self.pid).ok()?;
        let wall = self.started_at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| end.saturating_sub(start).as_secs_f64() / wall * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tmesa\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 100 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: lots kB\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_with_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_time(me).is_ok());
        // The listing itself holds a descriptor of the directory.
        assert!(fd_count(me).unwrap() >= 1);
        assert!(CpuMeter::start(me).percent().is_some());
    }
}
