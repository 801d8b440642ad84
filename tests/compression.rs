//! Response compression against the real gateway: every coding decoded byte-exact by its real
//! command-line decoder (`gzip`, `brotli`, `zstd`), q-values, small and pre-encoded answers,
//! `HEAD`, streamed answers, and cached aggregates compressed once per coding.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use axum::body::Body;
use axum::extract::Path;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::{client, Gateway};

/// A JSON document of exactly `n` bytes that compresses like real data (repeated keys,
/// varying numbers).
fn doc(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0u64;
    while s.len() + 60 < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"sku\":\"p-{}\",\"qty\":{}}},",
            i * 7919 % 10007,
            i % 13
        ));
        i += 1;
    }
    s.push_str("{}],\"pad\":\"");
    while s.len() + 2 < n {
        s.push('x');
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    run("gzip", &["-c"], data)
}

fn run(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} is needed (make test-deps installs it): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The real decoder for a `Content-Encoding`.
fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => run("gzip", &["-dc"], data),
        "br" => run("brotli", &["-dc"], data),
        "zstd" => run("zstd", &["-dcq"], data),
        other => panic!("unexpected coding {other}"),
    }
}

async fn service() -> u16 {
    let app = Router::new()
        .route(
            "/doc/{n}",
            get(|Path(n): Path<usize>| async move {
                ([(header::CONTENT_TYPE, "application/json")], doc(n))
            }),
        )
        .route(
            "/stream/{n}",
            get(|Path(n): Path<usize>| async move {
                let body = doc(n);
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    body.chunks(4000).map(|c| Ok(c.to_vec())).collect();
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(futures::stream::iter(chunks)),
                )
            }),
        )
        .route(
            "/pre",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    gzip(&doc(20_000)),
                )
            }),
        )
        .route(
            "/png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], doc(20_000)) }),
        )
        .route(
            "/etag",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::ETAG, "\"v1\""),
                    ],
                    doc(5_000),
                )
                    .into_response()
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

