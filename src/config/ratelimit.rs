//! `gateway.rate_limit.policies`: limits keyed on something other than the client address (a
//! user, a tenant claim, an API key header), scoped to routes, with their own algorithm and
//! their own answer to a store that does not answer.

use std::time::Duration;

use serde::Deserialize;

use ipnet::IpNet;

use super::check::{invalid, nonempty, positive, ConfigError, Env};

/// One policy as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    name: String,
    key: String,
    limit: u64,
    #[serde(default = "default_window")]
    window_seconds: u64,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    on_store_error: Option<String>,
}

fn default_window() -> u64 {
    60
}

/// What a policy counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKey {
    /// The client address (as the default policy).
    Ip,
    /// The verified token's `sub`.
    Sub,
    /// A claim of the verified token, by its dotted path.
    Claim(Vec<String>),
    /// A request header's value (e.g. an API key).
    Header(http::HeaderName),
}

impl PolicyKey {
    /// Whether the key is known only once the token is verified (`sub`, `claim:`); the others
    /// are counted before authentication so that floods of bad tokens stay limited.
    pub fn after_auth(&self) -> bool {
        matches!(self, PolicyKey::Sub | PolicyKey::Claim(_))
    }
}

/// How a policy admits requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `limit` per window aligned to the Unix clock (the default policy's algorithm).
    FixedWindow,
    /// Generic cell rate: one request per `window / limit`, with `burst` at once after a pause.
    Gcra,
}

/// What a policy does when the shared store does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Decide on this replica's own counters.
    Local,
    /// Admit the request (and count it in the metrics).
    Allow,
    /// Refuse the request with 503.
    Deny,
}

/// One named policy as the gateway runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// `[a-z0-9_-]+`: the metric label, the Redis key prefix, the name in the 429.
    pub name: String,
    /// What requests are counted by.
    pub key: PolicyKey,
    /// Requests per window.
    pub limit: u64,
    /// The window (fixed window) or the period `limit` is spread over (GCRA).
    pub window: Duration,
    /// Fixed window or GCRA.
    pub algorithm: Algorithm,
    /// GCRA: requests admitted at once after a pause (`limit` unless set).
    pub burst: u64,
    /// Path prefixes the policy applies to; empty: every route.
    pub routes: Vec<String>,
    /// What to do when Redis does not answer.
    pub on_store_error: OnStoreError,
}

impl PolicyConfig {
    /// Whether the policy covers `path`.
    pub fn covers(&self, path: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// The name the default per-IP policy goes by in metrics and headers.
pub const DEFAULT_POLICY: &str = "default";

/// Longest policy name: it is a metric label and part of every Redis key of the policy.
const MAX_NAME: usize = 64;

/// Resolves and checks `gateway.rate_limit.policies`.
pub(super) fn resolve_policies(files: Vec<PolicyFile>) -> Result<Vec<PolicyConfig>, ConfigError> {
    let mut out: Vec<PolicyConfig> = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let at = |field: &str| format!("gateway.rate_limit.policies[{i}].{field}");
        let name = f.name.trim().to_string();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                at("name"),
                format!("`{name}` must be 1 to {MAX_NAME} characters of [a-z0-9_-]"),
            ));
        }
        if name == DEFAULT_POLICY {
            return Err(invalid(
                at("name"),
                "`default` is the per-IP policy of `per_minute`; choose another name",
            ));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(invalid(at("name"), format!("`{name}` is used twice")));
        }
        let key = parse_key(&f.key).map_err(|m| invalid(at("key"), m))?;
        if f.limit == 0 {
            return Err(invalid(at("limit"), "must be a positive integer"));
        }
        if f.window_seconds == 0 {
            return Err(invalid(at("window_seconds"), "must be a positive integer"));
        }
        let algorithm = match f.algorithm.as_deref().map(str::trim) {
            None | Some("fixed_window") => Algorithm::FixedWindow,
            Some("gcra") => Algorithm::Gcra,
            Some(other) => {
                return Err(invalid(
                    at("algorithm"),
                    format!("`{other}` is not fixed_window or gcra"),
                ))
            }
        };
        let burst = match (algorithm, f.burst) {
            (Algorithm::FixedWindow, Some(_)) => {
                return Err(invalid(at("burst"), "applies to `algorithm: gcra` only"))
            }
            (_, Some(0)) => return Err(invalid(at("burst"), "must be a positive integer")),
            (_, Some(b)) => b,
            (_, None) => f.limit,
        };
        // GCRA spaces requests `window / limit` apart in microseconds: a rate finer than that
        // cannot be represented.
        if algorithm == Algorithm::Gcra && f.window_seconds.saturating_mul(1_000_000) < f.limit {
            return Err(invalid(
                at("limit"),
                "more than one request per microsecond cannot be spaced; use fixed_window",
            ));
        }
        for (j, r) in f.routes.iter().enumerate() {
            if !r.starts_with('/') {
                return Err(invalid(
                    format!("gateway.rate_limit.policies[{i}].routes[{j}]"),
                    format!("`{r}` is not a path prefix (it must start with /)"),
                ));
            }
        }
        let on_store_error = match f.on_store_error.as_deref().map(str::trim) {
            None | Some("local") => OnStoreError::Local,
            Some("allow") => OnStoreError::Allow,
            Some("deny") => OnStoreError::Deny,
            Some(other) => {
                return Err(invalid(
                    at("on_store_error"),
                    format!("`{other}` is not local, allow or deny"),
                ))
            }
        };
        out.push(PolicyConfig {
            name,
            key,
            limit: f.limit,
            window: Duration::from_secs(f.window_seconds),
            algorithm,
            burst,
            routes: f.routes,
            on_store_error,
        });
    }
    Ok(out)
}

