//! From the file format to the typed [`Config`]: env overrides and every validation, each
//! failure naming its key.
//!
//! One `resolve` per section of the file, in the order of the file. The sections with schemas
//! of their own (aggregates, issuers, services, TLS, CORS, compression, tracing, rate-limit
//! policies, admin) are checked in their own files and only called from here.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use super::aggregates::resolve_aggregates;
use super::check::{invalid, millis, parse_listen, parse_port, positive};
use super::file::{
    AuthFile, GatewayFile, LimitsFile, RateLimitFile, RedisFile, RouteFile, StripFile, UpstreamFile,
};
use super::issuers::{claim_path, resolve_issuers};
use super::services::resolve_services;
use super::*;

/// `redis+sentinel://[pass@]h1:26379,h2:26379/<master>[/db]`.
pub fn parse_sentinel(addr: &str) -> Result<SentinelConfig, String> {
    let rest = addr
        .strip_prefix("redis+sentinel://")
        .ok_or("not a redis+sentinel:// address")?;
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("needs the master's name: redis+sentinel://h1:26379,h2:26379/<master>")?;
    let (password, hosts) = match hosts.rsplit_once('@') {
        Some((auth, h)) => {
            let pass = auth.rsplit(':').next().unwrap_or(auth);
            (Some(pass.to_string()).filter(|p| !p.is_empty()), h)
        }
        None => (None, hosts),
    };
    let mut nodes = Vec::new();
    for h in hosts.split(',').map(str::trim) {
        let url = normalise_redis_addr(h).map_err(|e| format!("sentinel `{h}`: {e}"))?;
        if !url.starts_with("redis://") {
            return Err(format!("sentinel `{h}` is not host:port"));
        }
        nodes.push(url);
    }
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default().to_string();
    if master.is_empty()
        || !master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!("`{master}` is not a master name ([A-Za-z0-9._-]+)"));
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<u8>()
            .map_err(|_| format!("`{d}` is not a database number"))?
            .into(),
    };
    if parts.next().is_some() {
        return Err("expected /<master>[/db] after the sentinels".into());
    }
    Ok(SentinelConfig {
        nodes,
        master,
        password,
        db,
    })
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
    /// Applies env overrides and validates into the typed [`Config`], section by section.
    pub(super) fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let (listen, metrics_listen) = resolve_listeners(&self.listen, &self.metrics_listen, env)?;
        let upstreams = resolve_upstreams(self.upstreams, mode)?;
        let limits = self.limits.resolve()?;
        let routes = resolve_routes(self.routes, &upstreams, &limits.body)?;
        let services = resolve_services(self.services, env)?;
        let names = services.names();
        let prefixes: Vec<String> = routes.iter().map(|r| r.prefix.clone()).collect();
        let aggregates = resolve_aggregates(self.aggregates, &names, &prefixes)?;
        let tls = self
            .tls
            .map(|t| {
                t.resolve(|value| {
                    parse_listen(
                        "gateway.tls.listen",
                        value,
                        nonempty(env, "HTTPS_PORT").map(|v| ("HTTPS_PORT", v)),
                    )
                })
            })
            .transpose()?;
        if let Some(t) = &tls {
            if t.listen == listen || t.listen == metrics_listen {
                return Err(invalid(
                    "gateway.tls.listen",
                    "must differ from gateway.listen and gateway.metrics_listen",
                ));
            }
        }
        let mut taken = vec![listen, metrics_listen];
        taken.extend(tls.as_ref().map(|t| t.listen));
        let admin = super::admin::resolve_admin(self.admin, env, &taken, mode)?;
        if self.redirect_http && tls.is_none() {
            return Err(invalid(
                "gateway.redirect_http",
                "needs gateway.tls: there is no HTTPS listener to redirect to",
            ));
        }
        Ok(Config {
            listen,
            metrics_listen,
            redis: self.redis.resolve(env)?,
            auth: self.auth.resolve(env, mode)?,
            rate_limit: self.rate_limit.resolve(env)?,
            services,
            aggregates,
            limits,
            upstreams,
            routes,
            tls,
            redirect_http: self.redirect_http,
            cors: super::cors::resolve_cors(self.cors)?,
            compression: super::compression::resolve_compression(self.compression)?,
            reload: ReloadConfig {
                watch: self.reload.watch,
                interval: Duration::from_millis(self.reload.interval_ms.max(100)),
            },
            tracing: super::tracing::resolve_tracing(self.tracing, env)?,
            admin,
        })
    }
}

/// A variable's value when it is set and not blank.
fn nonempty(env: &dyn Env, key: &str) -> Option<String> {
    env.var(key).filter(|v| !v.trim().is_empty())
}

