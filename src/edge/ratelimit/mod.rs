//! Rate limiting: the default per-client-IP policy (`per_minute`) and the named policies of
//! `gateway.rate_limit.policies`, each counted on Redis (shared by every replica) or in memory,
//! falling back to memory whenever Redis does not answer in time (unless the policy says
//! `allow` or `deny`).
//!
//! Fixed windows are aligned to the Unix clock (`window_start = now - now % window`), so every
//! client gets a fresh budget when a window starts, on every replica alike.
//!
//! - [`memory`]: exact in-process windows with a bounded sketch past 262,144 clients.
//! - [`redis`]: the shared window counters, taken from Redis in blocks.
//! - [`gcra`]: the smooth-rate algorithm, one Lua script per decision on Redis.
//! - [`policy`]: which policies apply to a request, what they count it by, and the verdict.
//!
//! This module decides; `proxy` turns a [`RateVerdict`] into headers, a 429 or a 503.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::RateLimitConfig;
use crate::headers;
use crate::store::RedisStore;

mod gcra;
mod memory;
mod policy;
mod redis;

use self::memory::MemoryWindows;
pub use self::policy::{Limits, RateVerdict};
use self::redis::RedisCounters;

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

/// A fixed-window limiter for one policy: Redis when configured, memory otherwise and as the
/// fallback.
pub struct RateLimiter {
    limit: u64,
    window_secs: u64,
    /// Shared with the limiter a reload replaces, so that counts survive it.
    memory: Arc<MemoryWindows>,
    redis: Option<Arc<RedisCounters>>,
}

impl RateLimiter {
    /// The default per-IP limiter; `redis: None` selects the embedded backend.
    pub fn new(cfg: &RateLimitConfig, redis: Option<Arc<RedisStore>>) -> RateLimiter {
        RateLimiter::windows(cfg.limit, cfg.window.as_secs(), redis, "ratelimit:".into())
    }

    /// `limit` per window of `window_secs`, with Redis keys under `prefix`.
    pub(crate) fn windows(
        limit: u64,
        window_secs: u64,
        redis: Option<Arc<RedisStore>>,
        prefix: String,
    ) -> RateLimiter {
        RateLimiter {
            limit,
            window_secs: window_secs.max(1),
            memory: Arc::default(),
            redis: redis.map(|r| RedisCounters::new(r, limit, prefix)),
        }
    }

    /// Counts a request from `ip` at Unix time `now` and decides.
    pub async fn check(&self, ip: IpAddr, now: u64) -> Decision {
        self.count(Subject::Ip(ip), now).await
    }

    /// Counts a request of `who` at Unix time `now` and decides.
    pub(crate) async fn count(&self, who: Subject, now: u64) -> Decision {
        let window = now - now % self.window_secs;
        let reset_secs = (window + self.window_secs).saturating_sub(now).max(1);
        // The local count runs alongside Redis so that a fallback starts from what this
        // replica has already seen in the window rather than from zero.
        let local = self.memory.hit(who, window);
        let (count, backend) = match &self.redis {
            None => (local, LimitBackend::Memory),
            Some(redis) => match redis.hit(who, window, reset_secs + 1).await {
                Some(n) => (n, LimitBackend::Redis),
                None => (local, LimitBackend::Fallback),
            },
        };
        Decision {
            allowed: count <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_secs,
            backend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(limit: u64, window: u64) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig {
                limit,
                window: Duration::from_secs(window),
                trusted_proxies: vec![],
                policies: vec![],
            },
            None,
        )
    }

    #[tokio::test]
    async fn eleventh_request_is_limited_and_next_window_admits() {
        let l = limiter(10, 60);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let t = 1_700_000_040; // 0 s into a 60 s window
        for i in 0..10 {
            let d = l.check(ip, t + 1).await;
            assert!(d.allowed);
            assert_eq!(d.remaining, 9 - i);
        }
        let d = l.check(ip, t + 30).await;
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 30);
        assert_eq!(d.backend, LimitBackend::Memory);
        assert!(
            l.check(ip, t + 60).await.allowed,
            "fresh budget at the window start"
        );
        assert!(
            l.check(IpAddr::from([192, 0, 2, 2]), t + 30).await.allowed,
            "per IP"
        );
    }
}
