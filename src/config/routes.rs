//! `gateway.routes`: path prefixes to upstream groups, with their rewrites and body policy.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{invalid, millis, positive, ConfigError};
use super::limits::{buffer_bytes, BodyPolicy};
use super::upstreams::UpstreamConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub(super) prefix: String,
    pub(super) upstream: String,
    #[serde(default)]
    pub(super) strip_prefix: StripFile,
    /// Overrides `limits.request_body_buffer_bytes` on this route.
    pub(super) request_body_buffer_bytes: Option<u64>,
    /// Overrides `limits.max_request_body_bytes` on this route.
    pub(super) max_request_body_bytes: Option<u64>,
    /// Overrides `limits.body_read_timeout_ms` on this route.
    pub(super) body_read_timeout_ms: Option<u64>,
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

/// One route table entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Path prefix matched against the request path.
    pub prefix: String,
    /// Name of the upstream group.
    pub upstream: String,
    /// Leading part of the path removed before forwarding (a leading `/` is kept).
    pub strip_prefix: Option<String>,
    /// How this route reads request bodies (`limits` unless overridden).
    pub body: BodyPolicy,
}

pub(super) fn resolve_routes(
    routes: Vec<RouteFile>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    body: &BodyPolicy,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut resolved = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let key = |k: &str| format!("gateway.routes[{i}].{k}");
        if !r.prefix.starts_with('/') {
            return Err(invalid(
                key("prefix"),
                format!("`{}` must start with `/`", r.prefix),
            ));
        }
        if !upstreams.contains_key(&r.upstream) {
            return Err(invalid(
                key("upstream"),
                format!(
                    "`{}` is not a group defined under gateway.upstreams",
                    r.upstream
                ),
            ));
        }
        let strip_prefix = match r.strip_prefix {
            StripFile::Flag(false) => None,
            StripFile::Flag(true) => Some(r.prefix.clone()),
            StripFile::Prefix(p) if r.prefix.starts_with(p.as_str()) && !p.is_empty() => Some(p),
            StripFile::Prefix(p) => {
                return Err(invalid(
                    key("strip_prefix"),
                    format!("`{p}` is not a leading part of the prefix `{}`", r.prefix),
                ))
            }
        };
        let body = BodyPolicy {
            buffer_bytes: match r.request_body_buffer_bytes {
                Some(v) => buffer_bytes(&key("request_body_buffer_bytes"), v)?,
                None => body.buffer_bytes,
            },
            max_bytes: match r.max_request_body_bytes {
                Some(v) => positive(&key("max_request_body_bytes"), v)?,
                None => body.max_bytes,
            },
            read_timeout: match r.body_read_timeout_ms {
                Some(v) => millis(&key("body_read_timeout_ms"), v)?,
                None => body.read_timeout,
            },
        };
        resolved.push(RouteConfig {
            prefix: r.prefix,
            upstream: r.upstream,
            strip_prefix,
            body,
        });
    }
    Ok(resolved)
}
