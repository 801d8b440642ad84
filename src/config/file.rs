//! The `gateway:` section exactly as written in YAML, one key per section: each section's
//! serde struct (with its defaults and `deny_unknown_fields`) lives in that section's file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::admin::AdminFile;
use super::aggregates::AggregateFile;
use super::auth::AuthFile;
use super::check::ConfigError;
use super::compression::CompressionFile;
use super::cors::CorsFile;
use super::limits::LimitsFile;
use super::ratelimit::RateLimitFile;
use super::readiness::ReadinessFile;
use super::redis::RedisFile;
use super::routes::RouteFile;
use super::services::ServiceFile;
use super::tls::TlsFile;
use super::tracing::TracingFile;
use super::upstreams::UpstreamFile;

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
    pub(super) h2c: bool,
    pub(super) listen_retry_seconds: u64,
    pub(super) log: LogFile,
    pub(super) cors: Vec<CorsFile>,
    pub(super) compression: Option<CompressionFile>,
    pub(super) readiness: ReadinessFile,
    pub(super) reload: ReloadFile,
    pub(super) tracing: TracingFile,
    pub(super) admin: AdminFile,
    pub(super) dns: Option<super::upstreams::DnsFile>,
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
            h2c: false,
            listen_retry_seconds: 5,
            log: LogFile::default(),
            cors: Vec::new(),
            compression: None,
            readiness: ReadinessFile::default(),
            reload: ReloadFile::default(),
            tracing: TracingFile::default(),
            admin: AdminFile::default(),
            dns: None,
        }
    }
}

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One JSON object per line.
    Json,
    /// One readable line: time, client, method, path, status, duration, then key=value.
    Text,
}

/// `gateway.log` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LogFile {
    pub(super) access_format: Option<AccessFormat>,
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

/// Refuses a top-level key that is neither `gateway` nor one of Pingora's server keys: a
/// misspelled `gatway:` or `thread:` would otherwise leave the gateway on its defaults.
pub(super) fn check_top_level(text: &str) -> Result<(), ConfigError> {
    let Ok(serde_yaml::Value::Mapping(root)) = serde_yaml::from_str::<serde_yaml::Value>(text)
    else {
        // Not a mapping: the typed parse says what is wrong with it.
        return Ok(());
    };
    let pingora = serde_yaml::to_value(pingora::server::configuration::ServerConf::default())
        .ok()
        .and_then(|v| match v {
            serde_yaml::Value::Mapping(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let known: Vec<&str> = std::iter::once("gateway")
        .chain(pingora.keys().filter_map(|k| k.as_str()))
        .collect();
    for key in root.keys() {
        let name = key.as_str().unwrap_or("");
        if known.contains(&name) {
            continue;
        }
        let near = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(k, name), *k))
            .min()
            .filter(|(d, _)| *d <= 2)
            .map(|(_, k)| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(super::check::invalid(
            if name.is_empty() { "(a key that is not text)" } else { name },
            format!(
                "unknown top-level key{near}: the file holds `gateway:` and Pingora's server keys ({})",
                known[1..].join(", ")
            ),
        ));
    }
    Ok(())
}
