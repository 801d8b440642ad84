//! The aggregate cache against real gateways: an entry cached through one replica, inspected
//! and purged by tag through the other's admin listener (one real redis-server), purged by key,
//! `Age` and the remaining `max-age` on hits; tag sets that always carry a TTL; the token and
//! path checks; the embedded store's tags; stale-while-revalidate and stale-if-error; the
//! in-process tiers told of purges through Redis pub/sub (and unused while they cannot be), a
//! purge racing a build, and a mixed minute after which every key still expires.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{
    client, eventually, free_port, metric_sum, profile_aggregate_with, service_env,
    token_with_roles, x_cache, Gateway, Mocks, Redis,
};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-the-tests-0123456789";

fn section(admin_port: u16) -> String {
    section_with(
        admin_port,
        r#"ttl_seconds: 60, key: "profile:{id}", tags: ["user:{id}", "account:{user.id}"]"#,
    )
}

/// The profile aggregate with `cache` (the inside of its `cache: {…}`).
fn section_with(admin_port: u16, cache: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:{admin_port}\" }}\nrate_limit: {{ per_minute: 100000 }}\n{}",
        profile_aggregate_with(10_000, cache)
    )
}

/// A gateway with its admin API on a port of its own.
async fn gateway(mocks: &Mocks, redis: Option<&Redis>) -> (Gateway, u16) {
    let admin = free_port();
    (start(mocks, redis, &section(admin)).await, admin)
}

async fn start(mocks: &Mocks, redis: Option<&Redis>, section: &str) -> Gateway {
    let mut env = service_env(mocks);
    env.push(("ADMIN_TOKEN", ADMIN_TOKEN.to_string()));
    if let Some(r) = redis {
        env.push(("REDIS_ADDR", r.addr()));
    }
    Gateway::start(section, &env).await
}

async fn profile(gw: &Gateway, id: u32) -> reqwest::Response {
    client()
        .get(gw.url(&format!("/api/profile/{id}")))
        .bearer_auth(token_with_roles("admin-1", &["admin"]))
        .send()
        .await
        .unwrap()
}

