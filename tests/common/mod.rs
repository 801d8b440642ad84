//! Test harness: real processes (gateway, mocks, redis-server) and small real HTTP upstreams on
//! free 127.0.0.1 ports, readiness by polling, and guards that kill every process on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listened on port {port} within {timeout:?}");
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends `sig` (e.g. "QUIT").
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// Directory of the binaries cargo built for this test run.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// The gateway binary under test.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// The mocks binary (workspace member), built on demand when a bare `cargo test` skipped it.
pub fn mocks_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = bin_dir().join("mocks");
    BUILD.call_once(|| {
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "mocks"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the mocks failed");
        }
    });
    path
}

/// A running mocks process and its ports.
pub struct Mocks {
    pub proc: Proc,
    pub ports: HashMap<&'static str, u16>,
}

impl Mocks {
    /// Starts the named services (user, order, product, recommendation) on free ports.
    pub fn start(services: &[&'static str]) -> Mocks {
        let ports: HashMap<&'static str, u16> =
            services.iter().map(|s| (*s, free_port())).collect();
        Mocks::start_on(ports)
    }

    /// Starts services on the given ports (used to bring a killed backend back).
    pub fn start_on(ports: HashMap<&'static str, u16>) -> Mocks {
        let mut cmd = Command::new(mocks_bin());
        let names: Vec<&str> = ports.keys().copied().collect();
        cmd.arg("--services").arg(names.join(","));
        for (name, port) in &ports {
            cmd.arg(format!("--{name}-port")).arg(port.to_string());
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = cmd.spawn().expect("mocks start");
        let proc = Proc {
            name: "mocks".into(),
            child,
        };
        for port in ports.values() {
            wait_for_port(*port, Duration::from_secs(10));
        }
        Mocks { proc, ports }
    }

    /// Base URL of one service.
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// `host:port` of one service.
    pub fn addr(&self, service: &str) -> String {
        format!("127.0.0.1:{}", self.ports[service])
    }

    /// Sets a service's faults (`PUT /__faults`).
    pub async fn faults(&self, service: &str, faults: serde_json::Value) {
        let r = client()
            .put(format!("{}/__faults", self.url(service)))
            .json(&faults)
            .send()
            .await
            .expect("faults accepted");
        assert!(r.status().is_success());
    }

    /// Number of requests a service saw on `route` (e.g. `/users/{id}`).
    pub async fn count(&self, service: &str, route: &str) -> u64 {
        let v: serde_json::Value = client()
            .get(format!("{}/__stats", self.url(service)))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        v["requests"][route].as_u64().unwrap_or(0)
    }
}

/// A running gateway process.
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    /// The environment it was started with (for a second process on the same conf).
    pub env: Vec<(String, String)>,
}

/// Secret used by every test gateway.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

/// A valid token for `sub`, one hour.
pub fn token(sub: &str) -> String {
    gateway::edge::auth::issue_token(SECRET.as_bytes(), sub, Duration::from_secs(3600), &[])
        .expect("sign")
}

/// A valid token for `sub` with roles.
pub fn token_with_roles(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    gateway::edge::auth::issue_token(SECRET.as_bytes(), sub, Duration::from_secs(3600), &roles)
        .expect("sign")
}

impl Gateway {
    /// Writes `gateway_section` (YAML under `gateway:`, without listen keys) to a conf file and
    /// starts the gateway with `env`, waiting for `/readyz`.
    pub async fn start(gateway_section: &str, env: &[(&str, String)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let metrics_port = free_port();
        let conf = format!(
            "version: 1\nthreads: 2\npid_file: {dir}/gw.pid\nupgrade_sock: {dir}/upgrade.sock\n\
             grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 10\n\
             gateway:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics_port}\"\n{section}",
            dir = dir.path().display(),
            section = indent(gateway_section),
        );
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, conf).expect("write conf");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let child = spawn_gateway(&path, &env, &[]);
        let gw = Gateway {
            proc: Proc {
                name: "gateway".into(),
                child,
            },
            port,
            metrics_port,
            dir,
            env,
        };
        let url = gw.url("/readyz");
        eventually(
            "gateway /readyz",
            Duration::from_secs(20),
            async || matches!(client().get(&url).send().await, Ok(r) if r.status() == 200),
        )
        .await;
        gw
    }

