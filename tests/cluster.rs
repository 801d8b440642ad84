//! Shared state on a real Redis Cluster (six `redis-server` nodes: three masters, three
//! replicas): two gateways share one limit and one cache through it, keys carry TTLs, and a
//! master killed under load costs no request.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    client, eventually, free_port, metric_sum as sum, profile_aggregate_with, service_env,
    token_with_roles, x_cache, Gateway, Mocks, RedisCluster,
};

const ADMIN_TOKEN: &str = "admin-token-for-the-cluster-tests-0123";

/// A gateway on the cluster, with in-process cache copies and its admin API on `admin`.
async fn gateway(cluster: &RedisCluster, mocks: &Mocks, per_window: u64, admin: u16) -> Gateway {
    let mut env = service_env(mocks);
    env.push(("REDIS_CLUSTER_NODES", cluster.seeds()));
    env.push(("ADMIN_TOKEN", ADMIN_TOKEN.to_string()));
    let aggregate = profile_aggregate_with(
        2000,
        r#"ttl_seconds: 60, key: "profile:{id}", tags: ["user:{id}"], local: { ttl_seconds: 30 }"#,
    );
    // An hour-long window: no window edge falls inside a test.
    let section = format!(
        "admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         rate_limit: {{ per_minute: {per_window}, window_seconds: 3600 }}\n{aggregate}"
    );
    Gateway::start(&section, &env).await
}

