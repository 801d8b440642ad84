//! The soak: mixed traffic for `SOAK_SECONDS` (default 300) while Redis and one backend are
//! killed and restarted on a schedule. Not part of `make test`; run it with `make soak`.
//! Everything it starts listens on 127.0.0.1 and stops when it ends.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, rss_kib, service_env, token_with_roles, EchoServer, Gateway, Mocks, Redis};

#[derive(Default)]
struct Tally {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    unanswered: u64,
    malformed: Vec<String>,
}

/// Checks one answer's shape; `None` when it is well-formed.
fn malformed(kind: &str, status: u16, content_type: &str, body: &[u8]) -> Option<String> {
    let json = || serde_json::from_slice::<serde_json::Value>(body).ok();
    if status >= 400 && kind != "proxy" {
        let Some(v) = json() else {
            return Some(format!("{kind} {status}: error body is not JSON"));
        };
        if v["error"].is_string() && v["message"].is_string() {
            return None;
        }
        return Some(format!("{kind} {status}: error body without error/message"));
    }
    match (kind, status) {
        ("profile", 200) => {
            let Some(v) = json() else {
                return Some("profile 200 not JSON".into());
            };
            let ok = v["user"].is_object()
                && ["orders", "products", "recommendations", "degraded"]
                    .iter()
                    .all(|k| v[*k].is_array());
            (!ok).then(|| format!("profile 200 without the five keys: {v}"))
        }
        (_, s) if s >= 500 && !content_type.starts_with("application/json") => {
            Some(format!("{kind} {s} not JSON"))
        }
        _ => None,
    }
}

