//! The route table: which of the gateway's answers, upstream group, redirect or fixed answer a
//! request goes to, and what a matched route does to it on the way (rewrite, header rules).
//!
//! - `matcher`: the index that finds the most specific route without walking the table.
//! - `apply`: the rewrite, `{…}` values and header rules of a matched route.
//! - `explain`: why each route did or did not take a request (`gateway routes --explain`).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use super::upstreams::{self, UpstreamGroup};
use crate::aggregate::{Aggregate, Aggregates};
use crate::config::{Config, RouteConfig, RouteTarget};

mod apply;
mod entry;
mod explain;
pub(crate) mod matcher;

pub(crate) use self::apply::{apply_request_rules, apply_response_rules, Values};
pub(crate) use self::entry::ProxyRoute;
pub(crate) use self::explain::{explain, table_rows};
use self::matcher::{Candidate, Match, Matcher, RequestView};

/// Where a request goes.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// `/healthz`: liveness, answered by the gateway.
    Healthz,
    /// `/readyz`: readiness, answered by the gateway.
    Readyz,
    /// A declared aggregate.
    Aggregate(Arc<Aggregate>),
    /// Proxied to an upstream group.
    Proxy(Arc<ProxyRoute>),
    /// A redirect or a fixed answer, from the conf.
    Direct(Arc<ProxyRoute>),
    /// The path is routed, not for this method (the `Allow` value).
    NotAllowed(Arc<str>),
    /// Nothing matched.
    NotFound,
    /// Refused before routing: malformed, or a path that cannot be made canonical.
    Invalid,
}

impl Route {
    /// The bounded `route` label for metrics and logs: the route's configured name.
    pub(crate) fn label(&self) -> &str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Aggregate(a) => a.name(),
            Route::Proxy(r) | Route::Direct(r) => &r.config.name,
            Route::NotAllowed(_) => "method_not_allowed",
            Route::NotFound => "not_found",
            Route::Invalid => "invalid",
        }
    }

    /// Whether the route is the gateway's own probe, never limited nor authenticated.
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz)
    }

    /// The configured route, when one matched (aggregates included).
    pub(crate) fn config(&self) -> Option<&ProxyRoute> {
        match self {
            Route::Proxy(r) | Route::Direct(r) => Some(r),
            _ => None,
        }
    }
}

/// What the table holds for each route.
#[derive(Debug, Clone)]
enum Entry {
    Route(Arc<ProxyRoute>),
    Aggregate(Arc<Aggregate>),
}

/// Matches requests to routes; built at start-up and on each reload.
pub(crate) struct RouteTable {
    /// Declared routes then aggregates; the matcher indexes into it.
    configs: Vec<RouteConfig>,
    entries: Vec<Entry>,
    matcher: Matcher,
    /// Every upstream group by name (routed or not), for the next reload to keep.
    pub(crate) groups: BTreeMap<String, Arc<UpstreamGroup>>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.configs.len())
            .finish()
    }
}

/// The request as routing reads it.
pub(crate) struct Request<'r> {
    pub(crate) uri: &'r Uri,
    pub(crate) method: &'r Method,
    pub(crate) headers: &'r HeaderMap,
}

