//! Shared state: Redis when configured, so every replica sees the same counters and cached
//! documents, else an embedded bounded map in this process.
//!
//! - [`redis`]: the Redis connection with a command timeout, a breaker that stops waiting on a
//!   dead server, and rate-limited warnings.
//! - [`memory`]: the embedded key-value map with per-entry expiry.
//!
//! This module may use `config`, `metrics`, `resilience` and `clock`; nothing on the request
//! path above it talks to Redis except through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub(crate) mod memory;
pub mod redis;

pub(crate) use self::memory::MemoryKv;
pub use self::redis::{RedisStore, TopologyWatch};

/// Why a store operation did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the command timeout.
    #[error("redis command timed out")]
    Timeout,
    /// Recent failures opened the breaker: not even tried.
    #[error("redis is unavailable (breaker open)")]
    Unavailable,
    /// Redis answered with an error or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] ::redis::RedisError),
}

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
}
