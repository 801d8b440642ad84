//! Tokens from a configured identity provider: the `alg` in the issuer's list, the `typ` in
//! its token types (never an ID token), no `crit` extension, the key chosen from its published
//! set, the signature checked by `jsonwebtoken` (on aws-lc), then `iss`, `aud`, `exp`, `nbf` and
//! `iat` checked here, and the roles and forwarded claims read.
//!
//! The header and the registered claims are read here rather than by `jsonwebtoken::decode`:
//! its header type cannot hold RFC 9864's `Ed25519` algorithm or a `crit` list, and reading
//! the payload once serves both the checks and the claims the gateway forwards.
//!
//! A `kid` the current set lacks is not refused while a fetch is not allowed yet (the
//! cool-down after the last one): the request waits for the next permitted fetch, shared with
//! every other waiting request, so a rotation is never answered 401 and a flood of random
//! `kid`s still costs one fetch per interval.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::cache::Verified;
use super::claims::ClaimReader;
use super::error::AuthError;
use super::identity::Identity;
use super::jwks::NoKey;
use super::provider::Provider;

/// What a token's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenHead {
    /// The signing algorithm (RFC 9864's `Ed25519` read as `EdDSA`).
    pub(crate) alg: Algorithm,
    /// The key id, if any.
    pub(crate) kid: Option<String>,
    /// The media type, lowercased, without an `application/` prefix (absent: `jwt`).
    pub(crate) typ: String,
    /// The header lists critical extensions (none is implemented here).
    pub(crate) crit: bool,
}

