//! Dependency faults: a fault proxy between the gateway and Redis or a service adds latency,
//! stalls, cuts or refuses; the gateway keeps answering within its budgets and recovers alone.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{
    client, eventually, profile_aggregate, quantile, service_env, token, Fault, FaultProxy,
    Gateway, Mocks, Redis,
};
use serde_json::{json, Value};

const ALL: [&str; 4] = ["user", "order", "product", "recommendation"];

async fn timed_get(url: &str, bearer: &str) -> (u16, Duration, String) {
    let started = Instant::now();
    let r = client()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("answered");
    let status = r.status().as_u16();
    let cache = common::x_cache(&r);
    let body = r.bytes().await.expect("a whole body");
    let v: Value = serde_json::from_slice(&body).expect("a JSON body");
    if status == 200 {
        assert!(v["user"].is_object(), "a profile document: {v}");
    }
    (status, started.elapsed(), cache)
}

#[tokio::test]
async fn redis_faults_cost_at_most_the_command_timeout_and_never_a_5xx() {
    let mut redis = Redis::start();
    let proxy = FaultProxy::start(redis.port).await;
    let mocks = Mocks::start(&ALL);
    let mut env = service_env(&mocks);
    env.push(("REDIS_ADDR", proxy.addr()));
    let section = format!(
        "redis: {{ command_timeout_ms: 100 }}\nrate_limit: {{ per_minute: 100000 }}\n{}",
        profile_aggregate(30, 10_000)
    );
    let gw = Gateway::start(&section, &env).await;
    let t = token("1");
    let profile = gw.url("/api/profile/1");
    eventually(
        "cached through the proxy",
        Duration::from_secs(5),
        async || timed_get(&profile, &t).await.2 == "HIT",
    )
    .await;

    // A request that waits on Redis costs the 5 s delay or a hang; one that gives up at the
    // command timeout (100 ms, a few times at most) takes well under a second. 1.5 s is room for
    // any loaded machine between the two. (What it costs exactly is `make bench`'s to measure.)
    let budget = Duration::from_millis(1500);
    for fault in [
        Fault::Refuse,
        Fault::Stall,
        Fault::Delay(5000),
        Fault::Reset,
    ] {
        proxy.set(fault);
        let mut latencies = Vec::new();
        for _ in 0..60 {
            let (status, took, _) = timed_get(&profile, &t).await;
            assert_eq!(status, 200, "{fault:?}");
            latencies.push(took);
        }
        let p99 = quantile(&mut latencies, 0.99);
        assert!(p99 <= budget, "{fault:?}: p99 {p99:?} over {budget:?}");
        proxy.set(Fault::Pass);
        eventually("back on redis", Duration::from_secs(10), async || {
            timed_get(&profile, &t).await.2 == "HIT"
        })
        .await;
    }

    // Restarted empty: the cache refills and the limiter counts again, with no gateway restart.
    let port = redis.port;
    redis.proc.kill();
    let redis = Redis::start_on(port);
    eventually(
        "cache refilled in the new redis",
        Duration::from_secs(10),
        async || {
            let _ = timed_get(&profile, &t).await;
            // Keys end in `#<declaration fingerprint>`.
            matches!(&redis.keys("profile:*")[..], [k] if k.starts_with("profile:1#"))
                && !redis.keys("ratelimit:*").is_empty()
        },
    )
    .await;
    let m = gw.metrics().await;
    assert!(!m.contains(r#"status="5"#), "no 5xx at all: {m}");
}

fn svc_section(timeout_ms: u64, extra_retry: &str) -> String {
    let svc = format!(
        "{{ timeout_ms: {timeout_ms}, retry: {{ attempts: 3, backoff_ms: 100{extra_retry} }}, breaker: {{ failures: 1000, open_ms: 1000 }} }}"
    );
    format!(
        "rate_limit: {{ per_minute: 100000 }}\n{}services:\n  user: {svc}\n  order: {svc}\n  product: {svc}\n  recommendation: {svc}\n",
        profile_aggregate(0, 10_000)
    )
}

#[tokio::test]
async fn service_faults_give_the_documented_answers_within_budget() {
    let mocks = Mocks::start(&ALL);
    let user_proxy = FaultProxy::start(mocks.ports["user"]).await;
    let order_proxy = FaultProxy::start(mocks.ports["order"]).await;
    let mut env = service_env(&mocks);
    env.retain(|(k, _)| *k != "USER_SERVICE_URL" && *k != "ORDER_SERVICE_URL");
    env.push(("USER_SERVICE_URL", format!("http://{}", user_proxy.addr())));
    env.push((
        "ORDER_SERVICE_URL",
        format!("http://{}", order_proxy.addr()),
    ));
    let gw = Gateway::start(&svc_section(1000, ""), &env).await;
    let t = token("2");
    let url = gw.url("/api/profile/2");
    let get = async || {
        let started = Instant::now();
        let r = client().get(&url).bearer_auth(&t).send().await.unwrap();
        let s = r.status().as_u16();
        (
            s,
            r.json::<Value>().await.unwrap_or(Value::Null),
            started.elapsed(),
        )
    };

    for (fault, name) in [
        (Fault::Stall, "stalled"),
        (Fault::Delay(3000), "slow"),
        (Fault::Reset, "resetting"),
        (Fault::Refuse, "refusing"),
    ] {
        order_proxy.set(fault);
        let (s, body, took) = get().await;
        assert_eq!(s, 200, "orders {name}");
        assert_eq!(body["degraded"], json!(["orders"]), "orders {name}");
        // Within the 1 s call budget; three unbudgeted tries would take over 3 s.
        assert!(
            took < Duration::from_millis(1000 + 1000),
            "orders {name}: {took:?}"
        );
    }
    order_proxy.set(Fault::Pass);

    for (fault, want, code) in [
        (Fault::Stall, 504, "upstream_timeout"),
        (Fault::Reset, 502, "bad_gateway"),
        (Fault::Refuse, 502, "bad_gateway"),
    ] {
        user_proxy.set(fault);
        let (s, body, took) = get().await;
        assert_eq!(s, want, "user {fault:?}: {body}");
        assert_eq!(body["error"], code, "user {fault:?}: {body}");
        assert!(body["message"].is_string(), "user {fault:?}: {body}");
        assert!(
            took < Duration::from_millis(1000 + 1000),
            "user {fault:?}: {took:?}"
        );
    }
    user_proxy.set(Fault::Pass);
    assert_eq!(get().await.0, 200, "recovered");
}

#[tokio::test]
async fn retries_never_outlast_the_call_budget() {
    let mocks = Mocks::start(&ALL);
    let user_proxy = FaultProxy::start(mocks.ports["user"]).await;
    let mut env = service_env(&mocks);
    env.retain(|(k, _)| *k != "USER_SERVICE_URL");
    env.push(("USER_SERVICE_URL", format!("http://{}", user_proxy.addr())));
    let gw = Gateway::start(&svc_section(5000, ""), &env).await;
    // Every try hangs 4 s and then breaks: three tries would take 12 s and more.
    user_proxy.set(Fault::StallThenCut(4000));
    let started = Instant::now();
    let r = client()
        .get(gw.url("/api/profile/3"))
        .bearer_auth(token("3"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    // The first try is cut at 4 s; the retry stalls until the 5 s budget ends: a timeout.
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
    // A second full try would end past 8 s.
    assert!(
        took < Duration::from_millis(5000 + 2000),
        "took {took:?}, past the 5 s budget"
    );
    assert!(
        took >= Duration::from_millis(4000),
        "the first try ran its course: {took:?}"
    );
}

#[tokio::test]
async fn a_failing_service_gets_at_most_twenty_percent_extra_load_from_retries() {
    let mocks = Mocks::start(&ALL);
    mocks.faults("order", json!({"status": 500})).await;
    let env = service_env(&mocks);
    let gw = Gateway::start(
        &svc_section(2000, ", budget_ratio: 0.2, budget_min_per_second: 1"),
        &env,
    )
    .await;
    // Distinct ids, so that coalescing does not hide the calls.
    let t = common::token_with_roles("ops", &["admin"]);
    let requests = 200u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..(requests / 20) {
        let urls = (0..20)
            .map(|i| gw.url(&format!("/api/profile/{}", chunk * 20 + i + 1)))
            .collect();
        tasks.extend(common::concurrent_gets(urls, &t).await);
    }
    assert!(tasks.iter().all(|s| *s == 200), "degraded, never failed");
    let calls = mocks.count("order", "/orders/user/{id}").await;
    // 200 first tries + 20% + the floor's bank (10 tokens) + the floor's refill (1 a second)
    // over the time the run took. Without the budget: 3 tries each, 600 calls.
    let refill = started.elapsed().as_secs() + 1;
    let ceiling = requests + requests / 5 + 10 + refill;
    assert!(calls >= requests, "{calls}");
    assert!(
        calls <= ceiling,
        "{calls} order calls for {requests} requests (ceiling {ceiling})"
    );
}

#[tokio::test]
async fn a_flapping_backend_is_not_bounced() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // /healthz alternates 200 and 500: never two failures in a row.
    let checks = Arc::new(AtomicU64::new(0));
    let c = checks.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n.is_multiple_of(2) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        )
        .fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let section = format!(
        "auth: {{ public_paths: [\"/healthz\", \"/readyz\", \"/flap/\"] }}\nupstreams:\n  flap:\n    backends: [\"127.0.0.1:{port}\"]\n    health_check: {{ kind: http, path: /healthz, interval_ms: 100, consecutive_failure: 2, consecutive_success: 2 }}\nroutes:\n  - {{ prefix: \"/flap/\", upstream: flap }}\n"
    );
    let gw = Gateway::start(&section, &[]).await;
    eventually(
        "a dozen health checks ran",
        Duration::from_secs(10),
        async || checks.load(Ordering::SeqCst) >= 12,
    )
    .await;
    let gauge =
        format!("upstream_backend_healthy{{backend=\"127.0.0.1:{port}\",group=\"flap\"}} 1");
    assert!(gw.metrics().await.contains(&gauge));
    assert_eq!(
        client()
            .get(gw.url("/flap/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.abort();
}

#[tokio::test]
async fn health_needs_two_failures_to_go_down_and_two_successes_to_come_back() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    // Check n is answered 500 for n in {3, 4, 6}, else 200. Checks 4, 6 and 8 wait at a gate
    // until the test has read the gauge that the check before them left.
    let checks = Arc::new(AtomicU64::new(0));
    let gates: Arc<HashMap<u64, Semaphore>> = Arc::new(
        [4, 6, 8]
            .into_iter()
            .map(|n| (n, Semaphore::new(0)))
            .collect(),
    );
    let (c, g) = (checks.clone(), gates.clone());
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = g.get(&n) {
                    let _ = gate.acquire().await;
                }
                if [3, 4, 6].contains(&n) {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let section = format!(
        "upstreams:\n  h:\n    backends: [\"127.0.0.1:{port}\"]\n    health_check: {{ kind: http, path: /healthz, interval_ms: 100, timeout_ms: 10000, consecutive_failure: 2, consecutive_success: 2 }}\nroutes:\n  - {{ prefix: \"/h/\", upstream: h }}\n"
    );
    let gw = Gateway::start(&section, &[]).await;
    let gauge = format!("upstream_backend_healthy{{backend=\"127.0.0.1:{port}\",group=\"h\"}} ");
    let healthy = async || -> u8 {
        let m = gw.metrics().await;
        let line = m
            .lines()
            .find(|l| l.starts_with(&gauge))
            .expect("the gauge");
        line[gauge.len()..].trim().parse().unwrap()
    };
    // Check `gate` is in flight, so the gauge shows the result of the check before it.
    let at_gate = async |gate: u64| {
        eventually(
            "the gated check arrives",
            Duration::from_secs(10),
            async || checks.load(Ordering::SeqCst) > gate,
        )
        .await;
    };

    at_gate(4).await;
    assert_eq!(
        healthy().await,
        1,
        "one failure (check 3) does not take it out"
    );
    gates[&4].add_permits(1);
    eventually(
        "two failures take it out",
        Duration::from_secs(10),
        async || healthy().await == 0,
    )
    .await;
    at_gate(6).await;
    assert_eq!(
        healthy().await,
        0,
        "one success (check 5) does not bring it back"
    );
    gates[&6].add_permits(1);
    at_gate(8).await;
    assert_eq!(
        healthy().await,
        0,
        "a success after a failure (check 7) is one, not two"
    );
    gates[&8].add_permits(1);
    eventually(
        "two successes bring it back",
        Duration::from_secs(10),
        async || healthy().await == 1,
    )
    .await;
    assert!(checks.load(Ordering::SeqCst) > 8, "back only after check 8");
    server.abort();
}

/// `rate_limit_decisions_total{backend="redis"}` summed over results.
fn redis_decisions(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("rate_limit_decisions_total{backend=\"redis\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_stalled_redis_costs_nothing_while_skipped_and_is_used_again_soon_after() {
    let redis = Redis::start();
    let proxy = FaultProxy::start(redis.port).await;
    let echo = common::EchoServer::start().await;
    // Limits under 2,048 a window send every hit to Redis; a 3 s command timeout makes a
    // request that waits on Redis unmistakable.
    let section = format!(
        "redis: {{ command_timeout_ms: 3000 }}\nrate_limit: {{ per_minute: 1000 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    let gw = Gateway::start(&section, &[("REDIS_ADDR", proxy.addr())]).await;
    let t = token("1");
    let url = gw.url("/echo/x");
    let timed = async || {
        let started = Instant::now();
        let r = client().get(&url).bearer_auth(&t).send().await.unwrap();
        assert_eq!(r.status(), 200, "never a failure because of Redis");
        started.elapsed()
    };
    // Answered before a wait on Redis (3 s) could end.
    assert!(redis_decisions(&gw.metrics().await) == 0 && timed().await < Duration::from_secs(2));
    assert_eq!(redis_decisions(&gw.metrics().await), 1, "decided on Redis");

    // Setting the fault cuts the open connection (a fast failure); the reconnected one stalls
    // (a failure after the command timeout). Three failures in a row open the breaker.
    proxy.set(Fault::Stall);
    let incr_errors = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(r#"store_errors_total{backend="redis",op="incr"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut waited = Vec::new();
    while incr_errors(&gw.metrics().await) < 3 {
        waited.push(timed().await);
        assert!(
            waited.len() <= 3,
            "three requests make three failures: {waited:?}"
        );
    }
    assert!(
        waited.iter().any(|t| *t >= Duration::from_millis(2900)),
        "a stalled Redis is waited for up to the command timeout: {waited:?}"
    );
    // Three failures in a row: Redis is skipped for a second, so requests pay nothing for it;
    // then one request probes it, waits out the command timeout (Redis still stalls), and the
    // skip starts again. So of requests sent one after another for the next 1.5 s, all but that
    // probe are answered without waiting on Redis: in milliseconds, where waiting costs 3 s.
    // Bounded in count too: past 1,000 in the window, the local fallback would limit them.
    let from = Instant::now();
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    while from.elapsed() < Duration::from_millis(1500) && fast.len() < 200 {
        let took = timed().await;
        if took < Duration::from_millis(1500) {
            fast.push(took);
        } else {
            slow.push(took);
        }
    }
    assert!(
        slow.len() <= 1,
        "only the probe waits on a stalled Redis: {slow:?}"
    );
    assert!(
        fast.len() >= 5,
        "{} requests while Redis was skipped: {fast:?}",
        fast.len()
    );

    proxy.set(Fault::Pass);
    let back = Instant::now();
    let before = redis_decisions(&gw.metrics().await);
    eventually(
        "decisions are made on Redis again",
        Duration::from_secs(5),
        async || {
            timed().await;
            redis_decisions(&gw.metrics().await) > before
        },
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "back on Redis after {:?}",
        back.elapsed()
    );
}

#[tokio::test]
async fn a_gateway_started_with_redis_down_serves_and_uses_redis_once_it_answers() {
    let port = common::free_port();
    let echo = common::EchoServer::start().await;
    let section = format!(
        "rate_limit: {{ per_minute: 1000 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    let gw = Gateway::start(&section, &[("REDIS_ADDR", format!("127.0.0.1:{port}"))]).await;
    let t = token("1");
    let get = async || {
        let r = client()
            .get(gw.url("/echo/x"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "served whether Redis answers or not");
    };
    for _ in 0..3 {
        get().await;
    }
    let m = gw.metrics().await;
    assert_eq!(
        redis_decisions(&m),
        0,
        "nothing decided on a Redis that is not there"
    );
    assert!(
        m.contains(
            r#"rate_limit_decisions_total{backend="fallback",policy="default",result="allowed"} 3"#
        ),
        "{m}"
    );
    let _redis = Redis::start_on(port);
    eventually(
        "decisions move to Redis",
        Duration::from_secs(10),
        async || {
            get().await;
            redis_decisions(&gw.metrics().await) > 0
        },
    )
    .await;
}
