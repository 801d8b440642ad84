//! Canary splits (weighted, sticky by cookie across replicas), consistent hashing and
//! least-requests balancing, and request mirroring, against the real gateway and real HTTP
//! backends.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, metric_sum, Gateway};
use parking_lot::Mutex;

/// What a backend was sent: the `x-mirrored-from` header and the body, per request.
type Seen = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// A backend answering its `tag` after `delay`, counting requests and keeping what mirrored
/// copies carried (header `x-mirrored-from`, body).
struct Backend {
    port: u16,
    hits: Arc<AtomicU64>,
    seen: Seen,
}

impl Backend {
    async fn start(tag: &'static str, delay: Duration, status: u16) -> Backend {
        let hits = Arc::new(AtomicU64::new(0));
        let seen: Seen = Arc::default();
        let (h, s) = (hits.clone(), seen.clone());
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .fallback(move |req: axum::extract::Request| {
                let (h, s) = (h.clone(), s.clone());
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    let mirrored = req
                        .headers()
                        .get("x-mirrored-from")
                        .map(|v| v.to_str().unwrap_or("").to_string());
                    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap_or_default();
                    s.lock().push((mirrored, body.to_vec()));
                    tokio::time::sleep(delay).await;
                    (axum::http::StatusCode::from_u16(status).unwrap(), tag)
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { port, hits, seen }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

fn group(name: &str, ports: &[u16], extra: &str) -> String {
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "  {name}: {{ backends: [{}], health_check: {{ kind: tcp, interval_ms: 500 }}{extra} }}\n",
        list.join(", ")
    )
}

fn section(groups: &str, routes: &str) -> String {
    format!(
        "rate_limit: {{ per_minute: 100000000 }}\nlimits: {{ max_connections_per_ip: 0 }}\nupstreams:\n{groups}routes:\n{routes}"
    )
}

/// `n` GETs of `path`, `conc` at a time, each with `headers(i)`: the bodies, in order.
async fn many(
    gw: &Gateway,
    path: &str,
    n: usize,
    conc: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<String> {
    let headers = Arc::new(headers);
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(vec![String::new(); n]));
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (url, headers, next, out) =
                (gw.url(path), headers.clone(), next.clone(), out.clone());
            tokio::spawn(async move {
                let http = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return;
                    }
                    let mut req = http.get(&url);
                    for (k, v) in headers(i) {
                        req = req.header(k, v);
                    }
                    let r = req.send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    out.lock()[i] = r.text().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(out).unwrap().into_inner()
}

#[tokio::test]
async fn a_weighted_split_holds_its_weights_and_a_sticky_cookie_keeps_each_client_on_one_side() {
    let v1 = Backend::start("v1", Duration::ZERO, 200).await;
    let v2 = Backend::start("v2", Duration::ZERO, 200).await;
    let groups = group("v1", &[v1.port], "") + &group("v2", &[v2.port], "");
    let routes = r#"  - { name: canary, match: { path: { prefix: "/c/" } }, auth: public, split: [{ upstream: v1, weight: 95 }, { upstream: v2, weight: 5 }] }
  - { name: sticky, match: { path: { prefix: "/s/" } }, auth: public, split: [{ upstream: v1, weight: 50 }, { upstream: v2, weight: 50 }], sticky: { cookie: canary } }
"#;
    let conf = section(&groups, routes);
    let gw = Gateway::start(&conf, &[]).await;
    // 95/5 over 20,000 requests: within 1.5 points.
    let bodies = many(&gw, "/c/x", 20_000, 32, |_| vec![]).await;
    let v2_share = bodies.iter().filter(|b| *b == "v2").count() as f64 / 200.0;
    assert!((3.5..=6.5).contains(&v2_share), "v2 got {v2_share}%");
    let m = gw.metrics().await;
    let counted = metric_sum(&m, r#"split_requests_total{route="canary",upstream="v2"}"#);
    assert_eq!(
        counted as usize,
        bodies.iter().filter(|b| *b == "v2").count(),
        "counted as sent"
    );

    // 100 clients: the first answer sets the cookie; 49 more requests with it stay on its side.
    let http = client();
    let mut cookies = Vec::new();
    for _ in 0..100 {
        let r = http.get(gw.url("/s/x")).send().await.unwrap();
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            set.starts_with("canary=") && set.contains("HttpOnly"),
            "{set}"
        );
        let side = r.text().await.unwrap();
        cookies.push((set.split(';').next().unwrap().to_string(), side));
    }
    let sides: Arc<Vec<(String, String)>> = Arc::new(cookies);
    let s2 = sides.clone();
    let bodies = many(&gw, "/s/x", 4900, 16, move |i| {
        vec![("cookie".into(), s2[i % 100].0.clone())]
    })
    .await;
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(*body, sides[i % 100].1, "client {} moved", i % 100);
    }
    let on_v2 = sides.iter().filter(|(_, s)| s == "v2").count();
    assert!((25..=75).contains(&on_v2), "{on_v2} of 100 clients on v2");
    // Another replica puts each cookie on the same side (a hash, not memory).
    let other = Gateway::start(&conf, &[]).await;
    for (cookie, side) in sides.iter() {
        let r = http
            .get(other.url("/s/x"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("set-cookie").is_none(),
            "a client with the cookie keeps it"
        );
        assert_eq!(&r.text().await.unwrap(), side);
    }
    // A side with no healthy backend hands its share to the other.
    let dead = common::free_port();
    let groups_down = group("v1", &[v1.port], "") + &group("v2", &[dead], "");
    let down = Gateway::start(&section(&groups_down, routes), &[]).await;
    let v2_health = format!(r#"upstream_backend_healthy{{backend="127.0.0.1:{dead}",group="v2"}}"#);
    eventually(
        "v2's only backend is down",
        Duration::from_secs(10),
        async || {
            let m = down.metrics().await;
            m.contains(&v2_health) && metric_sum(&m, &v2_health) == 0.0
        },
    )
    .await;
    let bodies = many(&down, "/c/x", 400, 8, |_| vec![]).await;
    assert!(
        bodies.iter().all(|b| b == "v1"),
        "every request served by v1"
    );
}

#[tokio::test]
async fn consistent_hashing_moves_few_keys_and_least_requests_avoids_the_slow_backend() {
    let mut four = Vec::new();
    for tag in ["a", "b", "c", "d"] {
        four.push(Backend::start(tag, Duration::ZERO, 200).await);
    }
    let ports: Vec<u16> = four.iter().map(|b| b.port).collect();
    let route =
        "  - { name: h, match: { path: { prefix: \"/h/\" } }, auth: public, upstream: hashed }\n";
    let balance = ", balance: { hash: \"header:X-Key\" }";
    let gw = Gateway::start(&section(&group("hashed", &ports, balance), route), &[]).await;
    let keys = |n| move |i: usize| vec![("x-key".to_string(), format!("key-{}", i % n))];
    let before = many(&gw, "/h/x", 1000, 16, keys(1000)).await;
    let again = many(&gw, "/h/x", 1000, 16, keys(1000)).await;
    assert_eq!(before, again, "a key stays on its backend");
    let used: std::collections::BTreeSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 4, "the keys spread over all four");
    // One of four leaves (a reload without it): only its keys move.
    gw.rewrite(&section(&group("hashed", &ports[..3], balance), route));
    gw.proc.signal("HUP");
    eventually("the reload applied", Duration::from_secs(10), async || {
        metric_sum(&gw.metrics().await, r#"config_reload_total{result="ok"}"#) == 1.0
    })
    .await;
    let after = many(&gw, "/h/x", 1000, 16, keys(1000)).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let on_d = before.iter().filter(|b| *b == "d").count();
    assert!(after.iter().all(|b| b != "d"));
    assert!(moved <= 300, "{moved} of 1,000 keys moved (d had {on_d})");
    assert_eq!(moved, on_d, "exactly d's keys moved");

    // least_requests: one backend answers in 100 ms, the other at once.
    let slow = Backend::start("slow", Duration::from_millis(100), 200).await;
    let fast = Backend::start("fast", Duration::ZERO, 200).await;
    let route =
        "  - { name: l, match: { path: { prefix: \"/l/\" } }, auth: public, upstream: least }\n";
    let gw2 = Gateway::start(
        &section(
            &group(
                "least",
                &[slow.port, fast.port],
                ", balance: least_requests",
            ),
            route,
        ),
        &[],
    )
    .await;
    many(&gw2, "/l/x", 400, 16, |_| vec![]).await;
    let (s, f) = (slow.hits(), fast.hits());
    assert_eq!(s + f, 400);
    assert!(s * 4 < f, "slow {s}, fast {f}: the slow one gets fewer");
}

#[tokio::test]
async fn a_mirror_gets_copies_and_never_changes_the_clients_answer() {
    let primary = Backend::start("primary", Duration::ZERO, 200).await;
    let mirror = Backend::start("mirror", Duration::ZERO, 500).await;
    let hanging = Backend::start("hang", Duration::from_secs(3600), 200).await;
    let groups = group("primary", &[primary.port], "")
        + &group("shadow", &[mirror.port], "")
        + &group("stuck", &[hanging.port], ", read_timeout_ms: 60000");
    let routes = r#"  - { name: mirrored, match: { path: { prefix: "/m/" } }, auth: public, upstream: primary, mirror: { upstream: shadow } }
  - { name: half, match: { path: { prefix: "/half/" } }, auth: public, upstream: primary, mirror: { upstream: shadow, percent: 50 } }
  - { name: stuck, match: { path: { prefix: "/stuck/" } }, auth: public, upstream: primary, mirror: { upstream: stuck, max_in_flight: 2 } }
"#;
    let gw = Gateway::start(&section(&groups, routes), &[]).await;
    let http = client();
    // Copies carry the body and say where they come from; the mirror's 500 is not the client's.
    for i in 0..10 {
        let r = http
            .post(gw.url("/m/x"))
            .body(format!("body-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "primary");
    }
    eventually("ten copies arrived", Duration::from_secs(10), async || {
        mirror.hits() == 10
    })
    .await;
    let seen = mirror.seen.lock().clone();
    for i in 0..10 {
        assert!(
            seen.contains(&(
                Some("mirrored".to_string()),
                format!("body-{i}").into_bytes()
            )),
            "{seen:?}"
        );
    }
    // A mirror that never answers: the client's answers come as before; two copies in flight,
    // the other eight dropped and counted.
    for _ in 0..10 {
        let r = tokio::time::timeout(Duration::from_secs(10), http.get(gw.url("/stuck/x")).send())
            .await
            .expect("the client is answered while the mirror hangs")
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually(
        "two copies reached the hanging mirror",
        Duration::from_secs(10),
        async || hanging.hits() == 2,
    )
    .await;
    let m = gw.metrics().await;
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("mirror_requests_total"))
        .collect();
    assert_eq!(
        metric_sum(
            &m,
            r#"mirror_requests_total{result="dropped",route="stuck"}"#
        ),
        8.0,
        "{lines:?}"
    );
    assert_eq!(
        metric_sum(
            &m,
            r#"mirror_requests_total{result="sent",route="mirrored"}"#
        ),
        10.0
    );
    // percent: 50 of 1,000 requests, about half copied.
    let before = mirror.hits();
    many(&gw, "/half/x", 1000, 16, |_| vec![]).await;
    eventually("the copies settled", Duration::from_secs(10), async || {
        let m = gw.metrics().await;
        metric_sum(&m, r#"mirror_requests_total{result="sent",route="half"}"#) as u64
            == mirror.hits() - before
    })
    .await;
    let copied = mirror.hits() - before;
    assert!(
        (400..=600).contains(&copied),
        "{copied} of 1,000 copied at 50%"
    );
}
