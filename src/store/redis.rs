//! The Redis connection shared by every request of this process: created lazily (the gateway
//! starts with Redis down), every command bounded by the command timeout, and a breaker that
//! skips Redis for a second after three failures so an outage costs requests no waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Client, Script};

use super::StoreError;
use crate::clock::unix_now;
use crate::config::RedisConfig;
use crate::metrics;
use crate::resilience::CircuitBreaker;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited() {
        let w = WarnLimiter::default();
        assert!(w.allow());
        assert!(!w.allow());
    }
}
