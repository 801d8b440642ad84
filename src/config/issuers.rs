//! `gateway.auth.issuers`: identity providers whose tokens the gateway accepts, each with its
//! key set's location, audiences, algorithms and refresh bounds; plus `roles_claim` and
//! `forward_claims`. Checked once, naming the key.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

use super::check::{invalid, ConfigError, Env, LoadMode};

/// One issuer as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerFile {
    issuer: String,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default)]
    token_types: Option<Vec<String>>,
    #[serde(default)]
    introspection: Option<IntrospectionFile>,
    #[serde(default)]
    refresh: RefreshFile,
}

/// `introspection` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectionFile {
    #[serde(default)]
    endpoint: Option<String>,
    client_id: String,
    client_secret_env: String,
    #[serde(default = "default_introspection_cache")]
    cache_seconds: u64,
}

fn default_introspection_cache() -> u64 {
    60
}

/// Where and how opaque tokens are introspected (RFC 7662).
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// The endpoint; `None`: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<Url>,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// Its secret (from the environment variable named in the conf).
    pub client_secret: String,
    /// How long an active answer is reused (never past the token's `exp`).
    pub cache: Duration,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must never reach a log line.
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("cache", &self.cache)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RefreshFile {
    min_interval_seconds: u64,
    max_age_seconds: u64,
    max_stale_seconds: u64,
}

impl Default for RefreshFile {
    fn default() -> Self {
        RefreshFile {
            min_interval_seconds: 10,
            max_age_seconds: 3600,
            max_stale_seconds: 86_400,
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must match and whose
    /// `jwks_uri` is then used.
    Discovery(Url),
    /// The key set's URL, given directly.
    Jwks(Url),
}

/// One identity provider, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// Must equal the token's `iss`; also the metric label.
    pub issuer: String,
    /// Where the keys come from.
    pub keys: KeySource,
    /// When not empty, `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (never `none` nor HMAC).
    pub algorithms: Vec<Algorithm>,
    /// `http://` URLs are allowed (development, mocks).
    pub allow_insecure_http: bool,
    /// Fetches happen at most this often.
    pub min_interval: Duration,
    /// The longest a set is kept before a background refresh.
    pub max_age: Duration,
    /// How long the last good set is used while the provider is down.
    pub max_stale: Duration,
    /// Accepted `typ` values, lowercased without `application/` (an absent `typ` is `jwt`).
    pub token_types: Vec<String>,
    /// Opaque tokens are introspected at this issuer, when set.
    pub introspection: Option<IntrospectionConfig>,
}

/// A `typ` as compared: lowercased, without the optional `application/` (RFC 7515 4.1.9).
pub fn media_type(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(t)
}

fn parse_alg(key: &str, s: &str) -> Result<Algorithm, ConfigError> {
    use Algorithm::*;
    let alg: Algorithm = s
        .parse()
        .map_err(|_| invalid(key, format!("`{s}` is not a JWS algorithm")))?;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA => Ok(alg),
        _ => Err(invalid(
            key,
            format!("`{s}`: an issuer's tokens are signed with a published key (RS*, PS*, ES256, ES384, EdDSA); HMAC is for JWT_SECRET only"),
        )),
    }
}

fn parse_url(key: &str, s: &str, insecure: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(s).map_err(|e| invalid(key, format!("`{s}` is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(invalid(
                key,
                format!("`{s}`: keys over plain http can be swapped in transit; use https (or allow_insecure_http: true for development)"),
            ))
        }
        other => return Err(invalid(key, format!("`{other}`: use https"))),
    }
    if url.host_str().is_none() {
        return Err(invalid(key, format!("`{s}` has no host")));
    }
    Ok(url)
}

