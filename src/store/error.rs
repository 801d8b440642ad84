//! How a shared-store operation fails.

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
