//! Live configuration against the real gateway: SIGHUP and the file watch swap routes, backend
//! lists, aggregates, public paths and limits under load with no failed request; requests in
//! flight (a slow one, a long stream) finish on the snapshot they started with; invalid files
//! change nothing and are counted.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use common::{client, eventually, token, Gateway};
use serde_json::{json, Value};

/// What a test service has started answering.
#[derive(Default)]
struct Started {
    slow: AtomicU64,
    stream: AtomicU64,
}

#[derive(Clone)]
struct Svc {
    name: &'static str,
    started: Arc<Started>,
}

/// A service that says its name: `/who`, `/slow` (2 s), `/stream` (30 × 1000 bytes over 3 s),
/// `/users/{id}`.
async fn service(name: &'static str) -> (u16, Arc<Started>) {
    let started = Arc::new(Started::default());
    let app = Router::new()
        .route(
            "/who",
            get(|State(s): State<Svc>| async move { Json(json!({ "server": s.name })) }),
        )
        .route(
            "/slow",
            get(|State(s): State<Svc>| async move {
                s.started.slow.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                Json(json!({ "server": s.name, "slow": true }))
            }),
        )
        .route(
            "/stream",
            get(|State(s): State<Svc>| async move {
                s.started.stream.fetch_add(1, Ordering::SeqCst);
                let chunks = futures::stream::unfold(0u32, |i| async move {
                    if i == 30 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::io::Error>(vec![b'x'; 1000]), i + 1))
                });
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/users/{id}",
            get(|Path(id): Path<String>| async move { Json(json!({ "id": id })) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Svc {
            name,
            started: started.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, started)
}

/// The `gateway:` section: group `g` on `backend`, `/p/` public or not, the `card` aggregate or
/// not, a limit per hour, and `extra` lines.
fn section(
    backend: u16,
    svc: u16,
    public_p: bool,
    aggregate: bool,
    limit: u64,
    extra: &str,
) -> String {
    let public = if public_p { r#", "/p/""# } else { "" };
    let aggregates = if aggregate {
        r#"
  - name: card
    path: "/agg/{id}"
    legs:
      user: { service: t, path: "/users/{id}", required: true, expect: object }"#
    } else {
        " []"
    };
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/o/"{public}] }}
rate_limit: {{ per_minute: {limit}, window_seconds: 3600 }}
services:
  t: {{ url: "http://127.0.0.1:{svc}" }}
aggregates:{aggregates}
upstreams:
  g: {{ backends: ["127.0.0.1:{backend}"], health_check: {{ kind: tcp, interval_ms: 500 }} }}
routes:
  - {{ prefix: "/p/", upstream: g, strip_prefix: true }}
  - {{ prefix: "/q/", upstream: g, strip_prefix: true }}
  - {{ prefix: "/o/", upstream: g, strip_prefix: true }}
{extra}"#
    )
}

async fn who(gw: &Gateway, path: &str, auth: bool) -> (u16, Value) {
    let mut r = client().get(gw.url(path));
    if auth {
        r = r.bearer_auth(token("7"));
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A limited (not public) GET: its status and `RateLimit-Remaining`.
async fn limited(gw: &Gateway) -> (u16, Option<u64>) {
    let r = client()
        .get(gw.url("/q/who"))
        .bearer_auth(token("7"))
        .send()
        .await
        .unwrap();
    let remaining = r
        .headers()
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (r.status().as_u16(), remaining)
}

fn metric(m: &str, series: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// ~200 requests a second to a route that stays public, from 127.0.0.2, until stopped; returns
/// (sent, failed) where failed is anything but a 200 with a body.
fn load(gw: &Gateway, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let url = gw.url("/o/who");
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    tokio::spawn(async move {
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut tasks = Vec::new();
        // Bounded: at most 60 s whatever happens.
        for _ in 0..12_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tick.tick().await;
            let (c, u, sent, failures) =
                (client.clone(), url.clone(), sent.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                sent.fetch_add(1, Ordering::Relaxed);
                match c.get(&u).bearer_auth(token("load")).send().await {
                    Ok(r) if r.status() == 200 => {
                        if r.bytes().await.map_or(true, |b| b.is_empty()) {
                            failures.lock().push("empty body".to_string());
                        }
                    }
                    Ok(r) => failures.lock().push(format!("status {}", r.status())),
                    Err(e) => failures.lock().push(format!("error {e}")),
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let f = failures.lock().clone();
        (sent.load(Ordering::Relaxed), f)
    })
}

#[tokio::test]
async fn sighup_applies_each_change_under_load_without_a_failed_request() {
    let (a, a_started) = service("a").await;
    let (b, _) = service("b").await;
    let limit = 1_000_000;
    let gw = Gateway::start(&section(a, a, true, false, limit, ""), &[]).await;
    assert_eq!(who(&gw, "/p/who", false).await.1["server"], "a");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&gw, stop.clone());

    // In flight across the reload: a slow answer and a long stream from `a`.
    let slow = tokio::spawn({
        let url = gw.url("/p/slow");
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let stream = tokio::spawn({
        let url = gw.url("/p/stream");
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.map(|b| b.len()).ok())
        }
    });
    // Both reached `a` before the swap.
    eventually(
        "slow and stream in flight",
        Duration::from_secs(5),
        async || {
            a_started.slow.load(Ordering::SeqCst) == 1
                && a_started.stream.load(Ordering::SeqCst) == 1
        },
    )
    .await;

    // 1. The backend list: a → b.
    gw.rewrite(&section(b, a, true, false, limit, ""));
    gw.proc.signal("HUP");
    eventually(
        "new backend within 2 s",
        Duration::from_secs(2),
        async || who(&gw, "/p/who", false).await.1["server"] == "b",
    )
    .await;
    let slow = slow.await.unwrap();
    assert_eq!(
        slow["server"], "a",
        "the slow request finished on the old route"
    );
    assert_eq!(
        stream.await.unwrap(),
        (200, Some(30_000)),
        "the stream was not cut"
    );

    // 2. An aggregate appears.
    assert_eq!(who(&gw, "/agg/5", true).await.0, 404);
    gw.rewrite(&section(b, a, true, true, limit, ""));
    gw.proc.signal("HUP");
    eventually("aggregate within 2 s", Duration::from_secs(2), async || {
        who(&gw, "/agg/5", true).await.1["user"]["id"] == "5"
    })
    .await;

    // 3. A public path goes: /p/ needs a token now.
    assert_eq!(who(&gw, "/p/who", false).await.0, 200);
    gw.rewrite(&section(b, a, false, true, limit, ""));
    gw.proc.signal("HUP");
    eventually(
        "public path removed within 2 s",
        Duration::from_secs(2),
        async || who(&gw, "/p/who", false).await.0 == 401,
    )
    .await;

    // 4. Invalid files change nothing and are counted: an unknown key, a cycle.
    let m = gw.metrics().await;
    let generation = metric(&m, "config_generation");
    let errors = metric(&m, "config_reload_total{result=\"error\"}");
    assert_eq!(generation, 4.0, "three reloads applied:\n{m}");
    for (i, bad) in [
        section(a, a, true, false, limit, "bogus_key: 1\n"),
        section(a, a, true, false, limit, "")
            .replace("aggregates: []", "aggregates:\n  - name: loop\n    path: \"/loop/{id}\"\n    legs:\n      x: { service: t, path: \"/users/{y.id}\" }\n      y: { service: t, path: \"/users/{x.id}\" }"),
    ]
    .iter()
    .enumerate()
    {
        gw.rewrite(bad);
        gw.proc.signal("HUP");
        eventually("the error counted", Duration::from_secs(2), async || {
            metric(&gw.metrics().await, "config_reload_total{result=\"error\"}") == errors + 1.0 + i as f64
        })
        .await;
        assert_eq!(who(&gw, "/p/who", true).await.1["server"], "b", "nothing changed");
        assert_eq!(who(&gw, "/p/who", false).await.0, 401, "nothing changed");
        assert_eq!(metric(&gw.metrics().await, "config_generation"), generation);
    }

    // 5. A limit change applies to the current window's count: it is not reset.
    // The file back to what runs: nothing to apply.
    gw.rewrite(&section(b, a, false, true, limit, ""));
    gw.proc.signal("HUP");
    eventually("unchanged counted", Duration::from_secs(2), async || {
        metric(
            &gw.metrics().await,
            "config_reload_total{result=\"unchanged\"}",
        ) == 1.0
    })
    .await;
    let (_, remaining) = limited(&gw).await;
    let counted = limit - remaining.unwrap();
    gw.rewrite(&section(b, a, false, true, counted + 2, ""));
    gw.proc.signal("HUP");
    eventually("new limit within 2 s", Duration::from_secs(2), async || {
        metric(&gw.metrics().await, "config_generation") == generation + 1.0
    })
    .await;
    let statuses = futures::future::join_all((0..3).map(|_| limited(&gw))).await;
    let mut codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![200, 200, 429],
        "{counted} counted before: {statuses:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = loader.await.unwrap();
    assert!(sent > 200, "load ran: {sent}");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "config_reload_total{result=\"ok\"}"), 4.0, "{m}");
    assert!(m.contains("config_info{config_hash=\""));
}

#[tokio::test]
async fn a_watched_file_is_applied_and_an_invalid_one_reported_once() {
    let (a, _) = service("a").await;
    let (b, _) = service("b").await;
    let watch = "reload: { watch: true, interval_ms: 100 }\n";
    let mut gw = Gateway::start(&section(a, a, true, false, 1000, watch), &[]).await;
    assert_eq!(who(&gw, "/p/who", false).await.1["server"], "a");
    gw.rewrite(&section(b, a, true, false, 1000, watch));
    eventually(
        "applied without a signal within 2 s",
        Duration::from_secs(2),
        async || who(&gw, "/p/who", false).await.1["server"] == "b",
    )
    .await;
    gw.rewrite(&section(
        a,
        a,
        true,
        false,
        1000,
        &format!("{watch}bogus_key: 1\n"),
    ));
    eventually(
        "the invalid file reported",
        Duration::from_secs(2),
        async || metric(&gw.metrics().await, "config_reload_total{result=\"error\"}") == 1.0,
    )
    .await;
    // Another valid change goes through (many polls later); the invalid file was counted once.
    gw.rewrite(&section(a, a, true, false, 1000, watch));
    eventually("applied again", Duration::from_secs(2), async || {
        who(&gw, "/p/who", false).await.1["server"] == "a"
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "config_reload_total{result=\"error\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "config_generation"), 3.0);

    // A key only a restart can change: applied with its running value kept, and said once.
    gw.rewrite(&section(
        a,
        a,
        true,
        false,
        1000,
        &format!("{watch}limits: {{ pipeline_depth: 4 }}\n"),
    ));
    eventually("applied once more", Duration::from_secs(2), async || {
        metric(&gw.metrics().await, "config_generation") == 4.0
    })
    .await;
    let (out, err) = gw.stop_and_read();
    let lines: Vec<&str> = out.lines().chain(err.lines()).collect();
    let count = |level: &str, text: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!(r#""level":"{level}""#)) && l.contains(text))
            .count()
    };
    assert_eq!(count("ERROR", "bogus_key"), 1, "one ERROR naming the key");
    assert_eq!(
        count("WARN", "gateway.limits.pipeline_depth"),
        1,
        "one WARN naming the key that needs a restart"
    );
}
