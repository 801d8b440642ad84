//! The profile endpoint against the real gateway, the mocks with fault injection and a real
//! redis-server: cache-aside, retries, breakers, fan-out, coalescing, authorization, bad input.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{
    client, eventually, profile_aggregate, raw_request, service_env, token, token_with_roles,
    Gateway, Mocks, Redis,
};
use serde_json::{json, Value};

const ALL: [&str; 4] = ["user", "order", "product", "recommendation"];

/// Fast retries, a breaker that does not open unless `breaker_failures` says so, and the TTL.
fn section(ttl: u64, breaker_failures: u32) -> String {
    section_with(ttl, breaker_failures, 10_000, 2000)
}

/// As [`section`], with the aggregate's deadline and each call's timeout.
fn section_with(ttl: u64, breaker_failures: u32, deadline_ms: u64, timeout_ms: u64) -> String {
    let svc = format!(
        "{{ retry: {{ attempts: 3, backoff_ms: 20 }}, breaker: {{ failures: {breaker_failures}, open_ms: 500 }}, timeout_ms: {timeout_ms} }}"
    );
    format!(
        "rate_limit: {{ per_minute: 100000 }}\n{}services:\n  user: {svc}\n  order: {svc}\n  product: {svc}\n  recommendation: {svc}\n",
        profile_aggregate(ttl, deadline_ms)
    )
}

async fn start(mocks: &Mocks, section: &str, redis: Option<&Redis>) -> Gateway {
    let mut env = service_env(mocks);
    if let Some(r) = redis {
        env.push(("REDIS_ADDR", r.addr()));
    }
    Gateway::start(section, &env).await
}

async fn profile(gw: &Gateway, id: &str, sub: &str) -> (u16, String, Value) {
    let r = client()
        .get(gw.url(&format!("/api/profile/{id}")))
        .bearer_auth(token(sub))
        .send()
        .await
        .expect("answered");
    let status = r.status().as_u16();
    let cache = common::x_cache(&r);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

async fn cache_aside_scenario(redis: Option<&Redis>) {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(1, 100), redis).await;
    let (s, cache, body) = profile(&gw, "1", "1").await;
    assert_eq!((s, cache.as_str()), (200, "MISS"));
    assert_eq!(body["user"]["id"], "1");
    for k in ["orders", "products", "recommendations"] {
        assert!(
            body[k].as_array().is_some_and(|a| !a.is_empty()),
            "{k}: {body}"
        );
    }
    assert_eq!(body["degraded"], json!([]));
    // The write is asynchronous: wait for the hit rather than racing it.
    eventually("cached", Duration::from_secs(5), async || {
        profile(&gw, "1", "1").await.1 == "HIT"
    })
    .await;
    let calls = mocks.count("user", "/users/{id}").await;
    let (s, cache, hit) = profile(&gw, "1", "1").await;
    assert_eq!((s, cache.as_str()), (200, "HIT"));
    assert_eq!(hit, body, "the cached document is the same document");
    assert_eq!(
        mocks.count("user", "/users/{id}").await,
        calls,
        "a hit makes no upstream call"
    );
    if let Some(r) = redis {
        // Keys end in `#<declaration fingerprint>`.
        let key = r
            .keys("profile:1#*")
            .pop()
            .expect("the cached document's key");
        let ttl = r.ttl(&key);
        assert!((0..=1).contains(&ttl), "profile:1 has TTL {ttl}");
    }
    eventually(
        "expired after the TTL",
        Duration::from_secs(5),
        async || profile(&gw, "1", "1").await.1 == "MISS",
    )
    .await;
}

#[tokio::test]
async fn cache_aside_on_the_embedded_store() {
    cache_aside_scenario(None).await;
}

#[tokio::test]
async fn cache_aside_on_redis() {
    let redis = Redis::start();
    cache_aside_scenario(Some(&redis)).await;
}

