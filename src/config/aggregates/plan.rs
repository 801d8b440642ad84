//! The checked plan the aggregation engine runs: templates split into parts, leg names
//! turned into indexes, dependencies known and acyclic.

use std::time::Duration;

/// A declared composite endpoint, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Metric label and log field: `[a-z0-9_]+`, unique.
    pub name: String,
    /// The path pattern, e.g. `/api/profile/{id}`.
    pub path: PathPattern,
    /// The hosts it answers on (empty: any).
    pub hosts: Vec<crate::config::routes::types::HostMatch>,
    /// Whether HEAD is answered too (it follows GET).
    pub methods: Vec<http::Method>,
    /// Budget of the whole request, every leg and retry included.
    pub deadline: Duration,
    /// Object-level authorization, if any.
    pub authorize: Option<Authorize>,
    /// Cache-aside settings (`ttl` zero: off).
    pub cache: Option<CacheSpec>,
    /// The legs in declaration order; [`LegConfig::deps`] index into this.
    pub legs: Vec<LegConfig>,
    /// Output keys, in order, each a leg's value or a field of it.
    pub response: Vec<(String, ValueRef)>,
}

/// `authorize`: the path param must equal the caller's claim, unless a role bypasses.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorize {
    /// Index of the param in [`PathPattern::params`].
    pub param: usize,
    /// The claim compared (`sub`).
    pub claim: String,
    /// Roles that may read anyone's.
    pub bypass_roles: Vec<String>,
    /// `me` in the param means the caller's own claim.
    pub me: bool,
}

/// Cache-aside for one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// How long an entry lives; zero turns the cache off.
    pub ttl: Duration,
    /// The key, over path params only.
    pub key: Template,
    /// Tags the entry carries (over params and leg values), for invalidation by tag; a tag
    /// that cannot be rendered (a missing value) is left off.
    pub tags: Vec<Template>,
    /// After `ttl`, how long a stale entry is served while one rebuild runs in the background.
    pub stale_while_revalidate: Duration,
    /// After `ttl`, how long a stale entry is served when a rebuild fails or degrades.
    pub stale_if_error: Duration,
    /// The TTL is at most every leg's `Cache-Control` max-age; `no-store`/`private`/`no-cache`
    /// from any leg → not cached.
    pub ttl_from_services: bool,
    /// The in-process tier in front of the shared store, if any.
    pub local: Option<LocalSpec>,
}

/// `cache.local`: fresh entries kept in this process for a short while, so a hit costs no
/// round trip to Redis; invalidations reach it through Redis pub/sub.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSpec {
    /// Entries kept at most (per aggregate).
    pub max_entries: usize,
    /// How long an entry is kept here at most (never past its freshness).
    pub ttl: Duration,
}

impl CacheSpec {
    /// How long the store keeps an entry past its TTL: the longer stale window.
    pub fn stale_window(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// One service call of an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct LegConfig {
    /// The leg's name (its default output key, and the `leg` metric label).
    pub name: String,
    /// The service called.
    pub service: String,
    /// The request path.
    pub path: Template,
    /// A failure fails the whole aggregate (404 → 404, …).
    pub required: bool,
    /// The value used when an optional leg fails.
    pub default: serde_json::Value,
    /// The JSON shape the service must answer.
    pub expect: Expect,
    /// Legs that must finish first (from `after`, templates and `for_each`), sorted.
    pub deps: Vec<usize>,
    /// Per-item fan-out: the leg and the path to an array in its value.
    pub for_each: Option<ValueRef>,
    /// Items fetched at once.
    pub concurrency: usize,
    /// Items fetched at most; the rest are dropped and the key degraded.
    pub max_items: usize,
}

/// The JSON shape a leg's service must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value.
    Any,
}

/// A path pattern: literal segments and `{param}` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The pattern as written.
    pub text: String,
    /// Its segments after the leading `/`.
    pub segments: Vec<Segment>,
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must match exactly.
    Literal(String),
    /// Captures one segment: 1–64 chars of `[A-Za-z0-9_-]`.
    Param(String),
}

impl PathPattern {
    /// The params' names, in path order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether some path matches both patterns.
    pub(super) fn overlaps(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                })
    }
}

/// A step into a JSON value: an object key, or (on an array) an index.
pub type Step = String;

/// A value of an earlier leg: the leg, then a path into its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRef {
    /// Index of the leg.
    pub leg: usize,
    /// Keys (or array indexes) into its value; empty: the whole value.
    pub path: Vec<Step>,
}

/// A string with `{…}` placeholders, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The parts, in order.
    pub parts: Vec<Part>,
}

/// One part of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Copied as is.
    Literal(String),
    /// A path param, by index in [`PathPattern::params`].
    Param(usize),
    /// A value of an earlier leg.
    Value(ValueRef),
    /// The current `for_each` element, or a path into it.
    Item(Vec<Step>),
}

impl Template {
    /// The legs whose values the template reads.
    pub(super) fn legs(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v.leg),
            _ => None,
        })
    }
}
