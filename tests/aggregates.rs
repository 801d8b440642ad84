//! Declared aggregates against the real gateway and a real test service: values passed between
//! stages, independent legs overlapping, required and optional legs failing, skipped
//! dependants, `for_each` fan-out with its concurrency bound and order, `max_items`, encoding of
//! values into paths, and `gateway -t` refusing broken graphs.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use common::{client, Gateway};
use serde_json::{json, Value};

/// What the test service saw.
#[derive(Default)]
struct Seen {
    /// `/item/…` calls in flight now, and the most at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// The same for `/echo/…` calls.
    echo_in_flight: AtomicUsize,
    echo_max_in_flight: AtomicUsize,
    /// Raw request targets, in arrival order.
    targets: Mutex<Vec<String>>,
}

type Shared = Arc<Seen>;

#[derive(serde::Deserialize)]
struct Delay {
    delay: Option<u64>,
}

/// `/echo/{v}?delay=ms` → `{"value": v, "code": "a/../b", "n": 3}` (counts concurrency);
/// `/status/{code}` answers that
/// status (`slow`: after 2 s); `/items/{n}` → `n` items; `/item/{pid}` → the item (counts
/// concurrency); `/raw/{…}` → the raw target it was asked for.
async fn service() -> (u16, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/echo/{v}",
            get(
                |State(s): State<Shared>, Path(v): Path<String>, Query(d): Query<Delay>| async move {
                    let now = s.echo_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    s.echo_max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(d.delay.unwrap_or(0))).await;
                    s.echo_in_flight.fetch_sub(1, Ordering::SeqCst);
                    Json(json!({"value": v, "code": "a/../b", "n": 3}))
                },
            ),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<String>| async move {
                if code == "slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return Json(json!({})).into_response();
                }
                let status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
                (status, Json(json!({"status": code}))).into_response()
            }),
        )
        .route(
            "/items/{n}",
            get(|Path(n): Path<usize>| async move {
                Json(Value::Array(
                    (0..n).map(|i| json!({"pid": format!("p{i}")})).collect(),
                ))
            }),
        )
        .route(
            "/item/{pid}",
            get(
                |State(s): State<Shared>, Path(pid): Path<String>| async move {
                    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    s.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if pid == "p3" {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "no").into_response();
                    }
                    Json(json!({"pid": pid})).into_response()
                },
            ),
        )
        .fallback(|State(s): State<Shared>, uri: Uri| async move {
            s.targets.lock().unwrap().push(uri.to_string());
            Json(json!({"target": uri.to_string()})).into_response()
        })
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

/// Every aggregate of these tests, on one service `t`.
fn section(port: u16) -> String {
    format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/t/"] }}
rate_limit: {{ per_minute: 1000000 }}
services:
  t: {{ url: "http://127.0.0.1:{port}", timeout_ms: 500, retry: {{ attempts: 1 }}, breaker: {{ failures: 1000, open_ms: 1000 }} }}
  fragile: {{ url: "http://127.0.0.1:{port}", timeout_ms: 500, retry: {{ attempts: 1 }}, breaker: {{ failures: 1, open_ms: 60000 }} }}
  small: {{ url: "http://127.0.0.1:{port}", max_body_bytes: 40 }}
  patient: {{ url: "http://127.0.0.1:{port}", timeout_ms: 5000, retry: {{ attempts: 1 }} }}
aggregates:
  - name: stages
    path: "/t/stages/{{id}}"
    legs:
      slow:   {{ service: patient, path: "/echo/{{id}}?delay=1000", expect: object }}
      middle: {{ service: patient, path: "/echo/m?delay=800", expect: object }}
      fast:   {{ service: patient, path: "/echo/f?delay=600", expect: object }}
      second: {{ service: patient, path: "/echo/{{slow.value}}-2", expect: object }}
      third:  {{ service: patient, path: "/echo/{{second.value}}-3", expect: object }}
    response: {{ first: slow.value, last: third.value, fast: fast }}
  - name: required
    path: "/t/required/{{code}}"
    legs:
      main:  {{ service: t, path: "/status/{{code}}", required: true }}
      after: {{ service: t, path: "/raw/after", after: [main] }}
  - name: breaker
    path: "/t/breaker/{{code}}"
    legs:
      main: {{ service: fragile, path: "/status/{{code}}", required: true }}
  - name: optional
    path: "/t/optional"
    legs:
      broken:    {{ service: t, path: "/status/500", default: {{ "x": 1 }} }}
      dependant: {{ service: t, path: "/echo/{{broken.x}}" }}
      fine:      {{ service: t, path: "/echo/ok", expect: object }}
      shape:     {{ service: t, path: "/echo/ok", expect: array, default: [] }}
  - name: fanout
    path: "/t/fanout/{{n}}"
    legs:
      list: {{ service: t, path: "/items/{{n}}", required: true, expect: array }}
      each: {{ service: t, path: "/item/{{item.pid}}", for_each: list, concurrency: 4, max_items: 10, expect: object }}
  - name: capped
    path: "/t/capped/{{n}}"
    legs:
      list: {{ service: t, path: "/items/{{n}}", required: true, expect: array }}
      each: {{ service: small, path: "/item/{{item.pid}}", for_each: list, expect: object }}
  - name: encoding
    path: "/t/encoding"
    legs:
      source: {{ service: t, path: "/echo/s", expect: object }}
      target: {{ service: t, path: "/raw/{{source.code}}/x" }}
"#
    )
}