async fn start() -> Gateway {
    let port = service().await;
    let section = format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/p/", "/api/doc/"] }}
rate_limit: {{ per_minute: 1000000 }}
compression: {{ algorithms: [zstd, br, gzip], min_bytes: 1024, level: default, content_types: ["application/json", "text/"] }}
services:
  t: {{ url: "http://127.0.0.1:{port}" }}
aggregates:
  - name: doc
    path: "/api/doc/{{n}}"
    cache: {{ ttl_seconds: 30, key: "doc:{{n}}" }}
    legs:
      main: {{ service: t, path: "/doc/{{n}}", required: true, expect: object }}
upstreams:
  t: {{ backends: ["127.0.0.1:{port}"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}
routes:
  - {{ prefix: "/p/", upstream: t, strip_prefix: true }}
"#
    );
    Gateway::start(&section, &[]).await
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Every value of `name`, joined as one list.
    fn list(&self, name: &str) -> String {
        let all: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(", ")
    }
}

/// One request with this `Accept-Encoding` (none when empty); the body exactly as sent.
async fn get_with(gw: &Gateway, method: reqwest::Method, path: &str, ae: &str) -> Got {
    let mut r = client().request(method, gw.url(path));
    if !ae.is_empty() {
        r = r.header("Accept-Encoding", ae);
    }
    let resp = r.send().await.unwrap();
    Got {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

async fn fetch(gw: &Gateway, path: &str, ae: &str) -> Got {
    get_with(gw, reqwest::Method::GET, path, ae).await
}

#[tokio::test]
async fn proxied_answers_are_compressed_by_what_the_client_accepts() {
    let gw = start().await;
    let want = doc(20_000);
    for (ae, coding) in [
        ("zstd", "zstd"),
        ("br", "br"),
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5, zstd;q=0.1", "gzip"),
        ("br;q=0.9, gzip;q=0.8", "br"),
        ("*", "zstd"),
        ("*;q=0.5, zstd;q=0", "br"),
    ] {
        let got = fetch(&gw, "/p/doc/20000", ae).await;
        assert_eq!(got.status, 200, "{ae}");
        assert_eq!(got.header("content-encoding"), Some(coding), "{ae}");
        assert!(
            got.header("content-length").is_none(),
            "{ae}: streamed, no length"
        );
        assert!(got.header("vary").unwrap().contains("Accept-Encoding"));
        assert!(
            got.body.len() < want.len() / 3,
            "{ae}: {} bytes",
            got.body.len()
        );
        assert_eq!(decode(coding, &got.body), want, "{ae}: byte-exact");
    }
    // A streamed (chunked) answer of unknown length, across many reads.
    let got = fetch(&gw, "/p/stream/300000", "br").await;
    assert_eq!(got.header("content-encoding"), Some("br"));
    assert_eq!(decode("br", &got.body), doc(300_000));
    // A strong validator becomes weak: the bytes differ from the service's.
    let got = fetch(&gw, "/p/etag", "gzip").await;
    assert_eq!(got.header("etag"), Some("W/\"v1\""));
    assert_eq!(decode("gzip", &got.body), doc(5_000));
}

#[tokio::test]
async fn answers_that_must_not_be_compressed_pass_untouched() {
    let gw = start().await;
    let plain = |got: &Got, len: usize, what: &str| {
        assert_eq!(got.status, 200, "{what}");
        assert!(got.header("content-encoding").is_none(), "{what}");
        assert_eq!(
            got.header("content-length"),
            Some(len.to_string().as_str()),
            "{what}"
        );
    };
    // No Accept-Encoding, nothing acceptable, identity only, or everything refused: as is.
    for ae in [
        "",
        "deflate",
        "identity",
        "gzip;q=0, br;q=0, zstd;q=0",
        "*;q=0",
    ] {
        let got = fetch(&gw, "/p/doc/20000", ae).await;
        plain(&got, 20_000, ae);
        assert_eq!(got.body, doc(20_000));
    }
    // Under min_bytes: as is, unless the client refuses identity.
    let got = fetch(&gw, "/p/doc/500", "gzip").await;
    plain(&got, 500, "small");
    assert!(got.header("vary").unwrap().contains("Accept-Encoding"));
    let got = fetch(&gw, "/p/doc/500", "gzip, identity;q=0").await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), doc(500));
    // Already encoded by the service: the service's bytes, even if the client prefers another.
    let got = fetch(&gw, "/p/pre", "br, gzip;q=0.5").await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), doc(20_000));
    // A type outside content_types.
    let got = fetch(&gw, "/p/png", "gzip").await;
    plain(&got, 20_000, "png");
    assert!(got.header("vary").is_none());
    // HEAD: the length of the identity answer, no coding.
    let got = get_with(&gw, reqwest::Method::HEAD, "/p/doc/20000", "gzip").await;
    plain(&got, 20_000, "HEAD");
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn cached_aggregates_are_compressed_once_per_coding() {
    let gw = start().await;
    let first = fetch(&gw, "/api/doc/20000", "gzip").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    // The whole body is known: its length is given, and it is right.
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    let document: serde_json::Value = serde_json::from_slice(&decode("gzip", &first.body)).unwrap();
    let want: serde_json::Value = serde_json::from_slice(&doc(20_000)).unwrap();
    assert_eq!(document["main"], want);
    for coding in ["gzip", "gzip", "br", "br", "zstd", "zstd"] {
        let hit = fetch(&gw, "/api/doc/20000", coding).await;
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(hit.header("content-encoding"), Some(coding));
        assert!(hit.list("vary").contains("Accept-Encoding"));
        assert!(
            hit.list("vary").contains("Authorization"),
            "the caller's answer"
        );
        let v: serde_json::Value = serde_json::from_slice(&decode(coding, &hit.body)).unwrap();
        assert_eq!(v, document, "{coding}");
    }
    let plain = fetch(&gw, "/api/doc/20000", "").await;
    assert!(plain.header("content-encoding").is_none());
    let v: serde_json::Value = serde_json::from_slice(&plain.body).unwrap();
    assert_eq!(v, document);

    let m = gw.metrics().await;
    let value = |series: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // gzip: compressed once, for the miss; both gzip hits reuse that copy (the document is the
    // same). br and zstd: compressed for their first hit, reused by their second.
    for coding in ["gzip", "br", "zstd"] {
        let memo = value(&format!(
            "compressed_responses_total{{algorithm=\"{coding}\",how=\"memo\"}}"
        ));
        let whole = value(&format!(
            "compressed_responses_total{{algorithm=\"{coding}\",how=\"whole\"}}"
        ));
        assert_eq!(whole, 1.0, "{coding} compressed once:\n{m}");
        let reuses = if coding == "gzip" { 2.0 } else { 1.0 };
        assert_eq!(memo, reuses, "{coding} reused by every later hit:\n{m}");
    }
    let bytes_in = value("compression_bytes_total{algorithm=\"gzip\",stage=\"in\"}");
    let bytes_out = value("compression_bytes_total{algorithm=\"gzip\",stage=\"out\"}");
    assert!(
        bytes_in > 3.0 * bytes_out && bytes_out > 0.0,
        "{bytes_in} → {bytes_out}"
    );
}
