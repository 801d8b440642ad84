//! The caller, as a verified token proves them.

/// Who the caller is, as proven by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub sub: String,
    /// The roles at `auth.roles_claim` (empty when absent).
    pub roles: Vec<String>,
    /// The `auth.forward_claims` values in conf order; `None` where the token has none.
    pub forwarded: Box<[Option<http::HeaderValue>]>,
    /// The values of the claims rate-limit policies count by (`claim:` keys, in the order of
    /// `Limits::claim_paths`); `None` where the token has none.
    pub limit_claims: Box<[Option<String>]>,
}

impl Identity {
    /// Whether the caller has role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}
