//! Why a request was not authenticated, and how `jsonwebtoken`'s errors map onto that.

use base64::Engine;

/// Why a request was not authenticated; the text never contains the token or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header.
    #[error("missing bearer token")]
    Missing,
    /// More than one Authorization (or API key) header: ambiguous, so refused.
    #[error("more than one Authorization or API key header")]
    Duplicate,
    /// Both a token and an API key: they may name two callers, so neither is used.
    #[error("send either a bearer token or an API key, not both")]
    TwoCredentials,
    /// The issuer's introspection endpoint says the opaque token is not active (or it is
    /// outside its validity window, or for another issuer or audience).
    #[error("token not active")]
    InactiveToken,
    /// The introspection endpoint could not be asked (503: the client did nothing wrong).
    #[error("the issuer's introspection endpoint is not available; retry in {retry_after_secs} s")]
    IntrospectionUnavailable {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// The route does not take this kind of credential (`credentials:`).
    #[error("this route does not accept {0} (see its credentials)")]
    NotAccepted(&'static str),
    /// An API key the gateway does not know (or no longer accepts).
    #[error("API key not accepted")]
    InvalidApiKey,
    /// A scheme other than Bearer.
    #[error("the Authorization scheme must be Bearer")]
    Scheme,
    /// Over the size cap; not decoded at all.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url segments of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm not accepted for this token's issuer (or for the
    /// shared secret, HS256 only), or one that does not fit the key.
    #[error("token algorithm not accepted")]
    Algorithm,
    /// The signature does not match the secret.
    #[error("invalid token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// A required claim is absent.
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(String),
    /// A claim has the wrong type.
    #[error("token claim `{0}` has an invalid format")]
    ClaimFormat(String),
    /// `iss` is not a configured issuer (or absent where one is required).
    #[error("token issuer not accepted")]
    Issuer,
    /// `aud` holds none of the configured audiences (or is absent where one is required).
    #[error("token audience not accepted")]
    Audience,
    /// The issuer's key set has no key with the token's `kid`, even after a refresh.
    #[error("token signed with a key the issuer does not publish")]
    UnknownKid,
    /// The token's key was published and has been withdrawn by the issuer.
    #[error("token signed with a key the issuer has withdrawn")]
    KeyWithdrawn,
    /// The `typ` is not an accepted token type, or the token is an ID token.
    #[error("{0}")]
    TokenType(&'static str),
    /// A claim that would be forwarded holds characters a header cannot carry.
    #[error("token claim `{0}` holds control characters")]
    InvalidClaim(String),
    /// The header lists a critical extension (`crit`) this gateway does not implement.
    #[error("token header names critical parameters this gateway does not implement")]
    Critical,
    /// No usable key set for the token's issuer: the token cannot be checked (503, the
    /// client did nothing wrong).
    #[error("the issuer's keys are not available; retry in {retry_after_secs} s")]
    KeysUnavailable {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Too many requests already wait for the issuer's next key fetch (503).
    #[error("too many requests wait for the issuer's new keys; retry in {retry_after_secs} s")]
    KeyWaitFull {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
}

impl AuthError {
    /// Every value [`AuthError::reason`] can return.
    pub const REASONS: [&'static str; 25] = [
        "missing",
        "duplicate_header",
        "scheme",
        "too_large",
        "malformed",
        "algorithm",
        "signature",
        "expired",
        "not_yet_valid",
        "missing_claim",
        "claim_format",
        "issuer",
        "audience",
        "unknown_kid",
        "key_withdrawn",
        "token_type",
        "invalid_claim",
        "crit",
        "keys_unavailable",
        "key_wait_full",
        "two_credentials",
        "invalid_api_key",
        "inactive_token",
        "introspection_unavailable",
        "credential_not_accepted",
    ];

    /// Bounded label for `auth_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Duplicate => "duplicate_header",
            AuthError::Scheme => "scheme",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::ClaimFormat(_) => "claim_format",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::KeyWithdrawn => "key_withdrawn",
            AuthError::TokenType(_) => "token_type",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::Critical => "crit",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::KeyWaitFull { .. } => "key_wait_full",
            AuthError::TwoCredentials => "two_credentials",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::InactiveToken => "inactive_token",
            AuthError::NotAccepted(_) => "credential_not_accepted",
            AuthError::IntrospectionUnavailable { .. } => "introspection_unavailable",
        }
    }

    /// Seconds to wait before asking again when the token could not be checked at all (the
    /// gateway's state, not the token, is at fault: 503); `None` for a refused token.
    pub fn unavailable(&self) -> Option<u64> {
        match self {
            AuthError::KeysUnavailable { retry_after_secs }
            | AuthError::KeyWaitFull { retry_after_secs }
            | AuthError::IntrospectionUnavailable { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Whether a token was presented (RFC 6750 then asks for `error="invalid_token"`).
    pub fn token_given(&self) -> bool {
        !matches!(
            self,
            AuthError::Missing | AuthError::Scheme | AuthError::InvalidApiKey
        )
    }
}

pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::Signature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            AuthError::Algorithm
        }
        // A required `iss`/`aud` left out is the same refusal as a wrong one.
        K::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
        K::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
        K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        K::InvalidClaimFormat(c) => AuthError::ClaimFormat(c.clone()),
        K::InvalidIssuer | K::InvalidSubject => AuthError::Issuer,
        K::InvalidAudience => AuthError::Audience,
        K::Base64(_) => AuthError::Malformed("segment is not base64url"),
        // A claim the gateway needs (`sub`) left out is named, as a required one is above.
        K::Json(e) => match missing_field(&e.to_string()) {
            Some(field) => AuthError::MissingClaim(field),
            None => AuthError::Malformed("claims are not a JSON object of the expected types"),
        },
        K::Utf8(_) => AuthError::Malformed("segment is not UTF-8"),
        _ => AuthError::Malformed("invalid token"),
    }
}

/// `jsonwebtoken` reports a claim of the wrong type (`"exp":"123"`) as missing; say what it is.
/// The field serde names in "missing field `sub` at line …".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string()).filter(|f| !f.is_empty())
}

pub(super) fn refine(err: AuthError, token: &str) -> AuthError {
    let AuthError::MissingClaim(name) = &err else {
        return err;
    };
    let present = payload(token).is_some_and(|v| v.get(name.as_str()).is_some());
    if present {
        AuthError::ClaimFormat(name.clone())
    } else {
        err
    }
}

/// A token's payload as JSON, unverified (`None` when it is not base64url JSON).
pub(super) fn payload(token: &str) -> Option<serde_json::Value> {
    let segment = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
