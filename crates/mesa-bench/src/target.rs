//! Where the load goes, and where it comes from: the loopback-only target URL and the source addresses
//! connections are spread over.
//!
//! Linux gives one source address about 28 000 ephemeral ports (`net.ipv4.ip_local_port_range`
//! 32768–60999), and a socket bound before `connect` holds its port for as long as it lives. Spreading
//! connections over `127.0.0.1`, `127.0.0.2`, … (all of `127.0.0.0/8` is loopback, no setup needed) lifts that
//! limit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Connections placed on one source address at most (the ephemeral range holds about 28 000 ports;
/// this leaves room for sockets in `TIME_WAIT` and for other programs).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Source addresses available: `127.0.0.1` to `127.0.0.254`.
pub const MAX_SOURCES: usize = 254;

/// A WebSocket URL on this machine, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (normalised: `localhost` becomes `127.0.0.1`).
    pub url: String,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The request path, starting with `/`.
    pub path: String,
}

/// Why a target URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// Only `ws://` is supported (no TLS in a loopback benchmark).
    Scheme(String),
    /// The host is not a loopback address (`127.0.0.0/8`, `localhost` or `[::1]`).
    NotLoopback(String),
    /// The URL could not be read.
    Malformed(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Scheme(url) => write!(f, "{url}: only ws:// URLs are supported"),
            TargetError::NotLoopback(host) => write!(
                f,
                "{host} is not a loopback address: mesa-bench only targets 127.0.0.0/8, localhost or [::1]"
            ),
            TargetError::Malformed(why) => write!(f, "malformed URL: {why}"),
        }
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// Parses `ws://HOST:PORT/PATH`. The host must be loopback; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| TargetError::Scheme(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(TargetError::Malformed("no host".into()));
        }
        if authority.contains('@') {
            return Err(TargetError::Malformed(
                "credentials are not supported".into(),
            ));
        }
        let (host, port) = split_host_port(authority)?;
        let ip = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other
                .parse::<IpAddr>()
                .map_err(|_| TargetError::NotLoopback(other.to_string()))?,
        };
        if !ip.is_loopback() {
            return Err(TargetError::NotLoopback(host.to_string()));
        }
        let addr = SocketAddr::new(ip, port);
        Ok(Target {
            url: format!("ws://{addr}{path}"),
            addr,
            path: path.to_string(),
        })
    }
}

fn split_host_port(authority: &str) -> Result<(&str, u16), TargetError> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| TargetError::Malformed("unclosed [".into()))?;
        let port = &v6[end + 1..];
        (&v6[..end], port.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| TargetError::Malformed(format!("bad port {p:?}")))?,
    };
    Ok((host, port))
}

/// The source addresses connections are spread over, in round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
}

impl SourceAddrs {
    /// `count` IPv4 loopback addresses `127.0.0.1`, `127.0.0.2`, … for an IPv4 target (at least one, at most
    /// [`MAX_SOURCES`]); `[::1]` alone for an IPv6 target (IPv6 has a single loopback address).
    pub fn new(target: &Target, count: usize) -> SourceAddrs {
        let addrs = match target.addr.ip() {
            IpAddr::V6(_) => vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            IpAddr::V4(_) => (1..=count.clamp(1, MAX_SOURCES))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                .collect(),
        };
        SourceAddrs { addrs }
    }

    /// The fewest source addresses that hold `connections` at [`MAX_CONNECTIONS_PER_SOURCE`] each.
    pub fn needed_for(connections: usize) -> usize {
        connections.div_ceil(MAX_CONNECTIONS_PER_SOURCE).max(1)
    }

    /// How many connections these addresses hold.
    pub fn capacity(&self) -> usize {
        self.addrs.len() * MAX_CONNECTIONS_PER_SOURCE
    }

    /// The source address of the `index`-th connection.
    pub fn for_connection(&self, index: usize) -> IpAddr {
        self.addrs[index % self.addrs.len()]
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_parse() {
        let t = Target::parse("ws://127.0.0.1:4000/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://localhost:9").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:9/");
        let t = Target::parse("ws://127.3.2.1:5/gateway?x=1").unwrap();
        assert_eq!(t.path, "/gateway?x=1");
        let t = Target::parse("ws://[::1]:4000/").unwrap();
        assert_eq!(t.addr, "[::1]:4000".parse().unwrap());
        assert_eq!(Target::parse("ws://127.0.0.1").unwrap().addr.port(), 80);
    }

    #[test]
    fn non_loopback_and_odd_urls_are_refused() {
        for url in [
            "ws://10.0.0.1:4000/",
            "ws://192.168.1.2/",
            "ws://8.8.8.8:80/",
            "ws://example.com:4000/",
            "ws://[2001:db8::1]:4000/",
            "ws://0.0.0.0:4000/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::NotLoopback(_))),
                "{url}"
            );
        }
        assert!(matches!(
            Target::parse("wss://127.0.0.1/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("http://127.0.0.1/"),
            Err(TargetError::Scheme(_))
        ));
        for url in [
            "ws://",
            "ws://127.0.0.1:x/",
            "ws://127.0.0.1:70000/",
            "ws://[::1/",
            "ws://u@127.0.0.1/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Malformed(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn source_addresses_round_robin_within_loopback() {
        let t = Target::parse("ws://127.0.0.1:4000/").unwrap();
        let s = SourceAddrs::new(&t, 3);
        assert_eq!(s.addrs().len(), 3);
        assert_eq!(s.for_connection(0), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.for_connection(1), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.for_connection(5), "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(s.addrs().iter().all(IpAddr::is_loopback));
        assert_eq!(SourceAddrs::new(&t, 0).addrs().len(), 1);
        let all = SourceAddrs::new(&t, 10_000);
        assert_eq!(all.addrs().len(), MAX_SOURCES);
        assert_eq!(
            *all.addrs().last().unwrap(),
            "127.0.0.254".parse::<IpAddr>().unwrap()
        );
        let v6 = SourceAddrs::new(&Target::parse("ws://[::1]:1/").unwrap(), 8);
        assert_eq!(v6.addrs(), &["::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn needed_sources_cover_the_connections() {
        assert_eq!(SourceAddrs::needed_for(0), 1);
        assert_eq!(SourceAddrs::needed_for(MAX_CONNECTIONS_PER_SOURCE), 1);
        assert_eq!(SourceAddrs::needed_for(MAX_CONNECTIONS_PER_SOURCE + 1), 2);
        let t = Target::parse("ws://127.0.0.1:4000/").unwrap();
        assert!(SourceAddrs::new(&t, 2).capacity() >= 40_000);
    }
}
