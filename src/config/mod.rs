//! The `gateway:` section of the conf file: its schema, env overrides and start-up validation.
//!
//! The file format (`*File` structs, serde, `deny_unknown_fields`) is converted once into the
//! typed [`Config`] that the rest of the gateway uses; every check names the key it rejects.
//!
//! One file per section, each holding its file struct, its checks and its typed result:
//! `redis`, `auth`, `issuers`, `ratelimit`, `limits`, `upstreams`, `routes`, `services`,
//! `aggregates` (a folder: schema, plan, checks, resolve), `admin`, `cors`, `compression`,
//! `tls`, `tracing`.
//! - `check`: what every section's checks share (the error naming a key, the environment).
//! - `file`: the root of the YAML (`gateway:`), one key per section.
//! - `resolve`: the listeners, each section's resolve in file order, the cross-section checks.
//!
//! Here: the typed `Config` itself, the reload settings, and the list of variables read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

mod file;

use file::FileRoot;
mod aggregates;
mod apikeys;
mod issuers;
mod resolve;
pub use aggregates::{
    AggregateConfig, Authorize, CacheSpec, Expect, LegConfig, LocalSpec, Part, PathPattern,
    Segment, Step, Template, ValueRef,
};
pub use apikeys::{ApiKey, ApiKeysConfig};
pub use issuers::{media_type, IntrospectionConfig, IssuerConfig, KeySource};
mod services;
pub use services::{ServiceConfig, Services};
mod tls;
pub use tls::{
    CertPaths, ClientAuth, TlsConfig, TlsVersion, UpstreamTls, DEFAULT_H2_HEADER_LIST_BYTES,
    DEFAULT_H2_STREAMS,
};
mod admin;
mod auth;
mod check;
mod compression;
mod cors;
mod limits;
mod ratelimit;
mod readiness;
mod redis;
pub(crate) mod routes;
mod tracing;
mod upstreams;
pub use admin::AdminConfig;
pub use auth::AuthConfig;
pub use check::{ConfigError, Env, LoadMode, ProcessEnv};
pub use compression::{Coding, CompressionConfig, Level};
pub use cors::CorsPolicy;
pub use file::AccessFormat;
pub use limits::{Backslash, BodyPolicy, EncodedSlash, LimitsConfig, PathRules, MAX_BODY_BUFFER};
pub use ratelimit::{
    Algorithm, OnStoreError, PolicyConfig, PolicyKey, RateLimitConfig, DEFAULT_POLICY,
};
pub use readiness::ReadinessConfig;
pub use redis::{normalise_redis_addr, RedisConfig, SentinelConfig};
pub(crate) use resolve::aggregate_routes;
pub use routes::template::{Part as TemplatePart, PathTemplate, ValueTemplate};
pub use routes::{
    Conditions, Credentials, HeaderRules, HostMatch, Mirror, PathMatch, Require, Rewrite,
    RouteAuth, RouteConfig, RouteRetries, RouteTarget, RouteTimeouts, Specificity, Split, Sticky,
};
pub use tracing::TracingConfig;
pub use upstreams::{
    BackendName, Balance, DnsConfig, HashKey, HealthCheckConfig, HealthCheckKind, UpstreamConfig,
    WebSocketLimits,
};

/// A short, stable fingerprint of checked settings (FNV-1a over `Debug`): the same on every
/// replica and across restarts, unlike `std`'s randomly seeded hasher.
pub fn fingerprint<T: std::fmt::Debug>(value: &T) -> String {
    fingerprint_text(&format!("{value:?}"))
}

/// The fingerprint of what a conf runs on: its text and the files it names that a reload reads
/// again (the API keys file), so that a changed keys file is a new configuration.
pub fn fingerprint_loaded(text: &str, config: &Config) -> String {
    match &config.auth.api_keys {
        None => fingerprint_text(text),
        Some(k) => {
            let digests: Vec<String> = k
                .keys
                .iter()
                .map(|k| format!("{}{:?}", const_hex::encode(k.digest), k))
                .collect();
            fingerprint_text(&format!("{text}\n{}", digests.join("\n")))
        }
    }
}

