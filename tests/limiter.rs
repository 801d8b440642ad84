//! The Redis limiter as a library against a real redis-server: round trips shared by concurrent
//! hits, counts taken in blocks, replicas never past the shared limit, and hits queued behind a
//! refill whose request was dropped.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::Redis;
/// A client of `redis` as one replica builds it.
fn store(redis: &Redis) -> std::sync::Arc<gateway::store::RedisStore> {
    let url = format!("redis://{}", redis.addr());
    let cfg = gateway::config::RedisConfig {
        url: Some(url.clone()),
        cluster: vec![],
        sentinel: None,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(2),
    };
    std::sync::Arc::new(gateway::store::RedisStore::new(&url, cfg).expect("redis client"))
}

/// A limiter on `redis` as one replica builds it.
fn redis_limiter(redis: &Redis, limit: u64) -> gateway::edge::ratelimit::RateLimiter {
    gateway::edge::ratelimit::RateLimiter::new(
        &gateway::config::RateLimitConfig {
            limit,
            window: Duration::from_secs(60),
            trusted_proxies: vec![],
            policies: vec![],
        },
        Some(store(redis)),
    )
}

/// `INCRBY` commands Redis has run, scripts included.
fn incrby_calls(redis: &Redis) -> u64 {
    redis.calls("incrby")
}

fn redis_count(redis: &Redis, ip: &str, now: u64) -> u64 {
    let mut c = redis.conn().expect("redis connection");
    redis::cmd("GET")
        .arg(format!("ratelimit:{ip}:{}", now - now % 60))
        .query(&mut c)
        .expect("GET")
}

// Limits under 2,048 take one count per hit from Redis; hits that arrive while one is in flight
// travel together as one INCRBY and still get distinct places, as if sent one by one.
#[tokio::test]
async fn concurrent_hits_share_a_round_trip_and_keep_exact_places() {
    let redis = Redis::start();
    let limiter = redis_limiter(&redis, 1000);
    let ip: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
    let now = 1_700_000_010;
    let decisions = futures::future::join_all((0..100).map(|_| limiter.check(ip, now))).await;
    let mut remaining: Vec<u64> = decisions.iter().map(|d| d.remaining).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (900..1000).collect::<Vec<u64>>());
    assert!(decisions
        .iter()
        .all(|d| d.allowed && d.backend == gateway::edge::ratelimit::LimitBackend::Redis));
    // The first hit's own command, then the 99 that queued behind it as one.
    assert_eq!(incrby_calls(&redis), 2);
    assert_eq!(redis_count(&redis, "192.0.2.7", now), 100);
}

// Large limits take counts in blocks (1/1024 of the limit, at most 64): a hundred hits in a row
// cost two round trips, and the places still come out in order.
#[tokio::test]
async fn large_limits_take_counts_in_blocks() {
    let redis = Redis::start();
    let limit = 1 << 20;
    let limiter = redis_limiter(&redis, limit);
    let ip: std::net::IpAddr = "192.0.2.8".parse().expect("ip");
    let now = 1_700_000_010;
    for i in 1..=100 {
        let d = limiter.check(ip, now).await;
        assert_eq!(d.backend, gateway::edge::ratelimit::LimitBackend::Redis);
        assert_eq!(d.remaining, limit - i);
    }
    assert_eq!(incrby_calls(&redis), 2);
    assert_eq!(redis_count(&redis, "192.0.2.8", now), 128);
}

// Two replicas with blocks of 4 hammering one client concurrently: a count is taken from Redis
// before it is used, so together they admit exactly the limit, never more.
#[tokio::test]
async fn replicas_taking_blocks_never_admit_past_the_shared_limit() {
    let redis = Redis::start();
    let (a, b) = (redis_limiter(&redis, 4096), redis_limiter(&redis, 4096));
    let ip: std::net::IpAddr = "192.0.2.9".parse().expect("ip");
    let now = 1_700_000_010;
    let mut admitted = 0;
    for _ in 0..50 {
        let hits = (0..100).flat_map(|_| [a.check(ip, now), b.check(ip, now)]);
        let decisions = futures::future::join_all(hits).await;
        assert!(decisions
            .iter()
            .all(|d| d.backend == gateway::edge::ratelimit::LimitBackend::Redis));
        admitted += decisions.iter().filter(|d| d.allowed).count();
    }
    assert_eq!(admitted, 4096);
    assert!(redis_count(&redis, "192.0.2.9", now) >= 10_000);
}

