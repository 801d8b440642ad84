//! What every limiter counts by and what it answers: the [`Subject`], the [`Decision`] and the
//! backend that made it.

use std::fmt;
use std::net::IpAddr;

use crate::headers;

/// What a policy counts a request by: the client address, or a digest of a user, claim or
/// header value (fixed size whatever the value, and never the value itself in Redis keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A client address.
    Ip(IpAddr),
    /// The first 128 bits of the SHA-256 of a value.
    Digest([u8; 16]),
}

impl Subject {
    /// The subject of a value (a `sub`, a claim, a header).
    pub fn of(value: &[u8]) -> Subject {
        let full = openssl::sha::sha256(value);
        let mut d = [0u8; 16];
        d.copy_from_slice(&full[..16]);
        Subject::Digest(d)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Ip(ip) => ip.fmt(f),
            Subject::Digest(d) => d.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

/// Which counter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    /// The shared Redis counter.
    Redis = 0,
    /// The embedded counter (no Redis configured).
    Memory = 1,
    /// The embedded counter because Redis failed or timed out.
    Fallback = 2,
    /// Redis failed and the policy admits (`allow`) or refuses (`deny`) without counting.
    Unavailable = 3,
}

impl LimitBackend {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitBackend::Redis => "redis",
            LimitBackend::Memory => "memory",
            LimitBackend::Fallback => "fallback",
            LimitBackend::Unavailable => "unavailable",
        }
    }
}

/// The outcome for one request, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per window.
    pub limit: u64,
    /// Requests left in this window after this one.
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset_secs: u64,
    /// Which counter decided.
    pub backend: LimitBackend,
}

impl Decision {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` header pairs.
    pub fn headers(&self) -> [(&'static str, http::HeaderValue); 3] {
        // Straight from integers: no intermediate String on every limited request.
        [
            (headers::RATELIMIT_LIMIT, self.limit.into()),
            (headers::RATELIMIT_REMAINING, self.remaining.into()),
            (headers::RATELIMIT_RESET, self.reset_secs.into()),
        ]
    }
}
