//! JWT verification → the caller's [`Identity`]: tokens of a configured identity provider
//! against its published keys, others HS256 with `JWT_SECRET`; and token issuing for the
//! `gateway token` command.
//!
//! - `error`: why a token was refused, and the mapping of `jsonwebtoken`'s errors.
//! - `cache`: verified tokens, so a token seen before skips the signature and the JSON.
//! - `claims`: roles and forwarded claims read from verified claims.
//! - `jwks`, `refresh`, `provider`, `issuer`: key sets, when to fetch them, fetching them,
//!   and verifying one issuer's tokens.
//! - `identity`: the verified caller.
//!
//! Here: choosing the verifier for a token (its `iss`, the cache, HS256) and the HS256 path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::config::AuthConfig;
use crate::rebuild::Rebuild;

mod apikeys;
mod cache;
mod claims;
mod error;
mod identity;
mod introspect;
mod issuer;
pub(crate) mod jwks;
pub(crate) mod provider;
mod refresh;

pub use self::apikeys::new_api_key;
use self::cache::{TokenCache, Verified};
use self::claims::ClaimReader;
pub use self::error::AuthError;
use self::error::{map_jwt_error, refine};
pub use self::identity::Identity;

/// Claims the gateway reads; `exp`/`nbf`/`iss`/`aud` are checked by `jsonwebtoken` itself.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    // Values, not numbers: a wrongly typed claim must reach jsonwebtoken's own check (which
    // names the claim) instead of failing deserialisation as "malformed".
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

/// A token's issuer (its position in the conf), with its header.
type IssuerToken = (usize, issuer::TokenHead);

/// Verifies bearer tokens with the configured secret and rules.
pub(crate) struct Authenticator {
    /// HS256 with `JWT_SECRET`; off when no secret is set (issuers only).
    hs256: bool,
    /// Configured identity providers, matched by the token's `iss`.
    issuers: Vec<issuer::IssuerVerifier>,
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
    max_token_bytes: usize,
    cache: TokenCache,
    claims: Arc<ClaimReader>,
    /// Machine clients' keys, when configured.
    api_keys: Option<apikeys::ApiKeys>,
    /// Opaque tokens' introspection, when an issuer has it.
    introspector: Option<introspect::Introspector>,
}