// The hit fetching a block is dropped (its client went away) while others wait on that block:
// they are served all the same instead of waiting on a future nobody polls.
#[tokio::test]
async fn hits_queued_behind_a_dropped_refill_are_still_answered() {
    let redis = Redis::start();
    let limiter = redis_limiter(&redis, 1000);
    let ip: std::net::IpAddr = "192.0.2.10".parse().expect("ip");
    let now = 1_700_000_010;
    let mut leader = Box::pin(limiter.check(ip, now));
    assert!(futures::poll!(&mut leader).is_pending());
    let mut waiters = Box::pin(futures::future::join_all(
        (0..10).map(|_| limiter.check(ip, now)),
    ));
    assert!(futures::poll!(&mut waiters).is_pending());
    drop(leader);
    let decisions = tokio::time::timeout(Duration::from_secs(5), waiters)
        .await
        .expect("waiters answered");
    let mut remaining: Vec<u64> = decisions.iter().map(|d| d.remaining).collect();
    remaining.sort_unstable();
    remaining.dedup();
    assert_eq!(remaining.len(), 10, "distinct places: {remaining:?}");
    assert!(decisions
        .iter()
        .all(|d| d.allowed && d.backend == gateway::edge::ratelimit::LimitBackend::Redis));
}

/// Limits with one GCRA policy by client address on `redis`, as two replicas build them.
fn gcra_limits(redis: &Redis, limit: u64, burst: u64) -> gateway::edge::ratelimit::Limits {
    gateway::edge::ratelimit::Limits::new(
        &gateway::config::RateLimitConfig {
            limit: u64::MAX / 2,
            window: Duration::from_secs(60),
            trusted_proxies: vec![],
            policies: vec![gateway::config::PolicyConfig {
                name: "smooth".into(),
                key: gateway::config::PolicyKey::Ip,
                limit,
                window: Duration::from_secs(60),
                algorithm: gateway::config::Algorithm::Gcra,
                burst,
                routes: vec![],
                on_store_error: gateway::config::OnStoreError::Local,
            }],
        },
        Some(store(redis)),
    )
}

// A GCRA policy of 2,048 or more per window asks Redis for a block of admissions per script
// (here 58 of 60,000 a minute): two replicas hammering one client admit the burst plus the rate
// over the elapsed time, never more, in a few scripts rather than one per request.
#[tokio::test]
async fn gcra_blocks_keep_replicas_within_the_schedule_in_few_round_trips() {
    let redis = Redis::start();
    let (a, b) = (
        gcra_limits(&redis, 60_000, 200),
        gcra_limits(&redis, 60_000, 200),
    );
    let ip = Some("192.0.2.11".parse().expect("ip"));
    let headers = http::HeaderMap::new();
    let started = std::time::Instant::now();
    let mut admitted = 0u64;
    for _ in 0..400 {
        for l in [&a, &b] {
            let v = l
                .before_auth(ip, gateway::edge::ratelimit::Scope::path("/"), &headers, 0)
                .await
                .expect("a verdict");
            assert_eq!(
                v.shown.backend,
                gateway::edge::ratelimit::LimitBackend::Redis
            );
            admitted += u64::from(v.allowed());
        }
    }
    // One admission per millisecond of schedule: the burst, plus the time that passed. Below
    // that by at most what the two replicas may hold back: each a block it took and has not
    // spent (58) and a refusal remembered until Redis's named time (up to a block's worth).
    let ms = started.elapsed().as_millis() as u64;
    let schedule = (200 + ms).min(800);
    assert!(
        admitted <= 200 + ms + 1 && admitted + 4 * 58 >= schedule,
        "{admitted} admitted in {ms} ms (schedule {schedule})"
    );
    // Admissions come in blocks and refusals are remembered until Redis's named time.
    let scripts = redis.calls("evalsha");
    eprintln!("{admitted} admitted in {ms} ms with {scripts} scripts for 800 decisions");
    // 22 measured on an idle machine; a loaded one spends longer per decision, which changes
    // block sizes but not their order of magnitude.
    assert!(scripts <= 40, "{scripts} scripts for 800 decisions");

    // The rate itself, over long enough for it to matter: offered about four decisions a
    // millisecond for 1.5 s on the real clock (a refusal is remembered until Redis's named time,
    // which only a clock can reach), the two replicas together admit one a millisecond, give or
    // take what they hold back.
    for _ in 0..20_000 {
        if started.elapsed() >= Duration::from_millis(1500) {
            break;
        }
        for l in [&a, &a, &b, &b] {
            let v = l
                .before_auth(
                    ip,
                    gateway::edge::ratelimit::Scope::path("/"),
                    &headers,
                    gateway::clock::unix_now_micros(),
                )
                .await
                .expect("a verdict");
            admitted += u64::from(v.allowed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = started.elapsed().as_millis() as u64;
    eprintln!("{admitted} admitted in {ms} ms in all");
    assert!(
        admitted <= 200 + ms + 1 && admitted + 4 * 58 >= 200 + ms,
        "{admitted} admitted in {ms} ms: the schedule is {}",
        200 + ms
    );
}
