//! WebSocket through the gateway, with the `websockets` library (PyPI) on both ends: sessions
//! echo in order over the plain and TLS listeners, the handshake passes the edge (token,
//! limit, origin), and the gateway's own endings (idle, size, shutdown) reach the client as
//! close frames and the metrics.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{eventually, metric_sum, py_json, token, Gateway, PyServer, TestCa};
use serde_json::{json, Value};

const CLIENT: &str = "ws_client.py";

fn section(backend: u16, websocket: &str, extra: &str) -> String {
    format!(
        r#"services: {{}}
aggregates: []
limits: {{ max_connections_per_ip: 0 }}
rate_limit:
  per_minute: 100000000
  policies:
    - {{ name: two, key: ip, limit: 2, window_seconds: 3600, routes: [/limited/] }}
cors:
  - {{ routes: ["/ws/"], allow_origins: ["https://app.example"] }}
upstreams:
  chat: {{ backends: ["127.0.0.1:{backend}"], health_check: {{ kind: tcp }}{websocket} }}
routes:
  - {{ name: chat, match: {{ path: {{ prefix: "/ws/" }} }}, upstream: chat }}
  - {{ name: limited, match: {{ path: {{ prefix: "/limited/" }} }}, upstream: chat }}
{extra}"#
    )
}

async fn run(mode: &str, url: &str, opts: serde_json::Value) -> serde_json::Value {
    py_json(
        CLIENT,
        &[mode, url, &opts.to_string()],
        Duration::from_secs(120),
    )
    .await
}

fn sessions(metrics: &str, route: &str, result: &str) -> f64 {
    metric_sum(
        metrics,
        &format!("websocket_sessions_total{{result=\"{result}\",route=\"{route}\"}}"),
    )
}

