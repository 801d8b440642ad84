//! Clients of the aggregates' services: one pooled HTTP client, per-attempt timeouts,
//! retries read from the failure's cause, and a circuit breaker per service.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Expect, ServiceConfig};
use crate::headers;
use crate::metrics;
use crate::resilience::{
    Admission, BreakerState, CircuitBreaker, FailureKind, RetryBudget, RetryPolicy, Transition,
};
use crate::trace::{Attempt, Parent, Propagated};
use opentelemetry::KeyValue;

/// Why a service call produced no document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The service answered 404: the resource does not exist.
    NotFound,
    /// The breaker was open: not tried at all.
    BreakerOpen,
    /// The last attempt failed this way (after any retries).
    Failed(FailureKind),
}

/// One dependency service.
pub struct ServiceClient {
    config: ServiceConfig,
    http: reqwest::Client,
    breaker: CircuitBreaker,
    retry: RetryPolicy,
    budget: RetryBudget,
}

impl ServiceClient {
    /// The service's settings, for a reload deciding whether this client can stay.
    pub(crate) fn config(&self) -> &ServiceConfig {
        &self.config
    }
}

/// Builds a pooled HTTP client, shared by every service with this connect timeout (reqwest
/// sets it per client, not per request).
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    crate::trust::http_client_builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Where one call's attempt spans hang, and what they say about the leg.
pub(crate) struct CallTrace<'a> {
    /// The request's SERVER span.
    pub(crate) parent: &'a Parent,
    /// The leg's name.
    pub(crate) leg: &'a str,
    /// The item's index on a `for_each` leg.
    pub(crate) item: Option<usize>,
}

impl CallTrace<'_> {
    fn attempt(&self, service: &str, url: &str, attempt: u32, breaker: &'static str) -> Attempt {
        self.parent.client(
            || format!("GET {}", self.leg),
            || {
                let mut v = vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("url.full", url.to_string()),
                    KeyValue::new("gateway.leg", self.leg.to_string()),
                    KeyValue::new("gateway.service", service.to_string()),
                    KeyValue::new("gateway.attempt", i64::from(attempt)),
                    KeyValue::new("http.request.resend_count", i64::from(attempt - 1)),
                    KeyValue::new("gateway.breaker.state", breaker),
                ];
                if let Some(i) = self.item {
                    v.push(KeyValue::new("gateway.item", i as i64));
                }
                v
            },
        )
    }
}

/// The breaker's state as one call saw it.
fn breaker_label(a: Admission) -> &'static str {
    match a {
        Admission::Allowed => "closed",
        Admission::Probe => "half_open",
        Admission::Rejected => "open",
    }
}

/// One attempt's failure, before retry policy: `NotFound` is an answer, not a failure.
enum AttemptError {
    NotFound,
    Failed(FailureKind),
}

impl ServiceClient {
    /// A client for one configured service.
    pub fn new(config: ServiceConfig, http: reqwest::Client, now: Instant) -> ServiceClient {
        metrics::BREAKER_STATE
            .with_label_values(&[config.name.as_str()])
            .set(0);
        ServiceClient {
            breaker: CircuitBreaker::new(config.breaker_failures, config.breaker_open, now),
            retry: RetryPolicy {
                attempts: config.retry_attempts,
                backoff: config.retry_backoff,
            },
            budget: RetryBudget::new(
                config.retry_budget_ratio,
                config.retry_budget_min_per_second,
                now,
            ),
            config,
            http,
        }
    }

