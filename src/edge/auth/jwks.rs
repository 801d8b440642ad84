//! Key sets published by identity providers (JWKS, RFC 7517): parsing one, and choosing the key
//! for a token with the checks that stop key-confusion attacks: the token's `alg` must agree
//! with the key's type and curve (and with the key's own `alg` when it has one); `none` and the
//! HMAC algorithms are never accepted with a published key.
//!
//! Each key carries a withdrawal flag shared by every set that publishes the same key: when a
//! fetched set no longer holds a key, its flag is raised, and tokens verified with it earlier
//! (remembered by the token cache) stop being accepted at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// What a key can verify, from its type and curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn of(jwk: &Jwk) -> Option<Family> {
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Family::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Family::P256),
                EllipticCurve::P384 => Some(Family::P384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(okp) => {
                (okp.curve == EllipticCurve::Ed25519).then_some(Family::Ed25519)
            }
            // A symmetric key in a public set is never used (that is the HS/RS confusion), nor
            // is a key type this version does not know.
            _ => None,
        }
    }

    /// Whether a token signed with `alg` can be verified by a key of this family.
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Family::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Family::P256, ES256)
                | (Family::P384, ES384)
                | (Family::Ed25519, EdDSA)
        )
    }
}

/// One usable key of a set.
struct SetKey {
    kid: Option<String>,
    /// The key's own `alg`, when it declares one.
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
    /// The `kid` and public parameters: the same key in two fetches has the same print.
    print: String,
    /// Raised once a later set no longer publishes this key.
    withdrawn: Arc<AtomicBool>,
}

/// A parsed key set: only the keys usable for signatures.
pub(crate) struct KeySet {
    keys: Vec<SetKey>,
    /// `kid`s earlier sets published and this one does not (a token naming one is refused
    /// at once instead of waiting for another fetch).
    withdrawn_kids: HashSet<String>,
}

/// The key chosen for a token, with the flag a later withdrawal raises.
pub(crate) struct Chosen<'s> {
    /// The key to verify with.
    pub(crate) key: &'s DecodingKey,
    /// Raised when the issuer stops publishing this key.
    pub(crate) withdrawn: &'s Arc<AtomicBool>,
}

/// How many withdrawn `kid`s are remembered.
const WITHDRAWN_KIDS: usize = 64;

/// Why no key was chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// No key has the token's `kid` (a refresh may find it).
    UnknownKid,
    /// The token has no `kid` and the set does not hold exactly one key for its `alg`.
    Ambiguous,
    /// The key with that `kid` cannot verify the token's `alg` (type, curve or its own `alg`).
    Mismatch,
    /// The `kid` was published and has been withdrawn.
    Withdrawn,
}

