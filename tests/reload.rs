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

/// A backend whose `/healthz` answers 200 or 500 as `healthy` says, and whose every other path
/// is counted and answers 500 while `failing` is set, else a JSON object.
struct Counted {
    healthy: bool,
    failing: AtomicBool,
    hits: AtomicU64,
}

async fn counted(healthy: bool, failing: bool) -> (u16, Arc<Counted>) {
    let state = Arc::new(Counted {
        healthy,
        failing: AtomicBool::new(failing),
        hits: AtomicU64::new(0),
    });
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(c): State<Arc<Counted>>| async move {
                if c.healthy {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        )
        .fallback(
            |State(c): State<Arc<Counted>>, uri: axum::http::Uri| async move {
                c.hits.fetch_add(1, Ordering::SeqCst);
                let status = if c.failing.load(Ordering::SeqCst) {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                };
                (status, Json(json!({ "path": uri.path() })))
            },
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, state)
}

const ADMIN_TOKEN: &str = "admin-token-for-the-tests-0123456789";

/// The value of exactly `series` (name and every label) in a metrics text; the test fails
/// when it is absent, so that a misspelt series cannot pass for a zero.
fn sample(m: &str, series: &str) -> f64 {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{m}"))
}

/// Where the parts that gather state live.
struct Parts {
    admin: u16,
    issuer: String,
    /// A group whose only backend fails its health check.
    sick: u16,
    /// A group whose only backend answers 500 (passive health).
    flaky: u16,
    /// The service of the `card` aggregate (its breaker).
    breaking: u16,
    /// The service of the cached `doc` aggregate.
    docs: u16,
}

/// A gateway section with state in every part a reload must keep; `per_minute` is the key a
/// reload changes, unrelated to all of them.
fn stateful(p: &Parts, per_minute: u64) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:{admin}" }}
auth:
  issuers:
    - issuer: "{issuer}"
      discovery: true
      allow_insecure_http: true
      audiences: [gateway]
      algorithms: [RS256]
rate_limit: {{ per_minute: {per_minute} }}
services:
  breaking: {{ url: "http://127.0.0.1:{breaking}", retry: {{ attempts: 1 }}, breaker: {{ failures: 2, open_ms: 600000 }} }}
  docs: {{ url: "http://127.0.0.1:{docs}" }}
aggregates:
  - name: card
    path: "/card/{{id}}"
    legs:
      user: {{ service: breaking, path: "/users/{{id}}", required: true, expect: object }}
  - name: doc
    path: "/doc/{{id}}"
    cache: {{ ttl_seconds: 300, key: "doc:{{id}}", local: {{ max_entries: 100, ttl_seconds: 300 }} }}
    legs:
      user: {{ service: docs, path: "/users/{{id}}", required: true, expect: object }}
upstreams:
  sick: {{ backends: ["127.0.0.1:{sick}"], health_check: {{ path: "/healthz", interval_ms: 1500 }} }}
  flaky: {{ backends: ["127.0.0.1:{flaky}"], health_check: {{ kind: tcp, interval_ms: 1000 }}, passive: {{ failures: 3, open_ms: 600000 }} }}
routes:
  - {{ prefix: "/sick/", upstream: sick, strip_prefix: true }}
  - {{ prefix: "/flaky/", upstream: flaky, strip_prefix: true }}
"#,
        admin = p.admin,
        issuer = p.issuer,
        breaking = p.breaking,
        docs = p.docs,
        sick = p.sick,
        flaky = p.flaky,
    )
}

async fn get_status(gw: &Gateway, path: &str, bearer: &str) -> (u16, reqwest::Response) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r)
}

