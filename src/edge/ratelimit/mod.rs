//! Per-client-IP fixed-window rate limiting: on Redis (shared by every replica) or in memory,
//! falling back to memory whenever Redis does not answer in time.
//!
//! Windows are aligned to the Unix clock (`window_start = now - now % window`), so every client
//! gets a fresh budget when a window starts, on every replica alike.
//!
//! - [`memory`]: exact in-process counters with a bounded sketch past 262,144 clients.
//! - [`redis`]: the shared counters, taken from Redis in blocks.
//!
//! This module decides; `proxy` turns a [`Decision`] into headers or a 429.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::RateLimitConfig;
use crate::headers;
use crate::metrics;
use crate::store::RedisStore;

mod memory;
mod redis;

use self::memory::MemoryWindows;
use self::redis::RedisCounters;

/// Which counter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    /// The shared Redis counter.
    Redis = 0,
    /// The embedded counter (no Redis configured).
    Memory = 1,
    /// The embedded counter because Redis failed or timed out.
    Fallback = 2,
}

impl LimitBackend {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitBackend::Redis => "redis",
            LimitBackend::Memory => "memory",
            LimitBackend::Fallback => "fallback",
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

/// The limiter: Redis when configured, memory otherwise and as the fallback.
pub struct RateLimiter {
    limit: u64,
    window_secs: u64,
    /// Shared with the limiter a reload replaces, so that counts survive it.
    memory: Arc<MemoryWindows>,
    redis: Option<Arc<RedisCounters>>,
    /// `rate_limit_decisions_total` children resolved once: [allowed, limited] × backend, so
    /// the per-request cost is an atomic add rather than a labelled lookup.
    decisions: [[prometheus::IntCounter; 3]; 2],
}

impl RateLimiter {
    /// Builds the limiter; `redis: None` selects the embedded backend.
    pub fn new(cfg: &RateLimitConfig, redis: Option<Arc<RedisStore>>) -> RateLimiter {
        let child = |result: &str, backend: LimitBackend| {
            metrics::RATE_LIMIT_DECISIONS.with_label_values(&[result, backend.as_str()])
        };
        let backends = [
            LimitBackend::Redis,
            LimitBackend::Memory,
            LimitBackend::Fallback,
        ];
        RateLimiter {
            limit: cfg.limit,
            window_secs: cfg.window.as_secs().max(1),
            memory: Arc::default(),
            redis: redis.map(|r| RedisCounters::new(r, cfg.limit)),
            decisions: [
                backends.map(|b| child("allowed", b)),
                backends.map(|b| child("limited", b)),
            ],
        }
    }

    /// This limiter counting on `previous`'s in-memory windows: a reload that changes the
    /// limit applies it to the current window's count instead of starting from zero.
    pub(crate) fn continuing(mut self, previous: &RateLimiter) -> RateLimiter {
        self.memory = previous.memory.clone();
        self
    }

    /// Counts a request from `ip` at Unix time `now` and decides.
    pub async fn check(&self, ip: IpAddr, now: u64) -> Decision {
        let window = now - now % self.window_secs;
        let reset_secs = (window + self.window_secs).saturating_sub(now).max(1);
        // The local count runs alongside Redis so that a fallback starts from what this
        // replica has already seen in the window rather than from zero.
        let local = self.memory.hit(ip, window);
        let (count, backend) = match &self.redis {
            None => (local, LimitBackend::Memory),
            Some(redis) => match redis.hit(ip, window, reset_secs + 1).await {
                Some(n) => (n, LimitBackend::Redis),
                None => (local, LimitBackend::Fallback),
            },
        };
        let allowed = count <= self.limit;
        self.decisions[usize::from(!allowed)][backend as usize].inc();
        Decision {
            allowed,
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
