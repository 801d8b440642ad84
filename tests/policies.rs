//! Rate-limit policies against the real gateway: per user, per tenant claim, per API-key header,
//! route scoping, the answer to a Redis outage (`deny`, `allow`), and GCRA on a real
//! redis-server.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{
    align_to_window, client, eventually, metric_sum, token, EchoServer, Gateway, Redis, SECRET,
};
use gateway::clock::unix_now;
use gateway::testing::sign;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn section(echo_port: u16, policies: &str) -> String {
    format!(
        r#"rate_limit:
  per_minute: 100000
  window_seconds: 3600
  policies:
{policies}
upstreams:
  echo:
    backends: ["127.0.0.1:{echo_port}"]
    health_check: {{ kind: tcp, interval_ms: 500 }}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#,
        policies = policies
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

fn tenant_token(sub: &str, tenant: &str) -> String {
    let exp = unix_now() + 3600;
    sign(
        Algorithm::HS256,
        json!({"sub": sub, "tenant": tenant, "exp": exp}),
        SECRET.as_bytes(),
    )
}

async fn get(gw: &Gateway, path: &str, bearer: &str, key: Option<&str>) -> reqwest::Response {
    let mut r = client().get(gw.url(path)).bearer_auth(bearer);
    if let Some(k) = key {
        r = r.header("X-Api-Key", k);
    }
    r.send().await.expect("answered")
}

async fn status(gw: &Gateway, path: &str, bearer: &str, key: Option<&str>) -> u16 {
    get(gw, path, bearer, key).await.status().as_u16()
}

#[tokio::test]
async fn users_behind_one_address_get_their_own_budgets_and_bad_tokens_use_none() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            echo.port,
            "- { name: per-user, key: sub, limit: 3, window_seconds: 3600 }",
        ),
        &[],
    )
    .await;
    align_to_window(3600, 15).await;
    let (alice, bob) = (token("alice"), token("bob"));
    // A flood of bad tokens is refused by authentication and never reaches a user's budget.
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    for _ in 0..5 {
        assert_eq!(status(&gw, "/echo/a", &forged, None).await, 401);
    }
    for i in 0..3 {
        let r = get(&gw, "/echo/a", &alice, None).await;
        assert_eq!(r.status(), 200, "alice #{i}");
        assert_eq!(
            r.headers()["ratelimit-limit"],
            "3",
            "the tighter policy shows"
        );
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
        assert_eq!(
            r.headers()["ratelimit-policy"],
            r#"100000;w=3600;name="default", 3;w=3600;name="per-user""#
        );
    }
    let r = get(&gw, "/echo/a", &alice, None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"].as_str().unwrap().contains("per-user"),
        "{body}"
    );
    // Same address, another user: a budget of its own.
    for i in 0..3 {
        assert_eq!(status(&gw, "/echo/b", &bob, None).await, 200, "bob #{i}");
    }
    assert_eq!(status(&gw, "/echo/b", &bob, None).await, 429);
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"rate_limit_decisions_total{backend="memory",policy="per-user",result="limited"}"#
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            r#"rate_limit_decisions_total{backend="memory",policy="per-user",result="allowed"}"#
        ),
        6.0
    );
}

#[tokio::test]
async fn tenants_and_api_keys_are_limited_on_their_routes() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            echo.port,
            "- { name: tenant, key: 'claim:tenant', limit: 2, window_seconds: 3600 }\n\
             - { name: api-key, key: 'header:X-Api-Key', limit: 2, window_seconds: 3600, routes: [/echo/keyed/] }",
        ),
        &[],
    )
    .await;
    align_to_window(3600, 15).await;
    // Two users of one tenant share its budget; another tenant has its own.
    assert_eq!(
        status(&gw, "/echo/t", &tenant_token("u1", "acme"), None).await,
        200
    );
    assert_eq!(
        status(&gw, "/echo/t", &tenant_token("u2", "acme"), None).await,
        200
    );
    let r = get(&gw, "/echo/t", &tenant_token("u1", "acme"), None).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("tenant"));
    assert_eq!(
        status(&gw, "/echo/t", &tenant_token("u3", "umbrella"), None).await,
        200
    );
    // The API key is counted before authentication: once its budget is spent, even a request
    // with a bad token gets 429, not 401.
    let t = tenant_token("k", "keys");
    assert_eq!(status(&gw, "/echo/keyed/1", &t, Some("k-1")).await, 200);
    assert_eq!(status(&gw, "/echo/keyed/1", "bad", Some("k-1")).await, 401);
    let r = get(&gw, "/echo/keyed/1", "bad", Some("k-1")).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("api-key"));
    // Another key has its own budget; outside the policy's routes the key is not counted.
    assert_eq!(status(&gw, "/echo/keyed/1", &t, Some("k-2")).await, 200);
    let other_tenant = tenant_token("k", "elsewhere");
    assert_eq!(
        status(&gw, "/echo/other", &other_tenant, Some("k-1")).await,
        200
    );
}

