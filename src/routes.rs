//! The route table and the upstream groups behind it: load balancing, active and passive health.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::services::background::{background_service, GenBackgroundService};

use crate::config::{Config, HealthCheckKind, UpstreamConfig};
use crate::metrics;
use crate::resilience::{Admission, CircuitBreaker};

/// Where a request goes, decided from its path alone.
#[derive(Debug, Clone)]
pub enum Route {
    /// `/healthz`: liveness, answered by the gateway.
    Healthz,
    /// `/readyz`: readiness, answered by the gateway.
    Readyz,
    /// `/api/profile/…`: aggregated by the gateway.
    Profile,
    /// A configured prefix: proxied to an upstream group.
    Proxy(Arc<ProxyRoute>),
    /// Nothing matched.
    NotFound,
}

impl Route {
    /// The bounded `route` label for metrics and logs.
    pub fn label(&self) -> &str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Profile => "profile",
            Route::Proxy(r) => &r.group.name,
            Route::NotFound => "not_found",
        }
    }
}

/// A compiled route table entry.
#[derive(Debug)]
pub struct ProxyRoute {
    /// Matched path prefix.
    pub prefix: String,
    /// Leading part of the path removed before forwarding.
    pub strip_prefix: Option<String>,
    /// The group that serves it.
    pub group: Arc<UpstreamGroup>,
}

/// Path prefix reserved for the profile endpoint.
pub const PROFILE_PREFIX: &str = "/api/profile/";

/// Matches paths to routes; built once at start-up.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<ProxyRoute>>,
}

impl RouteTable {
    /// Decides the route of `path` (no query string).
    pub fn route(&self, path: &str) -> Route {
        match path {
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
        if path.starts_with(PROFILE_PREFIX) || path == "/api/profile" {
            return Route::Profile;
        }
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
            .map(|r| Route::Proxy(r.clone()))
            .unwrap_or(Route::NotFound)
    }
}

/// The passive-health breaker of one backend, carried in `Backend.ext`.
#[derive(Debug, Clone)]
pub struct PassiveHealth(pub Arc<CircuitBreaker>);

/// One load-balanced group of backends.
pub struct UpstreamGroup {
    /// Group name, also its metrics label.
    pub name: Arc<str>,
    /// Timeouts, retries and health settings.
    pub config: UpstreamConfig,
    /// Round-robin balancer; its health check runs as a background service.
    pub lb: Arc<LoadBalancer<RoundRobin>>,
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("name", &self.name)
            .field("backends", &self.config.backends)
            .finish()
    }
}

impl UpstreamGroup {
    /// Picks the next healthy backend not in `exclude` whose passive breaker admits a request.
    pub fn select(&self, exclude: &[SocketAddr], now: Instant) -> Option<Backend> {
        let max = self.config.backends.len().saturating_mul(2).max(8);
        self.lb.select_with(b"", max, |backend, healthy| {
            if !healthy {
                return false;
            }
            if let PingoraAddr::Inet(addr) = &backend.addr {
                if exclude.contains(addr) {
                    return false;
                }
            }
            match backend.ext.get::<PassiveHealth>() {
                Some(p) => {
                    let (admission, transition) = p.0.admit(now);
                    if transition.is_some() {
                        tracing::info!(group = %self.name, backend = %backend.addr, "passive health: probing backend again");
                    }
                    admission != Admission::Rejected
                }
                None => true,
            }
        })
    }
}

/// Reports health flips to the log and the `upstream_backend_healthy` gauge.
struct HealthReporter {
    group: Arc<str>,
}

#[async_trait]
impl HealthObserve for HealthReporter {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let backend = target.addr.to_string();
        metrics::BACKEND_HEALTHY
            .with_label_values(&[&*self.group, &backend])
            .set(i64::from(healthy));
        if healthy {
            tracing::info!(group = %self.group, backend = %backend, "backend is healthy again");
        } else {
            tracing::warn!(group = %self.group, backend = %backend, "backend failed its health check");
        }
    }
}

