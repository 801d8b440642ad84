//! In-process fixed windows with bounded memory: the limiter without Redis, and its fallback.

use std::sync::atomic::{AtomicU64, Ordering};

use pingora_limits::estimator::Estimator;

use super::decision::Subject;
use crate::sharded::{ClientMap, Sharded};

/// Shards of the exact counters (and of the Redis leases): enough that two worker threads
/// rarely meet on one lock.
pub(super) const SHARDS: usize = 64;
/// Exact counters kept per shard; past this, new clients of the window are counted by the
/// fixed-size sketch so that a flood of distinct addresses cannot grow memory.
const EXACT_PER_SHARD: usize = 4096;

#[derive(Default)]
struct Shard {
    window: u64,
    counts: ClientMap<Subject, u64>,
}

/// In-process fixed windows with bounded memory: exact counts for up to
/// `SHARDS * EXACT_PER_SHARD` clients per window, a count-min sketch (pingora-limits) beyond.
pub(crate) struct MemoryWindows {
    shards: Sharded<Shard>,
    overflow: Estimator,
    overflow_window: AtomicU64,
}

impl Default for MemoryWindows {
    fn default() -> Self {
        MemoryWindows {
            shards: Sharded::new(SHARDS, Shard::default),
            overflow: Estimator::new(4, 64 * 1024),
            overflow_window: AtomicU64::new(0),
        }
    }
}

impl MemoryWindows {
    /// Counts one hit of `ip` in `window` and returns the window's count so far.
    pub(crate) fn hit(&self, ip: Subject, window: u64) -> u64 {
        {
            let mut shard = self.shards.lock(&ip);
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
    #[cfg(test)]
    fn exact_entries(&self) -> usize {
        self.shards.each().map(|s| s.counts.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let m = MemoryWindows::default();
        for i in 0..1_000_000u32 {
            m.hit(Subject::Ip(IpAddr::from(i.to_be_bytes())), 60);
        }
        assert!(m.exact_entries() <= SHARDS * EXACT_PER_SHARD);
        // Past the exact counters, a new client is still counted (by the sketch), so a flood of
        // addresses cannot buy anyone an unlimited budget.
        let late = Subject::Ip(IpAddr::from([250, 1, 2, 3]));
        let counts: Vec<u64> = (0..20).map(|_| m.hit(late, 60)).collect();
        assert!(counts.windows(2).all(|w| w[1] > w[0]), "{counts:?}");
        assert!(counts[19] >= 20, "the sketch never undercounts: {counts:?}");
        // The next window starts from nothing.
        m.hit(Subject::Ip(IpAddr::from([1, 2, 3, 4])), 120);
        assert!(m.exact_entries() < SHARDS * EXACT_PER_SHARD);
    }
}
