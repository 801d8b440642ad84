//! The route table as people read it: every route in match order, and why each route did or
//! did not take a given request (`gateway routes`, `--explain`, the admin API's `/routes`).

use http::{HeaderMap, Method, Uri};
use serde::Serialize;

use super::matcher::{request_host, Candidate, Match, Matcher, RequestView};
use crate::config::{Config, HostMatch, PathMatch, RouteConfig, RouteTarget};

/// One route as listed.
#[derive(Debug, Serialize)]
pub(crate) struct TableRow {
    pub(crate) name: String,
    pub(crate) hosts: Vec<String>,
    pub(crate) path: String,
    pub(crate) methods: Vec<String>,
    pub(crate) target: String,
    pub(crate) auth: &'static str,
    pub(crate) policies: Vec<String>,
}

/// Declared routes then aggregates, as the table holds them.
fn all_routes(config: &Config) -> Vec<RouteConfig> {
    let mut all = config.routes.clone();
    all.extend(crate::config::aggregate_routes(
        &config.aggregates,
        &config.limits.body,
    ));
    all
}

fn path_text(p: &PathMatch) -> String {
    match p {
        PathMatch::Prefix(x) => format!("{x}*"),
        PathMatch::Exact(x) => x.clone(),
        PathMatch::Template(t) => t.text.clone(),
    }
}

/// What answers a route, as read: its target, or its split's sides (and stickiness), and its
/// mirror.
fn target_text(r: &RouteConfig) -> String {
    let mut text = match &r.split {
        None => r.target.describe(),
        Some(s) => {
            let sides: Vec<String> = s.sides.iter().map(|(g, w)| format!("{g} {w}")).collect();
            let sticky = match &s.sticky {
                None => String::new(),
                Some(crate::config::Sticky::Cookie(c)) => format!(", sticky by cookie {c}"),
                Some(crate::config::Sticky::Header(h)) => format!(", sticky by header {h}"),
                Some(crate::config::Sticky::Sub) => ", sticky by sub".to_string(),
            };
            format!("split {}{sticky}", sides.join(" / "))
        }
    };
    if let Some(m) = &r.mirror {
        text.push_str(&format!(", mirror {} {}%", m.upstream, m.percent));
    }
    text
}

/// Every route in match order (most specific first; conf order among equals).
pub(crate) fn table_rows(config: &Config) -> Vec<TableRow> {
    let mut all = all_routes(config);
    all.sort_by_key(RouteConfig::specificity);
    all.iter()
        .map(|r| TableRow {
            name: r.name.clone(),
            hosts: r.hosts.iter().map(HostMatch::to_string).collect(),
            path: path_text(&r.path),
            methods: r.conditions.methods.iter().map(|m| m.to_string()).collect(),
            target: target_text(r),
            auth: if config.auth.is_public(r.path.text()) {
                "public"
            } else {
                r.auth.as_str()
            },
            policies: match &r.rate_limit {
                Some(l) => l.clone(),
                None => config
                    .rate_limit
                    .policies
                    .iter()
                    .filter(|p| p.covers(r.path.text()))
                    .map(|p| p.name.clone())
                    .chain(std::iter::once("default".to_string()))
                    .collect(),
            },
        })
        .collect()
}

/// Why `r` does not take the request, or `None` when it could.
fn why_not(r: &RouteConfig, req: &RequestView<'_>) -> Option<String> {
    if !r.hosts.is_empty() {
        let host = req.host.unwrap_or("");
        let hit = r.hosts.iter().any(|h| match h {
            HostMatch::Exact(x) => x == host,
            HostMatch::Wildcard(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        });
        if !hit {
            return Some(format!("host `{host}` is not one of its hosts"));
        }
    }
    let path_ok = match &r.path {
        PathMatch::Exact(x) => req.path == x,
        PathMatch::Prefix(x) => req.path.starts_with(x.as_str()),
        PathMatch::Template(t) => {
            let mut router = matchit::Router::new();
            router.insert(t.router.clone(), ()).is_ok() && router.at(req.path).is_ok()
        }
    };
    if !path_ok {
        return Some(format!("path does not match `{}`", path_text(&r.path)));
    }
    let c = &r.conditions;
    if !c.methods.is_empty() && !c.methods.contains(req.method) {
        let m: Vec<&str> = c.methods.iter().map(Method::as_str).collect();
        return Some(format!(
            "method {} is not one of {}",
            req.method,
            m.join(", ")
        ));
    }
    for (name, values) in &c.headers {
        let ok = req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| values.iter().any(|w| w == v)));
        if !ok {
            return Some(format!("header {name} is not {}", values.join(" or ")));
        }
    }
    for (name, values) in &c.query {
        let ok = req.query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == name.as_str() && values.iter().any(|w| *w == v))
        });
        if !ok {
            return Some(format!("query {name} is not {}", values.join(" or ")));
        }
    }
    None
}