impl Authenticator {
    /// Builds the verifier; `max_token_bytes` caps the Authorization header value. A provider
    /// in `keep` whose settings are unchanged is used as it is (keys loaded, refresh running).
    pub(crate) fn new(
        cfg: &AuthConfig,
        max_token_bytes: usize,
        keep: &[Arc<provider::Provider>],
        limit_claims: Vec<Vec<String>>,
        scopes: bool,
    ) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway_seconds;
        validation.required_spec_claims = HashSet::from(["exp".to_string(), "sub".to_string()]);
        validation.validate_aud = cfg.audience.is_some();
        // A configured issuer or audience is required, not only compared when present:
        // jsonwebtoken accepts a token that leaves the claim out unless it is listed here.
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_string());
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_string());
        }
        let http = crate::trust::http_client_builder()
            // Providers' logs and rate limits tell clients apart by it.
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .connect_timeout(provider::FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let claims = Arc::new(ClaimReader::new(
            cfg.roles_claim.clone(),
            cfg.forward_claims.iter().map(|(p, _)| p.clone()).collect(),
            limit_claims,
            scopes,
        ));
        let issuers: Vec<issuer::IssuerVerifier> = cfg
            .issuers
            .iter()
            .map(|i| {
                let previous = keep.iter().find(|p| p.config().issuer == i.issuer);
                let p = provider::Provider::rebuild(i, previous, || {
                    provider::Provider::new(i.clone(), http.clone())
                });
                issuer::IssuerVerifier::new(p, cfg.leeway_seconds, claims.clone())
            })
            .collect();
        let introspector =
            cfg.issuers
                .iter()
                .zip(&issuers)
                .find_map(|(c, v): (_, &issuer::IssuerVerifier)| {
                    let i = c.introspection.clone()?;
                    Some(introspect::Introspector::new(
                        i,
                        v.provider().clone(),
                        http.clone(),
                        claims.clone(),
                        cfg.leeway_seconds,
                    ))
                });
        Authenticator {
            introspector,
            api_keys: cfg
                .api_keys
                .as_ref()
                .map(|k| apikeys::ApiKeys::new(k, &claims)),
            hs256: !cfg.secret.is_empty(),
            issuers,
            key: DecodingKey::from_secret(&cfg.secret),
            validation,
            leeway: cfg.leeway_seconds,
            max_token_bytes,
            cache: TokenCache::new(),
            claims,
        }
    }

    /// Authenticates a request by the first credential it carries that `accepts` lists: an
    /// API key, else a bearer token (a configured issuer's against its published keys,
    /// fetching them when a `kid` is new; an opaque one by introspection; any other with
    /// `JWT_SECRET`), else the connection's verified client certificate `cert`.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        accepts: crate::config::Credentials,
        cert: Option<&str>,
    ) -> Result<Arc<Identity>, AuthError> {
        if let Some(keys) = &self.api_keys {
            if headers.contains_key(keys.header()) && !accepts.api_key {
                return Err(AuthError::NotAccepted("an API key"));
            }
            if let Some(keyed) = keys.identify(headers) {
                return keyed;
            }
        }
        if !headers.contains_key(http::header::AUTHORIZATION) {
            if let (true, Some(sub)) = (accepts.mtls, cert) {
                return Ok(self.certified(sub));
            }
        }
        if !accepts.bearer && headers.contains_key(http::header::AUTHORIZATION) {
            return Err(AuthError::NotAccepted("a bearer token"));
        }
        let token = self.bearer(headers)?;
        if let Some(i) = &self.introspector {
            if introspect::is_opaque(token) {
                return i.identify(token).await;
            }
        }
        if let Some(hit) = self.cached(token) {
            return hit;
        }
        if let Some((i, head)) = self.issuer_of(token)? {
            let mut verified = self.issuers[i].verify(token, &head).await?;
            verified.issuer = Some(i);
            let identity = verified.identity.clone();
            self.cache.put(token, verified);
            return Ok(identity);
        }
        self.verify(token)
    }

    /// The issuer whose token this is (by its unverified `iss`), with its header; `None` for a
    /// token of no configured issuer.
    fn issuer_of(&self, token: &str) -> Result<Option<IssuerToken>, AuthError> {
        if self.issuers.is_empty() {
            return Ok(None);
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
            return Err(AuthError::Malformed(
                "a token has three dot-separated parts",
            ));
        };
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let payload = b64
            .decode(payload.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        let Ok(Iss { iss: Some(iss) }) = serde_json::from_slice::<Iss>(&payload) else {
            return Ok(None);
        };
        let header = b64
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed("header is not base64url JSON with an `alg`"))?;
        let Some(i) = self.issuers.iter().position(|v| v.issuer() == iss) else {
            // Only HS256 tokens go on to the shared secret; anything else names an issuer
            // this gateway does not trust, and should say so.
            let hs256 = issuer::TokenHead::parse(&header).is_ok_and(|h| h.alg == Algorithm::HS256);
            if !hs256 {
                return Err(AuthError::Issuer);
            }
            return Ok(None);
        };
        Ok(Some((i, issuer::TokenHead::parse(&header)?)))
    }

    /// Whether the request carries a credential in its headers (an `optional` route lets a
    /// request without one through anonymously, and an answer to one varies by it).
    pub(crate) fn has_credentials(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(http::header::AUTHORIZATION)
            || self
                .api_keys
                .as_ref()
                .is_some_and(|k| headers.contains_key(k.header()))
    }

    /// The caller a verified client certificate names (`sub`: its URI SAN or CN).
    fn certified(&self, sub: &str) -> Arc<Identity> {
        let as_claims = serde_json::json!({ "sub": sub });
        Arc::new(Identity {
            sub: sub.to_string(),
            roles: Vec::new(),
            forwarded: self.claims.forwarded(&as_claims).unwrap_or_default(),
            limit_claims: self.claims.limit_values(&as_claims),
            scopes: Vec::new(),
        })
    }

    /// The identity providers, for the background key refresher.
    pub(crate) fn providers(&self) -> Vec<Arc<provider::Provider>> {
        self.issuers.iter().map(|v| v.provider().clone()).collect()
    }

    /// Whether every configured issuer has had a key set loaded (readiness: a new replica
    /// must not refuse its first requests). Keys gone stale later do not make the replica
    /// unready: the provider being down is every replica's problem, and HS256 tokens and
    /// public routes still work.
    pub(crate) fn ready(&self) -> bool {
        self.issuers.iter().all(|v| v.provider().loaded())
    }

    /// The bearer token of a request.
    fn bearer<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Duplicate);
        }
        if value.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let value = value
            .to_str()
            .map_err(|_| AuthError::Malformed("not ASCII"))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Scheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Scheme);
        }
        let token = token.trim();
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        Ok(token)
    }

    /// A token verified before: only the time-dependent checks can change their verdict.
    fn cached(&self, token: &str) -> Option<Result<Arc<Identity>, AuthError>> {
        let v = self.cache.get(token)?;
        if v.withdrawn
            .as_ref()
            .is_some_and(|w| w.load(std::sync::atomic::Ordering::Acquire))
        {
            // The issuer withdrew the key that verified it: verifying again refuses it.
            return None;
        }
        if let Some(i) = v.issuer {
            // Keys too stale to trust: not a hit; verifying again refuses the token.
            if !self.issuers[i].provider().keys_usable() {
                return None;
            }
        }
        let now = unix_now() as f64;
        let leeway = self.leeway as f64;
        Some(if v.exp < now - leeway {
            Err(AuthError::Expired)
        } else if v.nbf.is_some_and(|nbf| nbf > now + leeway) {
            Err(AuthError::NotYetValid)
        } else {
            Ok(v.identity)
        })
    }

    /// Verifies one compact JWS token (from the cache when it was verified before).
    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        if let Some(hit) = self.cached(token) {
            return hit;
        }
        if !self.hs256 {
            // No secret: only tokens of a configured issuer are accepted.
            return Err(AuthError::Issuer);
        }
        let verified = self.verify_uncached(token)?;
        let identity = verified.identity.clone();
        self.cache.put(token, verified);
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "a token has three dot-separated parts",
            ));
        };
        // Read `alg` ourselves first: `none`, HS512 or RS256 must say "wrong algorithm", and
        // must never reach a verifier that might accept them.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        #[derive(Deserialize)]
        struct AlgOnly {
            alg: Option<serde_json::Value>,
            crit: Option<serde_json::Value>,
        }
        let alg: AlgOnly = serde_json::from_slice(&header)
            .map_err(|_| AuthError::Malformed("header is not JSON"))?;
        if alg.alg.as_ref().and_then(|a| a.as_str()) != Some("HS256") {
            return Err(AuthError::Algorithm);
        }
        if alg.crit.is_some() {
            return Err(AuthError::Critical);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refine(map_jwt_error(e), token))?;
        let claims = data.claims;
        if let Some(iat) = claims.iat {
            let iat = iat
                .as_f64()
                .ok_or_else(|| AuthError::ClaimFormat("iat".into()))?;
            if iat > (unix_now() + self.leeway) as f64 {
                return Err(AuthError::NotYetValid);
            }
        }
        if claims.sub.is_empty() {
            return Err(AuthError::MissingClaim("sub".into()));
        }
        if !claims::sendable(&claims.sub) {
            // It becomes `X-User-Id`: a value that cannot be a header is the token's fault.
            return Err(AuthError::InvalidClaim("sub".into()));
        }
        let exp = claims
            .exp
            .as_ref()
            .and_then(|v| v.as_f64())
            .ok_or_else(|| AuthError::ClaimFormat("exp".into()))?;
        let (roles, forwarded, limit_claims, scopes) = if self.claims.is_plain() {
            (claims.roles, Box::default(), Box::default(), Vec::new())
        } else {
            // Verified already: reading the payload again is only a parse, once per token.
            let all = error::payload(token).unwrap_or(serde_json::Value::Null);
            (
                self.claims.roles(&all),
                self.claims.forwarded(&all)?,
                self.claims.limit_values(&all),
                self.claims.scopes(&all),
            )
        };
        Ok(Verified {
            identity: Arc::new(Identity {
                sub: claims.sub,
                roles,
                forwarded,
                limit_claims,
                scopes,
            }),
            exp,
            nbf: claims.nbf.as_ref().and_then(|v| v.as_f64()),
            issuer: None,
            withdrawn: None,
        })
    }
}