#[tokio::test]
async fn a_redis_outage_denies_or_admits_as_each_policy_says() {
    let mut redis = Redis::start();
    let port = redis.port;
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            echo.port,
            "- { name: strict, key: ip, limit: 1000, routes: [/echo/strict/], on_store_error: deny }\n\
             - { name: lenient, key: ip, limit: 1, window_seconds: 3600, routes: [/echo/lenient/], on_store_error: allow }",
        ),
        &[("REDIS_ADDR", redis.addr())],
    )
    .await;
    align_to_window(3600, 30).await;
    let t = token("1");
    assert_eq!(status(&gw, "/echo/strict/a", &t, None).await, 200);
    assert_eq!(status(&gw, "/echo/lenient/a", &t, None).await, 200);
    assert_eq!(status(&gw, "/echo/lenient/a", &t, None).await, 429);
    redis.proc.kill();
    let r = get(&gw, "/echo/strict/a", &t, None).await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("strict"),
        "{body}"
    );
    // `allow`: over its limit of 1, yet admitted while Redis is down — and counted.
    for _ in 0..3 {
        assert_eq!(status(&gw, "/echo/lenient/a", &t, None).await, 200);
    }
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            r#"rate_limit_decisions_total{backend="unavailable",policy="lenient",result="allowed"}"#
        ) == 3.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            r#"rate_limit_decisions_total{backend="unavailable",policy="strict",result="denied"}"#
        ) == 1.0,
        "{m}"
    );
    // Routes no policy covers run on the default policy's local fallback, as always.
    assert_eq!(status(&gw, "/echo/other", &t, None).await, 200);
    let _redis = Redis::start_on(port);
    eventually(
        "the strict route is served again once Redis answers",
        Duration::from_secs(10),
        async || status(&gw, "/echo/strict/a", &t, None).await == 200,
    )
    .await;
}

