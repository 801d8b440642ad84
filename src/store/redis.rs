//! The Redis connection shared by every request of this process — one Redis, or a Redis
//! Cluster through redis-rs's cluster client (slots, `MOVED`/`ASK` and failovers are its
//! business) — created lazily (the gateway starts with Redis down), every command bounded by
//! the command timeout, and a breaker that skips Redis for a second after three failures so an
//! outage costs requests no waiting.
//!
//! The three targets (one node, Cluster, Sentinel with its own refresh task) and the scripts
//! every caller runs (window counts, GCRA, tag sets, each atomic and single-key) share the one
//! `run` wrapper with its timeout, breaker and warnings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Script, Value};

use super::error::StoreError;
use crate::clock::unix_now;
use crate::config::RedisConfig;
use crate::metrics;
use crate::resilience::CircuitBreaker;

/// Consecutive failures after which Redis is skipped for [`REDIS_PAUSE`].
const REDIS_FAILURES: u32 = 3;
/// How long requests stop waiting on a failing Redis before one probes it again: short, so a
/// restarted Redis is used again within about a second.
const REDIS_PAUSE: Duration = Duration::from_millis(1000);
/// At most one warning per this many seconds per kind of trouble.
const WARN_EVERY_SECS: u64 = 10;

/// Logs a warning at most once per [`WARN_EVERY_SECS`].
#[derive(Debug, Default)]
pub struct WarnLimiter {
    last: AtomicU64,
}

impl WarnLimiter {
    /// Whether a warning may be logged now (and records that it was).
    pub fn allow(&self) -> bool {
        let now = unix_now();
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + WARN_EVERY_SECS)
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Where the commands go (built once per process).
#[allow(clippy::large_enum_variant)]
enum Target {
    /// One Redis.
    Single(Client),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster(ClusterClient),
    /// The master a set of sentinels names.
    Sentinel(std::sync::Arc<SentinelConn>),
}

/// A connection to the master the sentinels name, asked again whenever the connection fails
/// or the server says it is no longer a master (`READONLY`): a failover is followed by the
/// next command after it.
pub(crate) struct SentinelConn {
    /// Asked by one refresh task at a time: a failure seen by many requests leads to one
    /// question to the sentinels.
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    current: arc_swap::ArcSwapOption<MultiplexedConnection>,
    refreshing: std::sync::atomic::AtomicBool,
    ready: tokio::sync::Notify,
    config: redis::AsyncConnectionConfig,
    /// Bound on one refresh (sentinels asked, master connected).
    refresh_timeout: Duration,
    db: i64,
}

impl SentinelConn {
    /// The master's connection, or a wait for the refresh that finds it. The refresh runs as
    /// a task of its own: a command's timeout (100 ms by default) must not cancel it halfway,
    /// or a reconnection slower than one command would never finish.
    async fn connection(self: &std::sync::Arc<Self>) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        let ready = self.ready.notified();
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                let found = tokio::time::timeout(me.refresh_timeout, async {
                    let mut client = me.client.lock().await;
                    client.get_async_connection_with_config(&me.config).await
                })
                .await;
                if let Ok(Ok(conn)) = found {
                    me.current.store(Some(std::sync::Arc::new(conn)));
                }
                me.refreshing.store(false, Ordering::Release);
                me.ready.notify_waiters();
            });
        }
        ready.await;
        self.current
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no master from the sentinels yet",
                ))
            })
    }

    /// Drops the connection after `e` if it says the master may have moved.
    fn check<T>(&self, r: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &r {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.code() == Some("READONLY")
            {
                self.current.store(None);
            }
        }
        r
    }

    /// Drops the connection when an answer is a demoted master's refusal. The client hands a
    /// server's error back as a value, turned into an error only by the caller's conversion,
    /// so [`check`](Self::check) alone never sees it.
    fn check_answers<'v>(&self, answers: impl IntoIterator<Item = &'v Value>) {
        if answers.into_iter().any(demoted) {
            self.current.store(None);
        }
    }
}

/// Whether `v` says the server is no longer a master: `READONLY`, or a transaction discarded
/// for the `READONLY` its queued commands got.
fn demoted(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(e.code(), "READONLY" | "EXECABORT"),
        Value::Array(items) => items.iter().any(demoted),
        _ => false,
    }
}

