//! gRPC through the gateway with grpcio (PyPI) on both ends: every kind of call over h2c and
//! TLS, statuses and trailers passed through, the gateway's own refusals as gRPC statuses, the
//! client's deadline applied, and a slow reader held by flow control, not buffered.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{eventually, metric_sum, py_json, token, Gateway, PyServer, TestCa};
use serde_json::{json, Value};

const GREETER: &str = "grpc_greeter.py";

async fn call(target: &str, method: &str, opts: Value) -> Value {
    py_json(
        GREETER,
        &["call", target, method, &opts.to_string()],
        Duration::from_secs(120),
    )
    .await
}

fn grpc(metrics: &str, status: &str) -> f64 {
    metric_sum(
        metrics,
        &format!("grpc_requests_total{{grpc_status=\"{status}\",route=\"grpc\"}}"),
    )
}

fn section(h2c_backend: u16, tls_backend: u16, ca: &str, tls: &str) -> String {
    format!(
        r#"h2c: true
services: {{}}
aggregates: []
limits: {{ max_connections_per_ip: 0 }}
rate_limit:
  per_minute: 100000000
  window_seconds: 3600
  policies:
    - {{ name: two, key: ip, limit: 2, window_seconds: 3600, routes: [/helloworld.Limited/] }}
upstreams:
  greeter: {{ backends: ["127.0.0.1:{h2c_backend}"], http2: {{ prior_knowledge: true }}, health_check: {{ interval_ms: 500 }} }}
  secure: {{ backends: ["127.0.0.1:{tls_backend}"], tls: {{ sni: localhost, ca: "{ca}" }}, http2: {{ max_streams: 100 }}, health_check: {{ kind: tcp }} }}
  gone: {{ backends: ["127.0.0.1:1"], http2: {{ prior_knowledge: true }}, health_check: {{ kind: tcp, interval_ms: 60000 }} }}
routes:
  - {{ name: grpc, match: {{ path: {{ prefix: "/helloworld.Greeter/" }} }}, upstream: greeter, timeouts: {{ read_ms: 10000 }} }}
  - {{ name: secure, match: {{ path: {{ prefix: "/secure/helloworld.Greeter/" }} }}, upstream: secure, rewrite: {{ strip_prefix: /secure }} }}
  - {{ name: limited, match: {{ path: {{ prefix: "/helloworld.Limited/" }} }}, upstream: greeter }}
  - {{ name: gone, match: {{ path: {{ prefix: "/helloworld.Gone/" }} }}, upstream: gone }}
{tls}"#
    )
}

struct Setup {
    gw: Gateway,
    tls_port: u16,
    ca: TestCa,
    _backends: (PyServer, PyServer),
}

async fn setup() -> Setup {
    let ca = TestCa::new();
    let leaf = ca.leaf("grpc", &["localhost"], 30);
    let plain = PyServer::start("greeter (h2c)", GREETER, &["serve", "{port}"]);
    let cert = leaf.cert.display().to_string();
    let key = leaf.key.display().to_string();
    let secure = PyServer::start("greeter (TLS)", GREETER, &["serve", "{port}", &cert, &key]);
    let tls_port = common::free_port();
    let tls = format!(
        "tls:\n  listen: \"127.0.0.1:{tls_port}\"\n  certificates: [{{ cert: \"{cert}\", key: \"{key}\" }}]\n"
    );
    let ca_path = ca.cert.display().to_string();
    let gw = Gateway::start(&section(plain.port, secure.port, &ca_path, &tls), &[]).await;
    Setup {
        gw,
        tls_port,
        ca,
        _backends: (plain, secure),
    }
}

#[tokio::test]
async fn every_kind_of_call_passes_over_h2c_and_tls_with_its_status() {
    let s = setup().await;
    let alice = token("alice");
    let ca = s.ca.cert.display().to_string();
    let h2c = format!("127.0.0.1:{}", s.gw.port);
    let tls = format!("127.0.0.1:{}", s.tls_port);
    for (target, extra) in [(&h2c, json!({})), (&tls, json!({"ca": ca}))] {
        let with = |mut o: Value| {
            o["token"] = json!(alice);
            if let Some(ca) = extra.get("ca") {
                o["ca"] = ca.clone();
            }
            o
        };
        let got = call(target, "SayHello", with(json!({"name": "grpc"}))).await;
        assert_eq!(got["code"], "OK", "{target}: {got}");
        assert_eq!(got["replies"], json!(["Hello grpc"]), "{got}");
        let got = call(
            target,
            "SayHelloStreamReply",
            with(json!({"name": "10000", "count_only": true})),
        )
        .await;
        assert_eq!(
            (got["code"].clone(), got["count"].clone()),
            (json!("OK"), json!(10000)),
            "{got}"
        );
        let names = json!(["a", "bb", "ccc", "dddd"]);
        let got = call(
            target,
            "SayHelloClientStream",
            with(json!({"names": names})),
        )
        .await;
        assert_eq!(got["replies"], json!(["4:10"]), "{got}");
        let got = call(target, "SayHelloBidiStream", with(json!({"names": names}))).await;
        assert_eq!(got["replies"], names, "{got}");
        // A server error passes through with its message (in the backend's trailers).
        let got = call(target, "SayHello", with(json!({"name": "fail"}))).await;
        assert_eq!(got["code"], "NOT_FOUND", "{got}");
        assert_eq!(got["details"], "no greeter named fail", "{got}");
    }
    // Both listeners' calls went to route `grpc`: 8 OK and 2 NOT_FOUND.
    let m = s.gw.metrics().await;
    assert_eq!(grpc(&m, "0"), 8.0, "{m}");
    assert_eq!(grpc(&m, "5"), 2.0, "{m}");
}

