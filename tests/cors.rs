//! CORS at the edge against the real gateway: preflights answered before authentication and
//! never proxied, allowed and refused origins, and the headers on real answers.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{align_to_window, client, token, EchoServer, Gateway};

const APP: &str = "https://app.example.com";

async fn start() -> (EchoServer, Gateway) {
    let echo = EchoServer::start().await;
    let section = format!(
        "cors:\n  - {{ routes: [\"/echo/\"], allow_origins: [\"{APP}\"], allow_methods: [GET, POST], allow_headers: [authorization, content-type], expose_headers: [x-request-id, ratelimit-remaining], allow_credentials: true, max_age_seconds: 600 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    let gw = Gateway::start(&section, &[]).await;
    (echo, gw)
}

#[tokio::test]
async fn preflights_are_answered_before_authentication_and_never_proxied() {
    let (echo, gw) = start().await;
    let pre = |origin: &'static str, method: &'static str, hdrs: &'static str| {
        let url = gw.url("/echo/x");
        async move {
            client()
                .request(reqwest::Method::OPTIONS, url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", method)
                .header("Access-Control-Request-Headers", hdrs)
                .send()
                .await
                .unwrap()
        }
    };
    let r = pre(APP, "POST", "authorization, content-type").await;
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    // Refused: a foreign origin learns nothing; an allowed one gets its CORS headers and what
    // is allowed, so that the browser's console names the refused method or header, and the
    // message says it too.
    for (origin, method, hdrs, says) in [
        (
            "https://evil.example",
            "GET",
            "authorization",
            "origin `https://evil.example`",
        ),
        (APP, "DELETE", "authorization", "method `DELETE`"),
        (APP, "GET", "x-secret", "header `x-secret`"),
    ] {
        let r = pre(origin, method, hdrs).await;
        assert_eq!(r.status(), 403, "{origin} {method} {hdrs}");
        let acao = r.headers().get("access-control-allow-origin").cloned();
        let methods = r.headers().get("access-control-allow-methods").cloned();
        let body = r.text().await.unwrap();
        assert!(body.contains(says), "{body}");
        if origin == APP {
            assert_eq!(acao.unwrap(), APP);
            assert_eq!(methods.unwrap(), "GET, POST");
        } else {
            assert!(acao.is_none() && methods.is_none());
        }
    }
    assert!(
        echo.requests().is_empty(),
        "no preflight reached the service"
    );
}

#[tokio::test]
async fn answers_carry_cors_headers_for_allowed_origins_only() {
    let (_echo, gw) = start().await;
    let get = |origin: &'static str, auth: bool| {
        let url = gw.url("/echo/x");
        async move {
            let mut r = client().get(url).header("Origin", origin);
            if auth {
                r = r.bearer_auth(token("7"));
            }
            r.send().await.unwrap()
        }
    };
    let r = get(APP, true).await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-expose-headers"],
        "x-request-id, ratelimit-remaining"
    );
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    // A 401 is readable by the page too (it must see why).
    let r = get(APP, false).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    let r = get("https://evil.example", true).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A service answering `*` itself does not open the route to an origin the policy refuses.
    let r = client()
        .get(gw.url("/echo/x"))
        .header("Origin", "https://evil.example")
        .header("X-Echo-Response-Header", "Access-Control-Allow-Origin: *")
        .header(
            "X-Echo-Response-Header",
            "Access-Control-Allow-Credentials: true",
        )
        .bearer_auth(token("7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
}

/// The gateway of [`start`] with `rate_limit` as its `rate_limit:` value (fixed windows of an
/// hour, so that a test's few requests never straddle one).
async fn start_limited(rate_limit: &str) -> (EchoServer, Gateway) {
    let echo = EchoServer::start().await;
    let section = format!(
        "rate_limit: {rate_limit}\ncors:\n  - {{ routes: [\"/echo/\"], allow_origins: [\"{APP}\"], allow_methods: [GET, POST], allow_headers: [authorization, content-type, x-api-key], expose_headers: [x-request-id, ratelimit-remaining, retry-after], allow_credentials: true, max_age_seconds: 600 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        echo.port
    );
    align_to_window(3600, 15).await;
    let gw = Gateway::start(&section, &[]).await;
    (echo, gw)
}

/// A preflight for `POST /echo/x` from `origin`, with `extra` headers.
async fn preflight(gw: &Gateway, origin: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client()
        .request(reqwest::Method::OPTIONS, gw.url("/echo/x"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// Checks a 429 from `policy`: the JSON error, its `Retry-After` and `RateLimit-*`; with
/// `readable`, the CORS headers a page of the allowed origin needs to read it, otherwise none.
async fn assert_429(r: reqwest::Response, policy: &str, readable: bool, what: &str) {
    assert_eq!(r.status(), 429, "{what}");
    let h = r.headers().clone();
    let text = |n: &str| {
        h.get(n)
            .unwrap_or_else(|| panic!("{what}: no {n} in {h:?}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text("ratelimit-remaining"), "0", "{what}");
    if readable {
        assert_eq!(text("access-control-allow-origin"), APP, "{what}");
        assert_eq!(text("access-control-allow-credentials"), "true", "{what}");
        assert_eq!(
            text("access-control-expose-headers"),
            "x-request-id, ratelimit-remaining, retry-after",
            "{what}"
        );
        assert!(
            h.get_all("vary").iter().any(|v| v == "Origin"),
            "{what}: {h:?}"
        );
    } else {
        let cors: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    }
    let retry: u64 = text("retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{what}: Retry-After {retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "error": "rate_limited",
            "message": format!("rate limit exceeded (policy `{policy}`), retry in {retry} s"),
        }),
        "{what}"
    );
}

#[tokio::test]
async fn preflights_use_the_per_ip_budget_shared_with_the_requests_they_prepare() {
    let (echo, gw) = start_limited("{ per_minute: 2, window_seconds: 3600 }").await;
    // Each preflight counts, and says what it left, as any limited answer does.
    for left in ["1", "0"] {
        let r = preflight(&gw, APP, &[]).await;
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["ratelimit-remaining"], left);
    }
    // The two preflights took the whole budget: the request they prepared is refused.
    let r = client()
        .get(gw.url("/echo/x"))
        .header("Origin", APP)
        .bearer_auth(token("7"))
        .send()
        .await
        .unwrap();
    assert_429(r, "default", true, "a GET over the limit").await;
    // A preflight's refusal is readable by the page too.
    assert_429(
        preflight(&gw, APP, &[]).await,
        "default",
        true,
        "a preflight over the limit",
    )
    .await;
    let m = gw.metrics().await;
    let decisions = |result: &str| common::decisions(&m, "memory", "default", result);
    assert_eq!((decisions("allowed"), decisions("limited")), (2.0, 2.0));
    assert!(echo.requests().is_empty(), "nothing reached the service");
}

#[tokio::test]
async fn a_header_policy_counts_preflights_by_their_key() {
    let (echo, gw) = start_limited(
        "{ per_minute: 1000, window_seconds: 3600, policies: [{ name: per-key, key: \"header:X-Api-Key\", limit: 1, window_seconds: 3600 }] }",
    )
    .await;
    assert_eq!(
        preflight(&gw, APP, &[("X-Api-Key", "a")]).await.status(),
        204
    );
    assert_429(
        preflight(&gw, APP, &[("X-Api-Key", "a")]).await,
        "per-key",
        true,
        "the key's second preflight",
    )
    .await;
    // Another key has its own budget: the refusal was the header policy's, not the address's.
    assert_eq!(
        preflight(&gw, APP, &[("X-Api-Key", "b")]).await.status(),
        204
    );
    let m = gw.metrics().await;
    let decisions = |result: &str| common::decisions(&m, "memory", "per-key", result);
    assert_eq!((decisions("allowed"), decisions("limited")), (2.0, 1.0));
    assert!(echo.requests().is_empty(), "nothing reached the service");
}

#[tokio::test]
async fn preflights_the_policy_refuses_get_a_forbidden_json_error_after_being_counted() {
    let (echo, gw) = start_limited("{ per_minute: 100, window_seconds: 3600 }").await;
    let refusals = [
        (
            "https://evil.example",
            "POST",
            "content-type",
            "the origin `https://evil.example` is not allowed by the CORS policy",
        ),
        (
            APP,
            "DELETE",
            "content-type",
            "the method `DELETE` is not allowed by the CORS policy",
        ),
        (
            APP,
            "POST",
            "content-type, x-secret",
            "the header `x-secret` is not allowed by the CORS policy",
        ),
    ];
    for (origin, method, hdrs, message) in refusals {
        let r = client()
            .request(reqwest::Method::OPTIONS, gw.url("/echo/x"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .header("Access-Control-Request-Headers", hdrs)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{message}");
        assert_eq!(r.headers()["content-type"], "application/json", "{message}");
        let cors: Vec<_> = r
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .map(|k| k.as_str().to_string())
            .collect();
        if origin == APP {
            assert_eq!(r.headers()["access-control-allow-origin"], APP);
            assert_eq!(r.headers()["access-control-allow-methods"], "GET, POST");
        } else {
            assert!(
                cors.is_empty(),
                "a foreign origin gets no CORS headers: {cors:?}"
            );
        }
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": "forbidden", "message": message })
        );
    }
    let m = gw.metrics().await;
    assert_eq!(
        common::decisions(&m, "memory", "default", "allowed"),
        3.0,
        "each refused preflight was counted first"
    );
    assert!(echo.requests().is_empty(), "nothing reached the service");
}
