//! What reaches the services is what the gateway checked: one canonical path decided before
//! routing and auth, framing as strict as nginx's, answers no cache can hand to another user.
//! Raw sockets (a client library would fix the input) and a raw recording upstream.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{client, metric_sum, raw_request, token, Gateway, Recorder, RecorderMode};

/// `/open/` is public, `/raw/` needs a token; both go to the recorder.
fn section(port: u16) -> String {
    format!(
        r#"services: {{}}
aggregates: []
rate_limit: {{ per_minute: 100000 }}
upstreams:
  rec:
    backends: ["127.0.0.1:{port}"]
    health_check: {{ kind: tcp, interval_ms: 60000 }}
    passive: {{ failures: 3, open_ms: 60000 }}
routes:
  - {{ name: open, match: {{ path: {{ prefix: "/open/" }} }}, upstream: rec, auth: public }}
  - {{ name: raw, match: {{ path: {{ prefix: "/raw/" }} }}, upstream: rec }}
"#
    )
}

const QUIET: Duration = Duration::from_millis(1500);

fn status(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

fn rejected(m: &str, reason: &str) -> f64 {
    metric_sum(
        m,
        &format!(r#"http_requests_rejected_total{{reason="{reason}"}}"#),
    )
}

#[tokio::test]
async fn dot_segments_and_their_disguises_are_resolved_before_routing_and_auth() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let mut gw = Gateway::builder(&section(rec.port))
        .env("RUST_LOG", "warn,access=info")
        .start()
        .await;
    // Each climbs out of the public route into the private one: after normalisation it is a
    // request for /raw/secret, which needs a token.
    for target in [
        "/open/../raw/secret",
        "/open/%2e%2e/raw/secret",
        "/open/%2E%2e/raw/secret",
        "/open/./../raw/secret",
        "//open/..//raw/secret",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_request(gw.port, raw.as_bytes(), QUIET).await;
        assert_eq!(status(&resp), "401", "{target}: {resp}");
    }
    assert_eq!(rec.request_count(), 0, "{}", rec.received());
    // With a token, the backend gets the canonical path, never the one sent.
    let t = token("1");
    let raw = format!(
        "GET /open/%2e%2e//raw/a%2fb/%7e?q=%2e%2e HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_request(gw.port, raw.as_bytes(), QUIET).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = rec.received();
    assert!(
        seen.contains("GET /raw/a%2Fb/~?q=%2e%2e HTTP/1.1\r\n"),
        "{seen}"
    );
    // What cannot be made canonical is refused, each counted under its reason.
    let mut counted = std::collections::HashMap::new();
    for (target, reason) in [
        ("/open/../../etc/passwd", "path_climbs"),
        ("/open/a\\..\\b", "backslash"),
        ("/open/%zz", "path_escape"),
        ("/open/a%00b", "path_escape"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_request(gw.port, raw.as_bytes(), QUIET).await;
        assert_eq!(status(&resp), "400", "{target:?}: {resp}");
        assert!(resp.contains(r#""error":"bad_request""#), "{resp}");
        let n = counted.entry(reason).or_insert(0.0);
        *n += 1.0;
        assert_eq!(rejected(&gw.metrics().await, reason), *n, "{reason}");
    }
    assert_eq!(rec.request_count(), 1, "{}", rec.received());
    // A raw control byte or space in the target is percent-encoded by Pingora's parser before
    // any hook runs (a known limit: it cannot be refused): the backend gets the escape, never
    // the raw byte.
    for (target, sent) in [
        ("/open/a\x01b", "/open/a%01b"),
        ("/open/c d", "/open/c%20d"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_request(gw.port, raw.as_bytes(), QUIET).await;
        assert_eq!(status(&resp), "200", "{target:?}: {resp}");
        assert!(
            rec.received().contains(&format!("GET {sent} HTTP/1.1\r\n")),
            "{}",
            rec.received()
        );
    }
    let (out, _) = gw.stop_and_read();
    assert!(
        out.contains(
            r#""path":"/raw/a%2Fb/~?q=","original_path":"/open/%2e%2e//raw/a%2fb/%7e?q=""#
        ),
        "the access log keeps the target as sent: {out}"
    );
}

#[tokio::test]
async fn framing_is_as_strict_as_nginx_and_a_client_cannot_trip_a_breaker() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port), &[]).await;
    let cases: [(&[u8], &str); 6] = [
        (b"GET /open/a HTTP/1.1\r\nConnection: close\r\n\r\n", "host_missing"),
        (b"POST /open/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nabcde", "content_length"),
        (b"get /open/a HTTP/1.1\r\nHost: x\r\n\r\n", "method_case"),
        (b"POST /open/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n", "chunked"),
        (b"POST /open/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n", "chunked"),
        (b"POST /open/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeX0\r\n\r\n", "chunked"),
    ];
    for (raw, reason) in cases {
        let resp = raw_request(gw.port, raw, QUIET).await;
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(status(&resp), "400", "{shown}: {resp}");
        assert!(resp.contains(r#""error":"bad_request""#), "{shown}: {resp}");
        assert!(rejected(&gw.metrics().await, reason) >= 1.0, "{reason}");
    }
    assert_eq!(rejected(&gw.metrics().await, "content_length"), 1.0);
    // Two Host headers: refused by Pingora's parser before the gateway sees a request (its
    // own empty 400, a known limit), never forwarded.
    let resp = raw_request(
        gw.port,
        b"GET /open/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        QUIET,
    )
    .await;
    assert_eq!(status(&resp), "400", "{resp}");
    // Three of the requests that used to reach the backend (and have it drop the connection)
    // open no breaker now: nothing reached it, and the next normal request is served.
    for _ in 0..3 {
        let raw = b"POST /open/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nabcde";
        let resp = raw_request(gw.port, raw, QUIET).await;
        assert_eq!(status(&resp), "400");
        assert!(resp.contains("Connection: close"), "{resp}");
    }
    assert_eq!(rec.request_count(), 0, "{}", rec.received());
    let r = client().get(gw.url("/open/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A header named with `_` is dropped (a framework mapping `_` to `-` would see a second
    // Transfer-Encoding), and counted.
    let raw = b"GET /open/u HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nX_Y: 1\r\nConnection: close\r\n\r\n";
    let resp = raw_request(gw.port, raw, QUIET).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = rec.received().to_ascii_lowercase();
    assert!(
        !seen.contains("transfer_encoding") && !seen.contains("x_y"),
        "{seen}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"http_request_headers_dropped_total{reason="underscore"}"#
        ),
        2.0
    );
    // HTTP/1.0 needs no Host; an absolute-form target is accepted, its authority the Host.
    let resp = raw_request(gw.port, b"GET /open/ten HTTP/1.0\r\n\r\n", QUIET).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let raw = b"GET http://api.example.com/open/abs?x=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n";
    let resp = raw_request(gw.port, raw, QUIET).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = rec.received().to_ascii_lowercase();
    assert!(seen.contains("get /open/abs?x=1 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("host: api.example.com\r\n"), "{seen}");
}

#[tokio::test]
async fn a_group_with_no_backend_keeps_the_connection_and_challenges_name_the_realm() {
    let dead = common::free_port();
    let gw = Gateway::start(
        &format!(
            "services: {{}}\naggregates: []\nauth: {{ realm: \"example\" }}\nupstreams:\n  dead: {{ backends: [\"127.0.0.1:{dead}\"], connect_retries: 0, health_check: {{ kind: tcp, interval_ms: 100, consecutive_failure: 1 }} }}\nroutes:\n  - {{ name: dead, match: {{ path: {{ prefix: \"/dead/\" }} }}, upstream: dead, auth: public }}\n  - {{ name: closed, match: {{ path: {{ prefix: \"/closed/\" }} }}, upstream: dead }}\n"
        ),
        &[],
    )
    .await;
    common::eventually("the backend out", Duration::from_secs(10), async || {
        gw.metrics().await.contains(r#"group="dead"} 0"#)
    })
    .await;
    // Two requests on one connection: the 503 keeps it, so the second is answered on it.
    let raw = b"GET /dead/a HTTP/1.1\r\nHost: x\r\n\r\nGET /closed/b HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw_request(gw.port, raw, QUIET).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(
        resp.contains("HTTP/1.1 401"),
        "the second request was answered: {resp}"
    );
    assert!(
        resp.contains("WWW-Authenticate: Bearer realm=\"example\"\r\n"),
        "{resp}"
    );
    let r = client()
        .get(gw.url("/closed/c"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer realm="example", error="invalid_token""#
    );
    let m = client()
        .get(format!("http://127.0.0.1:{}/metrics", gw.metrics_port))
        .send()
        .await
        .unwrap();
    assert_eq!(m.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn answers_to_a_caller_vary_by_authorization() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let gw = Gateway::start(&section(rec.port), &[]).await;
    let r = client()
        .get(gw.url("/raw/x"))
        .bearer_auth(token("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
    assert!(vary.iter().any(|v| *v == "Authorization"), "{vary:?}");
    let r = client().get(gw.url("/open/x")).send().await.unwrap();
    assert!(
        r.headers().get("vary").is_none(),
        "a public answer is everyone's"
    );
}

/// HTTP/2 requests downgraded to HTTP/1.1 for the backend: a Content-Length that lies, a
/// Transfer-Encoding (forbidden in h2), CR/LF in the path or a value. Each is refused or
/// forwarded as one request; the request hidden in it never reaches the backend.
#[tokio::test]
async fn h2_downgrades_never_smuggle_a_request() {
    let rec = Recorder::start(RecorderMode::Ok).await;
    let ca = common::TestCa::new();
    let leaf = ca.leaf("leaf", &["api.test"], 30);
    let tls_port = common::free_port();
    let gw = Gateway::start(
        &format!(
            "{}tls:\n  listen: \"127.0.0.1:{tls_port}\"\n  certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n",
            section(rec.port),
            leaf.cert.display(),
            leaf.key.display()
        ),
        &[],
    )
    .await;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/smuggle.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg("api.test")
        .arg(tls_port.to_string())
        .arg(&ca.cert)
        .output()
        .await
        .expect("the h2 script runs (make test-deps installs hyper-h2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = rec.received();
    assert_eq!(
        got["control"], "200",
        "a well-formed h2 request is served: {got}"
    );
    assert!(seen.contains("GET /open/ok HTTP/1.1\r\n"), "{seen}");
    for case in ["h2.cl", "h2.te", "h2.crlf_path", "h2.crlf_value"] {
        let status = got[case].as_str().unwrap_or("");
        assert!(
            matches!(status, "reset" | "400"),
            "{case}: {status} ({got})"
        );
    }
    // Each case reached the backend as at most one request of its own.
    for path in ["/open/cl", "/open/te", "/open/p", "/open/v"] {
        assert!(
            seen.matches(&format!(" {path} HTTP/1.1\r\n")).count() <= 1,
            "{path}: {seen}"
        );
    }
    assert!(rec.request_count() <= 5, "{seen}");
    eprintln!("h2 downgrade cases answered: {got}");
    assert!(
        !seen.contains("/raw/smuggled"),
        "a hidden request reached the backend: {seen}"
    );
    let _ = gw;
}
