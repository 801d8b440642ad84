//! The aggregate schema as written: serde structs with their defaults.

use indexmap::IndexMap;
use serde::Deserialize;

/// One aggregate as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregateFile {
    pub(super) name: String,
    pub(super) path: String,
    /// `match: { hosts: [...] }`: the hosts it answers on (any when absent).
    #[serde(default, rename = "match")]
    pub(super) matches: Option<AggregateMatchFile>,
    #[serde(default)]
    pub(super) methods: Option<Vec<String>>,
    #[serde(default = "default_deadline_ms")]
    pub(super) deadline_ms: u64,
    #[serde(default)]
    pub(super) authorize: Option<AuthorizeFile>,
    #[serde(default)]
    pub(super) cache: Option<CacheFile>,
    pub(super) legs: IndexMap<String, LegFile>,
    #[serde(default)]
    pub(super) response: Option<IndexMap<String, String>>,
}

/// An aggregate's `match`: its path is its own `path`, so hosts only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AggregateMatchFile {
    #[serde(default)]
    pub(super) hosts: Vec<String>,
}

fn default_deadline_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthorizeFile {
    pub(super) param: String,
    #[serde(default = "default_claim")]
    pub(super) claim: String,
    #[serde(default)]
    pub(super) bypass_roles: Vec<String>,
    #[serde(default)]
    pub(super) me: bool,
}

fn default_claim() -> String {
    "sub".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    #[serde(default)]
    pub(super) ttl_seconds: u64,
    pub(super) key: String,
    #[serde(default)]
    pub(super) tags: Vec<String>,
    #[serde(default)]
    pub(super) stale_while_revalidate_seconds: u64,
    #[serde(default)]
    pub(super) stale_if_error_seconds: u64,
    #[serde(default)]
    pub(super) ttl_from_services: bool,
    #[serde(default)]
    pub(super) local: Option<LocalFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalFile {
    #[serde(default = "default_local_entries")]
    pub(super) max_entries: u64,
    #[serde(default = "default_local_ttl")]
    pub(super) ttl_seconds: u64,
}

fn default_local_entries() -> u64 {
    10_000
}

fn default_local_ttl() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LegFile {
    pub(super) service: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) default: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) expect: Option<String>,
    #[serde(default)]
    pub(super) after: Vec<String>,
    #[serde(default)]
    pub(super) for_each: Option<String>,
    #[serde(default)]
    pub(super) concurrency: Option<u64>,
    #[serde(default)]
    pub(super) max_items: Option<u64>,
}
