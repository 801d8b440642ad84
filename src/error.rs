//! Every error the gateway answers by itself, mapped to a status code and a JSON body in one place.

use std::borrow::Cow;

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;

use crate::headers;

/// The realm of the `WWW-Authenticate` challenges, from `auth.realm` (set by each snapshot).
static REALM: LazyLock<ArcSwap<String>> =
    LazyLock::new(|| ArcSwap::from_pointee("gateway".to_string()));

/// Sets the realm challenges name (`auth.realm`).
pub(crate) fn set_realm(realm: &str) {
    if **REALM.load() != realm {
        REALM.store(Arc::new(realm.to_string()));
    }
}

/// An answer the gateway gives on its own instead of (or after failing) proxying.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (bad id, bad header, bad framing).
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// No or invalid credentials; the text says what was wrong, never the token.
    #[error("{message}")]
    Unauthorized {
        /// Human-readable reason.
        message: Cow<'static, str>,
        /// Whether a token was presented (adds `error="invalid_token"`, RFC 6750).
        token_given: bool,
    },
    /// Authenticated, but not allowed to see this resource.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// No route, or the resource does not exist.
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The route exists but not for this method.
    #[error("{message}")]
    MethodNotAllowed {
        /// Human-readable reason.
        message: Cow<'static, str>,
        /// The methods that are (the `Allow` value).
        allow: Cow<'static, str>,
    },
    /// A valid token without the scopes or roles the route requires.
    #[error("{message}")]
    InsufficientScope {
        /// What is missing.
        message: Cow<'static, str>,
        /// The scopes the route requires, space-separated (empty: roles only).
        scope: Cow<'static, str>,
    },
    /// Over a rate-limit policy.
    #[error("rate limit exceeded (policy `{policy}`), retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request may be admitted again (the `Retry-After` value).
        retry_after_secs: u64,
        /// The policy that refused.
        policy: std::sync::Arc<str>,
    },
    /// The client did not send its request body in time.
    #[error("{0}")]
    RequestTimeout(Cow<'static, str>),
    /// The request body is over `max_request_body_bytes`.
    #[error("{0}")]
    PayloadTooLarge(Cow<'static, str>),
    /// Request headers over the configured caps.
    #[error("{0}")]
    HeadersTooLarge(Cow<'static, str>),
    /// The upstream failed or answered something unusable.
    #[error("{0}")]
    BadGateway(Cow<'static, str>),
    /// No healthy backend, or a dependency's breaker is open.
    #[error("{0}")]
    Unavailable(Cow<'static, str>),
    /// The upstream did not answer in time.
    #[error("{0}")]
    Timeout(Cow<'static, str>),
    /// A credential could not be checked at all (the issuer's keys or its introspection
    /// endpoint are out of reach): the client did nothing wrong and may retry.
    #[error("{message}")]
    AuthUnavailable {
        /// Stable code (`keys_unavailable`, ...).
        code: &'static str,
        /// Human-readable reason.
        message: Cow<'static, str>,
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// A bug or an impossible state; details go to the log, not to the client.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::Unauthorized { .. } => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::InsufficientScope { .. } => 403,
            GatewayError::RequestTimeout(_) => 408,
            GatewayError::PayloadTooLarge(_) => 413,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::HeadersTooLarge(_) => 431,
            GatewayError::Internal => 500,
            GatewayError::BadGateway(_) => 502,
            GatewayError::Unavailable(_) | GatewayError::AuthUnavailable { .. } => 503,
            GatewayError::Timeout(_) => 504,
        }
    }

    /// Stable machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unauthorized { .. } => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::InsufficientScope { .. } => "insufficient_scope",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::PayloadTooLarge(_) => "payload_too_large",
            GatewayError::HeadersTooLarge(_) => "headers_too_large",
            GatewayError::Internal => "internal",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::Unavailable(_) => "service_unavailable",
            GatewayError::Timeout(_) => "upstream_timeout",
            GatewayError::AuthUnavailable { code, .. } => code,
        }
    }

    /// Headers that belong to this kind of answer.
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::Unauthorized { token_given, .. } => {
                let realm = REALM.load();
                let v = if *token_given {
                    format!(r#"Bearer realm="{realm}", error="invalid_token""#)
                } else {
                    format!(r#"Bearer realm="{realm}""#)
                };
                vec![(headers::WWW_AUTHENTICATE, v)]
            }
            GatewayError::RateLimited {
                retry_after_secs, ..
            }
            | GatewayError::AuthUnavailable {
                retry_after_secs, ..
            } => {
                vec![(headers::RETRY_AFTER, retry_after_secs.to_string())]
            }
            GatewayError::MethodNotAllowed { allow, .. } => {
                vec![(headers::ALLOW, allow.to_string())]
            }
            GatewayError::InsufficientScope { scope, .. } => {
                let mut v = format!(
                    r#"Bearer realm="{}", error="insufficient_scope""#,
                    REALM.load()
                );
                if !scope.is_empty() {
                    v.push_str(&format!(r#", scope="{scope}""#));
                }
                vec![(headers::WWW_AUTHENTICATE, v)]
            }
            _ => Vec::new(),
        }
    }

    /// The JSON body: `{"error":"<code>","message":"<text>"}`.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        body.to_string().into_bytes()
    }
}

/// `e` and every error under it, joined by ": " (an HTTP client's "error sending request"
/// says why only in its sources: a refused connection, an untrusted certificate).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_code_and_message() {
        let e = GatewayError::NotFound("no route for this path".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"], "not_found");
        assert_eq!(v["message"], "no route for this path");
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn auth_and_limit_errors_carry_their_headers() {
        let e = GatewayError::Unauthorized {
            message: "expired".into(),
            token_given: true,
        };
        assert_eq!(
            e.extra_headers(),
            vec![(
                "WWW-Authenticate",
                r#"Bearer realm="gateway", error="invalid_token""#.to_string()
            )]
        );
        let e = GatewayError::RateLimited {
            retry_after_secs: 7,
            policy: "default".into(),
        };
        assert!(e.to_string().contains("policy `default`"), "{e}");
        assert_eq!(e.extra_headers(), vec![("Retry-After", "7".to_string())]);
        assert_eq!(e.status(), 429);
    }

    #[test]
    fn an_error_chain_names_the_cause_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = std::io::Error::other(inner);
        assert_eq!(chain(&outer), "invalid peer certificate: UnknownIssuer");
        #[derive(Debug)]
        struct Sending(std::io::Error);
        impl std::fmt::Display for Sending {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Sending {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Sending(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "error sending request: connection refused");
    }
}