/// An admin call: status and JSON body.
async fn admin(
    port: u16,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client().request(method, format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Purges every entry tagged `tag` through the admin API on `port`: status and answer.
async fn purge_tag(port: u16, tag: &str) -> (u16, Value) {
    admin(
        port,
        reqwest::Method::POST,
        "/cache/invalidate",
        Some(ADMIN_TOKEN),
        Some(json!({ "tags": [tag] })),
    )
    .await
}

/// Purges the profile entry of `id` through the admin API on `port`: status and answer.
async fn purge_key(port: u16, id: u32) -> (u16, Value) {
    admin(
        port,
        reqwest::Method::DELETE,
        &format!("/cache/profile/profile:{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
}

async fn cached_hit(gw: &Gateway, id: u32) -> reqwest::Response {
    let mut hit = None;
    eventually("the entry is cached", Duration::from_secs(10), async || {
        let r = profile(gw, id).await;
        if x_cache(&r) == "HIT" {
            hit = Some(r);
            true
        } else {
            false
        }
    })
    .await;
    hit.unwrap()
}

#[tokio::test]
async fn a_tag_purged_through_one_replica_is_a_miss_on_the_other() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let (a, _) = gateway(&mocks, Some(&redis)).await;
    let (b, b_admin) = gateway(&mocks, Some(&redis)).await;

    assert_eq!(x_cache(&profile(&a, 7).await), "MISS");
    let hit = cached_hit(&a, 7).await;
    let age: u64 = hit.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 5, "age {age}");
    let cc = hit.headers()["cache-control"].to_str().unwrap().to_string();
    let max_age: u64 = cc
        .strip_prefix("private, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&max_age), "{cc}");

    // B sees the entry A wrote, with its tags (one of them from the user leg's value).
    let (s, v) = admin(
        b_admin,
        reqwest::Method::GET,
        "/cache/profile/profile:7",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["entry"]["tags"], json!(["user:7", "account:7"]));
    assert_eq!(v["entry"]["stale"], false);
    assert!(v["entry"]["ttl_seconds"].as_u64().unwrap() <= 60);

    // Purged by tag through B: A's next read is a miss.
    let (s, v) = admin(
        b_admin,
        reqwest::Method::POST,
        "/cache/invalidate",
        Some(ADMIN_TOKEN),
        Some(json!({"tags": ["account:7", "account:999"]})),
    )
    .await;
    assert_eq!((s, &v["invalidated"]), (200, &json!(1)), "{v}");
    assert_eq!(x_cache(&profile(&a, 7).await), "MISS");
    let m = b.metrics().await;
    assert_eq!(
        metric_sum(&m, r#"cache_invalidations_total{kind="tag"}"#),
        1.0
    );

    // Purged by key: once there, then nothing left to purge.
    cached_hit(&a, 7).await;
    let (s, v) = admin(
        b_admin,
        reqwest::Method::DELETE,
        "/cache/profile/profile:7",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((s, &v["invalidated"]), (200, &json!(1)), "{v}");
    let (s, v) = admin(
        b_admin,
        reqwest::Method::DELETE,
        "/cache/profile/profile:7",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, &v["invalidated"]),
        (200, &json!(0)),
        "nothing left: {v}"
    );
    assert_eq!(x_cache(&profile(&a, 7).await), "MISS");

    // Every key written — entries and tag sets — expires.
    cached_hit(&a, 7).await;
    let tags = redis.keys("cachetag:*");
    assert!(tags.contains(&"cachetag:user:7".to_string()), "{tags:?}");
    for k in tags.iter().chain(redis.keys("profile:*").iter()) {
        let ttl = redis.ttl(k);
        assert!(ttl > 0 && ttl <= 62, "{k} has TTL {ttl}");
    }
}

#[tokio::test]
async fn the_admin_api_wants_its_token_and_plain_paths_and_works_on_the_embedded_store() {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let (gw, port) = gateway(&mocks, None).await;
    let get = reqwest::Method::GET;
    for (token, why) in [
        (None, "no token"),
        (Some("wrong-token-wrong-token-wrong-token!"), "wrong token"),
        (Some("short"), "short token"),
    ] {
        let (s, v) = admin(port, get.clone(), "/cache/profile/profile:1", token, None).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("unauthorized")),
            "{why}"
        );
    }
    // The admin API is not on the client port: a signed-in user finds no such route there.
    let r = client()
        .delete(gw.url("/cache/profile/profile:1"))
        .bearer_auth(common::token("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A dot-segment reaches the admin API as sent (a client library would remove it first).
    let raw = format!(
        "GET /cache/profile/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let reply = common::raw_request(port, raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(
        reply.starts_with("HTTP/1.1 404") && reply.contains("not_found"),
        "{reply}"
    );
    for path in [
        "/cache/nope/x",
        "/cache/Profile/x",
        "/cache/profile",
        "/elsewhere",
    ] {
        let (s, v) = admin(port, get.clone(), path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
    }
    let (s, _) = admin(
        port,
        get.clone(),
        "/cache/invalidate",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 405);
    for body in [json!({"tag": "x"}), json!({"tags": []}), json!("x")] {
        let (s, v) = admin(
            port,
            reqwest::Method::POST,
            "/cache/invalidate",
            Some(ADMIN_TOKEN),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    // Tags on the embedded store: the entry is found by its own tags.
    assert_eq!(x_cache(&profile(&gw, 3).await), "MISS");
    cached_hit(&gw, 3).await;
    let (s, v) = admin(
        port,
        reqwest::Method::POST,
        "/cache/invalidate",
        Some(ADMIN_TOKEN),
        Some(json!({"tags": ["user:3"]})),
    )
    .await;
    assert_eq!((s, &v["invalidated"]), (200, &json!(1)), "{v}");
    assert_eq!(x_cache(&profile(&gw, 3).await), "MISS");
}

#[tokio::test]
async fn a_stale_entry_is_served_at_once_while_one_rebuild_refreshes_it() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let gw = start(
        &mocks,
        Some(&redis),
        &section_with(
            free_port(),
            r#"ttl_seconds: 1, key: "profile:{id}", stale_while_revalidate_seconds: 30"#,
        ),
    )
    .await;
    let first = profile(&gw, 5).await;
    assert_eq!(x_cache(&first), "MISS");
    let document: Value = first.json().await.unwrap();
    cached_hit(&gw, 5).await;
    // From now on a rebuild takes 3 s.
    mocks.faults("user", json!({"delay_ms": 3000})).await;
    let builds = mocks.count("user", "/users/{id}").await;
    let mut stale = None;
    eventually("the entry goes stale", Duration::from_secs(5), async || {
        let started = std::time::Instant::now();
        let r = profile(&gw, 5).await;
        let took = started.elapsed();
        match x_cache(&r).as_str() {
            "HIT" => false,
            "STALE" => {
                stale = Some((took, r));
                true
            }
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    let (took, r) = stale.unwrap();
    // Answered without waiting for the 3 s rebuild: half of it is a bound no loaded machine
    // adds to one request, and a stale read that waited would take the whole.
    assert!(
        took < Duration::from_millis(1500),
        "a stale answer took {took:?}"
    );
    assert_eq!(r.headers()["cache-control"], "private, max-age=0");
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.json::<Value>().await.unwrap(), document);
    // More stale reads while the rebuild runs join it rather than starting their own.
    for _ in 0..5 {
        let r = profile(&gw, 5).await;
        assert!(["STALE", "HIT"].contains(&x_cache(&r).as_str()));
    }
    let fresh = cached_hit(&gw, 5).await;
    let age: u64 = fresh.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "a fresh entry, age {age}");
    assert_eq!(
        mocks.count("user", "/users/{id}").await - builds,
        1,
        "exactly one rebuild"
    );
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            r#"cache_requests_total{aggregate="profile",result="stale"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_failed_rebuild_serves_the_stale_entry_until_its_window_ends() {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let gw = start(
        &mocks,
        None,
        &section_with(
            free_port(),
            r#"ttl_seconds: 1, key: "profile:{id}", stale_if_error_seconds: 3"#,
        ),
    )
    .await;
    let document: Value = profile(&gw, 6).await.json().await.unwrap();
    cached_hit(&gw, 6).await;
    mocks.faults("user", json!({"status": 500})).await;
    let mut served = None;
    eventually(
        "the stale entry stands in",
        Duration::from_secs(5),
        async || {
            let r = profile(&gw, 6).await;
            if x_cache(&r) == "STALE-ERROR" {
                served = Some(r);
                true
            } else {
                assert_eq!(r.status(), 200, "fresh, then stale-if-error");
                false
            }
        },
    )
    .await;
    let r = served.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), document);
    // Past the window: the failure as it is.
    eventually("the window ends", Duration::from_secs(10), async || {
        profile(&gw, 6).await.status().is_server_error()
    })
    .await;
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            r#"cache_requests_total{aggregate="profile",result="stale_error"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn the_services_cache_control_caps_the_ttl_or_forbids_caching() {
    let echo = common::EchoServer::start().await;
    let section = format!(
        r#"rate_limit: {{ per_minute: 100000 }}
services:
  docs: {{ url: "http://127.0.0.1:{}" }}
aggregates:
  - name: capped
    path: "/capped/{{id}}"
    cache: {{ ttl_seconds: 60, key: "capped:{{id}}", ttl_from_services: true }}
    legs:
      doc: {{ service: docs, path: "/cc/max-age=5/{{id}}", required: true, expect: object }}
  - name: unstored
    path: "/unstored/{{id}}"
    cache: {{ ttl_seconds: 60, key: "unstored:{{id}}", ttl_from_services: true }}
    legs:
      doc: {{ service: docs, path: "/cc/no-store/{{id}}", required: true, expect: object }}
  - name: deaf
    path: "/deaf/{{id}}"
    cache: {{ ttl_seconds: 60, key: "deaf:{{id}}" }}
    legs:
      doc: {{ service: docs, path: "/cc/no-store/{{id}}", required: true, expect: object }}
"#,
        echo.port
    );
    let gw = Gateway::start(&section, &[]).await;
    let get = async |path: &str| {
        client()
            .get(gw.url(path))
            .bearer_auth(token_with_roles("u", &[]))
            .send()
            .await
            .unwrap()
    };
    let r = get("/capped/1").await;
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
    assert_eq!(r.headers()["cache-control"], "private, max-age=5");
    eventually("capped entry cached", Duration::from_secs(5), async || {
        let r = get("/capped/1").await;
        x_cache(&r) == "HIT" && {
            let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
            let left: u64 = cc
                .strip_prefix("private, max-age=")
                .unwrap()
                .parse()
                .unwrap();
            assert!(left <= 5, "{cc}");
            true
        }
    })
    .await;
    // `no-store` from a leg: answered, never cached.
    for _ in 0..3 {
        let r = get("/unstored/1").await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    // Without ttl_from_services the declared TTL stands.
    let r = get("/deaf/1").await;
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    cached_hit_at(&gw, "/deaf/1").await;
}

async fn cached_hit_at(gw: &Gateway, path: &str) {
    eventually("cached", Duration::from_secs(5), async || {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(token_with_roles("u", &[]))
            .send()
            .await
            .unwrap();
        x_cache(&r) == "HIT"
    })
    .await;
}

/// The profile's cache with tags and an in-process tier that would keep a copy 30 s.
const LOCAL: &str = r#"ttl_seconds: 60, key: "profile:{id}", tags: ["user:{id}"], local: { max_entries: 1000, ttl_seconds: 30 }"#;

/// Waits until `gw` hears the replicas' invalidations.
async fn subscribed(gw: &Gateway) {
    eventually(
        "the invalidation feed is up",
        Duration::from_secs(10),
        async || metric_sum(&gw.metrics().await, "cache_invalidation_feed_up") == 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_purge_through_one_replica_reaches_the_others_in_process_copies() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let b_admin = free_port();
    let a = start(&mocks, Some(&redis), &section_with(free_port(), LOCAL)).await;
    let b = start(&mocks, Some(&redis), &section_with(b_admin, LOCAL)).await;
    subscribed(&a).await;
    subscribed(&b).await;
    for round in 0..6u32 {
        let id = 20 + round;
        assert_eq!(x_cache(&profile(&a, id).await), "MISS");
        cached_hit(&a, id).await;
        // A's copy answers now: Redis is not asked.
        let gets = redis.calls("get");
        for _ in 0..3 {
            assert_eq!(x_cache(&profile(&a, id).await), "HIT");
        }
        assert_eq!(redis.calls("get"), gets, "hits from A's memory");
        assert!(
            metric_sum(
                &a.metrics().await,
                r#"cache_local_entries{aggregate="profile"}"#
            ) >= 1.0
        );
        // Purged through B, by tag or by key: A stops serving its copy.
        let (s, v) = if round % 2 == 0 {
            purge_tag(b_admin, &format!("user:{id}")).await
        } else {
            purge_key(b_admin, id).await
        };
        let returned = std::time::Instant::now();
        assert_eq!(
            (s, &v["invalidated"], &v["announced"]),
            (200, &json!(1), &json!(true)),
            "{v}"
        );
        // Pub/sub delivers the announcement to A on its own schedule, so A is read until its
        // copy is gone. Nothing else removes it within the wait: the copy would live 30 s in A's
        // memory, and a read that found none there would be a HIT from Redis had the purge not
        // deleted the entry. How fast it goes is `make bench`'s to measure.
        let mut last = None;
        eventually(
            "A drops its copy once B's purge is announced",
            Duration::from_secs(10),
            async || {
                let r = profile(&a, id).await;
                let cache = x_cache(&r);
                last = Some(cache.clone());
                cache != "HIT"
            },
        )
        .await;
        eprintln!(
            "round {round}: A dropped its copy {:?} after the purge returned",
            returned.elapsed()
        );
        assert_eq!(last.as_deref(), Some("MISS"), "round {round}: rebuilt");
        assert!(
            metric_sum(
                &a.metrics().await,
                r#"cache_invalidation_messages_total{direction="received"}"#
            ) >= f64::from(round + 1),
            "round {round}: A heard the announcement"
        );
    }
    let m = a.metrics().await;
    assert!(
        metric_sum(
            &m,
            r#"cache_invalidation_messages_total{direction="received"}"#
        ) >= 6.0
    );
    let m = b.metrics().await;
    assert_eq!(
        metric_sum(&m, r#"cache_invalidation_messages_total{direction="sent"}"#),
        6.0
    );
    // The subscriptions held all along (the keep-alive pings are answered).
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert_eq!(
            metric_sum(&m, r#"store_errors_total{backend="redis",op="subscribe"}"#),
            0.0
        );
    }
}

#[tokio::test]
async fn a_purge_during_a_build_on_another_replica_keeps_that_build_out_of_the_cache() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let b_admin = free_port();
    let a = start(&mocks, Some(&redis), &section_with(free_port(), LOCAL)).await;
    let b = start(&mocks, Some(&redis), &section_with(b_admin, LOCAL)).await;
    subscribed(&a).await;
    subscribed(&b).await;
    // A builds profile 40 from a user answer that takes 800 ms …
    mocks.faults("user", json!({"delay_ms": 800})).await;
    let before = mocks.count("user", "/users/{id}").await;
    let building = tokio::spawn({
        let url = a.url("/api/profile/40");
        async move {
            client()
                .get(url)
                .bearer_auth(token_with_roles("admin-1", &["admin"]))
                .send()
                .await
                .unwrap()
        }
    });
    eventually(
        "A's build has asked the user service",
        Duration::from_secs(5),
        async || mocks.count("user", "/users/{id}").await > before,
    )
    .await;
    // … and the user's data changes meanwhile: purged through B.
    let (s, v) = purge_tag(b_admin, "user:40").await;
    assert_eq!(s, 200, "{v}");
    let built = building.await.unwrap();
    assert_eq!(
        (built.status().as_u16(), x_cache(&built)),
        (200, "MISS".into())
    );
    mocks.faults("user", json!({})).await;
    // What A built from before the purge is in neither A's memory nor Redis.
    assert_eq!(x_cache(&profile(&a, 40).await), "MISS");
    // That rebuild is written to Redis after its answer has gone (off the request path),
    // so B's read waits for the write to land.
    eventually(
        "A's rebuild after the purge is in Redis",
        Duration::from_secs(5),
        async || redis.keys("profile:40#*").len() == 1,
    )
    .await;
    assert_eq!(
        x_cache(&profile(&b, 40).await),
        "HIT",
        "B serves the rebuild after the purge from Redis"
    );
}

#[tokio::test]
async fn without_the_invalidation_feed_no_in_process_copy_is_served() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let a = start(&mocks, Some(&redis), &section_with(free_port(), LOCAL)).await;
    subscribed(&a).await;
    profile(&a, 50).await;
    cached_hit(&a, 50).await;
    assert_eq!(x_cache(&profile(&a, 50).await), "HIT");
    // Redis goes: the copy cannot be told of purges any more, so it is not used.
    redis.proc.kill();
    eventually(
        "the feed is seen down",
        Duration::from_secs(10),
        async || {
            let m = a.metrics().await;
            metric_sum(&m, "cache_invalidation_feed_up") == 0.0
                && metric_sum(&m, r#"store_errors_total{backend="redis",op="subscribe"}"#) >= 1.0
        },
    )
    .await;
    let r = profile(&a, 50).await;
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "BYPASS".into()));
    // Redis is back: subscribed again, and cached as before.
    let _redis = Redis::start_on(port);
    subscribed(&a).await;
    cached_hit(&a, 50).await;
}

#[tokio::test]
async fn after_a_mixed_minute_every_key_in_redis_expires() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let cache = r#"ttl_seconds: 2, key: "profile:{id}", tags: ["user:{id}", "account:{user.id}"], stale_while_revalidate_seconds: 2, stale_if_error_seconds: 4, local: { max_entries: 20, ttl_seconds: 1 }"#;
    // The order breaker reopens quickly so that the mix does not depend on the machine's pace
    // (opened for the default 10 s, it would outlast every entry written before it).
    let services = "services:\n  user: {}\n  order: { breaker: { failures: 3, open_ms: 500 } }\n  product: {}\n  recommendation: {}\n";
    let a_admin = free_port();
    let a = start(
        &mocks,
        Some(&redis),
        &format!("{services}{}", section_with(a_admin, cache)),
    )
    .await;
    let b = start(
        &mocks,
        Some(&redis),
        &format!("{services}{}", section_with(free_port(), cache)),
    )
    .await;
    subscribed(&a).await;
    subscribed(&b).await;
    // A minute of reads on both replicas over 20 users, purges by tag and by key through A,
    // and one failing second in every ten for an optional leg (degraded builds, not written) —
    // paced, and bounded in count as well as time.
    let started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::<String, u32>::new();
    let mut i = 0u32;
    let mut failing = false;
    while started.elapsed() < Duration::from_secs(60) && i < 6_000 {
        i += 1;
        let id = 1 + i * 7 % 20;
        let gw = if i.is_multiple_of(2) { &a } else { &b };
        let fail_now = (3_000..4_000).contains(&(started.elapsed().as_millis() % 10_000));
        if fail_now != failing {
            failing = fail_now;
            let fault = if failing {
                json!({"status": 500})
            } else {
                json!({})
            };
            mocks.faults("order", fault).await;
        }
        if i.is_multiple_of(25) {
            let (s, _) = if i.is_multiple_of(50) {
                purge_tag(a_admin, &format!("account:{id}")).await
            } else {
                purge_key(a_admin, id).await
            };
            assert_eq!(s, 200);
        }
        let r = profile(gw, id).await;
        assert_eq!(r.status(), 200);
        *statuses.entry(x_cache(&r)).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for kind in ["HIT", "MISS", "STALE"] {
        assert!(statuses.contains_key(kind), "{statuses:?}");
    }
    // The loop may end inside a failing stretch, and on a slow machine the order breaker
    // (open 10 s) can outlast every entry written before it: let the service recover and an
    // entry be written again, so the scan below has tag sets to look at.
    mocks.faults("order", json!({})).await;
    eventually(
        "an entry is written again",
        Duration::from_secs(20),
        async || {
            profile(&a, 1).await;
            !redis.keys("cachetag:*").is_empty()
        },
    )
    .await;
    let keys = redis.scan_ttls();
    assert!(
        keys.iter().any(|(k, _)| k.starts_with("cachetag:")),
        "{keys:?}"
    );
    let forever: Vec<_> = keys.iter().filter(|(_, ttl)| *ttl == -1).collect();
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert_eq!(metric_sum(&m, "cache_invalidation_feed_up"), 1.0);
        assert_eq!(
            metric_sum(&m, r#"store_errors_total{backend="redis",op="subscribe"}"#),
            0.0
        );
    }
}

#[tokio::test]
async fn the_admin_api_answers_503_while_the_store_is_down_and_logs_every_call() {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let mut redis = Redis::start();
    let (mut gw, port) = gateway(&mocks, Some(&redis)).await;
    redis.proc.kill();
    for (method, path, body) in [
        (reqwest::Method::DELETE, "/cache/profile/profile:1", None),
        (reqwest::Method::GET, "/cache/profile/profile:1", None),
        (
            reqwest::Method::POST,
            "/cache/invalidate",
            Some(json!({"tags": ["user:1"]})),
        ),
    ] {
        let (s, v) = admin(port, method.clone(), path, Some(ADMIN_TOKEN), body).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (503, Some("service_unavailable")),
            "{method} {path}: {v}"
        );
    }
    let (out, err) = gw.stop_and_read();
    let logged = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("/cache/"))
        .count();
    assert_eq!(logged, 3, "every admin call logged once:\n{out}\n{err}");
}

/// A second cached aggregate beside the profile, for a reload to leave as it is.
const CARD: &str = r#"  - name: card
    path: "/api/card/{id}"
    cache: { ttl_seconds: 60, key: "card:{id}" }
    legs:
      user: { service: user, path: "/users/{id}", required: true, expect: object }
"#;

/// An aggregate without a cache.
const BARE: &str = r#"  - name: bare
    path: "/api/bare/{id}"
    legs:
      user: { service: user, path: "/users/{id}", required: true, expect: object }
"#;

async fn card(gw: &Gateway, id: u32) -> reqwest::Response {
    client()
        .get(gw.url(&format!("/api/card/{id}")))
        .bearer_auth(token_with_roles("u", &[]))
        .send()
        .await
        .unwrap()
}

/// Waits until the live configuration is generation `generation`.
async fn generation(gw: &Gateway, generation: u32) {
    eventually("the reload applied", Duration::from_secs(10), async || {
        metric_sum(&gw.metrics().await, "config_generation") == f64::from(generation)
    })
    .await;
}

/// The raw stored value of the one entry whose store key starts with `prefix`.
fn stored(redis: &Redis, prefix: &str) -> Vec<u8> {
    let keys = redis.keys(&format!("{prefix}#*"));
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut c = redis.conn().unwrap();
    redis::cmd("GET").arg(&keys[0]).query(&mut c).unwrap()
}

#[tokio::test]
async fn a_reload_that_changes_an_aggregate_starts_its_cache_afresh_and_keeps_the_others() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let admin_port = free_port();
    let before = format!("{}{CARD}", section(admin_port));
    let gw = start(&mocks, Some(&redis), &before).await;
    assert_eq!(x_cache(&profile(&gw, 7).await), "MISS");
    let old: Value = cached_hit(&gw, 7).await.json().await.unwrap();
    assert!(old["recommendations"].is_array(), "{old}");
    assert_eq!(x_cache(&card(&gw, 7).await), "MISS");
    cached_hit_at(&gw, "/api/card/7").await;
    let old_keys = redis.keys("profile:7#*");
    assert_eq!(old_keys.len(), 1, "{old_keys:?}");

    // The profile loses a leg (a document of another shape); the card stays as it was.
    let after: String = before
        .lines()
        .filter(|l| !l.trim_start().starts_with("recommendations:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(after, before);
    gw.rewrite(&after);
    gw.proc.signal("HUP");
    generation(&gw, 2).await;

    let users = mocks.count("user", "/users/{id}").await;
    let r = card(&gw, 7).await;
    assert_eq!(
        x_cache(&r),
        "HIT",
        "an unchanged aggregate keeps its entries"
    );
    assert_eq!(mocks.count("user", "/users/{id}").await, users);

    // The old entry is still stored, but the new declaration never reads it.
    assert_eq!(redis.keys("profile:7#*"), old_keys);
    let r = profile(&gw, 7).await;
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
    let new: Value = r.json().await.unwrap();
    assert_eq!(new.get("recommendations"), None, "{new}");
    assert_eq!(new["user"], old["user"]);
    // Written under a key of its own, beside the old one.
    eventually(
        "the new declaration's entry is written",
        Duration::from_secs(5),
        async || redis.keys("profile:7#*").len() == 2,
    )
    .await;
    assert!(redis.keys("profile:7#*").contains(&old_keys[0]));
    let hit: Value = cached_hit(&gw, 7).await.json().await.unwrap();
    assert_eq!(hit, new);
}

#[tokio::test]
async fn a_degraded_rebuild_never_replaces_a_good_entry() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    // The order breaker closes again soon after the service recovers.
    let services = "services:\n  user: {}\n  order: { breaker: { failures: 3, open_ms: 500 } }\n  product: {}\n  recommendation: {}\n";
    let cache = r#"ttl_seconds: 1, key: "profile:{id}", stale_if_error_seconds: 30"#;
    let gw = start(
        &mocks,
        Some(&redis),
        &format!("{services}{}", section_with(free_port(), cache)),
    )
    .await;
    let first = profile(&gw, 9).await;
    assert_eq!(x_cache(&first), "MISS");
    let document: Value = first.json().await.unwrap();
    assert_eq!(document["degraded"], json!([]));
    assert!(!document["orders"].as_array().unwrap().is_empty());
    cached_hit(&gw, 9).await;
    let good = stored(&redis, "profile:9");

    // The optional order leg fails: once the entry is stale, each rebuild is degraded.
    mocks.faults("order", json!({"status": 500})).await;
    let mut stand_in = None;
    eventually(
        "the entry goes stale and a rebuild degrades",
        Duration::from_secs(10),
        async || {
            let r = profile(&gw, 9).await;
            match x_cache(&r).as_str() {
                "HIT" => false,
                "STALE-ERROR" => {
                    stand_in = Some(r);
                    true
                }
                other => panic!("unexpected {other} ({})", r.status()),
            }
        },
    )
    .await;
    let r = stand_in.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "private, max-age=0");
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.json::<Value>().await.unwrap(), document, "the good entry");
    // A second degraded rebuild: the good entry still answers, so the first was not written.
    let r = profile(&gw, 9).await;
    assert_eq!(
        (r.status().as_u16(), x_cache(&r)),
        (200, "STALE-ERROR".into())
    );
    assert_eq!(r.json::<Value>().await.unwrap(), document);
    assert_eq!(
        stored(&redis, "profile:9"),
        good,
        "the stored entry is untouched"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"cache_requests_total{aggregate="profile",result="stale_error"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_sum(
            &m,
            r#"aggregate_degraded_total{aggregate="profile",leg="orders"}"#
        ),
        2.0,
        "both rebuilds were degraded"
    );

    // The service recovers: the good stale entry answers until a complete build replaces it.
    mocks.reset_faults("order").await;
    eventually(
        "a complete rebuild answers",
        Duration::from_secs(10),
        async || {
            let r = profile(&gw, 9).await;
            match x_cache(&r).as_str() {
                "STALE-ERROR" => {
                    assert_eq!(r.json::<Value>().await.unwrap(), document);
                    false
                }
                "MISS" => {
                    assert_eq!(r.status(), 200);
                    assert_eq!(r.headers()["cache-control"], "private, max-age=1");
                    assert_eq!(r.json::<Value>().await.unwrap(), document);
                    true
                }
                other => panic!("unexpected {other}"),
            }
        },
    )
    .await;
    eventually(
        "the complete build is written over the stale entry",
        Duration::from_secs(5),
        async || stored(&redis, "profile:9") != good,
    )
    .await;
    let hit = cached_hit(&gw, 9).await;
    assert_eq!(hit.json::<Value>().await.unwrap(), document);
}

