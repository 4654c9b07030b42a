//! What a process's TCP connections to one local port (Redis) carried, from the kernel's `tcp_info`
//! counters as `ss -tinp` prints them (`bytes_received`, `bytes_sent`).
//!
//! This measures any server the same way, whatever its Redis client: the bytes Redis wrote to the node
//! (messages, replies) are the bytes the node's sockets received. It needs `ss` (iproute2) and sockets owned
//! by the same user (or root) for the `users:(…pid=…)` column. Sockets closed between two readings are not
//! counted, so readings are compared only while connections stay up.

use std::io;
use std::process::Command;

/// Counters summed over the established TCP connections of one process to one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketBytes {
    /// Connections found.
    pub sockets: u64,
    /// Bytes they received (from the peer: Redis).
    pub received: u64,
    /// Bytes they sent (to the peer).
    pub sent: u64,
}

impl SocketBytes {
    /// What was carried between `earlier` and this reading.
    pub fn since(&self, earlier: &SocketBytes) -> SocketBytes {
        SocketBytes {
            sockets: self.sockets,
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
        }
    }
}

fn counter(info: &str, key: &str) -> u64 {
    info.split_whitespace()
        .find_map(|field| field.strip_prefix(key))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sums the sockets of process `pid` in the output of `ss -tinpH` (a line per socket, then an indented line of
/// `tcp_info`; a counter that is zero is left out by `ss`).
pub fn parse_ss(output: &str, pid: u32) -> SocketBytes {
    let owner = format!("pid={pid},");
    let mut total = SocketBytes::default();
    let mut current = false;
    for line in output.lines() {
        if line.starts_with(char::is_whitespace) {
            if current {
                total.received += counter(line, "bytes_received:");
                total.sent += counter(line, "bytes_sent:");
            }
        } else {
            current = line.contains(&owner);
            if current {
                total.sockets += 1;
            }
        }
    }
    total
}

/// The counters of `pid`'s established connections to `127.0.0.1:port` (or any local address) now.
pub fn to_port(pid: u32, port: u16) -> io::Result<SocketBytes> {
    let output = Command::new("ss")
        .args(["-tinpH", "state", "established", "dport", "="])
        .arg(format!(":{port}"))
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(parse_ss(&String::from_utf8_lossy(&output.stdout), pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SS: &str = "0      0      127.0.0.1:58338 127.0.0.1:6399 users:((\"mesa-conformance\",pid=1628,fd=3))\n\
\t bbr wscale:10,10 rto:204 mss:32768 bytes_sent:26 bytes_acked:27 bytes_received:71 segs_out:5\n\
0      0      127.0.0.1:58340 127.0.0.1:6399 users:((\"mesa-conformance\",pid=1628,fd=4))\n\
\t cubic wscale:10,10 rto:204 mss:32768 bytes_sent:10 bytes_acked:11 segs_out:2\n\
0      0      127.0.0.1:58342 127.0.0.1:6399 users:((\"node\",pid=16280,fd=20))\n\
\t cubic bytes_sent:1000 bytes_received:5000\n";

    #[test]
    fn sums_the_sockets_of_one_process() {
        assert_eq!(
            parse_ss(SS, 1628),
            SocketBytes {
                sockets: 2,
                received: 71,
                sent: 36
            }
        );
        // pid 1628 is not a prefix match of 16280.
        assert_eq!(parse_ss(SS, 16280).received, 5000);
        assert_eq!(parse_ss(SS, 7), SocketBytes::default());
        assert_eq!(parse_ss("", 1628), SocketBytes::default());
    }

    #[test]
    fn differences() {
        let a = SocketBytes {
            sockets: 2,
            received: 100,
            sent: 10,
        };
        let b = SocketBytes {
            sockets: 2,
            received: 150,
            sent: 30,
        };
        assert_eq!(
            b.since(&a),
            SocketBytes {
                sockets: 2,
                received: 50,
                sent: 20
            }
        );
    }
}
