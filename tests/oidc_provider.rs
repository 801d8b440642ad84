//! The harness around a real OpenID provider (`common::Oidc`, panva's `oidc-provider` on
//! Node.js), on its own: what it issues, introspection and revocation, ID tokens from its
//! authorization flows, key rotation inside the running process, and the outage switch. No
//! gateway here: the gateway's tests rely on these behaviours.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{claims_of, client, header_of, kid_of, Oidc, ID_TOKEN_NONCE};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// Verifies `token`'s signature with the key of its kid in `jwks`, as `alg`, for `aud`.
fn verify(token: &str, jwks: &Value, alg: Algorithm, aud: &str, iss: &str) -> Value {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set
        .find(&kid_of(token))
        .unwrap_or_else(|| panic!("kid {} is not published", kid_of(token)));
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap_or_else(|e| panic!("{alg:?} token does not verify: {e}"))
        .claims
}

#[tokio::test]
async fn jwt_access_tokens_carry_the_resource_algorithm_and_claims() {
    let idp = Oidc::start(&["A"]).await;
    let a = idp.kids("A").await;
    let jwks = idp.jwks().await;
    // (resource, alg in the header, index of the signing key in set A, algorithm to verify)
    let cases = [
        ("urn:gateway", "RS256", 0, Algorithm::RS256),
        ("urn:gateway:RS256", "RS256", 0, Algorithm::RS256),
        ("urn:gateway:PS256", "PS256", 1, Algorithm::PS256),
        ("urn:gateway:ES256", "ES256", 2, Algorithm::ES256),
        ("urn:gateway:EdDSA", "EdDSA", 3, Algorithm::EdDSA),
    ];
    for (resource, alg, key, verify_as) in cases {
        let t = idp.token("svc-acme", "acme-secret", resource).await;
        assert_eq!(
            header_of(&t),
            json!({ "alg": alg, "typ": "at+jwt", "kid": a[key] }),
            "{resource}"
        );
        let c = verify(&t, &jwks, verify_as, "gateway", &idp.issuer());
        assert_eq!(c["aud"], "gateway", "{resource}");
        assert_eq!(c["iss"], idp.issuer(), "{resource}");
        assert_eq!(c["sub"], "svc-acme", "{resource}");
        assert_eq!(c["client_id"], "svc-acme", "{resource}");
        assert_eq!(
            c["realm_access"],
            json!({ "roles": ["reader"] }),
            "{resource}"
        );
        assert_eq!(c["https://gateway.example/roles"], json!(["reader"]));
        assert_eq!(c["tenant"], "acme", "{resource}");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    }

    // The fully specified name (RFC 9864) is kept as asked: same Ed25519 key, alg "Ed25519".
    let t = idp
        .token("svc-acme", "acme-secret", "urn:gateway:Ed25519")
        .await;
    assert_eq!(
        header_of(&t),
        json!({ "alg": "Ed25519", "typ": "at+jwt", "kid": a[3] })
    );

    // Another client's claims, another audience, a short lifetime.
    let t = idp
        .token("svc-globex", "globex-secret", "urn:gateway:ES256:ttl5")
        .await;
    let c = claims_of(&t);
    assert_eq!(c["realm_access"], json!({ "roles": ["admin"] }));
    assert_eq!(c["https://gateway.example/roles"], json!(["admin"]));
    assert_eq!(c["org"], json!({ "id": "org-2", "tenant": "globex" }));
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 5);
    let t = idp.token("svc-acme", "acme-secret", "urn:other").await;
    assert_eq!(claims_of(&t)["aud"], "other-api");
}

