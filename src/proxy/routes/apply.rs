//! What a matched route does to a request on its way: the upstream's path, and the `{…}`
//! values of header rules and redirects.

use std::net::IpAddr;

use http::HeaderValue;

use super::entry::ProxyRoute;
use crate::config::{Rewrite, RouteConfig, TemplatePart, ValueTemplate};
use crate::edge::auth::Identity;

/// Where a route's `{…}` variables take their values.
pub(crate) struct Values<'a> {
    pub(crate) route: &'a ProxyRoute,
    pub(crate) params: &'a [(Box<str>, Box<str>)],
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) request_id: &'a str,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
}

impl Values<'_> {
    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| &**k == name)
            .map_or("", |(_, v)| v)
    }

    fn claim(&self, name: &str) -> Option<&str> {
        let (_, i) = self.route.claim_index.iter().find(|(n, _)| &**n == name)?;
        self.identity?.limit_claims.get(*i)?.as_deref()
    }

    /// `t` filled in; `None` when a claim it reads is absent.
    pub(crate) fn render(&self, t: &ValueTemplate) -> Option<String> {
        let mut out = String::new();
        for part in &t.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Claim(c) => out.push_str(self.claim(c)?),
                TemplatePart::Param(p) => out.push_str(self.param(p)),
                TemplatePart::RequestId => out.push_str(self.request_id),
                TemplatePart::ClientIp => {
                    if let Some(ip) = self.client_ip {
                        out.push_str(&ip.to_string());
                    }
                }
                TemplatePart::Host => out.push_str(self.host.unwrap_or("")),
                TemplatePart::Path => out.push_str(self.path),
            }
        }
        Some(out)
    }

    /// A header value from `t`: `None` when a claim is absent or the value could split or end
    /// the header (CR, LF, NUL and other bytes a header cannot carry are never sent).
    pub(crate) fn header(&self, t: &ValueTemplate) -> Result<Option<HeaderValue>, Unsafe> {
        let Some(text) = self.render(t) else {
            return Ok(None);
        };
        HeaderValue::from_str(&text).map(Some).map_err(|_| Unsafe)
    }
}

/// The route's response header rules on `resp`: removals, then values set (a value that
/// cannot be a header is left out and counted).
pub(crate) fn apply_response_rules(
    resp: &mut pingora::http::ResponseHeader,
    route: &ProxyRoute,
    values: &Values<'_>,
) {
    let rules = &route.config.response_headers;
    for n in &rules.remove {
        resp.remove_header(n);
    }
    for (n, t) in &rules.set {
        match values.header(t) {
            Ok(Some(v)) => {
                let _ = resp.insert_header(n.clone(), v);
            }
            Ok(None) => {}
            Err(Unsafe) => dropped(route),
        }
    }
}

/// The route's request header rules on `req`, as [`apply_response_rules`] does.
pub(crate) fn apply_request_rules(
    req: &mut pingora::http::RequestHeader,
    route: &ProxyRoute,
    values: &Values<'_>,
) {
    let rules = &route.config.request_headers;
    for n in &rules.remove {
        req.remove_header(n);
    }
    for (n, t) in &rules.set {
        match values.header(t) {
            Ok(Some(v)) => {
                let _ = req.insert_header(n.clone(), v);
            }
            Ok(None) => {
                // The claim is absent: a client-sent copy must not stand in for it.
                req.remove_header(n);
            }
            Err(Unsafe) => {
                req.remove_header(n);
                dropped(route);
            }
        }
    }
}

fn dropped(route: &ProxyRoute) {
    crate::metrics::ROUTE_HEADERS_DROPPED
        .with_label_values(&[route.config.name.as_str()])
        .inc();
}

/// A value that would have carried bytes a header cannot (CR, LF, NUL…): not sent.
#[derive(Debug)]
pub(crate) struct Unsafe;

impl ProxyRoute {
    /// The request target for the upstream, `None` when it stays as it is.
    pub(crate) fn upstream_target(
        &self,
        path: &str,
        query: Option<&str>,
        params: &[(Box<str>, Box<str>)],
    ) -> Option<String> {
        let new_path = match self.config.rewrite.as_ref()? {
            Rewrite::Prefix { strip, prefix } => prefixed(path, strip, prefix),
            Rewrite::Path(t) => {
                let mut out = String::new();
                for part in &t.parts {
                    match part {
                        TemplatePart::Literal(l) => out.push_str(l),
                        TemplatePart::Param(p) => out.push_str(
                            params
                                .iter()
                                .find(|(k, _)| &**k == p)
                                .map_or("", |(_, v)| v),
                        ),
                        _ => {}
                    }
                }
                out
            }
        };
        Some(match query {
            Some(q) => {
                let mut s = new_path;
                s.reserve(q.len() + 1);
                s.push('?');
                s.push_str(q);
                s
            }
            None => new_path,
        })
    }
}

/// `path` without its leading `strip`, behind `prefix`, always starting with one `/`.
fn prefixed(path: &str, strip: &str, prefix: &str) -> String {
    let rest = path.strip_prefix(strip).unwrap_or(path);
    let base = prefix.trim_end_matches('/');
    let mut new = String::with_capacity(base.len() + rest.len() + 1);
    new.push_str(base);
    if !rest.starts_with('/') && (!rest.is_empty() || base.is_empty()) {
        new.push('/');
    }
    new.push_str(rest);
    new
}

/// For each claim the route's header rules read, its index among the claims the verifier
/// reads (`claims`, from `edge::claim_paths`).
pub(super) fn claim_index(r: &RouteConfig, claims: &[Vec<String>]) -> Box<[(Box<str>, usize)]> {
    let mut out: Vec<(Box<str>, usize)> = Vec::new();
    let rules = r.request_headers.set.iter().chain(&r.response_headers.set);
    for (_, t) in rules {
        for c in t.claims() {
            let path: Vec<String> = c.split('.').map(str::to_string).collect();
            if let Some(i) = claims.iter().position(|p| *p == path) {
                if !out.iter().any(|(n, _)| &**n == c) {
                    out.push((c.into(), i));
                }
            }
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::prefixed;

    #[test]
    fn prefixes_are_swapped_with_one_slash_between() {
        assert_eq!(prefixed("/api/users/1", "/api", ""), "/users/1");
        assert_eq!(prefixed("/api/users/", "/api/users/", ""), "/");
        assert_eq!(prefixed("/api", "/api", ""), "/");
        assert_eq!(
            prefixed("/orders/7", "/orders", "/v2/orders"),
            "/v2/orders/7"
        );
        assert_eq!(prefixed("/orders", "/orders", "/v2/orders/"), "/v2/orders");
        assert_eq!(prefixed("/orders/a%2Fb", "/orders", "/v2"), "/v2/a%2Fb");
        assert_eq!(prefixed("/x", "", "/v1"), "/v1/x");
    }
}
