//! `gateway.cors`: which browser origins may call which routes, as written and as checked.

use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, ConfigError};

/// One `gateway.cors` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    #[serde(default = "default_routes")]
    routes: Vec<String>,
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u64,
}

fn default_routes() -> Vec<String> {
    vec!["/".into()]
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_max_age() -> u64 {
    600
}

/// Which origins a browser may call these routes from, and with what.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    /// Path prefixes the policy covers (the first policy whose prefix matches applies).
    pub routes: Vec<String>,
    /// Exact origins (`https://app.example.com`), lowercase; empty with `any_origin`.
    pub allow_origins: Vec<String>,
    /// `*`: any origin (never with credentials).
    pub any_origin: bool,
    /// Methods a preflight may ask for (uppercase).
    pub allow_methods: Vec<http::Method>,
    /// Request headers a preflight may ask for (lowercase).
    pub allow_headers: Vec<http::HeaderName>,
    /// Response headers the page's script may read.
    pub expose_headers: Vec<http::HeaderName>,
    /// Cookies and `Authorization` travel with the request.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Duration,
}

/// Checks every entry; `*` with credentials is refused (browsers reject it anyway).
pub(super) fn resolve_cors(files: Vec<CorsFile>) -> Result<Vec<CorsPolicy>, ConfigError> {
    files
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.resolve(&format!("gateway.cors[{i}]")))
        .collect()
}

impl CorsFile {
    fn resolve(self, key: &str) -> Result<CorsPolicy, ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        for (j, r) in self.routes.iter().enumerate() {
            if !r.starts_with('/') {
                return Err(invalid(
                    format!("{key}.routes[{j}]"),
                    format!("`{r}` must start with `/`"),
                ));
            }
        }
        if self.allow_origins.is_empty() {
            return Err(invalid(
                k("allow_origins"),
                "needs at least one origin (or \"*\")",
            ));
        }
        let any_origin = self.allow_origins.iter().any(|o| o == "*");
        if any_origin && self.allow_credentials {
            return Err(invalid(
                k("allow_origins"),
                "\"*\" cannot be used with allow_credentials: true (browsers refuse it); list the origins",
            ));
        }
        let mut allow_origins = Vec::new();
        for (j, o) in self.allow_origins.iter().enumerate() {
            if o == "*" {
                continue;
            }
            let ok = o
                .parse::<http::Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some()
                        && u.path_and_query()
                            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
                        && !o.ends_with('/')
                })
                .is_some();
            if !ok {
                return Err(invalid(
                    format!("{key}.allow_origins[{j}]"),
                    format!("`{o}` is not an origin (scheme://host[:port], no path)"),
                ));
            }
            allow_origins.push(o.to_ascii_lowercase());
        }
        let allow_methods = self
            .allow_methods
            .iter()
            .enumerate()
            .map(|(j, m)| {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    invalid(
                        format!("{key}.allow_methods[{j}]"),
                        format!("`{m}` is not a method"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let names = |list: &[String], what: &str| {
            list.iter()
                .enumerate()
                .map(|(j, h)| {
                    http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        invalid(
                            format!("{key}.{what}[{j}]"),
                            format!("`{h}` is not a header name"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(CorsPolicy {
            routes: self.routes,
            allow_origins,
            any_origin,
            allow_methods,
            allow_headers: names(&self.allow_headers, "allow_headers")?,
            expose_headers: names(&self.expose_headers, "expose_headers")?,
            allow_credentials: self.allow_credentials,
            max_age: Duration::from_secs(self.max_age_seconds),
        })
    }
}
