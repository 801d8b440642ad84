//! `gateway.tracing`: where spans go, how many requests are traced, how much may wait.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::check::{invalid, ConfigError, Env};

/// `gateway.tracing` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TracingFile {
    enabled: bool,
    endpoint: String,
    service_name: String,
    sample_ratio: f64,
    max_queue: usize,
    export_timeout_ms: u64,
}

impl Default for TracingFile {
    fn default() -> Self {
        TracingFile {
            enabled: false,
            endpoint: "http://127.0.0.1:4318".into(),
            service_name: "gateway".into(),
            sample_ratio: 0.1,
            max_queue: 4096,
            export_timeout_ms: 5000,
        }
    }
}

/// Tracing as the gateway runs it (`Config::tracing` is `None` when it is off).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL (the configured base with `/v1/traces`).
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// Share of new traces sampled (a sampled incoming parent is always kept).
    pub sample_ratio: f64,
    /// Spans waiting for export; beyond it new ones are dropped and counted.
    pub max_queue: usize,
    /// How long one export may take before its spans count as dropped.
    pub export_timeout: Duration,
}

/// The most spans that may wait: ~1 KiB each, so 1 GiB at worst.
const MAX_QUEUE: usize = 1_000_000;

fn nonempty(env: &dyn Env, key: &str) -> Option<String> {
    env.var(key).filter(|v| !v.trim().is_empty())
}

/// The signal URL for a base endpoint: OTLP/HTTP puts traces under `/v1/traces`.
fn traces_url(key: &str, base: &str) -> Result<String, ConfigError> {
    let base = base.trim();
    let url = Url::parse(base).map_err(|e| invalid(key, format!("`{base}` is not a URL ({e})")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                key,
                "https collectors are not supported: the exporter speaks plain HTTP to a \
                 collector or agent next to the gateway (e.g. http://127.0.0.1:4318)",
            ))
        }
        other => {
            return Err(invalid(
                key,
                format!("`{other}://` is not OTLP/HTTP (use http://host:4318)"),
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("`{base}` has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(key, "takes no query or fragment"));
    }
    let trimmed = base.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

pub(super) fn resolve_tracing(
    f: TracingFile,
    env: &dyn Env,
) -> Result<Option<TracingConfig>, ConfigError> {
    let key = "gateway.tracing";
    let endpoint_env = nonempty(env, "OTEL_EXPORTER_OTLP_ENDPOINT");
    let disabled = nonempty(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
    if disabled || !(f.enabled || endpoint_env.is_some()) {
        return Ok(None);
    }
    let endpoint = match endpoint_env {
        Some(e) => traces_url("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?,
        None => traces_url(&format!("{key}.endpoint"), &f.endpoint)?,
    };
    let service_name = nonempty(env, "OTEL_SERVICE_NAME")
        .unwrap_or(f.service_name)
        .trim()
        .to_string();
    if service_name.is_empty() {
        return Err(invalid(format!("{key}.service_name"), "must not be empty"));
    }
    if !(0.0..=1.0).contains(&f.sample_ratio) {
        return Err(invalid(
            format!("{key}.sample_ratio"),
            "must be from 0 (no new trace sampled) to 1 (every request)",
        ));
    }
    if !(1..=MAX_QUEUE).contains(&f.max_queue) {
        return Err(invalid(
            format!("{key}.max_queue"),
            format!("must be from 1 to {MAX_QUEUE}"),
        ));
    }
    if f.export_timeout_ms == 0 {
        return Err(invalid(
            format!("{key}.export_timeout_ms"),
            "must be greater than 0",
        ));
    }
    Ok(Some(TracingConfig {
        endpoint,
        service_name,
        sample_ratio: f.sample_ratio,
        max_queue: f.max_queue,
        export_timeout: Duration::from_millis(f.export_timeout_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadMode};

    fn load(yaml: &str, vars: &'static [(&str, &str)]) -> Result<Config, ConfigError> {
        let env = move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .or_else(|| (k == "JWT_SECRET").then(|| "s".into()))
        };
        Config::from_yaml(yaml, &env, LoadMode::Run)
    }

    #[test]
    fn off_unless_enabled_or_endpoint_set() -> Result<(), ConfigError> {
        assert!(load("gateway: {}", &[])?.tracing.is_none());
        let on = load("gateway: {tracing: {enabled: true}}", &[])?;
        let t = on.tracing.ok_or_else(|| invalid("t", "off"))?;
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.service_name, "gateway");
        assert_eq!(t.max_queue, 4096);
        let env = load(
            "gateway: {}",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "edge"),
            ],
        )?;
        let t = env.tracing.ok_or_else(|| invalid("t", "off"))?;
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.service_name, "edge");
        let off = load(
            "gateway: {tracing: {enabled: true}}",
            &[("OTEL_SDK_DISABLED", "true")],
        )?;
        assert!(off.tracing.is_none());
        Ok(())
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            (
                "{enabled: true, sample_ratio: 1.5}",
                "gateway.tracing.sample_ratio",
            ),
            ("{enabled: true, max_queue: 0}", "gateway.tracing.max_queue"),
            (
                "{enabled: true, endpoint: 'https://c:4318'}",
                "gateway.tracing.endpoint",
            ),
            (
                "{enabled: true, endpoint: 'grpc://c:4317'}",
                "gateway.tracing.endpoint",
            ),
            (
                "{enabled: true, endpoint: 'nonsense'}",
                "gateway.tracing.endpoint",
            ),
            (
                "{enabled: true, service_name: ' '}",
                "gateway.tracing.service_name",
            ),
            (
                "{enabled: true, export_timeout_ms: 0}",
                "gateway.tracing.export_timeout_ms",
            ),
            ("{enabled: true, sampler: x}", "sampler"),
        ] {
            let err = load(&format!("gateway: {{tracing: {yaml}}}"), &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }
}