/// Background service type that runs one group's health checks.
pub type HealthService = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// Builds the route table and one health-check service per upstream group.
pub fn build(config: &Config) -> (RouteTable, Vec<HealthService>) {
    let now = Instant::now();
    let mut groups = std::collections::BTreeMap::new();
    let mut services = Vec::new();
    for (name, up) in &config.upstreams {
        let name: Arc<str> = Arc::from(name.as_str());
        let mut set = BTreeSet::new();
        for addr in &up.backends {
            let mut b = Backend {
                addr: PingoraAddr::Inet(*addr),
                weight: 1,
                ext: Default::default(),
            };
            b.ext.insert(PassiveHealth(Arc::new(CircuitBreaker::new(
                up.passive_failures,
                up.passive_open,
                now,
            ))));
            metrics::BACKEND_HEALTHY
                .with_label_values(&[&*name, &addr.to_string()])
                .set(1);
            set.insert(b);
        }
        let mut backends = Backends::new(Static::new(set));
        backends.set_health_check(health_check(&name, up));
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends);
        // Static discovery never waits, so the selector is filled before the first request
        // instead of by the background service's first pass.
        if let Some(Err(e)) = lb.update().now_or_never() {
            tracing::error!(group = %name, error = %e, "cannot build the backend selector");
        }
        lb.health_check_frequency = Some(up.health_check.interval);
        lb.parallel_health_check = true;
        let service = background_service(&format!("health check {name}"), lb);
        let group = Arc::new(UpstreamGroup {
            name: name.clone(),
            config: up.clone(),
            lb: service.task(),
        });
        groups.insert(name.to_string(), group);
        services.push(service);
    }
    let routes = config
        .routes
        .iter()
        .filter_map(|r| {
            groups.get(&r.upstream).map(|g| {
                Arc::new(ProxyRoute {
                    prefix: r.prefix.clone(),
                    strip_prefix: r.strip_prefix.clone(),
                    group: g.clone(),
                })
            })
        })
        .collect();
    (RouteTable { routes }, services)
}

fn health_check(
    group: &Arc<str>,
    up: &UpstreamConfig,
) -> Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> {
    let hc = &up.health_check;
    let reporter = Box::new(HealthReporter {
        group: group.clone(),
    });
    match hc.kind {
        HealthCheckKind::Http => {
            let mut check = HttpHealthCheck::new("localhost", false);
            check.req.set_uri(
                hc.path
                    .parse()
                    .unwrap_or_else(|_| http::Uri::from_static("/healthz")),
            );
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.consecutive_success = hc.consecutive_success;
            check.consecutive_failure = hc.consecutive_failure;
            check.health_changed_callback = Some(reporter);
            Box::new(check)
        }
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.consecutive_success = hc.consecutive_success;
            check.consecutive_failure = hc.consecutive_failure;
            check.health_changed_callback = Some(reporter);
            check
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadMode;

    fn table() -> RouteTable {
        let yaml = r#"
gateway:
  upstreams:
    users: { backends: ["127.0.0.1:1"] }
    orders: { backends: ["127.0.0.1:2"] }
  routes:
    - { prefix: "/api/users/", upstream: users }
    - { prefix: "/api/", upstream: orders }
"#;
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let cfg = Config::from_yaml(yaml, &env, LoadMode::Run).unwrap();
        build(&cfg).0
    }

    #[test]
    fn first_matching_prefix_wins_and_builtins_come_first() {
        let t = table();
        assert_eq!(t.route("/api/users/1").label(), "users");
        assert_eq!(t.route("/api/orders").label(), "orders");
        assert_eq!(t.route("/api/profile/1").label(), "profile");
        assert_eq!(t.route("/healthz").label(), "healthz");
        assert_eq!(t.route("/readyz").label(), "readyz");
        assert_eq!(t.route("/other").label(), "not_found");
    }

    #[test]
    fn passive_breaker_takes_a_backend_out() {
        let t = table();
        let Route::Proxy(r) = t.route("/api/users/1") else {
            panic!("expected a proxy route")
        };
        let now = Instant::now();
        let b = r.group.select(&[], now).expect("one healthy backend");
        let passive = b
            .ext
            .get::<PassiveHealth>()
            .expect("passive state attached")
            .clone();
        for _ in 0..3 {
            passive.0.on_failure(now);
        }
        assert!(r.group.select(&[], now).is_none());
        assert!(r
            .group
            .select(&[], now + std::time::Duration::from_secs(10))
            .is_some());
    }
}
