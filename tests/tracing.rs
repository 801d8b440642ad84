//! Distributed tracing against a real OTLP/HTTP receiver (spans decoded with
//! `opentelemetry-proto`), the real gateway and real upstreams that record the `traceparent`
//! they received: parenting, one span per attempt, single-flight links, malformed context,
//! sampling at 0, the cache status and request id on the SERVER span, a skipped leg's span,
//! and a collector that is down, stalled, or back (logged once each way).
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use common::{client, eventually, parse_traceparent, token, Collector, EchoServer, Gateway};
use serde_json::json;

/// What the test service saw: the `traceparent` of every request, by path.
#[derive(Default)]
struct Seen {
    traceparents: Mutex<Vec<(String, String)>>,
    /// `/flaky/{id}` calls per id: the first two fail.
    flaky: Mutex<HashMap<String, u32>>,
}

fn record(s: &Seen, path: String, h: &HeaderMap) {
    let tp = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.traceparents.lock().unwrap().push((path, tp));
}

/// `/user/{id}`, `/flaky/{id}` (503 twice per id, then 200), `/list` (3 items), `/item/{n}`,
/// `/slow/{id}` (500 ms).
async fn service() -> (u16, Arc<Seen>) {
    let seen: Arc<Seen> = Arc::default();
    let app = Router::new()
        .route(
            "/user/{id}",
            get(
                |State(s): State<Arc<Seen>>, Path(id): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("/user/{id}"), &h);
                    Json(json!({"id": id}))
                },
            ),
        )
        .route(
            "/flaky/{id}",
            get(
                |State(s): State<Arc<Seen>>, Path(id): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("/flaky/{id}"), &h);
                    let n = {
                        let mut m = s.flaky.lock().unwrap();
                        let n = m.entry(id).or_insert(0);
                        *n += 1;
                        *n
                    };
                    if n <= 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
                    } else {
                        Json(json!({"ok": true})).into_response()
                    }
                },
            ),
        )
        .route(
            "/list",
            get(|State(s): State<Arc<Seen>>, h: HeaderMap| async move {
                record(&s, "/list".into(), &h);
                Json(json!([{"n": 1}, {"n": 2}, {"n": 3}]))
            }),
        )
        .route(
            "/item/{n}",
            get(
                |State(s): State<Arc<Seen>>, Path(n): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("/item/{n}"), &h);
                    Json(json!({"n": n}))
                },
            ),
        )
        .route(
            "/slow/{id}",
            get(
                |State(s): State<Arc<Seen>>, Path(id): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("/slow/{id}"), &h);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Json(json!({"id": id}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

/// Tracing to `collector`, one traced aggregate `/t/{id}` and a slow one `/slow/{id}` on the
/// test service, and `extra` (upstreams, routes).
fn section(collector: &str, ratio: f64, port: u16, extra: &str) -> String {
    format!(
        r#"tracing: {{ enabled: true, endpoint: "{collector}", sample_ratio: {ratio}, service_name: traced-gw }}
rate_limit: {{ per_minute: 1000000 }}
services:
  t: {{ url: "http://127.0.0.1:{port}", timeout_ms: 2000, retry: {{ attempts: 3, backoff_ms: 20 }}, breaker: {{ failures: 1000, open_ms: 1000 }} }}
aggregates:
  - name: traced
    path: "/t/{{id}}"
    legs:
      user:  {{ service: t, path: "/user/{{id}}", required: true, expect: object }}
      flaky: {{ service: t, path: "/flaky/{{id}}", after: [user], expect: object }}
      list:  {{ service: t, path: "/list", expect: array }}
      each:  {{ service: t, path: "/item/{{item.n}}", for_each: list, expect: object }}
  - name: slow
    path: "/slow/{{id}}"
    legs:
      only: {{ service: t, path: "/slow/{{id}}", required: true, expect: object }}
{extra}"#
    )
}

/// A public `/echo/` route to one echo upstream, for `section`'s `extra`.
fn echo_route(port: u16) -> String {
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/echo/"] }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{port}"] }}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#
    )
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn an_aggregate_is_one_server_span_with_a_client_span_per_attempt_and_upstreams_see_them() {
    let collector = Collector::start().await;
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(&collector.endpoint(), 0.0, port, ""), &[]).await;
    let r = client()
        .get(gw.url("/t/42"))
        .bearer_auth(token("42"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["flaky"], json!({"ok": true}), "{body}");

    // user 1 + flaky 3 + list 1 + items 3 = 8 client spans, and the server span.
    let spans = collector
        .wait_for("the request's 9 spans", |s| {
            s.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 9
        })
        .await;
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .collect();
    let servers: Vec<_> = trace.iter().filter(|s| s.is_server()).collect();
    assert_eq!(servers.len(), 1, "{trace:#?}");
    let server = servers[0];
    assert_eq!(
        server.parent_span_id, CLIENT_SPAN,
        "continues the client's trace"
    );
    assert_eq!(
        server.name, "GET /t/{id}",
        "named after the route, never the raw path"
    );
    assert_eq!(server.attr("http.route"), "/t/{id}");
    assert_eq!(server.attr("gateway.aggregate"), "traced");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert_eq!(server.attr("gateway.auth.outcome"), "ok");
    assert_eq!(server.attr("gateway.rate_limit.decision"), "allowed");
    assert_eq!(server.attr("client.address"), "127.0.0.1");
    assert!(
        !server.attrs.values().any(|v| v.contains("eyJ")),
        "no token in a span"
    );
    assert_eq!(server.service, "traced-gw");

    let clients: Vec<_> = trace.iter().filter(|s| s.is_client()).collect();
    assert_eq!(clients.len(), 8, "{clients:#?}");
    for c in &clients {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "{c:?} hangs under the server span"
        );
    }
    let mut flaky: Vec<_> = clients
        .iter()
        .filter(|c| c.attr("gateway.leg") == "flaky")
        .collect();
    flaky.sort_by_key(|c| c.attr("gateway.attempt").to_string());
    let attempts: Vec<(&str, &str)> = flaky
        .iter()
        .map(|c| (c.attr("gateway.attempt"), c.attr("gateway.outcome")))
        .collect();
    assert_eq!(
        attempts,
        [
            ("1", "server_error"),
            ("2", "server_error"),
            ("3", "success")
        ]
    );
    assert!(flaky[0].events.contains(&"retry_backoff".to_string()));
    assert_eq!(flaky[0].status, 2, "a failed attempt is an error span");
    assert_eq!(flaky[0].attr("gateway.breaker.state"), "closed");
    assert_eq!(flaky[0].attr("gateway.service"), "t");
    let items: HashSet<&str> = clients
        .iter()
        .filter(|c| c.attr("gateway.leg") == "each")
        .map(|c| c.attr("gateway.item"))
        .collect();
    assert_eq!(items, HashSet::from(["0", "1", "2"]), "one span per item");

    // Each upstream request names its own attempt's span as parent; never the client's.
    let client_ids: HashSet<&str> = clients.iter().map(|c| c.span_id.as_str()).collect();
    let received = seen.traceparents.lock().unwrap().clone();
    assert_eq!(received.len(), 8, "{received:?}");
    let mut parents = HashSet::new();
    for (path, tp) in &received {
        let (trace, parent, flags) =
            parse_traceparent(tp).unwrap_or_else(|| panic!("{path}: {tp}"));
        assert_eq!(trace, CLIENT_TRACE);
        assert_eq!(flags, "01");
        assert!(client_ids.contains(parent.as_str()), "{path}: {tp}");
        parents.insert(parent);
    }
    assert_eq!(parents.len(), 8, "every attempt its own span");
    assert!(collector.bad_requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_proxied_connect_failure_retried_elsewhere_is_two_client_spans() {
    let collector = Collector::start().await;
    let echo = EchoServer::start().await;
    // Listening (so the start-up check passes), then closed: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let extra = format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/echo/"] }}
upstreams:
  echo:
    backends: ["127.0.0.1:{dead_port}", "127.0.0.1:{}"]
    health_check: {{ kind: tcp, interval_ms: 60000 }}
    connect_retries: 1
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#,
        echo.port
    );
    let gw = Gateway::start(&section(&collector.endpoint(), 1.0, 1, &extra), &[]).await;
    drop(dead);
    let mut traces = Vec::new();
    for i in 0..6 {
        let tid = format!("{i:032x}").replace('0', "a");
        let r = client()
            .get(gw.url("/echo/x"))
            .header("traceparent", format!("00-{tid}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        traces.push(tid);
    }
    let spans = collector
        .wait_for("six server spans", |s| {
            s.iter().filter(|s| s.is_server()).count() >= 6
        })
        .await;
    // Some request met the dead backend first: its trace has both tries.
    let retried = traces
        .iter()
        .find(|t| {
            spans
                .iter()
                .any(|s| &s.trace_id == *t && s.attr("gateway.outcome") == "connect_error")
        })
        .expect("a request tried the dead backend first");
    let trace = collector.trace(retried);
    let server = trace.iter().find(|s| s.is_server()).unwrap();
    assert_eq!(server.name, "GET /echo/");
    let mut tries: Vec<_> = trace.iter().filter(|s| s.is_client()).collect();
    tries.sort_by_key(|s| s.attr("gateway.attempt").to_string());
    assert_eq!(tries.len(), 2, "{trace:#?}");
    assert_eq!(tries[0].attr("server.port"), dead_port.to_string());
    assert!(matches!(
        tries[0].attr("gateway.upstream.health"),
        "failure" | "ejected"
    ));
    assert_eq!(tries[1].attr("gateway.outcome"), "success");
    assert_eq!(tries[1].attr("http.response.status_code"), "200");
    assert_eq!(tries[1].attr("http.request.resend_count"), "1");
    for t in &tries {
        assert_eq!(t.parent_span_id, server.span_id);
    }
    // The echo saw the second try's span as parent, and no client-sent context.
    let got = echo
        .requests()
        .into_iter()
        .map(|s| s.header("traceparent"))
        .find(|tp| tp.iter().any(|v| v.contains(retried.as_str())))
        .expect("the retried request reached the echo");
    assert_eq!(got.len(), 1, "one traceparent, ours: {got:?}");
    let (_, parent, _) = parse_traceparent(&got[0]).unwrap();
    assert_eq!(parent, tries[1].span_id);
}

#[tokio::test]
async fn concurrent_misses_share_one_set_of_leg_spans_and_followers_link_to_the_leader() {
    let collector = Collector::start().await;
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(&collector.endpoint(), 1.0, port, ""), &[]).await;
    let url = gw.url("/slow/7");
    let bearer = token("7");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (url, bearer) = (url.clone(), bearer.clone());
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(bearer)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let calls = seen.traceparents.lock().unwrap().len();
    let spans = collector
        .wait_for("30 server spans", |s| {
            s.iter().filter(|s| s.is_server()).count() >= 30
        })
        .await;
    let servers: Vec<_> = spans.iter().filter(|s| s.is_server()).collect();
    let leaders: Vec<_> = servers
        .iter()
        .filter(|s| s.attr("gateway.single_flight") == "leader")
        .collect();
    let followers: Vec<_> = servers
        .iter()
        .filter(|s| s.attr("gateway.single_flight") == "follower")
        .collect();
    assert_eq!(calls, 1, "30 concurrent misses share one build");
    assert_eq!(leaders.len(), 1);
    assert_eq!(followers.len(), 29);
    let legs: Vec<_> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(legs.len(), calls, "leg spans only under leaders");
    let leader_ids: HashSet<(String, String)> = leaders
        .iter()
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    for f in &followers {
        assert_eq!(f.links.len(), 1, "{f:?}");
        assert!(leader_ids.contains(&f.links[0]), "links to a leader: {f:?}");
        assert!(
            !spans.iter().any(|s| s.parent_span_id == f.span_id),
            "no legs under a follower"
        );
    }
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace_and_the_access_log_names_it() {
    let collector = Collector::start().await;
    let echo = EchoServer::start().await;
    let extra = echo_route(echo.port);
    let mut gw = Gateway::start(
        &section(&collector.endpoint(), 1.0, 1, &extra),
        &[("RUST_LOG", "warn,access=info".into())],
    )
    .await;
    let bad = "00-ZZf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client()
        .get(gw.url("/readyz"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/echo/m"))
        .header("traceparent", bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the request is unaffected");
    let spans = collector
        .wait_for("the server and client spans", |s| s.len() >= 2)
        .await;
    assert_eq!(spans.len(), 2, "the probe is not traced: {spans:#?}");
    let server = spans.iter().find(|s| s.is_server()).unwrap();
    assert_eq!(server.name, "GET /echo/");
    assert!(server.parent_span_id.is_empty(), "a root span: {server:?}");
    assert_eq!(server.trace_id.len(), 32);
    assert!(
        server.trace_id.bytes().all(|b| b.is_ascii_hexdigit())
            && !bad.to_ascii_lowercase().contains(&server.trace_id),
        "a fresh trace, not the malformed one's: {}",
        server.trace_id
    );
    let tp = echo.requests()[0].header("traceparent");
    assert_eq!(tp.len(), 1);
    assert!(tp[0].contains(&server.trace_id), "{tp:?}");
    assert!(
        !tp[0].contains("ZZ"),
        "the malformed value is not passed on"
    );
    let (out, _) = gw.stop_and_read();
    let line = out
        .lines()
        .find(|l| l.contains("\"route\":\"/echo/\""))
        .expect("access line");
    assert!(
        line.contains(&format!("\"trace_id\":\"{}\"", server.trace_id)),
        "{line}"
    );
}

#[tokio::test]
async fn sampling_at_zero_exports_nothing_yet_propagates_unsampled_context() {
    let collector = Collector::start().await;
    let echo = EchoServer::start().await;
    let extra = echo_route(echo.port);
    let gw = Gateway::start(&section(&collector.endpoint(), 0.0, 1, &extra), &[]).await;
    for _ in 0..20 {
        let r = client().get(gw.url("/echo/u")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A sampled parent is always kept (parent-based): once its span is in, everything queued
    // before it has been exported too.
    let r = client()
        .get(gw.url("/echo/s"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = collector
        .wait_for("the sampled request's spans", |s| {
            s.iter()
                .any(|s| s.is_server() && s.trace_id == CLIENT_TRACE)
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == CLIENT_TRACE),
        "unsampled requests exported nothing: {spans:#?}"
    );
    let seen = echo.requests();
    let unsampled: Vec<String> = seen
        .iter()
        .filter(|s| s.uri.ends_with("/u"))
        .map(|s| s.header("traceparent").join(","))
        .collect();
    assert_eq!(unsampled.len(), 20);
    let mut ids = std::collections::HashSet::new();
    for tp in &unsampled {
        let (trace, span, flags) = parse_traceparent(tp).unwrap_or_else(|| panic!("{tp}"));
        assert_eq!(flags, "00", "propagated, not sampled: {tp}");
        assert!(trace.len() == 32 && span.len() == 16, "{tp}");
        assert!(
            trace != "0".repeat(32) && span != "0".repeat(16),
            "valid ids: {tp}"
        );
        assert!(ids.insert(trace), "a new trace per request: {tp}");
    }
    // A client's unsampled trace is continued unsampled: its trace id and `tracestate` go on,
    // under a span id of the gateway's own, and nothing is exported for it.
    let r = client()
        .get(gw.url("/echo/c"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.requests();
    let continued = seen
        .iter()
        .find(|s| s.uri.ends_with("/c"))
        .expect("the echo saw it");
    let tp = continued.header("traceparent").join(",");
    let (trace, span, flags) = parse_traceparent(&tp).unwrap_or_else(|| panic!("{tp}"));
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (CLIENT_TRACE, "00"),
        "{tp}"
    );
    assert_ne!(
        span, CLIENT_SPAN,
        "the gateway's span id, not the client's: {tp}"
    );
    assert_eq!(
        continued.header("tracestate"),
        vec!["vendor=abc".to_string()]
    );
}

#[tokio::test]
async fn a_collector_down_or_stalled_costs_no_request_and_the_drops_are_counted() {
    let echo = EchoServer::start().await;
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_endpoint = format!("http://127.0.0.1:{}", down.local_addr().unwrap().port());
    drop(down);
    let stalled = Collector::start_stalled().await;
    let extra = echo_route(echo.port);
    for (what, endpoint) in [("down", down_endpoint), ("stalled", stalled.endpoint())] {
        let conf = section(&endpoint, 1.0, 1, &extra).replace(
            "service_name: traced-gw",
            "service_name: traced-gw, max_queue: 64, export_timeout_ms: 300",
        );
        let gw = Gateway::start(&conf, &[]).await;
        let pid = gw.proc.child.id();
        let send = async |n: usize| {
            for batch in 0..n / 100 {
                let urls = (0..100)
                    .map(|i| gw.url(&format!("/echo/{batch}-{i}")))
                    .collect();
                let statuses = common::concurrent_gets(urls, "").await;
                assert!(statuses.iter().all(|s| *s == 200), "{what}: {statuses:?}");
            }
        };
        send(300).await;
        let rss_before = common::rss_kib(pid);
        send(1500).await;
        let rss_after = common::rss_kib(pid);
        assert!(
            rss_after < rss_before + 20 * 1024,
            "{what}: RSS grew {rss_before} → {rss_after} KiB"
        );
        eventually(
            &format!("{what}: dropped spans counted"),
            Duration::from_secs(15),
            async || {
                common::metric_sum(&gw.metrics().await, "tracing_spans_dropped_total{") >= 1000.0
            },
        )
        .await;
    }
}

/// `section` with one more aggregate (YAML list entry, indented as the others) before `slow`.
fn with_aggregate(section: String, aggregate: &str) -> String {
    section.replace("  - name: slow\n", &format!("{aggregate}  - name: slow\n"))
}

/// A header of a response as text ("" when absent).
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn the_server_span_says_miss_hit_or_bypass_and_carries_the_request_id_the_client_got() {
    let mut redis = common::Redis::start();
    let collector = Collector::start().await;
    let (port, _seen) = service().await;
    let conf = with_aggregate(
        section(&collector.endpoint(), 1.0, port, ""),
        r#"  - name: cached
    path: "/c/{id}"
    cache: { ttl_seconds: 60, key: "c:{id}" }
    legs:
      user: { service: t, path: "/user/{id}", required: true, expect: object }
"#,
    );
    let gw = Gateway::start(&conf, &[("REDIS_ADDR", redis.addr())]).await;
    let bearer = token("5");
    // What each request's client got back: (X-Request-Id, X-Cache).
    let mut answered: Vec<(String, String)> = Vec::new();
    let get = async |id: Option<&str>| {
        let mut req = client().get(gw.url("/c/5")).bearer_auth(&bearer);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        (header(&r, "x-request-id"), common::x_cache(&r))
    };
    let first = get(Some("client-chosen-id-1")).await;
    assert_eq!(
        first,
        ("client-chosen-id-1".to_string(), "MISS".to_string()),
        "a valid client id is kept"
    );
    answered.push(first);
    // The entry is written after the answer: asked again until it is served from the cache.
    eventually("a cache hit", Duration::from_secs(10), async || {
        let got = get(None).await;
        let hit = got.1 == "HIT";
        answered.push(got);
        hit
    })
    .await;
    redis.proc.kill();
    let bypassed = get(None).await;
    assert_eq!(bypassed.1, "BYPASS", "the store is gone");
    answered.push(bypassed);

    let ids: HashSet<&str> = answered.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        answered.len(),
        "one id per request: {answered:?}"
    );
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "the gateway names every request: {answered:?}"
    );
    let spans = collector
        .wait_for("a server span per request", |s| {
            s.iter().filter(|s| s.is_server()).count() >= answered.len()
        })
        .await;
    let servers: Vec<_> = spans.iter().filter(|s| s.is_server()).collect();
    assert_eq!(servers.len(), answered.len(), "{servers:#?}");
    for (id, cache) in &answered {
        let span = servers
            .iter()
            .find(|s| s.attr("gateway.request_id") == id)
            .unwrap_or_else(|| panic!("no server span with gateway.request_id {id}: {servers:#?}"));
        assert_eq!(span.name, "GET /c/{id}");
        assert_eq!(
            span.attr("gateway.cache.status"),
            cache,
            "the span says what X-Cache said for {id}"
        );
        let legs = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_id)
            .count();
        assert_eq!(
            legs,
            usize::from(cache != "HIT"),
            "{cache}: a leg span unless served from the cache"
        );
    }
}

/// A collector that keeps each span whole, start and end times included (which `Collector`
/// drops), on a port the test chooses: so that it can stop, and come back where the gateway
/// exports to.
struct Receiver {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16) -> Receiver {
        use axum::body::Bytes;
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use prost::Message;
        type Spans = Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>;
        let spans: Spans = Arc::default();
        let app = Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(|State(spans): State<Spans>, body: Bytes| async move {
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    let got = req
                        .resource_spans
                        .into_iter()
                        .flat_map(|r| r.scope_spans)
                        .flat_map(|s| s.spans);
                    spans.lock().unwrap().extend(got);
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }),
            )
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { spans, stop, task }
    }

    /// Stops listening and closes the connections it holds (the exporter's kept-alive one).
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }

    fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// A span attribute as text ("" when absent).
fn attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_leg_skipped_because_the_leg_it_needs_failed_is_a_zero_length_span_and_never_called() {
    let port = common::free_port();
    let receiver = Receiver::start(port).await;
    let (svc, seen) = service().await;
    // `broken` gets an array where it expects an object: it fails (optional, so degraded),
    // and `needs_broken`, which runs after it, is skipped.
    let conf = with_aggregate(
        section(&format!("http://127.0.0.1:{port}"), 1.0, svc, ""),
        r#"  - name: skipping
    path: "/s/{id}"
    legs:
      user:         { service: t, path: "/user/{id}", required: true, expect: object }
      broken:       { service: t, path: "/list", expect: object }
      needs_broken: { service: t, path: "/user/skipped-{id}", after: [broken], expect: object }
"#,
    );
    let gw = Gateway::start(&conf, &[]).await;
    let r = client()
        .get(gw.url("/s/9"))
        .bearer_auth(token("9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let mut degraded: Vec<&str> = body["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    degraded.sort_unstable();
    assert_eq!(degraded, ["broken", "needs_broken"], "{body}");

    eventually(
        "the skipped leg's span",
        Duration::from_secs(15),
        async || {
            receiver
                .spans()
                .iter()
                .any(|s| s.kind == 2 && attr(s, "http.route") == "/s/{id}")
        },
    )
    .await;
    let spans = receiver.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && attr(s, "http.route") == "/s/{id}")
        .unwrap();
    let skipped: Vec<_> = spans
        .iter()
        .filter(|s| attr(s, "gateway.leg") == "needs_broken")
        .collect();
    assert_eq!(skipped.len(), 1, "one span for the skipped leg: {spans:#?}");
    let skipped = skipped[0];
    assert_eq!(skipped.kind, 3, "a CLIENT span");
    assert_eq!(skipped.parent_span_id, server.span_id);
    assert_eq!(attr(skipped, "gateway.outcome"), "skipped");
    assert_eq!(attr(skipped, "gateway.service"), "t");
    // Skipped once the leg it needs had failed, never before.
    let broken_end = spans
        .iter()
        .filter(|s| attr(s, "gateway.leg") == "broken")
        .inspect(|s| assert_eq!(attr(s, "gateway.outcome"), "bad_body", "{s:?}"))
        .map(|s| s.end_time_unix_nano)
        .max()
        .expect("the failed leg's spans");
    assert!(
        skipped.start_time_unix_nano >= broken_end,
        "skipped at {} ns, before `broken` failed at {broken_end} ns",
        skipped.start_time_unix_nano
    );
    let called: Vec<String> = seen
        .traceparents
        .lock()
        .unwrap()
        .iter()
        .map(|(path, _)| path.clone())
        .collect();
    assert!(
        !called.iter().any(|p| p.starts_with("/user/skipped-")),
        "a skipped leg is never called: {called:?}"
    );
    assert!(called.contains(&"/user/9".to_string()), "{called:?}");
    receiver.stop().await;
    assert_eq!(
        skipped.end_time_unix_nano - skipped.start_time_unix_nano,
        0,
        "zero-length: started {} ns, ended {} ns",
        skipped.start_time_unix_nano,
        skipped.end_time_unix_nano
    );
}

#[tokio::test]
async fn the_exporter_warns_once_when_the_collector_goes_down_and_logs_once_when_it_is_back() {
    let echo = EchoServer::start().await;
    let port = common::free_port();
    let traces = format!("http://127.0.0.1:{port}/v1/traces");
    let mut gw = Gateway::start(
        &section(
            &format!("http://127.0.0.1:{port}"),
            1.0,
            1,
            &echo_route(echo.port),
        ),
        &[("RUST_LOG", "warn,gateway::trace=info".into())],
    )
    .await;
    let exports = async |result: &str| {
        common::metric_sum(
            &gw.metrics().await,
            &format!("tracing_export_requests_total{{result=\"{result}\"}}"),
        )
    };
    // Several batches while nothing listens, several once a collector does: each batch is a
    // request's spans, sent once the previous batch's outcome is counted.
    let batches = async |result: &str, n: u32| {
        for i in 1..=n {
            let before = exports(result).await;
            let r = client()
                .get(gw.url(&format!("/echo/{result}-{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "requests never wait on the collector");
            eventually(
                &format!("export {i} counted as {result}"),
                Duration::from_secs(15),
                async || exports(result).await > before,
            )
            .await;
        }
    };
    batches("error", 3).await;
    let receiver = Receiver::start(port).await;
    batches("ok", 3).await;
    assert!(!receiver.spans().is_empty(), "the collector got spans");
    // Down again, then back again: each change of state is logged once more.
    receiver.stop().await;
    batches("error", 3).await;
    let receiver = Receiver::start(port).await;
    batches("ok", 3).await;
    receiver.stop().await;

    let (_, err) = gw.stop_and_read();
    let export_lines: Vec<&str> = err.lines().filter(|l| l.contains("trace export")).collect();
    let failed: Vec<&&str> = export_lines
        .iter()
        .filter(|l| l.contains("trace export failed"))
        .collect();
    let recovered: Vec<&&str> = export_lines
        .iter()
        .filter(|l| l.contains("trace export recovered"))
        .collect();
    assert_eq!(
        (failed.len(), recovered.len(), export_lines.len()),
        (2, 2, 4),
        "one warning per outage, one line per recovery:\n{err}"
    );
    for (i, line) in export_lines.iter().enumerate() {
        let (level, what) = if i % 2 == 0 {
            ("WARN", "failed")
        } else {
            ("INFO", "recovered")
        };
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], level, "{line}");
        assert!(
            line.contains(&format!("trace export {what}")),
            "in order: {err}"
        );
        assert!(line.contains(&traces), "names the collector: {line}");
    }
}
