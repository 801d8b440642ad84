//! Circuit breaker and retry policy: pure state machines over an injected clock.
//!
//! Callers pass `now` into every method, so the same code runs on the real clock in the gateway
//! and on hand-made instants in the tests, which are exact and take no wall time.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's externally visible state (also the `circuit_breaker_state` gauge value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed = 0,
    /// Calls fail fast until the open period ends.
    Open = 1,
    /// One probe is allowed through; its outcome decides.
    HalfOpen = 2,
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: this caller is the single probe.
    Probe,
    /// Open, or half-open with the probe already out: fail fast.
    Rejected,
}

impl Admission {
    /// Whether the call may proceed.
    pub fn is_allowed(self) -> bool {
        !matches!(self, Admission::Rejected)
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Instant,
    /// When the half-open probe was handed out; a probe that never reports back (its caller was
    /// cancelled) is given up after one open period so the breaker cannot stick half-open.
    probe_started: Option<Instant>,
}

/// A consecutive-failures circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    /// Mirror of `inner.state` so the closed fast path takes no lock.
    state_hint: AtomicU8,
    inner: Mutex<Inner>,
}

/// A state change worth logging and exporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive failures for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration, now: Instant) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open_for,
            state_hint: AtomicU8::new(BreakerState::Closed as u8),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                open_until: now,
                probe_started: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than losing the breaker, so recover the guard instead of propagating.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, inner: &mut Inner, to: BreakerState) -> Option<Transition> {
        let from = inner.state;
        inner.state = to;
        self.state_hint.store(to as u8, Ordering::Relaxed);
        (from != to).then_some(Transition { from, to })
    }

    /// The current state, as of `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open if now >= inner.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Asks whether a call may go out now; the returned transition (open → half-open) is for logs.
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        if self.state_hint.load(Ordering::Relaxed) == BreakerState::Closed as u8 {
            return (Admission::Allowed, None);
        }
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open if now < inner.open_until => (Admission::Rejected, None),
            BreakerState::Open => {
                inner.probe_started = Some(now);
                let t = self.set(&mut inner, BreakerState::HalfOpen);
                (Admission::Probe, t)
            }
            BreakerState::HalfOpen => match inner.probe_started {
                Some(started) if now < started + self.open_for => (Admission::Rejected, None),
                _ => {
                    inner.probe_started = Some(now);
                    (Admission::Probe, None)
                }
            },
        }
    }

    /// Reports a successful call.
    pub fn on_success(&self, _now: Instant) -> Option<Transition> {
        if self.state_hint.load(Ordering::Relaxed) == BreakerState::Closed as u8 {
            let mut inner = self.lock();
            inner.consecutive_failures = 0;
            return None;
        }
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.probe_started = None;
        self.set(&mut inner, BreakerState::Closed)
    }

    /// Reports a failed call.
    pub fn on_failure(&self, now: Instant) -> Option<Transition> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.failure_threshold {
                    inner.open_until = now + self.open_for;
                    self.set(&mut inner, BreakerState::Open)
                } else {
                    None
                }
            }
            BreakerState::HalfOpen => {
                inner.probe_started = None;
                inner.open_until = now + self.open_for;
                self.set(&mut inner, BreakerState::Open)
            }
            // A straggler that was admitted before the breaker opened: the open period stands.
            BreakerState::Open => None,
        }
    }
}

/// Whether a failed attempt may be retried, read from its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect: nothing reached the service.
    Connect,
    /// The attempt ran out of time.
    Timeout,
    /// The service answered 5xx.
    ServerError,
    /// The service answered 4xx: the request itself is wrong, a retry repeats the answer.
    ClientError,
    /// The body was not what the contract says (not JSON, too large).
    BadBody,
}