fn resolve_listeners(
    listen: &str,
    metrics_listen: &str,
    env: &dyn Env,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let listen = parse_listen(
        "gateway.listen",
        listen,
        nonempty(env, "HTTP_PORT").map(|v| ("HTTP_PORT", v)),
    )?;
    let metrics_listen = parse_listen(
        "gateway.metrics_listen",
        metrics_listen,
        nonempty(env, "METRICS_PORT").map(|v| ("METRICS_PORT", v)),
    )?;
    if listen == metrics_listen {
        return Err(invalid(
            "gateway.metrics_listen",
            "must differ from gateway.listen",
        ));
    }
    Ok((listen, metrics_listen))
}

impl RedisFile {
    fn resolve(self, env: &dyn Env) -> Result<RedisConfig, ConfigError> {
        let (key, addr) = match nonempty(env, "REDIS_ADDR") {
            Some(v) => ("REDIS_ADDR", Some(v)),
            None => (
                "gateway.redis.addr",
                self.addr.filter(|a| !a.trim().is_empty()),
            ),
        };
        let (cluster_key, nodes) = match nonempty(env, "REDIS_CLUSTER_NODES") {
            Some(v) => (
                "REDIS_CLUSTER_NODES",
                v.split(',').map(|n| n.trim().to_string()).collect(),
            ),
            None => ("gateway.redis.cluster", self.cluster),
        };
        let mut cluster = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let url =
                normalise_redis_addr(n).map_err(|m| invalid(format!("{cluster_key}[{i}]"), m))?;
            if url.starts_with("unix://") {
                return Err(invalid(
                    format!("{cluster_key}[{i}]"),
                    "cluster nodes are host:port (or redis:// / rediss:// URLs)",
                ));
            }
            cluster.push(url);
        }
        if !cluster.is_empty() && addr.is_some() {
            return Err(invalid(
                cluster_key,
                format!("set either {key} (one Redis) or the cluster's seed nodes, not both"),
            ));
        }
        let (addr, sentinel) = match addr {
            Some(a) if a.trim_start().starts_with("redis+sentinel://") => (
                None,
                Some(parse_sentinel(a.trim()).map_err(|m| invalid(key, m))?),
            ),
            other => (other, None),
        };
        Ok(RedisConfig {
            url: addr
                .map(|a| normalise_redis_addr(&a).map_err(|m| invalid(key, m)))
                .transpose()?,
            cluster,
            sentinel,
            connect_timeout: millis("gateway.redis.connect_timeout_ms", self.connect_timeout_ms)?,
            command_timeout: millis("gateway.redis.command_timeout_ms", self.command_timeout_ms)?,
        })
    }
}

impl AuthFile {
    fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<AuthConfig, ConfigError> {
        let secret = env.var("JWT_SECRET").unwrap_or_default();
        let issuers = resolve_issuers(self.issuers)?;
        if secret.is_empty() && issuers.is_empty() && mode == LoadMode::Run {
            return Err(invalid(
                "JWT_SECRET",
                "is required when no gateway.auth.issuers are configured: set JWT_SECRET to the HS256 secret shared with the token issuer",
            ));
        }
        let roles_claim = claim_path("gateway.auth.roles_claim", &self.roles_claim)?;
        let mut forward_claims = Vec::new();
        for (claim, header) in self.forward_claims {
            let key = format!("gateway.auth.forward_claims.{claim}");
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid(&key, format!("`{header}` is not a header name")))?;
            // Headers the gateway sets itself or that frame the request: a claim must not
            // overwrite them.
            const RESERVED: [&str; 11] = [
                "host",
                "authorization",
                "content-length",
                "transfer-encoding",
                "connection",
                "expect",
                "upgrade",
                "x-user-id",
                "x-request-id",
                "x-forwarded-for",
                "x-forwarded-proto",
            ];
            if RESERVED.contains(&name.as_str()) {
                return Err(invalid(
                    &key,
                    format!("`{header}` is set by the gateway itself; choose another header"),
                ));
            }
            if forward_claims.iter().any(|(_, n)| *n == name) {
                return Err(invalid(
                    &key,
                    format!("`{header}` is already the header of another claim"),
                ));
            }
            forward_claims.push((claim_path(&key, &claim)?, name));
        }
        for (i, p) in self.public_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("gateway.auth.public_paths[{i}]"),
                    format!("`{p}` must start with `/`"),
                ));
            }
        }
        Ok(AuthConfig {
            secret: secret.into_bytes(),
            leeway_seconds: self.leeway_seconds,
            public_paths: self.public_paths,
            issuer: self.issuer,
            audience: self.audience,
            forward_authorization: self.forward_authorization,
            issuers,
            roles_claim,
            forward_claims,
        })
    }
}

