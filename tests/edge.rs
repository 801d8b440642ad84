//! Edge security against the real gateway: fixed-window rate limiting (embedded store and a real
//! redis-server, with fallback when Redis dies) and JWT authentication.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{align_to_window, client, eventually, token, EchoServer, Gateway, Redis, SECRET};
use gateway::clock::unix_now;
use gateway::testing::{b64, sign};
use jsonwebtoken::Algorithm;
use serde_json::json;

fn section(echo_port: u16, per_minute: u64, window_seconds: u64, extra_rate: &str) -> String {
    format!(
        r#"rate_limit: {{ per_minute: {per_minute}, window_seconds: {window_seconds}{extra_rate} }}
upstreams:
  echo:
    backends: ["127.0.0.1:{echo_port}"]
    health_check: {{ kind: tcp, interval_ms: 500 }}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#
    )
}

async fn get(gw: &Gateway, bearer: &str, xff: Option<&str>) -> reqwest::Response {
    let mut r = client().get(gw.url("/echo/x")).bearer_auth(bearer);
    if let Some(x) = xff {
        r = r.header("X-Forwarded-For", x);
    }
    r.send().await.expect("answered")
}

#[tokio::test]
async fn eleventh_request_is_limited_with_headers_on_the_embedded_store() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 10, 3600, ""), &[]).await;
    let t = token("1");
    align_to_window(3600, 15).await;
    // Seconds to the end of the clock-aligned hour, as the client can work it out too.
    let window_left = || 3600 - gateway::clock::unix_now() % 3600;
    let seconds = |r: &reqwest::Response, name: &str| -> u64 {
        r.headers()[name].to_str().unwrap().parse().unwrap()
    };
    for i in 0..10u64 {
        let r = get(&gw, &t, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "10");
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            (9 - i).to_string().as_str()
        );
        let reset = seconds(&r, "ratelimit-reset");
        assert!(reset.abs_diff(window_left()) <= 1, "reset {reset}");
    }
    let r = get(&gw, &t, None).await;
    assert_eq!(r.status(), 429);
    let retry = seconds(&r, "retry-after");
    assert!(retry.abs_diff(window_left()) <= 1, "retry after {retry}");
    assert_eq!(seconds(&r, "ratelimit-reset"), retry);
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "rate_limited");
    // Public paths are never limited.
    assert_eq!(gw.health_status().await, 200);
    let m = gw.metrics().await;
    assert!(
        m.contains(
            r#"rate_limit_decisions_total{backend="memory",policy="default",result="limited"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn next_window_admits_again() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 2, 2, ""), &[]).await;
    let t = token("1");
    // Exhaust the budget (a window boundary may pass meanwhile: then simply keep going).
    let mut limited = false;
    for _ in 0..10 {
        if get(&gw, &t, None).await.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the limit of 2 was reached");
    eventually("a new window admits", Duration::from_secs(5), async || {
        get(&gw, &t, None).await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn two_gateways_on_one_redis_enforce_one_limit_and_keys_expire() {
    let redis = Redis::start();
    let echo = EchoServer::start().await;
    let env = [("REDIS_ADDR", redis.addr())];
    let a = Gateway::start(&section(echo.port, 10, 3600, ""), &env).await;
    let b = Gateway::start(&section(echo.port, 10, 3600, ""), &env).await;
    let t = token("1");
    align_to_window(3600, 15).await;
    let mut allowed = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let s = get(gw, &t, None).await.status();
        assert!(s == 200 || s == 429, "{s}");
        if s == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "one shared limit across both replicas");
    let keys = redis.keys("ratelimit:*");
    assert!(!keys.is_empty());
    for k in keys {
        let ttl = redis.ttl(&k);
        assert!(ttl > 0, "{k} has TTL {ttl}");
    }
    // A served the even requests: the first five of them within the limit, the rest over it.
    let m = a.metrics().await;
    let decisions = |result: &str| common::decisions(&m, "redis", "default", result);
    assert_eq!(
        (decisions("allowed"), decisions("limited")),
        (5.0, 5.0),
        "{m}"
    );
}

async fn burst(gw: &Gateway, n: usize) -> usize {
    let statuses = common::concurrent_gets(vec![gw.url("/echo/x"); n], &token("1")).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test]
async fn concurrent_burst_admits_exactly_the_limit() {
    let redis = Redis::start();
    let echo = EchoServer::start().await;
    let on_redis = Gateway::start(
        &section(echo.port, 50, 3600, ""),
        &[("REDIS_ADDR", redis.addr())],
    )
    .await;
    let in_memory = Gateway::start(&section(echo.port, 50, 3600, ""), &[]).await;
    align_to_window(3600, 30).await;
    assert_eq!(burst(&on_redis, 200).await, 50, "redis backend");
    assert_eq!(burst(&in_memory, 200).await, 50, "embedded backend");
}

#[tokio::test]
async fn redis_outage_falls_back_to_memory_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let echo = EchoServer::start().await;
    // A small limit, so that a fallback that admitted everything would fail.
    let gw = Gateway::start(
        &section(echo.port, 10, 3600, ""),
        &[("REDIS_ADDR", redis.addr())],
    )
    .await;
    align_to_window(3600, 30).await;
    let t = token("1");
    for _ in 0..5 {
        assert_eq!(get(&gw, &t, None).await.status(), 200);
    }
    redis.proc.kill();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(&gw, &t, None).await.status().as_u16());
    }
    // The local count saw the 5 requests before the outage: 5 more are admitted, then 429s.
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let m = gw.metrics().await;
    let fallback = |result: &str| common::decisions(&m, "fallback", "default", result);
    assert_eq!(
        (fallback("allowed"), fallback("limited")),
        (5.0, 25.0),
        "{m}"
    );
    assert!(
        common::metric_sum(&m, "store_errors_total{backend=\"redis\"") >= 1.0,
        "{m}"
    );

    // Back on the restarted (empty) Redis: its count starts again, so the client is admitted.
    let redis = Redis::start_on(port);
    eventually(
        "decisions go back to redis",
        Duration::from_secs(10),
        async || get(&gw, &t, None).await.status() == 200 && !redis.keys("ratelimit:*").is_empty(),
    )
    .await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let echo = EchoServer::start().await;
    let t = token("1");

    let untrusted = Gateway::start(&section(echo.port, 2, 3600, ""), &[]).await;
    align_to_window(3600, 15).await;
    assert_eq!(get(&untrusted, &t, Some("1.1.1.1")).await.status(), 200);
    assert_eq!(get(&untrusted, &t, Some("2.2.2.2")).await.status(), 200);
    assert_eq!(
        get(&untrusted, &t, Some("3.3.3.3")).await.status(),
        429,
        "a spoofed header from an untrusted peer changes nothing"
    );

    let trusted = Gateway::start(
        &section(echo.port, 2, 3600, ", trusted_proxies: [\"127.0.0.1/32\"]"),
        &[],
    )
    .await;
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        assert_eq!(
            get(&trusted, &t, Some(ip)).await.status(),
            200,
            "{ip} has its own budget"
        );
    }
    assert_eq!(get(&trusted, &t, Some("1.1.1.1")).await.status(), 200);
    assert_eq!(get(&trusted, &t, Some("1.1.1.1")).await.status(), 429);
    let last = echo
        .requests()
        .last()
        .cloned()
        .expect("requests reached the echo");
    assert_eq!(last.header("x-forwarded-for"), vec!["1.1.1.1, 127.0.0.1"]);
}

