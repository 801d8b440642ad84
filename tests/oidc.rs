//! The gateway against a real, certified OpenID provider (panva's `oidc-provider`, from npm):
//! its access tokens of every algorithm, its ID tokens (refused), its key rotation under load
//! (never a 401), a withdrawn key (revokes what it verified), its keys out of reach (503, not
//! 401), and its opaque tokens through introspection.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, metric_sum, EchoServer, Gateway, Oidc};
use parking_lot::Mutex;
use serde_json::Value;

const UA: &str = concat!("gateway/", env!("CARGO_PKG_VERSION"));

fn section(oidc: &Oidc, echo: &EchoServer, refresh: &str, issuer_extra: &str) -> String {
    format!(
        r#"auth:
  roles_claim: realm_access.roles
  forward_claims: {{ "https://gateway.example/roles": X-Auth0-Roles, tenant: X-Tenant }}
  issuers:
    - issuer: "{}"
      discovery: true
      allow_insecure_http: true
      audiences: [gateway]
      algorithms: [RS256, PS256, ES256, EdDSA]
      refresh: {{ {refresh} }}
{issuer_extra}rate_limit: {{ per_minute: 1000000 }}
limits: {{ max_connections_per_ip: 0 }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{}"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}
routes:
  - {{ name: echo, match: {{ path: {{ prefix: "/echo/" }} }}, upstream: echo }}
  - {{ name: readers, match: {{ path: {{ prefix: "/readers/" }} }}, upstream: echo, require: {{ roles: [reader] }} }}
"#,
        oidc.issuer(),
        echo.port
    )
}

/// (status, `error` of the JSON body, `Retry-After`).
async fn call(gw: &Gateway, path: &str, token: &str) -> (u16, String, Option<String>) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or("").to_string(),
        retry,
    )
}

