//! Routing by host, path, method, header and query, with auth, scopes, rewrites, header rules,
//! timeouts, retries, redirects and fixed answers per route: the real gateway binary, real
//! upstreams, curl where a real client fits.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::process::Command;

use common::{client, metric_sum, token, EchoServer, Gateway, SECRET};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// An HS256 token for `sub` with extra claims, one hour.
fn token_with(sub: &str, extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({ "sub": sub, "iat": now, "exp": now + 3600 });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    gateway::testing::sign(Algorithm::HS256, claims, SECRET.as_bytes())
}

/// `curl` against the gateway with `--resolve` so that `host` reaches it: (status, body).
/// Run as a child the runtime waits for, so that the test's own upstreams keep answering.
async fn curl(gw: &Gateway, method: &str, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{host}:{}{path}", gw.port);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", gw.port)])
        .args(extra)
        .arg(&url)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn section(echo: &EchoServer, routes: &str) -> String {
    format!(
        r#"services: {{}}
aggregates: []
rate_limit: {{ per_minute: 100000 }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{}"] }}
routes:
{routes}"#,
        echo.port
    )
}

#[tokio::test]
async fn hosts_methods_headers_and_query_pick_the_most_specific_route() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            &echo,
            r#"
  - { name: any, match: { path: { prefix: "/x" } }, upstream: echo, auth: public, rewrite: { prefix: "/any" } }
  - { name: strict, match: { hosts: ["strict.test"], path: { exact: "/thing" }, methods: [GET, HEAD] }, upstream: echo, auth: public }
  - { name: wild, match: { hosts: ["*.example.com"], path: { prefix: "/" } }, upstream: echo, auth: public, rewrite: { prefix: "/wild" } }
  - { name: api, match: { hosts: ["api.example.com"], path: { prefix: "/" } }, upstream: echo, auth: public, rewrite: { prefix: "/api" } }
  - { name: orders-read, match: { hosts: ["api.example.com"], path: { prefix: "/orders" }, methods: [GET, HEAD] }, upstream: echo, auth: public, rewrite: { prefix: "/read" } }
  - { name: orders-write, match: { hosts: ["api.example.com"], path: { prefix: "/orders" }, methods: [POST] }, upstream: echo, auth: public, rewrite: { prefix: "/write" } }
  - { name: v2, match: { path: { prefix: "/v" }, headers: { X-Api-Version: "2" } }, upstream: echo, auth: public, rewrite: { prefix: "/v2" } }
  - { name: preview, match: { path: { prefix: "/v" }, methods: [GET], query: { preview: "true" } }, upstream: echo, auth: public, rewrite: { prefix: "/preview" } }
"#,
        ),
        &[],
    )
    .await;
    let last = |echo: &EchoServer| {
        echo.requests()
            .last()
            .map(|s| s.uri.clone())
            .unwrap_or_default()
    };
    for (host, path, want) in [
        ("api.example.com", "/x", "/api/x"),
        ("API.Example.com", "/x", "/api/x"),
        ("shop.example.com", "/x", "/wild/x"),
        ("other.test", "/x", "/any/x"),
        ("api.example.com", "/orders/7", "/read/orders/7"),
    ] {
        let (code, _) = curl(&gw, "GET", host, path, &[]).await;
        assert_eq!((code, last(&echo)), (200, want.to_string()), "{host}{path}");
    }
    let (code, _) = curl(&gw, "POST", "api.example.com", "/orders", &["-d", "{}"]).await;
    assert_eq!((code, last(&echo)), (200, "/write/orders".to_string()));
    // A path routed for other methods (and by no other route): 405 with the methods that are,
    // as JSON. A route that fails on its method lets a less specific one take the request.
    let (code, _) = curl(&gw, "DELETE", "api.example.com", "/orders/7", &[]).await;
    assert_eq!((code, last(&echo)), (200, "/api/orders/7".to_string()));
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-i", "-X", "DELETE", "--resolve"])
        .arg(format!("strict.test:{}:127.0.0.1", gw.port))
        .arg(format!("http://strict.test:{}/thing", gw.port))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 405"), "{text}");
    assert!(text.contains("allow: get, head"), "{text}");
    assert!(text.contains(r#""error":"method_not_allowed""#), "{text}");
    // Header and query conditions.
    let (code, _) = curl(&gw, "GET", "other.test", "/v1", &["-H", "X-Api-Version: 2"]).await;
    assert_eq!((code, last(&echo)), (200, "/v2/v1".to_string()));
    let (code, _) = curl(&gw, "GET", "other.test", "/v1?a=1&preview=true", &[]).await;
    assert_eq!(
        (code, last(&echo)),
        (200, "/preview/v1?a=1&preview=true".to_string())
    );
    let (code, body) = curl(&gw, "GET", "other.test", "/v1?preview=no", &[]).await;
    assert_eq!(code, 404, "{body}");
    // The route label is the configured name.
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"http_requests_total{method="GET",protocol="http/1.1",route="orders-read",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            r#"http_requests_total{method="DELETE",protocol="http/1.1",route="method_not_allowed",status="405"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn no_route_is_404_with_or_without_a_token_and_auth_is_per_route() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            &echo,
            r#"
  - { name: open, match: { path: { prefix: "/open/" } }, upstream: echo, auth: public }
  - { name: maybe, match: { path: { prefix: "/maybe/" } }, upstream: echo, auth: optional }
  - { name: closed, match: { path: { prefix: "/closed/" } }, upstream: echo }
  - { name: orders, match: { path: { prefix: "/orders" } }, upstream: echo, require: { scopes: ["orders:read"] } }
  - { name: orders-write, match: { path: { prefix: "/orders" }, methods: [POST] }, upstream: echo, require: { scopes: ["orders:write"] } }
  - { name: admin, match: { path: { prefix: "/admin/" } }, upstream: echo, require: { roles: [admin] } }
"#,
        ),
        &[],
    )
    .await;
    let c = client();
    let status = |r: reqwest::Response| r.status().as_u16();
    let bearer = |t: &str| format!("Bearer {t}");
    // No route: 404 JSON, token or not (a token is never read for it).
    for auth in [
        None,
        Some(bearer(&token("u1"))),
        Some("Bearer garbage".to_string()),
    ] {
        let mut req = c.get(gw.url("/nowhere"));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 404, "{auth:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    assert_eq!(status(c.get(gw.url("/open/x")).send().await.unwrap()), 200);
    assert_eq!(
        status(c.get(gw.url("/closed/x")).send().await.unwrap()),
        401
    );
    // Optional: anonymous without a token (no identity forwarded), 401 with a bad one,
    // identity forwarded with a good one.
    assert_eq!(
        status(
            c.get(gw.url("/maybe/a"))
                .header("X-User-Id", "forged")
                .send()
                .await
                .unwrap()
        ),
        200
    );
    let seen = echo.requests().last().cloned().unwrap();
    assert!(seen.header("x-user-id").is_empty(), "{:?}", seen.headers);
    let r = c
        .get(gw.url("/maybe/b"))
        .header("Authorization", "Bearer bad.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/maybe/c"))
        .header("Authorization", bearer(&token("u7")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        echo.requests().last().unwrap().header("x-user-id"),
        vec!["u7"]
    );
    // Scopes from `scope` (space-separated) or `scp` (array); missing → 403 + RFC 6750 header.
    let read = token_with("u1", json!({ "scope": "profile orders:read" }));
    let scp = token_with("u1", json!({ "scp": ["orders:read", "orders:write"] }));
    let none = token_with("u1", json!({ "scope": "profile" }));
    assert_eq!(
        status(
            c.get(gw.url("/orders/1"))
                .header("Authorization", bearer(&read))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            c.get(gw.url("/orders/1"))
                .header("Authorization", bearer(&scp))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            c.post(gw.url("/orders"))
                .header("Authorization", bearer(&scp))
                .body("{}")
                .send()
                .await
                .unwrap()
        ),
        200
    );
    let r = c
        .post(gw.url("/orders"))
        .header("Authorization", bearer(&read))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer realm="gateway", error="insufficient_scope", scope="orders:write""#
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    let r = c
        .get(gw.url("/orders/1"))
        .header("Authorization", bearer(&none))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Roles.
    let admin = common::token_with_roles("a", &["admin"]);
    assert_eq!(
        status(
            c.get(gw.url("/admin/x"))
                .header("Authorization", bearer(&admin))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            c.get(gw.url("/admin/x"))
                .header("Authorization", bearer(&token("u1")))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, r#"auth_failures_total{reason="insufficient_scope"}"#),
        3.0
    );
}

#[tokio::test]
async fn rewrites_keep_the_query_and_encoded_params_and_header_rules_substitute_safely() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            &echo,
            r#"
  - name: user-orders
    match: { path: { template: "/users/{id}/orders/{rest...}" } }
    upstream: echo
    rewrite: { path: "/v2/u/{id}/o/{rest}" }
    headers:
      request: { set: { X-Tenant: "{claim.tenant}", X-Who: "{param.id}@{host}" }, remove: [Cookie] }
      response: { set: { Strict-Transport-Security: "max-age=31536000" }, remove: [X-Upstream] }
  - { name: orders, match: { path: { prefix: "/orders" } }, upstream: echo, rewrite: { strip_prefix: "/orders", prefix: "/v2/orders" } }
"#,
        ),
        &[],
    )
    .await;
    let c = client();
    let t = token_with("u1", json!({ "tenant": "acme" }));
    let r = c
        .get(gw.url("/users/a%2Fb/orders/x/y?q=1&r=%20"))
        .header("Authorization", format!("Bearer {t}"))
        .header("Cookie", "secret=1")
        .header("X-Tenant", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert!(
        r.headers().get("x-upstream").is_none(),
        "removed from the answer"
    );
    let seen = echo.requests().last().cloned().unwrap();
    assert_eq!(
        seen.uri, "/v2/u/a%2Fb/o/x/y?q=1&r=%20",
        "%2F stays encoded, query kept"
    );
    assert_eq!(seen.header("x-tenant"), vec!["acme"]);
    assert_eq!(seen.header("x-who"), vec!["a%2Fb@127.0.0.1"]);
    assert!(seen.header("cookie").is_empty());
    let r = c
        .get(gw.url("/orders/7?x=1"))
        .header("Authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.requests().last().unwrap().uri, "/v2/orders/7?x=1");
    // A claim holding CR/LF never reaches the upstream: the header is left out and counted.
    let evil = token_with("u1", json!({ "tenant": "acme\r\nX-Injected: 1" }));
    let r = c
        .get(gw.url("/users/1/orders/x"))
        .header("Authorization", format!("Bearer {evil}"))
        .header("X-Tenant", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.requests().last().cloned().unwrap();
    assert!(seen.header("x-tenant").is_empty(), "{:?}", seen.headers);
    assert!(seen.header("x-injected").is_empty());
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"route_header_values_dropped_total{route="user-orders"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn timeouts_and_retries_are_per_route() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let gw = Gateway::start(
        &format!(
            r#"services: {{}}
aggregates: []
rate_limit: {{ per_minute: 100000 }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{}", "127.0.0.1:{}"], read_timeout_ms: 10000 }}
routes:
  - {{ name: short, match: {{ path: {{ prefix: "/short/" }} }}, upstream: echo, auth: public, timeouts: {{ read_ms: 1000 }} }}
  - {{ name: long, match: {{ path: {{ prefix: "/long/" }} }}, upstream: echo, auth: public, timeouts: {{ read_ms: 5000 }} }}
  - {{ name: retried, match: {{ path: {{ prefix: "/r/" }} }}, upstream: echo, auth: public, retries: {{ attempts: 2, on: [connect, "503"] }} }}
"#,
            a.port, b.port
        ),
        &[],
    )
    .await;
    let c = client();
    let r = c.get(gw.url("/short/slow?ms=3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let r = c.get(gw.url("/long/slow?ms=3000")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A backend that fails once: the GET is tried again on the other backend, the POST not.
    let r = c.get(gw.url("/r/fail-once/get")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/r/fail-once/post"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let tries = |key: &str| {
        a.requests()
            .iter()
            .chain(b.requests().iter())
            .filter(|s| s.uri.ends_with(key))
            .count()
    };
    assert_eq!((tries("/get"), tries("/post")), (2, 1));
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, r#"route_retries_total{cause="503",route="retried"}"#),
        1.0
    );
}

#[tokio::test]
async fn redirects_fixed_answers_and_a_minimal_conf() {
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(
            &echo,
            r#"
  - { name: old-docs, match: { path: { prefix: "/docs" } }, redirect: { to: "https://docs.example.com{path}", status: 301 }, auth: public }
  - { name: maintenance, match: { hosts: ["legacy.example.com"] }, respond: { status: 503, json: { error: "maintenance" } }, auth: public }
  - { name: api, match: { path: { prefix: "/api/" } }, upstream: echo, auth: public }
"#,
        ),
        &[],
    )
    .await;
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-i"])
        .arg(gw.url("/docs/intro?lang=en"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 301"), "{text}");
    assert!(
        text.contains("location: https://docs.example.com/docs/intro?lang=en"),
        "{text}"
    );
    let (code, body) = curl(&gw, "GET", "legacy.example.com", "/api/x", &[]).await;
    assert_eq!(code, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "error": "maintenance" })
    );
    let (code, _) = curl(&gw, "GET", "new.example.com", "/api/x", &[]).await;
    assert_eq!(code, 200);

    // The simplest conf a new user writes: one upstream, one route.
    let minimal = Gateway::start(
        &format!(
            "upstreams: {{ app: {{ backends: [\"127.0.0.1:{}\"] }} }}\nroutes: [{{ prefix: /api/, upstream: app, auth: public }}]\nservices: {{}}\naggregates: []\n",
            echo.port
        ),
        &[],
    )
    .await;
    let r = client()
        .get(minimal.url("/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `gateway routes` (the table in match order), `--explain`, and `-t` refusing two routes of
/// equal specificity by name.
#[test]
fn the_table_explains_itself_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    std::fs::write(
        &conf,
        r#"gateway:
  upstreams: { orders: { backends: ["127.0.0.1:9"] } }
  routes:
    - { name: any, match: { path: { prefix: "/" } }, upstream: orders }
    - { name: api, match: { hosts: ["api.example.com"], path: { prefix: "/orders" } }, upstream: orders }
    - { name: write, match: { hosts: ["api.example.com"], path: { prefix: "/orders" }, methods: [POST] }, upstream: orders }
    - { name: one, match: { hosts: ["api.example.com"], path: { template: "/orders/{id}" } }, upstream: orders }
    - { name: docs, match: { path: { prefix: "/docs" } }, redirect: { to: "https://docs.example.com{path}" } }
"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(common::gateway_bin())
            .arg("routes")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .env("JWT_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = run(&[]);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["one", "write", "api", "docs", "any"], "{table}");
    let cases = [
        (
            "GET",
            "https://api.example.com/orders/7",
            "→ one",
            "api: matches too, but `one` is more specific",
        ),
        (
            "POST",
            "https://api.example.com/orders",
            "→ write",
            "one: path does not match",
        ),
        (
            "GET",
            "https://shop.example.com/orders/7",
            "→ any",
            "api: host `shop.example.com` is not one of its hosts",
        ),
        (
            "GET",
            "http://x.io/docs/a",
            "→ docs (redirect 302",
            "write: host `x.io`",
        ),
    ];
    for (method, url, winner, reason) in cases {
        let out = run(&["--explain", method, url]);
        assert!(out.contains(winner), "{out}");
        assert!(out.contains(reason), "{out}");
    }
    std::fs::write(
        &conf,
        "gateway:\n  upstreams: { a: { backends: [\"127.0.0.1:9\"] } }\n  routes:\n    - { name: first, prefix: /x, upstream: a }\n    - { name: second, match: { path: { prefix: /x } }, upstream: a }\n",
    )
    .unwrap();
    let out = Command::new(common::gateway_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`first`") && err.contains("`second`") && err.contains("equal specificity"),
        "{err}"
    );
}

/// Over HTTP/2 the host is the `:authority` (curl sends no `Host`): the same table decides.
#[tokio::test]
async fn h2_requests_are_routed_by_their_authority() {
    let echo = EchoServer::start().await;
    let ca = common::TestCa::new();
    let leaf = ca.leaf("leaf", &["api.example.com", "*.example.com"], 30);
    let tls_port = common::free_port();
    let gw = Gateway::start(
        &format!(
            "{}tls:\n  listen: \"127.0.0.1:{tls_port}\"\n  certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n",
            section(
                &echo,
                r#"
  - { name: api, match: { hosts: ["api.example.com"], path: { prefix: "/" } }, upstream: echo, auth: public, rewrite: { prefix: "/api" } }
  - { name: wild, match: { hosts: ["*.example.com"], path: { prefix: "/" } }, upstream: echo, auth: public, rewrite: { prefix: "/wild" } }
"#,
            ),
            leaf.cert.display(),
            leaf.key.display()
        ),
        &[],
    )
    .await;
    for (host, want) in [
        ("api.example.com", "/api/x"),
        ("shop.example.com", "/wild/x"),
    ] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg("--cacert")
            .arg(&ca.cert)
            .arg("--resolve")
            .arg(format!("{host}:{tls_port}:127.0.0.1"))
            .arg(format!("https://{host}:{tls_port}/x"))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200", "{host}");
        let seen = echo.requests().last().cloned().unwrap();
        assert_eq!(seen.uri, want, "{host}");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            r#"http_requests_total{method="GET",protocol="h2",route="wild",status="200"}"#
        ),
        1.0
    );
}

/// A route's `rate_limit` names the policies it counts (and only those); `total_ms` bounds the
/// whole request; the admin API lists the table.
#[tokio::test]
async fn route_policies_total_timeouts_and_the_admin_table() {
    let echo = EchoServer::start().await;
    let admin = common::free_port();
    let gw = Gateway::start(
        &format!(
            r#"services: {{}}
aggregates: []
admin: {{ listen: "127.0.0.1:{admin}" }}
rate_limit:
  per_minute: 100000
  policies: [{{ name: tight, key: ip, limit: 2, window_seconds: 86400 }}]
upstreams:
  echo: {{ backends: ["127.0.0.1:{port}"] }}
routes:
  - {{ name: tight, match: {{ path: {{ prefix: "/tight/" }} }}, upstream: echo, auth: optional, rate_limit: [tight] }}
  - {{ name: loose, match: {{ path: {{ prefix: "/loose/" }} }}, upstream: echo, auth: optional, rate_limit: [default] }}
  - {{ name: bounded, match: {{ path: {{ prefix: "/bounded/" }} }}, upstream: echo, auth: optional, rate_limit: [default], timeouts: {{ read_ms: 5000, total_ms: 1000 }} }}
"#,
            port = echo.port
        ),
        &[("ADMIN_TOKEN", "admin-token-for-the-tests-0123456789".to_string())],
    )
    .await;
    let c = client();
    let statuses: Vec<u16> = futures_statuses(&c, &gw, "/tight/x", 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    // The other route names only the default policy: `tight` does not count it (without a
    // list, a policy with no `routes:` of its own counts on every route).
    assert_eq!(
        futures_statuses(&c, &gw, "/loose/x", 3).await,
        [200, 200, 200]
    );
    let m = gw.metrics().await;
    assert_eq!(common::decisions(&m, "memory", "tight", "allowed"), 2.0);
    assert_eq!(common::decisions(&m, "memory", "tight", "limited"), 1.0);
    // 5 s per read, 1 s in all: a 3 s backend is a 504.
    let r = c.get(gw.url("/bounded/slow?ms=3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let r = c
        .get(format!("http://127.0.0.1:{admin}/routes"))
        .bearer_auth("admin-token-for-the-tests-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let names: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // Match order: the longer prefix first, then conf order.
    assert_eq!(names, ["bounded", "tight", "loose"], "{v}");
    assert_eq!(v["routes"][1]["policies"], json!(["tight"]));
    assert_eq!(v["routes"][0]["policies"], json!(["default"]));
}

/// `n` GETs of `path` in a row: their statuses.
async fn futures_statuses(c: &reqwest::Client, gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.get(gw.url(path)).send().await.unwrap().status().as_u16());
    }
    out
}