impl TokenHead {
    /// Reads a decoded header; `None` when it is not a JSON object with a known `alg`.
    pub(crate) fn parse(header: &[u8]) -> Result<TokenHead, AuthError> {
        #[derive(serde::Deserialize)]
        struct Head {
            alg: String,
            kid: Option<String>,
            typ: Option<String>,
            crit: Option<Value>,
        }
        let head: Head = serde_json::from_slice(header)
            .map_err(|_| AuthError::Malformed("header is not base64url JSON with an `alg`"))?;
        let alg = match head.alg.as_str() {
            "Ed25519" => Algorithm::EdDSA,
            other => other.parse().map_err(|_| AuthError::Algorithm)?,
        };
        let typ = head
            .typ
            .map_or_else(|| "jwt".to_string(), |t| crate::config::media_type(&t));
        Ok(TokenHead {
            alg,
            kid: head.kid,
            typ,
            crit: head.crit.is_some(),
        })
    }
}

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

    /// Seconds a client should wait before retrying while this issuer's keys are missing.
    fn retry_after(&self) -> u64 {
        self.provider.until_fetch_allowed().as_secs().max(1)
    }

    /// Verifies `token`, whose header is `head`.
    pub(crate) async fn verify(
        &self,
        token: &str,
        head: &TokenHead,
    ) -> Result<Verified, AuthError> {
        let config = self.provider.config();
        if !config.algorithms.contains(&head.alg) {
            return Err(AuthError::Algorithm);
        }
        if head.crit {
            return Err(AuthError::Critical);
        }
        if !config.token_types.contains(&head.typ) {
            return Err(AuthError::TokenType("token type (`typ`) not accepted"));
        }
        let kid = head.kid.as_deref();
        let mut refreshed = false;
        let (key, withdrawn) = loop {
            let Some(set) = self.provider.current() else {
                if !refreshed && self.provider.may_refresh() {
                    refreshed = true;
                    let _ = self.provider.refresh().await;
                    continue;
                }
                // The token cannot be checked: the gateway's state, not the token, is at fault.
                return Err(AuthError::KeysUnavailable {
                    retry_after_secs: self.retry_after(),
                });
            };
            match set.select(kid, head.alg) {
                Ok(chosen) => break (chosen.key.clone(), chosen.withdrawn.clone()),
                Err(NoKey::UnknownKid) if !refreshed => {
                    refreshed = true;
                    if !self.provider.may_refresh() {
                        // Too soon after the last fetch: wait for the next permitted one
                        // (bounded by the cool-down; every waiter shares that one fetch).
                        let Some(_slot) = self.provider.wait_slot() else {
                            return Err(AuthError::KeyWaitFull {
                                retry_after_secs: self.retry_after(),
                            });
                        };
                        let wait = self.provider.until_fetch_allowed();
                        tokio::time::sleep(wait + std::time::Duration::from_millis(1)).await;
                        // Another waiter's fetch may have brought the key already.
                        if !self.provider.may_refresh() {
                            continue;
                        }
                    }
                    // A failed refresh keeps the old set: the token is then refused below.
                    let _ = self.provider.refresh().await;
                }
                Err(NoKey::UnknownKid) => return Err(AuthError::UnknownKid),
                Err(NoKey::Withdrawn) => return Err(AuthError::KeyWithdrawn),
                Err(NoKey::Mismatch) => return Err(AuthError::Algorithm),
                Err(NoKey::Ambiguous) => {
                    return Err(AuthError::Malformed(
                        "no `kid`, and the issuer publishes several keys for its algorithm",
                    ))
                }
            }
        };
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed(
            "a token has three dot-separated parts",
        ))?;
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, head.alg) {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::Signature),
            Err(_) => return Err(AuthError::Malformed("signature is not base64url")),
        }
        let payload = message.split('.').nth(1).unwrap_or_default();
        let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .ok_or(AuthError::Malformed(
                "payload is not a base64url JSON object",
            ))?;
        // An ID token proves a login to a client; it does not grant access to an API (said
        // before its audience, the client's, is found wrong).
        if head.typ == "jwt"
            && ["nonce", "at_hash", "c_hash"]
                .iter()
                .any(|c| claims.get(c).is_some())
        {
            return Err(AuthError::TokenType("an ID token is not an access token"));
        }
        let (exp, nbf) = self.check_registered(&claims)?;
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(AuthError::MissingClaim("sub".into())),
            Some(_) => return Err(AuthError::ClaimFormat("sub".into())),
        };
        if !super::claims::sendable(&sub) {
            // It becomes `X-User-Id`: a value that cannot be a header is the token's fault.
            return Err(AuthError::InvalidClaim("sub".into()));
        }
        let forwarded = self.claims.forwarded(&claims)?;
        Ok(Verified {
            identity: Arc::new(Identity {
                sub,
                roles: self.claims.roles(&claims),
                forwarded,
                limit_claims: self.claims.limit_values(&claims),
                scopes: self.claims.scopes(&claims),
            }),
            exp,
            nbf,
            issuer: None,
            withdrawn: Some(withdrawn),
        })
    }

    /// `iss`, `aud`, `exp`, `nbf` and `iat` (with the leeway); the validity window.
    fn check_registered(&self, claims: &Value) -> Result<(f64, Option<f64>), AuthError> {
        let config = self.provider.config();
        let now = crate::clock::unix_now() as f64;
        let leeway = self.leeway as f64;
        let time = |name: &str| -> Result<Option<f64>, AuthError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| AuthError::ClaimFormat(name.into())),
            }
        };
        if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return Err(AuthError::Issuer);
        }
        if !config.audiences.is_empty() {
            let named = |a: &str| config.audiences.iter().any(|x| x == a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => named(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                _ => false,
            };
            if !ok {
                return Err(AuthError::Audience);
            }
        }
        let exp = time("exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        if exp < now - leeway {
            return Err(AuthError::Expired);
        }
        let nbf = time("nbf")?;
        // A token issued in the future (beyond the leeway) is not valid yet, as for HS256.
        if nbf.is_some_and(|t| t > now + leeway) || time("iat")?.is_some_and(|t| t > now + leeway) {
            return Err(AuthError::NotYetValid);
        }
        Ok((exp, nbf))
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
        verifier_with(base, "min_interval_seconds: 30", "[ES256]")
    }

    fn verifier_with(base: &str, refresh: &str, algorithms: &str) -> IssuerVerifier {
        let yaml = format!(
            "gateway:\n  auth:\n    roles_claim: realm_access.roles\n    issuers:\n      - {{ issuer: '{base}', jwks_uri: '{base}/jwks', allow_insecure_http: true, audiences: [gateway], algorithms: {algorithms}, refresh: {{ {refresh} }} }}\n"
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

    fn head(alg: Algorithm, kid: &str) -> TokenHead {
        TokenHead {
            alg,
            kid: Some(kid.to_string()),
            typ: "at+jwt".into(),
            crit: false,
        }
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
    async fn a_new_kid_in_the_cool_down_waits_for_the_next_fetch_and_random_kids_share_it() {
        let (k1, k2) = (key("k1"), key("k2"));
        let published = Arc::new(Mutex::new(vec![k1.jwk.clone()]));
        let (base, fetches) = serve(published.clone()).await;
        let v = Arc::new(verifier_with(
            &base,
            "min_interval_seconds: 1",
            "[ES256, EdDSA]",
        ));
        let ok = v
            .verify(&token(&k1, &base, "gateway"), &head(Algorithm::ES256, "k1"))
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
        // The issuer rotates within the cool-down; random kids arrive alongside the new one.
        published.lock().push(k2.jwk.clone());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (v, t) = (v.clone(), token(&k2, &base, "gateway"));
                let kid = if i % 2 == 0 {
                    "k2".to_string()
                } else {
                    format!("r{i}")
                };
                tokio::spawn(async move { v.verify(&t, &head(Algorithm::ES256, &kid)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap();
            if i % 2 == 0 {
                assert!(
                    got.is_ok(),
                    "the rotated key waits and is accepted: {:?}",
                    got.err()
                );
            } else {
                assert_eq!(got.err(), Some(AuthError::UnknownKid));
            }
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "one fetch for all twenty"
        );
        assert_eq!(v.provider.waiting(), 0, "every place given back");
    }

    #[tokio::test]
    async fn a_withdrawn_key_revokes_what_it_verified_and_is_refused_without_waiting() {
        let (k1, k2) = (key("k1"), key("k2"));
        let published = Arc::new(Mutex::new(vec![k1.jwk.clone(), k2.jwk.clone()]));
        let (base, fetches) = serve(published.clone()).await;
        let v = verifier(&base);
        let seen = v
            .verify(&token(&k1, &base, "gateway"), &head(Algorithm::ES256, "k1"))
            .await
            .unwrap();
        let kept = v
            .verify(&token(&k2, &base, "gateway"), &head(Algorithm::ES256, "k2"))
            .await
            .unwrap();
        let flag = |x: &Verified| x.withdrawn.as_ref().unwrap().load(Ordering::SeqCst);
        assert!(!flag(&seen) && !flag(&kept));
        // k1 is withdrawn; the same key set refetched keeps k2's flag down.
        *published.lock() = vec![k2.jwk.clone()];
        v.provider.advance(std::time::Duration::from_secs(31));
        assert_eq!(v.provider.refresh().await, Ok(1));
        assert!(flag(&seen), "what k1 verified is revoked");
        assert!(!flag(&kept), "k2 is still published");
        let e = v
            .verify(&token(&k1, &base, "gateway"), &head(Algorithm::ES256, "k1"))
            .await;
        assert_eq!(e.err(), Some(AuthError::KeyWithdrawn), "refused at once");
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "no fetch, no wait");
    }

    #[tokio::test]
    async fn no_key_set_means_the_token_cannot_be_checked_not_that_it_is_bad() {
        // Nothing listens here: the key set cannot be fetched.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let v = verifier(&base);
        let k1 = key("k1");
        for _ in 0..2 {
            let e = v
                .verify(&token(&k1, &base, "gateway"), &head(Algorithm::ES256, "k1"))
                .await
                .err()
                .unwrap();
            assert!(
                matches!(e, AuthError::KeysUnavailable { retry_after_secs } if retry_after_secs >= 1),
                "{e:?}"
            );
            assert_eq!(e.unavailable().map(|s| s >= 1), Some(true));
        }
    }

    #[tokio::test]
    async fn id_tokens_foreign_types_and_critical_extensions_are_refused() {
        let k1 = key("k1");
        let (base, _) = serve(Arc::new(Mutex::new(vec![k1.jwk.clone()]))).await;
        let v = verifier(&base);
        let signed = |typ: &str, extra: serde_json::Value| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("k1".into());
            h.typ = Some(typ.into());
            let mut claims = json!({"iss": base, "aud": "gateway", "sub": "42",
                                    "exp": crate::clock::unix_now() + 600});
            for (k, x) in extra.as_object().unwrap() {
                claims[k] = x.clone();
            }
            jsonwebtoken::encode(&h, &claims, &k1.encoding).unwrap()
        };
        let typed = |typ: &str| TokenHead {
            typ: typ.into(),
            ..head(Algorithm::ES256, "k1")
        };
        for (typ, extra, want) in [
            (
                "jwt",
                json!({"nonce": "n1"}),
                Some("an ID token is not an access token"),
            ),
            (
                "jwt",
                json!({"at_hash": "x"}),
                Some("an ID token is not an access token"),
            ),
            ("id+jwt", json!({}), Some("token type (`typ`) not accepted")),
            ("jwt", json!({}), None),
            ("at+jwt", json!({"nonce": "n1"}), None),
        ] {
            let got = v.verify(&signed(typ, extra.clone()), &typed(typ)).await;
            assert_eq!(got.err(), want.map(AuthError::TokenType), "{typ} {extra}");
        }
        let crit = TokenHead {
            crit: true,
            ..head(Algorithm::ES256, "k1")
        };
        assert_eq!(
            v.verify(&signed("at+jwt", json!({})), &crit).await.err(),
            Some(AuthError::Critical)
        );
        // The header as the verifier reads it.
        let h = TokenHead::parse(br#"{"alg":"Ed25519","typ":"application/AT+JWT","crit":["x"]}"#)
            .unwrap();
        assert_eq!(
            (h.alg, h.typ.as_str(), h.crit),
            (Algorithm::EdDSA, "at+jwt", true)
        );
        assert_eq!(TokenHead::parse(br#"{"alg":"ES256"}"#).unwrap().typ, "jwt");
        assert_eq!(
            TokenHead::parse(br#"{"alg":"XS1"}"#).err(),
            Some(AuthError::Algorithm)
        );
    }

    #[tokio::test]
    async fn an_ed25519_token_named_by_rfc_9864_is_verified_as_eddsa() {
        let sk = openssl::pkey::PKey::generate_ed25519().unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "Ed25519",
                         "x": b64(&sk.raw_public_key().unwrap())});
        let (base, _) = serve(Arc::new(Mutex::new(vec![jwk]))).await;
        let v = verifier_with(&base, "min_interval_seconds: 30", "[EdDSA]");
        let encoding = EncodingKey::from_ed_der(&sk.private_key_to_pkcs8().unwrap());
        let claims = json!({"iss": base, "aud": "gateway", "sub": "42",
                            "exp": crate::clock::unix_now() + 600});
        let message = format!(
            "{}.{}",
            b64(br#"{"alg":"Ed25519","kid":"ed","typ":"at+jwt"}"#),
            b64(claims.to_string().as_bytes())
        );
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &encoding, Algorithm::EdDSA).unwrap();
        let t = format!("{message}.{sig}");
        let h = TokenHead::parse(br#"{"alg":"Ed25519","kid":"ed","typ":"at+jwt"}"#).unwrap();
        assert_eq!(
            v.verify(&t, &h).await.map(|x| x.identity.sub.clone()),
            Ok("42".into())
        );
        let forged = format!("{message}.{}", b64(&[7u8; 64]));
        assert_eq!(
            v.verify(&forged, &h).await.err(),
            Some(AuthError::Signature)
        );
    }

    #[tokio::test]
    async fn the_algorithm_issuer_and_audience_must_match() {
        let k1 = key("k1");
        let (base, _) = serve(Arc::new(Mutex::new(vec![k1.jwk.clone()]))).await;
        let v = verifier(&base);
        let t = token(&k1, &base, "gateway");
        assert_eq!(
            v.verify(&t, &head(Algorithm::RS256, "k1")).await.err(),
            Some(AuthError::Algorithm)
        );
        let wrong_aud = token(&k1, &base, "someone-else");
        assert_eq!(
            v.verify(&wrong_aud, &head(Algorithm::ES256, "k1"))
                .await
                .err(),
            Some(AuthError::Audience)
        );
        let wrong_iss = token(&k1, "https://evil.example", "gateway");
        assert_eq!(
            v.verify(&wrong_iss, &head(Algorithm::ES256, "k1"))
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
                AuthError::InvalidClaim("sub".into()),
            ),
            (
                json!({"sub": "4\u{0}2"}),
                AuthError::InvalidClaim("sub".into()),
            ),
        ] {
            let got = v
                .verify(&signed(extra.clone()), &head(Algorithm::ES256, "k1"))
                .await;
            assert_eq!(got.err(), Some(want), "{extra}");
        }
        let now = json!({"iat": crate::clock::unix_now()});
        assert!(v
            .verify(&signed(now), &head(Algorithm::ES256, "k1"))
            .await
            .is_ok());
    }
}
