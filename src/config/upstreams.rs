//! `gateway.upstreams`: load-balanced groups of backends, their timeouts, retries, health
//! checks, TLS and h2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, millis, parse_port, positive, ConfigError, LoadMode};
use super::tls::{UpstreamTls, UpstreamTlsFile};

/// `gateway.dns` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsFile {
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    refresh: DnsRefreshFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DnsRefreshFile {
    min_ms: u64,
    max_ms: u64,
}

impl Default for DnsRefreshFile {
    fn default() -> Self {
        DnsRefreshFile {
            min_ms: 1000,
            max_ms: 30_000,
        }
    }
}

/// How backends' names are resolved (`gateway.dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Resolvers to ask (UDP, then TCP on truncation); empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// A name is resolved again at its record's TTL, at least this long after the last time...
    pub min_refresh: Duration,
    /// ...and at most this long.
    pub max_refresh: Duration,
}

/// Checks `gateway.dns` (defaults when absent).
pub(super) fn resolve_dns(file: Option<DnsFile>) -> Result<DnsConfig, ConfigError> {
    let file = file.unwrap_or(DnsFile {
        servers: Vec::new(),
        refresh: DnsRefreshFile::default(),
    });
    let mut servers = Vec::new();
    for (i, s) in file.servers.iter().enumerate() {
        let addr = s
            .parse::<SocketAddr>()
            .or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map_err(|_| {
                invalid(
                    format!("gateway.dns.servers[{i}]"),
                    format!("`{s}` is not an IP address or IP:port"),
                )
            })?;
        servers.push(addr);
    }
    let min = millis("gateway.dns.refresh.min_ms", file.refresh.min_ms)?;
    let max = millis("gateway.dns.refresh.max_ms", file.refresh.max_ms)?;
    if max < min {
        return Err(invalid(
            "gateway.dns.refresh.max_ms",
            "must be at least min_ms",
        ));
    }
    Ok(DnsConfig {
        servers,
        min_refresh: min,
        max_refresh: max,
    })
}

/// `balance` as written: a name, or `{ hash: KEY }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum BalanceFile {
    /// `round_robin` or `least_requests`.
    Named(String),
    /// `{ hash: "header:X-Session" }` and the like.
    Hash {
        /// What is hashed.
        hash: String,
    },
}

/// How a group picks a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// In turn (weighted by SRV weights).
    RoundRobin,
    /// The one with fewer requests in flight of two picked at random.
    LeastRequests,
    /// Consistent hashing of a request key: a key stays on its backend while it is healthy, and
    /// a backend leaving moves only its own keys.
    Hash(HashKey),
}

/// What a hashing group hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The caller's `sub`.
    Sub,
    /// The client's address.
    ClientIp,
}

fn resolve_balance(b: Option<BalanceFile>, key: &str) -> Result<Balance, ConfigError> {
    Ok(match b {
        None => Balance::RoundRobin,
        Some(BalanceFile::Named(n)) => match n.as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_requests" => Balance::LeastRequests,
            other => {
                return Err(invalid(
                    key,
                    format!("`{other}`: round_robin, least_requests or {{ hash: KEY }}"),
                ))
            }
        },
        Some(BalanceFile::Hash { hash }) => Balance::Hash(match hash.split_once(':') {
            _ if hash == "client_ip" => HashKey::ClientIp,
            Some(("header", h)) => {
                HashKey::Header(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid(format!("{key}.hash"), format!("`{h}` is not a header name"))
                })?)
            }
            Some(("cookie", c)) if !c.is_empty() => HashKey::Cookie(c.to_string()),
            Some(("claim", "sub")) => HashKey::Sub,
            _ => {
                return Err(invalid(
                    format!("{key}.hash"),
                    format!("`{hash}`: header:NAME, cookie:NAME, claim:sub or client_ip"),
                ))
            }
        }),
    })
}

/// A backend given by name: resolved at start and again at its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendName {
    /// The host name.
    pub host: String,
    /// The port every address of the name is reached on.
    pub port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    #[serde(default)]
    pub(super) backends: Vec<String>,
    #[serde(default)]
    pub(super) srv: Option<String>,
    #[serde(default)]
    pub(super) balance: Option<BalanceFile>,
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
    #[serde(default)]
    pub(super) websocket: WebSocketFile,
}

