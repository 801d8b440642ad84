//! Upstream groups: each a round-robin Pingora `LoadBalancer` over its backends, with the
//! active check on a task of its own (so that groups a reload adds are checked too) and
//! passive health on every backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::upstreams::peer::PeerOptions;
use prometheus::IntCounter;

use super::discovery::{DnsDiscovery, Shared};
use super::health::{active_check, InFlight, PassiveHealth};
use crate::config::{Config, UpstreamConfig};
use crate::metrics;
use crate::rebuild::Rebuild;

/// One load-balanced group of backends.
pub(crate) struct UpstreamGroup {
    /// Group name, also its metrics label.
    pub(crate) name: Arc<str>,
    /// Timeouts, retries and health settings.
    pub(crate) config: UpstreamConfig,
    /// The balancer (`balance`); its health check runs on a task of its own.
    lb: Balancer,
    /// Stops the health-check task when the group goes (a reload removed or replaced it).
    stop: tokio::sync::watch::Sender<bool>,
    /// Whether the health-check task runs (it starts once there is a runtime).
    checking: AtomicBool,
    /// `upstream_connections_total` for this group: opened (0), reused from the pool (1).
    pub(crate) connections: [IntCounter; 2],
    /// What route retries draw from: a fifth of the group's requests, at least ten a second,
    /// so that retries cannot multiply the load on a group that is failing.
    pub(crate) retry_budget: crate::resilience::RetryBudget,
    /// The DNS discovery, when backends are given by name.
    discovery: Option<Arc<DnsDiscovery>>,
}

/// A group's balancer, by its `balance`.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    /// `least_requests`: two random picks, the one with fewer requests in flight.
    Random(Arc<LoadBalancer<Random>>),
    /// `hash`: Ketama consistent hashing.
    Hash(Arc<LoadBalancer<Consistent>>),
}

/// Runs `$body` with `$lb` bound to the balancer whatever its selection.
macro_rules! with_lb {
    ($b:expr, $lb:ident => $body:expr) => {
        match $b {
            Balancer::RoundRobin($lb) => $body,
            Balancer::Random($lb) => $body,
            Balancer::Hash($lb) => $body,
        }
    };
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("name", &self.name)
            .field("backends", &self.config.backends)
            .finish()
    }
}

impl Drop for UpstreamGroup {
    fn drop(&mut self) {
        // The last request on the old snapshot is done: its backends stop being checked, and
        // their gauges go unless the group lives on under the same name.
        let _ = self.stop.send(true);
    }
}

impl UpstreamGroup {
    /// Whether any backend passes the active health check.
    pub(crate) fn any_healthy(&self) -> bool {
        with_lb!(&self.lb, lb => {
            let backends = lb.backends();
            backends.get_backend().iter().any(|b| backends.ready(b))
        })
    }

    /// How many backends the group has now (given, or found by DNS).
    pub(crate) fn backend_count(&self) -> usize {
        match &self.discovery {
            None => self.config.backends.len(),
            Some(_) => with_lb!(&self.lb, lb => lb.backends().get_backend().len()),
        }
    }

    /// A backend name of this group that has never resolved (the group has no address from it).
    pub(crate) fn unresolved(&self) -> Option<String> {
        self.discovery.as_ref()?.unresolved()
    }

    /// Picks a healthy backend not in `exclude` whose passive breaker admits a request, by
    /// the group's `balance` (`key`: what a hashing group hashes).
    pub(crate) fn select(
        &self,
        exclude: &[SocketAddr],
        now: Instant,
        key: &[u8],
    ) -> Option<Backend> {
        let max = self.backend_count().saturating_mul(2).max(8);
        let usable = |backend: &Backend, healthy: bool| {
            let excluded = matches!(&backend.addr, PingoraAddr::Inet(a) if exclude.contains(a));
            healthy && !excluded && PassiveHealth::admits(backend, &self.name, now)
        };
        match &self.lb {
            Balancer::RoundRobin(lb) => lb.select_with(b"", max, usable),
            Balancer::Hash(lb) => lb.select_with(key, max, usable),
            Balancer::Random(lb) => {
                let a = lb.select_with(b"", max, usable)?;
                let b = lb.select_with(b"", max, |b: &Backend, h| b.addr != a.addr && usable(b, h));
                match b {
                    Some(b) if InFlight::of(&b) < InFlight::of(&a) => Some(b),
                    _ => Some(a),
                }
            }
        }
    }

