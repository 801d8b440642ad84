//! A real `redis-server` on a free port, without persistence.

use std::process::{Command, Stdio};
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
        let child = Command::new("redis-server")
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
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        let r = Redis {
            proc: Proc {
                name: "redis".into(),
                child,
            },
            port,
            dir,
        };
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

    /// TTL of `key` in seconds (-1 none, -2 missing).
    pub fn ttl(&self, key: &str) -> i64 {
        let mut c = self.conn().expect("redis connection");
        redis::cmd("TTL").arg(key).query(&mut c).expect("TTL")
    }
}
