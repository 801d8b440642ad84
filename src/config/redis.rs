//! `gateway.redis`: one Redis, a Cluster's seed nodes or Sentinels, and their timeouts;
//! `REDIS_ADDR` / `REDIS_CLUSTER_NODES` override the file.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::check::{invalid, millis, nonempty, ConfigError, Env};

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

/// Redis settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://` / `rediss://` URL, normalised from a bare `host:port`; `None` (and no
    /// `cluster`) = embedded store.
    pub url: Option<String>,
    /// Redis Cluster seed nodes as `redis://` URLs (`REDIS_CLUSTER_NODES`); empty: not a cluster.
    pub cluster: Vec<String>,
    /// Redis Sentinel (`redis+sentinel://…` in `REDIS_ADDR`): the master is asked of them.
    pub sentinel: Option<SentinelConfig>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each command; past it the caller falls back.
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// Which store the settings select: `embedded`, `redis`, `redis_cluster` or
    /// `redis_sentinel` (the status pages' word for it).
    pub fn kind(&self) -> &'static str {
        if !self.cluster.is_empty() {
            "redis_cluster"
        } else if self.sentinel.is_some() {
            "redis_sentinel"
        } else if self.url.is_some() {
            "redis"
        } else {
            "embedded"
        }
    }
}

/// Where the sentinels are and which master they watch.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelConfig {
    /// The sentinels, as `redis://host:port`.
    pub nodes: Vec<String>,
    /// The master's name as the sentinels know it.
    pub master: String,
    /// The master's password (`redis+sentinel://pass@…`).
    pub password: Option<String>,
    /// The database number on the master.
    pub db: i64,
}

impl RedisFile {
    pub(super) fn resolve(self, env: &dyn Env) -> Result<RedisConfig, ConfigError> {
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