fn parse_key(s: &str) -> Result<PolicyKey, String> {
    let s = s.trim();
    match s.split_once(':') {
        None if s == "ip" => Ok(PolicyKey::Ip),
        None if s == "sub" => Ok(PolicyKey::Sub),
        Some(("claim", path)) => {
            let steps: Vec<String> = path.split('.').map(str::to_string).collect();
            if steps.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "`{s}`: the claim path is empty or has an empty step"
                ));
            }
            Ok(PolicyKey::Claim(steps))
        }
        Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
            .map(PolicyKey::Header)
            .map_err(|_| format!("`{s}`: `{name}` is not a header name")),
        _ => Err(format!(
            "`{s}` is not ip, sub, claim:<dotted.path> or header:<Name>"
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RateLimitFile {
    pub(super) per_minute: u64,
    pub(super) window_seconds: u64,
    pub(super) trusted_proxies: Vec<String>,
    pub(super) policies: Vec<super::ratelimit::PolicyFile>,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        RateLimitFile {
            per_minute: 10,
            window_seconds: 60,
            trusted_proxies: Vec::new(),
            policies: Vec::new(),
        }
    }
}

/// Rate limiter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Requests admitted per window and client IP.
    pub limit: u64,
    /// Window length; windows are aligned to the Unix clock.
    pub window: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Named policies applied beside the default per-IP one, in conf order.
    pub policies: Vec<PolicyConfig>,
}

impl RateLimitFile {
    pub(super) fn resolve(self, env: &dyn Env) -> Result<RateLimitConfig, ConfigError> {
        let limit = match nonempty(env, "RATE_LIMIT_PER_MINUTE") {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    invalid(
                        "RATE_LIMIT_PER_MINUTE",
                        format!("`{v}` is not a positive integer"),
                    )
                })?,
            None => positive("gateway.rate_limit.per_minute", self.per_minute)?,
        };
        let window_seconds = positive("gateway.rate_limit.window_seconds", self.window_seconds)?;
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_cidr(s).ok_or_else(|| {
                    invalid(
                        format!("gateway.rate_limit.trusted_proxies[{i}]"),
                        format!("`{s}` is not an IP address or CIDR"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RateLimitConfig {
            limit,
            window: Duration::from_secs(window_seconds),
            trusted_proxies,
            policies: super::ratelimit::resolve_policies(self.policies)?,
        })
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LoadMode};

    fn load(yaml: &str) -> Result<Config, String> {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        Config::from_yaml(yaml, &env, LoadMode::Run).map_err(|e| e.to_string())
    }

    #[test]
    fn policies_parse_with_their_defaults() {
        let c = load(
            "gateway: {rate_limit: {policies: [
              {name: per-user, key: sub, limit: 600, algorithm: gcra, burst: 50, routes: [/api/],
               on_store_error: deny},
              {name: tenant, key: claim:org.tenant, limit: 100},
              {name: api_key, key: 'header:X-Api-Key', limit: 5, window_seconds: 1}]}}",
        )
        .unwrap();
        let p = &c.rate_limit.policies;
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].key, super::PolicyKey::Sub);
        assert_eq!(p[0].algorithm, super::Algorithm::Gcra);
        assert_eq!(p[0].burst, 50);
        assert_eq!(p[0].on_store_error, super::OnStoreError::Deny);
        assert!(p[0].covers("/api/profile/1") && !p[0].covers("/echo/"));
        assert_eq!(
            p[1].key,
            super::PolicyKey::Claim(vec!["org".into(), "tenant".into()])
        );
        assert_eq!(p[1].window.as_secs(), 60);
        assert_eq!(p[1].algorithm, super::Algorithm::FixedWindow);
        assert_eq!(p[1].on_store_error, super::OnStoreError::Local);
        assert!(p[1].covers("/anything"));
        assert_eq!(
            p[2].key,
            super::PolicyKey::Header(http::HeaderName::from_static("x-api-key"))
        );
        assert!(p[0].key.after_auth() && !p[2].key.after_auth());
    }

    #[test]
    fn bad_policies_name_the_key() {
        for (yaml, key) in [
            ("{name: Bad, key: ip, limit: 1}", "policies[0].name"),
            ("{name: default, key: ip, limit: 1}", "policies[0].name"),
            ("{name: a, key: cookie, limit: 1}", "policies[0].key"),
            ("{name: a, key: 'claim:', limit: 1}", "policies[0].key"),
            (
                "{name: a, key: 'header:bad name', limit: 1}",
                "policies[0].key",
            ),
            ("{name: a, key: ip, limit: 0}", "policies[0].limit"),
            (
                "{name: a, key: ip, limit: 1, window_seconds: 0}",
                "window_seconds",
            ),
            (
                "{name: a, key: ip, limit: 1, algorithm: leaky}",
                "algorithm",
            ),
            ("{name: a, key: ip, limit: 1, burst: 3}", "burst"),
            (
                "{name: a, key: ip, limit: 1, algorithm: gcra, burst: 0}",
                "burst",
            ),
            ("{name: a, key: ip, limit: 1, routes: [api]}", "routes[0]"),
            (
                "{name: a, key: ip, limit: 1, on_store_error: panic}",
                "on_store_error",
            ),
            ("{name: a, key: ip, limit: 1, colour: red}", "colour"),
        ] {
            let err =
                load(&format!("gateway: {{rate_limit: {{policies: [{yaml}]}}}}")).expect_err(yaml);
            assert!(err.contains(key), "{yaml}: {err}");
        }
        let twice = load(
            "gateway: {rate_limit: {policies: [{name: a, key: ip, limit: 1}, {name: a, key: sub, limit: 2}]}}",
        )
        .unwrap_err();
        assert!(
            twice.contains("policies[1].name") && twice.contains("twice"),
            "{twice}"
        );
    }
}
