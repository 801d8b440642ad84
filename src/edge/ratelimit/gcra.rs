//! GCRA (the generic cell rate algorithm): requests spaced `interval` apart on average, with up
//! to `burst` admitted at once after a pause, and no doubled rate at window edges.
//!
//! The state per client is one number, its theoretical arrival time (TAT). On Redis the
//! decision is one Lua script on Redis's own clock (replicas with skewed clocks share one
//! schedule); in memory it is the same arithmetic on a clock the caller passes in.

use std::sync::Arc;

use super::decision::{Decision, LimitBackend, Subject};
use super::memory::SHARDS;
use crate::sharded::{ClientMap, Sharded};
use crate::store::RedisStore;

/// Schedules kept per shard; past this, expired ones are swept and, if that is not enough, a
/// quarter of the shard is forgotten (those clients get a fresh burst), so that a flood of
/// distinct keys costs one sweep per thousand new keys and bounded memory.
const PER_SHARD: usize = 4096;

/// In-process GCRA schedules: the limiter without Redis, and its fallback.
pub(crate) struct MemoryGcra {
    shards: Sharded<ClientMap<Subject, u64>>,
}

impl Default for MemoryGcra {
    fn default() -> Self {
        MemoryGcra {
            shards: Sharded::new(SHARDS, ClientMap::default),
        }
    }
}