impl RouteTable {
    /// Builds the table of `config`: its upstream groups (keeping those of `previous` whose
    /// settings did not change), its routes over them and its aggregates (`aggregates`).
    pub(crate) fn build(
        config: &Config,
        aggregates: &Aggregates,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let groups = upstreams::groups(config, previous.map(|p| &p.groups));
        let claims = crate::edge::claim_paths(config);
        let mut configs = Vec::new();
        let mut entries = Vec::new();
        for r in &config.routes {
            let group = match &r.target {
                RouteTarget::Upstream(g) => match groups.get(g) {
                    Some(g) => Some(g.clone()),
                    None => continue,
                },
                _ => None,
            };
            let claim_index = apply::claim_index(r, &claims);
            let split = r.split.as_ref().map(|s| {
                let sides = s
                    .sides
                    .iter()
                    .filter_map(|(g, w)| Some((groups.get(g)?.clone(), *w)))
                    .collect();
                crate::proxy::traffic::SplitSides::new(sides, s.sticky.clone())
            });
            for (g, _) in r.split.iter().flat_map(|s| &s.sides) {
                crate::metrics::SPLIT_REQUESTS.with_label_values(&[r.name.as_str(), g]);
            }
            let mirror = r.mirror.as_ref().and_then(|m| {
                let g = groups.get(&m.upstream)?.clone();
                Some(crate::proxy::traffic::MirrorTarget::new(
                    &r.name,
                    g,
                    m.percent,
                    m.max_in_flight,
                ))
            });
            entries.push(Entry::Route(Arc::new(ProxyRoute {
                mirror,
                split,
                config: r.clone(),
                group,
                claim_index,
                policies: r
                    .rate_limit
                    .as_ref()
                    .map(|l| l.iter().map(|p| p.as_str().into()).collect()),
            })));
            for cause in r.retries.iter().flat_map(|x| {
                let statuses = x.statuses.iter().map(u16::to_string);
                x.on_connect
                    .then(|| "connect".to_string())
                    .into_iter()
                    .chain(statuses)
            }) {
                crate::metrics::ROUTE_RETRIES.with_label_values(&[r.name.as_str(), &cause]);
            }
            let rules = r.request_headers.set.iter().chain(&r.response_headers.set);
            if rules.clone().any(|(_, t)| !t.is_literal()) {
                crate::metrics::ROUTE_HEADERS_DROPPED.with_label_values(&[r.name.as_str()]);
            }
            configs.push(r.clone());
        }
        let declared = crate::config::aggregate_routes(&config.aggregates, &config.limits.body);
        for r in declared {
            if let Some(a) = aggregates.named(&r.name) {
                entries.push(Entry::Aggregate(a.clone()));
                configs.push(r);
            }
        }
        let candidates = candidates(&configs);
        let matcher = Matcher::new(&candidates);
        RouteTable {
            configs,
            entries,
            matcher,
            groups,
        }
    }

    /// The first upstream group a route sends to that has no healthy backend.
    pub(crate) fn unhealthy_group(&self) -> Option<&str> {
        self.entries.iter().find_map(|e| match e {
            Entry::Route(r) => r
                .group
                .as_ref()
                .filter(|g| !g.any_healthy())
                .map(|g| &*g.name),
            Entry::Aggregate(_) => None,
        })
    }

    /// A group some route sends to with a backend name that has never resolved, and the name.
    pub(crate) fn unresolved_group(&self) -> Option<(String, String)> {
        self.groups
            .values()
            .find_map(|g| g.unresolved().map(|n| (g.name.to_string(), n)))
    }

    /// Starts the health checks of groups that have none running yet (new ones).
    pub(crate) fn start_checks(&self) {
        for g in self.groups.values() {
            g.start_checks();
        }
    }

    /// Decides the route of a request: the built-in routes first, then the most specific
    /// route that matches. Template params go to `params`.
    pub(crate) fn route(&self, req: &Request<'_>, params: &mut Vec<(Box<str>, Box<str>)>) -> Route {
        let path = req.uri.path();
        match path {
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
        let mut buf = String::new();
        let host = if self.matcher.has_hosts() {
            matcher::request_host(req.uri, req.headers, &mut buf)
        } else {
            None
        };
        let view = RequestView {
            host,
            method: req.method,
            path,
            query: req.uri.query(),
            headers: req.headers,
        };
        let accept = |i: usize| match &self.entries[i] {
            Entry::Aggregate(a) => a.claims(path),
            Entry::Route(_) => true,
        };
        match self.matcher.find(&view, &accept) {
            Match::Route(i, p) => {
                *params = p;
                match &self.entries[i] {
                    Entry::Aggregate(a) => Route::Aggregate(a.clone()),
                    Entry::Route(r) if r.group.is_some() => Route::Proxy(r.clone()),
                    Entry::Route(r) => Route::Direct(r.clone()),
                }
            }
            Match::NotAllowed(methods) => {
                let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
                Route::NotAllowed(allow.join(", ").into())
            }
            Match::NotFound => Route::NotFound,
        }
    }
}

/// The matcher's view of each route.
fn candidates(configs: &[RouteConfig]) -> Vec<Candidate<'_>> {
    configs
        .iter()
        .map(|c| Candidate {
            hosts: &c.hosts,
            path: &c.path,
            conditions: &c.conditions,
        })
        .collect()
}

#[cfg(test)]
mod tests;
