//! Per-request state split into independently locked shards, so that requests on different
//! threads rarely wait for one another. Used by the in-memory limiter, the Redis limiter's
//! leases and the verified-token cache.

use std::hash::Hash;

use ahash::RandomState;

use parking_lot::{Mutex, MutexGuard};

/// A map keyed by what clients send (verified tokens, limiter subjects): ahash's keyed hash
/// still resists collision floods, at a fraction of SipHash's cost on every request.
pub(crate) type ClientMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// `N` shards of `T`, each behind its own lock.
pub(crate) struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: RandomState,
}

impl<T> Sharded<T> {
    /// `count` shards, each built by `make`.
    pub(crate) fn new(count: usize, make: impl Fn() -> T) -> Self {
        Sharded {
            shards: (0..count.max(1)).map(|_| Mutex::new(make())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard that owns `key` (picked by a per-process random hash, so a client cannot aim
    /// all its keys at one shard).
    pub(crate) fn lock<K: Hash + ?Sized>(&self, key: &K) -> MutexGuard<'_, T> {
        self.lock_at(self.hasher.hash_one(key))
    }

    /// The hash [`lock`](Self::lock) would use for `key`, for callers that keep it instead of
    /// the key.
    pub(crate) fn hash_of<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard for a caller-computed `hash` (for keys that are already uniform).
    pub(crate) fn lock_at(&self, hash: u64) -> MutexGuard<'_, T> {
        self.shards[(hash % self.shards.len() as u64) as usize].lock()
    }

    /// Every shard in turn (for tests; never on the request path).
    #[cfg(test)]
    pub(crate) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(|s| s.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_shard() {
        let s: Sharded<Vec<u32>> = Sharded::new(8, Vec::new);
        for i in 0..100u32 {
            s.lock(&i).push(i);
        }
        for i in 0..100u32 {
            assert!(s.lock(&i).contains(&i));
        }
        assert_eq!(s.each().map(|g| g.len()).sum::<usize>(), 100);
        assert!(s.each().filter(|g| !g.is_empty()).count() > 1, "spread");
    }
}
