//! The route table: which of the gateway's answers, or which upstream group, a path goes to,
//! and how a proxied path is rewritten for its upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::upstreams::{self, UpstreamGroup};
use crate::aggregate::{Aggregate, Aggregates};
use crate::config::{BodyPolicy, Config};

/// Where a request goes, decided from its path alone.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// `/healthz`: liveness, answered by the gateway.
    Healthz,
    /// `/readyz`: readiness, answered by the gateway.
    Readyz,
    /// A declared aggregate (every path under its literal start).
    Aggregate(Arc<Aggregate>),
    /// A configured prefix: proxied to an upstream group.
    Proxy(Arc<ProxyRoute>),
    /// Nothing matched.
    NotFound,
}

impl Route {
    /// The bounded `route` label for metrics and logs.
    pub(crate) fn label(&self) -> &str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Aggregate(a) => a.name(),
            Route::Proxy(r) => &r.group.name,
            Route::NotFound => "not_found",
        }
    }

    /// Whether the route is the gateway's own probe, never limited nor authenticated.
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz)
    }
}

/// A compiled route table entry.
#[derive(Debug)]
pub(crate) struct ProxyRoute {
    /// Matched path prefix.
    pub(crate) prefix: String,
    /// Leading part of the path removed before forwarding.
    pub(crate) strip_prefix: Option<String>,
    /// The group that serves it.
    pub(crate) group: Arc<UpstreamGroup>,
    /// How its request bodies are read.
    pub(crate) body: BodyPolicy,
}

impl ProxyRoute {
    /// The request target for the upstream, `None` when it stays as it is.
    pub(crate) fn upstream_target(&self, path: &str, query: Option<&str>) -> Option<String> {
        self.strip_prefix
            .as_deref()
            .map(|strip| rewrite_path(path, query, strip))
    }
}

/// `path` without its leading `strip`, always starting with `/`, with the query kept.
fn rewrite_path(path: &str, query: Option<&str>, strip: &str) -> String {
    let rest = path.strip_prefix(strip).unwrap_or(path);
    let mut new = String::with_capacity(rest.len() + 2 + query.map_or(0, str::len));
    if !rest.starts_with('/') {
        new.push('/');
    }
    new.push_str(rest);
    if let Some(q) = query {
        new.push('?');
        new.push_str(q);
    }
    new
}

/// Matches paths to routes; built at start-up and on each reload.
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<ProxyRoute>>,
    /// Every upstream group by name (routed or not), for the next reload to keep.
    pub(crate) groups: BTreeMap<String, Arc<UpstreamGroup>>,
}

impl RouteTable {
    /// A table over `routes`, tried in order.
    pub(crate) fn new(
        routes: Vec<Arc<ProxyRoute>>,
        groups: BTreeMap<String, Arc<UpstreamGroup>>,
    ) -> Self {
        RouteTable { routes, groups }
    }

    /// Builds the table of `config`: its upstream groups (keeping those of `previous` whose
    /// settings did not change) and its routes over them, in conf order.
    pub(crate) fn build(config: &Config, previous: Option<&RouteTable>) -> RouteTable {
        let groups = upstreams::groups(config, previous.map(|p| &p.groups));
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                groups.get(&r.upstream).map(|g| {
                    Arc::new(ProxyRoute {
                        prefix: r.prefix.clone(),
                        strip_prefix: r.strip_prefix.clone(),
                        group: g.clone(),
                        body: r.body,
                    })
                })
            })
            .collect();
        RouteTable::new(routes, groups)
    }

    /// The first upstream group a route sends to that has no healthy backend.
    pub(crate) fn unhealthy_group(&self) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| !r.group.any_healthy())
            .map(|r| &*r.group.name)
    }

    /// Starts the health checks of groups that have none running yet (new ones).
    pub(crate) fn start_checks(&self) {
        for g in self.groups.values() {
            g.start_checks();
        }
    }

    /// Decides the route of `path` (no query string): the built-in routes first, then the
    /// aggregates (start-up checks that no prefix overlaps one), then the first configured
    /// prefix that matches.
    pub(crate) fn route(&self, path: &str, aggregates: &Aggregates) -> Route {
        match path {
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
        if let Some(a) = aggregates.route(path) {
            return Route::Aggregate(a.clone());
        }
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
            .map(|r| Route::Proxy(r.clone()))
            .unwrap_or(Route::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadMode};

    fn aggregates() -> Aggregates {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let yaml = format!("gateway: {{{}}}", crate::testing::profile_section());
        let cfg = Config::from_yaml(&yaml, &env, LoadMode::Run).expect("config");
        let store = std::sync::Arc::new(crate::store::Store::Memory(Default::default()));
        Aggregates::new(&cfg, store).expect("aggregates")
    }

    fn table() -> RouteTable {
        let yaml = r#"
gateway:
  upstreams:
    users: { backends: ["127.0.0.1:1"] }
    orders: { backends: ["127.0.0.1:2"] }
  routes:
    - { prefix: "/api/users/", upstream: users }
    - { prefix: "/api/orders", upstream: orders }
"#;
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let cfg = Config::from_yaml(yaml, &env, LoadMode::Run).expect("test config");
        RouteTable::build(&cfg, None)
    }

    #[test]
    fn first_matching_prefix_wins_and_builtins_come_first() {
        let (t, a) = (table(), aggregates());
        assert_eq!(t.route("/api/users/1", &a).label(), "users");
        assert_eq!(t.route("/api/orders", &a).label(), "orders");
        assert_eq!(t.route("/api/profile/1", &a).label(), "profile");
        assert_eq!(
            t.route("/api/profile/1/x", &a).label(),
            "profile",
            "400 from the aggregate"
        );
        assert_eq!(t.route("/api/profile", &a).label(), "profile");
        assert_eq!(t.route("/healthz", &a).label(), "healthz");
        assert_eq!(t.route("/readyz", &a).label(), "readyz");
        assert_eq!(t.route("/other", &a).label(), "not_found");
    }

    #[test]
    fn paths_are_rewritten_with_the_query_kept() {
        assert_eq!(rewrite_path("/api/users/1", None, "/api"), "/users/1");
        assert_eq!(
            rewrite_path("/api/users/1", Some("a=1&b"), "/api/users/"),
            "/1?a=1&b"
        );
        assert_eq!(rewrite_path("/api/users/", None, "/api/users/"), "/");
        assert_eq!(rewrite_path("/api", Some(""), "/api"), "/?");
        assert_eq!(
            rewrite_path("/other", None, "/api"),
            "/other",
            "no match: unchanged"
        );
    }
}