/// The fingerprint of a text (a conf file's, for the `config_hash` label).
pub fn fingerprint_text(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

// ---------------------------------------------------------------------------------------------
// The typed configuration used by the rest of the gateway.

/// The validated gateway configuration.
#[derive(Debug, Clone, PartialEq)]
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
    /// The services the aggregates call, by name.
    pub services: Services,
    /// The declared composite endpoints, checked.
    pub aggregates: Vec<AggregateConfig>,
    /// Request size caps enforced at the edge.
    pub limits: LimitsConfig,
    /// Upstream groups for transparent proxying, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Route table, first matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// The HTTPS listener; `None`: plain HTTP only.
    pub tls: Option<TlsConfig>,
    /// The plain listener answers 308 to `https://` (health and readiness excepted).
    pub redirect_http: bool,
    /// The plain listener also takes HTTP/2 with prior knowledge (gRPC clients without TLS).
    pub h2c: bool,
    /// How long start waits for a listen address that is in use before giving up.
    pub listen_retry: Duration,
    /// The access log's format (`gateway.log.access_format`); `None`: text on a terminal.
    pub access_format: Option<AccessFormat>,
    /// Browser cross-origin policies, first matching route prefix wins; empty: no CORS.
    pub cors: Vec<CorsPolicy>,
    /// Response compression; `None`: answers are sent as they are.
    pub compression: Option<CompressionConfig>,
    /// What `/readyz` waits for beyond identity providers' keys.
    pub readiness: ReadinessConfig,
    /// Re-reading the conf file in place (SIGHUP always works).
    pub reload: ReloadConfig,
    /// OpenTelemetry tracing; `None`: no spans, `traceparent` passed through untouched.
    pub tracing: Option<TracingConfig>,
    /// The admin API (cache purge and inspection); `None`: no admin listener.
    pub admin: Option<AdminConfig>,
}

/// `gateway.reload`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    /// Poll the conf file's content and apply it when it changes.
    pub watch: bool,
    /// How often the file is read when `watch` is on.
    pub interval: Duration,
}

/// Every environment variable the gateway reads (deployment files are checked against this);
/// `<NAME>_SERVICE_URL` is read for every declared service, the demo's four listed here.
pub const ENV_VARS: [&str; 18] = [
    "HTTP_PORT",
    "HTTPS_PORT",
    "METRICS_PORT",
    "REDIS_ADDR",
    "JWT_SECRET",
    "USER_SERVICE_URL",
    "ORDER_SERVICE_URL",
    "PRODUCT_SERVICE_URL",
    "RECOMMENDATION_SERVICE_URL",
    "RATE_LIMIT_PER_MINUTE",
    "RUST_LOG",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "REDIS_CLUSTER_NODES",
    "ADMIN_PORT",
    "ADMIN_TOKEN",
];

/// One line on each of [`ENV_VARS`], in that order, for `gateway --help`.
pub const ENV_HELP: [&str; 18] = [
    "port of gateway.listen (default 8080)",
    "port of gateway.tls.listen",
    "port of gateway.metrics_listen (default 9091)",
    "Redis: host:port, redis://, rediss://, redis+sentinel://…/master (unset: embedded store)",
    "HS256 secret; required unless issuers or API keys are configured",
    "the user service's base URL (likewise <NAME>_SERVICE_URL for any service)",
    "the order service's base URL",
    "the product service's base URL",
    "the recommendation service's base URL",
    "the default rate-limit policy's limit per window",
    "log levels and targets (`access` is the access log)",
    "json or text for stderr (default: text on a terminal)",
    "turns tracing on: the OTLP/HTTP collector's base URL",
    "the service name on exported spans (default gateway)",
    "true turns tracing off whatever the file says",
    "Redis Cluster seed nodes, h1:7000,h2:7001,… (instead of REDIS_ADDR)",
    "port of gateway.admin.listen",
    "the admin API's bearer token (at least 16 characters)",
];

impl Config {
    /// Whether an upstream group verifies its backends against the system roots (TLS with
    /// verification and no `ca` of its own).
    pub fn verifies_against_system_roots(&self) -> bool {
        self.upstreams
            .values()
            .filter_map(|u| u.tls.as_ref())
            .any(|t| t.verify && t.ca.is_none())
    }