impl FailureKind {
    /// Connect errors, timeouts and 5xx are transient; 4xx and bad bodies are not.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Connect | FailureKind::Timeout | FailureKind::ServerError
        )
    }

    /// Whether the failure counts against the service's breaker (a 4xx is the caller's fault).
    pub fn counts_for_breaker(self) -> bool {
        !matches!(self, FailureKind::ClientError)
    }
}

/// Bounded retries with a fixed pause, cut short by a deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    /// Pause between tries.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// After try number `attempt` (1-based) failed with `kind`, when (if ever) to try again.
    ///
    /// Returns `None` when the failure is not retryable, the tries are used up, or the next try
    /// could not start before `deadline`.
    pub fn next_attempt_at(
        &self,
        attempt: u32,
        kind: FailureKind,
        now: Instant,
        deadline: Instant,
    ) -> Option<Instant> {
        if !kind.is_retryable() || attempt >= self.attempts {
            return None;
        }
        let at = now + self.backoff;
        (at < deadline).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(10);

    fn breaker(t0: Instant) -> CircuitBreaker {
        CircuitBreaker::new(3, OPEN, t0)
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let b = breaker(t0);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_success(t0), None, "a success resets the count");
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(
            b.on_failure(t0),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.admit(t0).0, Admission::Rejected);
        assert_eq!(
            b.admit(t0 + OPEN - Duration::from_millis(1)).0,
            Admission::Rejected
        );
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let t0 = Instant::now();
        let b = breaker(t0);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + OPEN;
        let (a, t) = b.admit(t1);
        assert_eq!(a, Admission::Probe);
        assert_eq!(t.map(|t| t.to), Some(BreakerState::HalfOpen));
        // Concurrent callers while the probe is out fail fast.
        for _ in 0..10 {
            assert_eq!(b.admit(t1).0, Admission::Rejected);
        }
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes_and_failure_reopens() {
        let t0 = Instant::now();
        let b = breaker(t0);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + OPEN;
        assert_eq!(b.admit(t1).0, Admission::Probe);
        assert_eq!(b.on_failure(t1).map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(b.admit(t1 + OPEN / 2).0, Admission::Rejected);
        let t2 = t1 + OPEN;
        assert_eq!(b.admit(t2).0, Admission::Probe);
        assert_eq!(b.on_success(t2).map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.admit(t2).0, Admission::Allowed);
        // Closed again with a fresh count: it takes three more failures to open.
        b.on_failure(t2);
        b.on_failure(t2);
        assert_eq!(b.admit(t2).0, Admission::Allowed);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_one_open_period() {
        let t0 = Instant::now();
        let b = breaker(t0);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert_eq!(b.admit(t0 + OPEN).0, Admission::Probe);
        assert_eq!(
            b.admit(t0 + OPEN * 2 - Duration::from_millis(1)).0,
            Admission::Rejected
        );
        assert_eq!(b.admit(t0 + OPEN * 2).0, Admission::Probe);
    }

    #[test]
    fn single_probe_under_real_concurrency() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(breaker(t0));
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + OPEN;
        let probes: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter(|_| b.admit(t1).0 == Admission::Probe)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(probes, 1);
    }

    #[test]
    fn retry_policy_follows_cause_count_and_deadline() {
        let p = RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(500),
        };
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60);
        let half = Duration::from_millis(500);
        assert_eq!(
            p.next_attempt_at(1, FailureKind::ServerError, t0, far),
            Some(t0 + half)
        );
        assert_eq!(
            p.next_attempt_at(2, FailureKind::Timeout, t0, far),
            Some(t0 + half)
        );
        assert_eq!(
            p.next_attempt_at(3, FailureKind::Connect, t0, far),
            None,
            "tries used up"
        );
        assert_eq!(
            p.next_attempt_at(1, FailureKind::ClientError, t0, far),
            None
        );
        assert_eq!(p.next_attempt_at(1, FailureKind::BadBody, t0, far), None);
        assert_eq!(
            p.next_attempt_at(1, FailureKind::ServerError, t0, t0 + half),
            None,
            "would start at the deadline"
        );
    }
}
