//! HTTP/1.1 pipelining against the real gateway over raw sockets: requests written back to back
//! on one connection are answered one after another, in order, on every kind of route; a
//! malformed or capped pipeline ends with `Connection: close`; the header deadline still
//! applies to a request pipelined behind another.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{rss_kib, token, Gateway, Recorder, RecorderMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `/pub/` is public, `/priv/` needs a token; both go to the recorder (which answers `ok`).
fn section(port: u16, extra_limits: &str) -> String {
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/pub/"] }}
rate_limit: {{ per_minute: 4, window_seconds: 86400 }}
limits: {{ header_read_timeout_ms: 1000{extra_limits} }}
upstreams:
  rec: {{ backends: ["127.0.0.1:{port}"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}
routes:
  - {{ prefix: "/pub/", upstream: rec }}
  - {{ prefix: "/priv/", upstream: rec }}
"#
    )
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads responses (framed by Content-Length) until `n` were read or the connection ended;
/// `true` when it ended (EOF) within `limit`.
async fn read_responses(s: &mut TcpStream, n: usize, limit: Duration) -> (Vec<Resp>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut chunk = [0u8; 65536];
    let mut closed = false;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            let status = head[9..12].parse().unwrap();
            out.push(Resp { status, head, body });
        }
        if out.len() >= n || closed {
            return (out, closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => return (out, false),
        }
    }
}

fn get(path: &str, id: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\n{auth}\r\n")
}

async fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_every_kind_of_route() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    // Two, then ten, proxied GETs in one write each.
    for n in [2, 10] {
        let mut s = connect(&gw).await;
        let all: String = (0..n)
            .map(|i| get(&format!("/pub/{i}"), &format!("p{n}-{i}"), None))
            .collect();
        s.write_all(all.as_bytes()).await.unwrap();
        let (resps, _) = read_responses(&mut s, n, Duration::from_secs(10)).await;
        let ids: Vec<_> = resps
            .iter()
            .map(|r| r.header("x-request-id").unwrap().to_string())
            .collect();
        let want: Vec<_> = (0..n).map(|i| format!("p{n}-{i}")).collect();
        assert_eq!(ids, want, "in order");
        assert!(resps.iter().all(|r| r.status == 200 && r.body == b"ok"));
    }
    // Local answers, errors and proxied requests mixed in one write (the limit is 4 a day;
    // public paths are not counted).
    let t = token("1");
    let mix = [
        (get("/healthz", "m0", None), 200),
        (get("/nowhere", "m1", Some(&t)), 404),
        (get("/priv/a", "m2", None), 401),
        (get("/priv/b", "m3", Some(&t)), 200),
        (get("/pub/c", "m4", None), 200),
        (get("/priv/d", "m5", Some(&t)), 200),
        (get("/priv/e", "m6", Some(&t)), 429),
    ];
    let mut s = connect(&gw).await;
    let all: String = mix.iter().map(|(r, _)| r.as_str()).collect();
    s.write_all(all.as_bytes()).await.unwrap();
    let (resps, _) = read_responses(&mut s, mix.len(), Duration::from_secs(10)).await;
    let got: Vec<_> = resps
        .iter()
        .map(|r| (r.header("x-request-id").unwrap().to_string(), r.status))
        .collect();
    let want: Vec<_> = mix
        .iter()
        .enumerate()
        .map(|(i, (_, st))| (format!("m{i}"), *st))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_post_with_a_body_and_a_get_in_one_write_are_both_answered() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let body = "x=1&payload=".to_string() + &"b".repeat(3000);
    let post = format!(
        "POST /pub/post HTTP/1.1\r\nHost: t\r\nX-Request-Id: post\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = connect(&gw).await;
    s.write_all((post + &get("/pub/after", "after", None)).as_bytes())
        .await
        .unwrap();
    let (resps, _) = read_responses(&mut s, 2, Duration::from_secs(10)).await;
    assert_eq!(resps.len(), 2, "{resps:?}");
    assert_eq!(resps[0].header("x-request-id"), Some("post"));
    assert_eq!(resps[1].header("x-request-id"), Some("after"));
    let seen = rec.received();
    assert!(
        seen.contains(&format!("\r\n\r\n{body}")),
        "the body arrived byte for byte"
    );
    assert!(seen.contains("GET /pub/after "), "{seen}");
}

#[tokio::test]
async fn a_pipelined_request_split_anywhere_is_answered() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let first = get("/pub/first", "first", None);
    let second = get("/pub/second", "second", None);
    let both = first.clone() + &second;
    // Every split point from inside the first request's blank line to the end of the second.
    for at in (first.len() - 3)..both.len() {
        let mut s = connect(&gw).await;
        s.write_all(&both.as_bytes()[..at]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(&both.as_bytes()[at..]).await.unwrap();
        let (resps, _) = read_responses(&mut s, 2, Duration::from_secs(5)).await;
        let ids: Vec<_> = resps
            .iter()
            .filter_map(|r| r.header("x-request-id"))
            .collect();
        assert_eq!(ids, ["first", "second"], "split at byte {at}");
    }
}

#[tokio::test]
async fn a_malformed_request_in_a_pipeline_ends_it_with_connection_close() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let mut s = connect(&gw).await;
    let bytes =
        get("/pub/ok", "ok", None) + "NOT HTTP AT ALL\r\n\r\n" + &get("/pub/never", "never", None);
    s.write_all(bytes.as_bytes()).await.unwrap();
    let (resps, closed) = read_responses(&mut s, 3, Duration::from_secs(5)).await;
    assert_eq!(resps.len(), 2, "{resps:?}");
    assert_eq!(
        (resps[0].status, resps[0].header("x-request-id")),
        (200, Some("ok"))
    );
    assert_eq!(resps[1].status, 400);
    assert_eq!(resps[1].header("connection"), Some("close"));
    assert!(closed, "the connection ends after the 400");
    assert!(
        !rec.received().contains("/pub/never"),
        "nothing after the bad request is served"
    );
}

