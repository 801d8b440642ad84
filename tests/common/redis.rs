//! A real `redis-server` on a free port, without persistence.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, Proc};

/// A real `redis-server` on a free port, without persistence.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts redis-server on `port` (used to restart it where the gateway expects it).
    pub fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = Proc::spawn(
            "redis",
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path()),
        );
        let r = Redis { proc, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = r.conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// `host:port` for REDIS_ADDR.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().expect("redis connection");
        redis::cmd("KEYS").arg(pattern).query(&mut c).expect("KEYS")
    }

    /// How many times Redis has run `command` (INFO commandstats).
    pub fn calls(&self, command: &str) -> u64 {
        let mut c = self.conn().expect("redis connection");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut c)
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a count"))
    }

    /// Every key (as `redis-cli --scan` lists them) with its TTL in seconds (-1: none; -2: gone
    /// since the scan).
    pub fn scan_ttls(&self) -> Vec<(String, i64)> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--scan"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(out.status.success(), "redis-cli --scan failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|k| (k.to_string(), self.ttl(k)))
            .collect()
    }

    /// Redis's own clock (`TIME`), in microseconds: what its scripts see as now.
    pub fn time_us(&self) -> u64 {
        let mut c = self.conn().expect("redis connection");
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c).expect("TIME");
        secs * 1_000_000 + micros
    }

    /// TTL of `key` in seconds (-1 none, -2 missing).
    pub fn ttl(&self, key: &str) -> i64 {
        let mut c = self.conn().expect("redis connection");
        redis::cmd("TTL").arg(key).query(&mut c).expect("TTL")
    }
}

/// A real Redis Cluster: six `redis-server --cluster-enabled yes` nodes on free ports (each
/// with its bus port, +10000, free too), joined by `redis-cli --cluster create … --cluster-replicas
/// 1`: three masters, three replicas, a 1 s node timeout so a killed master fails over fast.
pub struct RedisCluster {
    pub nodes: Vec<(u16, Proc)>,
    pub dir: tempfile::TempDir,
}

/// A reply as text: strings as they are, arrays and maps flattened with spaces.
fn value_text(v: &redis::Value) -> String {
    use redis::Value;
    match v {
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => i.to_string(),
        Value::Array(items) | Value::Set(items) => {
            items.iter().map(value_text).collect::<Vec<_>>().join(" ")
        }
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", value_text(k), value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => format!("{other:?}"),
    }
}

