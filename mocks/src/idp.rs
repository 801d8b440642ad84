//! A mock OpenID provider for tests and demos: a discovery document, a JWKS, tokens minted
//! with the current keys (RSA, EC P-256 and Ed25519, generated at start), and key rotation on
//! demand. Not a real provider: there is no login, anyone may mint any token.
//!
//! - `GET /.well-known/openid-configuration` → `{"issuer", "jwks_uri"}`
//! - `GET /jwks` → every published key (`Cache-Control: max-age=300`)
//! - `POST /token {"sub","roles","ttl","alg","aud","kid","nbf","claims"}` → `{"access_token", …}`
//!   (`alg`: RS256/384/512 and PS256/384/512 with the RSA key, ES256, EdDSA; `nbf` seconds
//!   from now; `claims` merged into the payload)
//! - `POST /__rotate` → a new current key per algorithm; the old ones stay published
//! - `POST /__retire` → only the current keys stay published
//! - `/__faults` and `/__stats` as every mock service.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{control, error, gate, Shared};

/// One signing key and its public JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

/// The provider's keys: every published generation, the last one current.
pub struct Idp {
    issuer: String,
    generations: Vec<Vec<Key>>,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// One key per algorithm, their kids ending in `-{n}`.
fn generation(n: usize) -> anyhow::Result<Vec<Key>> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    let mut rng = rand::rngs::OsRng;

    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
    let rsa_der = rsa.to_pkcs1_der()?;
    let rsa_kid = format!("rsa-{n}");
    // No `alg`, as several providers publish RSA keys: the token's `alg` then picks among the
    // RS* and PS* families.
    let rsa_jwk = json!({
        "kty": "RSA", "use": "sig", "kid": rsa_kid,
        "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be()),
    });

    let ec = p256::SecretKey::random(&mut rng);
    let ec_der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec)?;
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&ec.public_key(), false);
    let ec_kid = format!("ec-{n}");
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        anyhow::bail!("P-256 public key without coordinates");
    };
    let ec_jwk = json!({
        "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": ec_kid,
        "x": b64(x), "y": b64(y),
    });

    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    let ed_der = ed.to_pkcs8_der()?;
    let ed_kid = format!("ed-{n}");
    let ed_jwk = json!({
        "kty": "OKP", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "kid": ed_kid,
        "x": b64(ed.verifying_key().as_bytes()),
    });

    Ok(vec![
        Key {
            kid: rsa_kid,
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(rsa_der.as_bytes()),
            jwk: rsa_jwk,
        },
        Key {
            kid: ec_kid,
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(ec_der.as_bytes()),
            jwk: ec_jwk,
        },
        Key {
            kid: ed_kid,
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(ed_der.as_bytes()),
            jwk: ed_jwk,
        },
    ])
}

impl Idp {
    /// A provider whose tokens say `iss: issuer`, with one generation of keys.
    pub fn new(issuer: String) -> anyhow::Result<Idp> {
        Ok(Idp {
            issuer,
            generations: vec![generation(1)?],
        })
    }

    fn jwks(&self) -> Value {
        let keys: Vec<&Value> = self.generations.iter().flatten().map(|k| &k.jwk).collect();
        json!({ "keys": keys })
    }

    fn current(&self, alg: Algorithm) -> Option<&Key> {
        use Algorithm::{PS256, PS384, PS512, RS256, RS384, RS512};
        let family = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => RS256,
            other => other,
        };
        self.generations.last()?.iter().find(|k| k.alg == family)
    }
}

/// What a client asks `POST /token` for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default = "default_ttl")]
    ttl: u64,
    #[serde(default = "default_alg")]
    alg: String,
    #[serde(default = "default_aud")]
    aud: String,
    /// Overrides the header's `kid` (for tests of unknown keys).
    #[serde(default)]
    kid: Option<String>,
    /// `nbf` this many seconds from now (negative: in the past).
    #[serde(default)]
    nbf: Option<i64>,
    /// More claims, merged over the standard ones (`iss` included); `null` removes one.
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
}