    /// The conf file's text (for [`Config::from_yaml`], and kept by the reloader).
    pub fn read(path: &str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })
    }

    /// Parses a whole conf file's text (Pingora keys are ignored).
    pub fn from_yaml(text: &str, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let root: FileRoot = if text.trim().is_empty() {
            FileRoot { gateway: None }
        } else {
            file::check_top_level(text)?;
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        root.gateway.unwrap_or_default().resolve(env, mode)
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
        assert!(c.services.names().is_empty(), "no service unless declared");
        assert!(c.aggregates.is_empty(), "no aggregate unless declared");
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
        let yaml = "gateway: {listen: '127.0.0.1:1', services: {user: {url: 'http://u:1'}}}";
        let c = Config::from_yaml(yaml, &env, LoadMode::Run)?;
        assert_eq!(c.listen, "127.0.0.1:9000".parse()?);
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6390"));
        assert_eq!(c.rate_limit.limit, 42);
        assert_eq!(
            c.services.get("user").and_then(|s| s.url.host_str()),
            Some("users.internal")
        );
        assert_eq!(
            c.services.get("user").map(|s| s.connect_timeout),
            Some(Duration::from_secs(2)),
            "the default connect timeout"
        );
        Ok(())
    }

    #[test]
    fn a_cluster_is_its_seed_nodes_and_sentinels_name_their_master(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let env = env_with(&[
            ("JWT_SECRET", "s"),
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000, 10.0.0.2:7001"),
        ]);
        let c = Config::from_yaml("", &env, LoadMode::Run)?;
        assert_eq!(
            c.redis.cluster,
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
        );
        assert!(c.redis.url.is_none());
        let c = load("gateway: {redis: {cluster: ['h:7000', 'rediss://h:7001']}}")?;
        assert_eq!(c.redis.cluster.len(), 2);
        let c = load("gateway: {redis: {addr: 'redis+sentinel://pw@s1:26379,s2:26380/main/2'}}")?;
        assert_eq!(
            c.redis.sentinel,
            Some(SentinelConfig {
                nodes: vec!["redis://s1:26379".into(), "redis://s2:26380".into()],
                master: "main".into(),
                password: Some("pw".into()),
                db: 2,
            })
        );
        assert!(c.redis.url.is_none());
        for (yaml, want) in [
            (
                "gateway: {redis: {addr: 'h:6379', cluster: ['h:7000']}}",
                "either gateway.redis.addr",
            ),
            (
                "gateway: {redis: {cluster: ['nope']}}",
                "gateway.redis.cluster[0]",
            ),
            (
                "gateway: {redis: {addr: 'redis+sentinel://s:26379'}}",
                "needs the master's name",
            ),
            (
                "gateway: {redis: {addr: 'redis+sentinel://s/mymaster'}}",
                "has no port",
            ),
            (
                "gateway: {redis: {addr: 'redis+sentinel://s:1/m/x'}}",
                "not a database number",
            ),
        ] {
            let e = err_text(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
        Ok(())
    }

    #[test]
    fn any_service_name_takes_its_url_from_its_own_variable(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let env = env_with(&[
            ("JWT_SECRET", "s"),
            ("CATALOG_V2_SERVICE_URL", "http://cat:81"),
        ]);
        let c = Config::from_yaml(
            "gateway: {services: {catalog-v2: {timeout_ms: 700}}}",
            &env,
            LoadMode::Run,
        )?;
        let cat = c.services.get("catalog-v2").ok_or("declared")?;
        assert_eq!(cat.url.as_str(), "http://cat:81/");
        assert!(
            err_text("gateway: {services: {catalog: {timeout_ms: 700}}}")
                .contains("gateway.services.catalog.url")
        );
        Ok(())
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = err_text("gateway: {profile: {cache_ttl_seconds: 5}}");
        assert!(e.contains("unknown field `profile`"), "{e}");
        let e = err_text("gateway: {services: {user: {url: 'http://u:1', path: /x}}}");
        assert!(e.contains("unknown field `path`"), "{e}");
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
    fn a_misspelled_top_level_key_is_named_with_the_likely_one() {
        let e = err_text("gatway:\n  listen: '0.0.0.0:8080'\n");
        assert!(
            e.contains("gatway") && e.contains("did you mean `gateway`"),
            "{e}"
        );
        let e = err_text("version: 1\nthread: 2\n");
        assert!(
            e.contains("thread") && e.contains("did you mean `threads`"),
            "{e}"
        );
        let e = err_text("nonsense_entirely: 1\n");
        assert!(
            e.contains("unknown top-level key") && !e.contains("did you mean"),
            "{e}"
        );
        assert!(load("version: 1\nthreads: 2\ngrace_period_seconds: 1\ngateway: {}\n").is_ok());
    }

    #[test]
    fn secret_is_required_by_start_and_by_the_check() {
        let none = env_with(&[]);
        let e = Config::from_yaml("", &none, LoadMode::Run).unwrap_err();
        assert!(e.to_string().contains("JWT_SECRET"));
        let empty = env_with(&[("JWT_SECRET", "")]);
        assert!(Config::from_yaml("", &empty, LoadMode::Run).is_err());
        assert!(Config::from_yaml("", &none, LoadMode::Check).is_err());
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