#[tokio::test]
async fn answers_that_may_not_be_cached_say_no_store() {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let section = format!(
        "{}{BARE}",
        section_with(free_port(), r#"ttl_seconds: 60, key: "profile:{id}""#)
    );
    let gw = start(&mocks, None, &section).await;
    let users = async || mocks.count("user", "/users/{id}").await;

    // A complete, cached document: `private, max-age`, never `no-store`.
    let r = profile(&gw, 11).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    let hit = cached_hit(&gw, 11).await;
    let cc = hit.headers()["cache-control"].to_str().unwrap().to_string();
    let left: u64 = cc
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cc}"))
        .parse()
        .unwrap();
    assert!((55..=60).contains(&left), "{cc}");
    // The same entry asked for as `me`: one URL for every caller, so asked again each time.
    let r = client()
        .get(gw.url("/api/profile/me"))
        .bearer_auth(token_with_roles("11", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "HIT".into()));
    assert_eq!(r.headers()["cache-control"], "private, no-cache");

    // An aggregate without a cache: built each time, `no-store`.
    for _ in 0..2 {
        let before = users().await;
        let r = client()
            .get(gw.url("/api/bare/11"))
            .bearer_auth(token_with_roles("u", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(users().await, before + 1, "built, not cached");
    }

    // A degraded document: answered `no-store`, and not cached either.
    mocks.faults("order", json!({"status": 500})).await;
    for _ in 0..2 {
        let before = users().await;
        let r = profile(&gw, 12).await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["degraded"], json!(["orders"]));
        assert_eq!(users().await, before + 1, "built, not cached");
    }
}
