//! When an issuer's key set is fetched again: the policy alone, with time passed in, so that
//! rotation, floods of unknown `kid`s and a provider that is down are all unit-tested without
//! waiting. The fetching itself (HTTP, single flight) lives with the provider.
//!
//! - A token with an unknown `kid` may trigger a refresh, at most once per `min_interval`
//!   (or join the one in progress); otherwise it is refused at once, so a flood of random
//!   `kid`s costs one fetch per interval and no memory.
//! - In the background the set is refreshed at the provider's `max-age`, clamped to
//!   [`min_interval`, `max_age`] (the caller adds jitter).
//! - When fetches fail, the last good set is used until `max_stale` after it was fetched.

use std::time::Duration;

/// The `refresh` settings of one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshPolicy {
    /// Fetches happen at most this often, whatever asks for them.
    pub(crate) min_interval: Duration,
    /// The longest a fetched set is kept before a background refresh.
    pub(crate) max_age: Duration,
    /// How long the last good set is used while fetches fail.
    pub(crate) max_stale: Duration,
}

/// The fetch history of one issuer's set. Times are offsets from any fixed origin.
#[derive(Debug, Default)]
pub(crate) struct RefreshState {
    /// When the set in use was fetched.
    fetched_at: Option<Duration>,
    /// When the last fetch (good or bad) started.
    attempted_at: Option<Duration>,
    /// When the last fetch (good or bad) ended.
    finished_at: Option<Duration>,
    /// A fetch has started and not ended: tokens with a new `kid` wait for it instead of
    /// being refused (the rotation that triggered it is why they are here).
    in_flight: bool,
}

impl RefreshState {
    fn may_fetch(&self, policy: &RefreshPolicy, now: Duration) -> bool {
        self.attempted_at
            .is_none_or(|t| now.saturating_sub(t) >= policy.min_interval)
    }

    /// Whether a caller that lacks a key may ask for a fetch at `now`: one is in progress (it
    /// joins it) or the last one started at least `min_interval` ago.
    pub(crate) fn should_refresh(&self, policy: &RefreshPolicy, now: Duration) -> bool {
        self.in_flight || self.may_fetch(policy, now)
    }

    /// How long from `now` until a fetch may start (zero: now, or one is running).
    pub(crate) fn until_fetch_allowed(&self, policy: &RefreshPolicy, now: Duration) -> Duration {
        if self.in_flight {
            return Duration::ZERO;
        }
        self.attempted_at.map_or(Duration::ZERO, |t| {
            (t + policy.min_interval).saturating_sub(now)
        })
    }

    /// Whether a fetch has started and not ended.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Whether a set was ever fetched (readiness; staleness is [`RefreshState::usable`]).
    pub(crate) fn loaded(&self) -> bool {
        self.fetched_at.is_some()
    }

    /// A fetch starts at `now`.
    pub(crate) fn fetching(&mut self, now: Duration) {
        self.attempted_at = Some(now);
        self.in_flight = true;
    }

    /// A fetch ended without a usable set at `now`.
    pub(crate) fn failed(&mut self, now: Duration) {
        self.finished_at = Some(now);
        self.in_flight = false;
    }

    /// Whether a fetch (good or bad) ended at or after `t`: a caller that asked at `t` while
    /// it ran takes its outcome instead of fetching again.
    pub(crate) fn finished_since(&self, t: Duration) -> bool {
        self.finished_at.is_some_and(|f| f >= t)
    }

    /// A good set arrived at `now`.
    pub(crate) fn fetched(&mut self, now: Duration) {
        self.fetched_at = Some(now);
        self.finished_at = Some(now);
        self.in_flight = false;
    }

    /// Whether a good fetch finished at or after `t` (a caller that asked at `t` has its
    /// answer).
    pub(crate) fn fetched_since(&self, t: Duration) -> bool {
        self.fetched_at.is_some_and(|f| f >= t)
    }

    /// How old the set in use is at `now` (`None`: never fetched).
    pub(crate) fn age(&self, now: Duration) -> Option<Duration> {
        self.fetched_at.map(|f| now.saturating_sub(f))
    }

    /// Whether the set fetched earlier may still be used at `now`.
    pub(crate) fn usable(&self, policy: &RefreshPolicy, now: Duration) -> bool {
        self.fetched_at
            .is_some_and(|t| now.saturating_sub(t) <= policy.max_stale)
    }

