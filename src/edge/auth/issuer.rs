//! Tokens from a configured identity provider: the `alg` in the issuer's list, the key chosen
//! from its published set (one bounded refresh when the `kid` is new), then `iss`, `aud`, `exp`
//! and `nbf` checked by `jsonwebtoken`, and the roles and forwarded claims read.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};

use super::cache::Verified;
use super::claims::ClaimReader;
use super::error::{map_jwt_error, AuthError};
use super::identity::Identity;
use super::jwks::NoKey;
use super::provider::Provider;

/// Verifies the tokens of one issuer.
pub(crate) struct IssuerVerifier {
    provider: Arc<Provider>,
    leeway: u64,
    claims: Arc<ClaimReader>,
}

impl IssuerVerifier {
    /// A verifier over `provider`'s keys.
    pub(crate) fn new(provider: Arc<Provider>, leeway: u64, claims: Arc<ClaimReader>) -> Self {
        IssuerVerifier {
            provider,
            leeway,
            claims,
        }
    }

    /// The provider whose keys this verifier uses.
    pub(crate) fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// The `iss` this verifier accepts.
    pub(crate) fn issuer(&self) -> &str {
        &self.provider.config().issuer
    }

    /// Verifies `token`, whose header says `alg` and `kid`.
    pub(crate) async fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Verified, AuthError> {
        let config = self.provider.config();
        if !config.algorithms.contains(&alg) {
            return Err(AuthError::Algorithm);
        }
        let mut refreshed = false;
        let key = loop {
            let set = match self.provider.current() {
                Some(set) => set,
                None if !refreshed && self.provider.may_refresh() => {
                    refreshed = true;
                    let _ = self.provider.refresh().await;
                    continue;
                }
                None => return Err(AuthError::UnknownKid),
            };
            match set.select(kid, alg) {
                Ok(key) => break key.clone(),
                Err(NoKey::UnknownKid) if !refreshed => {
                    // Refused at once unless a refresh may run (or is running): a flood of
                    // random `kid`s costs one fetch per interval.
                    if !self.provider.may_refresh() {
                        return Err(AuthError::UnknownKid);
                    }
                    refreshed = true;
                    // A failed refresh keeps the old set: the token is then refused below.
                    let _ = self.provider.refresh().await;
                }
                Err(NoKey::UnknownKid) => return Err(AuthError::UnknownKid),
                Err(NoKey::Mismatch) => return Err(AuthError::Algorithm),
                Err(NoKey::Ambiguous) => {
                    return Err(AuthError::Malformed(
                        "no `kid`, and the issuer publishes several keys for its algorithm",
                    ))
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.leeway;
        // jsonwebtoken checks `nbf` only when asked to.
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        let mut required: HashSet<String> = ["exp", "sub", "iss"].map(String::from).into();
        if config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audiences);
            required.insert("aud".into());
        }
        validation.required_spec_claims = required;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;
        let sub = match claims.get("sub") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) | None => {
                return Err(AuthError::MissingClaim("sub".into()))
            }
            Some(_) => return Err(AuthError::ClaimFormat("sub".into())),
        };
        if !super::claims::sendable(&sub) {
            // It becomes `X-User-Id`: a value that cannot be a header is the token's fault.
            return Err(AuthError::ClaimFormat("sub".into()));
        }
        // A token issued in the future (beyond the leeway) is not valid yet, as for HS256.
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_f64()
                .ok_or_else(|| AuthError::ClaimFormat("iat".into()))?;
            if iat > (crate::clock::unix_now() + self.leeway) as f64 {
                return Err(AuthError::NotYetValid);
            }
        }
        let roles = self.claims.roles(&claims);
        let forwarded = self.claims.forwarded(&claims);
        let limit_claims = self.claims.limit_values(&claims);
        let scopes = self.claims.scopes(&claims);
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| AuthError::ClaimFormat("exp".into()))?;
        Ok(Verified {
            identity: Arc::new(Identity {
                sub,
                roles,
                forwarded,
                limit_claims,
                scopes,
            }),
            exp,
            nbf: claims.get("nbf").and_then(|v| v.as_f64()),
            issuer: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use parking_lot::Mutex;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct TestKey {
        kid: String,
        encoding: EncodingKey,
        jwk: serde_json::Value,
    }

    fn key(kid: &str) -> TestKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::SecretKey::random(&mut rand08::rngs::OsRng);
        let der = sk.to_pkcs8_der().unwrap();
        let point = sk.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        TestKey {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
        }
    }

    /// A provider serving the JWKS in `published`, counting fetches.
    async fn serve(published: Arc<Mutex<Vec<serde_json::Value>>>) -> (String, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let count = fetches.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (published, count) = (published.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": *published.lock()}))
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, fetches)
    }

    fn verifier(base: &str) -> IssuerVerifier {
        let yaml = format!(
            "gateway:\n  auth:\n    roles_claim: realm_access.roles\n    issuers:\n      - {{ issuer: '{base}', jwks_uri: '{base}/jwks', allow_insecure_http: true, audiences: [gateway], algorithms: [ES256], refresh: {{ min_interval_seconds: 30 }} }}\n"
        );
        let cfg =
            crate::config::Config::from_yaml(&yaml, &|_: &str| None, crate::config::LoadMode::Run)
                .unwrap();
        let provider = Arc::new(Provider::new(
            cfg.auth.issuers[0].clone(),
            reqwest::Client::new(),
        ));
        let claims = ClaimReader::new(cfg.auth.roles_claim.clone(), vec![], vec![], false);
        IssuerVerifier::new(provider, 0, Arc::new(claims))
    }

    fn token(k: &TestKey, iss: &str, aud: &str) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(k.kid.clone());
        let exp = crate::clock::unix_now() + 600;
        let claims = json!({"iss": iss, "aud": aud, "sub": "42", "exp": exp,
                            "realm_access": {"roles": ["admin", "ops"]}});
        jsonwebtoken::encode(&h, &claims, &k.encoding).unwrap()
    }

    #[tokio::test]
    async fn a_rotated_key_is_fetched_once_and_a_random_kid_costs_nothing_more() {
        let (k1, k2) = (key("k1"), key("k2"));
        let published = Arc::new(Mutex::new(vec![k1.jwk.clone()]));
        let (base, fetches) = serve(published.clone()).await;
        let v = verifier(&base);
        let ok = v
            .verify(&token(&k1, &base, "gateway"), Algorithm::ES256, Some("k1"))
            .await
            .unwrap();
        assert_eq!(ok.identity.sub, "42");
        assert_eq!(
            ok.identity.roles,
            vec!["admin", "ops"],
            "from realm_access.roles"
        );
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "the first token loads the set"
        );
        // Within the minimum interval, a new kid is refused without a fetch.
        published.lock().push(k2.jwk.clone());
        let e = v
            .verify(&token(&k2, &base, "gateway"), Algorithm::ES256, Some("k2"))
            .await;
        assert_eq!(e.err(), Some(AuthError::UnknownKid));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Past it, the rotated key triggers one refresh and is accepted.
        v.provider.advance(std::time::Duration::from_secs(31));
        assert!(v
            .verify(&token(&k2, &base, "gateway"), Algorithm::ES256, Some("k2"))
            .await
            .is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Random kids within the minimum interval: refused without a fetch.
        for i in 0..50 {
            let e = v
                .verify(
                    &token(&k2, &base, "gateway"),
                    Algorithm::ES256,
                    Some(&format!("r{i}")),
                )
                .await;
            assert_eq!(e.err(), Some(AuthError::UnknownKid));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_algorithm_issuer_and_audience_must_match() {
        let k1 = key("k1");
        let (base, _) = serve(Arc::new(Mutex::new(vec![k1.jwk.clone()]))).await;
        let v = verifier(&base);
        let t = token(&k1, &base, "gateway");
        assert_eq!(
            v.verify(&t, Algorithm::RS256, Some("k1")).await.err(),
            Some(AuthError::Algorithm)
        );
        let wrong_aud = token(&k1, &base, "someone-else");
        assert_eq!(
            v.verify(&wrong_aud, Algorithm::ES256, Some("k1"))
                .await
                .err(),
            Some(AuthError::Audience)
        );
        let wrong_iss = token(&k1, "https://evil.example", "gateway");
        assert_eq!(
            v.verify(&wrong_iss, Algorithm::ES256, Some("k1"))
                .await
                .err(),
            Some(AuthError::Issuer)
        );
    }

    #[tokio::test]
    async fn a_future_iat_or_a_sub_that_cannot_be_a_header_is_refused() {
        let k1 = key("k1");
        let (base, _) = serve(Arc::new(Mutex::new(vec![k1.jwk.clone()]))).await;
        let v = verifier(&base);
        let signed = |extra: serde_json::Value| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("k1".into());
            let now = crate::clock::unix_now();
            let mut claims = json!({"iss": base, "aud": "gateway", "sub": "42", "exp": now + 600});
            for (k, x) in extra.as_object().unwrap() {
                claims[k] = x.clone();
            }
            jsonwebtoken::encode(&h, &claims, &k1.encoding).unwrap()
        };
        let day = crate::clock::unix_now() + 86_400;
        for (extra, want) in [
            (json!({"iat": day}), AuthError::NotYetValid),
            (json!({"iat": "soon"}), AuthError::ClaimFormat("iat".into())),
            (
                json!({"sub": "4\r\n2"}),
                AuthError::ClaimFormat("sub".into()),
            ),
            (
                json!({"sub": "4\u{0}2"}),
                AuthError::ClaimFormat("sub".into()),
            ),
        ] {
            let got = v
                .verify(&signed(extra.clone()), Algorithm::ES256, Some("k1"))
                .await;
            assert_eq!(got.err(), Some(want), "{extra}");
        }
        let now = json!({"iat": crate::clock::unix_now()});
        assert!(v
            .verify(&signed(now), Algorithm::ES256, Some("k1"))
            .await
            .is_ok());
    }
}
