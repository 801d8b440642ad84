//! The embedded key-value store: a bounded map with per-entry expiry, used for cached
//! documents when no Redis is configured.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

/// Entries the embedded key-value store holds at most; past that, expired entries are dropped
/// first, then the entry closest to expiry.
const MEMORY_KV_CAPACITY: usize = 10_000;

/// The embedded key-value store: a bounded map with per-entry expiry.
#[derive(Default)]
pub struct MemoryKv {
    entries: Mutex<HashMap<String, (Instant, Bytes)>>,
}

impl MemoryKv {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, (Instant, Bytes)>> {
        self.entries.lock()
    }

    /// The live value of `key` at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<Bytes> {
        let mut map = self.lock();
        match map.get(key) {
            Some((exp, v)) if *exp > now => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `now + ttl`.
    pub fn set(&self, key: &str, value: Bytes, ttl: Duration, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MEMORY_KV_CAPACITY && !map.contains_key(key) {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= MEMORY_KV_CAPACITY {
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, (exp, _))| *exp)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.to_string(), (now + ttl, value));
    }

    /// Removes `key`; whether it was there (and live).
    pub fn remove(&self, key: &str) -> bool {
        self.lock()
            .remove(key)
            .is_some_and(|(exp, _)| exp > Instant::now())
    }

    /// Removes every live entry whose value `matches`; how many.
    pub fn remove_where(&self, matches: impl Fn(&Bytes) -> bool) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        let before = map.len();
        let mut expired = 0;
        map.retain(|_, (exp, v)| {
            if *exp <= now {
                expired += 1;
                return false;
            }
            !matches(v)
        });
        before - map.len() - expired
    }

    /// Number of entries held (for the bounded-memory test).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kv_expires_and_stays_bounded() {
        let kv = MemoryKv::default();
        let t0 = Instant::now();
        kv.set("a", Bytes::from_static(b"1"), Duration::from_secs(30), t0);
        assert_eq!(
            kv.get("a", t0 + Duration::from_secs(29)).as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(kv.get("a", t0 + Duration::from_secs(30)), None);
        for i in 0..(MEMORY_KV_CAPACITY + 100) {
            kv.set(&i.to_string(), Bytes::new(), Duration::from_secs(30), t0);
        }
        assert!(kv.len() <= MEMORY_KV_CAPACITY);
    }
}