/// The backend of `group` as `GET /status/upstreams` shows it, and the generation shown.
async fn upstream_status(admin: u16, group: &str) -> (Value, Value) {
    let v: Value = client()
        .get(format!("http://127.0.0.1:{admin}/status/upstreams"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let backend = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
        .map(|g| g["backends"][0].clone())
        .unwrap_or(Value::Null);
    (backend, v["generation"].clone())
}

#[tokio::test]
async fn a_reload_keeps_health_breakers_keys_and_cached_documents() {
    let mut idp = common::Mocks::start(&["idp"]);
    let redis = common::Redis::start();
    let (sick, sick_backend) = counted(false, false).await;
    let (flaky, flaky_backend) = counted(true, true).await;
    let (breaking, breaking_service) = counted(true, true).await;
    let (docs, docs_service) = counted(true, false).await;
    let parts = Parts {
        admin: common::free_port(),
        issuer: idp.url("idp"),
        sick,
        flaky,
        breaking,
        docs,
    };
    let gw = Gateway::start(
        &stateful(&parts, 100_000),
        &[
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
            ("REDIS_ADDR", redis.addr()),
        ],
    )
    .await;
    let hs = token("7");
    let issuer = &parts.issuer;
    let series = |name: &str, labels: String| format!("{name}{{{labels}}}");
    let sick_healthy = series(
        "upstream_backend_healthy",
        format!(r#"backend="127.0.0.1:{sick}",group="sick""#),
    );
    let jwks_ok = series(
        "jwks_refresh_total",
        format!(r#"issuer="{issuer}",result="ok""#),
    );
    let jwks_error = series(
        "jwks_refresh_total",
        format!(r#"issuer="{issuer}",result="error""#),
    );
    let breaker_open = r#"upstream_requests_total{outcome="breaker_open",service="breaking"}"#;

    // Health: the check takes the sick backend out.
    eventually(
        "the health check marks the backend down",
        Duration::from_secs(10),
        async || sample(&gw.metrics().await, &sick_healthy) == 0.0,
    )
    .await;
    assert_eq!(get_status(&gw, "/sick/x", &hs).await.0, 503);
    // Passive health: three 500s open the flaky backend's breaker; then it is skipped.
    for _ in 0..3 {
        assert_eq!(get_status(&gw, "/flaky/x", &hs).await.0, 500);
    }
    assert_eq!(get_status(&gw, "/flaky/x", &hs).await.0, 503);
    // A service breaker: two failed calls open it; the next request fails fast.
    for _ in 0..2 {
        assert_eq!(get_status(&gw, "/card/1", &hs).await.0, 502);
    }
    assert_eq!(get_status(&gw, "/card/1", &hs).await.0, 503);
    // Keys: fetched once at start.
    let mint = async |sub: &str| -> String {
        let r: Value = client()
            .post(format!("{}/token", idp.url("idp")))
            .json(&json!({"sub": sub, "alg": "RS256"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap().to_string()
    };
    let before_reload = mint("8").await;
    let after_reload = mint("9").await;
    assert_eq!(get_status(&gw, "/doc/0", &before_reload).await.0, 200);
    assert_eq!(idp.count("idp", "/jwks").await, 1);
    // A cached document, answered from this process's memory.
    eventually(
        "the invalidation feed is up",
        Duration::from_secs(10),
        async || metric(&gw.metrics().await, "cache_invalidation_feed_up") == 1.0,
    )
    .await;
    let (_, r) = get_status(&gw, "/doc/1", &hs).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    eventually(
        "the document is cached",
        Duration::from_secs(10),
        async || get_status(&gw, "/doc/1", &hs).await.1.headers()["x-cache"] == "HIT",
    )
    .await;

    // The provider goes away: from now on only keys already loaded can verify a token.
    idp.proc.kill();
    let (sick_hits, flaky_hits, breaking_hits, docs_hits) = (
        sick_backend.hits.load(Ordering::SeqCst),
        flaky_backend.hits.load(Ordering::SeqCst),
        breaking_service.hits.load(Ordering::SeqCst),
        docs_service.hits.load(Ordering::SeqCst),
    );
    assert_eq!((sick_hits, flaky_hits, breaking_hits), (0, 3, 2));
    // Both would answer now: only their state keeps them out.
    flaky_backend.failing.store(false, Ordering::SeqCst);
    breaking_service.failing.store(false, Ordering::SeqCst);
    let m = gw.metrics().await;
    let opened = sample(&m, breaker_open);
    assert_eq!(
        sample(&m, r#"circuit_breaker_state{service="breaking"}"#),
        1.0
    );
    let redis_gets = redis.calls("get");

    // A reload that changes a key none of these parts reads.
    gw.rewrite(&stateful(&parts, 100_001));
    gw.proc.signal("HUP");
    eventually("the reload applied", Duration::from_secs(10), async || {
        metric(&gw.metrics().await, "config_generation") == 2.0
    })
    .await;

    // Health: still out, without a new check (a new group would start healthy).
    let m = gw.metrics().await;
    assert_eq!(sample(&m, &sick_healthy), 0.0, "{m}");
    let (s, r) = get_status(&gw, "/sick/x", &hs).await;
    assert_eq!(s, 503, "{:?}", r.text().await);
    let (backend, generation) = upstream_status(parts.admin, "sick").await;
    assert_eq!((generation, &backend["healthy"]), (json!(2), &json!(false)));
    // Passive health: the breaker is still open.
    assert_eq!(get_status(&gw, "/flaky/x", &hs).await.0, 503);
    let (backend, _) = upstream_status(parts.admin, "flaky").await;
    assert_eq!(backend["breaker"], "open", "{backend}");
    // The service breaker: still open, failing fast.
    assert_eq!(get_status(&gw, "/card/1", &hs).await.0, 503);
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"circuit_breaker_state{service="breaking"}"#),
        1.0
    );
    assert_eq!(sample(&m, breaker_open), opened + 1.0);
    assert_eq!(
        (
            sick_backend.hits.load(Ordering::SeqCst),
            flaky_backend.hits.load(Ordering::SeqCst),
            breaking_service.hits.load(Ordering::SeqCst),
        ),
        (sick_hits, flaky_hits, breaking_hits),
        "nothing reached the backends kept out"
    );
    // Keys: a token never seen before is verified with the keys loaded before the reload.
    let (s, r) = get_status(&gw, "/doc/1", &after_reload).await;
    assert_eq!(s, 200, "{:?}", r.text().await);
    let m = gw.metrics().await;
    assert_eq!((sample(&m, &jwks_ok), sample(&m, &jwks_error)), (1.0, 0.0));
    // The cached document: still in this process's memory (Redis not even asked).
    let (_, r) = get_status(&gw, "/doc/1", &hs).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(redis.calls("get"), redis_gets, "answered from memory");
    assert_eq!(docs_service.hits.load(Ordering::SeqCst), docs_hits);
}
