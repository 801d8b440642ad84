//! The aggregate's cache: the lookup in front of every build (the in-process tier, then the
//! shared store; fresh, stale-while-revalidate and stale-if-error), the writes after it, and
//! purges by key or tag racing builds and replicas.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::client::has_shape;
use super::entry::Entry;
use super::local::LocalTier;
use super::template;
use super::{Aggregate, Aggregates, Answer, CacheStatus, EntryInfo, Invalidation, Purged};
use crate::config::Expect;
use crate::error::GatewayError;
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::trace::RequestTrace;
use opentelemetry::KeyValue;

/// How long this process remembers the entries it wrote, for a purge heard from another
/// replica to delete again: a write that landed in Redis just after that purge carries data
/// from before it. Announcements take milliseconds; this is ample.
pub(super) const RECENT_MS: u64 = 2_000;

/// Most writes remembered (beyond it the oldest are forgotten).
pub(super) const RECENT_MAX: usize = 4_096;

/// Tells the other replicas of `inv`; whether they were told.
pub(super) async fn announce(store: &Store, inv: &Invalidation) -> bool {
    let payload = serde_json::to_vec(inv).unwrap_or_default();
    match store.announce(&payload).await {
        Ok(told) => told,
        Err(e) => {
            tracing::warn!(error = %e, "a cache purge could not be announced to the other replicas; their in-process copies live out their ttl");
            false
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    crate::clock::unix_now_micros() / 1000
}

/// A stored value as an entry to answer with. Anything but an entry holding JSON (an older
/// gateway's bare document, a corrupt value) is treated as absent, and overwritten.
pub(super) fn servable(raw: &Bytes) -> Option<Entry> {
    Entry::decode(raw).filter(|e| has_shape(&e.body, Expect::Any))
}

/// Whether a stored entry carries one of `tags` (the embedded store has no tag index).
pub(crate) fn entry_carries(raw: &Bytes, tags: &[String]) -> bool {
    Entry::decode(raw).is_some_and(|e| e.tags.iter().any(|t| tags.contains(t)))
}

/// The answer for a cached entry: a fresh one carries its declared lifetime, a stale one
/// `max-age=0`; both carry their `Age`, from which a client counts what is left (RFC 9111
/// §4.2.3: the lifetime is not shortened by the age as well).
pub(super) fn cached_answer(e: &Entry, cache: CacheStatus, key: String, now: u64) -> Answer {
    let lifetime = if e.is_fresh(now) {
        e.lifetime_secs()
    } else {
        0
    };
    Answer {
        cache_control: format!("private, max-age={lifetime}"),
        age: Some(e.age_secs(now)),
        body: e.body.clone(),
        cache,
        key: Some(key),
    }
}

pub(super) fn cache_metric(aggregate: &str, status: CacheStatus) {
    metrics::CACHE_REQUESTS
        .with_label_values(&[aggregate, status.label()])
        .inc();
}

impl Aggregates {
    /// Purges every entry carrying one of `tags`: here first (copies, and builds under way),
    /// then in the shared store, then announced to the other replicas.
    pub async fn invalidate_tags(&self, tags: Vec<String>) -> Result<Purged, StoreError> {
        let inv = Invalidation {
            keys: Vec::new(),
            tags,
        };
        self.forget(&inv, false);
        let count = self.store.invalidate_tags(&inv.tags, entry_carries).await?;
        let announced = announce(&self.store, &inv).await;
        Ok(Purged { count, announced })
    }

    /// Applies a purge to this process: in-process copies dropped, builds under way not kept,
    /// and (`heard`: announced by a replica) recent writes it names deleted again.
    pub(super) fn forget(&self, inv: &Invalidation, heard: bool) {
        for a in &self.list {
            a.forget(inv, heard);
        }
    }
}

impl Aggregate {
    /// The store key of the entry whose rendered key is `key` (the declaration's fingerprint
    /// appended, as every entry of this declaration carries).
    pub(super) fn stored_key(&self, key: &str) -> String {
        self.fingerprint.key(key)
    }

    /// Whether the aggregate is cached at all.
    pub fn cached(&self) -> bool {
        self.config.cache.as_ref().is_some_and(|c| !c.ttl.is_zero())
    }

    /// Purges the entry `key` (as the key template renders it) here, in the shared store and
    /// at every replica.
    pub async fn purge(&self, key: &str) -> Result<Purged, StoreError> {
        let inv = Invalidation {
            keys: vec![self.stored_key(key)],
            tags: Vec::new(),
        };
        self.forget(&inv, false);
        let existed = self.store.delete(&inv.keys[0]).await?;
        let announced = announce(&self.store, &inv).await;
        Ok(Purged {
            count: u64::from(existed),
            announced,
        })
    }

    /// See [`Aggregates::forget`].
    pub(super) fn forget(&self, inv: &Invalidation, heard: bool) {
        let keys: Vec<String> = inv
            .keys
            .iter()
            .filter(|k| self.fingerprint.owns(k))
            .cloned()
            .collect();
        if keys.is_empty() && inv.tags.is_empty() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(l) = &self.local {
            l.forget(&keys, &inv.tags);
        }
        if !heard {
            return;
        }
        let now = now_ms();
        let again: Vec<String> = {
            let mut recent = self.recent.lock();
            while recent.front().is_some_and(|(at, ..)| at + RECENT_MS < now) {
                recent.pop_front();
            }
            recent
                .iter()
                .filter(|(_, k, tags)| {
                    keys.contains(k) || tags.iter().any(|t| inv.tags.contains(t))
                })
                .map(|(_, k, _)| k.clone())
                .collect()
        };
        if !again.is_empty() {
            let store = self.store.clone();
            tokio::spawn(async move {
                for k in again {
                    let _ = store.delete(&k).await;
                }
            });
        }
    }

    /// Keeps a copy of `entry` here unless a purge came after `epoch` (checked again after,
    /// for a purge that ran between the check and the copy).
    pub(super) fn keep_local(
        &self,
        local: &LocalTier,
        key: &str,
        entry: Entry,
        epoch: u64,
        now: u64,
    ) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        local.put(key.to_string(), entry, now);
        if self.epoch.load(Ordering::Acquire) != epoch {
            local.forget(&[key.to_string()], &[]);
        }
    }

    /// Writes `entry` to the shared store (a failed write only costs a miss), unless a purge
    /// came after `epoch`; a purge arriving while the write is under way deletes it again once
    /// it lands.
    pub(super) async fn write(
        self: Arc<Self>,
        key: String,
        entry: Entry,
        keep: Duration,
        epoch: u64,
    ) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            tracing::debug!(key, "purged while building: not cached");
            return;
        }
        {
            let mut recent = self.recent.lock();
            if recent.len() >= RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back((now_ms(), key.clone(), entry.tags.clone()));
        }
        let value = entry.encode();
        if let Err(e) = self.store.set_tagged(&key, value, keep, &entry.tags).await {
            tracing::debug!(error = %e, "aggregate cache write failed");
        } else if self.epoch.load(Ordering::Acquire) != epoch {
            let _ = self.store.delete(&key).await;
        }
    }

    /// The entry `key` (as the key template renders it), if cached.
    pub async fn inspect(&self, key: &str) -> Result<Option<EntryInfo>, crate::store::StoreError> {
        let raw = self.store.get(&self.stored_key(key)).await?;
        let now = now_ms();
        Ok(raw.as_ref().and_then(Entry::decode).map(|e| EntryInfo {
            key: key.to_string(),
            age_seconds: e.age_secs(now),
            ttl_seconds: e.remaining_secs(now),
            stale: !e.is_fresh(now),
            tags: e.tags,
            bytes: e.body.len(),
        }))
    }

    /// Answers an authorized request with these `params`. With `trace`, a build's leg spans
    /// hang under its SERVER span, and joining another request's build links to that one.
    pub async fn get(
        self: &Arc<Self>,
        params: Vec<String>,
        request_id: &str,
        trace: Option<&mut RequestTrace>,
    ) -> Result<Answer, GatewayError> {
        let name = self.config.name.as_str();
        let cache = self.config.cache.as_ref().filter(|c| !c.ttl.is_zero());
        let key = match cache {
            Some(c) => self
                .fingerprint
                .key(&template::render(&c.key, &params, &[], None).unwrap_or_default()),
            // Without a cache, requests for the same params still share one build.
            None => params.join("/"),
        };
        let mut status = CacheStatus::Miss;
        // A stale entry kept for when the rebuild fails or degrades (stale-if-error).
        let mut fallback: Option<Entry> = None;
        if let Some(c) = cache {
            let now = now_ms();
            let local = self.local.as_ref().filter(|_| self.store.feeds_local());
            if let Some(held) = local.and_then(|l| l.get(&key, now)) {
                cache_metric(name, CacheStatus::Hit);
                return Ok(cached_answer(&held.entry, CacheStatus::Hit, key, now));
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            match self.store.get(&key).await {
                Ok(Some(v)) => {
                    if let Some(e) = servable(&v) {
                        let stale_for = now.saturating_sub(e.built_ms + e.fresh_ms);
                        if e.is_fresh(now) {
                            cache_metric(name, CacheStatus::Hit);
                            let answer = cached_answer(&e, CacheStatus::Hit, key, now);
                            if let (Some(l), Some(k)) = (local, &answer.key) {
                                self.keep_local(l, k, e, epoch, now);
                            }
                            return Ok(answer);
                        }
                        if stale_for < c.stale_while_revalidate.as_millis() as u64 {
                            // Answered now; one rebuild (shared with any other in flight for
                            // this key) refreshes the entry for the next reads.
                            let (flight, _) =
                                self.flight(key.clone(), params, request_id, None, true);
                            tokio::spawn(async move {
                                let _ = flight.await;
                            });
                            cache_metric(name, CacheStatus::Stale);
                            return Ok(cached_answer(&e, CacheStatus::Stale, key, now));
                        }
                        if stale_for < c.stale_if_error.as_millis() as u64 {
                            fallback = Some(e);
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => status = CacheStatus::Bypass,
            }
        }
        let memo_key = cache.is_some().then(|| key.clone());
        let parent = trace.as_deref().map(RequestTrace::parent);
        let (flight, leader) = self.flight(key, params, request_id, parent, false);
        if let Some(t) = trace {
            let role = if leader.is_some() {
                "follower"
            } else {
                "leader"
            };
            t.set(|| vec![KeyValue::new("gateway.single_flight", role)]);
            if let Some(leader) = leader {
                t.link(leader);
            }
        }
        let built = flight.await;
        if let Some(e) = fallback {
            if built.as_ref().map_or(true, |b| b.degraded) {
                // The good entry stands in for a failed or degraded rebuild (which is never
                // written over it).
                cache_metric(name, CacheStatus::StaleError);
                let key = memo_key.unwrap_or_default();
                return Ok(cached_answer(&e, CacheStatus::StaleError, key, now_ms()));
            }
        }
        if cache.is_some() {
            // An aggregate without a cache has no lookups to count (its every answer would
            // read as a miss).
            cache_metric(name, status);
        }
        let built = built?;
        let cacheable = !built.degraded && !built.ttl.is_zero();
        Ok(Answer {
            cache_control: if cacheable {
                format!("private, max-age={}", built.ttl.as_secs())
            } else {
                "no-store".into()
            },
            key: memo_key.filter(|_| cacheable),
            body: built.body,
            cache: status,
            age: None,
        })
    }
}