fn bindable(port: u32) -> bool {
    port < 65536 && std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok()
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster and waits until every slot is served and every
    /// master has its replica.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            let port = free_port();
            if !bindable(u32::from(port) + 10000) {
                continue;
            }
            let proc = Proc::spawn(
                &format!("redis cluster node {port}"),
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    // A replica takes over whatever the age of its copy (test data only).
                    .args(["--cluster-replica-validity-factor", "0"])
                    .arg("--dir")
                    .arg(dir.path()),
            );
            nodes.push((port, proc));
        }
        let c = RedisCluster { nodes, dir };
        for (port, _) in &c.nodes {
            c.wait(*port, "PING", |r| r == "PONG");
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(c.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (port, _) in &c.nodes {
            c.wait(*port, "CLUSTER INFO", |r| {
                r.contains("cluster_state:ok") && r.contains("cluster_slots_ok:16384")
            });
        }
        // Each node's view of the roles must have settled before anyone asks who the masters
        // are: right after `--cluster create` a node can still list a new replica as a master
        // (seen once on CI), and waiting for that "master" to get a replica never ends.
        let half = c.nodes.len() / 2;
        for (port, _) in &c.nodes {
            c.wait(*port, "CLUSTER NODES", |r| {
                let flags = || r.lines().filter_map(|l| l.split(' ').nth(2));
                flags().filter(|f| f.contains("master")).count() == half
                    && flags().filter(|f| f.contains("slave")).count() == half
            });
        }
        for (port, _) in &c.nodes {
            c.wait(*port, "INFO replication", |r| {
                r.contains("role:master") && r.contains("connected_slaves:1")
                    || r.contains("role:slave") && r.contains("master_link_status:up")
            });
        }
        c
    }

    pub fn query(port: u16, command: &str) -> Option<String> {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let mut cmd = redis::cmd(command.split(' ').next()?);
        for a in command.split(' ').skip(1) {
            cmd.arg(a);
        }
        Some(value_text(&cmd.query::<redis::Value>(&mut conn).ok()?))
    }

    /// Polls `command` on `port` until `ok` holds for its answer (20 s at most).
    pub fn wait(&self, port: u16, command: &str, ok: impl Fn(&str) -> bool) {
        RedisCluster::poll(port, command, ok)
    }

    /// See [`RedisCluster::wait`].
    pub fn poll(port: u16, command: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if RedisCluster::query(port, command).is_some_and(|r| ok(&r)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis {port}: `{command}` never became ready: {:?}",
                RedisCluster::query(port, command)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The seed list for `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes that are masters now (as a live node sees it).
    pub fn masters(&self) -> Vec<u16> {
        let live = self
            .nodes
            .iter()
            .find_map(|(p, _)| RedisCluster::query(*p, "CLUSTER NODES"))
            .unwrap_or_default();
        live.lines()
            .filter(|l| {
                let flags = l.split(' ').nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|l| {
                let addr = l.split(' ').nth(1)?;
                addr.split('@').next()?.rsplit(':').next()?.parse().ok()
            })
            .collect()
    }

    /// The live master holding a key that matches `pattern` (the first found).
    pub fn master_holding(&self, pattern: &str) -> Option<u16> {
        self.masters().into_iter().find(|port| {
            RedisCluster::query(*port, &format!("KEYS {pattern}")).is_some_and(|k| !k.is_empty())
        })
    }

    /// How many times the live masters ran `command` (`INFO commandstats`, summed).
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.masters()
            .into_iter()
            .filter_map(|port| RedisCluster::query(port, "INFO commandstats"))
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix(prefix.as_str()))
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// Kills the node on `port` (SIGKILL, as a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some((_, p)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            p.kill();
        }
    }

    /// Every key on every live master matching `pattern`, with its TTL in seconds.
    pub fn keys_with_ttl(&self, pattern: &str) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for port in self.masters() {
            let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            else {
                continue;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query(&mut c)
                .unwrap_or_default();
            for k in keys {
                let ttl: i64 = redis::cmd("TTL").arg(&k).query(&mut c).unwrap_or(-2);
                out.push((k, ttl));
            }
        }
        out
    }
}

/// A master, its replica and three sentinels (`redis-server --sentinel`) watching it as
/// `mymaster`, with a 1 s down-after: a killed master fails over within a few seconds.
pub struct RedisSentinels {
    pub master: Redis,
    pub replica: Proc,
    pub replica_port: u16,
    pub sentinels: Vec<(u16, Proc)>,
    pub dir: tempfile::TempDir,
}

impl RedisSentinels {
    /// Starts them and waits until the replica is in sync and every sentinel knows the
    /// replica and the other sentinels.
    pub fn start() -> RedisSentinels {
        let master = Redis::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let replica_port = free_port();
        let replica = Proc::spawn(
            "redis replica",
            Command::new("redis-server")
                .args(["--port", &replica_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
                .arg("--dir")
                .arg(dir.path()),
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor mymaster 127.0.0.1 {m} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 3000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir = dir.path().display(),
                    m = master.port
                ),
            )
            .expect("sentinel conf");
            let proc = Proc::spawn(
                &format!("redis sentinel {port}"),
                Command::new("redis-server").arg(&conf).arg("--sentinel"),
            );
            sentinels.push((port, proc));
        }
        let s = RedisSentinels {
            master,
            replica,
            replica_port,
            sentinels,
            dir,
        };
        RedisCluster::poll(replica_port, "INFO replication", |r| {
            r.contains("master_link_status:up")
        });
        for (port, _) in &s.sentinels {
            RedisCluster::poll(*port, "SENTINEL replicas mymaster", |r| {
                r.contains(&replica_port.to_string())
            });
            RedisCluster::poll(*port, "SENTINEL sentinels mymaster", |r| {
                s.sentinels
                    .iter()
                    .filter(|(p, _)| p != port)
                    .all(|(p, _)| r.contains(&p.to_string()))
            });
        }
        s
    }

    /// `REDIS_ADDR` for the gateway.
    pub fn addr(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/mymaster", hosts.join(","))
    }

    /// The master's port as the first sentinel names it now.
    pub fn current_master(&self) -> Option<u16> {
        let r = RedisCluster::query(
            self.sentinels[0].0,
            "SENTINEL get-master-addr-by-name mymaster",
        )?;
        r.split(|c: char| !c.is_ascii_digit())
            .filter(|t| t.len() >= 4)
            .find_map(|t| t.parse().ok())
    }
}
