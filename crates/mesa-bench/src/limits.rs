//! The open-files limit: each connection is one file descriptor, so a scenario asks for no more
//! connections than `RLIMIT_NOFILE` allows.

use std::io;

/// File descriptors kept for the generator itself (stdio, the runtime's epoll and eventfd, `/proc` reads,
/// sockets being connected) on top of its connections.
pub const RESERVED_FDS: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// A connection count after checking it against the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capped {
    /// What the scenario asked for.
    pub requested: usize,
    /// What it may open.
    pub granted: usize,
    /// The open-files limit the decision was made with.
    pub nofile: u64,
}

impl Capped {
    /// Whether the request was cut down.
    pub fn was_capped(&self) -> bool {
        self.granted < self.requested
    }

    /// A sentence for the terminal, when the request was cut down.
    pub fn notice(&self) -> Option<String> {
        self.was_capped().then(|| {
            format!(
                "capping {} connections to {}: the open-files limit (RLIMIT_NOFILE) is {} and {} descriptors are kept for the generator itself",
                self.requested, self.granted, self.nofile, RESERVED_FDS
            )
        })
    }
}

/// The number of connections that fit under `nofile` open files, at most `requested`.
pub fn cap_connections(requested: usize, nofile: u64) -> Capped {
    let available = nofile.saturating_sub(RESERVED_FDS);
    let granted = usize::try_from(available).map_or(requested, |a| requested.min(a));
    Capped {
        requested,
        granted,
        nofile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_or_is_capped() {
        let c = cap_connections(19_000, 20_000);
        assert_eq!(c.granted, 19_000);
        assert!(!c.was_capped());
        assert!(c.notice().is_none());

        let c = cap_connections(50_000, 20_000);
        assert_eq!(c.granted, 20_000 - RESERVED_FDS as usize);
        assert!(c.was_capped());
        assert!(c.notice().unwrap().contains("RLIMIT_NOFILE"));

        assert_eq!(cap_connections(10, 5).granted, 0);
        assert_eq!(cap_connections(10, u64::MAX).granted, 10);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0;
        let after = raise_nofile_limit().unwrap();
        assert!(after >= before);
    }
}
