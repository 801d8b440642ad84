//! The fixed-window limiter: Redis when configured, memory otherwise and as the fallback.

use std::net::IpAddr;
use std::sync::Arc;

use super::decision::{Decision, LimitBackend, Subject};
use super::memory::MemoryWindows;
use super::redis::RedisCounters;
use crate::config::RateLimitConfig;
use crate::store::RedisStore;

/// A fixed-window limiter for one policy: Redis when configured, memory otherwise and as the
/// fallback.
pub struct RateLimiter {
    limit: u64,
    window_secs: u64,
    /// Shared with the limiter a reload replaces, so that counts survive it.
    pub(super) memory: Arc<MemoryWindows>,
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