#[tokio::test]
async fn gcra_on_redis_admits_the_burst_then_the_rate() {
    let redis = Redis::start();
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            echo.port,
            "- { name: smooth, key: sub, limit: 20, window_seconds: 1, algorithm: gcra, burst: 5 }",
        ),
        &[("REDIS_ADDR", redis.addr())],
    )
    .await;
    // One request per 50 ms, 5 at once. Redis's script admits a request when, after it, the
    // schedule is at most 250 ms (5 × 50) ahead of Redis's clock. So from a fresh schedule,
    // however the requests are spread, any 5 are admitted, and over a span of Redis's clock at
    // most 5 plus one per whole 50 ms of it: both exact, whatever the machine's load.
    const INTERVAL_US: u64 = 50_000;
    let t = token("gcra");
    let url = gw.url("/echo/g");

    // The burst: 40 requests at once on a fresh schedule.
    let from = redis.time_us();
    let statuses = common::concurrent_gets(vec![url.clone(); 40], &t).await;
    let span_us = redis.time_us() - from;
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    let admitted = statuses.iter().filter(|&&s| s == 200).count() as u64;
    let most = 5 + span_us / INTERVAL_US;
    assert!(
        (5..=most).contains(&admitted),
        "{admitted} of 40 at once admitted in {span_us} µs: the burst of 5, at most {most}"
    );
    assert!(admitted < 40, "the burst was exceeded");

    // Past the 250 ms tolerance without requests, the schedule is fresh again. Then sequential
    // requests for 2 s: the burst, then the rate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = redis.time_us();
    let started = Instant::now();
    // (status, sent, answered) per request.
    let mut sent: Vec<(u16, Instant, Instant)> = Vec::new();
    while started.elapsed() < Duration::from_secs(2) && sent.len() < 5000 {
        let at = Instant::now();
        let r = get(&gw, "/echo/g", &t, None).await;
        let status = r.status().as_u16();
        match status {
            200 => {}
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(retry, 1, "under a second to the next admission");
            }
            s => panic!("status {s}"),
        }
        sent.push((status, at, Instant::now()));
    }
    let span_us = redis.time_us() - from;
    let admitted = sent.iter().filter(|r| r.0 == 200).count() as u64;
    let refused = sent.len() as u64 - admitted;
    assert!(refused > 0, "the rate was exceeded");
    assert!(
        sent.iter().take(5).all(|r| r.0 == 200),
        "the first 5 after the pause are the burst"
    );
    let most = 5 + span_us / INTERVAL_US;
    assert!(
        admitted <= most,
        "{admitted} admitted in {span_us} µs of Redis's clock: at most {most}"
    );
    // The rate, from below. After an admission, a request decided 50 ms later is admitted;
    // the gateway may refuse without asking Redis for one request's time longer (it remembers
    // the wait Redis named from when the answer arrived), and the next request is decided
    // within `gap` (the longest from sending one request to the answer of the next). So
    // admissions are at most 50 ms + 2 × gap apart over the whole run, however slow the machine
    // made the requests.
    let gap = sent
        .windows(2)
        .map(|w| w[1].2 - w[0].1)
        .max()
        .unwrap_or_default();
    let run = sent.last().unwrap().2 - sent[0].1;
    let step = Duration::from_micros(INTERVAL_US) + 2 * gap;
    let least = (run.saturating_sub(2 * gap)).as_micros() / step.as_micros();
    eprintln!(
        "{admitted} of {} admitted in {run:?} (Redis: {span_us} µs), requests at most {gap:?} \
         apart: between {least} and {most}",
        sent.len()
    );
    assert!(
        u128::from(admitted) >= least,
        "{admitted} admitted in {run:?} with requests at most {gap:?} apart: at least {least}"
    );
    // The schedule lives in Redis under the policy's prefix, with a TTL.
    let keys = redis.keys("ratelimit:smooth:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(":gcra"));
    // Counted by a digest of the user, never the user itself: 128 bits in hex.
    let subject = keys[0]
        .trim_start_matches("ratelimit:smooth:")
        .trim_end_matches(":gcra");
    assert!(
        subject.len() == 32 && subject.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        keys[0]
    );
    assert!(redis.ttl(&keys[0]) > 0);
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            r#"rate_limit_decisions_total{backend="redis",policy="smooth",result="limited"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_reload_adds_a_policy_and_keeps_the_counts_of_the_ones_that_stay() {
    let echo = EchoServer::start().await;
    let per_user = "- { name: per-user, key: sub, limit: 3, window_seconds: 3600 }";
    let gw = Gateway::start(&section(echo.port, per_user), &[]).await;
    align_to_window(3600, 15).await;
    let alice = token("alice");
    for _ in 0..2 {
        assert_eq!(status(&gw, "/echo/a", &alice, None).await, 200);
    }
    let generation = metric_sum(&gw.metrics().await, "config_generation");
    // The same policy with a new limit, and a new API-key policy.
    gw.rewrite(&section(
        echo.port,
        "- { name: per-user, key: sub, limit: 4, window_seconds: 3600 }\n\
         - { name: api-key, key: 'header:X-Api-Key', limit: 1, window_seconds: 3600 }",
    ));
    gw.proc.signal("HUP");
    eventually(
        "the reload is applied",
        Duration::from_secs(5),
        async || metric_sum(&gw.metrics().await, "config_generation") == generation + 1.0,
    )
    .await;
    // Two counted before the reload: two more under the new limit of 4, then refused.
    // Each request with a key of its own, so only `per-user` can refuse.
    for key in ["k1", "k2"] {
        assert_eq!(status(&gw, "/echo/a", &alice, Some(key)).await, 200);
    }
    let r = get(&gw, "/echo/a", &alice, None).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("per-user"));
    // The new policy is in force.
    let bob = token("bob");
    let r = get(&gw, "/echo/b", &bob, Some("k1")).await;
    assert_eq!(r.status(), 429, "key `k1` was used once above");
    assert!(r.text().await.unwrap().contains("api-key"));
}

#[test]
fn gateway_t_refuses_a_bad_policy_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "gateway:\n  rate_limit:\n    policies:\n      - { name: x, key: cookie, limit: 1 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["-t", "-c"])
        .arg(&path)
        .env("JWT_SECRET", common::SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gateway.rate_limit.policies[0].key"),
        "{err}"
    );
}