    /// Starts a second gateway on the same conf with Pingora's `-u`: it takes the listening
    /// sockets over once this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Proc {
        let child = spawn_gateway(&self.dir.path().join("gateway.yaml"), &self.env, &["-u"]);
        Proc {
            name: "gateway (upgrade)".into(),
            child,
        }
    }

    /// URL of `path` on the client listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Status of `GET /healthz` (the gateway is still serving).
    pub async fn health_status(&self) -> u16 {
        client()
            .get(self.url("/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

fn spawn_gateway(conf: &std::path::Path, env: &[(String, String)], extra: &[&str]) -> Child {
    let mut cmd = Command::new(gateway_bin());
    cmd.args(extra).arg("-c").arg(conf);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    cmd.spawn().expect("gateway starts")
}

fn indent(section: &str) -> String {
    section
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
}

/// A shared HTTP client with no proxy from the environment and a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// What the echo upstream saw, per request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// All values of header `name`.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An in-process HTTP upstream that records requests and echoes bodies back (streaming).
pub struct EchoServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Starts on a free port. `/healthz` → 200; `/slow?ms=N` waits N ms; anything else echoes.
    pub async fn start() -> EchoServer {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let rec = rec.clone();
            async move { echo(req, rec).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        EchoServer { port, seen, task }
    }

    /// Requests recorded so far, excluding health checks.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| !s.uri.starts_with("/healthz"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request, rec: Arc<Mutex<Vec<Seen>>>) -> Response {
    let seen = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    if let Ok(mut v) = rec.lock() {
        v.push(seen);
    }
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Response::new(Body::from("ok"));
    }
    if path.ends_with("/slow") {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Response::new(Body::from("slow done"));
    }
    let mut resp = Response::new(Body::from_stream(req.into_body().into_data_stream()));
    resp.headers_mut()
        .insert("x-upstream", axum::http::HeaderValue::from_static("echo"));
    resp
}

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

/// Sends raw bytes (a client library would normalise them) and returns what came back until the
/// server closed or went quiet for `quiet`.
pub async fn raw_request(port: u16, request: &[u8], quiet: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Env vars pointing the gateway's four services at `mocks`.
pub fn service_env(mocks: &Mocks) -> Vec<(&'static str, String)> {
    vec![
        ("USER_SERVICE_URL", mocks.url("user")),
        ("ORDER_SERVICE_URL", mocks.url("order")),
        ("PRODUCT_SERVICE_URL", mocks.url("product")),
        ("RECOMMENDATION_SERVICE_URL", mocks.url("recommendation")),
    ]
}

/// How the raw recording upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RecorderMode {
    /// `200 ok` to every request (keep-alive).
    Ok,
    /// `101 Switching Protocols`, then echo every byte back.
    Upgrade,
}

/// A raw TCP upstream that records exactly the bytes it received on each connection.
pub struct Recorder {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Recorder {
    /// Starts on a free port.
    pub async fn start(mode: RecorderMode) -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let all = all.clone();
                let idx = {
                    let mut v = all.lock().unwrap();
                    v.push(Vec::new());
                    v.len() - 1
                };
                tokio::spawn(async move {
                    let mut pending: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    let mut upgraded = false;
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        all.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
                        if upgraded {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        // Answer every complete request head (+ chunked or sized body) we hold.
                        while let Some(end) = find(&pending, b"\r\n\r\n") {
                            let head =
                                String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                            let mut total = end + 4;
                            if head.contains("transfer-encoding: chunked") {
                                match find(&pending[total..], b"0\r\n\r\n") {
                                    Some(i) => total += i + 5,
                                    None => break,
                                }
                            } else if let Some(cl) = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                            {
                                if pending.len() < total + cl {
                                    break;
                                }
                                total += cl;
                            }
                            pending.drain(..total);
                            let reply: &[u8] = if mode == RecorderMode::Upgrade {
                                // Pingora 0.9.1 races when a 101 arrives before it has finished
                                // the (empty) request body upstream: it then force-closes the
                                // tunnel (seen in 4 of 10 runs with an instant 101; never with a
                                // 101 a few ms later, as any real handshake takes). The gateway is
                                // tested here, not that race: see the closing note of issue 6.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                upgraded = true;
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            };
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            if upgraded {
                                if !pending.is_empty() {
                                    let rest = std::mem::take(&mut pending);
                                    let _ = s.write_all(&rest).await;
                                }
                                break;
                            }
                        }
                    }
                });
            }
        });
        Recorder { port, conns, task }
    }