impl RateLimitFile {
    fn resolve(self, env: &dyn Env) -> Result<RateLimitConfig, ConfigError> {
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

impl LimitsFile {
    fn resolve(self) -> Result<LimitsConfig, ConfigError> {
        Ok(LimitsConfig {
            max_request_header_bytes: positive(
                "gateway.limits.max_request_header_bytes",
                self.max_request_header_bytes as u64,
            )? as usize,
            max_authorization_bytes: positive(
                "gateway.limits.max_authorization_bytes",
                self.max_authorization_bytes as u64,
            )? as usize,
            header_read_timeout: millis(
                "gateway.limits.header_read_timeout_ms",
                self.header_read_timeout_ms,
            )?,
            keepalive_timeout: millis(
                "gateway.limits.keepalive_timeout_ms",
                self.keepalive_timeout_ms,
            )?,
            pipeline_depth: positive("gateway.limits.pipeline_depth", self.pipeline_depth)?
                as usize,
            body: BodyPolicy {
                buffer_bytes: buffer_bytes(
                    "gateway.limits.request_body_buffer_bytes",
                    self.request_body_buffer_bytes,
                )?,
                max_bytes: positive(
                    "gateway.limits.max_request_body_bytes",
                    self.max_request_body_bytes,
                )?,
                read_timeout: millis(
                    "gateway.limits.body_read_timeout_ms",
                    self.body_read_timeout_ms,
                )?,
            },
            body_buffer_total: usize::try_from(self.request_body_buffer_total_bytes).map_err(
                |_| {
                    invalid(
                        "gateway.limits.request_body_buffer_total_bytes",
                        "too large",
                    )
                },
            )?,
            max_connections_per_ip: u32::try_from(self.max_connections_per_ip).map_err(|_| {
                invalid(
                    "gateway.limits.max_connections_per_ip",
                    "must be at most 4294967295 (0 = no cap)",
                )
            })?,
            response_write_timeout: millis(
                "gateway.limits.response_write_timeout_ms",
                self.response_write_timeout_ms,
            )?,
        })
    }
}

/// A body buffer size: Pingora keeps a buffered body in its retry buffer, which holds 64 KiB,
/// so a larger setting would silently lose bodies; it is refused at start-up instead.
fn buffer_bytes(key: &str, v: u64) -> Result<usize, ConfigError> {
    if v > MAX_BODY_BUFFER as u64 {
        return Err(invalid(
            key,
            format!("{v} is over {MAX_BODY_BUFFER}, the most a request body can be buffered (0 = always stream)"),
        ));
    }
    Ok(v as usize)
}

fn resolve_upstreams(
    upstreams: BTreeMap<String, UpstreamFile>,
    mode: LoadMode,
) -> Result<BTreeMap<String, UpstreamConfig>, ConfigError> {
    upstreams
        .into_iter()
        .map(|(name, up)| Ok((name.clone(), up.resolve(&name, mode)?)))
        .collect()
}

fn resolve_routes(
    routes: Vec<RouteFile>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    body: &BodyPolicy,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut resolved = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let key = |k: &str| format!("gateway.routes[{i}].{k}");
        if !r.prefix.starts_with('/') {
            return Err(invalid(
                key("prefix"),
                format!("`{}` must start with `/`", r.prefix),
            ));
        }
        if !upstreams.contains_key(&r.upstream) {
            return Err(invalid(
                key("upstream"),
                format!(
                    "`{}` is not a group defined under gateway.upstreams",
                    r.upstream
                ),
            ));
        }
        let strip_prefix = match r.strip_prefix {
            StripFile::Flag(false) => None,
            StripFile::Flag(true) => Some(r.prefix.clone()),
            StripFile::Prefix(p) if r.prefix.starts_with(p.as_str()) && !p.is_empty() => Some(p),
            StripFile::Prefix(p) => {
                return Err(invalid(
                    key("strip_prefix"),
                    format!("`{p}` is not a leading part of the prefix `{}`", r.prefix),
                ))
            }
        };
        let body = BodyPolicy {
            buffer_bytes: match r.request_body_buffer_bytes {
                Some(v) => buffer_bytes(&key("request_body_buffer_bytes"), v)?,
                None => body.buffer_bytes,
            },
            max_bytes: match r.max_request_body_bytes {
                Some(v) => positive(&key("max_request_body_bytes"), v)?,
                None => body.max_bytes,
            },
            read_timeout: match r.body_read_timeout_ms {
                Some(v) => millis(&key("body_read_timeout_ms"), v)?,
                None => body.read_timeout,
            },
        };
        resolved.push(RouteConfig {
            prefix: r.prefix,
            upstream: r.upstream,
            strip_prefix,
            body,
        });
    }
    Ok(resolved)
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
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
