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
    section_with(issuer, echo_port, "min_interval_seconds: 1", "")
}

/// The issuer entry with `refresh` settings, and more `auth:` keys.
fn section_with(issuer: &str, echo_port: u16, refresh: &str, auth_extra: &str) -> String {
    format!(
        r#"auth:
  issuers:
    - issuer: "{issuer}"
      discovery: true
      allow_insecure_http: true
      audiences: [gateway]
      algorithms: [RS256, PS256, ES256, EdDSA]
      refresh: {{ {refresh} }}
{auth_extra}rate_limit: {{ per_minute: 1000000 }}
limits: {{ max_connections_per_ip: 0 }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{echo_port}"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}
routes:
  - {{ prefix: "/echo/", upstream: echo }}
"#
    )
}

/// A token whose header and payload are `header` and `payload`, and whose signature is
/// `signature` (forgeries: the gateway must refuse them before or at the signature).
fn forge(header: Value, payload: Value, signature: &str) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.{signature}", b64(&header), b64(&payload))
}

/// How many times the provider served its key set.
/// The `kid` in a token's header.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("a JWS");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url header");
    let v: Value = serde_json::from_slice(&json).expect("JSON header");
    v["kid"].as_str().expect("a kid").to_string()
}

/// Rotates the provider's signing key; the rotation must succeed.
async fn rotate(base: &str) {
    let r = client()
        .post(format!("{base}/__rotate"))
        .send()
        .await
        .expect("rotate");
    assert!(r.status().is_success(), "rotation refused: {}", r.status());
}

