//! Verified tokens by their exact text, so that a client presenting the same token again skips
//! the HMAC and the JSON; only the time-dependent checks are repeated.

use std::sync::Arc;

use super::identity::Identity;
use crate::sharded::{ClientMap, Sharded};

/// A verified token's identity and validity window, kept so that a client presenting the same
/// token again skips the HMAC and the JSON (the edge-check cost on every request otherwise).
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) identity: Arc<Identity>,
    pub(super) exp: f64,
    pub(super) nbf: Option<f64>,
    /// The configured issuer (by position) whose keys verified it; `None` for HS256. A cached
    /// verdict lasts only as long as that issuer's keys may be used (`max_stale_seconds`).
    pub(super) issuer: Option<usize>,
    /// Raised when the issuer withdraws the key that verified it (`None` for HS256).
    pub(super) withdrawn: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

const CACHE_SHARDS: usize = 16;
/// Tokens remembered per shard; a full shard is emptied (bounded memory, no LRU bookkeeping).
const CACHE_PER_SHARD: usize = 1024;

/// Verified tokens by their exact text.
pub(super) struct TokenCache {
    shards: Sharded<ClientMap<Box<str>, Verified>>,
}

impl TokenCache {
    pub(super) fn new() -> Self {
        TokenCache {
            shards: Sharded::new(CACHE_SHARDS, ClientMap::default),
        }
    }

    fn shard(&self, token: &str) -> parking_lot::MutexGuard<'_, ClientMap<Box<str>, Verified>> {
        // Only verified tokens are stored, and their last characters are HMAC output: already
        // uniform, so they pick the shard without hashing the whole token a second time.
        let hash = token
            .bytes()
            .rev()
            .take(4)
            .fold(0u64, |acc, b| acc * 31 + u64::from(b));
        self.shards.lock_at(hash)
    }

    pub(super) fn get(&self, token: &str) -> Option<Verified> {
        self.shard(token).get(token).cloned()
    }

    pub(super) fn put(&self, token: &str, v: Verified) {
        let mut shard = self.shard(token);
        if shard.len() >= CACHE_PER_SHARD {
            shard.clear();
        }
        shard.insert(token.into(), v);
    }
}