    /// Everything received, all connections concatenated.
    pub fn received(&self) -> String {
        let v = self.conns.lock().unwrap();
        v.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    }

    /// Number of request lines received (counts `HTTP/1.1\r\n` request lines).
    pub fn request_count(&self) -> usize {
        self.received().matches(" HTTP/1.1\r\n").count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fault proxy does to connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relay faithfully.
    Pass,
    /// Relay, but hold each connection this many ms before its first byte goes through.
    Delay(u64),
    /// Accept and read, never forward or answer.
    Stall,
    /// Hold this many ms, then reset the connection without forwarding anything.
    StallThenCut(u64),
    /// Accept and close at once.
    Reset,
    /// Not listening at all: connections are refused.
    Refuse,
}

/// A TCP relay between the gateway and a dependency that can add latency, stall, cut or refuse.
/// Changing the fault also cuts every connection open at that moment.
pub struct FaultProxy {
    pub port: u16,
    fault: tokio::sync::watch::Sender<(Fault, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Relays 127.0.0.1:`port` (free) → 127.0.0.1:`target`.
    pub async fn start(target: u16) -> FaultProxy {
        let port = free_port();
        let (tx, rx) = tokio::sync::watch::channel((Fault::Pass, 0u64));
        let task = tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let (fault, _) = *rx.borrow_and_update();
                if fault == Fault::Refuse {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() { return; }
                            if rx.borrow().0 == Fault::Refuse { break; }
                        }
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let rx = rx.clone();
                            tokio::spawn(relay(client, target, rx));
                        }
                    }
                }
            }
        });
        // Wait until it listens.
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        FaultProxy {
            port,
            fault: tx,
            task,
        }
    }

    /// Switches the fault (and cuts open connections).
    pub fn set(&self, fault: Fault) {
        self.fault.send_modify(|(f, generation)| {
            *f = fault;
            *generation += 1;
        });
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    target: u16,
    mut rx: tokio::sync::watch::Receiver<(Fault, u64)>,
) {
    let (fault, generation) = *rx.borrow_and_update();
    let cut = async move {
        loop {
            if rx.changed().await.is_err() || rx.borrow().1 != generation {
                return;
            }
        }
    };
    let work = async move {
        match fault {
            Fault::Reset | Fault::Refuse => {}
            Fault::Stall => {
                let mut sink = [0u8; 4096];
                use tokio::io::AsyncReadExt;
                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            Fault::StallThenCut(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Pass | Fault::Delay(_) => {
                if let Fault::Delay(ms) = fault {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if let Ok(mut upstream) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cut => {}
        _ = work => {}
    }
}

/// The `q`-quantile of `samples` (sorted in place).
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[idx]
}

/// Resident set size of a process in KiB, from /proc (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Sends one GET per URL, all at once, each with `bearer`; returns the statuses in URL order
/// (the test fails if any request gets no answer at all).
pub async fn concurrent_gets(urls: Vec<String>, bearer: &str) -> Vec<u16> {
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let bearer = bearer.to_string();
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(bearer)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task").expect("answered"));
    }
    out
}

/// The `X-Cache` header of a response ("" when absent).
pub fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}
