//! Tokens from an identity provider (the mock provider as a separate process) against the real
//! gateway: each algorithm, the checks that refuse, and a key rotation picked up without a
//! restart.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::time::Duration;

use common::{client, eventually, token, EchoServer, Gateway, Mocks, SECRET};
use serde_json::{json, Value};

async fn mint(idp: &Mocks, body: Value) -> String {
    let r: Value = client()
        .post(format!("{}/token", idp.url("idp")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_string()
}

fn section(issuer: &str, echo_port: u16) -> String {
    format!(
        r#"auth:
  issuers:
    - issuer: "{issuer}"
      discovery: true
      allow_insecure_http: true
      audiences: [gateway]
      algorithms: [RS256, ES256, EdDSA]
      refresh: {{ min_interval_seconds: 1 }}
rate_limit: {{ per_minute: 100000 }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{port}"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#,
        issuer = issuer,
        port = echo_port
    )
}

async fn start() -> (Mocks, EchoServer, Gateway) {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    let gw = Gateway::start(
        &section(&idp.url("idp"), echo.port),
        &[("JWT_SECRET", SECRET.to_string())],
    )
    .await;
    (idp, echo, gw)
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    client()
        .get(gw.url("/echo/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn each_algorithm_is_accepted_and_the_wrong_tokens_are_not() {
    let (idp, _echo, gw) = start().await;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let t = mint(&idp, json!({"sub": "7", "alg": alg})).await;
        assert_eq!(status(&gw, &t).await, 200, "{alg}");
    }
    assert_eq!(
        status(&gw, &token("1")).await,
        200,
        "HS256 with JWT_SECRET still works"
    );
    let wrong_aud = mint(&idp, json!({"sub": "7", "aud": "other"})).await;
    assert_eq!(status(&gw, &wrong_aud).await, 401);
    let unknown = mint(&idp, json!({"sub": "7", "kid": "nope"})).await;
    assert_eq!(status(&gw, &unknown).await, 401);
    let expired = mint(&idp, json!({"sub": "7", "ttl": 0})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&gw, &expired).await, 401);
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"auth_failures_total{reason="unknown_kid"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_a_restart() {
    let (idp, _echo, gw) = start().await;
    let before = mint(&idp, json!({"sub": "7"})).await;
    assert_eq!(status(&gw, &before).await, 200);
    client()
        .post(format!("{}/__rotate", idp.url("idp")))
        .send()
        .await
        .unwrap();
    let after = mint(&idp, json!({"sub": "7"})).await;
    // Refused only while the last fetch is younger than min_interval (1 s).
    eventually(
        "the rotated key accepted",
        Duration::from_secs(5),
        async || status(&gw, &after).await == 200,
    )
    .await;
    assert_eq!(
        status(&gw, &before).await,
        200,
        "the old key stays published"
    );
    let stats: Value = client()
        .get(format!("{}/__stats", idp.url("idp")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fetches = stats["requests"]["/jwks"].as_u64().unwrap();
    assert!(fetches <= 3, "{fetches} key set fetches");
}

#[tokio::test]
async fn readiness_waits_for_the_keys_and_a_mismatched_issuer_never_gets_them() {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    // Discovery and key set each answer late (together still within the 2 s fetch timeout).
    idp.faults("idp", json!({"delay_ms": 700})).await;
    let gw = Gateway::start_unready(&section(&idp.url("idp"), echo.port), &[]).await;
    let ready = || async {
        client()
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 503, "before the first key set");
    assert_eq!(
        client()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    eventually(
        "ready once the keys arrive",
        Duration::from_secs(10),
        async || ready().await == 200,
    )
    .await;
    // `localhost` is not the `127.0.0.1` the provider's discovery document names.
    idp.faults("idp", json!({})).await;
    let discovery = || async { idp.count("idp", "/.well-known/openid-configuration").await };
    let before = discovery().await;
    let other = idp.url("idp").replace("127.0.0.1", "localhost");
    let gw2 = Gateway::start_unready(&section(&other, echo.port), &[]).await;
    eventually(
        "the second gateway asked",
        Duration::from_secs(10),
        async || discovery().await > before,
    )
    .await;
    let r = client().get(gw2.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "never ready with keys from another issuer");
}