#[tokio::test]
#[ignore = "long-running: make soak"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let redis = Arc::new(Mutex::new(Some(Redis::start())));
    let redis_port = redis.lock().unwrap().as_ref().unwrap().port;
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let spare = Arc::new(Mutex::new(Some(Mocks::start(&["user"]))));
    let spare_port = spare.lock().unwrap().as_ref().unwrap().ports["user"];
    let echo = EchoServer::start().await;
    let mut env = service_env(&mocks);
    env.push(("REDIS_ADDR", format!("127.0.0.1:{redis_port}")));
    let section = format!(
        r#"rate_limit: {{ per_minute: 120, window_seconds: 10, trusted_proxies: ["127.0.0.1/32"] }}
{profile}upstreams:
  users:
    backends: ["{}", "127.0.0.1:{spare_port}"]
    health_check: {{ kind: http, path: /healthz, interval_ms: 500 }}
  echo:
    backends: ["127.0.0.1:{}"]
    health_check: {{ kind: tcp, interval_ms: 1000 }}
routes:
  - {{ prefix: "/users/", upstream: users }}
  - {{ prefix: "/echo/", upstream: echo }}
"#,
        mocks.addr("user"),
        echo.port,
        profile = common::profile_aggregate(5, 10_000)
    );
    let gw = Arc::new(Gateway::start(&section, &env).await);
    let pid = gw.proc.child.id();
    let admin = token_with_roles("ops", &["admin"]);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);

    // Keys without a TTL seen before each Redis kill, and how many samples were taken.
    let no_ttl: Arc<Mutex<Vec<String>>> = Arc::default();
    let sampled: Arc<Mutex<u32>> = Arc::default();

    // Chaos: Redis down 5 s of every 20, the spare backend down 5 s of every 30.
    let chaos = {
        let (redis, spare, stop) = (redis.clone(), spare.clone(), stop.clone());
        let (no_ttl, sampled) = (no_ttl.clone(), sampled.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick += 1;
                match tick % 20 {
                    10 => {
                        // A restarted Redis comes back empty: look for keys without a TTL
                        // before each kill, or the check at the end could only pass.
                        if let Some(r) = redis.lock().unwrap().take() {
                            let keys = r.keys("*");
                            let mut bad = no_ttl.lock().unwrap();
                            bad.extend(keys.into_iter().filter(|k| r.ttl(k) == -1));
                            *sampled.lock().unwrap() += 1;
                        }
                    }
                    15 => *redis.lock().unwrap() = Some(Redis::start_on(redis_port)),
                    _ => {}
                }
                match tick % 30 {
                    5 => drop(spare.lock().unwrap().take()),
                    10 => {
                        *spare.lock().unwrap() = Some(Mocks::start_on(
                            std::collections::HashMap::from([("user", spare_port)]),
                        ))
                    }
                    _ => {}
                }
            }
        })
    };

    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (gw, tally, admin) = (gw.clone(), tally.clone(), admin.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                let n = w * 1_000_003 + i;
                // ~25 requests per second per worker.
                let pace = tokio::time::sleep(Duration::from_millis(40));
                let ip = format!("10.0.{}.{}", w, n % 50);
                let (kind, req) = match n % 10 {
                    0..=2 => (
                        "profile",
                        c.get(gw.url(&format!("/api/profile/{}", 1 + n % 40)))
                            .bearer_auth(&admin),
                    ),
                    3..=4 => (
                        "proxy",
                        c.get(gw.url(&format!("/users/{}", 1 + n % 1000)))
                            .bearer_auth(&admin),
                    ),
                    5 => (
                        "proxy",
                        c.post(gw.url("/echo/post"))
                            .bearer_auth(&admin)
                            .body(format!("body-{n}")),
                    ),
                    6 => (
                        "auth",
                        c.get(gw.url("/users/1"))
                            .bearer_auth(format!("garbage.{n}.token")),
                    ),
                    // One address hammers to be limited.
                    _ => (
                        "limited",
                        c.get(gw.url("/users/2"))
                            .bearer_auth(&admin)
                            .header("X-Forwarded-For", "203.0.113.66"),
                    ),
                };
                let req = if kind == "limited" {
                    req
                } else {
                    req.header("X-Forwarded-For", ip)
                };
                let outcome = req.send().await;
                let mut t = Vec::new();
                match outcome {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let ct = r
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        match r.bytes().await {
                            Ok(body) => {
                                if let Some(m) = malformed(kind, status, &ct, &body) {
                                    t.push(m);
                                }
                                if kind == "proxy"
                                    && n % 10 == 5
                                    && status == 200
                                    && body != format!("body-{n}")
                                {
                                    t.push("echo body differs".into());
                                }
                                let mut g = tally.lock().unwrap();
                                g.sent += 1;
                                *g.by_status.entry(status).or_insert(0) += 1;
                                g.malformed.extend(t);
                            }
                            Err(_) => {
                                let mut g = tally.lock().unwrap();
                                g.sent += 1;
                                g.unanswered += 1;
                            }
                        }
                    }
                    Err(_) => {
                        let mut g = tally.lock().unwrap();
                        g.sent += 1;
                        g.unanswered += 1;
                    }
                }
                pace.await;
            }
        }));
    }

    // RSS after warm-up and at the end.
    tokio::time::sleep(Duration::from_secs(5.min(seconds / 4))).await;
    let rss_start = rss_kib(pid);
    for w in workers {
        w.await.unwrap();
    }
    let rss_end = rss_kib(pid);
    stop.store(true, Ordering::SeqCst);
    chaos.await.unwrap();
    // Redis is up again for the final check (the chaos loop may have left it down).
    if redis.lock().unwrap().is_none() {
        *redis.lock().unwrap() = Some(Redis::start_on(redis_port));
    }
    let no_ttl: Vec<String> = {
        let guard = redis.lock().unwrap();
        let r = guard.as_ref().unwrap();
        let mut bad = no_ttl.lock().unwrap().clone();
        bad.extend(r.keys("*").into_iter().filter(|k| r.ttl(k) == -1));
        bad
    };
    let samples = *sampled.lock().unwrap() + 1;

    let t = tally.lock().unwrap();
    let answered: u64 = t.by_status.values().sum();
    println!("soak: {seconds} s, mixed traffic, Redis down 5 s of every 20, one backend down 5 s of every 30");
    println!(
        "soak: requests sent {}, answered {answered}, unanswered {}",
        t.sent, t.unanswered
    );
    println!("soak: by status {:?}", t.by_status);
    println!(
        "soak: malformed {} {:?}",
        t.malformed.len(),
        t.malformed.iter().take(5).collect::<Vec<_>>()
    );
    println!("soak: gateway RSS {rss_start} KiB after warm-up, {rss_end} KiB at the end");
    println!(
        "soak: Redis keys without TTL: {} (in {samples} samples, one before each kill)",
        no_ttl.len()
    );
    let five_xx: u64 = t.by_status.range(500..).map(|(_, n)| n).sum();
    assert_eq!(t.unanswered, 0, "requests without an answer");
    assert_eq!(five_xx, 0, "no 5xx: {:?}", t.by_status);
    assert!(t.malformed.is_empty(), "malformed answers");
    assert!(no_ttl.is_empty(), "keys without TTL: {no_ttl:?}");
    assert!(
        rss_end < rss_start + 32 * 1024,
        "RSS kept growing: {rss_start} → {rss_end} KiB"
    );
}