/// `upstreams.<name>.websocket` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct WebSocketFile {
    pub(super) idle_timeout_ms: u64,
    pub(super) max_message_bytes: Option<u64>,
}

impl Default for WebSocketFile {
    fn default() -> Self {
        WebSocketFile {
            idle_timeout_ms: 300_000,
            max_message_bytes: None,
        }
    }
}

/// What a WebSocket tunnel to a group is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketLimits {
    /// A tunnel with no byte either way for this long is closed (1001).
    pub idle_timeout: Duration,
    /// A client message (all its frames) larger than this closes the tunnel (1009);
    /// `None`: frames are not read at all.
    pub max_message_bytes: Option<u64>,
}

/// `upstreams.<name>.http2` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamH2File {
    #[serde(default = "default_h2_streams")]
    pub(super) max_streams: usize,
    /// h2 without TLS, no negotiation (h2c): gRPC servers listening in plain text.
    #[serde(default)]
    pub(super) prior_knowledge: bool,
    #[serde(default = "default_h2_window")]
    pub(super) stream_window_bytes: u32,
}

/// What one h2 stream from a backend may hold in the gateway while its client reads slowly
/// (the h2 flow-control window the gateway grants): Pingora's own 8 MiB would let every slow
/// reader pin 8 MiB; 1 MiB still fills a LAN link (1 GB/s at 1 ms round trip).
fn default_h2_window() -> u32 {
    1 << 20
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
    /// `None`: HTTP, or TCP for an h2c group (a gRPC server answers no HTTP/1.1 check).
    pub(super) kind: Option<HealthCheckKind>,
    pub(super) path: String,
    pub(super) interval_ms: u64,
    pub(super) timeout_ms: u64,
    pub(super) consecutive_success: usize,
    pub(super) consecutive_failure: usize,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            kind: None,
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
    /// Backends given by address.
    pub backends: Vec<SocketAddr>,
    /// Backends given by name, re-resolved at their TTL.
    pub names: Vec<BackendName>,
    /// An SRV name whose targets (ports and weights) are the backends, re-resolved likewise.
    pub srv: Option<String>,
    /// How names are resolved (only read when the group has names or `srv`).
    pub dns: Option<DnsConfig>,
    /// How a backend is picked.
    pub balance: Balance,
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
    /// h2 only: with TLS, no HTTP/1.1 fallback; without, h2c with prior knowledge.
    pub h2_only: bool,
    /// The flow-control window of each h2 stream from the backends.
    pub h2_stream_window: u32,
    /// WebSocket tunnels through this group.
    pub websocket: WebSocketLimits,
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
    dns: &DnsConfig,
) -> Result<BTreeMap<String, UpstreamConfig>, ConfigError> {
    upstreams
        .into_iter()
        .map(|(name, up)| Ok((name.clone(), up.resolve(&name, mode, dns)?)))
        .collect()
}