#[derive(Serialize)]
struct IssueClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
}

/// Signs an HS256 token for `sub` valid for `ttl` (the `gateway token` command).
pub fn issue_token(
    secret: &[u8],
    sub: &str,
    ttl: Duration,
    roles: &[String],
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let claims = IssueClaims {
        sub,
        iat: now,
        exp: now + ttl.as_secs(),
        roles,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Creates authentication's series at 0: failures by reason, and each issuer's key set.
pub(crate) fn prime(config: &AuthConfig) {
    for reason in AuthError::REASONS {
        crate::metrics::AUTH_FAILURES.with_label_values(&[reason]);
    }
    // A route's `require` refused a verified token (`edge::require`).
    crate::metrics::AUTH_FAILURES.with_label_values(&["insufficient_scope"]);
    for issuer in &config.issuers {
        provider::prime(issuer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret";

    fn auth() -> Authenticator {
        auth_with(None, None, 0)
    }

    fn auth_with(issuer: Option<&str>, audience: Option<&str>, leeway: u64) -> Authenticator {
        let cfg = AuthConfig {
            secret: SECRET.to_vec(),
            leeway_seconds: leeway,
            public_paths: vec![],
            issuer: issuer.map(String::from),
            audience: audience.map(String::from),
            forward_authorization: true,
            issuers: vec![],
            roles_claim: vec!["roles".into()],
            forward_claims: vec![],
            realm: "gateway".into(),
            api_keys: None,
        };
        Authenticator::new(&cfg, 8192, &[], vec![], false)
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let a = auth_with(Some("https://idp.example"), Some("gateway"), 0);
        let hs = |c: serde_json::Value| sign(Algorithm::HS256, c, SECRET);
        let exp = now() + 60;
        let good = hs(
            serde_json::json!({"sub":"1","exp":exp,"iss":"https://idp.example","aud":"gateway"}),
        );
        assert!(a.verify(&good).is_ok());
        for (bad, why) in [
            (
                serde_json::json!({"sub":"1","exp":exp,"iss":"https://evil.example","aud":"gateway"}),
                AuthError::Issuer,
            ),
            (
                serde_json::json!({"sub":"1","exp":exp,"iss":"https://idp.example","aud":"other"}),
                AuthError::Audience,
            ),
        ] {
            assert_eq!(a.verify(&hs(bad.clone())).err(), Some(why), "{bad}");
        }
        // Configured claims are required, not only compared when present.
        let no_aud = hs(serde_json::json!({"sub":"1","exp":exp,"iss":"https://idp.example"}));
        assert_eq!(a.verify(&no_aud).err(), Some(AuthError::Audience));
        let no_iss = hs(serde_json::json!({"sub":"1","exp":exp,"aud":"gateway"}));
        assert_eq!(a.verify(&no_iss).err(), Some(AuthError::Issuer));
        // Without configuration, neither claim matters.
        let any = hs(serde_json::json!({"sub":"1","exp":exp,"iss":"x","aud":"y"}));
        assert!(auth().verify(&any).is_ok());
    }

    #[test]
    fn leeway_stretches_exp_nbf_and_iat_by_its_seconds_and_no_more() {
        let a = auth_with(None, None, 30);
        let hs = |c: serde_json::Value| sign(Algorithm::HS256, c, SECRET);
        let t = now();
        let cases = [
            (serde_json::json!({"sub":"1","exp": t - 10}), None),
            (
                serde_json::json!({"sub":"1","exp": t - 60}),
                Some(AuthError::Expired),
            ),
            (
                serde_json::json!({"sub":"1","exp": t + 60, "nbf": t + 10}),
                None,
            ),
            (
                serde_json::json!({"sub":"1","exp": t + 90, "nbf": t + 60}),
                Some(AuthError::NotYetValid),
            ),
            (
                serde_json::json!({"sub":"1","exp": t + 60, "iat": t + 10}),
                None,
            ),
            (
                serde_json::json!({"sub":"1","exp": t + 90, "iat": t + 60}),
                Some(AuthError::NotYetValid),
            ),
            (
                serde_json::json!({"sub":"1","exp": t + 60, "iat": "soon"}),
                Some(AuthError::ClaimFormat("iat".into())),
            ),
        ];
        for (claims, want) in cases {
            let token = hs(claims.clone());
            assert_eq!(a.verify(&token).err(), want, "{claims}");
            assert_eq!(
                a.verify(&token).err(),
                want,
                "again, from the cache: {claims}"
            );
        }
        // Without leeway, 10 s past exp is expired.
        let late = hs(serde_json::json!({"sub":"1","exp": t - 10}));
        assert_eq!(auth().verify(&late).err(), Some(AuthError::Expired));
    }

    use crate::testing::{b64, sign};

    fn now() -> i64 {
        unix_now() as i64
    }

    #[test]
    fn valid_token_gives_identity_with_roles() {
        let roles = vec!["admin".to_string()];
        let t = issue_token(SECRET, "42", Duration::from_secs(60), &roles).unwrap_or_default();
        let a = auth();
        let want = Identity {
            sub: "42".into(),
            roles,
            forwarded: Box::default(),
            limit_claims: Box::default(),
            scopes: Vec::new(),
        };
        assert_eq!(a.verify(&t).as_deref(), Ok(&want));
        assert_eq!(a.verify(&t).as_deref(), Ok(&want), "again, from the cache");
    }

    #[test]
    fn rejects_each_kind_of_bad_token() {
        let a = auth();
        let hs = |c: serde_json::Value| sign(Algorithm::HS256, c, SECRET);
        let cases: Vec<(String, AuthError)> = vec![
            (
                hs(serde_json::json!({"sub":"1","exp": now() - 10})),
                AuthError::Expired,
            ),
            (
                hs(serde_json::json!({"sub":"1","exp": now() + 60, "nbf": now() + 600})),
                AuthError::NotYetValid,
            ),
            (
                hs(serde_json::json!({"sub":"a\r\nX-Admin: 1","exp": now() + 60})),
                AuthError::InvalidClaim("sub".into()),
            ),
            (
                hs(serde_json::json!({"sub":"1"})),
                AuthError::MissingClaim("exp".into()),
            ),
            (
                hs(serde_json::json!({"sub":"1","exp": "9999999999"})),
                AuthError::ClaimFormat("exp".into()),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"1","exp": now() + 60}),
                    b"wrong-secret",
                ),
                AuthError::Signature,
            ),
            (
                sign(
                    Algorithm::HS512,
                    serde_json::json!({"sub":"1","exp": now() + 60}),
                    SECRET,
                ),
                AuthError::Algorithm,
            ),
            (
                format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","typ":"JWT"}"#),
                    b64(format!(r#"{{"sub":"1","exp":{}}}"#, now() + 60).as_bytes())
                ),
                AuthError::Algorithm,
            ),
            (
                "a.b".into(),
                AuthError::Malformed("a token has three dot-separated parts"),
            ),
            (
                "%%%.b.c".into(),
                AuthError::Malformed("header is not base64url"),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(
                a.verify(&token).err(),
                Some(expected.clone()),
                "token {token}"
            );
            assert_eq!(a.verify(&token).err(), Some(expected), "twice: {token}");
        }
        let float_exp = hs(serde_json::json!({"sub":"1","exp": (now() + 60) as f64 + 0.5}));
        assert!(
            a.verify(&float_exp).is_ok(),
            "a float exp in the future is accepted"
        );
    }

    #[test]
    fn every_reason_is_primed() {
        let all = [
            AuthError::Missing,
            AuthError::Duplicate,
            AuthError::Scheme,
            AuthError::TooLarge,
            AuthError::Malformed("x"),
            AuthError::Algorithm,
            AuthError::Signature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::MissingClaim("exp".into()),
            AuthError::ClaimFormat("exp".into()),
            AuthError::Issuer,
            AuthError::Audience,
            AuthError::UnknownKid,
            AuthError::KeyWithdrawn,
            AuthError::TokenType("x"),
            AuthError::InvalidClaim("sub".into()),
            AuthError::Critical,
            AuthError::TwoCredentials,
            AuthError::InvalidApiKey,
            AuthError::InactiveToken,
            AuthError::NotAccepted("x"),
            AuthError::IntrospectionUnavailable {
                retry_after_secs: 1,
            },
            AuthError::KeysUnavailable {
                retry_after_secs: 1,
            },
            AuthError::KeyWaitFull {
                retry_after_secs: 1,
            },
        ];
        for e in all {
            assert!(AuthError::REASONS.contains(&e.reason()), "{}", e.reason());
        }
    }

    fn hv(s: String) -> http::HeaderValue {
        http::HeaderValue::from_str(&s).expect("test header value")
    }

    #[tokio::test]
    async fn header_rules() {
        let a = auth();
        let t = issue_token(SECRET, "7", Duration::from_secs(60), &[]).unwrap_or_default();
        let mut h = HeaderMap::new();
        assert_eq!(
            a.authenticate(&h, crate::config::Credentials::default(), None)
                .await
                .err(),
            Some(AuthError::Missing)
        );
        h.insert("authorization", hv(format!("bearer {t}")));
        assert!(
            a.authenticate(&h, crate::config::Credentials::default(), None)
                .await
                .is_ok(),
            "scheme is case-insensitive"
        );
        h.append("authorization", hv(format!("Bearer {t}")));
        assert_eq!(
            a.authenticate(&h, crate::config::Credentials::default(), None)
                .await
                .err(),
            Some(AuthError::Duplicate)
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", hv("Basic dXNlcjpwYXNz".into()));
        assert_eq!(
            a.authenticate(&h, crate::config::Credentials::default(), None)
                .await
                .err(),
            Some(AuthError::Scheme)
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", hv(format!("Bearer {}", "a".repeat(9000))));
        assert_eq!(
            a.authenticate(&h, crate::config::Credentials::default(), None)
                .await
                .err(),
            Some(AuthError::TooLarge)
        );
    }
}
