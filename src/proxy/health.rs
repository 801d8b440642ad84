//! Backend health, both kinds in one place:
//! - active: Pingora's HTTP/TCP checks run as a background service per group; flips are
//!   logged and exported as `upstream_backend_healthy`;
//! - passive: every proxied try reports its outcome to a breaker carried on the backend
//!   (`Backend.ext`), so a backend failing real traffic is skipped before the next check.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use async_trait::async_trait;
use pingora::connectors::{http::Connector as HttpConnector, TransportConnector};
use pingora::lb::health_check::{
    HealthCheck, HealthObserve, HealthObserveCallback, HttpHealthCheck,
};
use pingora::lb::Backend;
use pingora::upstreams::peer::BasicPeer;

use crate::config::{HealthCheckKind, UpstreamConfig};
use crate::metrics;
use crate::resilience::{Admission, CircuitBreaker};

/// The passive-health breaker of one backend, carried in `Backend.ext`.
#[derive(Debug, Clone)]
pub(crate) struct PassiveHealth(Arc<CircuitBreaker>);

impl PassiveHealth {
    /// A closed breaker that opens after `up.passive_failures` failed tries in a row.
    pub(crate) fn new(up: &UpstreamConfig, now: Instant) -> Self {
        PassiveHealth(Arc::new(CircuitBreaker::new(
            up.passive_failures,
            up.passive_open,
            now,
        )))
    }

    /// The state of `backend`'s breaker (`closed` without passive state).
    pub(crate) fn state(backend: &Backend, now: Instant) -> &'static str {
        match backend.ext.get::<PassiveHealth>().map(|p| p.0.state(now)) {
            Some(crate::resilience::BreakerState::Open) => "open",
            Some(crate::resilience::BreakerState::HalfOpen) => "half_open",
            _ => "closed",
        }
    }

    /// Whether `backend` may take a request now (always, without passive state).
    pub(crate) fn admits(backend: &Backend, group: &str, now: Instant) -> bool {
        let Some(p) = backend.ext.get::<PassiveHealth>() else {
            return true;
        };
        let (admission, transition) = p.0.admit(now);
        if transition.is_some() {
            tracing::info!(group, backend = %backend.addr, "passive health: probing backend again");
        }
        admission != Admission::Rejected
    }
}

/// Requests in flight on one backend (`least_requests`), carried in `Backend.ext`.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    /// The requests in flight on `backend` now (0 without tracking).
    pub(crate) fn of(backend: &Backend) -> usize {
        backend
            .ext
            .get::<InFlight>()
            .map_or(0, |f| f.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Counts a request on `backend` until the guard drops.
    fn enter(backend: &Backend) -> InFlightGuard {
        InFlightGuard(backend.ext.get::<InFlight>().map(|f| {
            f.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f.0.clone()
        }))
    }
}

/// One request in flight on a backend, counted until dropped (reported or abandoned alike).
#[derive(Debug, Default)]
pub(crate) struct InFlightGuard(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What one proxied try did to its backend's passive health (the span's
/// `gateway.upstream.health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passive {
    /// The try worked; the backend's state did not change.
    Success,
    /// The try failed; the backend's state did not change.
    Failure,
    /// This failure took the backend out.
    Ejected,
    /// This success brought the backend back.
    Restored,
}

impl Passive {
    /// The span attribute's value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Passive::Success => "success",
            Passive::Failure => "failure",
            Passive::Ejected => "ejected",
            Passive::Restored => "restored",
        }
    }
}

/// The outcome of one proxied try, reported to its backend's passive health exactly once.
///
/// Pingora may learn a try's fate in several phases (connect failure, upstream response,
/// proxy error, the end of the request); each calls [`succeeded`](Self::succeeded) or
/// [`failed`](Self::failed), and only the first call of a try counts.
#[derive(Debug, Default)]
pub(crate) enum BackendTry {
    /// No backend picked yet (or a local answer).
    #[default]
    None,
    /// A backend was picked; its outcome is not known yet (counted in flight until then: the
    /// guard is held for its drop).
    Pending(Backend, #[allow(dead_code)] InFlightGuard),
    /// The outcome was reported; the backend is kept for the access log.
    Reported(Backend),
}

impl BackendTry {
    /// A new try on `backend` (a retry replaces the previous one, which was reported).
    pub(crate) fn start(&mut self, backend: Backend) {
        let guard = InFlight::enter(&backend);
        *self = BackendTry::Pending(backend, guard);
    }

    /// The backend of the current (or last) try.
    pub(crate) fn backend(&self) -> Option<&Backend> {
        match self {
            BackendTry::None => None,
            BackendTry::Pending(b, _) | BackendTry::Reported(b) => Some(b),
        }
    }

    /// The try worked (a response below 500, or a request that ended without error).
    /// Returns the passive-health outcome (`None`: this try was already reported).
    pub(crate) fn succeeded(&mut self, now: Instant) -> Option<Passive> {
        self.report(true, now)
    }

    /// The try failed (connect error, a 5xx, an upstream error mid-request); see
    /// [`succeeded`](Self::succeeded).
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Passive> {
        self.report(false, now)
    }

