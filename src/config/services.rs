//! The aggregates' services (`gateway.services.*`): any names, typed settings and the
//! validation of their section, env overrides (`<NAME>_SERVICE_URL`) included.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use std::collections::{BTreeMap, BTreeSet};

use super::check::{invalid, ConfigError, Env};
use super::check::{millis, positive};

/// The variable that overrides a service's `url`: `<NAME>_SERVICE_URL`.
pub fn url_var(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{upper}_SERVICE_URL")
}

/// The aggregates' services, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Services {
    by_name: BTreeMap<String, ServiceConfig>,
}

impl Services {
    /// The config of one service.
    pub fn get(&self, name: &str) -> Option<&ServiceConfig> {
        self.by_name.get(name)
    }

    /// Every service's name.
    pub fn names(&self) -> BTreeSet<String> {
        self.by_name.keys().cloned().collect()
    }
}

/// One service the aggregates call.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Its name under `gateway.services` (the `service` metric label).
    pub name: String,
    /// Base URL (scheme, host, port).
    pub url: Url,
    /// Budget of one call to the service, every attempt and pause included.
    pub timeout: Duration,
    /// Longest wait for a new connection to the service (a host that drops SYNs).
    pub connect_timeout: Duration,
    /// Largest body accepted from the service.
    pub max_body_bytes: usize,
    /// Total tries including the first.
    pub retry_attempts: u32,
    /// Retries allowed per request made, over time (0.2 = at most ~20% extra load).
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second, so low traffic can still retry.
    pub retry_budget_min_per_second: f64,
    /// Pause between tries.
    pub retry_backoff: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails fast.
    pub breaker_open: Duration,
}

/// The declared services; `<NAME>_SERVICE_URL` overrides any `url`.
pub(super) fn resolve_services(
    files: BTreeMap<String, ServiceFile>,
    env: &dyn Env,
) -> Result<Services, ConfigError> {
    let mut by_name = BTreeMap::new();
    for (name, f) in files {
        let c = f.resolve(&name, env)?;
        by_name.insert(name, c);
    }
    Ok(Services { by_name })
}

impl ServiceFile {
    fn resolve(self, name: &str, env: &dyn Env) -> Result<ServiceConfig, ConfigError> {
        let var = url_var(name);
        let key = |k: &str| format!("gateway.services.{name}.{k}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                format!("gateway.services.{name}"),
                "a service name is [a-z0-9_-]+",
            ));
        }
        let (url_key, url) = match env.var(&var).filter(|v| !v.trim().is_empty()) {
            Some(v) => (var.clone(), v),
            None => match self.url {
                Some(u) => (key("url"), u),
                None => return Err(invalid(key("url"), format!("required (or set {var})"))),
            },
        };
        let parsed = Url::parse(url.trim())
            .map_err(|e| invalid(&url_key, format!("`{url}` is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(
                &url_key,
                format!("`{url}` must be an http(s) URL with a host"),
            ));
        }
        let retry = self.retry.unwrap_or_default();
        let breaker = self.breaker.unwrap_or_default();
        Ok(ServiceConfig {
            name: name.to_string(),
            url: parsed,
            timeout: millis(&key("timeout_ms"), self.timeout_ms.unwrap_or(5000))?,
            connect_timeout: millis(
                &key("connect_timeout_ms"),
                self.connect_timeout_ms.unwrap_or(2000),
            )?,
            max_body_bytes: positive(
                &key("max_body_bytes"),
                self.max_body_bytes.unwrap_or(1024 * 1024) as u64,
            )? as usize,
            retry_attempts: positive(&key("retry.attempts"), retry.attempts as u64)? as u32,
            retry_backoff: Duration::from_millis(retry.backoff_ms),
            retry_budget_ratio: fraction(&key("retry.budget_ratio"), retry.budget_ratio)?,
            retry_budget_min_per_second: non_negative(
                &key("retry.budget_min_per_second"),
                retry.budget_min_per_second,
            )?,
            breaker_failures: positive(&key("breaker.failures"), breaker.failures as u64)? as u32,
            breaker_open: millis(&key("breaker.open_ms"), breaker.open_ms)?,
        })
    }
}

fn fraction(key: &str, v: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, "must be between 0 and 1"))
    }
}

fn non_negative(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(key, "must be a number >= 0"))
    }
}
/// One service of the aggregates; absent keys take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServiceFile {
    pub(super) url: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) retry: Option<RetryFile>,
    pub(super) breaker: Option<BreakerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RetryFile {
    pub(super) attempts: u32,
    pub(super) backoff_ms: u64,
    pub(super) budget_ratio: f64,
    pub(super) budget_min_per_second: f64,
}

impl Default for RetryFile {
    fn default() -> Self {
        RetryFile {
            attempts: 3,
            backoff_ms: 500,
            budget_ratio: 0.2,
            budget_min_per_second: 10.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct BreakerFile {
    pub(super) failures: u32,
    pub(super) open_ms: u64,
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            failures: 3,
            open_ms: 10_000,
        }
    }
}
