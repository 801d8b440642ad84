//! Shared state: Redis when configured, so every replica sees the same counters and cached
//! documents, else an embedded bounded map in this process.
//!
//! - [`redis`]: the Redis connection with a command timeout, a breaker that stops waiting on a
//!   dead server, and rate-limited warnings.
//! - [`memory`]: the embedded key-value map with per-entry expiry.
//! - [`feed`]: purges announced to, and heard from, the other replicas (Redis pub/sub).
//! - `error`: how a store operation fails.
//!
//! Nothing on the request path above it talks to Redis except through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

mod error;
pub mod feed;
pub(crate) mod memory;
pub mod redis;

pub use self::error::StoreError;
pub use self::feed::{FeedEvent, InvalidationFeed};
pub(crate) use self::memory::MemoryKv;
pub use self::redis::{RedisStore, TopologyWatch};

/// Where cached values live: Redis when configured, else the embedded map.
pub(crate) enum Store {
    /// Shared by every replica.
    Redis(Arc<RedisStore>),
    /// This process only.
    Memory(MemoryKv),
}

impl Store {
    /// Reads `key`; an error means "could not tell" (the caller bypasses the cache).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self {
            Store::Redis(r) => Ok(r.get(key).await?.map(Bytes::from)),
            Store::Memory(m) => Ok(m.get(key, Instant::now())),
        }
    }

    /// Writes `key` with a TTL.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Redis(r) => r.set_ex(key, &value, ttl).await,
            Store::Memory(m) => {
                m.set(key, value, ttl, Instant::now());
                Ok(())
            }
        }
    }

    /// Writes `key` with a TTL, first adding it to each of `tags` (so that an entry is never
    /// in the store without being reachable from its tags).
    pub(crate) async fn set_tagged(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), StoreError> {
        if let Store::Redis(r) = self {
            let keys: Vec<String> = tags.iter().map(|t| tag_key(t)).collect();
            let adds = keys.iter().map(|k| r.tag(k, key, ttl));
            for added in futures::future::join_all(adds).await {
                added?;
            }
        }
        self.set(key, value, ttl).await
    }

    /// Whether copies of entries may be kept in this process: only while the other replicas'
    /// purges are heard (never with the embedded store, which is in this process already).
    pub(crate) fn feeds_local(&self) -> bool {
        match self {
            Store::Redis(r) => r.subscribed(),
            Store::Memory(_) => false,
        }
    }

    /// Whether the store answers now (the embedded one always does).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Redis(r) => r.ping().await,
            Store::Memory(_) => Ok(()),
        }
    }

    /// Tells every replica about a purge (`payload`, as the aggregates encode it); `Ok(false)`
    /// when there are no other replicas to tell (the embedded store).
    pub(crate) async fn announce(&self, payload: &[u8]) -> Result<bool, StoreError> {
        match self {
            Store::Redis(r) => {
                r.publish(feed::CHANNEL, payload).await?;
                feed::Direction::Sent.count();
                Ok(true)
            }
            Store::Memory(_) => Ok(false),
        }
    }

    /// Deletes `key`; whether it existed.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Redis(r) => r.del(key).await,
            Store::Memory(m) => Ok(m.remove(key)),
        }
    }

    /// Deletes every entry carrying one of `tags` and returns how many there were. In memory,
    /// where there is no tag index, `carries(value, tags)` reads an entry's own tags.
    pub(crate) async fn invalidate_tags(
        &self,
        tags: &[String],
        carries: impl Fn(&Bytes, &[String]) -> bool,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Redis(r) => {
                let mut purged = 0;
                for t in tags {
                    let key = tag_key(t);
                    let members = r.tag_members(&key).await?;
                    let dels = members.iter().map(|m| r.del(m));
                    for gone in futures::future::join_all(dels).await {
                        purged += u64::from(gone?);
                    }
                    r.del(&key).await?;
                }
                Ok(purged)
            }
            Store::Memory(m) => Ok(m.remove_where(|v| carries(v, tags)) as u64),
        }
    }
}

/// The Redis key of a tag's set of entries.
fn tag_key(tag: &str) -> String {
    format!("cachetag:{tag}")
}

/// Creates the shared store's series at 0: Redis errors by operation and the replicas'
/// invalidation messages. Nothing to count without Redis.
pub(crate) fn prime(config: &crate::config::RedisConfig) {
    if config.url.is_none() && config.cluster.is_empty() && config.sentinel.is_none() {
        return;
    }
    for op in redis::Op::ALL {
        crate::metrics::STORE_ERRORS.with_label_values(&["redis", op.label()]);
    }
    for direction in feed::Direction::ALL {
        crate::metrics::CACHE_INVALIDATION_MESSAGES.with_label_values(&[direction.label()]);
    }
}