#[tokio::test]
async fn user_service_statuses_and_retries() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(0, 100), None).await;
    let admin = token_with_roles("ops", &["admin"]);
    let get = async |id: &str| {
        let r = client()
            .get(gw.url(&format!("/api/profile/{id}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let users = async || mocks.count("user", "/users/{id}").await;

    let (s, v) = get("1001").await;
    assert_eq!(s, 404);
    assert_eq!(v["error"], "not_found");

    let before = users().await;
    mocks
        .faults("user", json!({"status": 500, "fail_next": 2}))
        .await;
    assert_eq!(get("2").await.0, 200);
    assert_eq!(users().await - before, 3, "two failures and a success");

    let before = users().await;
    mocks.faults("user", json!({"status": 500})).await;
    let (s, v) = get("2").await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "bad_gateway");
    assert_eq!(users().await - before, 3, "three attempts, then 502");

    let before = users().await;
    mocks.faults("user", json!({"status": 400})).await;
    assert_eq!(get("2").await.0, 502);
    assert_eq!(users().await - before, 1, "a 4xx is never retried");

    for (fault, name) in [
        (json!({"body": "invalid_json"}), "invalid JSON"),
        (json!({"body": "large"}), "2 MiB"),
    ] {
        mocks.faults("user", fault).await;
        assert_eq!(get("2").await.0, 502, "{name} from the user service");
    }
}

#[tokio::test]
async fn failing_dependency_degrades_then_breaker_opens_and_recovers() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 3), None).await;
    let recs = async || mocks.count("recommendation", "/recommendations/{id}").await;
    mocks.faults("recommendation", json!({"down": true})).await;

    let (s, cache, body) = profile(&gw, "3", "3").await;
    assert_eq!(s, 200);
    assert_eq!(body["recommendations"], json!([]));
    assert_eq!(body["degraded"], json!(["recommendations"]));
    assert!(body["orders"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(recs().await, 3, "three attempts open the breaker");

    let (s, cache2, body2) = profile(&gw, "3", "3").await;
    assert_eq!(
        (s, cache.as_str(), cache2.as_str()),
        (200, "MISS", "MISS"),
        "degraded answers are not cached"
    );
    assert_eq!(body2["degraded"], json!(["recommendations"]));
    assert_eq!(recs().await, 3, "an open breaker makes no call");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"circuit_breaker_state{service="recommendation"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"aggregate_degraded_total{aggregate="profile",leg="recommendations"} 2"#));

    mocks.faults("recommendation", json!({})).await;
    eventually(
        "breaker closes after one probe",
        Duration::from_secs(5),
        async || profile(&gw, "3", "3").await.2["degraded"] == json!([]),
    )
    .await;
    assert_eq!(recs().await, 4, "exactly one probe after open_ms");
    assert!(gw
        .metrics()
        .await
        .contains(r#"circuit_breaker_state{service="recommendation"} 0"#));
}

#[tokio::test]
async fn bad_bodies_from_a_dependency_degrade_it() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(0, 100), None).await;
    for fault in [
        json!({"body": "invalid_json"}),
        json!({"body": "html"}),
        json!({"body": "large"}),
    ] {
        mocks.faults("order", fault.clone()).await;
        let (s, _, body) = profile(&gw, "4", "4").await;
        assert_eq!(s, 200, "{fault}");
        assert_eq!(body["orders"], json!([]), "{fault}");
        assert_eq!(body["degraded"], json!(["orders"]), "{fault}");
    }
}

#[tokio::test]
async fn fan_out_is_concurrent() {
    let mocks = Mocks::start(&ALL);
    // Calls may take 5 s: the 1.5 s legs below are slow, not failed.
    let gw = start(&mocks, &section_with(0, 100, 10_000, 5000), None).await;
    profile(&gw, "5", "5").await; // warm the connection pools
    for service in ["order", "product", "recommendation"] {
        mocks.faults(service, json!({"delay_ms": 1500})).await;
    }
    let started = Instant::now();
    let (s, _, body) = profile(&gw, "5", "5").await;
    let took = started.elapsed();
    assert_eq!(s, 200);
    assert_eq!(body["degraded"], json!([]), "every leg answered");
    // Each of the three legs takes 1.5 s, so the answer comes after one of them at least, and
    // any two of them one after the other would take 3 s: a bound 1.5 s above the concurrent
    // time, which a loaded machine does not add to one request.
    assert!(
        took >= Duration::from_millis(1500),
        "took {took:?}: a slow leg was not waited for"
    );
    assert!(
        took < Duration::from_millis(3000),
        "took {took:?}: two calls ran one after the other"
    );
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_round() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 100), None).await;
    mocks.faults("user", json!({"delay_ms": 300})).await;
    let statuses = common::concurrent_gets(vec![gw.url("/api/profile/7"); 50], &token("7")).await;
    assert_eq!(statuses, vec![200; 50]);
    assert_eq!(mocks.count("user", "/users/{id}").await, 1);
    assert_eq!(mocks.count("order", "/orders/user/{id}").await, 1);
}

#[tokio::test]
async fn redis_down_bypasses_the_cache_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 100), Some(&redis)).await;
    eventually("cached", Duration::from_secs(5), async || {
        profile(&gw, "8", "8").await.1 == "HIT"
    })
    .await;
    redis.proc.kill();
    for _ in 0..5 {
        let (s, cache, body) = profile(&gw, "8", "8").await;
        assert_eq!((s, cache.as_str()), (200, "BYPASS"));
        assert_eq!(body["degraded"], json!([]));
    }
    let bypassed = common::metric_sum(
        &gw.metrics().await,
        r#"cache_requests_total{aggregate="profile",result="bypass"}"#,
    );
    assert_eq!(bypassed, 5.0, "each read while Redis is down");
    let redis = Redis::start_on(port);
    eventually("caching resumes", Duration::from_secs(10), async || {
        profile(&gw, "8", "8").await.1 == "HIT"
    })
    .await;
    let keys = redis.keys("profile:*");
    assert!(
        matches!(&keys[..], [k] if k.starts_with("profile:8#")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn corrupt_cached_value_is_a_miss_that_gets_overwritten() {
    let redis = Redis::start();
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 100), Some(&redis)).await;
    // The key carries the declaration's fingerprint: learn it from a first fill.
    assert_eq!(profile(&gw, "9", "9").await.1, "MISS");
    // The entry is written after the answer goes out: wait for it to land.
    eventually("the entry is written", Duration::from_secs(5), async || {
        !redis.keys("profile:9#*").is_empty()
    })
    .await;
    let key = redis
        .keys("profile:9#*")
        .pop()
        .expect("the cached document's key");
    let mut c = redis.conn().unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("{not json")
        .query(&mut c)
        .unwrap();
    let (s, cache, _) = profile(&gw, "9", "9").await;
    assert_eq!((s, cache.as_str()), (200, "MISS"));
    eventually("overwritten", Duration::from_secs(5), async || {
        profile(&gw, "9", "9").await.1 == "HIT"
    })
    .await;
}