/// A connection to either: both reconnect (and the cluster one follows slot moves) by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The sentinels' master.
    Sentinel(std::sync::Arc<SentinelConn>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.check(s.connection().await)?;
                let answer = s.check(c.req_packed_command(cmd).await)?;
                s.check_answers([&answer]);
                Ok(answer)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.check(s.connection().await)?;
                let answers = s.check(c.req_packed_commands(cmd, offset, count).await)?;
                s.check_answers(&answers);
                Ok(answers)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(s) => s.db,
        }
    }
}

/// A Redis operation, as `store_errors_total{op}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A fixed-window counter's increment.
    Incr,
    /// A GCRA decision.
    Gcra,
    /// A cache entry read.
    Get,
    /// A cache entry write.
    Set,
    /// A tag index read or write.
    Tag,
    /// A purge.
    Del,
    /// An invalidation announced to the replicas.
    Publish,
    /// The invalidation feed's subscription.
    Subscribe,
    /// A Redis Cluster's topology read.
    ClusterNodes,
    /// A readiness probe.
    Ping,
}

impl Op {
    /// Every operation, for priming the metric.
    pub(crate) const ALL: [Op; 10] = [
        Op::Incr,
        Op::Gcra,
        Op::Get,
        Op::Set,
        Op::Tag,
        Op::Del,
        Op::Publish,
        Op::Subscribe,
        Op::ClusterNodes,
        Op::Ping,
    ];

    /// The `op` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Op::Incr => "incr",
            Op::Gcra => "gcra",
            Op::Get => "get",
            Op::Set => "set",
            Op::Tag => "tag",
            Op::Del => "del",
            Op::Publish => "publish",
            Op::Subscribe => "subscribe",
            Op::ClusterNodes => "cluster_nodes",
            Op::Ping => "ping",
        }
    }
}

/// A Redis connection shared by every request of this process.
pub struct RedisStore {
    target: Target,
    config: RedisConfig,
    /// Created on first use, inside the serving runtime, so the connection's driver task runs
    /// there; it then reconnects by itself.
    conn: OnceLock<Conn>,
    breaker: CircuitBreaker,
    warn: WarnLimiter,
    /// Whether the invalidation feed is subscribed (see `feed`): in-process copies are read
    /// only while it is, since an invalidation could otherwise be missed.
    subscribed: std::sync::atomic::AtomicBool,
    incr_script: Script,
    gcra_script: Script,
    tag_script: Script,
}

// INCRBY and EXPIRE … NX in one script: atomic, one round trip, and the key can never be left
// without a TTL (NX keeps the first TTL so the window's expiry does not slide).
const INCR_WINDOW: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return n
";

// GCRA on Redis's own clock, so that replicas with skewed clocks still share one schedule.
// KEYS[1] holds the theoretical arrival time (TAT, microseconds); ARGV: the emission interval,
// the burst tolerance (both microseconds) and how many admissions are asked for at once. Grants
// as many of them as fit in the tolerance: {granted, TAT - now} (the new TAT is stored with a
// TTL that ends when it is in the past, so idle keys vanish), or {0, microseconds until one
// would fit}. Numbers stay exact in Lua's doubles (microsecond timestamps are below 2^53).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local room = math.floor((tolerance - (tat - now)) / interval)
local granted = math.min(tonumber(ARGV[3]), room)
if granted < 1 then
  return {0, tat + interval - tolerance - now}
end
local new = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {granted, new - now}
";

// A tag's entries as a sorted set scored by each entry's expiry (ms, Redis's clock): adding one
// drops those already expired and sets the set's own TTL past its last entry's, so a tag set
// never outlives its entries and never grows past the entries alive.
const TAG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(last[2]) - now, 1) + 1000)
return 1
";

