//! The shared store: Redis when configured (limiter counters, cached profiles), with a command
//! timeout, a breaker that stops waiting on a dead server, and rate-limited warnings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{Client, Script};

use crate::config::RedisConfig;
use crate::metrics;
use crate::resilience::CircuitBreaker;

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
    Redis(#[from] redis::RedisError),
}

/// Consecutive failures after which Redis is skipped for [`REDIS_PAUSE`].
const REDIS_FAILURES: u32 = 3;
/// How long requests stop waiting on a failing Redis before one probes it again: short, so a
/// restarted Redis is used again within about a second.
const REDIS_PAUSE: Duration = Duration::from_millis(1000);
/// At most one warning per this many seconds per kind of trouble.
const WARN_EVERY_SECS: u64 = 10;

/// Logs a warning at most once per [`WARN_EVERY_SECS`].
#[derive(Debug, Default)]
pub struct WarnLimiter {
    last: AtomicU64,
}

impl WarnLimiter {
    /// Whether a warning may be logged now (and records that it was).
    pub fn allow(&self) -> bool {
        let now = unix_now();
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + WARN_EVERY_SECS)
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A Redis connection shared by every request of this process.
pub struct RedisStore {
    client: Client,
    config: RedisConfig,
    /// Created on first use, inside the serving runtime, so the connection's driver task runs
    /// there; `ConnectionManager` then reconnects by itself.
    manager: OnceLock<ConnectionManager>,
    breaker: CircuitBreaker,
    warn: WarnLimiter,
    incr_script: Script,
}

// INCRBY and EXPIRE … NX in one script: atomic, one round trip, and the key can never be left
// without a TTL (NX keeps the first TTL so the window's expiry does not slide).
const INCR_WINDOW: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return n
";

impl RedisStore {
    /// Prepares a client for `url`; nothing connects until the first command.
    pub fn new(url: &str, config: RedisConfig) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            client: Client::open(url)?,
            config,
            manager: OnceLock::new(),
            breaker: CircuitBreaker::new(REDIS_FAILURES, REDIS_PAUSE, Instant::now()),
            warn: WarnLimiter::default(),
            incr_script: Script::new(INCR_WINDOW),
        })
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)?;
        Ok(self.manager.get_or_init(|| m).clone())
    }

    /// Runs `op` under the breaker and the command timeout, recording failures.
    async fn run<T, F>(
        &self,
        op: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.admit(Instant::now()).0.is_allowed() {
            metrics::STORE_ERRORS
                .with_label_values(&["redis", op])
                .inc();
            return Err(StoreError::Unavailable);
        }
        let conn = self.manager()?;
        let result = match tokio::time::timeout(self.config.command_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        let now = Instant::now();
        match &result {
            Ok(_) => {
                if self.breaker.on_success(now).is_some() {
                    tracing::info!("redis is answering again");
                }
            }
            Err(e) => {
                metrics::STORE_ERRORS
                    .with_label_values(&["redis", op])
                    .inc();
                self.breaker.on_failure(now);
                if self.warn.allow() {
                    tracing::warn!(op, error = %e, "redis failed; falling back (this warning repeats at most every 10 s)");
                }
            }
        }
        result
    }

    /// How long one command may take before the caller falls back.
    pub fn command_timeout(&self) -> Duration {
        self.config.command_timeout
    }

    /// Adds `by` to a fixed-window counter and returns the new count.
    pub async fn incr_window(&self, key: &str, by: u64, ttl_secs: u64) -> Result<u64, StoreError> {
        let script = &self.incr_script;
        self.run("incr", |mut c| async move {
            script
                .key(key)
                .arg(ttl_secs.max(1))
                .arg(by)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Reads a key.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run("get", |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// Writes a key with a TTL.
    pub async fn set_ex(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let secs = ttl.as_secs().max(1);
        self.run("set", |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(secs)
                .query_async(&mut c)
                .await
        })
        .await
    }
}

/// Entries the embedded key-value store holds at most; past that, expired entries are dropped
/// first, then the entry closest to expiry.
const MEMORY_KV_CAPACITY: usize = 10_000;

/// The embedded key-value store: a bounded map with per-entry expiry.
#[derive(Default)]
pub struct MemoryKv {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Instant, bytes::Bytes)>>,
}

impl MemoryKv {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Instant, bytes::Bytes)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live value of `key` at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<bytes::Bytes> {
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
    pub fn set(&self, key: &str, value: bytes::Bytes, ttl: Duration, now: Instant) {
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

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where cached values live: Redis when configured, else the embedded map.
pub enum Store {
    /// Shared by every replica.
    Redis(std::sync::Arc<RedisStore>),
    /// This process only.
    Memory(MemoryKv),
}

impl Store {
    /// Reads `key`; an error means "could not tell" (the caller bypasses the cache).
    pub async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        match self {
            Store::Redis(r) => Ok(r.get(key).await?.map(bytes::Bytes::from)),
            Store::Memory(m) => Ok(m.get(key, Instant::now())),
        }
    }

    /// Writes `key` with a TTL.
    pub async fn set(
        &self,
        key: &str,
        value: bytes::Bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kv_expires_and_stays_bounded() {
        let kv = MemoryKv::default();
        let t0 = Instant::now();
        kv.set(
            "a",
            bytes::Bytes::from_static(b"1"),
            Duration::from_secs(30),
            t0,
        );
        assert_eq!(
            kv.get("a", t0 + Duration::from_secs(29)).as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(kv.get("a", t0 + Duration::from_secs(30)), None);
        for i in 0..(MEMORY_KV_CAPACITY + 100) {
            kv.set(
                &i.to_string(),
                bytes::Bytes::new(),
                Duration::from_secs(30),
                t0,
            );
        }
        assert!(kv.len() <= MEMORY_KV_CAPACITY);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let w = WarnLimiter::default();
        assert!(w.allow());
        assert!(!w.allow());
    }
}