    /// Each backend as the admin API shows it: address, active health, breaker, requests in
    /// flight (counted for `least_requests` groups only).
    pub(crate) fn status(&self, now: Instant) -> serde_json::Value {
        let backends: Vec<serde_json::Value> = with_lb!(&self.lb, lb => {
            let all = lb.backends();
            all.get_backend()
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "address": b.addr.to_string(),
                        "healthy": all.ready(b),
                        "breaker": PassiveHealth::state(b, now),
                        "in_flight": InFlight::of(b),
                        "weight": b.weight,
                    })
                })
                .collect()
        });
        serde_json::json!({
            "group": &*self.name,
            "balance": format!("{:?}", self.config.balance),
            "backends": backends,
            "unresolved": self.unresolved(),
            "tls": self.config.tls.is_some(),
            "http2": self.config.h2_streams.is_some(),
        })
    }

    /// Whether a try that failed to connect may go to another backend: bounded by the
    /// group's `connect_retries` and by the backends not tried yet.
    pub(crate) fn may_retry_connect(&self, tried: usize) -> bool {
        tried.saturating_sub(1) < self.config.connect_retries && tried < self.backend_count()
    }

    /// Starts the active health check on the current runtime, once; it ends when the group is
    /// dropped.
    pub(crate) fn start_checks(&self) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let stop = self.stop.subscribe();
        use pingora::services::background::BackgroundService;
        // Pingora's own loop for a balancer: update, check, sleep until due or stopped.
        match &self.lb {
            Balancer::RoundRobin(lb) => {
                let lb = lb.clone();
                tokio::spawn(async move { lb.start(stop).await });
            }
            Balancer::Random(lb) => {
                let lb = lb.clone();
                tokio::spawn(async move { lb.start(stop).await });
            }
            Balancer::Hash(lb) => {
                let lb = lb.clone();
                tokio::spawn(async move { lb.start(stop).await });
            }
        }
    }
}

fn build_group(name: &str, up: &UpstreamConfig) -> UpstreamGroup {
    let now = Instant::now();
    let name: Arc<str> = Arc::from(name);
    let mut set = BTreeSet::new();
    for addr in up.backends.iter().filter(|_| up.dns.is_none()) {
        let mut b = Backend {
            addr: PingoraAddr::Inet(*addr),
            weight: 1,
            ext: Default::default(),
        };
        b.ext.insert(PassiveHealth::new(up, now));
        b.ext.insert(InFlight::default());
        metrics::BACKEND_HEALTHY
            .with_label_values(&[&*name, &addr.to_string()])
            .set(1);
        set.insert(b);
    }
    let discovery = up
        .dns
        .as_ref()
        .map(|dns| Arc::new(DnsDiscovery::new(&name, up, dns)));
    let mut backends = match &discovery {
        // Names: what DNS says, asked again by the balancer's task at the shortest refresh
        // (the resolver's cache answers until a record's TTL ends).
        Some(d) => Backends::new(Box::new(Shared(d.clone()))),
        None => Backends::new(Static::new(set)),
    };
    backends.set_health_check(active_check(&name, up));
    fn finish<S>(
        mut lb: LoadBalancer<S>,
        up: &UpstreamConfig,
        name: &str,
        fill: bool,
    ) -> Arc<LoadBalancer<S>>
    where
        S: pingora::lb::selection::BackendSelection + 'static,
        S::Iter: pingora::lb::selection::BackendIter,
    {
        // Static discovery never waits, so the selector is filled before the first request
        // instead of by the health task's first pass; DNS discovery fills it from that task.
        if fill {
            if let Some(Err(e)) = lb.update().now_or_never() {
                tracing::error!(group = %name, error = %e, "cannot build the backend selector");
            }
        }
        lb.update_frequency = up.dns.as_ref().map(|d| d.min_refresh);
        lb.health_check_frequency = Some(up.health_check.interval);
        lb.parallel_health_check = true;
        Arc::new(lb)
    }
    let fill = discovery.is_none();
    if fill {
        // Given by address: what serves is what the conf lists (DNS groups report their own).
        metrics::UPSTREAM_BACKENDS
            .with_label_values(&[&*name, "serving"])
            .set(up.backends.len() as i64);
    }
    let lb = match up.balance {
        crate::config::Balance::RoundRobin => Balancer::RoundRobin(finish(
            LoadBalancer::from_backends(backends),
            up,
            &name,
            fill,
        )),
        crate::config::Balance::LeastRequests => Balancer::Random(finish(
            LoadBalancer::from_backends(backends),
            up,
            &name,
            fill,
        )),
        crate::config::Balance::Hash(_) => Balancer::Hash(finish(
            LoadBalancer::from_backends(backends),
            up,
            &name,
            fill,
        )),
    };
    let connections = ["false", "true"]
        .map(|reused| metrics::UPSTREAM_CONNECTIONS.with_label_values(&[&*name, reused]));
    UpstreamGroup {
        name,
        config: up.clone(),
        lb,
        stop: tokio::sync::watch::channel(false).0,
        checking: AtomicBool::new(false),
        connections,
        retry_budget: crate::resilience::RetryBudget::new(0.2, 10.0, std::time::Instant::now()),
        discovery,
    }
}