/// Which route takes `METHOD URL` (with `headers`, `Name: value` each) and why each other
/// route does not, as lines of text.
pub(crate) fn explain(
    config: &Config,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<String, String> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method}` is not a method"))?;
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL (as in https://api.example.com/orders/7)"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("`{h}` is not `Name: value`"))?;
        let n = http::header::HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("`{n}` is not a header name"))?;
        let v = http::HeaderValue::from_str(v.trim()).map_err(|_| format!("bad value in `{h}`"))?;
        map.append(n, v);
    }
    let all = all_routes(config);
    let candidates: Vec<Candidate<'_>> = all
        .iter()
        .map(|c| Candidate {
            hosts: &c.hosts,
            path: &c.path,
            conditions: &c.conditions,
        })
        .collect();
    let matcher = Matcher::new(&candidates);
    let mut buf = String::new();
    let view = RequestView {
        host: request_host(&uri, &map, &mut buf),
        method: &method,
        path: uri.path(),
        query: uri.query(),
        headers: &map,
    };
    let accept = |i: usize| match &all[i].target {
        RouteTarget::Aggregate(_) => aggregate_claims(all[i].path.text(), view.path),
        _ => true,
    };
    let mut out = String::new();
    let winner = match matcher.find(&view, &accept) {
        Match::Route(i, params) => {
            let r = &all[i];
            out.push_str(&format!(
                "{method} {url}\n→ {} ({})",
                r.name,
                r.target.describe()
            ));
            if !params.is_empty() {
                let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!(", params {}", p.join(" ")));
            }
            out.push('\n');
            Some(i)
        }
        Match::NotAllowed(m) => {
            let m: Vec<&str> = m.iter().map(Method::as_str).collect();
            out.push_str(&format!(
                "{method} {url}\n→ 405 method not allowed (Allow: {})\n",
                m.join(", ")
            ));
            None
        }
        Match::NotFound => {
            out.push_str(&format!("{method} {url}\n→ 404 no route matches\n"));
            None
        }
    };
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| all[i].specificity());
    for i in order {
        if Some(i) == winner {
            continue;
        }
        let r = &all[i];
        let why = match why_not(r, &view) {
            Some(why) => why,
            None if !accept(i) => "path is not under the aggregate's path".to_string(),
            None => match winner {
                Some(w) => format!("matches too, but `{}` is more specific", all[w].name),
                None => "matches".to_string(),
            },
        };
        out.push_str(&format!("  {}: {why}\n", r.name));
    }
    Ok(out)
}

/// An aggregate's segment boundary: `/api/profile` takes `/api/profile` and `/api/profile/…`.
fn aggregate_claims(prefix: &str, path: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_route_lists_its_sides_stickiness_and_mirror() {
        let yaml = "gateway:\n  upstreams:\n    a: { backends: ['127.0.0.1:1'] }\n    b: { backends: ['127.0.0.1:2'] }\n    c: { backends: ['127.0.0.1:3'] }\n  routes:\n    - { name: canary, match: { path: { prefix: /u } }, split: [{ upstream: a, weight: 95 }, { upstream: b, weight: 5 }], sticky: { header: X-User }, mirror: { upstream: c, percent: 10 } }\n    - { name: plain, match: { path: { prefix: /p } }, upstream: a }\n";
        let env = |k: &str| (k == "JWT_SECRET").then(|| "x".repeat(32));
        let config = Config::from_yaml(yaml, &env, crate::config::LoadMode::Run).unwrap();
        let rows = table_rows(&config);
        let target = |name: &str| {
            rows.iter()
                .find(|r| r.name == name)
                .map(|r| r.target.clone())
        };
        assert_eq!(
            target("canary").as_deref(),
            Some("split a 95 / b 5, sticky by header x-user, mirror c 10%")
        );
        assert_eq!(target("plain").as_deref(), Some("upstream a"));
    }
}