async fn get_json(gw: &Gateway, path: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[tokio::test]
async fn stages_pass_values_and_independent_legs_overlap() {
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    let (status, body, _) = get_json(&gw, "/t/stages/a1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"first": "a1", "last": "a1-2-3", "fast": {"value": "f", "code": "a/../b", "n": 3}, "degraded": []})
    );
    // The three legs that wait for nothing were at the service at the same time: held 1000, 800
    // and 600 ms, they overlap unless the gateway sends one only after another has answered
    // (or sends them 600 ms apart). `second` and `third` wait for `slow`, so never more than 3.
    assert_eq!(
        seen.echo_max_in_flight.load(Ordering::SeqCst),
        3,
        "slow, middle and fast in flight at once"
    );
    // Keys in `response` order, `degraded` last.
    let text = client()
        .get(gw.url("/t/stages/a1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
    assert!(at("first") < at("last") && at("last") < at("fast") && at("fast") < at("degraded"));
    assert!(text.ends_with(r#""degraded":[]}"#), "{text}");
    // No cache, no lookups: two answers built are not two cache misses.
    let m = gw.metrics().await;
    assert_eq!(
        common::metric_sum(&m, "cache_requests_total{aggregate=\"stages\""),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_required_leg_decides_the_status_and_its_dependants_never_run() {
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    for (code, want) in [("404", 404), ("500", 502), ("slow", 504), ("200", 200)] {
        let (status, body, _) = get_json(&gw, &format!("/t/required/{code}")).await;
        assert_eq!(status, want, "{code}: {body}");
    }
    // Only the 200 case ran `after`, the leg that waits for `main`.
    assert_eq!(
        seen.targets.lock().unwrap().as_slice(),
        ["/raw/after".to_string()]
    );
    // One failure opens `fragile`'s breaker: the next call is refused without trying.
    assert_eq!(get_json(&gw, "/t/breaker/500").await.0, 502);
    assert_eq!(get_json(&gw, "/t/breaker/200").await.0, 503);
}

#[tokio::test]
async fn optional_legs_fall_back_and_what_needs_them_is_skipped() {
    let (port, _) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    let (status, body, _) = get_json(&gw, "/t/optional").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["broken"], json!({"x": 1}), "the default");
    assert_eq!(body["dependant"], Value::Null, "skipped: its default");
    assert_eq!(body["fine"]["value"], "ok");
    assert_eq!(
        body["shape"],
        json!([]),
        "not the expected shape: the default"
    );
    assert_eq!(body["degraded"], json!(["broken", "dependant", "shape"]));
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"aggregate_degraded_total{aggregate="optional",leg="dependant"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn for_each_keeps_order_bounds_concurrency_and_degrades_what_it_drops() {
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    // Eight items, the fourth fails: dropped, key degraded, order kept.
    let (status, body, _) = get_json(&gw, "/t/fanout/8").await;
    assert_eq!(status, 200, "{body}");
    let pids: Vec<&str> = body["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pid"].as_str().unwrap())
        .collect();
    assert_eq!(pids, ["p0", "p1", "p2", "p4", "p5", "p6", "p7"]);
    assert_eq!(body["degraded"], json!(["each"]));
    // Twenty items with concurrency 4 and max_items 10: never more than 4 at once, and only 10.
    seen.max_in_flight.store(0, Ordering::SeqCst);
    let (_, body, _) = get_json(&gw, "/t/fanout/20").await;
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(
        body["each"].as_array().unwrap().len(),
        9,
        "10 fetched, p3 failed"
    );
    assert_eq!(body["degraded"], json!(["each"]));
    // Three items, none failing: not degraded.
    let (_, body, _) = get_json(&gw, "/t/fanout/3").await;
    assert_eq!(
        body["each"],
        json!([{"pid": "p0"}, {"pid": "p1"}, {"pid": "p2"}])
    );
    assert_eq!(body["degraded"], json!([]));
}

#[tokio::test]
async fn a_for_each_value_is_bounded_like_one_document() {
    let (port, _) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    // Each item is 12 bytes; with a 40-byte bound, three fit (`[` + 3 × 12 + 2 commas + `]`).
    let (status, body, _) = get_json(&gw, "/t/capped/3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["each"].as_array().unwrap().len(), 3);
    assert_eq!(body["degraded"], json!([]));
    let (_, body, _) = get_json(&gw, "/t/capped/8").await;
    let pids: Vec<&str> = body["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pid"].as_str().unwrap())
        .collect();
    assert_eq!(
        pids,
        ["p0", "p1", "p2"],
        "p3 failed, the rest over the bound"
    );
    assert_eq!(body["degraded"], json!(["each"]));
}

#[tokio::test]
async fn a_value_with_slashes_or_dots_is_one_encoded_segment() {
    let (port, seen) = service().await;
    let gw = Gateway::start(&section(port), &[]).await;
    let (status, body, _) = get_json(&gw, "/t/encoding").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        seen.targets.lock().unwrap().as_slice(),
        ["/raw/a%2F%2E%2E%2Fb/x".to_string()]
    );
}

/// A port whose accept queue is full: the kernel drops every new SYN, so a connect hangs until
/// the connector gives up (a host that is down behind a firewall). Keep the guard alive.
fn a_port_that_drops_syns() -> (u16, tokio::net::TcpListener, std::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The one connection the queue holds, never accepted.
    let held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    (port, listener, held)
}

#[tokio::test]
async fn a_services_connect_timeout_is_its_own() {
    let (port, _listener, _held) = a_port_that_drops_syns();
    let section = format!(
        r#"auth: {{ public_paths: ["/healthz", "/readyz", "/t/"] }}
services:
  down: {{ url: "http://127.0.0.1:{port}", connect_timeout_ms: 3500, timeout_ms: 9000, retry: {{ attempts: 1 }} }}
aggregates:
  - name: down
    path: "/t/down/{{id}}"
    legs:
      only: {{ service: down, path: "/x/{{id}}", required: true }}
"#
    );
    let gw = Gateway::start(&section, &[]).await;
    let (status, body, took) = get_json(&gw, "/t/down/1").await;
    assert!(status >= 500, "{status} {body}");
    // Past the old fixed 2 s connect timeout, and ended by this one, not by the 9 s budget.
    assert!(
        took >= Duration::from_millis(3000) && took < Duration::from_millis(8500),
        "answered after {took:?}"
    );
}

#[test]
fn gateway_t_refuses_a_broken_graph_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (aggregates, want) in [
        (
            "  - { name: a, path: '/a/{id}', legs: { x: { service: user, path: '/{y.id}' }, y: { service: user, path: '/{x.id}' } } }",
            "dependency cycle: x → y → x",
        ),
        (
            "  - { name: a, path: '/a/{id}', legs: { x: { service: nowhere, path: '/u' } } }",
            "gateway.aggregates[0].legs.x.service",
        ),
    ] {
        let path = dir.path().join("gateway.yaml");
        let services = "  services: { user: { url: 'http://127.0.0.1:1' } }\n";
        std::fs::write(
            &path,
            format!("gateway:\n{services}  aggregates:\n{aggregates}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(common::gateway_bin())
            .args(["-t", "-c"])
            .arg(&path)
            .env("JWT_SECRET", common::SECRET)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{aggregates}: {err}");
    }
}