/// `n` sessions held open by the `wait` client until the gateway closes them.
struct Waiting {
    _child: tokio::process::Child,
    out: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Waiting {
    /// Opens `n` sessions to `url` and returns once all are open.
    async fn open(url: &str, n: usize) -> Waiting {
        use tokio::io::AsyncBufReadExt;
        let opts = json!({"token": token("alice"), "sessions": n});
        let mut child = tokio::process::Command::new(common::PYTHON)
            .args([&common::py_script(CLIENT), "wait", url, &opts.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).await.unwrap();
        assert!(line.contains(&format!("\"open\": {n}")), "{line}");
        Waiting { _child: child, out }
    }

    /// Asserts every session ended with the gateway's 1001 "server shutting down".
    async fn assert_closed_by_shutdown(&mut self) {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(20), self.out.read_line(&mut line)).await;
        assert!(read.is_ok(), "the sessions ended");
        let got: serde_json::Value = serde_json::from_str(&line).unwrap();
        for s in got["sessions"].as_array().unwrap() {
            assert_eq!(s["code"], 1001, "{got}");
            assert_eq!(s["reason"], "server shutting down", "{got}");
        }
    }
}

#[tokio::test]
async fn two_hundred_sessions_echo_in_order_over_plain_and_tls() {
    let ca = TestCa::new();
    let leaf = ca.leaf("gw", &["localhost"], 30);
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let tls_port = common::free_port();
    let tls = format!(
        "tls:\n  listen: \"127.0.0.1:{tls_port}\"\n  certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    let gw = Gateway::start(&section(backend.port, "", &tls), &[]).await;
    let alice = token("alice");
    let plain = format!("ws://127.0.0.1:{}/ws/echo", gw.port);
    let secure = format!("wss://localhost:{tls_port}/ws/echo");
    let ca_file = ca.cert.display().to_string();
    for (url, opts) in [
        (
            &plain,
            json!({"token": alice, "sessions": 200, "messages": 100}),
        ),
        (
            &secure,
            json!({"token": alice, "sessions": 200, "messages": 100, "ca": ca_file}),
        ),
    ] {
        let got = run("echo", url, opts).await;
        assert_eq!(got["ok"], 200, "{url}: {got}");
    }
    // One binary message of 1 MiB, whole.
    let got = run(
        "big",
        &secure,
        json!({"token": alice, "bytes": 1 << 20, "ca": ca_file}),
    )
    .await;
    assert_eq!(got["ok"], true, "{got}");
    // The backend got the handshake as a proxied request: the caller's identity, forwarded.
    let got = run(
        "first",
        &format!("ws://127.0.0.1:{}/ws/headers", gw.port),
        json!({"token": alice}),
    )
    .await;
    let seen: serde_json::Value = serde_json::from_str(got["message"].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-user-id"], "alice", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    // 402 sessions, each ended once; none left open.
    let mut m = String::new();
    eventually("every tunnel ended", Duration::from_secs(20), async || {
        m = gw.metrics().await;
        metric_sum(&m, "websocket_connections ") == 0.0
            && metric_sum(&m, "websocket_sessions_total{") == 402.0
    })
    .await;
    let closed = sessions(&m, "chat", "client_closed") + sessions(&m, "chat", "upstream_closed");
    assert_eq!(closed, 402.0, "{m}");
    // Each direction carried at least the 40,000 messages of 9-11 bytes plus the mebibyte.
    for direction in ["to_upstream", "to_client"] {
        let bytes = metric_sum(
            &m,
            &format!("websocket_bytes_total{{direction=\"{direction}\",route=\"chat\"}}"),
        );
        assert!(bytes > (1 << 20) as f64 + 400_000.0, "{direction}: {bytes}");
    }
}

#[tokio::test]
async fn the_handshake_passes_the_edge_like_any_request() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let gw = Gateway::start(&section(backend.port, "", ""), &[]).await;
    let url = format!("ws://127.0.0.1:{}/ws/echo", gw.port);
    // No token, a bad one: 401 before any upgrade, in the gateway's JSON.
    for opts in [json!({}), json!({"token": "not.a.token"})] {
        let got = run("status", &url, opts).await;
        assert_eq!(got["status"], 401, "{got}");
        assert!(got["body"].as_str().unwrap().contains("\"error\""), "{got}");
    }
    // A page of another origin: 403 (browsers apply no CORS to WebSockets).
    let alice = token("alice");
    let evil = run(
        "status",
        &url,
        json!({"token": alice, "origin": "https://evil.example"}),
    )
    .await;
    assert_eq!(evil["status"], 403, "{evil}");
    let good = run(
        "status",
        &url,
        json!({"token": alice, "origin": "https://app.example"}),
    )
    .await;
    assert_eq!(good["status"], 101, "{good}");
    // The route's rate limit counts handshakes: the third in the minute is 429.
    let limited = format!("ws://127.0.0.1:{}/limited/x", gw.port);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(run("status", &limited, json!({"token": alice})).await["status"].clone());
    }
    assert_eq!(statuses, [101, 101, 429], "{statuses:?}");
    let m = gw.metrics().await;
    assert_eq!(sessions(&m, "chat", "origin_refused"), 1.0, "{m}");
    // The refused handshakes never reached the backend: only the accepted three were tunnels.
    let tunnels = metric_sum(&m, "websocket_sessions_total{") - 1.0;
    assert_eq!(tunnels, 3.0, "{m}");
}

#[tokio::test]
async fn the_backends_close_code_and_first_words_reach_the_client() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let gw = Gateway::start(&section(backend.port, "", ""), &[]).await;
    let alice = token("alice");
    let got = run(
        "close",
        &format!("ws://127.0.0.1:{}/ws/close", gw.port),
        json!({"token": alice}),
    )
    .await;
    assert_eq!(got["code"], 4001, "{got}");
    assert_eq!(got["reason"], "bye", "{got}");
    // A backend that speaks the instant its 101 is out: the tunnel carries it, every time
    // (Pingora's own upgrade path lost such tunnels: cloudflare/pingora#946).
    for _ in 0..30 {
        let got = run(
            "first",
            &format!("ws://127.0.0.1:{}/ws/hello", gw.port),
            json!({"token": alice}),
        )
        .await;
        assert_eq!(got["message"], "hello", "{got}");
    }
}

