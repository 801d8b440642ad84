//! Rate limiting: the default per-client-IP policy (`per_minute`) and the named policies of
//! `gateway.rate_limit.policies`, each counted on Redis (shared by every replica) or in memory,
//! falling back to memory whenever Redis does not answer in time (unless the policy says
//! `allow` or `deny`).
//!
//! Fixed windows are aligned to the Unix clock (`window_start = now - now % window`), so every
//! client gets a fresh budget when a window starts, on every replica alike.
//!
//! - [`memory`]: exact in-process windows with a bounded sketch past 262,144 clients.
//! - [`redis`]: the shared window counters, taken from Redis in blocks.
//! - [`gcra`]: the smooth-rate algorithm, one Lua script per decision on Redis.
//! - [`decision`]: what a limiter counts by and answers.
//! - [`limiter`]: the fixed-window limiter over memory and Redis.
//! - [`policy`]: which policies apply to a request, what they count it by, and the verdict.
//!
//! This module decides; `proxy` turns a [`RateVerdict`] into headers, a 429 or a 503.

mod decision;
mod gcra;
mod limiter;
mod memory;
mod policy;
mod redis;

pub use self::decision::{Decision, LimitBackend, Subject};
pub use self::limiter::RateLimiter;
pub use self::policy::{Limits, RateVerdict, Scope};