impl UpstreamFile {
    fn resolve(
        self,
        name: &str,
        _mode: LoadMode,
        dns: &DnsConfig,
    ) -> Result<UpstreamConfig, ConfigError> {
        let key = |k: &str| format!("gateway.upstreams.{name}.{k}");
        if self.backends.is_empty() && self.srv.is_none() {
            return Err(invalid(
                key("backends"),
                "must list at least one host:port (or give `srv`)",
            ));
        }
        let mut backends = Vec::new();
        let mut names = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            let bad = || {
                invalid(
                    format!("{}[{i}]", key("backends")),
                    format!("`{b}` must be host:port with a port in 1-65535"),
                )
            };
            // An address is used as it is; a name is resolved by the group, at start and again
            // at its TTL (a name that does not resolve yet does not stop the gateway).
            if let Ok(addr) = b.parse::<SocketAddr>() {
                if addr.port() == 0 {
                    return Err(bad());
                }
                backends.push(addr);
                continue;
            }
            let (host, port) = b.rsplit_once(':').ok_or_else(bad)?;
            let port = parse_port(port).ok_or_else(bad)?;
            let valid_name = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                });
            if !valid_name {
                return Err(bad());
            }
            names.push(BackendName {
                host: host.to_ascii_lowercase(),
                port,
            });
        }
        if let Some(srv) = &self.srv {
            if srv.is_empty() || srv.contains(char::is_whitespace) || srv.contains(':') {
                return Err(invalid(key("srv"), format!("`{srv}` is not a DNS name")));
            }
        }
        let discovered = !names.is_empty() || self.srv.is_some();
        let hc = self.health_check;
        let h2c = self.tls.is_none() && self.http2.as_ref().is_some_and(|h| h.prior_knowledge);
        let kind = hc.kind.unwrap_or(if h2c {
            HealthCheckKind::Tcp
        } else {
            HealthCheckKind::Http
        });
        if kind == HealthCheckKind::Http
            && (!hc.path.starts_with('/') || hc.path.parse::<http::Uri>().is_err())
        {
            return Err(invalid(
                key("health_check.path"),
                "must be a path starting with `/`",
            ));
        }
        Ok(UpstreamConfig {
            backends,
            names,
            srv: self.srv,
            dns: discovered.then(|| dns.clone()),
            balance: resolve_balance(self.balance, &key("balance"))?,
            health_check: HealthCheckConfig {
                kind,
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
            h2_streams: match &self.http2 {
                Some(h) if h.max_streams == 0 => {
                    return Err(invalid(key("http2.max_streams"), "must be at least 1"))
                }
                Some(h) => Some(h.max_streams),
                None => None,
            },
            h2_only: self.http2.as_ref().is_some_and(|h| h.prior_knowledge),
            h2_stream_window: match &self.http2 {
                Some(h) if !(65_535..=(1 << 30)).contains(&h.stream_window_bytes) => {
                    return Err(invalid(
                        key("http2.stream_window_bytes"),
                        "must be between 65535 and 1073741824",
                    ))
                }
                Some(h) => h.stream_window_bytes,
                None => default_h2_window(),
            },
            websocket: WebSocketLimits {
                idle_timeout: millis(
                    &key("websocket.idle_timeout_ms"),
                    self.websocket.idle_timeout_ms,
                )?,
                max_message_bytes: match self.websocket.max_message_bytes {
                    Some(0) => {
                        return Err(invalid(
                            key("websocket.max_message_bytes"),
                            "must be at least 1",
                        ))
                    }
                    m => m,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, LoadMode};

    fn load(gateway: &str) -> Result<Config, String> {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "x".repeat(32));
        Config::from_yaml(&format!("gateway:\n{gateway}"), &env, LoadMode::Run)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn only_a_group_verifying_without_its_own_ca_needs_the_system_roots() {
        // Any readable bundle serves as a group's own `ca`.
        let ca = openssl_probe::probe()
            .cert_file
            .expect("Debian's ca-certificates");
        let needs = |tls: &str| {
            load(&format!(
                "  upstreams:\n    a: {{ backends: ['127.0.0.1:1'] }}\n    b: {{ backends: ['127.0.0.1:2']{tls} }}\n"
            ))
            .unwrap()
            .verifies_against_system_roots()
        };
        assert!(!needs(""));
        assert!(needs(", tls: { sni: x.example }"));
        assert!(needs(", tls: { sni: x.example, verify: true }"));
        assert!(!needs(", tls: { sni: x.example, verify: false }"));
        assert!(!needs(&format!(
            ", tls: {{ sni: x.example, ca: '{}' }}",
            ca.display()
        )));
        assert!(!load("").unwrap().verifies_against_system_roots());
    }

    #[test]
    fn names_are_kept_for_the_resolver_and_addresses_used_as_they_are() {
        let c = load("  upstreams:\n    g: { backends: ['10.0.0.7:8080', 'Users.Default.svc:80', '[::1]:9'] }\n").unwrap();
        let g = &c.upstreams["g"];
        assert_eq!(g.backends.len(), 2, "two addresses");
        assert_eq!(
            (g.names[0].host.as_str(), g.names[0].port),
            ("users.default.svc", 80)
        );
        let dns = g.dns.as_ref().expect("a group with names resolves them");
        assert!(dns.servers.is_empty(), "the system's resolvers by default");
        assert_eq!(dns.min_refresh, std::time::Duration::from_secs(1));
        let plain = load("  upstreams:\n    g: { backends: ['10.0.0.7:8080'] }\n").unwrap();
        assert!(
            plain.upstreams["g"].dns.is_none(),
            "addresses only: nothing to resolve"
        );
        let srv = load("  dns: { servers: ['127.0.0.1:5353', '10.0.0.2'], refresh: { min_ms: 500, max_ms: 5000 } }\n  upstreams:\n    g: { srv: _http._tcp.users.svc }\n").unwrap();
        let dns = srv.upstreams["g"].dns.as_ref().unwrap();
        assert_eq!(dns.servers[1].port(), 53);
        assert_eq!(
            srv.upstreams["g"].srv.as_deref(),
            Some("_http._tcp.users.svc")
        );
    }

    #[test]
    fn h2c_groups_websocket_limits_and_windows_are_read_and_checked() {
        use super::HealthCheckKind;
        let g = |v: &str| {
            load(&format!(
                "  upstreams:\n    g: {{ backends: ['10.0.0.7:80'], {v} }}\n"
            ))
        };
        let c = g("http2: { prior_knowledge: true }").unwrap();
        let up = &c.upstreams["g"];
        assert!(up.h2_only);
        assert_eq!(
            up.health_check.kind,
            HealthCheckKind::Tcp,
            "a gRPC server answers no HTTP/1.1 check"
        );
        assert_eq!(up.h2_stream_window, 1 << 20);
        let c = g("http2: { prior_knowledge: true }, health_check: { kind: http }").unwrap();
        assert_eq!(c.upstreams["g"].health_check.kind, HealthCheckKind::Http);
        let c = g("websocket: { idle_timeout_ms: 1500, max_message_bytes: 65536 }").unwrap();
        let ws = c.upstreams["g"].websocket;
        assert_eq!(ws.idle_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(ws.max_message_bytes, Some(65536));
        let plain = g("health_check: { kind: tcp }").unwrap();
        assert_eq!(plain.upstreams["g"].websocket.idle_timeout.as_secs(), 300);
        assert_eq!(plain.upstreams["g"].websocket.max_message_bytes, None);
        for bad in [
            "websocket: { max_message_bytes: 0 }",
            "websocket: { idle_timeout_ms: 0 }",
            "http2: { stream_window_bytes: 1000 }",
            "websocket: { idle: 3 }",
        ] {
            assert!(g(bad).is_err(), "{bad}");
        }
        let e = g("http2: { stream_window_bytes: 1000 }").unwrap_err();
        assert!(e.contains("stream_window_bytes"), "{e}");
    }

    #[test]
    fn balance_names_a_policy_or_a_hash_key() {
        use super::{Balance, HashKey};
        let b = |v: &str| {
            load(&format!(
                "  upstreams:\n    g: {{ backends: ['10.0.0.7:80'], balance: {v} }}\n"
            ))
            .map(|c| c.upstreams["g"].balance.clone())
        };
        assert_eq!(b("least_requests").unwrap(), Balance::LeastRequests);
        assert_eq!(b("round_robin").unwrap(), Balance::RoundRobin);
        assert_eq!(
            b("{ hash: client_ip }").unwrap(),
            Balance::Hash(HashKey::ClientIp)
        );
        assert_eq!(
            b("{ hash: 'claim:sub' }").unwrap(),
            Balance::Hash(HashKey::Sub)
        );
        assert_eq!(
            b("{ hash: 'cookie:sid' }").unwrap(),
            Balance::Hash(HashKey::Cookie("sid".into()))
        );
        assert!(matches!(
            b("{ hash: 'header:X-Session' }").unwrap(),
            Balance::Hash(HashKey::Header(_))
        ));
        assert!(b("fastest").unwrap_err().contains("upstreams.g.balance"));
        assert!(b("{ hash: 'claim:tenant' }")
            .unwrap_err()
            .contains("upstreams.g.balance.hash"));
    }

    #[test]
    fn dns_and_backend_mistakes_are_named() {
        for (yaml, want) in [
            (
                "  upstreams:\n    g: { backends: ['users:0'] }\n",
                "backends[0]",
            ),
            (
                "  upstreams:\n    g: { backends: ['us ers:80'] }\n",
                "backends[0]",
            ),
            ("  upstreams:\n    g: { backends: [] }\n", "or give `srv`"),
            ("  upstreams:\n    g: { srv: 'a b' }\n", "upstreams.g.srv"),
            (
                "  dns: { servers: ['resolver'] }\n",
                "gateway.dns.servers[0]",
            ),
            (
                "  dns: { refresh: { min_ms: 5000, max_ms: 1000 } }\n",
                "gateway.dns.refresh.max_ms",
            ),
        ] {
            let e = load(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
