//! The `gateway:` section exactly as written in YAML: serde structs, their defaults and
//! `deny_unknown_fields`. `super` turns these into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::aggregates::AggregateFile;
use super::compression::CompressionFile;
use super::cors::CorsFile;
use super::issuers::IssuerFile;
use super::tls::{TlsFile, UpstreamTlsFile};
use super::tracing::TracingFile;

/// The whole conf file as far as the gateway is concerned: Pingora's keys are ignored here.
#[derive(Debug, Deserialize)]
pub(super) struct FileRoot {
    #[serde(default)]
    pub(super) gateway: Option<GatewayFile>,
}

/// The `gateway:` section exactly as written in YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct GatewayFile {
    pub(super) listen: String,
    pub(super) metrics_listen: String,
    pub(super) redis: RedisFile,
    pub(super) auth: AuthFile,
    pub(super) rate_limit: RateLimitFile,
    pub(super) services: BTreeMap<String, ServiceFile>,
    /// None unless declared.
    pub(super) aggregates: Vec<AggregateFile>,
    pub(super) limits: LimitsFile,
    pub(super) upstreams: BTreeMap<String, UpstreamFile>,
    pub(super) routes: Vec<RouteFile>,
    pub(super) tls: Option<TlsFile>,
    pub(super) redirect_http: bool,
    pub(super) cors: Vec<CorsFile>,
    pub(super) compression: Option<CompressionFile>,
    pub(super) reload: ReloadFile,
    pub(super) tracing: TracingFile,
    pub(super) admin: super::admin::AdminFile,
}

impl Default for GatewayFile {
    fn default() -> Self {
        GatewayFile {
            listen: "0.0.0.0:8080".into(),
            metrics_listen: "0.0.0.0:9091".into(),
            redis: RedisFile::default(),
            auth: AuthFile::default(),
            rate_limit: RateLimitFile::default(),
            services: BTreeMap::new(),
            aggregates: Vec::new(),
            limits: LimitsFile::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            tls: None,
            redirect_http: false,
            cors: Vec::new(),
            compression: None,
            reload: ReloadFile::default(),
            tracing: TracingFile::default(),
            admin: super::admin::AdminFile::default(),
        }
    }
}

/// `gateway.reload`: how the conf file is re-read without a restart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ReloadFile {
    pub(super) watch: bool,
    pub(super) interval_ms: u64,
}

impl Default for ReloadFile {
    fn default() -> Self {
        ReloadFile {
            watch: false,
            interval_ms: 2000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RedisFile {
    pub(super) addr: Option<String>,
    pub(super) cluster: Vec<String>,
    pub(super) connect_timeout_ms: u64,
    pub(super) command_timeout_ms: u64,
}

impl Default for RedisFile {
    fn default() -> Self {
        RedisFile {
            addr: None,
            cluster: Vec::new(),
            connect_timeout_ms: 5000,
            command_timeout_ms: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthFile {
    pub(super) leeway_seconds: u64,
    pub(super) public_paths: Vec<String>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) forward_authorization: bool,
    pub(super) issuers: Vec<IssuerFile>,
    pub(super) roles_claim: String,
    pub(super) forward_claims: BTreeMap<String, String>,
}

impl Default for AuthFile {
    fn default() -> Self {
        AuthFile {
            leeway_seconds: 0,
            public_paths: vec!["/healthz".into(), "/readyz".into()],
            issuer: None,
            audience: None,
            forward_authorization: true,
            issuers: Vec::new(),
            roles_claim: "roles".into(),
            forward_claims: BTreeMap::new(),
        }
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

/// One service of the aggregates; absent keys take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServiceFile {
    pub(super) url: Option<String>,
    pub(super) timeout_ms: Option<u64>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsFile {
    pub(super) max_request_header_bytes: usize,
    pub(super) max_authorization_bytes: usize,
    pub(super) header_read_timeout_ms: u64,
    pub(super) keepalive_timeout_ms: u64,
    pub(super) pipeline_depth: u64,
    pub(super) request_body_buffer_bytes: u64,
    pub(super) request_body_buffer_total_bytes: u64,
    pub(super) body_read_timeout_ms: u64,
    pub(super) max_request_body_bytes: u64,
    pub(super) max_connections_per_ip: u64,
    pub(super) response_write_timeout_ms: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_header_bytes: 32 * 1024,
            max_authorization_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            pipeline_depth: 16,
            request_body_buffer_bytes: 64 * 1024,
            request_body_buffer_total_bytes: 64 * 1024 * 1024,
            body_read_timeout_ms: 10_000,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_connections_per_ip: 256,
            response_write_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    pub(super) backends: Vec<String>,
    #[serde(default)]
    pub(super) health_check: HealthCheckFile,
    #[serde(default = "default_connect_timeout_ms")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub(super) read_timeout_ms: u64,
    #[serde(default)]
    pub(super) passive: PassiveFile,
    #[serde(default = "default_connect_retries")]
    pub(super) connect_retries: usize,
    #[serde(default)]
    pub(super) tls: Option<UpstreamTlsFile>,
    #[serde(default)]
    pub(super) http2: Option<UpstreamH2File>,
}

/// `upstreams.<name>.http2` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamH2File {
    #[serde(default = "default_h2_streams")]
    pub(super) max_streams: usize,
}

fn default_h2_streams() -> usize {
    100
}

pub(super) fn default_connect_timeout_ms() -> u64 {
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
pub(super) struct HealthCheckFile {
    pub(super) kind: HealthCheckKind,
    pub(super) path: String,
    pub(super) interval_ms: u64,
    pub(super) timeout_ms: u64,
    pub(super) consecutive_success: usize,
    pub(super) consecutive_failure: usize,
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
pub(super) struct PassiveFile {
    pub(super) failures: u32,
    pub(super) open_ms: u64,
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
