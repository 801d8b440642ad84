//! Logs against the real gateway: a reader that stops reading never holds a request (lines are
//! dropped and counted instead), the access log is one JSON line per request with no query
//! values, and the log format follows `LOG_FORMAT`.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{client, eventually, free_port, token, EchoServer, Gateway};

/// The value of `log_lines_dropped_total{stream}` in a scrape.
fn dropped(metrics: &str, stream: &str) -> u64 {
    let series = format!("log_lines_dropped_total{{stream=\"{stream}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

#[tokio::test]
async fn a_reader_that_stops_reading_never_holds_a_request() {
    // Both pipes are left unread: after the pipe buffers and the queues fill, every line is
    // dropped. Before the queues, the 305th request hung on a stdout write.
    let gw = Gateway::builder("")
        .env("RUST_LOG", "info")
        .unread_pipes()
        .start()
        .await;
    let url = gw.url("/healthz");
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                let mut ok = 0u32;
                for _ in 0..400 {
                    let r = c.get(&url).timeout(Duration::from_secs(5)).send().await;
                    if !matches!(r, Ok(r) if r.status() == 200) {
                        break; // a held request: the test fails without waiting out the rest
                    }
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 32 * 400, "every request answered");
    let m = gw.metrics().await;
    assert!(
        dropped(&m, "stdout") > 0,
        "12,800 access lines cannot fit the pipe and the queue"
    );
    println!(
        "12,800 requests in {:?}, {} stdout lines dropped",
        started.elapsed(),
        dropped(&m, "stdout")
    );
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_without_query_values() {
    let echo = EchoServer::start().await;
    let dead = free_port();
    // Four limited requests per day (so no window ends mid-test), a backend nobody listens on,
    // and a slow one the client walks away from.
    let section = format!(
        "rate_limit: {{ per_minute: 4, window_seconds: 86400 }}\nupstreams:\n  dead: {{ backends: [\"127.0.0.1:{dead}\"], connect_retries: 0, health_check: {{ kind: tcp, interval_ms: 60000 }} }}\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}\nroutes:\n  - {{ prefix: \"/dead/\", upstream: dead }}\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    let mut gw = Gateway::builder(&section)
        .env("RUST_LOG", "warn,access=info")
        .start()
        .await;
    let c = client();
    let t = token("7");
    // (path, token, status in the log; 0 = the client left before an answer)
    let answers: [(&str, Option<&str>, u16); 6] = [
        ("/healthz?token=s3cret&x=1", None, 200),
        ("/nowhere", Some(&t), 404),
        ("/echo/anything", None, 401),
        ("/dead/x", Some(&t), 502),
        ("/echo/slow?ms=3000", Some(&t), 0),
        ("/nowhere", Some(&t), 429),
    ];
    for (i, (path, bearer, want)) in answers.iter().enumerate() {
        let mut req = c
            .get(gw.url(path))
            .header("X-Request-Id", format!("req-{i}"));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if *want == 0 {
            // Walk away once the upstream has the request, so the gateway has counted it.
            let pending = tokio::spawn(req.send());
            eventually(
                "the slow request reached the upstream",
                Duration::from_secs(10),
                async || echo.requests().iter().any(|s| s.uri.contains("slow")),
            )
            .await;
            pending.abort();
            assert!(pending.await.is_err(), "the client walked away");
        } else {
            let r = req.send().await.unwrap();
            let remaining = r.headers().get("ratelimit-remaining").cloned();
            assert_eq!(
                r.status().as_u16(),
                *want,
                "{path} (RateLimit-Remaining {remaining:?})"
            );
        }
    }
    eventually(
        "the abort was logged",
        Duration::from_secs(10),
        async || gw.metrics().await.contains(r#"route="/echo/",status="0"}"#),
    )
    .await;
    let (out, _) = gw.stop_and_read();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for (i, (path, bearer, want)) in answers.iter().enumerate() {
        // /readyz polls by the harness are requests too; ours carry an id of our own.
        let ours: Vec<_> = lines
            .iter()
            .filter(|v| v["request_id"] == format!("req-{i}"))
            .collect();
        assert_eq!(ours.len(), 1, "one line for {path}: {out}");
        let line = ours[0];
        assert_eq!(line["status"], *want, "{path}: {line}");
        assert_eq!(
            line["client_ip"], "127.0.0.1",
            "client address on every route"
        );
        assert_eq!(line["config_generation"], 1, "{line}");
        assert!(
            line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
        assert!(line["bytes_sent"].is_u64(), "{line}");
        let upstream = match *path {
            "/dead/x" => Some(format!("127.0.0.1:{dead}")),
            p if p.starts_with("/echo/") && *want != 401 => {
                Some(format!("127.0.0.1:{}", echo.port))
            }
            _ => None,
        };
        assert_eq!(
            line["upstream"].as_str().map(str::to_string),
            upstream,
            "the backend tried, on proxied routes only: {line}"
        );
        // No token is read for a path no route serves.
        let authenticated = bearer.is_some() && !matches!(*want, 404 | 429);
        assert_eq!(
            line["user"].as_str(),
            authenticated.then_some("7"),
            "{line}"
        );
        assert!(line["path"]
            .as_str()
            .unwrap()
            .starts_with(path.split('?').next().unwrap()));
    }
    assert!(
        lines.iter().any(|v| v["path"] == "/healthz?token=&x="),
        "{out}"
    );
    assert!(lines.iter().any(|v| v["path"] == "/echo/slow?ms="), "{out}");
    assert!(
        !out.contains("s3cret") && !out.contains("3000"),
        "query values never reach the log"
    );
    assert!(!out.contains(&t), "tokens never reach the log");
}

#[tokio::test]
async fn log_format_follows_log_format_and_text_hides_pingora_chatter() {
    // A short secret makes the gateway warn at start-up; a blank RUST_LOG means the default.
    let short = [
        ("JWT_SECRET", "short".to_string()),
        ("RUST_LOG", String::new()),
    ];
    let mut json = Gateway::start("", &short).await;
    let (_, err) = json.stop_and_read();
    // Every line is one JSON event: one that is not (a stray print, a text line) fails here.
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["level"] == "WARN"
            && e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("JWT_SECRET"))),
        "the warning as a JSON event: {err}"
    );
    assert!(
        events.iter().any(|e| e["level"] == "INFO"
            && e["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("pingora"))),
        "JSON keeps Pingora's info lines: {err}"
    );

    let mut env = short.to_vec();
    env.push(("LOG_FORMAT", "text".into()));
    let mut text = Gateway::start("", &env).await;
    let (_, err) = text.stop_and_read();
    assert!(
        !err.lines().any(|l| l.starts_with('{')),
        "no JSON in text mode: {err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("JWT_SECRET is shorter")),
        "the warning as text: {err}"
    );
    assert!(
        !err.lines()
            .any(|l| l.contains("INFO") && l.contains("Server starting")),
        "Pingora's start-up chatter is below warn in text mode: {err}"
    );
    // The start-up summary: a block in text mode, one event in JSON.
    let port = text.port;
    for line in [
        "gateway 0.1.0 (Pingora 0.9.".to_string(),
        format!("  http      127.0.0.1:{port}"),
        format!("  metrics   127.0.0.1:{}/metrics", text.metrics_port),
        "  serving   ".to_string(),
        "  auth      HS256 (JWT_SECRET)".to_string(),
        "  store     embedded".to_string(),
        "  config    ".to_string(),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&line)),
            "{line:?} in the summary: {err}"
        );
    }
    let start = events
        .iter()
        .find(|e| e["fields"]["message"] == "gateway starting")
        .unwrap_or_else(|| panic!("the summary as one JSON event: {events:?}"));
    assert_eq!(start["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(start["fields"]["listeners"]
        .as_str()
        .is_some_and(|l| l.contains(&format!("127.0.0.1:{}", json.port))));
}

#[tokio::test]
async fn build_info_names_the_version_and_pingora() {
    let gw = Gateway::start("", &[]).await;
    let m = gw.metrics().await;
    let line = m
        .lines()
        .find(|l| l.starts_with("gateway_build_info{"))
        .unwrap_or_else(|| panic!("gateway_build_info: {m}"));
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains("pingora=\"0.9."), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn access_off_leaves_the_access_log_out_and_the_rest_in() {
    let mut gw = Gateway::builder("")
        .env("RUST_LOG", "info,access=off")
        .start()
        .await;
    for _ in 0..3 {
        let r = client().get(gw.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (out, err) = gw.stop_and_read();
    assert!(
        !out.lines()
            .chain(err.lines())
            .any(|l| l.contains("\"request_id\"")),
        "no access line:\n{out}"
    );
    assert!(
        err.lines().any(|l| l.contains(r#""level":"INFO""#)),
        "other INFO lines still written:\n{err}"
    );
}

#[tokio::test]
async fn health_changes_and_deliberate_503s_are_the_gateways_lines_not_pingoras() {
    // A group whose one backend is down: its health check fails, then a request gets 503.
    let dead = free_port();
    // And a group of two dead backends the checks have not noticed yet (one round a minute):
    // both tries fail to connect (502).
    let (d1, d2) = (free_port(), free_port());
    let section = format!(
        "upstreams:\n  gone: {{ backends: [\"127.0.0.1:{dead}\"], health_check: {{ kind: tcp, interval_ms: 200, consecutive_failure: 1 }} }}\n  unnoticed: {{ backends: [\"127.0.0.1:{d1}\", \"127.0.0.1:{d2}\"], health_check: {{ kind: tcp, interval_ms: 60000 }}, connect_retries: 1 }}\nroutes:\n  - {{ name: gone, match: {{ path: {{ prefix: \"/gone/\" }} }}, upstream: gone, auth: public }}\n  - {{ name: unnoticed, match: {{ path: {{ prefix: \"/unnoticed/\" }} }}, upstream: unnoticed, auth: public }}\n"
    );
    let mut gw = Gateway::builder(&section).unready().start().await;
    let c = client();
    let mut status = 0;
    eventually(
        "the group is seen unhealthy",
        Duration::from_secs(10),
        async || {
            status = c
                .get(gw.url("/gone/x"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            status == 503
        },
    )
    .await;
    let r = c.get(gw.url("/unnoticed/x")).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());
    let (_, err) = gw.stop_and_read();
    assert!(
        err.contains("backend failed its health check"),
        "the gateway's own line: {err}"
    );
    for pingora in ["becomes unhealthy", "Backend {", "ext: {"] {
        assert!(!err.contains(pingora), "{pingora:?} reached the log: {err}");
    }
    // Backends refusing connections are worth Pingora's line (a 502, the backend's fault);
    // a 503 the gateway decides is not (unit: `respond::tests::answers_decided_here_are_not_errors`).
    assert!(
        !err.lines()
            .any(|l| l.contains("Fail to proxy") && l.contains("no healthy backend")),
        "{err}"
    );
}

#[tokio::test]
async fn the_access_log_can_be_one_readable_line_per_request() {
    let mut gw = Gateway::start(
        "log: { access_format: text }\n",
        &[("RUST_LOG", "info".into())],
    )
    .await;
    let r = client()
        .get(gw.url("/nowhere?token=s3cret"))
        .header("x-request-id", "readable-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (out, _) = gw.stop_and_read();
    let line = out
        .lines()
        .find(|l| l.contains("id=readable-0001"))
        .unwrap_or_else(|| panic!("the request's line: {out}"));
    assert!(!line.starts_with('{'), "{line}");
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        &words[1..5],
        ["127.0.0.1", "GET", "/nowhere?token=", "404"],
        "{line}"
    );
    assert!(words[5].ends_with("ms"), "{line}");
    assert!(
        line.contains(" route=") && !line.contains("s3cret"),
        "{line}"
    );
}

#[test]
fn on_a_terminal_the_log_and_the_access_log_are_readable_lines() {
    // `script` gives the gateway a pseudo-terminal for stdout and stderr, as a person's shell.
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let conf = dir.path().join("gateway.yaml");
    std::fs::write(
        &conf,
        format!(
            "version: 1\ngrace_period_seconds: 1\npid_file: {d}/gw.pid\nupgrade_sock: {d}/up.sock\ngateway:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics}\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let command = format!(
        "{} -c {} & pid=$!; for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:{port}/healthz && break; sleep 0.1; done; curl -s -o /dev/null http://127.0.0.1:{port}/nothing; kill $pid; wait $pid",
        common::gateway_bin().display(),
        conf.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("JWT_SECRET", common::SECRET)
        .env_remove("LOG_FORMAT")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("starting; listening on:"),
        "the summary block: {text}"
    );
    assert!(
        text.lines().any(|l| l.contains(" GET /nothing 404 ")),
        "a readable access line: {text}"
    );
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with('{')),
        "no JSON on a terminal: {text}"
    );
}
