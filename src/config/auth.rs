//! `gateway.auth`: the HS256 secret, leeway, public paths, the claims read and forwarded;
//! identity providers are `issuers`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::apikeys::{ApiKeysConfig, ApiKeysFile};
use super::check::{invalid, ConfigError, Env, LoadMode};
use super::issuers::{claim_path, resolve_issuers, IssuerConfig, IssuerFile};

/// A claim's place as written: a dotted path, or a list taken literally (each item one key,
/// dots and all).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimPathFile {
    /// `realm_access.roles`, split on dots (a URL is one name).
    Dotted(String),
    /// `["https://example.com/roles"]`: no splitting.
    Literal(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthFile {
    pub(super) leeway_seconds: u64,
    pub(super) public_paths: Vec<String>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) forward_authorization: bool,
    pub(super) issuers: Vec<IssuerFile>,
    pub(super) roles_claim: ClaimPathFile,
    pub(super) forward_claims: BTreeMap<String, String>,
    pub(super) realm: String,
    pub(super) api_keys: Option<ApiKeysFile>,
}

impl Default for AuthFile {
    fn default() -> Self {
        AuthFile {
            leeway_seconds: 0,
            public_paths: vec!["/healthz".into(), "/readyz".into()],
            issuer: None,
            audience: None,
            forward_authorization: true,
            issuers: Vec::new(),
            roles_claim: ClaimPathFile::Dotted("roles".into()),
            forward_claims: BTreeMap::new(),
            realm: "gateway".into(),
            api_keys: None,
        }
    }
}

/// JWT verification settings.
#[derive(Clone, PartialEq)]
pub struct AuthConfig {
    /// HS256 secret from `JWT_SECRET`; empty only in `-t` mode.
    pub secret: Vec<u8>,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// Paths that skip auth and rate limiting: exact, or prefix when ending in `/`.
    pub public_paths: Vec<String>,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Whether the client's `Authorization` header is passed to upstreams.
    pub forward_authorization: bool,
    /// Identity providers whose tokens are accepted (JWKS / OIDC).
    pub issuers: Vec<IssuerConfig>,
    /// Where roles are in a token: a dotted claim path.
    pub roles_claim: Vec<String>,
    /// Claims copied into headers on proxied requests (the header is stripped from the client's
    /// request first).
    pub forward_claims: Vec<(Vec<String>, http::HeaderName)>,
    /// The `realm` of `WWW-Authenticate` challenges (RFC 6750 §3).
    pub realm: String,
    /// API keys for machine clients, when configured.
    pub api_keys: Option<ApiKeysConfig>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must never reach a log line.
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .field("leeway_seconds", &self.leeway_seconds)
            .field("public_paths", &self.public_paths)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AuthConfig {
    /// Whether `path` is exempt from auth and rate limiting.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    }
}

impl AuthFile {
    pub(super) fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<AuthConfig, ConfigError> {
        let secret = env.var("JWT_SECRET").unwrap_or_default();
        let issuers = resolve_issuers(self.issuers, env, mode)?;
        let api_keys = self.api_keys.map(ApiKeysFile::resolve).transpose()?;
        if secret.is_empty() && issuers.is_empty() && api_keys.is_none() {
            return Err(invalid(
                "JWT_SECRET",
                "is required when no gateway.auth.issuers or api_keys are configured: set JWT_SECRET to the HS256 secret shared with the token issuer",
            ));
        }
        let roles_claim = match self.roles_claim {
            ClaimPathFile::Dotted(s) => claim_path("gateway.auth.roles_claim", &s)?,
            ClaimPathFile::Literal(steps) => {
                if steps.is_empty() || steps.iter().any(String::is_empty) {
                    return Err(invalid(
                        "gateway.auth.roles_claim",
                        "a list names the claim and the keys under it, none empty",
                    ));
                }
                steps
            }
        };
        let mut forward_claims = Vec::new();
        for (claim, header) in self.forward_claims {
            let key = format!("gateway.auth.forward_claims.{claim}");
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid(&key, format!("`{header}` is not a header name")))?;
            // Headers the gateway sets itself or that frame the request: a claim must not
            // overwrite them.
            const RESERVED: [&str; 11] = [
                "host",
                "authorization",
                "content-length",
                "transfer-encoding",
                "connection",
                "expect",
                "upgrade",
                "x-user-id",
                "x-request-id",
                "x-forwarded-for",
                "x-forwarded-proto",
            ];
            if RESERVED.contains(&name.as_str()) {
                return Err(invalid(
                    &key,
                    format!("`{header}` is set by the gateway itself; choose another header"),
                ));
            }
            if forward_claims.iter().any(|(_, n)| *n == name) {
                return Err(invalid(
                    &key,
                    format!("`{header}` is already the header of another claim"),
                ));
            }
            forward_claims.push((claim_path(&key, &claim)?, name));
        }
        if self.realm.is_empty()
            || self
                .realm
                .bytes()
                .any(|b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b))
        {
            return Err(invalid(
                "gateway.auth.realm",
                "printable ASCII without `\"` or `\\`, not empty",
            ));
        }
        for (i, p) in self.public_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("gateway.auth.public_paths[{i}]"),
                    format!("`{p}` must start with `/`"),
                ));
            }
        }
        Ok(AuthConfig {
            secret: secret.into_bytes(),
            leeway_seconds: self.leeway_seconds,
            public_paths: self.public_paths,
            issuer: self.issuer,
            audience: self.audience,
            forward_authorization: self.forward_authorization,
            issuers,
            roles_claim,
            forward_claims,
            realm: self.realm,
            api_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, LoadMode};

    fn roles(yaml: &str) -> Result<Vec<String>, String> {
        let text = format!("gateway:\n  auth:\n    roles_claim: {yaml}\n");
        let env = |k: &str| (k == "JWT_SECRET").then(|| "x".repeat(32));
        Config::from_yaml(&text, &env, LoadMode::Run)
            .map(|c| c.auth.roles_claim)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_roles_claim_list_is_a_literal_path_and_a_url_one_name() {
        assert_eq!(
            roles("realm_access.roles").unwrap(),
            ["realm_access", "roles"]
        );
        assert_eq!(
            roles("[\"https://example.com/roles\"]").unwrap(),
            ["https://example.com/roles"]
        );
        assert_eq!(
            roles("\"https://example.com/roles\"").unwrap(),
            ["https://example.com/roles"]
        );
        assert_eq!(
            roles("[a.b, c]").unwrap(),
            ["a.b", "c"],
            "no splitting in a list"
        );
        let e = roles("example.com/roles").unwrap_err();
        assert!(
            e.contains("gateway.auth.roles_claim") && e.contains("as a list"),
            "{e}"
        );
        assert!(roles("[]").unwrap_err().contains("none empty"));
    }
}
