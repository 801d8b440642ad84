//! The aggregates' services (`gateway.services.*`): their names, typed settings and the
//! validation of their section, env overrides (`*_SERVICE_URL`) included.

use std::time::Duration;

use url::Url;

use super::file::{ServiceFile, ServicesFile};
use super::resolve::{millis, positive};
use super::{invalid, ConfigError, Env};

/// Names of the profile's dependencies, also their metric label and document key source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceName {
    /// The user service (asked first).
    User,
    /// The order service.
    Order,
    /// The product service.
    Product,
    /// The recommendation service.
    Recommendation,
}

impl ServiceName {
    /// All four, in config order.
    pub const ALL: [ServiceName; 4] = [
        ServiceName::User,
        ServiceName::Order,
        ServiceName::Product,
        ServiceName::Recommendation,
    ];

    /// The key of the service's part in the profile document (and in `degraded`).
    pub fn document_key(self) -> &'static str {
        match self {
            ServiceName::User => "user",
            ServiceName::Order => "orders",
            ServiceName::Product => "products",
            ServiceName::Recommendation => "recommendations",
        }
    }

    /// The config key and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::User => "user",
            ServiceName::Order => "order",
            ServiceName::Product => "product",
            ServiceName::Recommendation => "recommendation",
        }
    }

    fn defaults(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ServiceName::User => ("USER_SERVICE_URL", "http://127.0.0.1:8081", "/users/{id}"),
            ServiceName::Order => (
                "ORDER_SERVICE_URL",
                "http://127.0.0.1:8082",
                "/orders/user/{id}",
            ),
            ServiceName::Product => ("PRODUCT_SERVICE_URL", "http://127.0.0.1:8083", "/products"),
            ServiceName::Recommendation => (
                "RECOMMENDATION_SERVICE_URL",
                "http://127.0.0.1:8084",
                "/recommendations/{id}",
            ),
        }
    }
}

/// The four dependency services.
#[derive(Debug, Clone)]
pub struct Services {
    /// user service
    pub user: ServiceConfig,
    /// order service
    pub order: ServiceConfig,
    /// product service
    pub product: ServiceConfig,
    /// recommendation service
    pub recommendation: ServiceConfig,
}

impl Services {
    /// The config of one service.
    pub fn get(&self, name: ServiceName) -> &ServiceConfig {
        match name {
            ServiceName::User => &self.user,
            ServiceName::Order => &self.order,
            ServiceName::Product => &self.product,
            ServiceName::Recommendation => &self.recommendation,
        }
    }
}

/// One dependency service of the profile endpoint.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Which service this is.
    pub name: ServiceName,
    /// Base URL (scheme, host, port).
    pub url: Url,
    /// Path template; `{id}` is replaced by the profile id.
    pub path: String,
    /// Budget of one call to the service, every attempt and pause included.
    pub timeout: Duration,
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

impl ServicesFile {
    pub(super) fn resolve(self, env: &dyn Env) -> Result<Services, ConfigError> {
        Ok(Services {
            user: self.user.resolve(ServiceName::User, env)?,
            order: self.order.resolve(ServiceName::Order, env)?,
            product: self.product.resolve(ServiceName::Product, env)?,
            recommendation: self
                .recommendation
                .resolve(ServiceName::Recommendation, env)?,
        })
    }
}

impl ServiceFile {
    fn resolve(self, name: ServiceName, env: &dyn Env) -> Result<ServiceConfig, ConfigError> {
        let (var, default_url, default_path) = name.defaults();
        let key = |k: &str| format!("gateway.services.{}.{k}", name.as_str());
        let (url_key, url) = match env.var(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => (var.to_string(), v),
            None => (
                key("url"),
                self.url.unwrap_or_else(|| default_url.to_string()),
            ),
        };
        let parsed = Url::parse(url.trim())
            .map_err(|e| invalid(&url_key, format!("`{url}` is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(
                &url_key,
                format!("`{url}` must be an http(s) URL with a host"),
            ));
        }
        let path = self.path.unwrap_or_else(|| default_path.to_string());
        if !path.starts_with('/') {
            return Err(invalid(
                key("path"),
                format!("`{path}` must start with `/`"),
            ));
        }
        let retry = self.retry.unwrap_or_default();
        let breaker = self.breaker.unwrap_or_default();
        Ok(ServiceConfig {
            name,
            url: parsed,
            path,
            timeout: millis(&key("timeout_ms"), self.timeout_ms.unwrap_or(5000))?,
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
