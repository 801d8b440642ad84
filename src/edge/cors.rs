//! CORS at the edge: preflights answered by the gateway (before authentication: a preflight
//! carries no token), and the headers that let a page's script read an answer.

use http::{HeaderMap, Method};

use crate::config::CorsPolicy;

/// A header to add to an answer.
pub(crate) type Header = (&'static str, String);

/// The configured policies, first matching route prefix wins.
pub(crate) struct Cors {
    policies: Vec<CorsPolicy>,
}

/// What to do with a preflight.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Preflight {
    /// Allowed: answer 204 with these headers.
    Allow(Vec<Header>),
    /// The origin, method or a header is not allowed: 403 saying which. For an allowed origin
    /// the answer carries its CORS headers and what is allowed, so that the browser's console
    /// names the refused method or header instead of a bare CORS failure.
    Deny {
        /// Headers of the 403 (none for an origin the policy refuses).
        headers: Vec<Header>,
        /// What was refused, for the error's message.
        why: String,
    },
}

impl Cors {
    /// The policies from the conf.
    pub(crate) fn new(policies: Vec<CorsPolicy>) -> Cors {
        Cors { policies }
    }

    fn policy(&self, path: &str) -> Option<&CorsPolicy> {
        self.policies
            .iter()
            .find(|p| p.routes.iter().any(|r| path.starts_with(r.as_str())))
    }

