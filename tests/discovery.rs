//! Backends found by DNS: a real DNS server on loopback (dnsmasq, Debian's `dnsmasq-base`) that
//! the test controls through its hosts file, real HTTP backends on 127.0.0.x, the real gateway.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, free_port, metric_sum, Gateway, Proc};

/// dnsmasq answering from a hosts file it re-reads on SIGHUP, TTL 1 s, on 127.0.0.1:`port`.
struct Dns {
    proc: Proc,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start(hosts: &str, extra: &[String]) -> Dns {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let port = free_port();
        let mut cmd = std::process::Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--local-ttl=1",
            "--user=root",
            "--log-queries",
        ])
        .arg("--log-facility=-")
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", file.display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .args(extra);
        let proc = Proc::spawn("dnsmasq", &mut cmd);
        common::wait_for_port(port, Duration::from_secs(10));
        Dns {
            proc,
            port,
            hosts: file,
            _dir: dir,
        }
    }

    /// Replaces the records and makes dnsmasq read them.
    fn publish(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        self.proc.signal("HUP");
    }
}

/// An HTTP backend on `ip:port` answering its `tag` (and `/healthz`), counting requests.
struct Backend {
    tag: &'static str,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(ip: &str, port: u16, tag: &'static str) -> Backend {
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .fallback(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    tag
                }
            });
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { tag, hits, task }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.task.abort();
    }
}

fn section(dns: &Dns, backends: &str) -> String {
    format!(
        r#"dns: {{ servers: ["127.0.0.1:{}"], refresh: {{ min_ms: 300, max_ms: 1000 }} }}
rate_limit: {{ per_minute: 1000000 }}
limits: {{ max_connections_per_ip: 0 }}
upstreams:
  users: {{ {backends}, health_check: {{ kind: http, path: /healthz, interval_ms: 300, consecutive_failure: 1 }}, connect_retries: 2 }}
routes:
  - {{ name: users, match: {{ path: {{ prefix: "/users/" }} }}, upstream: users, auth: public }}
"#,
        dns.port
    )
}

