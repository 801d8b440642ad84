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
    /// The values of the claims rate-limit policies count by and route header rules read (in
    /// the order of `edge::claim_paths`); `None` where the token has none.
    pub limit_claims: Box<[Option<String>]>,
    /// The scopes granted: `scope` split on spaces, or the `scp` array (read only when a route
    /// requires scopes).
    pub scopes: Vec<String>,
}

impl Identity {
    /// Whether the caller has role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the caller was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