/// Builds every upstream group of `config`. Groups of `previous` whose settings did not
/// change are kept as they are (health state, passive breakers, running checks); the others
/// are new, and the health series of backends that left are removed.
pub(crate) fn groups(config: &Config, previous: Option<&Groups>) -> Groups {
    let mut groups = BTreeMap::new();
    for (name, up) in &config.upstreams {
        let old = previous.and_then(|p| p.get(name));
        groups.insert(
            name.clone(),
            UpstreamGroup::rebuild(up, old, || build_group(name, up)),
        );
    }
    if let Some(p) = previous {
        for (name, old) in p {
            let replaced = groups.get(name).is_none_or(|g| !Arc::ptr_eq(g, old));
            if replaced {
                for addr in &old.config.backends {
                    let still = groups
                        .get(name)
                        .is_some_and(|g| g.config.backends.contains(addr));
                    if !still {
                        let _ = metrics::BACKEND_HEALTHY
                            .remove_label_values(&[&**name, &addr.to_string()]);
                    }
                }
            }
        }
    }
    groups
}

/// Every upstream group by name.
pub(crate) type Groups = BTreeMap<String, Arc<UpstreamGroup>>;

impl Rebuild for UpstreamGroup {
    type Settings = UpstreamConfig;
    fn settings(&self) -> &UpstreamConfig {
        &self.config
    }
}

/// h2 to a group's backends as its `http2` says: offered by ALPN (HTTP/1.1 if refused), or h2
/// only (h2c without TLS), with the group's stream window. Nothing without `http2`.
pub(crate) fn h2_options(config: &UpstreamConfig, options: &mut PeerOptions) {
    let Some(streams) = config.h2_streams else {
        return;
    };
    options.set_http_version(2, if config.h2_only { 2 } else { 1 });
    options.max_h2_streams = streams;
    // A slow reader holds at most one stream window here; the connection's window covers
    // every stream's, so one slow stream never stalls the others.
    let window = config.h2_stream_window;
    options.h2_stream_window_size = Some(window);
    let all = window.saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
    options.h2_connection_window_size = Some(all.clamp(1 << 23, i32::MAX as u32));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadMode;
    use crate::proxy::routes::Route;

    fn group(backends: &str, retries: usize) -> Arc<UpstreamGroup> {
        let yaml = format!(
            "gateway: {{upstreams: {{g: {{backends: {backends}, connect_retries: {retries}}}}}, \
             routes: [{{prefix: /, upstream: g}}], aggregates: []}}"
        );
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let cfg = Config::from_yaml(&yaml, &env, LoadMode::Run).expect("test config");
        let store = Arc::new(crate::store::Store::Memory(Default::default()));
        let aggregates = crate::aggregate::Aggregates::new(&cfg, store).expect("aggregates");
        let table = crate::proxy::routes::RouteTable::build(&cfg, &aggregates, None);
        let uri: http::Uri = "/x".parse().unwrap();
        let req = crate::proxy::routes::Request {
            uri: &uri,
            method: &http::Method::GET,
            headers: &http::HeaderMap::new(),
        };
        match table.route(&req, &mut Vec::new()) {
            Route::Proxy(r) => r.group.clone().expect("a group"),
            other => panic!("expected a proxy route, got {other:?}"),
        }
    }

    #[test]
    fn passive_breaker_takes_a_backend_out() {
        let g = group("['127.0.0.1:1']", 2);
        let now = Instant::now();
        let b = g.select(&[], now, b"").expect("one healthy backend");
        for _ in 0..3 {
            let mut t = super::super::health::BackendTry::default();
            t.start(b.clone());
            t.failed(now);
        }
        assert!(g.select(&[], now, b"").is_none());
        assert!(g
            .select(&[], now + std::time::Duration::from_secs(10), b"")
            .is_some());
    }

    #[test]
    fn connect_retries_are_bounded_by_config_and_backends() {
        let three = group("['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']", 1);
        assert!(three.may_retry_connect(1), "first try failed: one retry");
        assert!(!three.may_retry_connect(2), "retry budget of 1 used");
        let two = group("['127.0.0.1:1', '127.0.0.1:2']", 5);
        assert!(two.may_retry_connect(1));
        assert!(!two.may_retry_connect(2), "every backend tried");
        let one = group("['127.0.0.1:1']", 0);
        assert!(!one.may_retry_connect(1));
    }

    #[test]
    fn excluded_backends_are_not_picked_again() {
        let two = group("['127.0.0.1:1', '127.0.0.1:2']", 1);
        let now = Instant::now();
        let first = two.select(&[], now, b"").expect("a backend");
        let PingoraAddr::Inet(a) = first.addr else {
            panic!("inet backend")
        };
        for _ in 0..4 {
            let next = two.select(&[a], now, b"").expect("the other backend");
            assert_ne!(next.addr, first.addr);
        }
    }
}
