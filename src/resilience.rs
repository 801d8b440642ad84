//! Circuit breaker and retry policy: pure state machines over an injected clock.
//!
//! Callers pass `now` into every method, so the same code runs on the real clock in the gateway
//! and on hand-made instants in the tests, which are exact and take no wall time.
//!
//! Three machines: the breaker, the retry policy and the retry budget.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
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

    /// The `upstream_requests_total{outcome}` label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect_error",
            FailureKind::Timeout => "timeout",
            FailureKind::ServerError => "server_error",
            FailureKind::ClientError => "client_error",
            FailureKind::BadBody => "bad_body",
        }
    }
}

/// Bounded retries with a jittered pause, cut short by a deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    /// Mean pause between tries.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// After try number `attempt` (1-based) failed with `kind`, when (if ever) to try again.
    ///
    /// `jitter` in `[0, 1)` (the caller's random draw) spreads the pause over
    /// `[backoff / 2, backoff * 3 / 2)`, so that callers failing together do not retry in
    /// lock-step. Returns `None` when the failure is not retryable, the tries are used up, or
    /// the next try could not start before `deadline`.
    pub fn next_attempt_at(
        &self,
        attempt: u32,
        kind: FailureKind,
        now: Instant,
        deadline: Instant,
        jitter: f64,
    ) -> Option<Instant> {
        if !kind.is_retryable() || attempt >= self.attempts {
            return None;
        }
        let at = now + self.backoff.mul_f64(0.5 + jitter.clamp(0.0, 1.0));
        (at < deadline).then_some(at)
    }
}

/// A retry budget (as in Finagle): every request deposits `ratio` tokens, every retry withdraws
/// one, and `min_per_second` tokens accrue with time; so when a service fails everything,
/// retries add at most about `ratio` extra load instead of multiplying it.
#[derive(Debug)]
pub struct RetryBudget {
    /// Deposit per request, in thousandths of a token (integers keep the accounting exact).
    deposit_milli: i64,
    /// Floor refill per second, in thousandths of a token.
    floor_milli_per_sec: i64,
    cap_milli: i64,
    /// Balance in thousandths of a token, and the time of the last refill.
    state: Mutex<(i64, Instant)>,
}

const TOKEN: i64 = 1000;

impl RetryBudget {
    /// A budget holding ten seconds' worth of the floor as of `now`.
    pub fn new(ratio: f64, min_per_second: f64, now: Instant) -> Self {
        let floor = (min_per_second * TOKEN as f64).round() as i64;
        // The balance may bank ten seconds' worth of the floor, and never less than ten retries.
        let cap = (floor * 10).max(10 * TOKEN);
        RetryBudget {
            deposit_milli: (ratio * TOKEN as f64).round() as i64,
            floor_milli_per_sec: floor,
            cap_milli: cap,
            state: Mutex::new((floor * 10, now)),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, (i64, Instant)> {
        self.state.lock()
    }

    fn refill(&self, state: &mut (i64, Instant), now: Instant) {
        let elapsed_ms = now.saturating_duration_since(state.1).as_millis() as i64;
        let earned = elapsed_ms * self.floor_milli_per_sec / 1000;
        if earned > 0 {
            state.0 = (state.0 + earned).min(self.cap_milli);
            state.1 = now;
        } else if state.1 > now {
            state.1 = now;
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self, now: Instant) {
        let mut st = self.lock();
        self.refill(&mut st, now);
        st.0 = (st.0 + self.deposit_milli).min(self.cap_milli);
    }

    /// Takes one retry token if there is one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut st = self.lock();
        self.refill(&mut st, now);
        if st.0 >= TOKEN {
            st.0 -= TOKEN;
            true
        } else {
            false
        }
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
        let ms = Duration::from_millis;
        let next = |attempt, kind, deadline, jitter| {
            p.next_attempt_at(attempt, kind, t0, deadline, jitter)
        };
        assert_eq!(
            next(1, FailureKind::ServerError, far, 0.5),
            Some(t0 + ms(500))
        );
        assert_eq!(
            next(2, FailureKind::Timeout, far, 0.0),
            Some(t0 + ms(250)),
            "jitter low end"
        );
        assert_eq!(
            next(2, FailureKind::Timeout, far, 1.0),
            Some(t0 + ms(750)),
            "jitter high end"
        );
        assert_eq!(
            next(3, FailureKind::Connect, far, 0.5),
            None,
            "tries used up"
        );
        assert_eq!(next(1, FailureKind::ClientError, far, 0.5), None);
        assert_eq!(next(1, FailureKind::BadBody, far, 0.5), None);
        assert_eq!(
            next(1, FailureKind::ServerError, t0 + ms(500), 0.5),
            None,
            "would start at the deadline"
        );
    }

    #[test]
    fn retry_budget_caps_retries_at_the_ratio() {
        let t0 = Instant::now();
        // No floor: only deposits pay for retries.
        let b = RetryBudget::new(0.2, 0.0, t0);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit(t0);
            // Every request fails and wants two retries.
            for _ in 0..2 {
                if b.try_withdraw(t0) {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 200, "20% of 1000 requests");
    }

    #[test]
    fn retry_budget_floor_refills_with_time() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.0, 10.0, t0);
        let mut n = 0;
        while b.try_withdraw(t0) {
            n += 1;
        }
        assert_eq!(n, 100, "ten seconds' worth banked");
        assert!(!b.try_withdraw(t0));
        assert!(
            b.try_withdraw(t0 + Duration::from_millis(100)),
            "one token after 100 ms"
        );
        assert!(!b.try_withdraw(t0 + Duration::from_millis(100)));
    }
}
