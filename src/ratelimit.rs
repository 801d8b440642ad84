//! Per-client-IP fixed-window rate limiting: on Redis (shared by every replica) or in memory,
//! falling back to memory whenever Redis does not answer in time.
//!
//! Windows are aligned to the Unix clock (`window_start = now - now % window`), so every client
//! gets a fresh budget when a window starts, on every replica alike.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pingora_limits::estimator::Estimator;

use crate::config::RateLimitConfig;
use crate::metrics;
use crate::store::RedisStore;

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
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("RateLimit-Limit", self.limit.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", self.reset_secs.to_string()),
        ]
    }
}

const SHARDS: usize = 64;
/// Exact counters kept per shard; past this, new clients of the window are counted by the
/// fixed-size sketch so that a flood of distinct addresses cannot grow memory.
const EXACT_PER_SHARD: usize = 4096;

struct Shard {
    window: u64,
    counts: HashMap<IpAddr, u64>,
}

/// In-process fixed windows with bounded memory: exact counts for up to
/// `SHARDS * EXACT_PER_SHARD` clients per window, a count-min sketch (pingora-limits) beyond.
pub struct MemoryWindows {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    overflow: Estimator,
    overflow_window: AtomicU64,
}

impl Default for MemoryWindows {
    fn default() -> Self {
        MemoryWindows {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        window: 0,
                        counts: HashMap::new(),
                    })
                })
                .collect(),
            hasher: Default::default(),
            overflow: Estimator::new(4, 64 * 1024),
            overflow_window: AtomicU64::new(0),
        }
    }
}

impl MemoryWindows {
    /// Counts one hit of `ip` in `window` and returns the window's count so far.
    pub fn hit(&self, ip: IpAddr, window: u64) -> u64 {
        let idx = (self.hasher.hash_one(ip) as usize) % SHARDS;
        {
            let mut shard = self.shards[idx].lock().unwrap_or_else(|p| p.into_inner());
            if shard.window != window {
                // A new window: the old one's counts are dropped, and an oversized map shrinks.
                shard.window = window;
                shard.counts.clear();
                shard.counts.shrink_to(EXACT_PER_SHARD / 4);
            }
            if let Some(c) = shard.counts.get_mut(&ip) {
                *c += 1;
                return *c;
            }
            if shard.counts.len() < EXACT_PER_SHARD {
                shard.counts.insert(ip, 1);
                return 1;
            }
        }
        let seen = self.overflow_window.load(Ordering::Relaxed);
        if seen != window
            && self
                .overflow_window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.overflow.reset();
        }
        self.overflow.incr((ip, window), 1).max(1) as u64
    }

    /// Number of exact counters held (for the bounded-memory test).
    pub fn exact_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.counts.len()).unwrap_or(0))
            .sum()
    }
}

/// The limiter: Redis when configured, memory otherwise and as the fallback.
pub struct RateLimiter {
    limit: u64,
    window_secs: u64,
    memory: MemoryWindows,
    redis: Option<Arc<RedisStore>>,
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
            memory: MemoryWindows::default(),
            redis,
            decisions: [
                backends.map(|b| child("allowed", b)),
                backends.map(|b| child("limited", b)),
            ],
        }
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
            Some(redis) => {
                let key = format!("ratelimit:{ip}:{window}");
                match redis.incr_window(&key, reset_secs + 1).await {
                    Ok(n) => (n, LimitBackend::Redis),
                    Err(_) => (local, LimitBackend::Fallback),
                }
            }
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

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let m = MemoryWindows::default();
        for i in 0..1_000_000u32 {
            m.hit(IpAddr::from(i.to_be_bytes()), 60);
        }
        assert!(m.exact_entries() <= SHARDS * EXACT_PER_SHARD);
        // The next window starts from nothing.
        m.hit(IpAddr::from([1, 2, 3, 4]), 120);
        assert!(m.exact_entries() < SHARDS * EXACT_PER_SHARD);
    }
}
