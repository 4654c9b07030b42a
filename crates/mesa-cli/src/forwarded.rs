//! The client address behind a reverse proxy (`trusted_proxies`): when the TCP peer is a trusted proxy,
//! the client is the right-most `X-Forwarded-For` entry that is not itself a trusted proxy, and it replaces
//! the peer address sessions report (`Session::remote_addr`, the proxy's `connection` event). A peer that is
//! not trusted cannot choose its address this way: its header is ignored.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use mesa_server::RemoteAddr;

use crate::config::ConfigError;

/// An address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Network {
    base: IpAddr,
    bits: u8,
}

impl Network {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `::1` or `fd00::/8`; the error names `trusted_proxies`.
    pub(crate) fn parse(text: &str) -> Result<Network, ConfigError> {
        let invalid = || {
            ConfigError::invalid(format!(
                "trusted_proxies: {text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"
            ))
        };
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits.parse::<u8>().map_err(|_| invalid())?)),
            None => (text, None),
        };
        let base: IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(invalid());
        }
        Ok(Network { base, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (base, ip, width) = match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                (u32::from(base) as u128, u32::from(ip) as u128, 32)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => (u128::from(base), u128::from(ip), 128),
            _ => return false,
        };
        if self.bits == 0 {
            return true;
        }
        let shift = width - u32::from(self.bits);
        (base >> shift) == (ip >> shift)
    }
}

/// The client address for a request from `peer` with these `X-Forwarded-For` values, or `None` to keep
/// the peer's.
fn client(peer: IpAddr, forwarded: &[&str], trusted: &[Network]) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|network| network.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let mut client = None;
    // Several headers are one list, in order; walk it from the proxy nearest to us outwards.
    for entry in forwarded.iter().flat_map(|value| value.split(',')).rev() {
        // An entry that is not an address means the list cannot be trusted past this point.
        let ip: IpAddr = entry.trim().parse().ok()?;
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Replaces the request's [`RemoteAddr`] by the forwarded client address when the peer is trusted. The port
/// of a forwarded address is unknown and reported as 0.
pub(crate) fn apply(trusted: &[Network], mut request: Request) -> Request {
    if trusted.is_empty() {
        return request;
    }
    let Some(RemoteAddr(peer)) = request.extensions().get::<RemoteAddr>().copied() else {
        return request;
    };
    let values: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if let Some(ip) = client(peer.ip(), &values, trusted) {
        request
            .extensions_mut()
            .insert(RemoteAddr(SocketAddr::new(ip, 0)));
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn networks_and_the_rightmost_untrusted_entry() {
        let trusted = [
            Network::parse("10.0.0.0/8").expect("cidr"),
            Network::parse("127.0.0.1").expect("ip"),
        ];
        assert!(trusted[0].contains(ip("10.1.2.3")));
        assert!(!trusted[0].contains(ip("11.0.0.1")));
        assert!(trusted[1].contains(ip("::ffff:127.0.0.1")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("localhost").is_err());
        assert!(Network::parse("::/0")
            .expect("all")
            .contains(ip("2001:db8::1")));

        let peer = ip("127.0.0.1");
        assert_eq!(
            client(peer, &["203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // A client-supplied entry to the left of the real one is not believed.
        assert_eq!(
            client(peer, &["1.2.3.4, 203.0.113.7", "10.0.0.2"], &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(client(ip("198.51.100.1"), &["203.0.113.7"], &trusted), None);
        assert_eq!(client(peer, &[], &trusted), None);
        assert_eq!(client(peer, &["garbage"], &trusted), None);
    }
}
