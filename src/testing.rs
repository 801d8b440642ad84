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

/// The demo profile aggregate (as conf/gateway.yaml declares it) as a list under `aggregates:`.
pub const PROFILE_AGGREGATE: &str = r#"
- name: profile
  path: "/api/profile/{id}"
  methods: [GET]
  deadline_ms: 10000
  authorize: { param: id, claim: sub, bypass_roles: [admin], me: true }
  cache: { ttl_seconds: 30, key: "profile:{id}" }
  legs:
    user:            { service: user,  path: "/users/{id}", required: true, expect: object }
    orders:          { service: order, path: "/orders/user/{user.id}", default: [], expect: array }
    products:        { service: product, path: "/products", after: [user], default: [], expect: array }
    recommendations: { service: recommendation, path: "/recommendations/{id}", after: [user],
                       default: [], expect: array }
  response: { user: user, orders: orders, products: products, recommendations: recommendations }
"#;

/// The demo's four services on the mocks' ports (`<NAME>_SERVICE_URL` moves them), as the
/// flow-style value of `services:`.
pub const DEMO_SERVICES: &str = "{user: {url: 'http://127.0.0.1:8081'}, \
     order: {url: 'http://127.0.0.1:8082'}, product: {url: 'http://127.0.0.1:8083'}, \
     recommendation: {url: 'http://127.0.0.1:8084'}}";

/// The demo's services and the profile aggregate over them, as keys of a `gateway:` section
/// in flow style.
pub fn profile_section() -> String {
    let aggregate: serde_yaml::Value =
        serde_yaml::from_str(PROFILE_AGGREGATE).unwrap_or(serde_yaml::Value::Null);
    let aggregates = serde_json::to_string(&aggregate).unwrap_or_default();
    format!("services: {DEMO_SERVICES}, aggregates: {aggregates}")
}