async fn jwks_fetches(idp: &Mocks) -> u64 {
    idp.count("idp", "/jwks").await
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
async fn each_algorithm_is_accepted_and_each_wrong_token_refused_with_its_reason() {
    let (idp, _echo, gw) = start().await;
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let t = mint(&idp, json!({"sub": "7", "alg": alg})).await;
        assert_eq!(status(&gw, &t).await, 200, "{alg}");
    }
    assert_eq!(
        status(&gw, &token("1")).await,
        200,
        "HS256 with JWT_SECRET still works"
    );
    let iss = idp.url("idp");
    let claims = json!({"iss": iss, "sub": "7", "aud": "gateway", "exp": 4_000_000_000u64});
    // The RSA key's public modulus, as an attacker would read it from the key set.
    let jwks: Value = client()
        .get(format!("{iss}/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
    )
    .unwrap();
    let cases = [
        (
            "RS384, not in the list",
            mint(&idp, json!({"sub": "7", "alg": "RS384"})).await,
            "algorithm",
        ),
        (
            "ES256 header on the RSA key",
            forge(
                json!({"alg": "ES256", "kid": "rsa-1"}),
                claims.clone(),
                "AAAA",
            ),
            "algorithm",
        ),
        (
            "alg none",
            forge(json!({"alg": "none", "kid": "rsa-1"}), claims.clone(), ""),
            "algorithm",
        ),
        ("HS256 keyed with the RSA modulus", confused, "algorithm"),
        (
            "another issuer",
            mint(
                &idp,
                json!({"sub": "7", "claims": {"iss": "http://evil.example"}}),
            )
            .await,
            "issuer",
        ),
        (
            "no aud",
            mint(&idp, json!({"sub": "7", "claims": {"aud": null}})).await,
            "audience",
        ),
        (
            "another aud",
            mint(&idp, json!({"sub": "7", "aud": "other"})).await,
            "audience",
        ),
        (
            "expired",
            mint(&idp, json!({"sub": "7", "claims": {"exp": 1_000_000}})).await,
            "expired",
        ),
        (
            "nbf in an hour",
            mint(&idp, json!({"sub": "7", "nbf": 3600})).await,
            "not_yet_valid",
        ),
        (
            "a kid nobody publishes",
            mint(&idp, json!({"sub": "7", "kid": "nope"})).await,
            "unknown_kid",
        ),
    ];
    for (what, t, _) in &cases {
        let r = client()
            .get(gw.url("/echo/x"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{what}: {body}");
    }
    let m = gw.metrics().await;
    for (reason, n) in [
        ("algorithm", 4),
        ("issuer", 1),
        ("audience", 2),
        ("expired", 1),
        ("not_yet_valid", 1),
        ("unknown_kid", 1),
    ] {
        let line = format!(r#"auth_failures_total{{reason="{reason}"}} {n}"#);
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_a_restart() {
    let (idp, _echo, gw) = start().await;
    let fetched = jwks_fetches(&idp).await;
    let before = mint(&idp, json!({"sub": "7"})).await;
    assert_eq!(status(&gw, &before).await, 200);
    rotate(&idp.url("idp")).await;
    let after = mint(&idp, json!({"sub": "7"})).await;
    assert_ne!(
        kid(&before),
        kid(&after),
        "the provider signs with a new key"
    );
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
    let fetches = stats["requests"]["/jwks"].as_u64().unwrap() - fetched;
    assert!(
        (1..=2).contains(&fetches),
        "the new kid costs a fetch (one more at most, past min_interval): {fetches}"
    );
}

#[tokio::test]
async fn readiness_waits_for_the_keys_and_a_mismatched_issuer_never_gets_them() {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    // Discovery and key set each answer late (together still within the 2 s fetch timeout).
    idp.faults("idp", json!({"delay_ms": 700})).await;
    let gw = Gateway::builder(&section(&idp.url("idp"), echo.port))
        .unready()
        .start()
        .await;
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
    let mut gw2 = Gateway::builder(&section(&other, echo.port))
        .unready()
        .start()
        .await;
    eventually(
        "the second gateway asked",
        Duration::from_secs(10),
        async || discovery().await > before,
    )
    .await;
    let r = client().get(gw2.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "never ready with keys from another issuer");
    let (out, err) = gw2.stop_and_read();
    assert!(
        (out + &err).contains("discovery says issuer"),
        "the log says why"
    );
}

#[tokio::test]
async fn claims_are_forwarded_as_headers_and_client_copies_are_dropped() {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    let conf = section_with(
        &idp.url("idp"),
        echo.port,
        "min_interval_seconds: 1",
        "  forward_claims: { tenant: X-Tenant-Id, org.id: X-Org-Id, groups: X-Groups }\n",
    );
    let gw = Gateway::start(&conf, &[]).await;
    let full = mint(
        &idp,
        json!({"sub": "7", "claims": {"tenant": "acme", "org": {"id": 42}, "groups": ["a", "b"]}}),
    )
    .await;
    let bare = mint(&idp, json!({"sub": "8"})).await;
    for (t, sub) in [(&full, "7"), (&bare, "8"), (&token("9"), "9")] {
        let r = client()
            .get(gw.url("/echo/x"))
            .bearer_auth(t)
            .header("X-Tenant-Id", "evil")
            .header("X-Org-Id", "evil")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = echo.requests().pop().unwrap();
        assert_eq!(seen.header("x-user-id"), [sub]);
        if sub == "7" {
            assert_eq!(seen.header("x-tenant-id"), ["acme"]);
            assert_eq!(seen.header("x-org-id"), ["42"]);
            assert_eq!(seen.header("x-groups"), ["a,b"]);
        } else {
            assert!(seen.header("x-tenant-id").is_empty(), "sub {sub}");
            assert!(seen.header("x-org-id").is_empty(), "sub {sub}");
        }
    }
}

/// Sends one request per tick (`period`) for `ticks` ticks, each from its own task, and
/// returns every tick's status; `make` builds the token for tick `i` (it may call the
/// provider). A tick whose token or request failed reads 0, so nothing goes missing.
async fn paced<F, Fut>(gw: &Gateway, ticks: usize, period: Duration, make: F) -> Vec<(usize, u16)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<String>> + Send + 'static,
{
    let url = gw.url("/echo/x");
    let http = client();
    let mut every = tokio::time::interval(period);
    let mut tasks = Vec::with_capacity(ticks);
    for i in 0..ticks {
        every.tick().await;
        let token = make(i);
        let (url, http) = (url.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let Some(token) = token.await else {
                return (i, 0);
            };
            match http.get(url).bearer_auth(token).send().await {
                Ok(r) => (i, r.status().as_u16()),
                Err(_) => (i, 0),
            }
        }));
    }
    let mut out = Vec::with_capacity(ticks);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn two_rotations_under_load_refuse_nothing_and_cost_one_fetch_each() {
    let (idp, _echo, gw) = start().await;
    let before = jwks_fetches(&idp).await;
    let base = idp.url("idp");
    // 200 req/s for 10 s, each with a token minted just before; rotations at 3 s and 6.5 s.
    let rotations = [600, 1300];
    let statuses = paced(&gw, 2000, Duration::from_millis(5), |i| {
        let base = base.clone();
        async move {
            let http = client();
            if rotations.contains(&i) {
                rotate(&base).await;
            }
            let alg = ["RS256", "ES256", "EdDSA"][i % 3];
            let r: Value = http
                .post(format!("{base}/token"))
                .json(&json!({"sub": i.to_string(), "alg": alg}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(r["access_token"].as_str()?.to_string())
        }
    })
    .await;
    let refused: Vec<_> = statuses.iter().filter(|(_, s)| *s != 200).collect();
    assert!(refused.is_empty(), "refused or failed (0): {refused:?}");
    let fetches = jwks_fetches(&idp).await - before;
    assert_eq!(fetches, 2, "one key set fetch per rotation");
}

#[tokio::test]
async fn a_flood_of_random_kids_costs_a_fetch_per_interval_and_valid_tokens_pass() {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    let conf = section_with(&idp.url("idp"), echo.port, "min_interval_seconds: 2", "");
    let gw = Gateway::start(&conf, &[]).await;
    let valid = mint(&idp, json!({"sub": "7"})).await;
    let before = jwks_fetches(&idp).await;
    let claims =
        json!({"iss": idp.url("idp"), "sub": "6", "aud": "gateway", "exp": 4_000_000_000u64});
    // 5,000 tokens with random kids in 5 s, a valid one every 50th.
    let statuses = paced(&gw, 5000, Duration::from_millis(1), |i| {
        let t = if i % 50 == 0 {
            valid.clone()
        } else {
            let kid = format!("random-{i}-{}", rand::random::<u64>());
            forge(json!({"alg": "RS256", "kid": kid}), claims.clone(), "AAAA")
        };
        async move { Some(t) }
    })
    .await;
    let fetches = jwks_fetches(&idp).await - before;
    // Unknown kids arrive the whole time (at least 5 s): each waits for the next permitted
    // fetch, shared by all of them, so a fetch at the start and once per 2 s interval after,
    // never one per token.
    assert!((2..=4).contains(&fetches), "{fetches} key set fetches");
    let mut waited_out = 0;
    for (i, s) in statuses {
        if i % 50 == 0 {
            assert_eq!(s, 200, "request {i}");
        } else {
            // 401 after the fetch; 503 when more than the cap already wait.
            assert!(s == 401 || s == 503, "request {i}: {s}");
            waited_out += usize::from(s == 503);
        }
    }
    let m = gw.metrics().await;
    assert_eq!(
        common::metric_sum(&m, r#"auth_failures_total{reason="key_wait_full"}"#) as usize,
        waited_out,
        "every 503 is counted"
    );
    assert_eq!(
        common::metric_sum(&m, "jwks_waiting_requests{") as usize,
        0,
        "no request is left waiting"
    );
}

#[tokio::test]
async fn the_last_keys_serve_while_the_provider_is_down_until_max_stale() {
    let port = common::free_port();
    let mut idp = Mocks::start_on([("idp", port)].into());
    let echo = EchoServer::start().await;
    let conf = section_with(
        &idp.url("idp"),
        echo.port,
        "min_interval_seconds: 1, max_stale_seconds: 4",
        "",
    );
    let mut gw = Gateway::builder(&conf)
        .env("RUST_LOG", "info")
        .start()
        .await;
    let used = mint(&idp, json!({"sub": "7"})).await;
    let unused = mint(&idp, json!({"sub": "8", "alg": "ES256"})).await;
    assert_eq!(status(&gw, &used).await, 200);
    idp.proc.kill();
    assert_eq!(status(&gw, &used).await, 200, "known key, provider down");
    assert_eq!(
        status(&gw, &unused).await,
        200,
        "a token not seen before, known key"
    );
    // Too stale to trust: the gateway cannot check the token, which is not the client's fault.
    eventually(
        "503 once the keys are older than max_stale",
        Duration::from_secs(15),
        async || status(&gw, &used).await == 503,
    )
    .await;
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(&unused)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1, "at most the 1 s cool-down, and never 0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "keys_unavailable", "{body}");
    assert_eq!(
        status(&gw, &token("1")).await,
        200,
        "HS256 does not depend on the provider"
    );
    // Still ready: keys gone stale are every replica's problem, and taking this one out of
    // rotation would only move the same 503s elsewhere (and refuse its HS256 and public work).
    let ready = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready with keys past max_stale");
    let m = gw.metrics().await;
    let failed = common::metric_sum(
        &m,
        &format!(
            r#"jwks_refresh_total{{issuer="{}",result="error"}}"#,
            idp.url("idp")
        ),
    );
    assert!(failed >= 1.0, "the failed fetches are counted: {m}");
    // Back, with new keys: accepted again without restarting the gateway.
    idp = Mocks::start_on([("idp", port)].into());
    let fresh = mint(&idp, json!({"sub": "9"})).await;
    eventually(
        "accepted once the provider is back",
        Duration::from_secs(15),
        async || status(&gw, &fresh).await == 200,
    )
    .await;
    let (out, err) = gw.stop_and_read();
    let log = out + &err;
    let down = log
        .matches("identity provider keys could not be fetched")
        .count();
    assert_eq!(down, 1, "one warning for the whole outage:\n{log}");
    assert!(log.contains("identity provider keys loaded again"), "{log}");
}

/// The mock provider's key set served over HTTPS by `openssl s_server -WWW` (a TLS server
/// nobody here wrote) with a certificate for `localhost` from `ca`; the server and its port.
async fn keys_over_https(idp: &Mocks, ca: &common::TestCa) -> (common::Proc, u16) {
    let leaf = ca.leaf("keys", &["localhost"], 30);
    let jwks = client()
        .get(format!("{}/jwks", idp.url("idp")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = ca.dir.path().join("www");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks"), jwks).unwrap();
    let port = common::free_port();
    let server = common::Proc::spawn(
        "openssl s_server",
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&leaf.cert)
            .arg("-key")
            .arg(&leaf.key)
            .current_dir(&dir),
    );
    eventually("s_server listening", Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    (server, port)
}

#[tokio::test]
async fn keys_are_fetched_over_https_and_verified_against_the_system_roots() {
    let idp = Mocks::start(&["idp"]);
    let echo = EchoServer::start().await;
    let ca = common::TestCa::new();
    let (_server, port) = keys_over_https(&idp, &ca).await;
    let conf = |issuer: &str| {
        format!(
            "auth:\n  issuers:\n    - {{ issuer: \"{issuer}\", jwks_uri: \"https://localhost:{port}/jwks\", audiences: [gateway], algorithms: [ES256] }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"] }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
            echo.port
        )
    };
    let token = mint(&idp, json!({"sub": "7", "alg": "ES256"})).await;
    let refreshed = |m: &str, result: &str| {
        common::metric_sum(
            m,
            &format!(
                r#"jwks_refresh_total{{issuer="{}",result="{result}"}}"#,
                idp.url("idp")
            ),
        )
    };
    // The test CA in the system's place (`SSL_CERT_FILE`, as OpenSSL reads it): trusted.
    let gw = Gateway::builder(&conf(&idp.url("idp")))
        .env("SSL_CERT_FILE", ca.cert.display().to_string())
        .start()
        .await;
    assert_eq!(status(&gw, &token).await, 200);
    let m = gw.metrics().await;
    assert_eq!((refreshed(&m, "ok"), refreshed(&m, "error")), (1.0, 0.0));
    // With the real system roots the test CA is unknown: the keys are never loaded, and the
    // token cannot be checked (503, not 401, and not accepted).
    let mut gw = Gateway::builder(&conf(&idp.url("idp")))
        .unready()
        .start()
        .await;
    eventually("the fetch refused", Duration::from_secs(10), async || {
        refreshed(&gw.metrics().await, "error") >= 1.0
    })
    .await;
    assert_eq!(status(&gw, &token).await, 503);
    assert_eq!(refreshed(&gw.metrics().await, "ok"), 0.0);
    let (out, err) = gw.stop_and_read();
    assert!(
        (out + &err).contains("certificate"),
        "the log says the certificate was not trusted"
    );
}
