//! Redis Sentinel: the gateway asks three real sentinels (`redis-server --sentinel`) for the
//! master, and follows it when the master is killed and its replica promoted (the cache
//! invalidation feed included).
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::{Duration, Instant};

use common::{
    client, eventually, metric_sum as sum, profile_aggregate, service_env, token_with_roles,
    Gateway, Mocks, RedisCluster, RedisSentinels,
};

/// A gateway on `redis`'s master (limits and the profile cache there), and the mocks it uses.
async fn gateway(redis: &RedisSentinels) -> (Mocks, Gateway) {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let mut env = service_env(&mocks);
    env.push(("REDIS_ADDR", redis.addr()));
    let section = format!(
        "rate_limit: {{ per_minute: 1000000, window_seconds: 3600 }}\n{}",
        profile_aggregate(60, 2000)
    );
    let gw = Gateway::start(&section, &env).await;
    (mocks, gw)
}

/// The status of an admin's `GET /api/profile/{i}`.
async fn profile_status(gw: &Gateway, i: u64) -> u16 {
    client()
        .get(gw.url(&format!("/api/profile/{i}")))
        .bearer_auth(token_with_roles("admin-1", &["admin"]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_gateway_follows_the_master_the_sentinels_promote() {
    let mut redis = RedisSentinels::start();
    let (_mocks, gw) = gateway(&redis).await;
    let get = async |i: u64| profile_status(&gw, i).await;
    let on_redis = async || {
        sum(
            &gw.metrics().await,
            "rate_limit_decisions_total{backend=\"redis\",policy=\"default\",result=\"allowed\"}",
        )
    };
    for i in 0..20 {
        assert_eq!(get(i % 5 + 1).await, 200);
    }
    assert_eq!(on_redis().await, 20.0, "decided on the sentinels' master");
    let old = redis.master.port;
    assert_eq!(redis.current_master(), Some(old));
    let feed_up = async || sum(&gw.metrics().await, "cache_invalidation_feed_up") == 1.0;
    eventually(
        "subscribed to invalidations on the master",
        Duration::from_secs(10),
        feed_up,
    )
    .await;

    redis.master.proc.kill();
    let killed = Instant::now();
    // Requests keep being answered during the failover (the local limiter decides, the cache
    // is bypassed), and once the sentinels name the replica the gateway writes to it: each
    // round asks for an aggregate never asked before and looks for its entry there.
    let mut n = 100u64;
    eventually(
        "writes on the promoted replica",
        Duration::from_secs(30),
        async || {
            n += 1;
            assert_eq!(get(n).await, 200, "request {n} during the failover");
            redis.current_master() == Some(redis.replica_port)
                && RedisCluster::query(redis.replica_port, &format!("KEYS profile:{n}#*"))
                    .is_some_and(|k| !k.is_empty())
        },
    )
    .await;
    eprintln!(
        "sentinel failover followed after {:?} ({} requests meanwhile)",
        killed.elapsed(),
        n - 100
    );
    assert!(on_redis().await > 20.0);
    // The invalidation feed lost its master too, and subscribed again on the promoted one.
    eventually(
        "subscribed on the promoted master",
        Duration::from_secs(20),
        feed_up,
    )
    .await;
    assert!(
        sum(
            &gw.metrics().await,
            r#"store_errors_total{backend="redis",op="subscribe"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_demoted_master_answering_readonly_is_left_for_the_one_the_sentinels_name() {
    let redis = RedisSentinels::start();
    let (_mocks, gw) = gateway(&redis).await;
    let get = async |i: u64| profile_status(&gw, i).await;
    for i in 0..5 {
        assert_eq!(get(i + 1).await, 200);
    }
    let (old, new) = (redis.master.port, redis.replica_port);
    assert!(
        RedisCluster::query(old, "KEYS profile:1#*").is_some_and(|k| !k.is_empty()),
        "written on the first master"
    );

    // The roles swap while both stay up: the gateway's connection to the old master is never
    // dropped, so only its `READONLY` answers can send the gateway back to the sentinels. The
    // sentinels are then told to watch the new master (a failover they did themselves would
    // also kill the old master's client connections).
    RedisCluster::query(new, "REPLICAOF NO ONE").expect("promote");
    RedisCluster::query(old, &format!("REPLICAOF 127.0.0.1 {new}")).expect("demote");
    RedisCluster::poll(old, "INFO replication", |r| r.contains("role:slave"));
    for (port, _) in &redis.sentinels {
        RedisCluster::query(*port, "SENTINEL REMOVE mymaster").expect("remove");
        RedisCluster::query(
            *port,
            &format!("SENTINEL MONITOR mymaster 127.0.0.1 {new} 2"),
        )
        .expect("monitor");
    }
    assert_eq!(redis.current_master(), Some(new));

    // Every request answered meanwhile; the next write after a `READONLY` lands on the new one.
    let mut n = 100u64;
    eventually(
        "writes on the new master",
        Duration::from_secs(30),
        async || {
            n += 1;
            assert_eq!(get(n).await, 200, "request {n} across the swap");
            RedisCluster::query(new, &format!("KEYS profile:{n}#*")).is_some_and(|k| !k.is_empty())
        },
    )
    .await;
    let m = gw.metrics().await;
    assert!(
        sum(&m, "store_errors_total{backend=\"redis\"") >= 1.0,
        "the READONLY answer was seen as a store error"
    );
    // The old master still runs, as a replica: nothing else could have moved the gateway.
    assert!(RedisCluster::query(old, "INFO replication").is_some_and(|r| r.contains("role:slave")));
}
