//! REDbot (PyPI `redbot`, the HTTP linter) on the gateway's own answers: a cache hit of an
//! aggregate, a 401, a proxied answer. No note of level BAD about a header the gateway sets.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{client, EchoServer, Gateway};
use serde_json::Value;

/// The BAD notes REDbot gives `url`, as `subject: summary`.
async fn bad_notes(url: &str) -> Vec<String> {
    let redbot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/redbot");
    let out = tokio::process::Command::new(redbot)
        .args(["-o", "har", url])
        .output()
        .await
        .expect("redbot runs (make test-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let har: Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = har["log"]["entries"][0]["_red_messages"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(!notes.is_empty(), "REDbot said nothing: {har}");
    notes
        .iter()
        .filter(|n| n["level"] == "BAD")
        .map(|n| format!("{}: {}", n["subject"], n["summary"]))
        .collect()
}

#[tokio::test]
async fn redbot_finds_nothing_bad_in_the_gateways_own_headers() {
    let echo = EchoServer::start().await;
    let section = format!(
        r#"rate_limit: {{ per_minute: 100000 }}
auth: {{ public_paths: ["/healthz", "/readyz", "/doc/", "/open/"] }}
services:
  docs: {{ url: "http://127.0.0.1:{port}" }}
aggregates:
  - name: doc
    path: "/doc/{{id}}"
    cache: {{ ttl_seconds: 60, key: "doc:{{id}}" }}
    legs:
      doc: {{ service: docs, path: "/cc/max-age=60/{{id}}", required: true, expect: object }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{port}"] }}
routes:
  - {{ name: open, match: {{ path: {{ prefix: "/open/" }} }}, upstream: echo }}
  - {{ name: closed, match: {{ path: {{ prefix: "/closed/" }} }}, upstream: echo }}
"#,
        port = echo.port
    );
    let gw = Gateway::start(&section, &[]).await;
    // Warm the cache, so that REDbot's request is a hit.
    let r = client().get(gw.url("/doc/7")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A hit carries the declared lifetime with its age, never the lifetime already reduced
    // by the age as well (freshness counted twice).
    let mut aged = None;
    for _ in 0..40 {
        let r = client().get(gw.url("/doc/7")).send().await.unwrap();
        if r.headers().get("age").is_some_and(|a| a != "0") {
            aged = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let r = aged.expect("a hit at least a second old within 10 s");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    for path in ["/doc/7", "/closed/x", "/open/x"] {
        let bad = bad_notes(&gw.url(path)).await;
        assert!(bad.is_empty(), "{path}: {bad:#?}");
    }
}