impl IntrospectionFile {
    fn resolve(
        self,
        key: &str,
        discovery: bool,
        insecure: bool,
        env: &dyn Env,
        _mode: LoadMode,
    ) -> Result<IntrospectionConfig, ConfigError> {
        let endpoint = match &self.endpoint {
            Some(u) => Some(parse_url(&format!("{key}.endpoint"), u, insecure)?),
            None if discovery => None,
            None => {
                return Err(invalid(
                    format!("{key}.endpoint"),
                    "is required unless the issuer uses discovery: true",
                ))
            }
        };
        if self.client_id.is_empty() {
            return Err(invalid(format!("{key}.client_id"), "must not be empty"));
        }
        let client_secret = env.var(&self.client_secret_env).unwrap_or_default();
        if client_secret.is_empty() {
            return Err(invalid(
                format!("{key}.client_secret_env"),
                format!(
                    "the environment variable `{}` is not set: it holds the gateway's client secret at the provider",
                    self.client_secret_env
                ),
            ));
        }
        if self.cache_seconds == 0 {
            return Err(invalid(
                format!("{key}.cache_seconds"),
                "must be at least 1 (every request would ask the provider)",
            ));
        }
        Ok(IntrospectionConfig {
            endpoint,
            client_id: self.client_id,
            client_secret,
            cache: Duration::from_secs(self.cache_seconds),
        })
    }
}

impl IssuerFile {
    fn resolve(
        self,
        key: &str,
        env: &dyn Env,
        mode: LoadMode,
    ) -> Result<IssuerConfig, ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        if self.issuer.trim().is_empty() {
            return Err(invalid(k("issuer"), "must not be empty"));
        }
        let keys = match (self.discovery, &self.jwks_uri) {
            (true, None) => {
                let base = parse_url(&k("issuer"), &self.issuer, self.allow_insecure_http)?;
                let doc = format!(
                    "{}/.well-known/openid-configuration",
                    base.as_str().trim_end_matches('/')
                );
                KeySource::Discovery(parse_url(&k("issuer"), &doc, self.allow_insecure_http)?)
            }
            (false, Some(u)) => {
                KeySource::Jwks(parse_url(&k("jwks_uri"), u, self.allow_insecure_http)?)
            }
            (true, Some(_)) => {
                return Err(invalid(
                    k("jwks_uri"),
                    "give either discovery: true or jwks_uri, not both",
                ))
            }
            (false, None) => return Err(invalid(key, "needs discovery: true or a jwks_uri")),
        };
        let algorithms = match self.algorithms {
            None => vec![Algorithm::RS256, Algorithm::ES256],
            Some(list) if list.is_empty() => {
                return Err(invalid(k("algorithms"), "must list at least one algorithm"))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, a)| parse_alg(&format!("{key}.algorithms[{i}]"), a))
                .collect::<Result<_, _>>()?,
        };
        let r = self.refresh;
        if r.min_interval_seconds == 0 {
            return Err(invalid(
                k("refresh.min_interval_seconds"),
                "must be greater than 0",
            ));
        }
        if r.max_age_seconds < r.min_interval_seconds {
            return Err(invalid(
                k("refresh.max_age_seconds"),
                "must be at least min_interval_seconds",
            ));
        }
        let token_types = match self.token_types {
            None => vec!["at+jwt".to_string(), "jwt".to_string()],
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    k("token_types"),
                    "must list at least one `typ` value",
                ))
            }
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, t) in list.iter().enumerate() {
                    if t.trim().is_empty() {
                        return Err(invalid(
                            format!("{key}.token_types[{i}]"),
                            "must not be empty",
                        ));
                    }
                    out.push(media_type(t));
                }
                out
            }
        };
        let introspection = match self.introspection {
            None => None,
            Some(i) => Some(i.resolve(
                &k("introspection"),
                self.discovery,
                self.allow_insecure_http,
                env,
                mode,
            )?),
        };
        Ok(IssuerConfig {
            token_types,
            introspection,
            issuer: self.issuer,
            keys,
            audiences: self.audiences,
            algorithms,
            allow_insecure_http: self.allow_insecure_http,
            min_interval: Duration::from_secs(r.min_interval_seconds),
            max_age: Duration::from_secs(r.max_age_seconds),
            max_stale: Duration::from_secs(r.max_stale_seconds),
        })
    }
}