    /// The largest document the service may send; also the bound on a `for_each` leg's
    /// combined value.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let service = self.config.name.as_str();
        metrics::BREAKER_STATE
            .with_label_values(&[service])
            .set(t.to as i64);
        match t.to {
            BreakerState::Open => {
                tracing::warn!(service, "circuit breaker opened: failing fast")
            }
            BreakerState::HalfOpen => tracing::info!(service, "circuit breaker half-open: probing"),
            BreakerState::Closed => tracing::info!(service, "circuit breaker closed"),
        }
    }

    fn url(&self, path: &str) -> String {
        let base = self.config.url.as_str().trim_end_matches('/');
        format!("{base}{path}")
    }

    /// Fetches `path` from the service, checks its shape is `expect`, retrying within the service's call budget
    /// (`timeout_ms`, every try and pause included) and the request's `deadline`, whichever
    /// ends first. The answer's freshness (`Cache-Control`, in seconds: 0 for `no-store`,
    /// `private` or `no-cache`) lowers `fresh` when lower.
    pub async fn fetch(
        &self,
        path: &str,
        expect: Expect,
        request_id: &str,
        deadline: Instant,
        trace: Option<&CallTrace<'_>>,
        fresh: &std::sync::atomic::AtomicU64,
    ) -> Result<Bytes, CallError> {
        let url = self.url(path);
        let started = Instant::now();
        let deadline = deadline.min(started + self.config.timeout);
        self.budget.deposit(started);
        let service = self.config.name.as_str();
        let mut last: Option<FailureKind> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let now = Instant::now();
            let (admission, t) = self.breaker.admit(now);
            self.note(t);
            let mut span =
                trace.map(|t| t.attempt(service, &url, attempt, breaker_label(admission)));
            if admission == Admission::Rejected {
                if let Some(s) = span {
                    s.end("breaker_open");
                }
                metrics::UPSTREAM_REQUESTS
                    .with_label_values(&[service, "breaker_open"])
                    .inc();
                return Err(last
                    .map(CallError::Failed)
                    .unwrap_or(CallError::BreakerOpen));
            }
            let budget = deadline.saturating_duration_since(now);
            let result = if budget.is_zero() {
                Err(AttemptError::Failed(FailureKind::Timeout))
            } else {
                let propagated = span.as_ref().map(Attempt::propagated);
                let call = self.attempt(&url, expect, request_id, propagated);
                tokio::time::timeout(budget, call)
                    .await
                    .unwrap_or(Err(AttemptError::Failed(FailureKind::Timeout)))
            };
            let done = Instant::now();
            metrics::UPSTREAM_DURATION
                .with_label_values(&[service])
                .observe((done - now).as_secs_f64());
            let kind = match result {
                Ok((body, secs)) => {
                    fresh.fetch_min(secs, std::sync::atomic::Ordering::Relaxed);
                    self.note(self.breaker.on_success(done));
                    metrics::UPSTREAM_REQUESTS
                        .with_label_values(&[service, "success"])
                        .inc();
                    if let Some(s) = span {
                        s.end("success");
                    }
                    return Ok(body);
                }
                Err(AttemptError::NotFound) => {
                    // A 404 is the service working correctly.
                    self.note(self.breaker.on_success(done));
                    metrics::UPSTREAM_REQUESTS
                        .with_label_values(&[service, "not_found"])
                        .inc();
                    if let Some(s) = span {
                        s.end("not_found");
                    }
                    return Err(CallError::NotFound);
                }
                Err(AttemptError::Failed(kind)) => kind,
            };
            metrics::UPSTREAM_REQUESTS
                .with_label_values(&[service, kind.label()])
                .inc();
            if kind.counts_for_breaker() {
                self.note(self.breaker.on_failure(done));
            } else {
                self.note(self.breaker.on_success(done));
            }
            last = Some(kind);
            let next = self
                .retry
                .next_attempt_at(attempt, kind, done, deadline, rand::random::<f64>())
                .filter(|_| self.budget.try_withdraw(done));
            if let (Some(s), Some(at)) = (&mut span, next) {
                // The pause before the next attempt: the gap between the spans, said here.
                let pause = at.saturating_duration_since(done);
                s.event("retry_backoff", || {
                    vec![KeyValue::new(
                        "gateway.backoff_ms",
                        pause.as_millis() as i64,
                    )]
                });
            }
            if let Some(s) = span.take() {
                s.end(kind.label());
            }
            match next {
                Some(at) => {
                    metrics::UPSTREAM_RETRIES
                        .with_label_values(&[service])
                        .inc();
                    tokio::time::sleep_until(at.into()).await;
                }
                None => return Err(CallError::Failed(kind)),
            }
        }
    }

    async fn attempt(
        &self,
        url: &str,
        expect: Expect,
        request_id: &str,
        trace: Option<Propagated>,
    ) -> Result<(Bytes, u64), AttemptError> {
        let mut req = self
            .http
            .get(url)
            .header(headers::X_REQUEST_ID, request_id)
            .header("Accept", "application/json");
        for (name, value) in trace.into_iter().flat_map(Propagated::into_pairs) {
            req = req.header(name, value);
        }
        let mut resp = req.send().await.map_err(|e| {
            AttemptError::Failed(if e.is_timeout() {
                FailureKind::Timeout
            } else {
                FailureKind::Connect
            })
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(AttemptError::NotFound);
        }
        if status.is_server_error() {
            return Err(AttemptError::Failed(FailureKind::ServerError));
        }
        if !status.is_success() {
            return Err(AttemptError::Failed(FailureKind::ClientError));
        }
        let secs = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(u64::MAX, freshness);
        let max = self.config.max_body_bytes;
        if resp.content_length().is_some_and(|n| n as usize > max) {
            return Err(AttemptError::Failed(FailureKind::BadBody));
        }
        let mut body = BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        return Err(AttemptError::Failed(FailureKind::BadBody));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(AttemptError::Failed(FailureKind::Timeout)),
                // The connection broke mid-body: transient, like a 5xx.
                Err(_) => return Err(AttemptError::Failed(FailureKind::ServerError)),
            }
        }
        let body = body.freeze();
        if has_shape(&body, expect) {
            Ok((body, secs))
        } else {
            Err(AttemptError::Failed(FailureKind::BadBody))
        }
    }
}

