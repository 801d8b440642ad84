//! The `gateway:` section of the conf file: its schema, env overrides and start-up validation.
//!
//! The file format (`*File` structs, serde, `deny_unknown_fields`) is converted once into the
//! typed [`Config`] that the rest of the gateway uses; every check names the key it rejects.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

/// A start-up configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path as given on the command line.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema (serde names the key and line).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value was well-formed YAML but not acceptable.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `gateway.routes[0].upstream`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole conf file as far as the gateway is concerned: Pingora's keys are ignored here.
#[derive(Debug, Deserialize)]
struct FileRoot {
    #[serde(default)]
    gateway: Option<GatewayFile>,
}

/// The `gateway:` section exactly as written in YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayFile {
    listen: String,
    metrics_listen: String,
    redis: RedisFile,
    auth: AuthFile,
    rate_limit: RateLimitFile,
    services: ServicesFile,
    profile: ProfileFile,
    limits: LimitsFile,
    upstreams: BTreeMap<String, UpstreamFile>,
    routes: Vec<RouteFile>,
}

impl Default for GatewayFile {
    fn default() -> Self {
        GatewayFile {
            listen: "0.0.0.0:8080".into(),
            metrics_listen: "0.0.0.0:9091".into(),
            redis: RedisFile::default(),
            auth: AuthFile::default(),
            rate_limit: RateLimitFile::default(),
            services: ServicesFile::default(),
            profile: ProfileFile::default(),
            limits: LimitsFile::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RedisFile {
    addr: Option<String>,
    connect_timeout_ms: u64,
    command_timeout_ms: u64,
}

impl Default for RedisFile {
    fn default() -> Self {
        RedisFile {
            addr: None,
            connect_timeout_ms: 5000,
            command_timeout_ms: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthFile {
    leeway_seconds: u64,
    public_paths: Vec<String>,
    issuer: Option<String>,
    audience: Option<String>,
    forward_authorization: bool,
}

impl Default for AuthFile {
    fn default() -> Self {
        AuthFile {
            leeway_seconds: 0,
            public_paths: vec!["/healthz".into(), "/readyz".into()],
            issuer: None,
            audience: None,
            forward_authorization: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RateLimitFile {
    per_minute: u64,
    window_seconds: u64,
    trusted_proxies: Vec<String>,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        RateLimitFile {
            per_minute: 10,
            window_seconds: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServicesFile {
    user: ServiceFile,
    order: ServiceFile,
    product: ServiceFile,
    recommendation: ServiceFile,
}

/// One dependency of the profile endpoint; absent keys take the per-service defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServiceFile {
    url: Option<String>,
    path: Option<String>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    retry: Option<RetryFile>,
    breaker: Option<BreakerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RetryFile {
    attempts: u32,
    backoff_ms: u64,
    budget_ratio: f64,
    budget_min_per_second: f64,
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
struct BreakerFile {
    failures: u32,
    open_ms: u64,
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            failures: 3,
            open_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ProfileFile {
    cache_ttl_seconds: u64,
    owner_only: bool,
    deadline_ms: u64,
}

impl Default for ProfileFile {
    fn default() -> Self {
        ProfileFile {
            cache_ttl_seconds: 30,
            owner_only: true,
            deadline_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    max_request_header_bytes: usize,
    max_authorization_bytes: usize,
    header_read_timeout_ms: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_header_bytes: 32 * 1024,
            max_authorization_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    backends: Vec<String>,
    #[serde(default)]
    health_check: HealthCheckFile,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    read_timeout_ms: u64,
    #[serde(default)]
    passive: PassiveFile,
    #[serde(default = "default_connect_retries")]
    connect_retries: usize,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_read_timeout_ms() -> u64 {
    5000
}
fn default_connect_retries() -> usize {
    2
}

/// How backends of a group are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// `GET path` must answer 200.
    Http,
    /// A TCP connect must succeed.
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HealthCheckFile {
    kind: HealthCheckKind,
    path: String,
    interval_ms: u64,
    timeout_ms: u64,
    consecutive_success: usize,
    consecutive_failure: usize,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            kind: HealthCheckKind::Http,
            path: "/healthz".into(),
            interval_ms: 1000,
            timeout_ms: 1000,
            consecutive_success: 2,
            consecutive_failure: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PassiveFile {
    failures: u32,
    open_ms: u64,
}

impl Default for PassiveFile {
    fn default() -> Self {
        PassiveFile {
            failures: 3,
            open_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    upstream: String,
    #[serde(default)]
    strip_prefix: StripFile,
}

/// `strip_prefix: true` removes the whole matched prefix; a string removes that leading part.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StripFile {
    Flag(bool),
    Prefix(String),
}

impl Default for StripFile {
    fn default() -> Self {
        StripFile::Flag(false)
    }
}

// ---------------------------------------------------------------------------------------------
// The typed configuration used by the rest of the gateway.

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener.
    pub listen: SocketAddr,
    /// Prometheus listener.
    pub metrics_listen: SocketAddr,
    /// Redis connection settings; `addr: None` means the embedded store.
    pub redis: RedisConfig,
    /// JWT verification settings.
    pub auth: AuthConfig,
    /// Per-IP fixed-window limiter settings.
    pub rate_limit: RateLimitConfig,
    /// The profile endpoint's four dependencies, in fixed order.
    pub services: Services,
    /// Profile endpoint behaviour.
    pub profile: ProfileConfig,
    /// Request size caps enforced at the edge.
    pub limits: LimitsConfig,
    /// Upstream groups for transparent proxying, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Route table, first matching prefix wins.
    pub routes: Vec<RouteConfig>,
}

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` / `rediss://` URL, normalised from a bare `host:port`; `None` = embedded store.
    pub url: Option<String>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each command; past it the caller falls back.
    pub command_timeout: Duration,
}

/// JWT verification settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 secret from `JWT_SECRET`; empty only in `-t` mode.
    pub secret: Vec<u8>,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// Paths that skip auth and rate limiting: exact, or prefix when ending in `/`.
    pub public_paths: Vec<String>,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Whether the client's `Authorization` header is passed to upstreams.
    pub forward_authorization: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must never reach a log line.
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .field("leeway_seconds", &self.leeway_seconds)
            .field("public_paths", &self.public_paths)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AuthConfig {
    /// Whether `path` is exempt from auth and rate limiting.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    }
}

/// Rate limiter settings.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Requests admitted per window and client IP.
    pub limit: u64,
    /// Window length; windows are aligned to the Unix clock.
    pub window: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

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

/// Profile endpoint behaviour.
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// TTL of `profile:{id}`; 0 disables the cache.
    pub cache_ttl: Duration,
    /// Only the owner (or an admin) may read a profile.
    pub owner_only: bool,
    /// Budget of the whole aggregation, shared by all calls and retries.
    pub deadline: Duration,
}

/// Request size caps.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Sum of request header names and values.
    pub max_request_header_bytes: usize,
    /// Length of the Authorization header value.
    pub max_authorization_bytes: usize,
    /// Time from a request's first byte to the end of its header.
    pub header_read_timeout: Duration,
}

/// One upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Resolved backend addresses.
    pub backends: Vec<SocketAddr>,
    /// Active health check.
    pub health_check: HealthCheckConfig,
    /// TCP connect timeout per try.
    pub connect_timeout: Duration,
    /// Timeout on each read from the backend.
    pub read_timeout: Duration,
    /// Consecutive failures that take a backend out (passive health).
    pub passive_failures: u32,
    /// How long a passively failed backend is skipped.
    pub passive_open: Duration,
    /// Extra tries on another backend after a connect failure.
    pub connect_retries: usize,
}

/// Active health check of a group.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// HTTP or TCP.
    pub kind: HealthCheckKind,
    /// Path for HTTP checks.
    pub path: String,
    /// Pause between rounds.
    pub interval: Duration,
    /// Connect/read timeout of one check.
    pub timeout: Duration,
    /// Successes in a row to mark a backend up.
    pub consecutive_success: usize,
    /// Failures in a row to mark a backend down.
    pub consecutive_failure: usize,
}

/// One route table entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Path prefix matched against the request path.
    pub prefix: String,
    /// Name of the upstream group.
    pub upstream: String,
    /// Leading part of the path removed before forwarding (a leading `/` is kept).
    pub strip_prefix: Option<String>,
}

/// Every environment variable the gateway reads (deployment files are checked against this).
pub const ENV_VARS: [&str; 10] = [
    "HTTP_PORT",
    "METRICS_PORT",
    "REDIS_ADDR",
    "JWT_SECRET",
    "USER_SERVICE_URL",
    "ORDER_SERVICE_URL",
    "PRODUCT_SERVICE_URL",
    "RECOMMENDATION_SERVICE_URL",
    "RATE_LIMIT_PER_MINUTE",
    "RUST_LOG",
];

/// Source of environment variables, injectable for tests.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, key: &str) -> Option<String> {
        self(key)
    }
}

/// What loading is for: starting the gateway, or `-t` checking a file on another machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Start-up: `JWT_SECRET` is required and backend host names are resolved.
    Run,
    /// `-t`: the file alone is checked; no secret needed, host names only checked for form
    /// (a compose or Kubernetes service name does not resolve on the build machine).
    Check,
}

impl Config {
    /// Reads `path`, parses the `gateway:` section, applies env overrides and validates.
    pub fn load(path: &str, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Config::from_yaml(&text, env, mode)
    }

    /// Parses a whole conf file's text (Pingora keys are ignored).
    pub fn from_yaml(text: &str, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let root: FileRoot = if text.trim().is_empty() {
            FileRoot { gateway: None }
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        root.gateway.unwrap_or_default().resolve(env, mode)
    }
}

fn parse_listen(
    key: &str,
    value: &str,
    port_env: Option<(&str, String)>,
) -> Result<SocketAddr, ConfigError> {
    let mut addr: SocketAddr = value
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not an ip:port address")))?;
    if let Some((var, port)) = port_env {
        let port = parse_port(&port)
            .ok_or_else(|| invalid(var, format!("`{port}` is not a port (1-65535)")))?;
        addr.set_port(port);
    }
    if addr.port() == 0 {
        return Err(invalid(key, "port 0 is not allowed"));
    }
    Ok(addr)
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

fn positive(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// Accepts `host:port`, `redis://…` and `rediss://…`, returning a URL the redis crate takes.
pub fn normalise_redis_addr(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("empty address".into());
    }
    if addr.starts_with("redis://") || addr.starts_with("rediss://") || addr.starts_with("unix://")
    {
        Url::parse(addr).map_err(|e| format!("bad URL: {e}"))?;
        return Ok(addr.to_string());
    }
    if addr.contains("://") {
        return Err(format!(
            "unsupported scheme in `{addr}` (use redis:// or rediss://)"
        ));
    }
    let url = format!("redis://{addr}");
    let parsed = Url::parse(&url).map_err(|e| format!("`{addr}` is not host:port ({e})"))?;
    if parsed.port().is_none() {
        return Err(format!("`{addr}` has no port"));
    }
    Ok(url)
}

impl GatewayFile {
    fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let nonempty = |k: &str| env.var(k).filter(|v| !v.trim().is_empty());

        let listen = parse_listen(
            "gateway.listen",
            &self.listen,
            nonempty("HTTP_PORT").map(|v| ("HTTP_PORT", v)),
        )?;
        let metrics_listen = parse_listen(
            "gateway.metrics_listen",
            &self.metrics_listen,
            nonempty("METRICS_PORT").map(|v| ("METRICS_PORT", v)),
        )?;
        if listen == metrics_listen {
            return Err(invalid(
                "gateway.metrics_listen",
                "must differ from gateway.listen",
            ));
        }

        let (redis_key, redis_addr) = match nonempty("REDIS_ADDR") {
            Some(v) => ("REDIS_ADDR", Some(v)),
            None => (
                "gateway.redis.addr",
                self.redis.addr.filter(|a| !a.trim().is_empty()),
            ),
        };
        let redis_url = redis_addr
            .map(|a| normalise_redis_addr(&a).map_err(|m| invalid(redis_key, m)))
            .transpose()?;
        let redis = RedisConfig {
            url: redis_url,
            connect_timeout: Duration::from_millis(positive(
                "gateway.redis.connect_timeout_ms",
                self.redis.connect_timeout_ms,
            )?),
            command_timeout: Duration::from_millis(positive(
                "gateway.redis.command_timeout_ms",
                self.redis.command_timeout_ms,
            )?),
        };

        let secret = env.var("JWT_SECRET").unwrap_or_default();
        if secret.is_empty() && mode == LoadMode::Run {
            return Err(invalid(
                "JWT_SECRET",
                "is required: set JWT_SECRET to the HS256 secret shared with the token issuer",
            ));
        }
        for (i, p) in self.auth.public_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("gateway.auth.public_paths[{i}]"),
                    format!("`{p}` must start with `/`"),
                ));
            }
        }
        let auth = AuthConfig {
            secret: secret.into_bytes(),
            leeway_seconds: self.auth.leeway_seconds,
            public_paths: self.auth.public_paths,
            issuer: self.auth.issuer,
            audience: self.auth.audience,
            forward_authorization: self.auth.forward_authorization,
        };

        let per_minute = match nonempty("RATE_LIMIT_PER_MINUTE") {
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
            None => positive("gateway.rate_limit.per_minute", self.rate_limit.per_minute)?,
        };
        let window_seconds = positive(
            "gateway.rate_limit.window_seconds",
            self.rate_limit.window_seconds,
        )?;
        let trusted_proxies = self
            .rate_limit
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
        let rate_limit = RateLimitConfig {
            limit: per_minute,
            window: Duration::from_secs(window_seconds),
            trusted_proxies,
        };

        let ServicesFile {
            user,
            order,
            product,
            recommendation,
        } = self.services;
        let services = Services {
            user: user.resolve(ServiceName::User, env)?,
            order: order.resolve(ServiceName::Order, env)?,
            product: product.resolve(ServiceName::Product, env)?,
            recommendation: recommendation.resolve(ServiceName::Recommendation, env)?,
        };

        let profile = ProfileConfig {
            cache_ttl: Duration::from_secs(self.profile.cache_ttl_seconds),
            owner_only: self.profile.owner_only,
            deadline: Duration::from_millis(positive(
                "gateway.profile.deadline_ms",
                self.profile.deadline_ms,
            )?),
        };

        let limits = LimitsConfig {
            max_request_header_bytes: positive(
                "gateway.limits.max_request_header_bytes",
                self.limits.max_request_header_bytes as u64,
            )? as usize,
            max_authorization_bytes: positive(
                "gateway.limits.max_authorization_bytes",
                self.limits.max_authorization_bytes as u64,
            )? as usize,
            header_read_timeout: Duration::from_millis(positive(
                "gateway.limits.header_read_timeout_ms",
                self.limits.header_read_timeout_ms,
            )?),
        };

        let mut upstreams = BTreeMap::new();
        for (name, up) in self.upstreams {
            let resolved = up.resolve(&name, mode)?;
            upstreams.insert(name, resolved);
        }

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(invalid(
                    format!("gateway.routes[{i}].prefix"),
                    format!("`{}` must start with `/`", r.prefix),
                ));
            }
            if !upstreams.contains_key(&r.upstream) {
                return Err(invalid(
                    format!("gateway.routes[{i}].upstream"),
                    format!(
                        "`{}` is not a group defined under gateway.upstreams",
                        r.upstream
                    ),
                ));
            }
            let strip_prefix = match r.strip_prefix {
                StripFile::Flag(false) => None,
                StripFile::Flag(true) => Some(r.prefix.clone()),
                StripFile::Prefix(p) if r.prefix.starts_with(p.as_str()) && !p.is_empty() => {
                    Some(p)
                }
                StripFile::Prefix(p) => {
                    return Err(invalid(
                        format!("gateway.routes[{i}].strip_prefix"),
                        format!("`{p}` is not a leading part of the prefix `{}`", r.prefix),
                    ))
                }
            };
            routes.push(RouteConfig {
                prefix: r.prefix,
                upstream: r.upstream,
                strip_prefix,
            });
        }

        Ok(Config {
            listen,
            metrics_listen,
            redis,
            auth,
            rate_limit,
            services,
            profile,
            limits,
            upstreams,
            routes,
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

fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
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
            timeout: Duration::from_millis(positive(
                &key("timeout_ms"),
                self.timeout_ms.unwrap_or(5000),
            )?),
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
            breaker_open: Duration::from_millis(positive(
                &key("breaker.open_ms"),
                breaker.open_ms,
            )?),
        })
    }
}

impl UpstreamFile {
    fn resolve(self, name: &str, mode: LoadMode) -> Result<UpstreamConfig, ConfigError> {
        let key = |k: &str| format!("gateway.upstreams.{name}.{k}");
        if self.backends.is_empty() {
            return Err(invalid(key("backends"), "must list at least one host:port"));
        }
        let mut backends = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            if mode == LoadMode::Check {
                let ok = b
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && parse_port(port).is_some());
                if !ok {
                    return Err(invalid(
                        format!("{}[{i}]", key("backends")),
                        format!("`{b}` must be host:port with a port in 1-65535"),
                    ));
                }
                continue;
            }
            // Host names (docker-compose, Kubernetes services) are resolved once at start-up.
            let addrs: Vec<SocketAddr> = b
                .to_socket_addrs()
                .map_err(|e| invalid(format!("{}[{i}]", key("backends")), format!("`{b}`: {e}")))?
                .collect();
            if addrs.is_empty() || addrs.iter().any(|a| a.port() == 0) {
                return Err(invalid(
                    format!("{}[{i}]", key("backends")),
                    format!("`{b}` must be host:port with a port in 1-65535"),
                ));
            }
            backends.extend(addrs);
        }
        let hc = self.health_check;
        if hc.kind == HealthCheckKind::Http && !hc.path.starts_with('/') {
            return Err(invalid(key("health_check.path"), "must start with `/`"));
        }
        Ok(UpstreamConfig {
            backends,
            health_check: HealthCheckConfig {
                kind: hc.kind,
                path: hc.path,
                interval: Duration::from_millis(positive(
                    &key("health_check.interval_ms"),
                    hc.interval_ms,
                )?),
                timeout: Duration::from_millis(positive(
                    &key("health_check.timeout_ms"),
                    hc.timeout_ms,
                )?),
                consecutive_success: positive(
                    &key("health_check.consecutive_success"),
                    hc.consecutive_success as u64,
                )? as usize,
                consecutive_failure: positive(
                    &key("health_check.consecutive_failure"),
                    hc.consecutive_failure as u64,
                )? as usize,
            },
            connect_timeout: Duration::from_millis(positive(
                &key("connect_timeout_ms"),
                self.connect_timeout_ms,
            )?),
            read_timeout: Duration::from_millis(positive(
                &key("read_timeout_ms"),
                self.read_timeout_ms,
            )?),
            passive_failures: positive(&key("passive.failures"), self.passive.failures as u64)?
                as u32,
            passive_open: Duration::from_millis(positive(
                &key("passive.open_ms"),
                self.passive.open_ms,
            )?),
            connect_retries: self.connect_retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, &env_with(&[("JWT_SECRET", "s")]), LoadMode::Run)
    }

    fn err_text(yaml: &str) -> String {
        load(yaml)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_apply_to_empty_file() -> Result<(), Box<dyn std::error::Error>> {
        let c = load("")?;
        assert_eq!(c.listen, "0.0.0.0:8080".parse()?);
        assert_eq!(c.rate_limit.limit, 10);
        assert_eq!(c.services.order.path, "/orders/user/{id}");
        assert_eq!(c.services.product.retry_attempts, 3);
        assert!(c.auth.is_public("/healthz"));
        assert!(!c.auth.is_public("/healthz/x"));
        Ok(())
    }

    #[test]
    fn env_overrides_file() -> Result<(), Box<dyn std::error::Error>> {
        let env = env_with(&[
            ("JWT_SECRET", "s"),
            ("HTTP_PORT", "9000"),
            ("REDIS_ADDR", "127.0.0.1:6390"),
            ("RATE_LIMIT_PER_MINUTE", "42"),
            ("USER_SERVICE_URL", "http://users.internal:80"),
        ]);
        let c = Config::from_yaml("gateway: {listen: '127.0.0.1:1'}", &env, LoadMode::Run)?;
        assert_eq!(c.listen, "127.0.0.1:9000".parse()?);
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6390"));
        assert_eq!(c.rate_limit.limit, 42);
        assert_eq!(c.services.user.url.host_str(), Some("users.internal"));
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err_text("gateway: {rate_limit: {per_minut: 3}}").contains("per_minut"));
        assert!(err_text("gateway: {listen: '0.0.0.0:70000'}").contains("gateway.listen"));
        assert!(err_text("gateway: {services: {user: {url: 'not a url'}}}")
            .contains("gateway.services.user.url"));
        assert!(err_text(
            "gateway: {upstreams: {a: {backends: ['127.0.0.1:1']}}, routes: [{prefix: /x, upstream: b}]}"
        )
        .contains("gateway.routes[0].upstream"));
        assert!(err_text("gateway: {upstreams: {a: {backends: []}}}")
            .contains("gateway.upstreams.a.backends"));
    }

    #[test]
    fn secret_is_required_unless_testing_the_file() {
        let none = env_with(&[]);
        let e = Config::from_yaml("", &none, LoadMode::Run).unwrap_err();
        assert!(e.to_string().contains("JWT_SECRET"));
        let empty = env_with(&[("JWT_SECRET", "")]);
        assert!(Config::from_yaml("", &empty, LoadMode::Run).is_err());
        assert!(Config::from_yaml("", &none, LoadMode::Check).is_ok());
    }

    #[test]
    fn redis_addresses_are_normalised() {
        assert_eq!(normalise_redis_addr("h:1").as_deref(), Ok("redis://h:1"));
        assert_eq!(
            normalise_redis_addr("rediss://h:1/0").as_deref(),
            Ok("rediss://h:1/0")
        );
        assert!(normalise_redis_addr("http://h:1").is_err());
        assert!(normalise_redis_addr("h").is_err());
    }
}
