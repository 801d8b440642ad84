//! Slow and hostile clients against the real gateway: Debian's `slowhttptest` (slow bodies,
//! slow headers, slow reads) while normal traffic is measured, a backend with a fixed pool of
//! 16 workers that must never see a slow body, size caps, the per-address connection cap,
//! `100 Continue`, chunked bodies and the log an attack leaves behind.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    client, eventually, raw_request, rss_kib, EchoServer, Gateway, PoolServer, PoolStats, Proc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `/up/` (buffered, default caps) and `/stream/` (streamed, 32 MiB cap) go to the 16-worker
/// pool; `/big/` to a second pool that serves large answers; `/echo/` to an echo server.
fn section(pool: u16, big: u16, echo: u16, limits: &str) -> String {
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/up/", "/stream/", "/big/", "/echo/"] }}
rate_limit: {{ per_minute: 1000000 }}
limits: {{ {limits} }}
upstreams:
  pool:
    backends: ["127.0.0.1:{pool}"]
    health_check: {{ kind: tcp, interval_ms: 1000 }}
  big:
    backends: ["127.0.0.1:{big}"]
    health_check: {{ kind: tcp, interval_ms: 1000 }}
  echo:
    backends: ["127.0.0.1:{echo}"]
    health_check: {{ kind: tcp, interval_ms: 1000 }}
routes:
  - {{ prefix: "/up/", upstream: pool, strip_prefix: true }}
  - {{ prefix: "/stream/", upstream: pool, strip_prefix: true, request_body_buffer_bytes: 0, max_request_body_bytes: 33554432 }}
  - {{ prefix: "/big/", upstream: big, strip_prefix: true }}
  - {{ prefix: "/echo/", upstream: echo, strip_prefix: true }}
"#
    )
}

struct Setup {
    gw: Gateway,
    pool: PoolServer,
    _big: PoolServer,
    echo: EchoServer,
}

async fn setup(limits: &str) -> Setup {
    let pool = PoolServer::start(16, 0);
    let big = PoolServer::start(64, 1 << 20);
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(pool.port, big.port, echo.port, limits), &[]).await;
    Setup {
        gw,
        pool,
        _big: big,
        echo,
    }
}

/// A counter's value in a scrape (0 when absent).
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs `slowhttptest` with `args` for `seconds` (bounded: killed if it overstays).
fn slowhttptest(args: &[&str], url: &str, seconds: u64) -> Proc {
    // Installed by `make test-deps`.
    Proc::spawn(
        "slowhttptest",
        Command::new("slowhttptest")
            .args(args)
            .args(["-l", &seconds.to_string(), "-u", url]),
    )
}

/// A client on another loopback address than the attack's (127.0.0.1): another user, not
/// under the attacker's per-address connection cap.
fn other_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Normal GETs from another address through the gateway to the 16-worker pool: 50 of them, one
/// every 100 ms. Every status and every latency.
async fn normal_traffic(gw: &Gateway) -> (Vec<u16>, Vec<Duration>) {
    let c = other_client();
    let url = gw.url("/up/ping");
    let (mut statuses, mut took) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        let status = match c.get(&url).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        took.push(t.elapsed());
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (statuses, took)
}

/// Connections to `port` on this machine that are established now (the server's ends, accepted
/// or waiting to be), from /proc/net/tcp.
fn established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// Waits until the attack holds at least `n` connections to the gateway.
async fn attack_holds(gw: &Gateway, n: usize) {
    eventually(
        &format!("the attack holds {n} connections"),
        Duration::from_secs(20),
        async || established(gw.port) >= n,
    )
    .await;
}

/// Normal requests were served while the attack held its connections: every one answered, none
/// queued behind the attack, and none waited for a pool worker.
fn assert_served_at_once(statuses: &[u16], took: &[Duration], pool: &PoolServer, attack: &str) {
    assert!(
        statuses.iter().all(|&s| s == 200),
        "{attack}: normal requests failed: {statuses:?}"
    );
    // What an attack connection holds (a pool worker, a place at the gateway), it holds for
    // its whole life: one piece every 3 s (`-i 3`/`-p 3`) until the gateway cuts it at 10 s or
    // the attack ends at 15 s. A request queued behind one waits seconds; a request served at
    // once takes milliseconds, and 2 s is room for any loaded machine. (How fast is `make
    // bench`'s to say.)
    let slowest = took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(2),
        "{attack}: a normal request took {slowest:?}: {took:?}"
    );
    // The pool's 16 workers were never all busy at once, so no normal request waited for one.
    let max_busy = pool.get(|p: &PoolStats| &p.max_busy);
    assert!(
        max_busy < 16,
        "{attack}: {max_busy} of the pool's 16 workers were busy at once"
    );
}

