//! `Origin` header values compared as origins (RFC 6454): scheme, host and port, the scheme and host
//! case-insensitively, a missing port meaning the scheme's default. `https://App.example:443` is
//! `https://app.example`; `http://app.example` is not.

/// A parsed origin: lower-case scheme and host, and the port (explicit or the scheme's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated, as some configurations have it); `None`
    /// for anything else, including the opaque origin `null`.
    pub(crate) fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        // An IPv6 host is bracketed: its colons are not the port separator.
        let (host, port) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains(']') => {
                let port: u16 = rest[colon + 1..].parse().ok()?;
                (&rest[..colon], Some(port))
            }
            _ => (rest, None),
        };
        if host.is_empty() {
            return None;
        }
        let default = match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        Some(Origin {
            port: port.or(default),
            host: host.to_ascii_lowercase(),
            scheme,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let same =
            |a: &str, b: &str| Origin::parse(a).is_some() && Origin::parse(a) == Origin::parse(b);
        assert!(same("https://app.example", "https://APP.example"));
        assert!(same("https://app.example", "https://app.example:443"));
        assert!(same("https://app.example/", "https://app.example"));
        assert!(same("HTTP://app.example", "http://app.example:80"));
        assert!(same("http://[::1]:8080", "http://[::1]:8080"));
        assert!(!same("https://app.example", "http://app.example"));
        assert!(!same("https://app.example", "https://app.example:8443"));
        assert!(!same("https://app.example", "https://app.example.evil"));
        for bad in [
            "null",
            "",
            "app.example",
            "https://",
            "https://a/b",
            "https://a:x",
            "https://u@a",
        ] {
            assert!(Origin::parse(bad).is_none(), "{bad}");
        }
    }
}