    /// `Some` when the request is a preflight (OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`) on a route with a policy.
    pub(crate) fn preflight(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Preflight> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(http::header::ORIGIN)?.to_str().ok()?;
        let asked = headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let policy = self.policy(path)?;
        let Some(mut out) = allowed_origin(policy, origin) else {
            return Some(Preflight::Deny {
                headers: Vec::new(),
                why: format!("the origin `{origin}` is not allowed by the CORS policy"),
            });
        };
        let method_ok =
            Method::from_bytes(asked.as_bytes()).is_ok_and(|m| policy.allow_methods.contains(&m));
        let refused_header = headers
            .get_all(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .find(|h| !policy.allow_headers.iter().any(|a| a.as_str() == h));
        let join = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(", ");
        out.push((
            "Access-Control-Allow-Methods",
            join(&mut policy.allow_methods.iter().map(Method::as_str)),
        ));
        if !policy.allow_headers.is_empty() {
            out.push((
                "Access-Control-Allow-Headers",
                join(&mut policy.allow_headers.iter().map(|h| h.as_str())),
            ));
        }
        let why = if !method_ok {
            Some(format!(
                "the method `{}` is not allowed by the CORS policy",
                String::from_utf8_lossy(asked.as_bytes())
            ))
        } else {
            refused_header.map(|h| format!("the header `{h}` is not allowed by the CORS policy"))
        };
        if let Some(why) = why {
            return Some(Preflight::Deny { headers: out, why });
        }
        out.push((
            "Access-Control-Max-Age",
            policy.max_age.as_secs().to_string(),
        ));
        Some(Preflight::Allow(out))
    }

    /// CORS headers for an actual answer: `None` when no policy covers the path (the service's
    /// own CORS headers stand); otherwise the gateway owns CORS there and the list is what to
    /// send — the full set for an allowed origin, `Vary: Origin` alone for a request without
    /// `Origin` or from another origin (the answer depends on it, so caches must know).
    pub(crate) fn response_headers(&self, path: &str, headers: &HeaderMap) -> Option<Vec<Header>> {
        let policy = self.policy(path)?;
        let allowed = headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .and_then(|origin| allowed_origin(policy, origin));
        let Some(mut out) = allowed else {
            return Some(vec![("Vary", "Origin".to_string())]);
        };
        if !policy.expose_headers.is_empty() {
            out.push((
                "Access-Control-Expose-Headers",
                policy
                    .expose_headers
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        Some(out)
    }
}

impl Cors {
    /// Whether a browser's upgrade request (WebSocket) comes from an origin the path's policy
    /// does not allow. Browsers apply no CORS to WebSockets, so the server must refuse a
    /// foreign page's socket itself; a request without `Origin` (not a browser) or on a path
    /// no policy covers is not refused.
    pub(crate) fn refuses_origin(&self, path: &str, headers: &HeaderMap) -> bool {
        let (Some(policy), Some(origin)) = (self.policy(path), headers.get(http::header::ORIGIN))
        else {
            return false;
        };
        origin
            .to_str()
            .map_or(true, |o| allowed_origin(policy, o).is_none())
    }
}

/// `Access-Control-Allow-Origin` (the request's origin, never a list), `Vary: Origin` and
/// credentials, when `origin` is allowed.
fn allowed_origin(policy: &CorsPolicy, origin: &str) -> Option<Vec<Header>> {
    let lower = origin.to_ascii_lowercase();
    if !policy.any_origin && !policy.allow_origins.contains(&lower) {
        return None;
    }
    let mut out = vec![
        ("Access-Control-Allow-Origin", origin.to_string()),
        ("Vary", "Origin".to_string()),
    ];
    if policy.allow_credentials {
        out.push(("Access-Control-Allow-Credentials", "true".to_string()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadMode};

    fn cors(yaml: &str) -> Cors {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let cfg =
            Config::from_yaml(&format!("gateway:\n  cors:\n{yaml}"), &env, LoadMode::Run).unwrap();
        Cors::new(cfg.cors)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const POLICY: &str = "    - { routes: [\"/api/\"], allow_origins: [\"https://app.example.com\"], allow_methods: [GET, POST], allow_headers: [authorization, content-type], expose_headers: [x-request-id], allow_credentials: true, max_age_seconds: 600 }\n";

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_policy() {
        let c = cors(POLICY);
        let h = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]);
        let Some(Preflight::Allow(out)) = c.preflight(&Method::OPTIONS, "/api/x", &h) else {
            panic!("allowed");
        };
        let get = |n: &str| out.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("Access-Control-Allow-Origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get("Access-Control-Allow-Credentials"), Some("true"));
        assert_eq!(get("Access-Control-Allow-Methods"), Some("GET, POST"));
        assert_eq!(
            get("Access-Control-Allow-Headers"),
            Some("authorization, content-type")
        );
        assert_eq!(get("Access-Control-Max-Age"), Some("600"));
        assert_eq!(get("Vary"), Some("Origin"));
    }

    #[test]
    fn other_origins_methods_headers_and_routes_are_not_allowed() {
        let c = cors(POLICY);
        let pre = |origin: &str, method: &str, hdrs: &str, path: &str| {
            let mut h = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !hdrs.is_empty() {
                h.push(("access-control-request-headers", hdrs));
            }
            c.preflight(&Method::OPTIONS, path, &headers(&h))
        };
        let denied = |p: Option<Preflight>| match p {
            Some(Preflight::Deny { headers, why }) => (headers, why),
            other => panic!("denied: {other:?}"),
        };
        let (h, why) = denied(pre("https://evil.example", "GET", "", "/api/x"));
        assert!(h.is_empty(), "no CORS headers for a refused origin");
        assert!(why.contains("https://evil.example"), "{why}");
        // An allowed origin learns what it may do: the console then names the refusal.
        let (h, why) = denied(pre("https://app.example.com", "DELETE", "", "/api/x"));
        assert!(why.contains("`DELETE`"), "{why}");
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get("Access-Control-Allow-Origin").as_deref(),
            Some("https://app.example.com")
        );
        assert!(get("Access-Control-Allow-Methods").is_some_and(|m| !m.contains("DELETE")));
        let (_, why) = denied(pre("https://app.example.com", "GET", "x-custom", "/api/x"));
        assert!(why.contains("`x-custom`"), "{why}");
        assert_eq!(
            pre("https://app.example.com", "GET", "", "/other"),
            None,
            "no policy: proxied"
        );
        assert!(
            c.preflight(
                &Method::OPTIONS,
                "/api/x",
                &headers(&[("origin", "https://app.example.com")])
            )
            .is_none(),
            "a plain OPTIONS is not a preflight"
        );
        let vary_only = Some(vec![("Vary", "Origin".to_string())]);
        assert_eq!(
            c.response_headers("/api/x", &headers(&[("origin", "https://evil.example")])),
            vary_only
        );
        assert_eq!(c.response_headers("/api/x", &headers(&[])), vary_only);
        assert_eq!(
            c.response_headers("/other", &headers(&[("origin", "https://app.example.com")])),
            None,
            "no policy: the service's headers stand"
        );
        let out = c
            .response_headers("/api/x", &headers(&[("origin", "https://APP.example.com")]))
            .unwrap();
        assert!(
            out.contains(&("Access-Control-Expose-Headers", "x-request-id".to_string())),
            "{out:?}"
        );
    }

    #[test]
    fn a_wildcard_with_credentials_is_refused_at_start() {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let e = Config::from_yaml(
            "gateway:\n  cors:\n    - { allow_origins: [\"*\"], allow_credentials: true }\n",
            &env,
            LoadMode::Check,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gateway.cors[0].allow_origins"), "{e}");
        for bad in ["https://a.example/path", "app.example.com", "ftp://a"] {
            let e = Config::from_yaml(
                &format!("gateway:\n  cors:\n    - {{ allow_origins: [\"{bad}\"] }}\n"),
                &env,
                LoadMode::Check,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("is not an origin"), "{bad}: {e}");
        }
    }
}