#[tokio::test]
async fn a_tls_backend_speaking_h2_serves_calls_too() {
    let s = setup().await;
    let h2c = format!("127.0.0.1:{}", s.gw.port);
    // The route rewrites /secure/helloworld.Greeter/ to the service's own path.
    let got = py_json(
        GREETER,
        &[
            "call",
            &h2c,
            "SayHelloStreamReply",
            &json!({"token": token("alice"), "name": "100", "count_only": true, "prefix": "/secure/helloworld.Greeter/"}).to_string(),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        (got["code"].clone(), got["count"].clone()),
        (json!("OK"), json!(100)),
        "{got}"
    );
}

#[tokio::test]
async fn the_gateways_own_refusals_are_grpc_statuses() {
    let s = setup().await;
    let h2c = format!("127.0.0.1:{}", s.gw.port);
    let alice = token("alice");
    // No token, a bad one.
    let got = call(&h2c, "SayHello", json!({})).await;
    assert_eq!(got["code"], "UNAUTHENTICATED", "{got}");
    assert_eq!(got["details"], "missing bearer token", "{got}");
    let got = call(&h2c, "SayHello", json!({"token": "x.y.z"})).await;
    assert_eq!(got["code"], "UNAUTHENTICATED", "{got}");
    // Rate limited: the third call of the minute.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let got = call(
            &h2c,
            "SayHello",
            json!({"token": alice, "prefix": "/helloworld.Limited/"}),
        )
        .await;
        codes.push(got["code"].as_str().unwrap().to_string());
    }
    assert_eq!(codes[2], "RESOURCE_EXHAUSTED", "{codes:?}");
    // No route; no backend reachable.
    let got = call(
        &h2c,
        "SayHello",
        json!({"token": alice, "prefix": "/nothing.Here/"}),
    )
    .await;
    assert_eq!(got["code"], "UNIMPLEMENTED", "{got}");
    let got = call(
        &h2c,
        "SayHello",
        json!({"token": alice, "prefix": "/helloworld.Gone/"}),
    )
    .await;
    assert_eq!(got["code"], "UNAVAILABLE", "{got}");
    let m = s.gw.metrics().await;
    assert_eq!(grpc(&m, "16"), 2.0, "{m}");
}

#[tokio::test]
async fn the_clients_deadline_is_the_gateways() {
    let s = setup().await;
    // curl sends grpc-timeout but enforces no deadline of its own: the 4 is the gateway's,
    // after ~200 ms, not the backend's 3 s.
    let body = [0u8, 0, 0, 0, 6, 0x0a, 4, b's', b'l', b'o', b'w'];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("req.bin");
    std::fs::write(&file, body).unwrap();
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", "-X", "POST"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "grpc-timeout: 200m"])
        .args(["-H", &format!("authorization: Bearer {}", token("alice"))])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "http://127.0.0.1:{}/helloworld.Greeter/SayHello",
            s.gw.port
        ))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("grpc-status: 4\r\n"), "{text}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // And grpcio's own deadline sees DEADLINE_EXCEEDED.
    let h2c = format!("127.0.0.1:{}", s.gw.port);
    let got = call(
        &h2c,
        "SayHello",
        json!({"token": token("alice"), "name": "slow", "timeout": 0.2}),
    )
    .await;
    assert_eq!(got["code"], "DEADLINE_EXCEEDED", "{got}");
    let m = s.gw.metrics().await;
    assert!(grpc(&m, "4") >= 1.0, "the gateway's own 504 counted: {m}");
}

#[tokio::test]
async fn a_slow_reader_is_held_by_flow_control_not_buffered() {
    let s = setup().await;
    let pid = s.gw.proc.child.id();
    let h2c = format!("127.0.0.1:{}", s.gw.port);
    // Warm up (connections, pools), then the baseline.
    let _ = call(&h2c, "SayHello", json!({"token": token("alice")})).await;
    let before = common::rss_kib(pid);
    // 32 MiB offered in 512 replies of 64 KiB; the client reads two, pausing 6 s after each.
    let opts = json!({"token": token("alice"), "name": "big:512", "count_only": true,
                      "read_delay": 6, "max_replies": 2});
    let slow = tokio::spawn(async move { call(&h2c, "SayHelloStreamReply", opts).await });
    let mut peak = before;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until && !slow.is_finished() {
        peak = peak.max(common::rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = slow.await.unwrap();
    assert_eq!(got["count"], 2, "{got}");
    let grew = peak.saturating_sub(before);
    println!("gateway RSS {before} KiB before, peak {peak} KiB while 32 MiB waited: +{grew} KiB");
    assert!(
        grew < 8 * 1024,
        "the gateway buffered the stream: +{grew} KiB"
    );
    eventually(
        "the gateway still serves",
        Duration::from_secs(10),
        async || {
            call(
                &format!("127.0.0.1:{}", s.gw.port),
                "SayHello",
                json!({"token": token("alice")}),
            )
            .await["code"]
                == "OK"
        },
    )
    .await;
}
