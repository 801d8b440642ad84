//! Lifecycle and streaming: SIGTERM and zero-downtime upgrade under load, 1 GiB bodies in both
//! directions with bounded memory, upstreams dying mid-body and clients walking away.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use common::{eventually, raw_request, rss_kib, EchoServer, Gateway};
use futures::StreamExt;

fn section(port: u16) -> String {
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/s/"] }}
rate_limit: {{ per_minute: 1000000 }}
upstreams:
  s:
    backends: ["127.0.0.1:{port}"]
    health_check: {{ kind: tcp, interval_ms: 1000 }}
    read_timeout_ms: 5000
routes:
  - {{ prefix: "/s/", upstream: s }}
"#
    )
}

/// A client that opens a new connection for every request, so no request can be lost to an
/// idle keep-alive connection closing under it: what is measured is the gateway.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Fires GETs at `rate` per second for `for_how_long`, each with its own request id; returns
/// id → status (0 when the request failed).
async fn load(url: String, rate: u64, for_how_long: Duration) -> HashMap<String, u16> {
    let results: Arc<Mutex<HashMap<String, u16>>> = Arc::default();
    let client = fresh_client();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < for_how_long {
        tick.tick().await;
        n += 1;
        let id = format!("load-{n}");
        let (client, url, results) = (client.clone(), url.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let status = match client.get(&url).header("X-Request-Id", &id).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    match r.bytes().await {
                        Ok(_) => s,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            results.lock().unwrap().insert(id, status);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let out = results.lock().unwrap().clone();
    out
}

#[tokio::test]
async fn sigterm_under_load_finishes_every_accepted_request() {
    let echo = EchoServer::start().await;
    let mut gw = Gateway::start(&section(echo.port), &[]).await;
    let url = gw.url("/s/slow?ms=200");
    let load = tokio::spawn(load(url, 100, Duration::from_millis(2500)));
    eventually("load is flowing", Duration::from_secs(10), async || {
        echo.requests().len() >= 20
    })
    .await;
    let signalled = Instant::now();
    gw.proc.terminate();
    let results = load.await.unwrap();
    let exited = gw.proc.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the gateway exits cleanly: {exited:?}"
    );
    // Pingora serves the grace period (1 s here) in full before it shuts down.
    assert!(took >= Duration::from_secs(1), "exited after {took:?}");
    // Every request the upstream saw was answered to its client, completely and with 200.
    let seen: Vec<String> = echo
        .requests()
        .iter()
        .flat_map(|r| r.header("x-request-id"))
        .collect();
    assert!(seen.len() >= 20);
    for id in &seen {
        assert_eq!(
            results.get(id),
            Some(&200),
            "{id} reached the upstream but its client got {:?}",
            results.get(id)
        );
    }
    assert!(
        results.values().all(|s| *s == 200 || *s == 0),
        "no error status: {results:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// The documented upgrade (start the new binary with `-u`, then SIGQUIT the old one) while
/// `load` runs against `old`; checks that no request failed, the old process exits and the new
/// one serves on. Returns the new process.
async fn upgrade_under_load(
    old: &mut Gateway,
    echo: &EchoServer,
    load: tokio::task::JoinHandle<HashMap<String, u16>>,
    at_least: usize,
) -> common::Proc {
    eventually("load is flowing", Duration::from_secs(10), async || {
        echo.requests().len() >= 50
    })
    .await;
    let mut new = old.spawn_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    eventually(
        "the new process waits on the upgrade socket",
        Duration::from_secs(10),
        async || sock.exists(),
    )
    .await;
    old.proc.signal("QUIT");
    let results = load.await.unwrap();
    let failed: Vec<_> = results.iter().filter(|(_, s)| **s != 200).collect();
    assert!(results.len() >= at_least, "{} requests", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        results.len()
    );
    assert!(
        old.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "the old process exits"
    );
    assert!(
        new.wait_exit(Duration::from_millis(100)).is_none(),
        "the new process serves on"
    );
    new
}

#[tokio::test]
async fn zero_downtime_upgrade_under_load_loses_nothing() {
    let echo = EchoServer::start().await;
    let mut old = Gateway::start(&section(echo.port), &[]).await;
    let load = tokio::spawn(load(old.url("/s/x"), 200, Duration::from_millis(3000)));
    let _new = upgrade_under_load(&mut old, &echo, load, 400).await;
    assert_eq!(
        fresh_client()
            .get(old.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

const GIB: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

/// Streaming upstream: `/s/download` sends 1 GiB but holds after the first MiB until the client
/// says it has it; `/s/upload` counts a body and tells when its first bytes arrived.
struct Streamer {
    port: u16,
    client_has_first: Arc<tokio::sync::Notify>,
    upstream_has_first: Arc<tokio::sync::Notify>,
    cancelled: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct CancelGuard(Arc<AtomicU64>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Streamer {
    async fn start() -> Streamer {
        let client_has_first = Arc::new(tokio::sync::Notify::new());
        let upstream_has_first = Arc::new(tokio::sync::Notify::new());
        let cancelled = Arc::new(AtomicU64::new(0));
        let (c1, u1, k1) = (
            client_has_first.clone(),
            upstream_has_first.clone(),
            cancelled.clone(),
        );
        let app = axum::Router::new().fallback(move |req: Request| {
            let (c1, u1, k1) = (c1.clone(), u1.clone(), k1.clone());
            async move { stream_route(req, c1, u1, k1).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Streamer {
            port,
            client_has_first,
            upstream_has_first,
            cancelled,
            task,
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stream_route(
    req: Request,
    client_has_first: Arc<tokio::sync::Notify>,
    upstream_has_first: Arc<tokio::sync::Notify>,
    cancelled: Arc<AtomicU64>,
) -> Response {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    match req.uri().path() {
        "/s/download" => {
            let total = GIB / CHUNK as u64;
            let s = futures::stream::unfold(0u64, move |i| {
                let (chunk, gate) = (chunk.clone(), client_has_first.clone());
                async move {
                    if i == total {
                        return None;
                    }
                    if i == 1 {
                        gate.notified().await;
                    }
                    Some((Ok::<_, std::io::Error>(chunk), i + 1))
                }
            });
            Response::new(Body::from_stream(s))
        }
        "/s/upload" => {
            let mut body = req.into_body().into_data_stream();
            let mut n = 0u64;
            while let Some(Ok(b)) = body.next().await {
                if n == 0 {
                    upstream_has_first.notify_one();
                }
                n += b.len() as u64;
            }
            Response::new(Body::from(n.to_string()))
        }
        "/s/die-chunked" => {
            // Some body, a pause (so the head and those bytes are surely forwarded), then death.
            let s = futures::stream::iter(0..3).then(move |i| async move {
                if i < 2 {
                    Ok(Bytes::from_static(b"partial"))
                } else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(std::io::Error::other("upstream died"))
                }
            });
            Response::new(Body::from_stream(s))
        }
        "/s/die-sized" => {
            let s = futures::stream::iter(0..2).then(move |i| async move {
                if i < 1 {
                    Ok(Bytes::from(vec![b'y'; 1000]))
                } else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(std::io::Error::other("upstream died"))
                }
            });
            let mut r = Response::new(Body::from_stream(s));
            r.headers_mut()
                .insert("content-length", "1000000".parse().unwrap());
            r
        }
        "/s/forever" => {
            let guard = CancelGuard(cancelled, false);
            let s = futures::stream::unfold(guard, |g| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"tick\n")), g))
            });
            Response::new(Body::from_stream(s))
        }
        _ => Response::new(Body::from("ok")),
    }
}

#[tokio::test]
async fn gigabyte_bodies_stream_both_ways_in_bounded_memory() {
    let up = Streamer::start().await;
    // Over the default 10 MiB body maximum: this gateway takes uploads of any size.
    let conf = format!(
        "{}limits: {{ max_request_body_bytes: 2147483648 }}\n",
        section(up.port)
    );
    let gw = Gateway::start(&conf, &[]).await;
    let pid = gw.proc.child.id();
    let base = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Download: the upstream holds after 1 MiB until the client has bytes, so a buffering
    // gateway would deadlock here instead of passing.
    let r = fresh_client()
        .get(gw.url("/s/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download chunk");
        if got == 0 {
            up.client_has_first.notify_one();
        }
        got += chunk.len() as u64;
    }
    assert_eq!(got, GIB);

    // Upload: the client holds after 1 MiB until the upstream has bytes.
    let gate = up.upstream_has_first.clone();
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let s = futures::stream::unfold(0u64, move |i| {
        let (chunk, gate) = (chunk.clone(), gate.clone());
        async move {
            if i == GIB / CHUNK as u64 {
                return None;
            }
            if i == 1 {
                gate.notified().await;
            }
            Some((Ok::<_, std::io::Error>(chunk), i + 1))
        }
    });
    let r = fresh_client()
        .post(gw.url("/s/upload"))
        .body(reqwest::Body::wrap_stream(s))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), GIB.to_string());
    sampler.abort();
    let growth = peak.load(Ordering::SeqCst).saturating_sub(base);
    assert!(
        growth < 64 * 1024,
        "RSS grew {growth} KiB while streaming 2 GiB"
    );
}

#[tokio::test]
async fn an_upstream_dying_mid_body_never_looks_complete() {
    let up = Streamer::start().await;
    let gw = Gateway::start(&section(up.port), &[]).await;
    let resp = raw_request(
        gw.port,
        b"GET /s/die-chunked HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("partial"));
    assert!(
        !resp.ends_with("0\r\n\r\n"),
        "a truncated chunked stream must not be terminated: {resp:?}"
    );

    let r = fresh_client()
        .get(gw.url("/s/die-sized"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "1000 of 1000000 bytes must be an error, not a body"
    );
}

#[tokio::test]
async fn a_client_walking_away_cancels_the_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Streamer::start().await;
    let gw = Gateway::start(&section(up.port), &[]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(b"GET /s/forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
    drop(s);
    eventually(
        "the upstream response was dropped",
        Duration::from_secs(10),
        async || up.cancelled.load(Ordering::SeqCst) == 1,
    )
    .await;
}

/// Keeps 4 clients sending one GET after another on pooled keep-alive connections for
/// `for_how_long`; returns id → status (0 when the request failed).
async fn pooled_load(url: String, for_how_long: Duration) -> HashMap<String, u16> {
    let results: Arc<Mutex<HashMap<String, u16>>> = Arc::default();
    let client = common::client();
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (client, url, results) = (client.clone(), url.clone(), results.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < for_how_long {
                    n += 1;
                    let id = format!("pooled-{w}-{n}");
                    let status = match client.get(&url).header("X-Request-Id", &id).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            if r.bytes().await.is_ok() {
                                s
                            } else {
                                0
                            }
                        }
                        Err(_) => 0,
                    };
                    results.lock().unwrap().insert(id, status);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let out = results.lock().unwrap().clone();
    out
}

#[tokio::test]
async fn pooled_keep_alive_clients_lose_nothing_across_an_upgrade() {
    let echo = EchoServer::start().await;
    let mut old = Gateway::start(&section(echo.port), &[]).await;
    let load = tokio::spawn(pooled_load(old.url("/s/x"), Duration::from_millis(3000)));
    let _new = upgrade_under_load(&mut old, &echo, load, 200).await;
}

#[tokio::test]
async fn pooled_keep_alive_clients_get_an_answer_for_everything_the_upstream_saw_across_sigterm() {
    let echo = EchoServer::start().await;
    let mut gw = Gateway::start(&section(echo.port), &[]).await;
    let load = tokio::spawn(pooled_load(gw.url("/s/x"), Duration::from_millis(3000)));
    eventually("load is flowing", Duration::from_secs(10), async || {
        echo.requests().len() >= 50
    })
    .await;
    gw.proc.terminate();
    let results = load.await.unwrap();
    assert!(
        gw.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "the process exits"
    );
    let seen: Vec<String> = echo
        .requests()
        .iter()
        .flat_map(|s| s.header("x-request-id"))
        .collect();
    let lost: Vec<_> = seen
        .iter()
        .filter(|id| results.get(*id) != Some(&200))
        .collect();
    assert!(seen.len() >= 50);
    assert!(
        lost.is_empty(),
        "the upstream saw these but their clients got no 200: {lost:?}"
    );
}

#[tokio::test]
async fn idle_connections_close_after_the_keep_alive_limit_and_when_shutdown_begins() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = EchoServer::start().await;
    let request = b"GET /s/x HTTP/1.1\r\nHost: t\r\n\r\n";
    // Reads one response (and anything after it) until EOF; the time EOF came.
    async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Instant {
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(limit, s.read(&mut buf))
                .await
                .expect("closed within the limit")
                .unwrap_or(0);
            if n == 0 {
                return Instant::now();
            }
        }
    }

    let section1 = section(echo.port) + "limits: { keepalive_timeout_ms: 1000 }\n";
    let gw = Gateway::start(&section1, &[]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let answered = Instant::now();
    // The default limit is 60 s: an idle close within 5 s is the configured 1 s one.
    let closed = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed - answered >= Duration::from_millis(500),
        "{:?}",
        closed - answered
    );

    // Shutdown: an idle connection closes when it begins, while a request still in flight on
    // another connection is answered after that.
    let mut gw = Gateway::start(&section(echo.port), &[]).await;
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    idle.write_all(request).await.unwrap();
    let mut buf = [0u8; 4096];
    assert!(idle.read(&mut buf).await.unwrap() > 0, "answered, now idle");
    let slow = tokio::spawn({
        // Inside the 1 s grace period the harness configures: requests in flight get that long.
        let url = gw.url("/s/slow?ms=700");
        async move {
            let r = common::client().get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            r.bytes().await.unwrap();
            (status, Instant::now())
        }
    });
    eventually(
        "the slow request is in flight",
        Duration::from_secs(10),
        async || echo.requests().iter().any(|s| s.uri.contains("slow")),
    )
    .await;
    gw.proc.terminate();
    let idle_closed = until_closed(&mut idle, Duration::from_secs(10)).await;
    let (status, slow_done) = slow.await.unwrap();
    assert_eq!(status, 200, "the request in flight finishes");
    assert!(idle_closed < slow_done, "the idle connection closed first");
    assert!(gw.proc.wait_exit(Duration::from_secs(15)).is_some());
}

#[tokio::test]
async fn the_pid_file_names_the_serving_process_in_the_foreground_across_an_upgrade() {
    // The reload and upgrade steps of docs/OPERATIONS.md read the pid file; Pingora writes it
    // only with -d.
    let mut old = Gateway::start("", &[]).await;
    let pid_file = old.dir.path().join("gw.pid");
    let read = || {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    assert_eq!(read(), old.proc.child.id(), "the running process");
    let mut new = old.spawn_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    eventually(
        "the new process waits",
        Duration::from_secs(10),
        async || sock.exists(),
    )
    .await;
    assert_eq!(
        read(),
        old.proc.child.id(),
        "still the old one until it hands over"
    );
    // What the docs do: kill -QUIT "$(cat pid_file)".
    let status = std::process::Command::new("kill")
        .args(["-QUIT", &read().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let new_pid = new.child.id();
    eventually(
        "the pid file names the new process",
        Duration::from_secs(10),
        async || read() == new_pid,
    )
    .await;
    assert!(
        old.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "the old process exits"
    );
    let r = common::client()
        .get(old.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new process serves");
    new.kill();
}

/// A gateway as [`Gateway::start`] runs it, but with `grace_period_seconds` of `grace` (the
/// harness's conf fixes 1 s, too short to watch shutdown while a request is held in flight).
async fn start_with_grace(gateway_section: &str, grace: u64) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let section: String = gateway_section
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let conf = format!(
        "version: 1\nthreads: 2\npid_file: {d}/gw.pid\nupgrade_sock: {d}/upgrade.sock\n\
         grace_period_seconds: {grace}\ngraceful_shutdown_timeout_seconds: 10\n\
         gateway:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics_port}\"\n{section}",
        d = dir.path().display(),
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = std::process::Command::new(common::gateway_bin());
    cmd.arg("-c")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", common::SECRET)
        .env("RUST_LOG", "warn");
    let gw = Gateway {
        proc: common::Proc::spawn("gateway", &mut cmd),
        port,
        metrics_port,
        dir,
        env: Vec::new(),
    };
    let url = gw.url("/readyz");
    eventually(
        "gateway /readyz",
        Duration::from_secs(20),
        async || matches!(common::client().get(&url).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    gw
}

/// An upstream that holds every request until the test releases one, so that a request is in
/// flight for exactly as long as the test needs.
struct Held {
    port: u16,
    arrived: Arc<AtomicU64>,
    release: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Held {
    async fn start() -> Held {
        let arrived = Arc::new(AtomicU64::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (a, r) = (arrived.clone(), release.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (a, r) = (a.clone(), r.clone());
            async move {
                if req.uri().path() == "/healthz" {
                    return Response::new(Body::from("ok"));
                }
                a.fetch_add(1, Ordering::SeqCst);
                r.acquire().await.unwrap().forget();
                Response::new(Body::from("released"))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Held {
            port,
            arrived,
            release,
            task,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn sigterm_refuses_new_connections_at_once_while_the_request_in_flight_is_answered() {
    let held = Held::start().await;
    let mut gw = start_with_grace(&section(held.port), 5).await;
    let port = gw.port;
    let in_flight = tokio::spawn({
        let url = gw.url("/s/held");
        async move {
            let r = common::client().get(&url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    eventually(
        "the request is held upstream",
        Duration::from_secs(10),
        async || held.arrived.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok(),
        "the listener accepts before SIGTERM"
    );
    gw.proc.terminate();
    // Well inside the 5 s grace period, with the request still held: the listener closed when
    // shutdown began, not when the process ended.
    eventually(
        "a new connection is refused",
        Duration::from_secs(4),
        async || {
            matches!(
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    )
    .await;
    assert!(
        gw.proc.child.try_wait().unwrap().is_none(),
        "the gateway still runs its grace period"
    );
    assert!(!in_flight.is_finished(), "the request is still in flight");
    held.release.add_permits(1);
    assert_eq!(
        in_flight.await.unwrap(),
        (200, "released".to_string()),
        "the request in flight at SIGTERM is answered"
    );
    let exited = gw.proc.wait_exit(Duration::from_secs(15));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the gateway exits cleanly: {exited:?}"
    );
    assert_eq!(
        held.arrived.load(Ordering::SeqCst),
        1,
        "nothing else came in"
    );
}
