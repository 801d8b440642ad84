//! From the file format to the typed [`Config`]: env overrides and every validation, each
//! failure naming its key.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use super::file::{GatewayFile, ServiceFile, ServicesFile, StripFile, UpstreamFile};
use super::*;

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
    /// Applies env overrides and validates into the typed [`Config`].
    pub(super) fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
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