fn now() -> i64 {
    unix_now() as i64
}

#[tokio::test]
async fn jwt_cases_get_the_right_status_and_never_a_panic() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 100_000, 60, ""), &[]).await;
    let key = SECRET.as_bytes();
    let hs = |c: serde_json::Value| sign(Algorithm::HS256, c, key);
    let future = now() + 600;
    let payload = b64(json!({"sub":"1","exp": future}).to_string().as_bytes());
    let cases: Vec<(&str, String, u16)> = vec![
        ("valid", hs(json!({"sub":"1","exp": future})), 200),
        ("expired", hs(json!({"sub":"1","exp": now() - 60})), 401),
        (
            "nbf in the future",
            hs(json!({"sub":"1","exp": future, "nbf": future - 60})),
            401,
        ),
        ("missing exp", hs(json!({"sub":"1"})), 401),
        ("missing sub", hs(json!({"exp": future})), 401),
        (
            "sub with CR/LF (it would become X-User-Id)",
            hs(json!({"sub":"1\r\nX-Admin: yes","exp": future})),
            401,
        ),
        (
            "exp as a string",
            hs(json!({"sub":"1","exp": future.to_string()})),
            401,
        ),
        (
            "exp as a float in the future",
            hs(json!({"sub":"1","exp": future as f64 + 0.25})),
            200,
        ),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                json!({"sub":"1","exp": future}),
                b"another-secret",
            ),
            401,
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            401,
        ),
        (
            "HS512",
            sign(Algorithm::HS512, json!({"sub":"1","exp": future}), key),
            401,
        ),
        (
            "RS256 header",
            format!(
                "{}.{payload}.{}",
                b64(br#"{"alg":"RS256","typ":"JWT"}"#),
                b64(b"sig")
            ),
            401,
        ),
        ("two segments", "abc.def".to_string(), 401),
        (
            "bad base64",
            format!("{}.!!!.abc", b64(br#"{"alg":"HS256"}"#)),
            401,
        ),
        (
            "non-JSON payload",
            format!("{}.{}.abc", b64(br#"{"alg":"HS256"}"#), b64(b"not json")),
            401,
        ),
        ("9 KiB token", "a".repeat(9 * 1024), 431),
    ];
    for (name, tok, want) in cases {
        let r = client()
            .get(gw.url("/echo/x"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(status, want, "{name}");
        if status == 401 {
            let www = r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(
                www, r#"Bearer realm="gateway", error="invalid_token""#,
                "{name}"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], "unauthorized");
            let msg = v["message"].as_str().unwrap();
            assert!(
                !msg.contains(&tok) && !msg.contains(SECRET),
                "{name}: message leaks: {msg}"
            );
        }
    }
    let valid = token("1");
    let r = client().get(gw.url("/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="gateway""#);
    let r = client()
        .get(gw.url("/echo/x"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "Basic scheme");
    let r = client()
        .get(gw.url("/echo/x"))
        .header("Authorization", format!("Bearer {valid}"))
        .header("Authorization", format!("Bearer {valid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "two Authorization headers");
    let r = client()
        .get(gw.url("/echo/x"))
        .header("Authorization", format!("bearer {valid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "lower-case scheme");
    // The gateway is still serving after all of that.
    assert_eq!(gw.health_status().await, 200);
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"auth_failures_total{reason="expired"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn client_x_user_id_never_reaches_the_upstream() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 100_000, 60, ""), &[]).await;
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(token("alice"))
        .header("X-User-Id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.requests();
    assert_eq!(seen[0].header("x-user-id"), vec!["alice"]);
    assert_eq!(
        seen[0].header("authorization").len(),
        1,
        "forwarded unchanged by default"
    );
}

#[test]
fn token_command_prints_a_verifiable_token() {
    let out = std::process::Command::new(common::gateway_bin())
        .args(["token", "--sub", "42", "--ttl", "10m", "--role", "admin"])
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        tok.trim(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "42");
    assert_eq!(data.claims["roles"], json!(["admin"]));
    let exp = data.claims["exp"].as_i64().unwrap();
    assert!((now() + 590..=now() + 610).contains(&exp));
}

#[tokio::test]
async fn authorization_is_not_forwarded_when_switched_off() {
    let echo = EchoServer::start().await;
    let section = section(echo.port, 100_000, 60, "") + "auth: { forward_authorization: false }\n";
    let gw = Gateway::start(&section, &[]).await;
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.requests();
    assert!(seen[0].header("authorization").is_empty(), "{:?}", seen[0]);
    assert_eq!(
        seen[0].header("x-user-id"),
        vec!["alice"],
        "the identity still is"
    );
}

#[tokio::test]
async fn metrics_are_not_served_on_the_client_port_and_wrong_methods_get_405() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 100_000, 60, ""), &[]).await;
    let t = token("1");
    let r = client()
        .get(gw.url("/metrics"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(
        gw.metrics().await.contains("http_requests_total"),
        "only the metrics port"
    );
    let r = client()
        .post(gw.url("/api/profile/1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");
}

#[tokio::test]
async fn two_gateways_taking_counts_in_blocks_admit_exactly_the_shared_limit() {
    let redis = Redis::start();
    let echo = EchoServer::start().await;
    let env = [("REDIS_ADDR", redis.addr())];
    // 8,192 a window: each replica takes counts from Redis 8 at a time.
    let limit = 8192usize;
    let a = Gateway::start(&section(echo.port, limit as u64, 3600, ""), &env).await;
    let b = Gateway::start(&section(echo.port, limit as u64, 3600, ""), &env).await;
    align_to_window(3600, 60).await;
    let t = token("1");
    let (ua, ub) = (a.url("/echo/x"), b.url("/echo/x"));
    // 64 clients, half on each replica, 10,000 requests in all.
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let url = if w % 2 == 0 { ua.clone() } else { ub.clone() };
            let t = t.clone();
            tokio::spawn(async move {
                let c = client();
                let mut admitted = 0usize;
                for _ in 0..(10_000 / 64 + 1) {
                    let s = c.get(&url).bearer_auth(&t).send().await.unwrap().status();
                    assert!(s == 200 || s == 429, "{s}");
                    admitted += usize::from(s == 200);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for w in workers {
        admitted += w.await.unwrap();
    }
    assert_eq!(
        admitted, limit,
        "exactly the shared limit across both replicas"
    );
}

#[tokio::test]
async fn a_token_without_sub_is_refused_and_counted() {
    // README: every way in gives routes the same caller, its `sub`; a signed token without one
    // (or with one that is not a string) names nobody and is refused.
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(echo.port, 1000, 60, ""), &[]).await;
    let exp = unix_now() + 3600;
    let before = common::metric_sum(
        &gw.metrics().await,
        "auth_failures_total{reason=\"missing_claim\"}",
    );
    for claims in [json!({"exp": exp}), json!({"exp": exp, "sub": 7})] {
        let t = sign(Algorithm::HS256, claims.clone(), SECRET.as_bytes());
        let r = get(&gw, &t, None).await;
        assert_eq!(r.status(), 401, "{claims}");
        let body = r.text().await.unwrap();
        if claims.get("sub").is_none() {
            assert!(body.contains("sub"), "the refusal names the claim: {body}");
        }
    }
    let after = common::metric_sum(
        &gw.metrics().await,
        "auth_failures_total{reason=\"missing_claim\"}",
    );
    assert_eq!(after - before, 1.0, "the token without sub");
    assert!(echo.requests().is_empty(), "nothing reached the service");
    // The same token with a sub passes.
    let ok = sign(
        Algorithm::HS256,
        json!({"exp": exp, "sub": "7"}),
        SECRET.as_bytes(),
    );
    assert_eq!(get(&gw, &ok, None).await.status(), 200);
}
