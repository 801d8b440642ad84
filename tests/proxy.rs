//! Transparent proxying, load balancing, health, config checking, metrics and graceful shutdown,
//! against the real gateway binary and real upstreams.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, eventually, free_port, metric_sum, EchoServer, Gateway, Mocks, SECRET};

/// A group `echo` on the given backends, public (auth is tested elsewhere), with fast checks.
fn echo_section(backends: &[String], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/echo/", "/api/echo/"] }}
rate_limit: {{ per_minute: 100000 }}
upstreams:
  echo:
    backends: [{list}]
    health_check: {{ kind: http, path: "/healthz", interval_ms: 200, consecutive_failure: 2, consecutive_success: 2 }}
{extra}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
  - {{ prefix: "/api/echo/", upstream: echo, strip_prefix: "/api" }}
"#
    )
}

#[tokio::test]
async fn get_arrives_intact_and_headers_pass_back() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;

    let r = client()
        .get(gw.url("/api/echo/items?a=1&b=two%20words"))
        .header("X-Custom", "hello")
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-upstream"],
        "echo",
        "upstream response header passes back"
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32, "a request id is generated");

    let seen = echo.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(
        s.uri, "/echo/items?a=1&b=two%20words",
        "prefix stripped, query intact"
    );
    assert_eq!(s.header("x-custom"), vec!["hello"]);
    assert_eq!(
        s.header("x-forwarded-for"),
        vec!["127.0.0.1"],
        "untrusted XFF replaced"
    );
    assert_eq!(s.header("x-forwarded-proto"), vec!["http"]);
    assert_eq!(s.header("x-request-id"), vec![rid]);

    // A well-formed client request id is kept and echoed.
    let r = client()
        .get(gw.url("/echo/x"))
        .header("X-Request-Id", "client-chosen-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id-1");
    assert_eq!(
        echo.requests()[1].header("x-request-id"),
        vec!["client-chosen-id-1"]
    );
}

#[tokio::test]
async fn five_mib_post_streams_through_byte_for_byte() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = client()
        .post(gw.url("/echo/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(
        back.as_ref() == body.as_slice(),
        "echo differs from what was sent"
    );
}