#[tokio::test]
async fn idle_and_oversized_sessions_are_closed_with_their_codes() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let limits = ", websocket: { idle_timeout_ms: 1500, max_message_bytes: 65536 }";
    let gw = Gateway::start(&section(backend.port, limits, ""), &[]).await;
    let alice = token("alice");
    let url = format!("ws://127.0.0.1:{}/ws/echo", gw.port);
    let idle = run("wait", &url, json!({"token": alice})).await;
    let s = &idle["sessions"][0];
    assert_eq!(s["code"], 1001, "{idle}");
    assert_eq!(s["reason"], "idle timeout", "{idle}");
    assert!(s["seconds"].as_f64().unwrap() >= 1.4, "{idle}");
    // 64 KiB passes; one byte more is 1009, and the backend never gets the message.
    let fits = run("big", &url, json!({"token": alice, "bytes": 65536})).await;
    assert_eq!(fits["ok"], true, "{fits}");
    let big = run("close", &url, json!({"token": alice, "send_bytes": 65537})).await;
    assert_eq!(big["code"], 1009, "{big}");
    let m = gw.metrics().await;
    assert_eq!(sessions(&m, "chat", "idle_timeout"), 1.0, "{m}");
    assert_eq!(sessions(&m, "chat", "too_big"), 1.0, "{m}");
}

#[tokio::test]
async fn a_graceful_shutdown_closes_open_sessions_with_1001_within_the_grace_period() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let mut gw = Gateway::builder(&section(backend.port, "", ""))
        .env("RUST_LOG", "warn,gateway::proxy::tunnel=info")
        .start()
        .await;
    let url = format!("ws://127.0.0.1:{}/ws/echo", gw.port);
    let mut waiting = Waiting::open(&url, 5).await;
    eventually(
        "the five tunnels are open",
        Duration::from_secs(10),
        async || metric_sum(&gw.metrics().await, "websocket_connections ") == 5.0,
    )
    .await;
    gw.proc.terminate();
    waiting.assert_closed_by_shutdown().await;
    // grace_period_seconds is 1 in the test conf: the gateway is gone well before its
    // graceful_shutdown_timeout_seconds (10) would have cut anything.
    assert!(gw.proc.wait_exit(Duration::from_secs(15)).is_some());
    let (stdout, stderr) = gw.stop_and_read();
    assert!(
        format!("{stdout}{stderr}").contains("closing the open WebSocket tunnels"),
        "the shutdown says what it did"
    );
}

#[tokio::test]
async fn websocket_over_h2_is_not_offered_and_its_connect_is_refused() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let gw = Gateway::start(&section(backend.port, "", "h2c: true\n"), &[]).await;
    let got = py_json(
        "h2_connect.py",
        &[&gw.port.to_string()],
        Duration::from_secs(60),
    )
    .await;
    // RFC 8441: a server that does not send SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 offers none.
    assert_eq!(got["enable_connect_protocol"], Value::Null, "{got}");
    // An extended CONNECT sent anyway is reset as a protocol error (1); a plain one is 405.
    assert_eq!(got["extended"], "reset:1", "{got}");
    assert_eq!(got["plain"], "status:405", "{got}");
    // Both refused before any tunnel.
    let m = gw.metrics().await;
    assert_eq!(metric_sum(&m, "websocket_sessions_total{"), 0.0, "{m}");
}

#[tokio::test]
async fn an_upgrade_closes_the_old_processs_sessions_with_1001_and_the_new_one_serves() {
    let backend = PyServer::start("ws backend", "ws_server.py", &["{port}"]);
    let mut old = Gateway::start(&section(backend.port, "", ""), &[]).await;
    let url = format!("ws://127.0.0.1:{}/ws/echo", old.port);
    let alice = token("alice");
    let mut waiting = Waiting::open(&url, 3).await;
    let mut new = old.spawn_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    eventually(
        "the new process waits on the upgrade socket",
        Duration::from_secs(10),
        async || sock.exists(),
    )
    .await;
    old.proc.signal("QUIT");
    waiting.assert_closed_by_shutdown().await;
    // New sessions on the same port are the new process's.
    let echo = run(
        "echo",
        &url,
        json!({"token": alice, "sessions": 5, "messages": 20}),
    )
    .await;
    assert_eq!(echo["ok"], 5, "{echo}");
    assert!(
        old.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "the old process exits"
    );
    assert!(
        new.wait_exit(Duration::from_millis(100)).is_none(),
        "the new process serves on"
    );
}