#[tokio::test]
async fn two_gateways_share_one_limit_and_one_cache_on_a_cluster() {
    let cluster = RedisCluster::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let a_admin = free_port();
    let a = gateway(&cluster, &mocks, 30, a_admin).await;
    let b = gateway(&cluster, &mocks, 30, free_port()).await;
    let bearer = token_with_roles("admin-1", &["admin"]);

    // Built through A, served from the cluster through B.
    let profile_7 = async |gw: &Gateway| {
        let r = client()
            .get(gw.url("/api/profile/7"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        x_cache(&r)
    };
    assert_eq!(profile_7(&a).await, "MISS");
    eventually("B hits A's entry", Duration::from_secs(5), async || {
        profile_7(&b).await == "HIT"
    })
    .await;

    // B's copy now answers from B's memory: the cluster is not asked again. Without that copy
    // the MISS below would be explained by the purge's delete in Redis alone.
    assert_eq!(
        sum(
            &b.metrics().await,
            r#"cache_local_entries{aggregate="profile"}"#
        ),
        1.0
    );
    let gets = cluster.calls("get");
    for _ in 0..3 {
        assert_eq!(profile_7(&b).await, "HIT");
    }
    assert_eq!(cluster.calls("get"), gets, "B's hits come from its memory");

    // Purged by tag through A: B's copy in memory goes with it (the announcement reaches B
    // through whichever node it subscribed to).
    eventually(
        "both hear invalidations",
        Duration::from_secs(10),
        async || {
            sum(&a.metrics().await, "cache_invalidation_feed_up") == 1.0
                && sum(&b.metrics().await, "cache_invalidation_feed_up") == 1.0
        },
    )
    .await;
    let purge = client()
        .post(format!("http://127.0.0.1:{a_admin}/cache/invalidate"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"tags": ["user:7"]}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = purge.json().await.unwrap();
    assert_eq!(
        (&v["invalidated"], &v["announced"]),
        (&1.into(), &true.into()),
        "{v}"
    );
    // Pub/sub delivers on its own schedule: B is read until its copy is gone, which only the
    // announcement can do within the copy's 30 s.
    let mut last = String::new();
    eventually("B drops its copy", Duration::from_secs(10), async || {
        last = profile_7(&b).await;
        last != "HIT"
    })
    .await;
    assert_eq!(last, "MISS");
    assert_eq!(
        sum(
            &b.metrics().await,
            r#"cache_invalidation_messages_total{direction="received"}"#
        ),
        1.0,
        "B heard exactly the one announcement"
    );

    // One budget of 30 for this client across both replicas, whatever it already used above.
    let mut admitted = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = client()
            .get(gw.url(&format!("/api/profile/{}", i % 5 + 1)))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    let used_before = 60 - admitted;
    assert!(admitted <= 30, "admitted {admitted}");
    let ma = a.metrics().await;
    let mb = b.metrics().await;
    let allowed = sum(
        &ma,
        "rate_limit_decisions_total{backend=\"redis\",policy=\"default\",result=\"allowed\"}",
    ) + sum(
        &mb,
        "rate_limit_decisions_total{backend=\"redis\",policy=\"default\",result=\"allowed\"}",
    );
    assert_eq!(
        allowed, 30.0,
        "exactly the limit, all decided on the cluster ({used_before} refused)"
    );
    assert_eq!(
        sum(&ma, "rate_limit_decisions_total{backend=\"fallback\"")
            + sum(&mb, "rate_limit_decisions_total{backend=\"fallback\""),
        0.0
    );

    // Every key the gateways wrote is namespaced and expires.
    let keys = cluster.keys_with_ttl("*");
    assert!(
        keys.iter().any(|(k, _)| k.starts_with("ratelimit:")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|(k, _)| k.starts_with("profile:")),
        "{keys:?}"
    );
    // Every key, not just some: the gateway writes under these prefixes and nowhere else.
    for (k, ttl) in &keys {
        assert!(
            ["ratelimit:", "profile:", "cachetag:"]
                .iter()
                .any(|p| k.starts_with(p)),
            "{k} is outside the gateway's namespaces"
        );
        assert!(*ttl > 0, "{k} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn a_master_killed_under_load_costs_no_request_and_state_resumes_on_its_replica() {
    let mut cluster = RedisCluster::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let gw = Arc::new(gateway(&cluster, &mocks, 1_000_000, free_port()).await);
    let bearer = token_with_roles("admin-1", &["admin"]);

    // ~200 requests a second (20 workers, one every 100 ms each) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..20u64 {
        let (gw, bearer, stop, sent) = (gw.clone(), bearer.clone(), stop.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut bad = Vec::new();
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let url = gw.url(&format!("/api/profile/{}", (w * 7 + n) % 50 + 1));
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                match c.get(url).bearer_auth(&bearer).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => bad.push(format!("status {}", r.status())),
                    Err(e) => bad.push(format!("error {e}")),
                }
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()))
                    .await;
            }
            bad
        }));
    }

    let redis_decisions = async || {
        sum(
            &gw.metrics().await,
            "rate_limit_decisions_total{backend=\"redis\",policy=\"default\",result=\"allowed\"}",
        )
    };
    eventually(
        "traffic decided on the cluster",
        Duration::from_secs(10),
        async || redis_decisions().await > 100.0,
    )
    .await;
    eventually(
        "the gateway sees the three masters",
        Duration::from_secs(10),
        async || sum(&gw.metrics().await, "redis_cluster_masters") == 3.0,
    )
    .await;
    // The master that owns this client's limiter key: its loss is what the limiter must ride.
    let victim = cluster
        .master_holding("ratelimit:*")
        .expect("a master holds the limiter's key");
    let fallback = async || {
        sum(
            &gw.metrics().await,
            "rate_limit_decisions_total{backend=\"fallback\"",
        )
    };
    assert_eq!(fallback().await, 0.0, "no fallback before the failover");
    let killed = Instant::now();
    cluster.kill(victim);
    // Decided locally while the slot has no master, then back on the cluster once the replica
    // took over: decisions on Redis move again after fallback ones were made.
    let before = redis_decisions().await;
    let mut resumed = Duration::ZERO;
    eventually(
        "decisions back on the cluster after falling back",
        Duration::from_secs(30),
        async || {
            let fell_back = fallback().await;
            resumed = killed.elapsed();
            fell_back > 0.0 && redis_decisions().await > before + 200.0
        },
    )
    .await;
    // With a 1 s node timeout the replica is promoted in about 3 s; 20 s leaves a loaded CI
    // machine room while still failing a gateway that never finds the new master (it would
    // fall back for as long as it runs).
    assert!(
        resumed < Duration::from_secs(20),
        "decisions back on the cluster only after {resumed:?}"
    );
    // A few more seconds of traffic on the promoted replica.
    let at = sent.load(Ordering::Relaxed);
    eventually(
        "traffic after the failover",
        Duration::from_secs(20),
        async || sent.load(Ordering::Relaxed) > at + 400,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut bad = Vec::new();
    for w in workers {
        bad.extend(w.await.unwrap());
    }
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        sent.load(Ordering::Relaxed),
        &bad[..bad.len().min(10)]
    );
    let m = gw.metrics().await;
    eprintln!(
        "failover: master {victim} killed; decisions back on the cluster after {resumed:?}; {} fallback decisions, {} requests",
        sum(&m, "rate_limit_decisions_total{backend=\"fallback\""),
        sent.load(Ordering::Relaxed)
    );
    assert!(!cluster.masters().contains(&victim));
    eventually(
        "the failover counted",
        Duration::from_secs(10),
        async || sum(&gw.metrics().await, "redis_topology_changes_total") >= 1.0,
    )
    .await;
}