async fn get(gw: &Gateway, path: &str) -> (u16, String) {
    match client().get(gw.url(path)).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn a_rollout_behind_a_name_fails_no_request() {
    let port = free_port();
    let mut old = Vec::new();
    for (ip, tag) in [("127.0.0.2", "a"), ("127.0.0.3", "b"), ("127.0.0.4", "c")] {
        old.push(Backend::start(ip, port, tag).await);
    }
    let dns = Dns::start(
        "127.0.0.2 users.test\n127.0.0.3 users.test\n127.0.0.4 users.test\n",
        &[],
    );
    let gw = Gateway::start(
        &section(&dns, &format!("backends: [\"users.test:{port}\"]")),
        &[],
    )
    .await;
    eventually("all three serve", Duration::from_secs(10), async || {
        old.iter().all(|b| b.hits() > 0) || {
            get(&gw, "/users/x").await;
            false
        }
    })
    .await;

    // ~200 requests a second for the whole rollout, counting every answer that is not 200.
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (failed, sent, stop, url) = (
            failed.clone(),
            sent.clone(),
            stop.clone(),
            gw.url("/users/x"),
        );
        async move {
            let http = client();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut tasks = Vec::new();
            while !stop.load(Ordering::Relaxed) && tasks.len() < 6000 {
                tick.tick().await;
                let (http, url, failed) = (http.clone(), url.clone(), failed.clone());
                sent.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    let ok = http.get(url).send().await.is_ok_and(|r| r.status() == 200);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    });
    // Each old backend in turn: a new address published in its place, the old one stopped 2 s
    // later; the new one must get traffic.
    let mut records = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let news = [
        ("127.0.0.12", "a2"),
        ("127.0.0.13", "b2"),
        ("127.0.0.14", "c2"),
    ];
    let mut new = Vec::new();
    for (i, (ip, tag)) in news.into_iter().enumerate() {
        let b = Backend::start(ip, port, tag).await;
        records[i] = ip;
        let hosts: String = records
            .iter()
            .map(|r| format!("{r} users.test\n"))
            .collect();
        dns.publish(&hosts);
        eventually(
            &format!("{tag} gets traffic"),
            Duration::from_secs(10),
            async || b.hits() > 0,
        )
        .await;
        new.push(b);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gone = old.remove(0);
        assert!(gone.hits() > 0, "{} served before", gone.tag);
        // Out of DNS for 2 s (TTL 1 s): no new request goes there (its open connections would
        // still answer, so a request sent there would be counted).
        let seen = gone.hits();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            gone.hits(),
            seen,
            "{} still gets requests after leaving DNS",
            gone.tag
        );
        gone.stop();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 1000, "the load ran: {sent} requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests out of {sent}"
    );
    let m = gw.metrics().await;
    assert!(
        metric_sum(&m, r#"dns_resolutions_total{group="users",result="ok"}"#) >= 4.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, r#"upstream_backends{group="users",state="serving"}"#),
        3.0
    );
    for b in new {
        b.stop();
    }
}

#[tokio::test]
async fn a_name_that_does_not_resolve_yet_starts_unready_and_serves_once_it_does() {
    let port = free_port();
    let dns = Dns::start("", &[]);
    let gw = Gateway::builder(&section(&dns, &format!("backends: [\"late.test:{port}\"]")))
        .unready()
        .start()
        .await;
    let r = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("users") && body.contains("late.test"),
        "{body}"
    );
    let (status, body) = get(&gw, "/users/x").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"error\""), "JSON: {body}");
    let backend = Backend::start("127.0.0.21", port, "late").await;
    dns.publish("127.0.0.21 late.test\n");
    eventually(
        "served once the name resolves",
        Duration::from_secs(10),
        async || get(&gw, "/users/x").await == (200, "late".to_string()),
    )
    .await;
    assert_eq!(gw.health_status().await, 200);
    let r = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "ready once it resolves");
    // The resolver goes away: the last good address keeps serving past the TTL.
    let before = metric_sum(
        &gw.metrics().await,
        r#"dns_resolutions_total{group="users",result="error"}"#,
    );
    let mut dns = dns;
    dns.proc.kill();
    eventually(
        "a failed lookup counted",
        Duration::from_secs(15),
        async || {
            metric_sum(
                &gw.metrics().await,
                r#"dns_resolutions_total{group="users",result="error"}"#,
            ) > before
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(get(&gw, "/users/x").await, (200, "late".to_string()));
    }
    backend.stop();
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    let (pa, pb) = (free_port(), free_port());
    let a = Backend::start("127.0.0.31", pa, "a").await;
    let b = Backend::start("127.0.0.32", pb, "b").await;
    let dns = Dns::start(
        "127.0.0.31 a.test\n127.0.0.32 b.test\n",
        &[
            format!("--srv-host=_http._tcp.api.test,a.test,{pa},0,90"),
            format!("--srv-host=_http._tcp.api.test,b.test,{pb},0,10"),
        ],
    );
    let gw = Gateway::start(&section(&dns, "srv: \"_http._tcp.api.test\""), &[]).await;
    eventually("both targets serve", Duration::from_secs(10), async || {
        get(&gw, "/users/x").await;
        a.hits() > 0 && b.hits() > 0
    })
    .await;
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..500 {
        assert_eq!(get(&gw, "/users/x").await.0, 200);
    }
    let (da, db) = (a.hits() - a0, b.hits() - b0);
    assert_eq!(da + db, 500);
    // Weighted round robin: 90 to 10, exactly over whole cycles.
    assert!(
        (40..=60).contains(&db),
        "b got {db} of 500 (weight 10 of 100)"
    );
    a.stop();
    b.stop();
}