#[tokio::test]
async fn an_opaque_token_introspects_active_until_its_client_revokes_it() {
    let idp = Oidc::start(&["A"]).await;
    let t = idp.token("svc-acme", "acme-secret", "urn:opaque").await;
    assert!(!t.contains('.'), "opaque, not a JWT: {t}");
    let i = idp.introspect(&t).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], "svc-acme");
    assert_eq!(i["aud"], "gateway");
    assert_eq!(i["iss"], idp.issuer());
    assert_eq!(i["token_type"], "Bearer");
    assert_eq!(i["realm_access"], json!({ "roles": ["reader"] }));
    assert_eq!(i["https://gateway.example/roles"], json!(["reader"]));
    assert_eq!(i["exp"].as_u64().unwrap() - i["iat"].as_u64().unwrap(), 600);

    // Another client's revocation is answered 200 and revokes nothing.
    idp.revoke("svc-globex", "globex-secret", &t).await;
    assert_eq!(idp.introspect(&t).await["active"], true);
    idp.revoke("svc-acme", "acme-secret", &t).await;
    assert_eq!(idp.introspect(&t).await, json!({ "active": false }));
    assert_eq!(
        idp.introspect("not-a-token-it-issued").await,
        json!({ "active": false })
    );

    // A JWT access token is refused, not reported inactive.
    let jwt = idp.token("svc-acme", "acme-secret", "urn:gateway").await;
    let r = client()
        .post(idp.url("/token/introspection"))
        .basic_auth("svc-acme", Some("acme-secret"))
        .form(&[("token", jwt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_token_type", "{body}");
}

#[tokio::test]
async fn id_tokens_come_from_the_authorization_flows() {
    let idp = Oidc::start(&["A"]).await;
    let a = idp.kids("A").await;
    let jwks = idp.jwks().await;

    // Code flow, exchanged at /token: no typ header, no at_hash.
    let t = idp.id_token().await;
    assert_eq!(header_of(&t), json!({ "alg": "RS256", "kid": a[0] }));
    let c = verify(&t, &jwks, Algorithm::RS256, "web", &idp.issuer());
    assert_eq!(c["nonce"], ID_TOKEN_NONCE);
    assert_eq!(c["sub"], "user-1");
    assert_eq!(c.get("at_hash"), None, "{c}");

    // Hybrid flow: the authorization response's ID token has at_hash and c_hash (16 bytes of
    // SHA-256 each, base64url).
    let t = idp.hybrid_id_token().await;
    assert_eq!(header_of(&t), json!({ "alg": "RS256", "kid": a[0] }));
    let c = verify(&t, &jwks, Algorithm::RS256, "web", &idp.issuer());
    assert_eq!(c["nonce"], ID_TOKEN_NONCE);
    assert_eq!(c["sub"], "user-1");
    assert_eq!(c["at_hash"].as_str().unwrap().len(), 22, "{c}");
    assert_eq!(c["c_hash"].as_str().unwrap().len(), 22, "{c}");
}

#[tokio::test]
async fn keys_rotate_inside_the_running_process() {
    let mut idp = Oidc::start(&["A"]).await;
    let pid = idp.proc.child.id();
    let a = idp.kids("A").await;
    let b = idp.kids("B").await;
    assert_eq!(a.len(), 5);
    assert!(
        a.iter().all(|k| k.len() == 43 && !b.contains(k)),
        "{a:?} {b:?}"
    );
    assert_eq!(idp.jwks_kids().await, a);
    let opaque = idp.token("svc-acme", "acme-secret", "urn:opaque").await;

    // The JWKS answers 200 throughout the rotations.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn({
        let (url, stop) = (idp.url("/jwks"), stop.clone());
        async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let s = client().get(&url).send().await.map(|r| r.status().as_u16());
                statuses.push(s.unwrap_or(0));
            }
            statuses
        }
    });

    let both: Vec<String> = b.iter().chain(&a).cloned().collect();
    assert_eq!(idp.rotate(&["B", "A"]).await, both);
    assert_eq!(idp.jwks_kids().await, both);
    let t = idp.token("svc-acme", "acme-secret", "urn:gateway").await;
    assert_eq!(kid_of(&t), b[0]);
    let t = idp
        .token("svc-acme", "acme-secret", "urn:gateway:ES256")
        .await;
    assert_eq!(kid_of(&t), b[2]);
    // The token store outlives the swap.
    assert_eq!(idp.introspect(&opaque).await["active"], true);

    assert_eq!(idp.rotate(&["B"]).await, b);
    assert_eq!(idp.jwks_kids().await, b);
    let t = idp
        .token("svc-acme", "acme-secret", "urn:gateway:EdDSA")
        .await;
    assert_eq!(kid_of(&t), b[3]);
    assert_eq!(idp.introspect(&opaque).await["active"], true);

    stop.store(true, Ordering::SeqCst);
    let statuses = poller.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(idp.proc.child.id(), pid);
    assert!(
        idp.proc.child.try_wait().unwrap().is_none(),
        "still running"
    );
}

#[tokio::test]
async fn down_answers_503_to_everything_until_up() {
    let idp = Oidc::start(&["A"]).await;
    let a = idp.kids("A").await;
    let get = |path: &str| {
        let url = idp.url(path);
        async move {
            client()
                .get(url)
                .header("user-agent", "oidc-harness-test/1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/jwks").await, 200);

    idp.down().await;
    assert_eq!(get("/jwks").await, 503);
    assert_eq!(get("/.well-known/openid-configuration").await, 503);
    let r = client()
        .post(idp.url("/token/introspection"))
        .basic_auth("svc-acme", Some("acme-secret"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    idp.up().await;
    assert_eq!(get("/jwks").await, 200);
    assert_eq!(idp.jwks_kids().await, a);

    // The request log: one line per request, path, status and User-Agent; the JWKS carries no
    // Cache-Control.
    let jwks = idp.requests("/jwks");
    let mine: Vec<(u64, Value)> = jwks
        .iter()
        .filter(|l| l["ua"] == "oidc-harness-test/1")
        .map(|l| (l["s"].as_u64().unwrap(), l["cc"].clone()))
        .collect();
    assert_eq!(
        mine,
        vec![(200, Value::Null), (503, Value::Null), (200, Value::Null)]
    );
    assert_eq!(jwks.len(), 4, "three here and jwks_kids: {jwks:?}");
    assert!(jwks.iter().all(|l| l["m"] == "GET"));
    assert_eq!(idp.requests("/__down").len(), 1);
    assert_eq!(idp.requests("/token/introspection")[0]["s"], 503);
}