/// Whether `body` is valid JSON of the expected top-level shape.
pub fn has_shape(body: &[u8], expect: Expect) -> bool {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return false;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    matches!(
        (first, expect),
        (Some(b'{'), Expect::Object) | (Some(b'['), Expect::Array) | (Some(_), Expect::Any)
    )
}

/// How long a `Cache-Control` value lets the gateway keep an answer, in seconds: 0 for
/// `no-store`, `private` or `no-cache`; `s-maxage` (a shared cache's) over `max-age`;
/// `u64::MAX` when it says nothing about it.
pub(crate) fn freshness(cache_control: &str) -> u64 {
    let (mut max_age, mut s_maxage) = (None, None);
    for d in cache_control.split(',') {
        let d = d.trim().to_ascii_lowercase();
        match d.split_once('=') {
            None if ["no-store", "private", "no-cache"].contains(&d.as_str()) => return 0,
            Some(("max-age", v)) => max_age = v.trim_matches('"').parse::<u64>().ok(),
            Some(("s-maxage", v)) => s_maxage = v.trim_matches('"').parse::<u64>().ok(),
            Some(("private" | "no-cache", _)) => return 0,
            _ => {}
        }
    }
    s_maxage.or(max_age).unwrap_or(u64::MAX)
}

impl crate::rebuild::Rebuild for ServiceClient {
    type Settings = ServiceConfig;
    fn settings(&self) -> &ServiceConfig {
        self.config()
    }
}

/// Creates a service's call series at 0: its retries and its successful attempts (the
/// failure outcomes appear with their first occurrence).
pub(crate) fn prime(service: &str) {
    metrics::UPSTREAM_RETRIES.with_label_values(&[service]);
    metrics::UPSTREAM_REQUESTS.with_label_values(&[service, "success"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        assert!(has_shape(br#" {"id":"1"}"#, Expect::Object));
        assert!(!has_shape(br#"[1]"#, Expect::Object));
        assert!(has_shape(br#"[]"#, Expect::Array));
        assert!(has_shape(br#"42"#, Expect::Any));
        assert!(!has_shape(br#"{"id": 1, oops"#, Expect::Object));
        assert!(!has_shape(b"<html></html>", Expect::Array));
        assert!(!has_shape(b"", Expect::Any));
    }

    #[test]
    fn services_say_how_long_their_answers_keep() {
        assert_eq!(freshness("max-age=5"), 5);
        assert_eq!(freshness("public, max-age=60, s-maxage=10"), 10);
        assert_eq!(freshness("Max-Age=\"7\""), 7);
        for none in [
            "no-store",
            "private",
            "no-cache",
            "private=\"x\", max-age=60",
            "max-age=60, NO-STORE",
        ] {
            assert_eq!(freshness(none), 0, "{none}");
        }
        assert_eq!(freshness("public"), u64::MAX);
        assert_eq!(freshness("max-age=soon"), u64::MAX);
    }
}