#[tokio::test]
async fn slow_bodies_never_reach_a_backend_with_sixteen_workers() {
    let s = setup("").await;
    let url = s.gw.url("/up/form");
    let mut attack = slowhttptest(
        &[
            "-B", "-c", "200", "-r", "100", "-i", "3", "-s", "4096", "-x", "10", "-p", "3",
        ],
        &url,
        15,
    );
    // Measure while the attack's connections trickle (most of its 200 are open).
    attack_holds(&s.gw, 150).await;
    let (statuses, took) = normal_traffic(&s.gw).await;
    assert_served_at_once(&statuses, &took, &s.pool, "slow bodies (-B)");
    assert!(attack.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(
        s.pool.get(|p: &PoolStats| &p.slow_bodies),
        0,
        "a slow body reached the backend"
    );
    assert_eq!(
        s.pool.get(|p: &PoolStats| &p.posts),
        0,
        "an unfinished attack POST reached the backend"
    );
    let scrape = s.gw.metrics().await;
    assert!(
        metric(&scrape, r#"client_timeouts_total{phase="body"}"#) > 0.0,
        "stalled bodies are cut and counted"
    );
}

#[tokio::test]
async fn slow_headers_and_slow_readers_do_not_slow_normal_traffic() {
    let s = setup("").await;
    let pid = s.gw.proc.child.id();
    let rss_before = rss_kib(pid);
    let mut headers = slowhttptest(
        &[
            "-H", "-c", "200", "-r", "100", "-i", "3", "-x", "10", "-p", "3",
        ],
        &s.gw.url("/up/x"),
        15,
    );
    let mut reads = slowhttptest(
        &[
            "-X", "-c", "200", "-r", "100", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k",
            "3", "-p", "3",
        ],
        &s.gw.url("/big/big"),
        15,
    );
    // Measure while the attacks hold their connections (most of the 256 their address may).
    attack_holds(&s.gw, 200).await;
    let (statuses, took) = normal_traffic(&s.gw).await;
    assert_served_at_once(
        &statuses,
        &took,
        &s.pool,
        "slow headers (-H) and slow reads (-X)",
    );
    // Bounded per connection: a stalled reader of a large answer holds Pingora's proxy pipe
    // (4 body pieces of up to 64 KiB, plus read buffers), about 370 KiB measured; the cap
    // admits 256 of the attack's 400 connections from its one address.
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < 256 * 512,
        "RSS grew by {grown} KiB under 400 slow connections (256 admitted)"
    );
    assert!(headers.wait_exit(Duration::from_secs(30)).is_some());
    assert!(reads.wait_exit(Duration::from_secs(30)).is_some());
    let scrape = s.gw.metrics().await;
    assert!(
        metric(&scrape, r#"client_timeouts_total{phase="header"}"#) > 0.0,
        "slow headers are cut at the header deadline and counted"
    );
}

#[tokio::test]
async fn a_large_upload_streams_and_an_oversized_one_is_refused_before_the_backend() {
    let s = setup("").await;
    let pid = s.gw.proc.child.id();
    let body = vec![b'a'; 20 << 20];
    let rss_before = rss_kib(pid);
    let resp = client()
        .post(s.gw.url("/stream/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"bytes":20971520}"#);
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < 10 * 1024,
        "a streamed 20 MiB body grew RSS by {grown} KiB"
    );

    // The buffered route keeps the default 10 MiB cap: refused from the declared length.
    let file = s.gw.dir.path().join("big.bin");
    std::fs::write(&file, &body).unwrap();
    let posts_before = s.pool.get(|p: &PoolStats| &p.posts);
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(s.gw.url("/up/upload"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.ends_with("\n413"), "{out}");
    assert!(out.contains(r#""error":"payload_too_large""#), "{out}");
    assert_eq!(s.pool.get(|p: &PoolStats| &p.posts), posts_before);
    let scrape = s.gw.metrics().await;
    assert_eq!(
        metric(&scrape, r#"request_bodies_total{mode="too_large"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_chunked_body_over_the_maximum_is_refused_when_it_crosses() {
    // Crossed while the body is buffered, so before any backend is asked. (Crossed later, while
    // streaming, the backend may already have answered: the client then sees a cut stream.)
    let s = setup("max_request_body_bytes: 20000").await;
    let mut raw =
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..30 {
        raw.extend_from_slice(b"1000\r\n");
        raw.extend_from_slice(&[b'c'; 4096]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(s.gw.port, &raw, Duration::from_millis(1500)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_backend_never_sees_it() {
    let s = setup("body_read_timeout_ms: 500").await;
    let started = Instant::now();
    let resp = raw_request(
        s.gw.port,
        b"POST /up/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
        Duration::from_millis(1500),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains(r#""error":"request_timeout""#), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.pool.get(|p: &PoolStats| &p.posts), 0);
    let scrape = s.gw.metrics().await;
    assert_eq!(
        metric(&scrape, r#"client_timeouts_total{phase="body"}"#),
        1.0
    );
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_gateway_and_the_body_is_not_cut_at_the_header_deadline()
{
    let s = setup("header_read_timeout_ms: 300, body_read_timeout_ms: 5000").await;
    let mut conn = TcpStream::connect(("127.0.0.1", s.gw.port)).await.unwrap();
    conn.write_all(
        b"POST /up/x HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim}"
    );
    // The body takes longer than the header deadline: the body has a deadline of its own.
    for piece in [b"fivec", b"hars.", b"five.", b"more."] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        conn.write_all(piece).await.unwrap();
    }
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with(r#"{"bytes":20}"#), "{resp}");
}

/// Sends `body` chunked in one write (`chunk` bytes a chunk) to the echo route; the echo.
async fn chunked_echo(port: u16, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for c in body.chunks(chunk) {
        raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(&raw).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    dechunk(&resp[split..])
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 4 + len..];
    }
}

#[tokio::test]
async fn chunked_bodies_of_every_size_arrive_whole() {
    let s = setup("").await;
    for (size, chunk) in [
        (1000, 100),
        (40 << 10, 40 << 10),
        (60 << 10, 30 << 10),
        (70 << 10, 70 << 10),
        (100 << 10, 7 << 10),
        (1 << 20, 64 << 10),
    ] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let echoed = chunked_echo(s.gw.port, &body, chunk).await;
        assert!(
            echoed == body,
            "{size} bytes in chunks of {chunk}: got {} bytes back",
            echoed.len()
        );
    }
    assert_eq!(s.echo.requests().len(), 6);
}

#[tokio::test]
async fn a_buffered_body_is_resent_to_the_next_backend_after_a_connect_failure() {
    let echo = EchoServer::start().await;
    let dead = common::free_port();
    let gw = Gateway::start(
        &format!(
            r#"auth: {{ public_paths: ["/healthz", "/readyz", "/echo/"] }}
rate_limit: {{ per_minute: 1000000 }}
upstreams:
  echo:
    backends: ["127.0.0.1:{dead}", "127.0.0.1:{port}"]
    health_check: {{ kind: tcp, interval_ms: 60000 }}
    connect_retries: 1
routes:
  - {{ name: resent, prefix: "/echo/", upstream: echo, strip_prefix: true, retries: {{ attempts: 1, on: [connect] }} }}
"#,
            port = echo.port
        ),
        &[],
    )
    .await;
    let body: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    let c = client();
    for _ in 0..6 {
        let r = c
            .post(gw.url("/echo/x"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == body);
    }
    // Round robin over [dead, echo]: three of the six first tries went to the dead backend
    // (then passive health, three failures, would skip it); each of those was resent, whole,
    // to the echo server, which answered every request with the body it got.
    let m = gw.metrics().await;
    assert_eq!(
        common::metric_sum(
            &m,
            "route_retries_total{cause=\"connect\",route=\"resent\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        echo.requests().len(),
        6,
        "every body reached the live backend once"
    );
}

#[tokio::test]
async fn one_address_gets_at_most_its_connections_and_another_is_served() {
    let s = setup("max_connections_per_ip: 256").await;
    let mut conns = Vec::new();
    for _ in 0..300 {
        conns.push(TcpStream::connect(("127.0.0.1", s.gw.port)).await.unwrap());
    }
    let mut served = 0;
    for c in conns.iter_mut() {
        if healthz_on(c).await {
            served += 1;
        }
    }
    assert_eq!(served, 256, "exactly the cap is served");
    // Another address (127.0.0.2 is loopback too) is not affected.
    let r = other_client()
        .get(s.gw.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let scrape = s.gw.metrics().await;
    assert_eq!(
        metric(&scrape, r#"connections_refused_total{reason="per_ip"}"#),
        44.0
    );
    // Places are given back when connections close.
    drop(conns);
    eventually("places given back", Duration::from_secs(10), async || {
        let mut again = Vec::new();
        for _ in 0..256 {
            again.push(TcpStream::connect(("127.0.0.1", s.gw.port)).await.unwrap());
        }
        let mut ok = true;
        for c in again.iter_mut() {
            ok &= healthz_on(c).await;
        }
        ok
    })
    .await;
}

/// A keep-alive `GET /healthz` on `c`; whether it was answered 200.
async fn healthz_on(c: &mut TcpStream) -> bool {
    if c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await,
        Ok(Ok(n)) if n > 12 && buf.starts_with(b"HTTP/1.1 200")
    )
}

#[tokio::test]
async fn an_attack_of_aborted_slow_requests_leaves_a_handful_of_log_lines() {
    let mut s = setup("max_connections_per_ip: 0").await;
    // 500 slow bodies and 100 slow headers, all abandoned halfway.
    for round in 0..6 {
        let mut conns = Vec::new();
        for _ in 0..100 {
            let mut c = TcpStream::connect(("127.0.0.1", s.gw.port)).await.unwrap();
            let part: &[u8] = if round < 5 {
                b"POST /up/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\nname=val"
            } else {
                b"GET /up/x HTTP/1.1\r\nHost: x\r\nX-Slow: a"
            };
            c.write_all(part).await.unwrap();
            conns.push(c);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(conns);
    }
    let gw = &s.gw;
    eventually("every abort counted", Duration::from_secs(20), async || {
        let scrape = gw.metrics().await;
        metric(&scrape, r#"client_aborts_total{phase="body"}"#) >= 500.0
            && metric(&scrape, r#"client_aborts_total{phase="header"}"#) >= 100.0
    })
    .await;
    // Each abandoned connection once, in the phase it was abandoned in.
    let scrape = gw.metrics().await;
    assert_eq!(
        (
            metric(&scrape, r#"client_aborts_total{phase="body"}"#),
            metric(&scrape, r#"client_aborts_total{phase="header"}"#)
        ),
        (500.0, 100.0)
    );
    let (_, err) = s.gw.stop_and_read();
    let loud: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#) || l.contains(r#""level":"WARN""#))
        .collect();
    assert!(
        loud.len() <= 3,
        "{} warning/error lines:\n{}",
        loud.len(),
        loud.join("\n")
    );
    assert!(
        loud.iter().any(|l| l.contains("slow or vanished clients")),
        "the summary line: {loud:?}"
    );
}

#[tokio::test]
async fn an_oversized_body_sent_without_waiting_still_gets_its_413() {
    // No `Expect`: the client writes its whole 20 MiB body at once and reads the answer after.
    let s = setup("").await;
    let mut conn = TcpStream::connect(("127.0.0.1", s.gw.port)).await.unwrap();
    let (mut rd, mut wr) = conn.split();
    let head = format!(
        "POST /up/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        20 << 20
    );
    let writer = async {
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b'z'; 64 << 10];
        for _ in 0..320 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let mut resp = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut resp)).await;
        resp
    };
    let ((), resp) = tokio::join!(writer, reader);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");
    assert_eq!(s.pool.get(|p: &PoolStats| &p.posts), 0);
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_after_the_response_write_timeout() {
    // An answer far larger than the loopback socket buffers, so that a write really waits.
    let pool = PoolServer::start(2, 0);
    let big = PoolServer::start(2, 64 << 20);
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            pool.port,
            big.port,
            echo.port,
            "response_write_timeout_ms: 1000",
        ),
        &[],
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket
        .connect(([127, 0, 0, 1], gw.port).into())
        .await
        .unwrap();
    c.write_all(b"GET /big/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Not a byte read until the gateway has given up on this client.
    eventually("the slow reader cut", Duration::from_secs(30), async || {
        metric(
            &gw.metrics().await,
            r#"client_timeouts_total{phase="response"}"#,
        ) == 1.0
    })
    .await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was closed by the gateway");
    assert!(
        got > 0 && got < 64 << 20,
        "{got} bytes of a 64 MiB answer before the cut"
    );
    assert_eq!(
        metric(
            &gw.metrics().await,
            r#"client_timeouts_total{phase="response"}"#,
        ),
        1.0
    );
}
