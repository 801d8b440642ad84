//! Token minting for the unit and integration tests alike: any algorithm, any claims, so that
//! tests can build the malformed and hostile tokens the gateway must refuse. Built only for
//! tests (the `testing` feature, which the integration tests turn on): never in a release.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Unpadded base64url, as JWT segments are written.
pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A compact JWS of `claims` signed with `alg` and an HMAC `secret` (empty on failure, which
/// the gateway refuses like any malformed token).
pub fn sign(alg: Algorithm, claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}