impl KeySet {
    /// Parses a JWKS document. Keys for encryption, of unknown types or that do not parse are
    /// skipped (one odd key does not cost the others); a set with no usable key is an error
    /// (it never replaces a good one).
    pub(crate) fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for mut raw in doc.keys {
            // RFC 9864 names the Ed25519 algorithm; jsonwebtoken knows it as EdDSA.
            if raw.get("alg").and_then(|a| a.as_str()) == Some("Ed25519") {
                raw["alg"] = "EdDSA".into();
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(family) = Family::of(&jwk) else {
                continue;
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match a.to_string().parse::<Algorithm>() {
                    Ok(alg) if family.verifies(alg) => Some(alg),
                    // A key that names an algorithm it cannot verify is broken: skipped.
                    _ => continue,
                },
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let print = format!(
                "{}|{}",
                jwk.common.key_id.as_deref().unwrap_or_default(),
                serde_json::to_string(&jwk.algorithm).unwrap_or_default()
            );
            keys.push(SetKey {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key,
                print,
                withdrawn: Arc::new(AtomicBool::new(false)),
            });
        }
        if keys.is_empty() {
            return Err("the key set holds no usable signing key".into());
        }
        Ok(KeySet {
            keys,
            withdrawn_kids: HashSet::new(),
        })
    }

    /// Takes over from `previous`: a key both publish keeps its flag (tokens verified with it
    /// stay cached); a key only `previous` published is flagged withdrawn. Returns how many
    /// keys were withdrawn.
    pub(crate) fn succeed(&mut self, previous: &KeySet) -> usize {
        let mut withdrawn = 0;
        for old in &previous.keys {
            match self.keys.iter_mut().find(|k| k.print == old.print) {
                Some(same) => same.withdrawn = old.withdrawn.clone(),
                None => {
                    old.withdrawn.store(true, Ordering::Release);
                    withdrawn += 1;
                    if let Some(kid) = &old.kid {
                        self.withdrawn_kids.insert(kid.clone());
                    }
                }
            }
        }
        for kid in &previous.withdrawn_kids {
            if self.withdrawn_kids.len() >= WITHDRAWN_KIDS {
                break;
            }
            self.withdrawn_kids.insert(kid.clone());
        }
        // A kid published again is not withdrawn.
        let published: HashSet<&str> = self.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        self.withdrawn_kids
            .retain(|k| !published.contains(k.as_str()));
        withdrawn
    }

    /// How many usable keys the set holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token with this `kid` and `alg`.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Chosen<'_>, NoKey> {
        let usable = |k: &&SetKey| k.family.verifies(alg) && k.alg.is_none_or(|a| a == alg);
        fn chosen(k: &SetKey) -> Chosen<'_> {
            Chosen {
                key: &k.key,
                withdrawn: &k.withdrawn,
            }
        }
        match kid {
            Some(kid) => {
                let mut with_kid = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(first) = with_kid.next() else {
                    return Err(if self.withdrawn_kids.contains(kid) {
                        NoKey::Withdrawn
                    } else {
                        NoKey::UnknownKid
                    });
                };
                std::iter::once(first)
                    .chain(with_kid)
                    .find(usable)
                    .map(chosen)
                    .ok_or(NoKey::Mismatch)
            }
            None => {
                let mut candidates = self.keys.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Ok(chosen(k)),
                    _ => Err(NoKey::Ambiguous),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Public halves of test keys (RFC 7517 appendix A.1's RSA key and EC P-256 key, RFC 8037's
    // Ed25519 key): parsing and choosing only, nothing is signed here.
    fn set() -> serde_json::Value {
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
             "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}
        ]})
    }

    fn parsed() -> KeySet {
        KeySet::parse(set().to_string().as_bytes()).unwrap()
    }

    #[test]
    fn only_signing_keys_of_known_families_are_kept() {
        assert_eq!(parsed().len(), 3, "oct and enc keys dropped");
        assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::parse(b"<html>").is_err());
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn the_token_alg_must_agree_with_the_key() {
        let s = parsed();
        assert!(s.select(Some("ec-1"), Algorithm::ES256).is_ok());
        assert!(s.select(Some("rsa-1"), Algorithm::RS256).is_ok());
        assert!(s.select(Some("ed-1"), Algorithm::EdDSA).is_ok());
        // RS → HS confusion, wrong curve, a key pinned to RS256 asked for PS256.
        assert_eq!(
            s.select(Some("rsa-1"), Algorithm::HS256).err(),
            Some(NoKey::Mismatch)
        );
        assert_eq!(
            s.select(Some("ec-1"), Algorithm::ES384).err(),
            Some(NoKey::Mismatch)
        );
        assert_eq!(
            s.select(Some("rsa-1"), Algorithm::PS256).err(),
            Some(NoKey::Mismatch)
        );
        assert_eq!(
            s.select(Some("hmac"), Algorithm::HS256).err(),
            Some(NoKey::UnknownKid)
        );
        assert_eq!(
            s.select(Some("nope"), Algorithm::RS256).err(),
            Some(NoKey::UnknownKid)
        );
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_usable_key() {
        let s = parsed();
        assert!(s.select(None, Algorithm::ES256).is_ok(), "one EC key");
        assert!(s.select(None, Algorithm::EdDSA).is_ok());
        let mut two = set();
        two["keys"].as_array_mut().unwrap().push(json!(
            {"kty": "EC", "crv": "P-256", "kid": "ec-2",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}));
        let s = KeySet::parse(two.to_string().as_bytes()).unwrap();
        assert_eq!(
            s.select(None, Algorithm::ES256).err(),
            Some(NoKey::Ambiguous)
        );
    }
}