impl RedisStore {
    /// Prepares a client for one Redis at `url`; nothing connects until the first command.
    pub fn new(url: &str, config: RedisConfig) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore::with_target(
            Target::Single(Client::open(url)?),
            config,
        ))
    }

    /// The store `config` asks for: a cluster (seed nodes), one Redis (`url`), or `None` for
    /// the embedded store.
    pub fn from_config(config: &RedisConfig) -> Result<Option<RedisStore>, String> {
        if !config.cluster.is_empty() {
            let client = ClusterClient::builder(config.cluster.clone())
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.command_timeout)
                .retries(1)
                .build()
                .map_err(|e| {
                    format!("REDIS_CLUSTER_NODES / gateway.redis.cluster is not usable: {e}")
                })?;
            return Ok(Some(RedisStore::with_target(
                Target::Cluster(client),
                config.clone(),
            )));
        }
        if let Some(sc) = &config.sentinel {
            let mut info = redis::RedisConnectionInfo::default().set_db(sc.db);
            if let Some(p) = &sc.password {
                info = info.set_password(p);
            }
            let client = redis::sentinel::SentinelClient::build(
                sc.nodes.clone(),
                sc.master.clone(),
                Some(
                    redis::sentinel::SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(info),
                ),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| format!("REDIS_ADDR (redis+sentinel://) is not usable: {e}"))?;
            let conn = SentinelConn {
                client: tokio::sync::Mutex::new(client),
                current: arc_swap::ArcSwapOption::empty(),
                refreshing: std::sync::atomic::AtomicBool::new(false),
                ready: tokio::sync::Notify::new(),
                refresh_timeout: config.connect_timeout * 2,
                config: redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout)),
                db: sc.db,
            };
            return Ok(Some(RedisStore::with_target(
                Target::Sentinel(std::sync::Arc::new(conn)),
                config.clone(),
            )));
        }
        match &config.url {
            Some(url) => RedisStore::new(url, config.clone())
                .map(Some)
                .map_err(|e| format!("REDIS_ADDR / gateway.redis.addr is not usable: {e}")),
            None => Ok(None),
        }
    }

    fn with_target(target: Target, config: RedisConfig) -> RedisStore {
        RedisStore {
            target,
            config,
            conn: OnceLock::new(),
            breaker: CircuitBreaker::new(REDIS_FAILURES, REDIS_PAUSE, Instant::now()),
            warn: WarnLimiter::default(),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            incr_script: Script::new(INCR_WINDOW),
            gcra_script: Script::new(GCRA),
            tag_script: Script::new(TAG),
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let c = match &self.target {
            Target::Single(client) => {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout))
                    .set_response_timeout(Some(self.config.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    cfg,
                )?)
            }
            // Connects to the nodes in the background; commands wait for it (bounded by the
            // command timeout), as with one Redis.
            Target::Cluster(client) => Conn::Cluster(
                client.get_pending_async_connection_with_config(ClusterConfig::default()),
            ),
            Target::Sentinel(s) => Conn::Sentinel(s.clone()),
        };
        Ok(self.conn.get_or_init(|| c).clone())
    }

    /// Runs `op` under the breaker and the command timeout, recording failures.
    async fn run<T, F>(&self, op: Op, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.admit(Instant::now()).0.is_allowed() {
            metrics::STORE_ERRORS
                .with_label_values(&["redis", op.label()])
                .inc();
            return Err(StoreError::Unavailable);
        }
        let conn = self.conn()?;
        let result = match tokio::time::timeout(self.config.command_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        let now = Instant::now();
        match &result {
            Ok(_) => {
                if self.breaker.on_success(now).is_some() {
                    tracing::info!("redis is answering again");
                }
            }
            Err(e) => {
                metrics::STORE_ERRORS
                    .with_label_values(&["redis", op.label()])
                    .inc();
                self.breaker.on_failure(now);
                if self.warn.allow() {
                    tracing::warn!(op = op.label(), error = %e, "redis failed; falling back (this warning repeats at most every 10 s)");
                }
            }
        }
        result
    }

    /// How long one command may take before the caller falls back.
    pub fn command_timeout(&self) -> Duration {
        self.config.command_timeout
    }

    /// Adds `by` to a fixed-window counter and returns the new count.
    pub async fn incr_window(&self, key: &str, by: u64, ttl_secs: u64) -> Result<u64, StoreError> {
        let script = &self.incr_script;
        self.run(Op::Incr, |mut c| async move {
            script
                .key(key)
                .arg(ttl_secs.max(1))
                .arg(by)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// GCRA on `key` (interval and tolerance in microseconds) for up to `want` admissions at
    /// once: `Ok((granted, TAT minus now))` when at least one fits, `Ok((0, wait))` with the
    /// microseconds until one would otherwise.
    pub async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        want: u64,
    ) -> Result<(u64, u64), StoreError> {
        let script = &self.gcra_script;
        let (granted, us): (i64, i64) = self
            .run(Op::Gcra, |mut c| async move {
                script
                    .key(key)
                    .arg(interval_us)
                    .arg(tolerance_us)
                    .arg(want.max(1))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok((granted.max(0) as u64, us.max(0) as u64))
    }

    /// Adds `member` (expiring in `ttl`) to the tag set `key`.
    pub async fn tag(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let script = &self.tag_script;
        let ms = ttl.as_millis().max(1) as u64;
        let _: i64 = self
            .run(Op::Tag, |mut c| async move {
                script
                    .key(key)
                    .arg(ms)
                    .arg(member)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The members of the tag set `key`.
    pub async fn tag_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.run(Op::Tag, |mut c| async move {
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Deletes `key`; whether it existed. One key per command, so that on a Cluster each
    /// goes to its own slot's node.
    pub async fn del(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(Op::Del, |mut c| async move {
                redis::cmd("DEL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    /// Reads a key.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(Op::Get, |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// Whether Redis answers a `PING` within the command timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .run(Op::Ping, |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Publishes `payload` on `channel` (classic pub/sub: on a Cluster it reaches every node).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        let _: i64 = self
            .run(Op::Publish, |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// A fresh pub/sub connection: to the one Redis, to a Cluster's seed node `attempt`
    /// (rotating, since classic PUBLISH reaches every node, any one will do), or to the
    /// master the sentinels name now.
    pub(super) async fn subscriber(
        &self,
        attempt: usize,
    ) -> redis::RedisResult<redis::aio::PubSub> {
        let client = match &self.target {
            Target::Single(c) => c.clone(),
            Target::Cluster(_) => {
                let seeds = &self.config.cluster;
                Client::open(seeds[attempt % seeds.len().max(1)].as_str())?
            }
            Target::Sentinel(s) => s.client.lock().await.async_get_client().await?,
        };
        client.get_async_pubsub().await
    }

    /// Whether this process hears the other replicas' invalidations right now.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(super) fn set_subscribed(&self, on: bool) {
        self.subscribed.store(on, Ordering::Release);
        metrics::CACHE_INVALIDATION_FEED.set(i64::from(on));
    }

    /// The connect timeout (also the bound on setting up a subscription).
    pub(super) fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// Writes a key with a TTL.
    pub async fn set_ex(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let secs = ttl.as_secs().max(1);
        self.run(Op::Set, |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(secs)
                .query_async(&mut c)
                .await
        })
        .await
    }
}

/// Every this often, the cluster's masters are read and compared with the last reading.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(2);

/// Watches a Redis Cluster's masters: a change (a failover, a node added) is logged and
/// counted in `redis_topology_changes_total`. The client follows the change by itself; this
/// only makes it visible.
pub struct TopologyWatch(pub std::sync::Arc<RedisStore>);

impl RedisStore {
    /// The cluster's masters (`host:port`, sorted), as one node sees them.
    async fn masters(&self) -> Result<Vec<String>, StoreError> {
        let nodes: String = self
            .run(Op::ClusterNodes, |mut c| async move {
                redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await
            })
            .await?;
        Ok(parse_masters(&nodes))
    }
}

/// The masters in a `CLUSTER NODES` answer: lines whose flags say master and not failed.
fn parse_masters(nodes: &str) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let addr = f.nth(1)?;
            let flags = f.next()?;
            (flags.contains("master") && !flags.contains("fail"))
                .then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect();
    out.sort();
    out
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for TopologyWatch {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut last: Option<Vec<String>> = None;
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let Ok(now) = self.0.masters().await else {
                // Until a first reading, retry soon: a change is only seen against one.
                pause = if last.is_some() {
                    TOPOLOGY_EVERY
                } else {
                    TOPOLOGY_EVERY / 10
                };
                continue;
            };
            pause = TOPOLOGY_EVERY;
            metrics::REDIS_CLUSTER_MASTERS.set(now.len() as i64);
            if let Some(before) = &last {
                if *before != now {
                    metrics::REDIS_TOPOLOGY_CHANGES.inc();
                    tracing::info!(from = %before.join(","), to = %now.join(","), "redis cluster masters changed");
                }
            }
            last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WarnLimiter;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected\n\
                     c3 127.0.0.1:7004@17004 slave a1 0 0 1 connected\n\
                     d4 127.0.0.1:7005@17005 master - 0 0 3 connected 5461-10922\n";
        assert_eq!(
            super::parse_masters(nodes),
            ["127.0.0.1:7000", "127.0.0.1:7005"]
        );
    }

    #[test]
    fn warnings_are_rate_limited() {
        let w = WarnLimiter::default();
        assert!(w.allow());
        assert!(!w.allow());
    }
}