fn default_ttl() -> u64 {
    3600
}
fn default_alg() -> String {
    "RS256".into()
}
fn default_aud() -> String {
    "gateway".into()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The provider's routes over its shared keys.
pub fn service(idp: Arc<Mutex<Idp>>) -> Router<Shared> {
    let discovery = {
        let idp = idp.clone();
        move |State(s): State<Shared>| {
            let idp = idp.clone();
            async move {
                if let Err(r) = gate(&s, "/.well-known/openid-configuration").await {
                    return r;
                }
                let issuer = idp.lock().map(|i| i.issuer.clone()).unwrap_or_default();
                Json(
                    json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                             "introspection_endpoint": format!("{issuer}/introspect") }),
                )
                .into_response()
            }
        }
    };
    let jwks = {
        let idp = idp.clone();
        move |State(s): State<Shared>| {
            let idp = idp.clone();
            async move {
                if let Err(r) = gate(&s, "/jwks").await {
                    return r;
                }
                let body = idp.lock().map(|i| i.jwks()).unwrap_or(Value::Null);
                ([(header::CACHE_CONTROL, "max-age=300")], Json(body)).into_response()
            }
        }
    };
    let token = {
        let idp = idp.clone();
        move |State(s): State<Shared>, body: axum::body::Bytes| {
            let idp = idp.clone();
            async move {
                if let Err(r) = gate(&s, "/token").await {
                    return r;
                }
                mint(&idp, &body)
            }
        }
    };
    let rotate = {
        let idp = idp.clone();
        move || {
            let idp = idp.clone();
            async move {
                let n = idp.lock().map(|i| i.generations.len() + 1).unwrap_or(1);
                // Key generation takes a moment (RSA): off the async threads.
                match tokio::task::spawn_blocking(move || generation(n)).await {
                    Ok(Ok(keys)) => {
                        if let Ok(mut i) = idp.lock() {
                            i.generations.push(keys);
                        }
                        Json(json!({ "ok": true, "generation": n })).into_response()
                    }
                    _ => error(StatusCode::INTERNAL_SERVER_ERROR, "key generation failed"),
                }
            }
        }
    };
    let retire = move || {
        let idp = idp.clone();
        async move {
            if let Ok(mut i) = idp.lock() {
                let keep = i.generations.len().saturating_sub(1);
                i.generations.drain(..keep);
            }
            Json(json!({ "ok": true })).into_response()
        }
    };
    control(
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/introspect", post(introspect))
            .route("/__rotate", post(rotate))
            .route("/__retire", post(retire)),
    )
}

/// RFC 7662 for opaque tokens of the form `opaque-SUB`: active for an hour as `SUB` with scope
/// `api`; anything else inactive. (The client's credentials are not checked: a mock.)
async fn introspect(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    if let Err(r) = gate(&s, "/introspect").await {
        return r;
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match token.strip_prefix("opaque-").filter(|s| !s.is_empty()) {
        Some(sub) => Json(json!({ "active": true, "sub": sub, "scope": "api",
                                  "client_id": "bench", "exp": now() + 3600 }))
        .into_response(),
        None => Json(json!({ "active": false })).into_response(),
    }
}

fn mint(idp: &Arc<Mutex<Idp>>, body: &[u8]) -> Response {
    let req: TokenRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad token request: {e}")),
    };
    let alg = match req.alg.parse::<Algorithm>() {
        Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => a,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unsupported alg `{}`", req.alg),
            )
        }
    };
    let Ok(idp) = idp.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    let Some(key) = idp.current(alg) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no key");
    };
    let mut header = Header::new(alg);
    header.kid = Some(req.kid.unwrap_or_else(|| key.kid.clone()));
    let iat = now();
    let mut claims = json!({
        "iss": idp.issuer, "sub": req.sub, "aud": req.aud, "roles": req.roles,
        "iat": iat, "exp": iat + req.ttl,
    });
    if let Some(nbf) = req.nbf {
        claims["nbf"] = json!(iat as i64 + nbf);
    }
    if let Value::Object(map) = &mut claims {
        map.extend(req.claims);
        // `null` removes a claim (tests of tokens without `aud`, say).
        map.retain(|_, v| !v.is_null());
    }
    match jsonwebtoken::encode(&header, &claims, &key.encoding) {
        Ok(t) => Json(json!({ "access_token": t, "token_type": "Bearer", "expires_in": req.ttl }))
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("signing failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn every_minted_token_verifies_with_its_published_jwk() {
        let idp = Arc::new(Mutex::new(Idp::new("http://idp.test".into()).unwrap()));
        for alg in ["RS256", "ES256", "EdDSA"] {
            let resp = mint(&idp, format!(r#"{{"sub":"7","alg":"{alg}"}}"#).as_bytes());
            assert_eq!(resp.status(), StatusCode::OK, "{alg}");
            let i = idp.lock().unwrap();
            let key = i.current(alg.parse().unwrap()).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
            let decoding = DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = Validation::new(key.alg);
            v.set_audience(&["gateway"]);
            let token = {
                let mut header = Header::new(key.alg);
                header.kid = Some(key.kid.clone());
                jsonwebtoken::encode(
                    &header,
                    &json!({"sub":"7","aud":"gateway","exp": now() + 60}),
                    &key.encoding,
                )
                .unwrap()
            };
            assert!(
                jsonwebtoken::decode::<Value>(&token, &decoding, &v).is_ok(),
                "{alg}"
            );
        }
    }
}
