//! The in-process tier in front of the shared store (`cache.local`): fresh entries kept in
//! this process for a few seconds, so that a hit costs a map lookup instead of a round trip
//! to Redis. Bounded by count (S3-FIFO eviction from `quick_cache`), and by time: an entry is
//! kept at most `ttl_seconds` and never past its freshness, so stale serving and revalidation
//! stay with the shared store. Purges reach it through the invalidation feed.

use std::sync::Arc;

use prometheus::IntGauge;

use super::entry::Entry;
use crate::config::LocalSpec;
use crate::metrics;

/// A copy of an entry and when this process stops using it (ms since the epoch).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) entry: Entry,
    until_ms: u64,
}

/// One aggregate's in-process copies.
pub(crate) struct LocalTier {
    entries: quick_cache::sync::Cache<String, Arc<Held>>,
    ttl_ms: u64,
    gauge: IntGauge,
}

impl LocalTier {
    /// An empty tier for `aggregate` as `spec` bounds it.
    pub(crate) fn new(aggregate: &str, spec: &LocalSpec) -> LocalTier {
        let gauge = metrics::CACHE_LOCAL_ENTRIES.with_label_values(&[aggregate]);
        gauge.set(0);
        LocalTier {
            entries: quick_cache::sync::Cache::new(spec.max_entries),
            ttl_ms: spec.ttl.as_millis() as u64,
            gauge,
        }
    }

    /// The copy of `key`, unless it has run out at `now_ms`.
    pub(crate) fn get(&self, key: &str, now_ms: u64) -> Option<Arc<Held>> {
        let held = self.entries.get(key)?;
        if now_ms < held.until_ms {
            return Some(held);
        }
        self.entries.remove(key);
        self.count();
        None
    }

    /// Keeps a copy of a fresh `entry` under `key`.
    pub(crate) fn put(&self, key: String, entry: Entry, now_ms: u64) {
        let until_ms = (now_ms + self.ttl_ms).min(entry.built_ms + entry.fresh_ms);
        if until_ms <= now_ms {
            return;
        }
        self.entries.insert(key, Arc::new(Held { entry, until_ms }));
        self.count();
    }

    /// Drops the copies of `keys` and of every entry carrying one of `tags`; how many.
    pub(crate) fn forget(&self, keys: &[String], tags: &[String]) -> usize {
        let before = self.entries.len();
        for k in keys {
            self.entries.remove(k.as_str());
        }
        if !tags.is_empty() {
            self.entries
                .retain(|_, h| !h.entry.tags.iter().any(|t| tags.contains(t)));
        }
        self.count();
        before.saturating_sub(self.entries.len())
    }

    /// Drops every copy.
    pub(crate) fn clear(&self) {
        self.entries.clear();
        self.count();
    }

    fn count(&self) {
        self.gauge.set(self.entries.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn entry(built_ms: u64, fresh_ms: u64, tags: &[&str]) -> Entry {
        Entry {
            built_ms,
            fresh_ms,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            body: Bytes::from_static(b"{}"),
        }
    }

    fn tier(max_entries: usize) -> LocalTier {
        LocalTier::new(
            "test_local",
            &LocalSpec {
                max_entries,
                ttl: Duration::from_secs(2),
            },
        )
    }

    #[test]
    fn a_copy_lasts_its_ttl_and_never_past_freshness() {
        let t = tier(100);
        let now = 1_000_000;
        t.put("a".into(), entry(now, 30_000, &[]), now);
        assert!(t.get("a", now + 1_999).is_some());
        assert!(t.get("a", now + 2_000).is_none(), "local ttl is 2 s");
        // Built 29.5 s ago with 30 s of freshness: kept half a second, not two.
        t.put("b".into(), entry(now - 29_500, 30_000, &[]), now);
        assert!(t.get("b", now + 499).is_some());
        assert!(t.get("b", now + 500).is_none());
        // Already stale: not kept at all.
        t.put("c".into(), entry(now - 40_000, 30_000, &[]), now);
        assert!(t.get("c", now).is_none());
    }

    #[test]
    fn purges_by_key_and_tag_and_the_bound_holds() {
        let t = tier(100);
        let now = 5_000;
        t.put("k1".into(), entry(now, 30_000, &["user:1"]), now);
        t.put("k2".into(), entry(now, 30_000, &["user:2", "team:x"]), now);
        t.put("k3".into(), entry(now, 30_000, &["team:x"]), now);
        t.put("k4".into(), entry(now, 30_000, &[]), now);
        assert_eq!(t.forget(&["k1".into()], &[]), 1);
        assert_eq!(t.forget(&[], &["team:x".into()]), 2);
        assert!(t.get("k4", now).is_some());
        assert_eq!(t.gauge.get(), 1);
        t.clear();
        assert!(t.get("k4", now).is_none());
        let small = tier(10);
        for i in 0..1000 {
            small.put(format!("k{i}"), entry(now, 30_000, &[]), now);
        }
        assert!(small.entries.len() <= 10, "{}", small.entries.len());
    }
}
