//! CORS at the edge against the real gateway: preflights answered before authentication and
//! never proxied, allowed and refused origins, and the headers on real answers.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{client, token, EchoServer, Gateway};

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