    /// When the next background refresh is due, given the provider's `max-age` (if any).
    pub(crate) fn next_refresh(
        &self,
        policy: &RefreshPolicy,
        provider_max_age: Option<Duration>,
        now: Duration,
    ) -> Duration {
        // A provider that says nothing about caching is asked again at least every five
        // minutes: the keys it withdraws must not stay trusted for an hour.
        let age = provider_max_age
            .unwrap_or(policy.max_age.min(SILENT_PROVIDER_MAX_AGE))
            .clamp(policy.min_interval, policy.max_age.max(policy.min_interval));
        let from = self.attempted_at.unwrap_or(now);
        from + age
    }
}

/// How long a key set fetched without `Cache-Control: max-age` is kept at most.
pub(crate) const SILENT_PROVIDER_MAX_AGE: Duration = Duration::from_secs(300);

/// `max-age` of a `Cache-Control` header value, if any.
pub(crate) fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            min_interval: S(10),
            max_age: S(3600),
            max_stale: S(86_400),
        }
    }

    #[test]
    fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
        let p = policy();
        let mut st = RefreshState::default();
        assert!(st.should_refresh(&p, S(0)));
        st.fetching(S(0));
        st.fetched(S(0));
        let mut fetches = 1;
        // 5,000 random kids over 20 s: refused without a fetch except once per interval.
        for i in 0..5000u64 {
            let now = Duration::from_millis(i * 4);
            if st.should_refresh(&p, now) {
                st.fetching(now);
                st.fetched(now);
                fetches += 1;
            }
        }
        assert_eq!(fetches, 2, "at 0 s and 10 s");
    }

    #[test]
    fn a_kid_unknown_after_a_refresh_is_refused_until_the_next_one() {
        let p = policy();
        let mut st = RefreshState::default();
        st.fetching(S(100));
        st.fetched(S(100));
        assert!(
            !st.should_refresh(&p, S(101)),
            "refused: refreshed too recently"
        );
        assert!(
            st.should_refresh(&p, S(110)),
            "asked again once the interval is over"
        );
    }

    #[test]
    fn a_new_kid_during_a_fetch_waits_for_it_instead_of_being_refused() {
        let p = policy();
        let mut st = RefreshState::default();
        st.fetching(S(0));
        st.fetched(S(0));
        st.fetching(S(20));
        assert!(st.should_refresh(&p, S(20)), "joins");
        st.failed(S(21));
        assert!(st.finished_since(S(20)) && !st.fetched_since(S(20)));
        assert!(!st.should_refresh(&p, S(22)), "interval");
    }

    #[test]
    fn the_last_good_set_serves_until_it_is_too_stale() {
        let p = RefreshPolicy {
            max_stale: S(60),
            ..policy()
        };
        let mut st = RefreshState::default();
        assert!(!st.usable(&p, S(0)), "nothing fetched yet");
        st.fetching(S(0));
        st.fetched(S(0));
        st.fetching(S(30));
        st.failed(S(31));
        assert!(st.usable(&p, S(60)));
        assert!(!st.usable(&p, S(61)));
        st.fetching(S(70));
        st.fetched(S(70));
        assert!(st.usable(&p, S(71)), "back without a restart");
    }

    #[test]
    fn background_refresh_follows_max_age_within_bounds() {
        let p = policy();
        let mut st = RefreshState::default();
        st.fetching(S(0));
        assert_eq!(st.next_refresh(&p, Some(S(300)), S(0)), S(300));
        assert_eq!(
            st.next_refresh(&p, Some(S(1)), S(0)),
            S(10),
            "at least min_interval"
        );
        assert_eq!(
            st.next_refresh(&p, Some(S(999_999)), S(0)),
            S(3600),
            "at most max_age"
        );
        assert_eq!(
            st.next_refresh(&p, None, S(0)),
            S(300),
            "a provider silent about caching is asked again within five minutes"
        );
        let short = RefreshPolicy {
            max_age: S(60),
            ..policy()
        };
        assert_eq!(st.next_refresh(&short, None, S(0)), S(60));
        st.fetching(S(100));
        assert_eq!(
            st.until_fetch_allowed(&p, S(101)),
            S(0),
            "one runs: join it"
        );
        st.fetched(S(102));
        assert_eq!(st.until_fetch_allowed(&p, S(104)), S(6));
        assert_eq!(st.until_fetch_allowed(&p, S(120)), S(0));
        assert_eq!(max_age("public, max-age=300"), Some(S(300)));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=x"), None);
    }
}
