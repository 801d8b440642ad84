//! `gateway.upstreams`: load-balanced groups of backends, their timeouts, retries, health
//! checks, TLS and h2.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, millis, parse_port, positive, ConfigError, LoadMode};
use super::tls::{UpstreamTls, UpstreamTlsFile};

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

/// One upstream group.
#[derive(Debug, Clone, PartialEq)]
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
    /// TLS to the backends; `None`: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// h2 to the backends (offered by ALPN), with this many streams per connection.
    pub h2_streams: Option<usize>,
}

/// Active health check of a group.
#[derive(Debug, Clone, PartialEq)]
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

pub(super) fn resolve_upstreams(
    upstreams: BTreeMap<String, UpstreamFile>,
    mode: LoadMode,
) -> Result<BTreeMap<String, UpstreamConfig>, ConfigError> {
    upstreams
        .into_iter()
        .map(|(name, up)| Ok((name.clone(), up.resolve(&name, mode)?)))
        .collect()
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
        if hc.kind == HealthCheckKind::Http
            && (!hc.path.starts_with('/') || hc.path.parse::<http::Uri>().is_err())
        {
            return Err(invalid(
                key("health_check.path"),
                "must be a path starting with `/`",
            ));
        }
        Ok(UpstreamConfig {
            backends,
            health_check: HealthCheckConfig {
                kind: hc.kind,
                path: hc.path,
                interval: millis(&key("health_check.interval_ms"), hc.interval_ms)?,
                timeout: millis(&key("health_check.timeout_ms"), hc.timeout_ms)?,
                consecutive_success: positive(
                    &key("health_check.consecutive_success"),
                    hc.consecutive_success as u64,
                )? as usize,
                consecutive_failure: positive(
                    &key("health_check.consecutive_failure"),
                    hc.consecutive_failure as u64,
                )? as usize,
            },
            connect_timeout: millis(&key("connect_timeout_ms"), self.connect_timeout_ms)?,
            read_timeout: millis(&key("read_timeout_ms"), self.read_timeout_ms)?,
            passive_failures: positive(&key("passive.failures"), self.passive.failures as u64)?
                as u32,
            passive_open: millis(&key("passive.open_ms"), self.passive.open_ms)?,
            connect_retries: self.connect_retries,
            tls: self
                .tls
                .map(|t| super::tls::upstream_tls(t, name, &self.backends, &key))
                .transpose()?,
            h2_streams: match self.http2 {
                Some(h) if h.max_streams == 0 => {
                    return Err(invalid(key("http2.max_streams"), "must be at least 1"))
                }
                Some(h) => Some(h.max_streams),
                None => None,
            },
        })
    }
}
