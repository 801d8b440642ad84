//! Header names the gateway sets or reads beyond the standard ones in [`http::header`], each
//! spelled once, and the 128-bit ids some of them carry. Written as they go on the wire; lookups
//! are case-insensitive.

/// Request id: kept from the client when well-formed, else generated; echoed on every answer
/// and sent to every upstream.
pub const X_REQUEST_ID: &str = "X-Request-Id";
/// The client chain for upstreams.
pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
/// The scheme the client used.
pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
/// The verified caller's `sub`, for upstreams; a client-sent one is always removed.
pub const X_USER_ID: &str = "X-User-Id";
/// [`X_USER_ID`] parsed once, for the per-request check that a client sent none.
pub static X_USER_ID_NAME: http::HeaderName = http::HeaderName::from_static("x-user-id");
/// How an aggregate answer relates to the cache (`HIT`, `MISS`, `BYPASS`, `STALE`,
/// `STALE-ERROR`).
pub const X_CACHE: &str = "X-Cache";
/// Seconds since a cached answer was built (RFC 9111).
pub const AGE: &str = "Age";
/// Requests per window (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_LIMIT: &str = "RateLimit-Limit";
/// Requests left in the window.
pub const RATELIMIT_REMAINING: &str = "RateLimit-Remaining";
/// Seconds until the window ends.
pub const RATELIMIT_RESET: &str = "RateLimit-Reset";
/// Every policy that counted the request (draft-06 quota policies, with a `name` parameter).
pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
/// Seconds to wait before retrying (on 429).
pub const RETRY_AFTER: &str = "Retry-After";
/// The challenge on 401 (RFC 6750).
pub const WWW_AUTHENTICATE: &str = "WWW-Authenticate";
/// The methods a route accepts (on 405).
pub const ALLOW: &str = "Allow";

/// A 128-bit id (request id, trace id) as the 32 lower-case hex digits headers and logs carry.
/// Written into a stack buffer (`hex::encode` collects `char` by `char`: half again as many
/// instructions, on every request; `const_hex` writes 16 bytes with SIMD where it can).
pub fn hex_id(id: [u8; 16]) -> String {
    let mut buf = [0u8; 32];
    // The buffer is exactly twice the id's length: the write cannot fail.
    let _ = const_hex::encode_to_slice(id, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
