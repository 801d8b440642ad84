//! The Redis side of the limiter: one shared counter per client and window, taken in blocks.

use std::sync::Arc;

use parking_lot::MutexGuard;
use tokio::sync::oneshot;

use super::decision::Subject;
use super::memory::SHARDS;
use crate::sharded::{ClientMap, Sharded};
use crate::store::RedisStore;

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

#[derive(Default)]
struct LeaseShard {
    window: u64,
    leases: ClientMap<(Subject, u64), Lease>,
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
/// under 0.1% of the limit. What a block saves is a round trip's wake-ups, not Redis time
/// (docs/BENCHMARKS.md).
pub(crate) struct RedisCounters {
    redis: Arc<RedisStore>,
    /// `ratelimit:` for the default policy, `ratelimit:<policy>:` for named ones.
    prefix: String,
    block: u64,
    shards: Sharded<LeaseShard>,
}

impl RedisCounters {
    /// Counters on `redis` for a limit of `limit` requests per window, under keys starting
    /// with `prefix`.
    pub(crate) fn new(redis: Arc<RedisStore>, limit: u64, prefix: String) -> Arc<RedisCounters> {
        Arc::new(RedisCounters {
            redis,
            prefix,
            block: (limit / 1024).clamp(1, MAX_BLOCK),
            shards: Sharded::new(SHARDS, LeaseShard::default),
        })
    }

    /// The Redis key of `ip`'s counter for `window`.
    fn key(&self, ip: Subject, window: u64) -> String {
        format!("{}{ip}:{window}", self.prefix)
    }

    fn shard(&self, ip: Subject) -> MutexGuard<'_, LeaseShard> {
        self.shards.lock(&ip)
    }

    /// Counts one hit of `ip` in `window` and returns its place in the window's count, or
    /// `None` when Redis did not answer (the caller falls back).
    pub(crate) async fn hit(
        self: &Arc<Self>,
        ip: Subject,
        window: u64,
        ttl_secs: u64,
    ) -> Option<u64> {
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
                .incr_window(&self.key(ip, window), 1, ttl_secs)
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
                    .incr_window(&self.key(ip, window), self.block, ttl_secs)
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
    fn settle(self: &Arc<Self>, lease: &mut Lease, slot: (Subject, u64), ttl_secs: u64) {
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
    async fn refill_for_queue(self: Arc<Self>, slot: (Subject, u64), ttl_secs: u64) {
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
                .incr_window(&self.key(slot.0, slot.1), want, ttl_secs)
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

/// A refill led by a request; if that request is dropped mid-flight, the hits queued behind
/// it are handed to a task so that none of them waits on a future nobody polls.
struct Refill {
    counters: Arc<RedisCounters>,
    slot: (Subject, u64),
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