fn failures(m: &str, reason: &str) -> f64 {
    metric_sum(m, &format!(r#"auth_failures_total{{reason="{reason}"}}"#))
}

/// The gateway's own fetches of the key set (the harness's requests send no User-Agent).
fn gateway_jwks_fetches(oidc: &Oidc) -> usize {
    oidc.requests("/jwks")
        .iter()
        .filter(|r| r["ua"] == UA)
        .count()
}

#[tokio::test]
async fn access_tokens_of_every_algorithm_pass_and_id_tokens_do_not() {
    let oidc = Oidc::start(&["A"]).await;
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(&oidc, &echo, "min_interval_seconds: 1", ""), &[]).await;
    for alg in ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"] {
        let t = oidc
            .token("svc-acme", "acme-secret", &format!("urn:gateway:{alg}"))
            .await;
        assert_eq!(common::header_of(&t)["alg"], alg);
        let (status, error, _) = call(&gw, "/readers/x", &t).await;
        assert_eq!((status, error.as_str()), (200, ""), "{alg}");
    }
    // Keycloak-style roles (realm_access.roles) decide `require`; an Auth0-style namespaced
    // claim, dots and all, is forwarded.
    assert_eq!(echo.last_header("x-auth0-roles").as_deref(), Some("reader"));
    assert_eq!(echo.last_header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(echo.last_header("x-user-id").as_deref(), Some("svc-acme"));
    let admin = oidc
        .token("svc-globex", "globex-secret", "urn:gateway")
        .await;
    assert_eq!(
        call(&gw, "/readers/x", &admin).await.0,
        403,
        "admin is not reader"
    );
    assert_eq!(call(&gw, "/echo/x", &admin).await.0, 200);

    // ID tokens (the code flow's, with a nonce; the hybrid one, with at_hash) and a token for
    // another API are refused; each reason is counted once.
    let id = oidc.id_token().await;
    assert!(
        common::header_of(&id).get("typ").is_none(),
        "oidc-provider sends no typ"
    );
    let hybrid = oidc.hybrid_id_token().await;
    assert!(common::claims_of(&hybrid).get("at_hash").is_some());
    for t in [&id, &hybrid] {
        assert_eq!(call(&gw, "/echo/x", t).await.0, 401);
    }
    let other = oidc.token("svc-acme", "acme-secret", "urn:other").await;
    assert_eq!(call(&gw, "/echo/x", &other).await.0, 401);
    let m = gw.metrics().await;
    assert_eq!(failures(&m, "token_type"), 2.0);
    assert_eq!(failures(&m, "audience"), 1.0);
    // The provider saw who fetched its keys.
    assert!(gateway_jwks_fetches(&oidc) >= 1, "{}", oidc.requests_log());
}

#[tokio::test]
async fn a_rotation_under_load_after_a_garbage_kid_refuses_no_valid_token() {
    let oidc = Oidc::start(&["A"]).await;
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(&oidc, &echo, "min_interval_seconds: 2", ""), &[]).await;
    let first = oidc.token("svc-acme", "acme-secret", "urn:gateway").await;
    assert_eq!(call(&gw, "/echo/x", &first).await.0, 200);
    // A fresh token every 100 ms from a minter; 100 requests a second use the latest.
    let current = Arc::new(Mutex::new(first));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let minter = tokio::spawn({
        let (current, stop) = (current.clone(), stop.clone());
        let oidc_url = oidc.issuer();
        async move {
            let http = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r: Value = http
                    .post(format!("{oidc_url}/token"))
                    .basic_auth("svc-acme", Some("acme-secret"))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("resource", "urn:gateway"),
                    ])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                *current.lock() = r["access_token"].as_str().unwrap().to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let before = gateway_jwks_fetches(&oidc);
    let url = gw.url("/echo/x");
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut b_kids = Vec::new();
    for i in 0..800 {
        tick.tick().await;
        match i {
            // One request with a kid nobody publishes (3 s in, past the start's cool-down)
            // fetches the keys and starts a new cool-down...
            300 => {
                let garbage = common::forge_with_kid(&current.lock(), "garbage");
                tasks.push(tokio::spawn({
                    let (url, http) = (url.clone(), client());
                    async move {
                        let s = http.get(url).bearer_auth(garbage).send().await.unwrap();
                        (usize::MAX, s.status().as_u16())
                    }
                }));
            }
            // ...and the provider rotates a second later, in its documented order: the new
            // keys first, the old ones still published; then the old ones withdrawn.
            400 => b_kids = oidc.rotate(&["B", "A"]).await,
            650 => {
                oidc.rotate(&["B"]).await;
            }
            _ => {}
        }
        let token = current.lock().clone();
        let (url, http) = (url.clone(), client());
        tasks.push(tokio::spawn(async move {
            let s = http.get(url).bearer_auth(token).send().await.unwrap();
            (i, s.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    minter.await.unwrap();
    let garbage: Vec<_> = statuses.iter().filter(|(i, _)| *i == usize::MAX).collect();
    assert_eq!(
        garbage,
        [&(usize::MAX, 401)],
        "the garbage kid is refused, after its wait"
    );
    let refused: Vec<_> = statuses
        .iter()
        .filter(|(i, s)| *i != usize::MAX && *s != 200)
        .collect();
    assert!(refused.is_empty(), "valid tokens refused: {refused:?}");
    let last = current.lock().clone();
    assert!(
        b_kids.contains(&common::kid_of(&last)),
        "the load ended on B's keys"
    );
    let fetches = gateway_jwks_fetches(&oidc) - before;
    // The garbage kid's fetch, then the one B's tokens waited for (the provider sends no
    // Cache-Control: the background refresh is five minutes away).
    assert_eq!(fetches, 2, "{}", oidc.requests_log());
    assert_eq!(failures(&gw.metrics().await, "unknown_kid"), 1.0);
}

#[tokio::test]
async fn a_withdrawn_key_revokes_the_tokens_it_verified_at_the_next_refresh() {
    let oidc = Oidc::start(&["A"]).await;
    let echo = EchoServer::start().await;
    let gw = Gateway::start(&section(&oidc, &echo, "min_interval_seconds: 1", ""), &[]).await;
    let old = oidc.token("svc-acme", "acme-secret", "urn:gateway").await;
    assert_eq!(call(&gw, "/echo/x", &old).await.0, 200, "seen, and cached");
    // The provider drops key set A (compromised) for B; a token signed by B makes the gateway
    // fetch the new set.
    oidc.rotate(&["B"]).await;
    let new = oidc.token("svc-acme", "acme-secret", "urn:gateway").await;
    assert_eq!(call(&gw, "/echo/x", &new).await.0, 200);
    // The first request after that refresh: the cached token is refused, and says why.
    let (status, _, _) = call(&gw, "/echo/x", &old).await;
    assert_eq!(status, 401);
    let m = gw.metrics().await;
    assert_eq!(failures(&m, "key_withdrawn"), 1.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            &format!(r#"jwks_keys_withdrawn_total{{issuer="{}"}}"#, oidc.issuer())
        ),
        5.0,
        "set A's five keys"
    );
}

#[tokio::test]
async fn keys_out_of_reach_mean_503_keys_unavailable_not_401() {
    let oidc = Oidc::start(&["A"]).await;
    let echo = EchoServer::start().await;
    let token = oidc.token("svc-acme", "acme-secret", "urn:gateway").await;
    oidc.down().await;
    let gw = Gateway::builder(&section(&oidc, &echo, "min_interval_seconds: 1", ""))
        .unready()
        .start()
        .await;
    let (status, error, retry) = call(&gw, "/echo/x", &token).await;
    assert_eq!((status, error.as_str()), (503, "keys_unavailable"));
    assert!(
        retry.is_some_and(|r| (1..=1).contains(&r.parse::<u64>().unwrap())),
        "Retry-After"
    );
    assert!(failures(&gw.metrics().await, "keys_unavailable") >= 1.0);
    oidc.up().await;
    eventually(
        "accepted once the keys are back",
        Duration::from_secs(15),
        async || call(&gw, "/echo/x", &token).await.0 == 200,
    )
    .await;
}

#[tokio::test]
async fn opaque_tokens_are_introspected_once_cached_and_refused_when_revoked() {
    let oidc = Oidc::start(&["A"]).await;
    let echo = EchoServer::start().await;
    let introspection = "      introspection: { client_id: gateway, client_secret_env: INTROSPECTION_SECRET, cache_seconds: 2 }\n";
    let gw = Gateway::builder(&section(
        &oidc,
        &echo,
        "min_interval_seconds: 1",
        introspection,
    ))
    .env("INTROSPECTION_SECRET", "gateway-secret")
    .start()
    .await;
    let calls = || {
        oidc.requests("/token/introspection")
            .iter()
            .filter(|r| r["ua"] == UA)
            .count()
    };
    let opaque = oidc.token("svc-acme", "acme-secret", "urn:opaque").await;
    assert!(!opaque.contains('.'), "opaque: {opaque}");
    // Twenty requests at once with a token never seen: one call to the endpoint.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, t) = (gw.url("/echo/x"), opaque.clone());
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(calls(), 1, "single flight");
    assert_eq!(
        echo.last_header("x-user-id").as_deref(),
        Some("svc-acme"),
        "the client is the caller"
    );
    assert_eq!(call(&gw, "/echo/x", &opaque).await.0, 200);
    assert_eq!(calls(), 1, "cached");
    // Revoked at the provider: refused once the cached answer ends (cache_seconds: 2).
    oidc.revoke("svc-acme", "acme-secret", &opaque).await;
    eventually(
        "the revoked token is refused",
        Duration::from_secs(10),
        async || call(&gw, "/echo/x", &opaque).await.0 == 401,
    )
    .await;
    assert_eq!(
        call(&gw, "/echo/x", "not-a-token-anyone-issued").await.0,
        401
    );
    // The endpoint down: a token it answered for still passes from the cache; a new one is 503.
    let cached = oidc.token("svc-acme", "acme-secret", "urn:opaque").await;
    assert_eq!(call(&gw, "/echo/x", &cached).await.0, 200);
    oidc.down().await;
    assert_eq!(
        call(&gw, "/echo/x", &cached).await.0,
        200,
        "cached answer served"
    );
    let fresh_token = {
        oidc.up().await;
        let t = oidc.token("svc-acme", "acme-secret", "urn:opaque").await;
        oidc.down().await;
        t
    };
    let (status, error, retry) = call(&gw, "/echo/x", &fresh_token).await;
    assert_eq!(
        (status, error.as_str(), retry.as_deref()),
        (503, "introspection_unavailable", Some("1"))
    );
    let m = gw.metrics().await;
    assert_eq!(failures(&m, "introspection_unavailable"), 1.0);
    assert!(failures(&m, "inactive_token") >= 2.0, "revoked and unknown");
    let issuer = oidc.issuer();
    let count = |r: &str| {
        metric_sum(
            &m,
            &format!(r#"introspection_requests_total{{issuer="{issuer}",result="{r}"}}"#),
        )
    };
    assert_eq!(count("active"), 2.0);
    assert_eq!(count("error"), 1.0);
    // The token itself is never logged.
    drop(m);
    let mut gw = gw;
    let (out, err) = gw.stop_and_read();
    assert!(!out.contains(&opaque) && !err.contains(&opaque));
}