    /// Success or failure, or restored or ejected when this report flipped the backend.
    fn report(&mut self, ok: bool, now: Instant) -> Option<Passive> {
        let backend = match std::mem::take(self) {
            // The guard drops here: the try is over.
            BackendTry::Pending(backend, _) => backend,
            done => {
                *self = done;
                return None;
            }
        };
        let mut outcome = if ok {
            Passive::Success
        } else {
            Passive::Failure
        };
        if let Some(p) = backend.ext.get::<PassiveHealth>() {
            let transition = if ok {
                p.0.on_success(now)
            } else {
                p.0.on_failure(now)
            };
            if let Some(t) = transition {
                tracing::warn!(backend = %backend.addr, from = ?t.from, to = ?t.to, "passive health state changed");
                outcome = match t.to {
                    crate::resilience::BreakerState::Open => Passive::Ejected,
                    crate::resilience::BreakerState::Closed => Passive::Restored,
                    crate::resilience::BreakerState::HalfOpen => outcome,
                };
            }
        }
        *self = BackendTry::Reported(backend);
        Some(outcome)
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

/// The active check of one group, as configured.
pub(crate) fn active_check(
    group: &Arc<str>,
    up: &UpstreamConfig,
) -> Box<dyn HealthCheck + Send + Sync> {
    let hc = &up.health_check;
    let reporter = Box::new(HealthReporter {
        group: group.clone(),
    });
    match hc.kind {
        HealthCheckKind::Http => {
            // Pool size 1: a check does not reuse its connection.
            let connector =
                || HttpConnector::new(Some(pingora::connectors::ConnectorOptions::new(1)));
            let mut check = match &up.tls {
                Some(t) => {
                    let mut c = HttpHealthCheck::new_custom(&t.sni, true, connector());
                    t.apply(&mut c.peer_template.options);
                    c
                }
                None => HttpHealthCheck::new_custom("localhost", false, connector()),
            };
            // The path was validated as a URI at start-up.
            check.req.set_uri(
                hc.path
                    .parse()
                    .unwrap_or_else(|_| http::Uri::from_static("/healthz")),
            );
            if up.h2_only {
                // A backend that speaks only h2 is checked in h2.
                check.peer_template.options.set_http_version(2, 2);
            }
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.consecutive_success = hc.consecutive_success;
            check.consecutive_failure = hc.consecutive_failure;
            check.health_changed_callback = Some(reporter);
            Box::new(check)
        }
        HealthCheckKind::Tcp => {
            let mut peer = BasicPeer::new("0.0.0.0:1");
            peer.options.connection_timeout = Some(hc.timeout);
            Box::new(TcpCheck {
                peer,
                consecutive_success: hc.consecutive_success,
                consecutive_failure: hc.consecutive_failure,
                reporter,
            })
        }
    }
}

/// The connector of every TCP check: Pingora's `TcpHealthCheck` builds one per check, each with
/// a TLS context of its own, though a TCP check never speaks TLS.
static TCP_CONNECTOR: LazyLock<TransportConnector> =
    LazyLock::new(|| TransportConnector::new(Some(pingora::connectors::ConnectorOptions::new(1))));

/// A backend is healthy when a TCP connection to it opens within the timeout.
struct TcpCheck {
    /// The timeout; the address is each backend's.
    peer: BasicPeer,
    consecutive_success: usize,
    consecutive_failure: usize,
    reporter: HealthObserveCallback,
}

#[async_trait]
impl HealthCheck for TcpCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let mut peer = self.peer.clone();
        peer._address = target.addr.clone();
        TCP_CONNECTOR.get_stream(&peer).await.map(|_| ())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.reporter.observe(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.consecutive_success
        } else {
            self.consecutive_failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;

    fn backend(failures: u32) -> (Backend, UpstreamConfig) {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
        let yaml = format!(
            "gateway: {{upstreams: {{g: {{backends: ['127.0.0.1:1'], passive: {{failures: {failures}, open_ms: 10000}}}}}}}}"
        );
        let cfg = crate::config::Config::from_yaml(&yaml, &env, crate::config::LoadMode::Run)
            .expect("test config");
        let up = cfg.upstreams["g"].clone();
        let mut b = Backend {
            addr: PingoraAddr::Inet(up.backends[0]),
            weight: 1,
            ext: Default::default(),
        };
        b.ext.insert(PassiveHealth::new(&up, Instant::now()));
        b.ext.insert(InFlight::default());
        (b, up)
    }

    #[test]
    fn a_try_is_reported_once_whatever_the_phases_say() {
        let (b, _) = backend(2);
        let now = Instant::now();
        for _ in 0..5 {
            let mut t = BackendTry::default();
            t.start(b.clone());
            t.succeeded(now);
            // Later phases that still see the try as failed change nothing.
            t.failed(now);
            t.failed(now);
            assert!(matches!(t, BackendTry::Reported(_)));
            assert_eq!(InFlight::of(&b), 0, "nothing left in flight");
        }
        assert!(
            PassiveHealth::admits(&b, "g", now),
            "only successes counted"
        );
        let mut t = BackendTry::default();
        t.start(b.clone());
        t.failed(now);
        t.start(b.clone());
        t.failed(now);
        assert!(
            !PassiveHealth::admits(&b, "g", now),
            "two tries, two failures: out"
        );
        assert!(PassiveHealth::admits(
            &b,
            "g",
            now + std::time::Duration::from_secs(10)
        ));
        let mut idle = BackendTry::default();
        idle.failed(now);
        assert!(idle.backend().is_none(), "no backend, nothing reported");
    }
}
