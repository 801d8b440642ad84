//! The route schema as written: serde structs, before any check.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One route as written. `prefix` and `strip_prefix` are the documented shorthand for
/// `match.path.prefix` and `rewrite.strip_prefix`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub(super) name: Option<String>,
    #[serde(rename = "match")]
    pub(super) matches: Option<MatchFile>,
    pub(super) prefix: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) split: Option<Vec<SplitFile>>,
    pub(super) sticky: Option<StickyFile>,
    pub(super) mirror: Option<MirrorFile>,
    pub(super) redirect: Option<RedirectFile>,
    pub(super) respond: Option<RespondFile>,
    pub(super) rewrite: Option<RewriteFile>,
    #[serde(default)]
    pub(super) strip_prefix: StripFile,
    pub(super) auth: Option<AuthModeFile>,
    pub(super) credentials: Option<Vec<String>>,
    pub(super) require: Option<RequireFile>,
    pub(super) rate_limit: Option<Vec<String>>,
    pub(super) timeouts: Option<TimeoutsFile>,
    pub(super) retries: Option<RetriesFile>,
    pub(super) headers: Option<HeaderRulesFile>,
    /// Overrides `limits.request_body_buffer_bytes` on this route.
    pub(super) request_body_buffer_bytes: Option<u64>,
    /// Overrides `limits.max_request_body_bytes` on this route.
    pub(super) max_request_body_bytes: Option<u64>,
    /// Overrides `limits.body_read_timeout_ms` on this route.
    pub(super) body_read_timeout_ms: Option<u64>,
}

/// One side of `split:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SplitFile {
    pub(super) upstream: String,
    pub(super) weight: u32,
}

/// `sticky:` — what keeps a client on one side of a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StickyFile {
    pub(super) cookie: Option<String>,
    pub(super) header: Option<String>,
    pub(super) claim: Option<String>,
}

/// `mirror:` — a copy of requests to another group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MirrorFile {
    pub(super) upstream: String,
    #[serde(default = "hundred")]
    pub(super) percent: f64,
    #[serde(default = "default_mirror_in_flight")]
    pub(super) max_in_flight: usize,
}

fn hundred() -> f64 {
    100.0
}

fn default_mirror_in_flight() -> usize {
    64
}

/// `match:` — every listed condition must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchFile {
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) path: Option<PathFile>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub(super) query: BTreeMap<String, OneOrMany>,
}

/// `match.path`: exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathFile {
    pub(super) prefix: Option<String>,
    pub(super) exact: Option<String>,
    pub(super) template: Option<String>,
}

/// A header or query condition: one value, or a list of which any may be sent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `strip_prefix: true` removes the whole matched prefix; a string removes that leading part.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StripFile {
    Flag(bool),
    Prefix(String),
}

impl Default for StripFile {
    fn default() -> Self {
        StripFile::Flag(false)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedirectFile {
    pub(super) to: String,
    #[serde(default = "default_redirect_status")]
    pub(super) status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RespondFile {
    pub(super) status: u16,
    pub(super) json: Option<serde_json::Value>,
    pub(super) body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RewriteFile {
    pub(super) strip_prefix: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) path: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum AuthModeFile {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequireFile {
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutsFile {
    pub(super) connect_ms: Option<u64>,
    pub(super) read_ms: Option<u64>,
    pub(super) total_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetriesFile {
    pub(super) attempts: u32,
    #[serde(default = "default_retry_on")]
    pub(super) on: Vec<serde_yaml::Value>,
}

fn default_retry_on() -> Vec<serde_yaml::Value> {
    vec![serde_yaml::Value::String("connect".into())]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderRulesFile {
    #[serde(default)]
    pub(super) request: HeaderRuleFile,
    #[serde(default)]
    pub(super) response: HeaderRuleFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderRuleFile {
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}
