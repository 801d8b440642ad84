//! API keys: a machine client sends its key in a header (`X-Api-Key` by default); the gateway
//! keeps only each key's SHA-256 and the identity it stands for.
//!
//! The presented key is hashed and looked up by digest; the digest found is then compared
//! again in constant time. What the lookup's ordinary comparison could leak through timing is
//! about the digest of the attacker's own guess, which says nothing about any stored key.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::claims::ClaimReader;
use super::error::AuthError;
use super::identity::Identity;
use crate::config::ApiKeysConfig;

/// The accepted keys, by digest.
pub(super) struct ApiKeys {
    header: HeaderName,
    by_digest: HashMap<[u8; 32], Arc<Identity>>,
}

impl ApiKeys {
    /// The keys of `config`, each with its identity read as a token's claims would be (so
    /// `forward_claims` and claim-keyed limits see `sub` and `scope` alike).
    pub(super) fn new(config: &ApiKeysConfig, claims: &ClaimReader) -> ApiKeys {
        let by_digest = config
            .keys
            .iter()
            .map(|k| {
                let as_claims = serde_json::json!({
                    "sub": k.sub,
                    "client_id": k.sub,
                    "roles": k.roles,
                    "scope": k.scopes.join(" "),
                });
                let identity = Identity {
                    sub: k.sub.clone(),
                    roles: k.roles.clone(),
                    forwarded: claims.forwarded(&as_claims).unwrap_or_default(),
                    limit_claims: claims.limit_values(&as_claims),
                    scopes: k.scopes.clone(),
                };
                (k.digest, Arc::new(identity))
            })
            .collect();
        ApiKeys {
            header: config.header.clone(),
            by_digest,
        }
    }

    /// The header that carries keys.
    pub(super) fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The identity of the key in `headers`, `None` when the request carries no key.
    pub(super) fn identify(&self, headers: &HeaderMap) -> Option<Result<Arc<Identity>, AuthError>> {
        let mut values = headers.get_all(&self.header).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return Some(Err(AuthError::Duplicate));
        }
        if headers.contains_key(http::header::AUTHORIZATION) {
            // Two credentials that may name two callers: neither is guessed at.
            return Some(Err(AuthError::TwoCredentials));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
        let found = self.by_digest.get_key_value(digest.as_ref());
        Some(match found {
            Some((stored, who))
                if aws_lc_rs::constant_time::verify_slices_are_equal(stored, digest.as_ref())
                    .is_ok() =>
            {
                Ok(who.clone())
            }
            _ => Err(AuthError::InvalidApiKey),
        })
    }
}

/// A new random key and its SHA-256 in hex (the `gateway apikey` command).
pub fn new_api_key() -> (String, String) {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "gw_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    (key, const_hex::encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn keys() -> (ApiKeys, String) {
        let (key, hex) = new_api_key();
        let mut digest = [0u8; 32];
        const_hex::decode_to_slice(&hex, &mut digest).unwrap();
        let config = ApiKeysConfig {
            header: HeaderName::from_static("x-api-key"),
            file: "keys.yaml".into(),
            keys: vec![ApiKey {
                digest,
                sub: "svc-a".into(),
                roles: vec!["reader".into()],
                scopes: vec!["api".into(), "read".into()],
            }],
        };
        let claims = ClaimReader::new(vec!["roles".into()], vec![], vec![vec!["sub".into()]], true);
        (ApiKeys::new(&config, &claims), key)
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_known_key_is_its_identity_and_anything_else_is_refused() {
        let (k, key) = keys();
        let who = k.identify(&with(&[("x-api-key", &key)])).unwrap().unwrap();
        assert_eq!(who.sub, "svc-a");
        assert!(who.has_role("reader") && who.has_scope("read"));
        assert_eq!(&*who.limit_claims, &[Some("svc-a".to_string())]);
        assert!(
            k.identify(&HeaderMap::new()).is_none(),
            "no key: not this method"
        );
        let wrong = format!("{key}x");
        for (h, want) in [
            (with(&[("x-api-key", &wrong)]), AuthError::InvalidApiKey),
            (with(&[("x-api-key", "")]), AuthError::InvalidApiKey),
            (
                with(&[("x-api-key", &key), ("x-api-key", &key)]),
                AuthError::Duplicate,
            ),
            (
                with(&[("x-api-key", &key), ("authorization", "Bearer x")]),
                AuthError::TwoCredentials,
            ),
        ] {
            assert_eq!(k.identify(&h).unwrap().err(), Some(want));
        }
    }

    #[test]
    fn new_keys_are_random_and_their_digest_is_the_sha256_of_the_text() {
        let (a, ha) = new_api_key();
        let (b, _) = new_api_key();
        assert_ne!(a, b);
        assert!(a.starts_with("gw_") && a.len() == 46, "{a}");
        // The digest of "gw_" + the key text, checked against OpenSSL's.
        let want = openssl::sha::sha256(a.as_bytes());
        assert_eq!(ha, const_hex::encode(want));
    }
}