impl MemoryGcra {
    /// One decision for `who` at `now_us`: `Ok(TAT - now)` after admitting, or `Err(wait)`
    /// with the microseconds until a request would be admitted.
    pub(crate) fn decide(
        &self,
        who: Subject,
        now_us: u64,
        interval_us: u64,
        tolerance_us: u64,
    ) -> Result<u64, u64> {
        let mut shard = self.shards.lock(&who);
        let tat = shard.get(&who).copied().unwrap_or(0).max(now_us);
        let next = tat + interval_us;
        if next - now_us > tolerance_us {
            return Err(next - tolerance_us - now_us);
        }
        if shard.len() >= PER_SHARD && !shard.contains_key(&who) {
            // A TAT in the past is the same as no entry.
            shard.retain(|_, t| *t > now_us);
            if shard.len() >= PER_SHARD * 3 / 4 {
                let forget: Vec<Subject> = shard.keys().take(PER_SHARD / 4).copied().collect();
                for k in forget {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(who, next);
        Ok(next - now_us)
    }

    /// Schedules held (for the bounded-memory test).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards.each().map(|s| s.len()).sum()
    }
}

/// Leases kept per shard; past this (after dropping expired ones) a grant's leftover is not
/// kept.
const LEASES_PER_SHARD: usize = 1024;
/// How long admissions granted by Redis but not yet used stay usable: after a pause this long
/// the leftover is dropped, so it cannot add to a fresh burst.
const LEASE_US: u64 = 1_000_000;

/// What this replica knows of one client's schedule on Redis: admissions granted ahead of use
/// (a block), or a refusal that holds until a known time.
struct Lease {
    left: u64,
    /// The client's TAT as Redis reported it with the grant (local clock).
    tat_us: u64,
    expires_us: u64,
    /// Redis said nothing fits before this (local clock). A TAT only moves forward, so every
    /// request until then is refused here without a round trip — a flood of refused requests
    /// costs Redis nothing.
    refused_until_us: u64,
}

/// One GCRA policy: on Redis when configured, in memory otherwise and as the fallback.
///
/// Like the fixed window's blocks, a policy of 2,048 or more per window asks Redis for
/// `limit / 1024` admissions at once (at most 64, at most the burst) and hands them out
/// locally: one script per block instead of per request. Redis grants only what fits the
/// schedule, so replicas together never admit more than the rate allows; what a replica was
/// granted and did not use within a second is lost (under 0.1% of the limit per replica). A
/// refusal is remembered until the time Redis named, so refused floods cost no round trips.
pub(crate) struct Gcra {
    limit: u64,
    interval_us: u64,
    tolerance_us: u64,
    block: u64,
    /// Shared with the policy a reload replaces, so that schedules survive it.
    pub(super) memory: Arc<MemoryGcra>,
    redis: Option<Arc<RedisStore>>,
    leases: Sharded<ClientMap<Subject, Lease>>,
    /// `ratelimit:<policy>:`
    prefix: String,
}

impl Gcra {
    /// `limit` requests per `window_secs` with `burst` at once.
    pub(crate) fn new(
        limit: u64,
        window_secs: u64,
        burst: u64,
        redis: Option<Arc<RedisStore>>,
        prefix: String,
    ) -> Gcra {
        let interval_us = (window_secs.saturating_mul(1_000_000) / limit.max(1)).max(1);
        let block = if limit >= 2048 {
            (limit / 1024).clamp(1, 64).min(burst.max(1))
        } else {
            1
        };
        Gcra {
            limit,
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst.max(1)),
            block,
            memory: Arc::default(),
            redis,
            leases: Sharded::new(SHARDS, ClientMap::default),
            prefix,
        }
    }

    /// A decision from what this replica knows for `who`: an admission from its lease, or a
    /// refusal Redis already gave; `None`: ask Redis.
    fn leased(&self, who: Subject, now_us: u64) -> Option<Decision> {
        let mut shard = self.leases.lock(&who);
        let lease = shard.get_mut(&who)?;
        if now_us < lease.refused_until_us {
            let wait = lease.refused_until_us - now_us;
            return Some(self.decision(Err(wait), LimitBackend::Redis));
        }
        if lease.left == 0 || now_us >= lease.expires_us {
            shard.remove(&who);
            return None;
        }
        lease.left -= 1;
        let ahead = lease.tat_us.saturating_sub(now_us);
        let mut d = self.decision(Ok(ahead), LimitBackend::Redis);
        d.remaining += lease.left;
        Some(d)
    }

    /// Remembers what Redis answered for `who`: `Ok((left, ahead))` keeps `left` admissions
    /// of a grant for the next requests, `Err(wait)` a refusal until `now + wait`.
    fn keep(&self, who: Subject, now_us: u64, answer: Result<(u64, u64), u64>) {
        let mut shard = self.leases.lock(&who);
        if shard.len() >= LEASES_PER_SHARD && !shard.contains_key(&who) {
            shard.retain(|_, l| {
                (l.expires_us > now_us && l.left > 0) || l.refused_until_us > now_us
            });
            if shard.len() >= LEASES_PER_SHARD {
                return;
            }
        }
        let lease = shard.entry(who).or_insert(Lease {
            left: 0,
            tat_us: 0,
            expires_us: 0,
            refused_until_us: 0,
        });
        match answer {
            Ok((left, ahead)) => {
                // Concurrent grants for one client add up; each was granted by Redis.
                lease.left += left;
                lease.tat_us = lease.tat_us.max(now_us + ahead);
                lease.expires_us = now_us + LEASE_US;
            }
            Err(wait) => lease.refused_until_us = lease.refused_until_us.max(now_us + wait),
        }
    }

    /// Decides for `who` at `now_us` (Redis uses its own clock).
    pub(crate) async fn check(&self, who: Subject, now_us: u64) -> Decision {
        let (outcome, backend) = match &self.redis {
            None => (self.local(who, now_us), LimitBackend::Memory),
            Some(redis) => {
                if let Some(d) = self.leased(who, now_us) {
                    return d;
                }
                let key = format!("{}{who}:gcra", self.prefix);
                match redis
                    .gcra(&key, self.interval_us, self.tolerance_us, self.block)
                    .await
                {
                    Ok((0, wait)) => {
                        self.keep(who, now_us, Err(wait));
                        (Err(wait), LimitBackend::Redis)
                    }
                    Ok((granted, ahead)) => {
                        if granted > 1 {
                            self.keep(who, now_us, Ok((granted - 1, ahead)));
                        }
                        (Ok(ahead), LimitBackend::Redis)
                    }
                    Err(_) => (self.local(who, now_us), LimitBackend::Fallback),
                }
            }
        };
        self.decision(outcome, backend)
    }

    fn local(&self, who: Subject, now_us: u64) -> Result<u64, u64> {
        self.memory
            .decide(who, now_us, self.interval_us, self.tolerance_us)
    }

    /// Headers' view of an outcome: what is left now (at most the burst), and when the whole
    /// burst is back (admitted) or the next request may come (refused).
    fn decision(&self, outcome: Result<u64, u64>, backend: LimitBackend) -> Decision {
        match outcome {
            Ok(ahead) => Decision {
                allowed: true,
                limit: self.limit,
                remaining: self.tolerance_us.saturating_sub(ahead) / self.interval_us,
                reset_secs: ahead.div_ceil(1_000_000).max(1),
                backend,
            },
            Err(wait) => Decision {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset_secs: wait.div_ceil(1_000_000).max(1),
                backend,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const SEC: u64 = 1_000_000;

    fn who(n: u8) -> Subject {
        Subject::Ip(IpAddr::from([192, 0, 2, n]))
    }

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_is_smooth() {
        // 60 per minute (one a second) with a burst of 5.
        let g = Gcra::new(60, 60, 5, None, String::new());
        let t0 = 1_700_000_000 * SEC;
        for i in 0..5 {
            let d = g.check(who(1), t0).await;
            assert!(d.allowed, "burst request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = g.check(who(1), t0).await;
        assert!(!d.allowed, "the sixth at once is over the burst");
        assert_eq!(d.reset_secs, 1, "one interval until the next");
        // Then exactly one per second: not earlier, and on time.
        for s in 1..=20u64 {
            assert!(
                !g.check(who(1), t0 + s * SEC - 1).await.allowed,
                "early at {s}"
            );
            assert!(
                g.check(who(1), t0 + s * SEC).await.allowed,
                "on time at {s}"
            );
        }
        // Another client has its own schedule.
        assert!(g.check(who(2), t0).await.allowed);
        // After a pause as long as the burst, the whole burst is back.
        let later = t0 + 20 * SEC + 5 * SEC;
        for _ in 0..5 {
            assert!(g.check(who(1), later).await.allowed);
        }
        assert!(!g.check(who(1), later).await.allowed);
    }

    #[tokio::test]
    async fn no_double_rate_across_a_window_edge() {
        // The fixed window admits 2 × limit around an edge; GCRA with burst = limit admits the
        // burst and then only the rate, wherever the edge falls.
        let g = Gcra::new(10, 60, 10, None, String::new());
        let t0 = 1_700_000_059 * SEC;
        let mut admitted = 0;
        for ms in 0..2000u64 {
            if g.check(who(3), t0 + ms * 1000).await.allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let m = MemoryGcra::default();
        let t = 1_700_000_000 * SEC;
        for i in 0..1_000_000u32 {
            let _ = m.decide(
                Subject::Ip(IpAddr::from(i.to_be_bytes())),
                t,
                60 * SEC,
                600 * SEC,
            );
        }
        assert!(m.entries() <= SHARDS * PER_SHARD);
    }
}
