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
use tokio::sync::oneshot;

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
    pub fn headers(&self) -> [(&'static str, http::HeaderValue); 3] {
        // Straight from integers: no intermediate String on every limited request.
        [
            ("RateLimit-Limit", self.limit.into()),
            ("RateLimit-Remaining", self.remaining.into()),
            ("RateLimit-Reset", self.reset_secs.into()),
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

type Waiter = oneshot::Sender<Option<u64>>;

/// Largest block of counts a replica takes from Redis at once.
const MAX_BLOCK: u64 = 64;
/// Per-window lease entries kept per shard; clients past this go to Redis one hit at a time.
const LEASES_PER_SHARD: usize = 1024;

/// Counts of one client's window that this replica has taken from Redis and not yet used.
struct Lease {
    /// Unused counts: `next..=last` (empty when `next > last`).
    next: u64,
    last: u64,
    /// A refill is in flight; hits wait in `queue` for it, in arrival order.
    refilling: bool,
    queue: Vec<Waiter>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            next: 1,
            last: 0,
            refilling: false,
            queue: Vec::new(),
        }
    }
}

impl Lease {
    /// Takes counts `first..=last` from a refill: queued hits first, the rest kept for later.
    fn fill(&mut self, mut first: u64, last: u64) {
        let mut queue = std::mem::take(&mut self.queue).into_iter();
        while first <= last {
            match queue.next() {
                Some(tx) => {
                    // A waiter that gave up has used its count anyway: counts are never reused.
                    let _ = tx.send(Some(first));
                    first += 1;
                }
                None => break,
            }
        }
        self.queue = queue.collect();
        self.next = first;
        self.last = last;
    }

    /// Tells every queued hit that Redis failed.
    fn fail(&mut self) {
        for tx in self.queue.drain(..) {
            let _ = tx.send(None);
        }
        self.refilling = false;
    }
}

struct LeaseShard {
    window: u64,
    leases: HashMap<(IpAddr, u64), Lease>,
}

/// What a hit does after looking at its lease.
enum Step {
    /// Counted locally from the lease.
    Counted(u64),
    /// Waits for the refill in flight.
    Wait(oneshot::Receiver<Option<u64>>),
    /// Fetches the next block itself.
    Refill,
    /// No lease kept (too many clients this window): one round trip of its own.
    Alone,
}

/// Redis window counters that hand out counts in blocks, so most hits need no round trip.
///
/// A replica takes `block` counts at a time with one `INCRBY` and hands them out in order;
/// hits arriving while a block is being fetched wait for it and are served from it, and a
/// queue longer than a block is fetched as one larger `INCRBY`. A count is taken from Redis
/// before it is used, so replicas together never admit more than the limit; what a replica
/// has taken but not used when the window ends is lost, so a client may get up to
/// `block - 1` fewer requests per replica and window. `block` is 1 (every hit counted in
/// Redis) for limits under 2,048 and 1/1024 of the limit up to 64 above, so the loss stays
/// under 0.1% of the limit. On this kind of machine a round trip's wake-ups, not Redis,
/// are the cost that this saves.
pub struct RedisCounters {
    redis: Arc<RedisStore>,
    block: u64,
    shards: Vec<Mutex<LeaseShard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RedisCounters {
    /// Counters on `redis` for a limit of `limit` requests per window.
    pub fn new(redis: Arc<RedisStore>, limit: u64) -> Arc<RedisCounters> {
        Arc::new(RedisCounters {
            redis,
            block: (limit / 1024).clamp(1, MAX_BLOCK),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(LeaseShard {
                        window: 0,
                        leases: HashMap::new(),
                    })
                })
                .collect(),
            hasher: Default::default(),
        })
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, LeaseShard> {
        let idx = (self.hasher.hash_one(ip) as usize) % SHARDS;
        self.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one hit of `ip` in `window` and returns its place in the window's count, or
    /// `None` when Redis did not answer (the caller falls back).
    pub async fn hit(self: &Arc<Self>, ip: IpAddr, window: u64, ttl_secs: u64) -> Option<u64> {
        let step = {
            let mut shard = self.shard(ip);
            if window > shard.window {
                shard.window = window;
                // Old windows' leftovers are worthless; an entry mid-refill still has waiters.
                shard.leases.retain(|&(_, w), l| w == window || l.refilling);
            }
            let full = shard.leases.len() >= LEASES_PER_SHARD;
            match shard.leases.get_mut(&(ip, window)) {
                Some(l) if l.next <= l.last => {
                    l.next += 1;
                    Step::Counted(l.next - 1)
                }
                Some(l) if l.refilling => {
                    let (tx, rx) = oneshot::channel();
                    l.queue.push(tx);
                    Step::Wait(rx)
                }
                Some(l) => {
                    l.refilling = true;
                    Step::Refill
                }
                None if full => Step::Alone,
                None => {
                    shard.leases.insert(
                        (ip, window),
                        Lease {
                            refilling: true,
                            ..Lease::default()
                        },
                    );
                    Step::Refill
                }
            }
        };
        match step {
            Step::Counted(n) => Some(n),
            // Bounded even if a refill were lost: the one in flight plus one of its own, each
            // within the command timeout; past that the caller falls back like on any failure.
            Step::Wait(rx) => tokio::time::timeout(self.redis.command_timeout() * 2, rx)
                .await
                .ok()
                .and_then(|r| r.ok().flatten()),
            Step::Alone => self
                .redis
                .incr_window(&redis_key(ip, window), 1, ttl_secs)
                .await
                .ok(),
            Step::Refill => {
                let mut refill = Refill {
                    counters: self.clone(),
                    slot: (ip, window),
                    ttl_secs,
                    pending: true,
                };
                let total = self
                    .redis
                    .incr_window(&redis_key(ip, window), self.block, ttl_secs)
                    .await
                    .ok();
                refill.pending = false;
                let mut shard = self.shard(ip);
                let lease = shard.leases.entry((ip, window)).or_default();
                match total {
                    None => {
                        lease.fail();
                        None
                    }
                    Some(total) => {
                        let first = (total + 1).saturating_sub(self.block);
                        lease.fill(first + 1, total);
                        self.settle(lease, (ip, window), ttl_secs);
                        Some(first)
                    }
                }
            }
        }
    }

    /// After a refill: done when nobody waits, else the waiters get a refill of their own.
    fn settle(self: &Arc<Self>, lease: &mut Lease, slot: (IpAddr, u64), ttl_secs: u64) {
        if lease.queue.is_empty() {
            lease.refilling = false;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.clone().refill_for_queue(slot, ttl_secs));
            }
            // No runtime (shutting down): the waiters fall back.
            Err(_) => lease.fail(),
        }
    }

    /// Fetches counts for the hits queued on `slot` until none wait.
    async fn refill_for_queue(self: Arc<Self>, slot: (IpAddr, u64), ttl_secs: u64) {
        loop {
            let want = {
                let mut shard = self.shard(slot.0);
                match shard.leases.get_mut(&slot) {
                    Some(l) if !l.queue.is_empty() => l.queue.len() as u64 + self.block - 1,
                    Some(l) => {
                        l.refilling = false;
                        return;
                    }
                    None => return,
                }
            };
            let total = self
                .redis
                .incr_window(&redis_key(slot.0, slot.1), want, ttl_secs)
                .await
                .ok();
            let mut shard = self.shard(slot.0);
            let lease = shard.leases.entry(slot).or_default();
            match total {
                None => return lease.fail(),
                Some(total) => lease.fill((total + 1).saturating_sub(want), total),
            }
        }
    }
}

/// The Redis key of `ip`'s counter for `window`.
fn redis_key(ip: IpAddr, window: u64) -> String {
    format!("ratelimit:{ip}:{window}")
}

/// A refill led by a request; if that request is dropped mid-flight, the hits queued behind
/// it are handed to a task so that none of them waits on a future nobody polls.
struct Refill {
    counters: Arc<RedisCounters>,
    slot: (IpAddr, u64),
    ttl_secs: u64,
    pending: bool,
}

impl Drop for Refill {
    fn drop(&mut self) {
        if !self.pending {
            return;
        }
        let mut shard = self.counters.shard(self.slot.0);
        if let Some(lease) = shard.leases.get_mut(&self.slot) {
            self.counters.settle(lease, self.slot, self.ttl_secs);
        }
    }
}

/// The limiter: Redis when configured, memory otherwise and as the fallback.
pub struct RateLimiter {
    limit: u64,
    window_secs: u64,
    memory: MemoryWindows,
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
            memory: MemoryWindows::default(),
            redis: redis.map(|r| RedisCounters::new(r, cfg.limit)),
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