/// Requests one after another to `gw` for `run`: how many were admitted, and the longest from
/// sending one request to the answer of the next.
async fn admitted_during(gw: &Gateway, bearer: &str, run: Duration) -> (u64, Duration) {
    let c = client();
    let started = Instant::now();
    let mut admitted = 0;
    let mut gap = Duration::ZERO;
    let mut previous: Option<Instant> = None;
    // Bounded in count as well as time.
    for _ in 0..50_000 {
        if started.elapsed() >= run {
            break;
        }
        let sent = Instant::now();
        let r = c.get(gw.url("/echo/g")).bearer_auth(bearer).send().await;
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => admitted += 1,
            Ok(429) => {}
            other => panic!("unexpected {other:?}"),
        }
        if let Some(p) = previous {
            gap = gap.max(p.elapsed());
        }
        previous = Some(sent);
    }
    (admitted, gap)
}

/// A node's clock (`TIME`), in microseconds: what the GCRA script sees as now (every node runs on
/// this machine's clock).
fn redis_time_us(port: u16) -> u64 {
    let t = RedisCluster::query(port, "TIME").expect("TIME");
    let (secs, micros) = t.split_once(' ').expect("seconds and microseconds");
    secs.parse::<u64>().unwrap() * 1_000_000 + micros.parse::<u64>().unwrap()
}

#[tokio::test]
async fn gcra_on_a_cluster_holds_the_rate_across_two_gateways() {
    let cluster = RedisCluster::start();
    let echo = common::EchoServer::start().await;
    let section = format!(
        "rate_limit:\n  per_minute: 1000000\n  policies:\n    - {{ name: smooth, key: sub, limit: 50, window_seconds: 1, algorithm: gcra, burst: 5 }}\n\
         upstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}\n\
         routes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    let env = [("REDIS_CLUSTER_NODES", cluster.seeds())];
    let a = Gateway::start(&section, &env).await;
    let b = Gateway::start(&section, &env).await;
    let bearer = common::token("smooth-user");
    // Both replicas offer far more than 50 a second for 10 s; together they admit the burst
    // and then 50 a second.
    let run = Duration::from_secs(10);
    let clock = cluster.nodes[0].0;
    let from = redis_time_us(clock);
    let started = Instant::now();
    let ((na, gap_a), (nb, gap_b)) = tokio::join!(
        admitted_during(&a, &bearer, run),
        admitted_during(&b, &bearer, run)
    );
    let took = started.elapsed();
    let span_us = redis_time_us(clock) - from;
    let admitted = na + nb;
    // One admission per 20 ms, 5 at once, on one schedule in the cluster. From a fresh schedule
    // that admits at most 5 plus one per whole 20 ms of Redis's clock, however the requests
    // are spread: exact. From below: after an admission, a request decided 20 ms later is
    // admitted; a replica may refuse without asking Redis for one request's time longer (it
    // remembers the wait Redis named from when the answer arrived), and each replica decides
    // its next request within its `gap` (the longest from sending one request to the answer of
    // the next). So admissions are at most 20 ms + 2 × gap apart, the smaller replica's gap.
    let most = 5 + span_us / 20_000;
    let gap = gap_a.min(gap_b);
    let step = Duration::from_millis(20) + 2 * gap;
    // Each replica sends until `run` has passed.
    let least = (run.saturating_sub(2 * gap).as_micros() / step.as_micros()) as u64;
    eprintln!(
        "gcra on the cluster: {na} + {nb} admitted in {took:?} (Redis: {span_us} µs), requests \
         at most {gap:?} apart: between {least} and {most}"
    );
    assert!(
        admitted <= most,
        "{admitted} admitted in {span_us} µs of Redis's clock: at most {most}"
    );
    assert!(
        admitted >= least,
        "{admitted} admitted in {took:?} with requests at most {gap:?} apart: at least {least}"
    );
    assert!(na > 0 && nb > 0, "both replicas admitted some: {na} {nb}");
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert_eq!(
            sum(&m, "rate_limit_decisions_total{backend=\"fallback\""),
            0.0
        );
        assert!(
            sum(
                &m,
                "rate_limit_decisions_total{backend=\"redis\",policy=\"smooth\",result=\"limited\"}"
            ) > 0.0
        );
    }
    let keys = cluster.keys_with_ttl("ratelimit:smooth:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].1 > 0, "{keys:?}");
}