#[tokio::test]
async fn unknown_route_is_404_json_and_health_endpoints_answer() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;
    let r = client().get(gw.url("/no/such/route")).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "no route: 404 whether or not a token is sent"
    );
    let r = client()
        .get(gw.url("/no/such/route"))
        .bearer_auth(common::token("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    assert!(v["message"].is_string());
    for path in ["/healthz", "/readyz"] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn balances_fails_over_and_recovers() {
    let a = Mocks::start(&["user"]);
    let mut b = Mocks::start(&["user"]);
    let backends = vec![a.addr("user"), b.addr("user")];
    let section = echo_section(&backends, "")
        .replace("/echo/\", upstream: echo }", "/users/\", upstream: echo }");
    let section = section.replace("\"/echo/\", \"/api/echo/\"", "\"/users/\"");
    let gw = Gateway::start(&section, &[]).await;

    for _ in 0..20 {
        let r = client().get(gw.url("/users/1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (ca, cb) = (
        a.count("user", "/users/{id}").await,
        b.count("user", "/users/{id}").await,
    );
    assert_eq!((ca, cb), (10, 10), "round robin alternates between the two");

    // Kill one backend; wait until the active check has marked it down.
    let b_port = b.ports["user"];
    b.proc.kill();
    let gauge =
        format!("upstream_backend_healthy{{backend=\"127.0.0.1:{b_port}\",group=\"echo\"}} 0");
    eventually(
        "backend marked unhealthy",
        Duration::from_secs(10),
        async || gw.metrics().await.contains(&gauge),
    )
    .await;
    for i in 0..100 {
        let r = client().get(gw.url("/users/1")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} after failover");
    }

    // Bring it back on the same port: it gets traffic again once healthy.
    let b = Mocks::start_on(HashMap::from([("user", b_port)]));
    let gauge =
        format!("upstream_backend_healthy{{backend=\"127.0.0.1:{b_port}\",group=\"echo\"}} 1");
    eventually(
        "backend healthy again",
        Duration::from_secs(10),
        async || gw.metrics().await.contains(&gauge),
    )
    .await;
    for _ in 0..10 {
        let r = client().get(gw.url("/users/1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        b.count("user", "/users/{id}").await,
        5,
        "the revived backend takes its turn again"
    );

    // Every backend down → 503 JSON.
    drop(a);
    drop(b);
    eventually("all backends down → 503", Duration::from_secs(10), async || {
        matches!(client().get(gw.url("/users/1")).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    let r = client().get(gw.url("/users/1")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "service_unavailable");
}

#[tokio::test]
async fn passive_health_skips_a_backend_answering_5xx() {
    let good = Mocks::start(&["user"]);
    let bad = Mocks::start(&["user"]);
    bad.faults("user", serde_json::json!({"status": 500})).await;
    let passive = "    passive: { failures: 3, open_ms: 1500 }";
    let section = echo_section(&[good.addr("user"), bad.addr("user")], passive)
        .replace("\"/echo/\", \"/api/echo/\"", "\"/users/\"")
        .replace("/echo/\", upstream: echo }", "/users/\", upstream: echo }");
    let gw = Gateway::start(&section, &[]).await;
    let mut errors = 0;
    let mut ejected = None;
    for _ in 0..40 {
        let r = client().get(gw.url("/users/2")).send().await.unwrap();
        if r.status() == 500 {
            errors += 1;
            ejected = Some(Instant::now());
        }
    }
    assert_eq!(
        errors, 3,
        "the bad backend is skipped after 3 consecutive 5xx"
    );
    assert_eq!(bad.count("user", "/users/{id}").await, 3);

    // Healthy again: once `open_ms` has passed it is tried, and it takes traffic again.
    bad.reset_faults("user").await;
    eventually("the backend back in", Duration::from_secs(15), async || {
        let _ = client().get(gw.url("/users/2")).send().await;
        bad.count("user", "/users/{id}").await > 3
    })
    .await;
    let out_for = ejected.unwrap().elapsed();
    assert!(
        out_for >= Duration::from_millis(1500),
        "back after {out_for:?}"
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_json() {
    let echo = EchoServer::start().await;
    let extra = "    read_timeout_ms: 300\n";
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], extra),
        &[],
    )
    .await;
    let r = client()
        .get(gw.url("/echo/slow?ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_timeout");
}

#[tokio::test]
async fn metrics_have_both_families_with_route_labels() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;
    client().get(gw.url("/echo/a")).send().await.unwrap();
    client()
        .get(gw.url("/nothing"))
        .bearer_auth(common::token("1"))
        .send()
        .await
        .unwrap();
    // The logging phase runs just after the answer is sent: poll rather than race it.
    eventually(
        "both requests counted",
        Duration::from_secs(5),
        async || {
            gw.metrics()
                .await
                .contains(r#"route="not_found",status="404"} 1"#)
        },
    )
    .await;
    let m = gw.metrics().await;
    assert!(
        m.contains(
            r#"http_requests_total{method="GET",protocol="http/1.1",route="/echo/",status="200"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(
        r#"http_requests_total{method="GET",protocol="http/1.1",route="not_found",status="404"} 1"#
    ));
    assert!(m.contains(
        r#"http_request_duration_seconds_bucket{method="GET",route="/echo/",le="0.001"}"#
    ));
    assert!(
        m.contains(r#"http_request_duration_seconds_bucket{method="GET",route="/echo/",le="10"}"#)
    );
    assert!(!m.contains("/echo/a"), "raw paths never become labels");
}

#[tokio::test]
async fn upstream_connections_are_counted_as_reused_or_opened() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;
    let count = |m: &str, reused: &str| {
        let series = format!(r#"upstream_connections_total{{group="echo",reused="{reused}"}}"#);
        metric_sum(m, &series) as u64
    };
    // The truth to count against: the distinct connections the echo server saw.
    let connections = || {
        echo.requests()
            .iter()
            .filter_map(|s| s.peer)
            .collect::<std::collections::HashSet<_>>()
            .len() as u64
    };
    assert_eq!(count(&gw.metrics().await, "false"), 0);
    // One after another: the first opens a connection, the others find it in the pool (a
    // request can arrive before the previous one's connection is back in the pool, so a
    // loaded machine may open a second).
    for _ in 0..5 {
        let r = client().get(gw.url("/echo/a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    let (opened, reused) = (count(&m, "false"), count(&m, "true"));
    assert_eq!((opened, opened + reused), (connections(), 5), "{m}");
    assert!(reused >= 1, "{m}");
    // Eight at once, each held for a second: eight connections at least, however many the
    // pool held.
    let slow = (0..8).map(|_| async {
        let r = client()
            .get(gw.url("/echo/slow?ms=1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    futures::future::join_all(slow).await;
    let m = gw.metrics().await;
    let (opened_now, reused_now) = (count(&m, "false"), count(&m, "true"));
    assert_eq!(
        (opened_now, opened_now + reused_now),
        (connections(), 13),
        "{m}"
    );
    assert!(opened_now >= 8, "{m}");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let echo = EchoServer::start().await;
    let mut gw = Gateway::start(
        &echo_section(&[format!("127.0.0.1:{}", echo.port)], ""),
        &[],
    )
    .await;
    let url = gw.url("/echo/slow?ms=500");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Send the signal only once all 20 are inside the upstream.
    eventually(
        "20 requests in flight",
        Duration::from_secs(10),
        async || echo.requests().len() >= 20,
    )
    .await;
    gw.proc.terminate();
    for t in tasks {
        let status = t.await.unwrap().expect("request completed");
        assert_eq!(status, 200);
    }
    assert!(
        gw.proc.wait_exit(Duration::from_secs(20)).is_some(),
        "gateway exits after draining"
    );
}

fn check_config(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(common::gateway_bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .env("JWT_SECRET", common::SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn config_check_accepts_default_and_rejects_broken_files() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.yaml");
    let (ok, out) = check_config(&std::fs::read_to_string(default).unwrap());
    assert!(ok, "conf/gateway.yaml must validate: {out}");

    let cases = [
        ("gateway:\n  rate_limit: { per_minut: 5 }\n", "per_minut"),
        ("gateway:\n  services: { user: { url: \"not a url\" } }\n", "gateway.services.user.url"),
        (
            "gateway:\n  upstreams: { a: { backends: [\"127.0.0.1:1\"] } }\n  routes: [ { prefix: /x, upstream: nope } ]\n",
            "gateway.routes[0].upstream",
        ),
        ("gateway:\n  upstreams: { a: { backends: [] } }\n", "gateway.upstreams.a.backends"),
        ("gateway:\n  listen: \"0.0.0.0:99999\"\n", "gateway.listen"),
    ];
    for (yaml, key) in cases {
        let (ok, out) = check_config(yaml);
        assert!(!ok, "should reject: {yaml}");
        assert!(
            out.contains(key),
            "message for {yaml:?} should name {key}: {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[test]
fn the_check_refuses_what_start_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    let check = |text: &str, secret: Option<&str>| {
        std::fs::write(&conf, text).unwrap();
        let mut cmd = Command::new(common::gateway_bin());
        cmd.arg("-t").arg("-c").arg(&conf).env_remove("JWT_SECRET");
        if let Some(s) = secret {
            cmd.env("JWT_SECRET", s);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.code(), text)
    };
    for (text, secret, names) in [
        (
            "gatway:\n  listen: '0.0.0.0:8080'\n",
            Some(SECRET),
            "did you mean `gateway`",
        ),
        (
            "version: 1\nthread: 2\ngateway: {}\n",
            Some(SECRET),
            "did you mean `threads`",
        ),
        ("", Some(SECRET), "is empty"),
        ("  \n", Some(SECRET), "is empty"),
        ("version: 1\ngateway: {}\n", None, "JWT_SECRET"),
    ] {
        let (code, out) = check(text, secret);
        assert_eq!(code, Some(2), "-t must refuse {text:?}: {out}");
        assert!(out.contains(names), "{text:?} -> {out}");
        assert!(!out.contains("is valid"), "{out}");
    }
    let (code, out) = check("version: 1\nthreads: 2\ngateway: {}\n", Some(SECRET));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_listen_address_in_use_ends_the_start_with_its_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    let metrics = common::free_port();
    std::fs::write(
        &conf,
        format!("version: 1\ngateway:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics}\"\n  listen_retry_seconds: 1\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(common::gateway_bin())
        .arg("-c")
        .arg(&conf)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port} is in use")),
        "{err}"
    );
    // One second of retries, then out: never Pingora's retry-forever.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(taken);
}

#[test]
fn refuses_to_start_without_jwt_secret_when_no_issuer_is_configured() {
    // conf/gateway.yaml trusts an identity provider, so it needs no secret: a conf without one.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    std::fs::write(&conf, "version: 1\ngateway: {}\n").unwrap();
    for secret in [None, Some("")] {
        let mut cmd = Command::new(common::gateway_bin());
        cmd.arg("-c").arg(&conf);
        cmd.env_remove("JWT_SECRET");
        if let Some(s) = secret {
            cmd.env("JWT_SECRET", s);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("JWT_SECRET"), "{err}");
    }
}

#[tokio::test]
async fn a_backend_killed_under_traffic_costs_no_request_before_any_check_notices() {
    let a = Mocks::start(&["user"]);
    let mut b = Mocks::start(&["user"]);
    // The active check would take a minute to notice; only the connect retry can save these.
    let section = format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/users/"] }}
rate_limit: {{ per_minute: 100000 }}
upstreams:
  users:
    backends: ["{}", "{}"]
    health_check: {{ kind: tcp, interval_ms: 60000 }}
    connect_retries: 1
routes:
  - {{ prefix: "/users/", upstream: users }}
"#,
        a.addr("user"),
        b.addr("user")
    );
    let gw = Gateway::start(&section, &[]).await;
    b.proc.kill();
    let statuses = common::concurrent_gets(
        (0..60)
            .map(|i| gw.url(&format!("/users/{}", i % 10 + 1)))
            .collect(),
        "",
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        gw.metrics().await.contains(&format!(
            "upstream_backend_healthy{{backend=\"{}\",group=\"users\"}} 1",
            b.addr("user")
        )),
        "the active check had not noticed yet"
    );
}

#[tokio::test]
async fn an_answer_after_which_the_connection_closes_says_so() {
    // 502: the backend refuses. 503: the active check took every backend out. 504: the backend
    // accepts and never answers.
    let dead = common::free_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let section = format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/dead/", "/down/", "/silent/"] }}
upstreams:
  dead: {{ backends: ["127.0.0.1:{dead}"], connect_retries: 0, health_check: {{ kind: tcp, interval_ms: 60000 }} }}
  down: {{ backends: ["127.0.0.1:{dead}"], health_check: {{ kind: tcp, interval_ms: 200, consecutive_failure: 1 }} }}
  silent: {{ backends: ["127.0.0.1:{silent_port}"], connect_retries: 0, read_timeout_ms: 300, health_check: {{ kind: tcp, interval_ms: 60000 }} }}
routes:
  - {{ prefix: "/dead/", upstream: dead }}
  - {{ prefix: "/down/", upstream: down }}
  - {{ prefix: "/silent/", upstream: silent }}
"#
    );
    let gw = Gateway::start(&section, &[]).await;
    eventually(
        "the down group's backend out",
        Duration::from_secs(10),
        async || {
            gw.metrics().await.contains(&format!(
                "upstream_backend_healthy{{backend=\"127.0.0.1:{dead}\",group=\"down\"}} 0"
            ))
        },
    )
    .await;
    // Keep-alive asked for; after an error in the proxy phase Pingora closes the connection,
    // so the answer must carry `Connection: close` (a client that pooled it would send its
    // next request into a closing socket).
    for (path, status) in [("/dead/x", "502"), ("/silent/x", "504")] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
        let resp = common::raw_request(gw.port, request.as_bytes(), Duration::from_secs(2)).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {resp}"
        );
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{path}: {resp}"
        );
    }
    // A group with no backend to try is answered before proxying: the connection stays, and
    // the next request on it is answered.
    let two = b"GET /down/x HTTP/1.1\r\nHost: t\r\n\r\nGET /down/y HTTP/1.1\r\nHost: t\r\n\r\n";
    let resp = common::raw_request(gw.port, two, Duration::from_secs(2)).await;
    assert_eq!(resp.matches("HTTP/1.1 503").count(), 2, "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
}

/// `/readyz`'s status and its `message`.
async fn readiness(gw: &Gateway) -> (u16, String) {
    let r = client().get(gw.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn readiness_waits_for_a_healthy_backend_per_routed_group_and_for_the_store_when_asked() {
    // A group whose only backend is down: ready anyway unless `readiness` asks.
    let port = free_port();
    let dead = [format!("127.0.0.1:{port}")];
    let plain = Gateway::start(&echo_section(&dead, ""), &[]).await;
    eventually(
        "the backend marked down",
        Duration::from_secs(10),
        async || {
            plain.metrics().await.contains(&format!(
                "upstream_backend_healthy{{backend=\"127.0.0.1:{port}\",group=\"echo\"}} 0"
            ))
        },
    )
    .await;
    assert_eq!(readiness(&plain).await.0, 200, "not asked to wait");

    let redis_port = free_port();
    let strict = "readiness: { require_upstreams: true, require_store: true }";
    let gw = Gateway::builder(&echo_section(&dead, strict))
        .env("REDIS_ADDR", format!("127.0.0.1:{redis_port}"))
        .unready()
        .start()
        .await;
    eventually(
        "unready: the routed group has no healthy backend",
        Duration::from_secs(10),
        async || {
            readiness(&gw).await == (503, "upstream group `echo` has no healthy backend".into())
        },
    )
    .await;
    let refusals = |check: &'static str| {
        let gw = &gw;
        async move {
            common::metric_sum(
                &gw.metrics().await,
                &format!(r#"readiness_refusals_total{{check="{check}"}}"#),
            )
        }
    };
    assert!(refusals("upstreams").await >= 1.0);

    // The backend comes up: now the store is what is missing.
    let _backend = Mocks::start_on(HashMap::from([("user", port)]));
    eventually(
        "unready: the store does not answer",
        Duration::from_secs(10),
        async || {
            readiness(&gw)
                .await
                .1
                .starts_with("the shared store is not answering")
        },
    )
    .await;
    assert!(refusals("store").await >= 1.0);

    let _redis = common::Redis::start_on(redis_port);
    eventually(
        "ready once both are up",
        Duration::from_secs(10),
        async || readiness(&gw).await.0 == 200,
    )
    .await;
    assert_eq!(refusals("keys").await, 0.0, "no provider keys to wait for");
}

#[test]
fn help_describes_every_flag_and_environment_variable_in_the_gateways_words() {
    let out = Command::new(common::gateway_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for flag in ["--conf", "--test", "--upgrade", "--daemon"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    assert!(
        help.contains("Check the configuration as start would"),
        "{help}"
    );
    assert!(
        !help.contains("pingora-based service"),
        "Pingora's struct comment: {help}"
    );
    for var in gateway::config::ENV_VARS {
        assert!(help.contains(var), "{var} is not listed: {help}");
    }
}