#[tokio::test]
async fn a_pipeline_past_the_cap_ends_with_connection_close_and_memory_stays_bounded() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    // The default cap (16 in a row): the 17th answer closes the connection.
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let mut s = connect(&gw).await;
    let all: String = (0..1000)
        .map(|i| get(&format!("/pub/{i}"), &format!("c{i}"), None))
        .collect();
    s.write_all(all.as_bytes()).await.unwrap();
    let (resps, closed) = read_responses(&mut s, 1000, Duration::from_secs(10)).await;
    assert!(
        closed,
        "closed after the cap: {} answers, last {:?}",
        resps.len(),
        resps.last().map(|r| &r.head)
    );
    assert_eq!(
        resps.len(),
        17,
        "the first request and 16 pipelined behind it"
    );
    assert!(resps[..16]
        .iter()
        .all(|r| r.header("connection") == Some("keep-alive")));
    assert_eq!(resps[16].header("connection"), Some("close"));

    // A cap of 1,000 and a reader that takes its time: every answer comes, in order, and the
    // gateway holds no more than a bounded amount meanwhile.
    let gw = Gateway::start(&section(rec.port, ", pipeline_depth: 1000"), &[]).await;
    let pid = gw.proc.child.id();
    let rss_before = rss_kib(pid);
    let mut s = connect(&gw).await;
    let all: String = (0..1000)
        .map(|i| get(&format!("/pub/{i}"), &format!("s{i}"), None))
        .collect();
    let (mut rd, mut wr) = s.split();
    let ((), (got, peak)) = tokio::join!(
        async { wr.write_all(all.as_bytes()).await.unwrap() },
        async {
            // Slow: 4 KiB every 5 ms, so responses back up in the socket and the gateway.
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut peak = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while got
                .windows(17)
                .filter(|w| *w == b"HTTP/1.1 200 OK\r\n")
                .count()
                < 1000
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&chunk[..k]),
                }
                peak = peak.max(rss_kib(pid));
            }
            (got, peak)
        }
    );
    let answered = got
        .windows(17)
        .filter(|w| *w == b"HTTP/1.1 200 OK\r\n")
        .count();
    assert_eq!(answered, 1000, "every pipelined request answered");
    let text = String::from_utf8_lossy(&got);
    let last = text.rfind("X-Request-Id: s999").expect("the last answer");
    assert!(text.find("X-Request-Id: s998").unwrap() < last, "in order");
    assert!(
        peak < rss_before + 16 * 1024,
        "RSS {rss_before} → peak {peak} KiB"
    );
}

#[tokio::test]
async fn the_header_deadline_applies_to_a_request_pipelined_behind_another() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let mut s = connect(&gw).await;
    // A whole request and the first bytes of the next in one write, then a trickle: the
    // trickling header must be cut at the 1 s deadline, as on a connection of its own.
    let started = Instant::now();
    s.write_all((get("/pub/one", "one", None) + "GET /pub/two HTTP/1.1\r\nX-Slow: ").as_bytes())
        .await
        .unwrap();
    let (resps, _) = read_responses(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(resps[0].header("x-request-id"), Some("one"));
    let mut closed_after = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(b"a").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut b = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling pipelined header was cut");
    assert!(
        closed_after < Duration::from_secs(4),
        "{closed_after:?} (deadline 1 s)"
    );
    assert!(!rec.received().contains("/pub/two"));
}

#[tokio::test]
async fn a_pipelined_header_that_stops_halfway_is_cut_at_the_deadline() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port, ""), &[]).await;
    let mut s = connect(&gw).await;
    // The rest of the second header never comes. Only the header deadline can end this (the
    // per-read timeout is a minute): the bytes that started it came in the first write.
    let started = Instant::now();
    s.write_all((get("/pub/one", "one", None) + "GET /pub/two HTTP/1.1\r\nHo").as_bytes())
        .await
        .unwrap();
    let (resps, closed) = read_responses(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(resps.len(), 1, "{resps:?}");
    assert!(closed, "the half header was cut");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn aggregates_answer_in_order_inside_a_pipeline() {
    let mocks = common::Mocks::start(&["user", "order", "product", "recommendation"]);
    let gw = Gateway::start(
        &format!(
            "rate_limit: {{ per_minute: 1000 }}\n{}",
            common::profile_aggregate(0, 10_000)
        ),
        &common::service_env(&mocks),
    )
    .await;
    // The aggregate watches the connection for a client leaving while it builds; requests
    // pipelined behind it must not look like one, nor be lost.
    let t = token("1");
    let mut s = connect(&gw).await;
    let all = get("/api/profile/1", "a0", Some(&t))
        + &get("/healthz", "a1", None)
        + &get("/api/profile/me", "a2", Some(&t));
    s.write_all(all.as_bytes()).await.unwrap();
    let (resps, _) = read_responses(&mut s, 3, Duration::from_secs(10)).await;
    let ids: Vec<_> = resps
        .iter()
        .filter_map(|r| r.header("x-request-id"))
        .collect();
    assert_eq!(ids, ["a0", "a1", "a2"]);
    for i in [0, 2] {
        assert_eq!(resps[i].status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&resps[i].body).unwrap();
        assert_eq!(doc["user"]["id"], "1", "{doc}");
    }
}