/// Checks every issuer; issuers must be unique.
pub(super) fn resolve_issuers(
    files: Vec<IssuerFile>,
    env: &dyn Env,
    mode: LoadMode,
) -> Result<Vec<IssuerConfig>, ConfigError> {
    let mut out: Vec<IssuerConfig> = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let key = format!("gateway.auth.issuers[{i}]");
        let c = f.resolve(&key, env, mode)?;
        if c.introspection.is_some() {
            if let Some(j) = out.iter().position(|o| o.introspection.is_some()) {
                return Err(invalid(
                    format!("{key}.introspection"),
                    format!("gateway.auth.issuers[{j}] introspects already: opaque tokens do not name their issuer, so one issuer takes them all"),
                ));
            }
        }
        if out.iter().any(|o| o.issuer == c.issuer) {
            return Err(invalid(
                format!("{key}.issuer"),
                format!("`{}` is configured twice", c.issuer),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// A claim path as written: a dotted path (`realm_access.roles`), or one claim name when it
/// is a URL (`https://example.com/roles`, the namespaced claims of Auth0 and others, whose dots
/// are not steps).
pub(super) fn claim_path(key: &str, s: &str) -> Result<Vec<String>, ConfigError> {
    if s.starts_with("https://") || s.starts_with("http://") {
        return Ok(vec![s.to_string()]);
    }
    if s.contains('/') || s.contains(':') {
        return Err(invalid(
            key,
            format!("`{s}`: a claim name with dots, `/` or `:` is a literal name only when written as a list (`[\"{s}\"]`) or as an http(s) URL"),
        ));
    }
    let parts: Vec<String> = s.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(
            key,
            format!("`{s}` is not a claim name or dotted path"),
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Vec<IssuerConfig>, ConfigError> {
        resolve_issuers(
            serde_yaml::from_str(yaml).unwrap(),
            &|v: &str| (v == "INTROSPECTION_SECRET").then(|| "s3cret".to_string()),
            LoadMode::Run,
        )
    }

    #[test]
    fn an_issuer_with_discovery_gets_its_document_url_and_defaults() {
        let c = check("- { issuer: 'https://idp.example/realms/x', discovery: true }").unwrap();
        assert_eq!(
            c[0].keys,
            KeySource::Discovery(
                Url::parse("https://idp.example/realms/x/.well-known/openid-configuration")
                    .unwrap()
            )
        );
        assert_eq!(c[0].algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(c[0].min_interval, Duration::from_secs(10));
    }

    #[test]
    fn unsafe_or_incomplete_issuers_are_refused_naming_the_key() {
        for (yaml, want) in [
            ("- { issuer: 'http://idp', discovery: true }", "gateway.auth.issuers[0].issuer"),
            ("- { issuer: 'https://idp' }", "needs discovery: true or a jwks_uri"),
            ("- { issuer: 'https://idp', discovery: true, jwks_uri: 'https://idp/k' }", "not both"),
            ("- { issuer: 'https://idp', jwks_uri: 'https://idp/k', algorithms: [HS256] }", "gateway.auth.issuers[0].algorithms[0]"),
            ("- { issuer: 'https://idp', jwks_uri: 'https://idp/k', algorithms: [none] }", "algorithms[0]"),
            ("- { issuer: 'https://idp', jwks_uri: 'https://idp/k', refresh: { min_interval_seconds: 0 } }", "refresh.min_interval_seconds"),
            ("- { issuer: 'https://a', jwks_uri: 'https://a/k' }\n- { issuer: 'https://a', jwks_uri: 'https://a/k' }", "issuers[1].issuer"),
        ] {
            let e = check(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}\n→ {e}");
        }
        assert!(check("- { issuer: 'http://127.0.0.1:8085', discovery: true, allow_insecure_http: true, algorithms: [RS256, ES256, EdDSA] }").is_ok());
    }

    #[test]
    fn forwarded_claims_may_not_take_the_gateways_own_headers() {
        let load = |fc: &str| {
            let yaml = format!("gateway:\n  auth:\n    forward_claims: {fc}\n");
            let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
            crate::config::Config::from_yaml(&yaml, &env, crate::config::LoadMode::Run)
        };
        let ok = load("{ tenant: X-Tenant-Id, org.id: X-Org }").unwrap();
        let names: Vec<_> = ok
            .auth
            .forward_claims
            .iter()
            .map(|(p, h)| (p.join("."), h.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("org.id".into(), "x-org"),
                ("tenant".to_string(), "x-tenant-id")
            ]
        );
        for (fc, want) in [
            ("{ tenant: X-User-Id }", "forward_claims.tenant"),
            ("{ tenant: Authorization }", "set by the gateway"),
            ("{ a: X-T, b: x-t }", "forward_claims.b"),
            ("{ tenant: 'X Tenant' }", "not a header name"),
            ("{ 'a..b': X-T }", "dotted path"),
        ] {
            let e = load(fc).unwrap_err().to_string();
            assert!(e.contains(want), "{fc}\n→ {e}");
        }
    }

    #[test]
    fn claim_paths_are_dotted_names() {
        assert_eq!(
            claim_path("k", "realm_access.roles").unwrap(),
            vec!["realm_access", "roles"]
        );
        assert!(claim_path("k", "a..b").is_err());
        assert_eq!(
            claim_path("k", "https://example.com/roles").unwrap(),
            vec!["https://example.com/roles"],
            "a namespaced claim is one name"
        );
        assert!(claim_path("k", "example.com/roles").is_err());
    }

    #[test]
    fn introspection_needs_an_endpoint_a_secret_and_one_issuer() {
        let c = check("- { issuer: 'https://idp.example', discovery: true, introspection: { client_id: gw, client_secret_env: INTROSPECTION_SECRET } }").unwrap();
        let i = c[0].introspection.as_ref().unwrap();
        assert_eq!(
            (i.endpoint.as_ref(), i.client_secret.as_str(), i.cache),
            (None, "s3cret", Duration::from_secs(60))
        );
        assert!(!format!("{i:?}").contains("s3cret"));
        for (yaml, want) in [
            ("- { issuer: 'https://idp.example', jwks_uri: 'https://idp.example/jwks', introspection: { client_id: gw, client_secret_env: INTROSPECTION_SECRET } }", "introspection.endpoint: is required unless"),
            ("- { issuer: 'https://idp.example', discovery: true, introspection: { client_id: gw, client_secret_env: NOPE } }", "`NOPE` is not set"),
            ("- { issuer: 'https://idp.example', discovery: true, introspection: { client_id: gw, client_secret_env: INTROSPECTION_SECRET, cache_seconds: 0 } }", "cache_seconds"),
            ("- { issuer: 'https://a.example', discovery: true, introspection: { client_id: gw, client_secret_env: INTROSPECTION_SECRET } }\n- { issuer: 'https://b.example', discovery: true, introspection: { client_id: gw, client_secret_env: INTROSPECTION_SECRET } }", "issuers[0] introspects already"),
        ] {
            let e = check(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn token_types_default_to_access_tokens_and_compare_as_media_types() {
        let c = check("- { issuer: 'https://idp.example', discovery: true }").unwrap();
        assert_eq!(c[0].token_types, ["at+jwt", "jwt"]);
        let c = check("- { issuer: 'https://idp.example', discovery: true, token_types: ['application/AT+JWT'] }").unwrap();
        assert_eq!(c[0].token_types, ["at+jwt"]);
        let e = check("- { issuer: 'https://idp.example', discovery: true, token_types: [] }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_types"), "{e}");
    }
}