#[tokio::test]
async fn object_level_authorization() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(0, 100), None).await;
    let (s, _, v) = profile(&gw, "6", "5").await;
    assert_eq!(s, 403);
    assert_eq!(v["error"], "forbidden");
    let r = client()
        .get(gw.url("/api/profile/6"))
        .bearer_auth(token_with_roles("5", &["admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, v) = profile(&gw, "me", "5").await;
    assert_eq!(s, 200);
    assert_eq!(v["user"]["id"], "5");
    let r = client().get(gw.url("/api/profile/5")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_ids_are_400() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(0, 100), None).await;
    let t = token_with_roles("ops", &["admin"]);
    let long = "a".repeat(65);
    // (`../1` is normalised to /api/1 before routing: a 404, not this aggregate's.)
    for id in [long.as_str(), "%00", "", "a%2Fb", "a.b", "a;b"] {
        let req = format!(
            "GET /api/profile/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(gw.port, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{id:?}: {resp}");
        assert!(resp.contains(r#""error":"bad_request""#), "{id:?}: {resp}");
    }
    assert_eq!(mocks.count("user", "/users/{id}").await, 0);
}

#[tokio::test]
async fn client_disconnect_cancels_the_build_and_caches_nothing() {
    let redis = Redis::start();
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 100), Some(&redis)).await;
    mocks.faults("order", json!({"delay_ms": 1500})).await;
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let req = format!(
            "GET /api/profile/11 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token("11")
        );
        s.write_all(req.as_bytes()).await.unwrap();
        eventually("the fan-out started", Duration::from_secs(5), async || {
            mocks.count("order", "/orders/user/{id}").await == 1
        })
        .await;
    } // the client hangs up here, mid-build
    eventually(
        "the gateway saw the client go",
        Duration::from_secs(5),
        async || {
            gw.metrics()
                .await
                .contains(r#"route="profile",status="0"} 1"#)
        },
    )
    .await;
    mocks.faults("order", json!({})).await;
    // Had the first build survived, this request would have joined it (one user call in all).
    let (s, cache, body) = profile(&gw, "11", "11").await;
    assert_eq!((s, cache.as_str()), (200, "MISS"));
    assert_eq!(body["degraded"], json!([]));
    assert_eq!(
        mocks.count("user", "/users/{id}").await,
        2,
        "the abandoned build was dropped"
    );
    eventually(
        "the complete build is cached",
        Duration::from_secs(5),
        async || profile(&gw, "11", "11").await.1 == "HIT",
    )
    .await;
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_request() {
    let mocks = Mocks::start(&ALL);
    // A per-call timeout far above the deadline, so that only the deadline can answer early.
    let section = section_with(0, 100, 600, 5000);
    let gw = start(&mocks, &section, None).await;
    // A dependency slower than the deadline: answered at the deadline with what there is.
    mocks.faults("product", json!({"delay_ms": 8000})).await;
    let started = Instant::now();
    let (s, _, body) = profile(&gw, "12", "12").await;
    assert_eq!(s, 200);
    assert_eq!(body["degraded"], json!(["products"]));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}: not the 600 ms deadline",
        started.elapsed()
    );
    // The user itself slower than the deadline: 504 at the deadline, not at the call timeout.
    mocks.faults("user", json!({"delay_ms": 8000})).await;
    let started = Instant::now();
    let (s, _, body) = profile(&gw, "12", "12").await;
    assert_eq!(s, 504);
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}: not the 600 ms deadline",
        started.elapsed()
    );
}

#[tokio::test]
async fn head_on_an_aggregate_answers_its_headers_without_a_body() {
    let mocks = Mocks::start(&ALL);
    let gw = start(&mocks, &section(30, 100), None).await;
    let get = client()
        .get(gw.url("/api/profile/3"))
        .bearer_auth(token("3"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let length = get.headers()["content-length"].clone();
    let head = client()
        .head(gw.url("/api/profile/3"))
        .bearer_auth(token("3"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(
        common::x_cache(&head),
        "HIT",
        "HEAD reads the cache like GET"
    );
    assert_eq!(head.headers()["content-length"], length, "the GET's length");
    assert!(head.bytes().await.unwrap().is_empty());
    let post = client()
        .post(gw.url("/api/profile/3"))
        .bearer_auth(token("3"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405, "GET and HEAD only");
}
