//! One identity provider at run time: its current key set, fetched (through discovery when
//! configured) with a timeout and a body limit, refreshed under the policy of [`refresh`]
//! with one fetch at a time (concurrent askers wait for it and share its result).
//!
//! [`refresh`]: super::refresh

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::jwks::KeySet;
use super::refresh::{max_age, RefreshPolicy, RefreshState};
use crate::config::{IssuerConfig, KeySource};

impl Provider {
    /// Starts keeping this issuer's key set fresh on the current runtime, once: fetched at
    /// start (retried every `min_interval` until it works), then again at the provider's
    /// `max-age` clamped to the configured bounds, with ±10% jitter so replicas do not fetch in
    /// step. The task holds the provider weakly and ends once a reload has dropped it.
    pub(crate) fn start_refresh(self: &Arc<Self>) {
        if self
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        tokio::spawn(keep_fresh(Arc::downgrade(self)));
    }
}

async fn keep_fresh(me: Weak<Provider>) {
    loop {
        let Some(this) = me.upgrade() else { return };
        let wait = match this.refresh().await {
            Ok(_) => {
                let max_age = *this.provider_max_age.lock();
                let due = this
                    .state
                    .lock()
                    .next_refresh(&this.policy(), max_age, this.now());
                due.saturating_sub(this.now())
                    .mul_f64(0.9 + 0.2 * rand::random::<f64>())
            }
            Err(_) => this.config.min_interval,
        };
        let until = tokio::time::Instant::now() + wait.max(this.config.min_interval);
        drop(this);
        // Sleep in steps, so the age gauge stays current and a dropped provider is noticed.
        while tokio::time::Instant::now() < until {
            tokio::time::sleep_until(
                until.min(tokio::time::Instant::now() + Duration::from_secs(5)),
            )
            .await;
            let Some(this) = me.upgrade() else { return };
            let age = this.state.lock().age(this.now());
            if let Some(age) = age {
                crate::metrics::JWKS_AGE
                    .with_label_values(&[this.config.issuer.as_str()])
                    .set(age.as_secs() as i64);
            }
        }
    }
}

/// How long one fetch (discovery and key set together) may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest discovery document or key set accepted.
const MAX_BODY: usize = 1024 * 1024;

/// Requests of one issuer that may wait for its next permitted fetch at once; more are
/// answered 503 (each holds a connection for up to `min_interval`).
const MAX_WAITING: usize = 1024;

/// A request's place in the wait for an issuer's next fetch.
pub(crate) struct WaitSlot<'p>(&'p Provider);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::JWKS_WAITING
            .with_label_values(&[self.0.config.issuer.as_str()])
            .dec();
    }
}

/// One issuer's keys and fetch history.
pub(crate) struct Provider {
    config: IssuerConfig,
    http: reqwest::Client,
    /// Times in [`RefreshState`] are offsets from here.
    origin: Instant,
    set: RwLock<Option<Arc<KeySet>>>,
    state: Mutex<RefreshState>,
    /// The provider's `max-age` from the last good fetch.
    provider_max_age: Mutex<Option<Duration>>,
    /// Held by the one fetch in progress.
    flight: tokio::sync::Mutex<()>,
    /// Added to the clock (tests move time forward instead of waiting).
    skew_ms: std::sync::atomic::AtomicU64,
    /// The last fetch failed (the warning is logged once per streak).
    failing: std::sync::atomic::AtomicBool,
    /// Whether the refresh task runs.
    refreshing: std::sync::atomic::AtomicBool,
    /// The provider clock's millisecond up to which the last good set is usable (0: none).
    usable_until_ms: std::sync::atomic::AtomicU64,
    /// Requests waiting for the next permitted fetch.
    waiting: std::sync::atomic::AtomicUsize,
    /// The discovery document's `introspection_endpoint`, from the last fetch.
    introspection_endpoint: Mutex<Option<url::Url>>,
}

impl Provider {
    /// A provider with no keys yet.
    pub(crate) fn new(config: IssuerConfig, http: reqwest::Client) -> Provider {
        Provider {
            config,
            http,
            origin: Instant::now(),
            set: RwLock::new(None),
            state: Mutex::new(RefreshState::default()),
            provider_max_age: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            skew_ms: std::sync::atomic::AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            usable_until_ms: std::sync::atomic::AtomicU64::new(0),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            introspection_endpoint: Mutex::new(None),
        }
    }

    /// How many requests wait for the next permitted fetch.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Moves this provider's clock forward by `by`.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        self.skew_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The refresh bounds.
    pub(crate) fn policy(&self) -> RefreshPolicy {
        RefreshPolicy {
            min_interval: self.config.min_interval,
            max_age: self.config.max_age,
            max_stale: self.config.max_stale,
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
            + Duration::from_millis(self.skew_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The key set, if one was fetched and is not too stale.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        let usable = self.state.lock().usable(&self.policy(), self.now());
        if usable {
            self.set.read().clone()
        } else {
            None
        }
    }

    /// Whether the keys are still fresh enough to trust (as [`Provider::current`] finds them),
    /// without a lock: asked by every cached issuer token.
    pub(crate) fn keys_usable(&self) -> bool {
        let now = u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX);
        now <= self
            .usable_until_ms
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a request without a usable set may ask for a fetch now (see
    /// [`RefreshState::should_refresh`]): a provider that is down is not asked once per
    /// request.
    pub(crate) fn may_refresh(&self) -> bool {
        self.state.lock().should_refresh(&self.policy(), self.now())
    }

    /// How long until a fetch may start (zero when one may start now or is running).
    pub(crate) fn until_fetch_allowed(&self) -> Duration {
        self.state
            .lock()
            .until_fetch_allowed(&self.policy(), self.now())
    }

    /// A place among the requests waiting for the next permitted fetch, if one is free; the
    /// place is given back when the guard drops.
    pub(crate) fn wait_slot(&self) -> Option<WaitSlot<'_>> {
        use std::sync::atomic::Ordering;
        let taken = self.waiting.fetch_add(1, Ordering::AcqRel);
        if taken >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        crate::metrics::JWKS_WAITING
            .with_label_values(&[self.config.issuer.as_str()])
            .inc();
        Some(WaitSlot(self))
    }

    /// The introspection endpoint the discovery document names, once fetched.
    pub(crate) fn discovered_introspection(&self) -> Option<url::Url> {
        self.introspection_endpoint.lock().clone()
    }

    /// Whether a key set was ever loaded (stale or not).
    pub(crate) fn loaded(&self) -> bool {
        self.state.lock().loaded()
    }

    /// The issuer this provider serves.
    pub(crate) fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Fetches the key set now (unless another fetch finished while this one waited its
    /// turn). A failed or malformed fetch keeps the last good set.
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let asked = self.now();
        let _turn = self.flight.lock().await;
        {
            let state = self.state.lock();
            if state.fetched_since(asked) {
                return Ok(self.set.read().as_ref().map_or(0, |s| s.len()));
            }
            // The fetch this caller waited for failed: one failure per wait, not one fetch
            // per waiter against a provider that is down.
            if state.finished_since(asked) {
                return Err("the fetch in progress failed".into());
            }
        }
        self.state.lock().fetching(self.now());
        // The caller is a request and may go away mid-fetch: the fetch must still end, or
        // later tokens with a new `kid` would keep waiting for a fetch nobody runs.
        let ended = scopeguard::guard((), |()| self.state.lock().failed(self.now()));
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        scopeguard::ScopeGuard::into_inner(ended);
        let issuer = self.config.issuer.as_str();
        crate::metrics::JWKS_REFRESH
            .with_label_values(&[issuer, crate::metrics::Outcome::of(&fetched).label()])
            .inc();
        let was_failing = self.failing.load(std::sync::atomic::Ordering::Relaxed);
        let (set, provider_max_age) = match fetched {
            Ok(f) => f,
            Err(e) => {
                self.state.lock().failed(self.now());
                if !self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    // Once per failure streak (fetches are at most one per interval anyway);
                    // `jwks_refresh_total{result="error"}` counts every one.
                    tracing::warn!(issuer, error = %e, "identity provider keys could not be fetched; the last good set stays in use");
                }
                return Err(e);
            }
        };
        if was_failing {
            self.failing
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                issuer,
                keys = set.len(),
                "identity provider keys loaded again"
            );
        }
        let n = set.len();
        crate::metrics::JWKS_KEYS
            .with_label_values(&[issuer])
            .set(n as i64);
        crate::metrics::JWKS_AGE.with_label_values(&[issuer]).set(0);
        let mut set = set;
        let withdrawn = match self.set.read().as_ref() {
            Some(previous) => set.succeed(previous),
            None => 0,
        };
        if withdrawn > 0 {
            crate::metrics::JWKS_WITHDRAWN
                .with_label_values(&[issuer])
                .inc_by(withdrawn as u64);
            tracing::info!(
                issuer,
                withdrawn,
                keys = n,
                "identity provider withdrew keys; tokens signed with them are refused from now on"
            );
        }
        *self.set.write() = Some(Arc::new(set));
        *self.provider_max_age.lock() = provider_max_age;
        let now = self.now();
        self.state.lock().fetched(now);
        let until = now.saturating_add(self.config.max_stale).as_millis();
        self.usable_until_ms.store(
            u64::try_from(until).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Release,
        );
        Ok(n)
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let jwks_url = match &self.config.keys {
            KeySource::Jwks(u) => u.clone(),
            KeySource::Discovery(doc) => {
                let (body, _) = self.get(doc.as_str()).await?;
                let (jwks, introspection) =
                    discovery_urls(&body, &self.config.issuer, self.config.allow_insecure_http)?;
                *self.introspection_endpoint.lock() = introspection;
                jwks
            }
        };
        let (body, cache_control) = self.get(jwks_url.as_str()).await?;
        let set = KeySet::parse(&body)?;
        Ok((set, cache_control.as_deref().and_then(max_age)))
    }

    /// A GET with the body limit; the body and the `Cache-Control` value.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<String>), String> {
        let mut resp = self
            .http
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let cache_control = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{url}: larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }
}

impl crate::rebuild::Rebuild for Provider {
    type Settings = IssuerConfig;
    fn settings(&self) -> &IssuerConfig {
        self.config()
    }
}

/// Creates an issuer's key-set series: no fetch yet, no keys, never fetched (-1).
pub(crate) fn prime(config: &IssuerConfig) {
    let issuer = config.issuer.as_str();
    for result in crate::metrics::Outcome::ALL {
        crate::metrics::JWKS_REFRESH.with_label_values(&[issuer, result.label()]);
    }
    crate::metrics::JWKS_KEYS
        .with_label_values(&[issuer])
        .set(0);
    crate::metrics::JWKS_AGE
        .with_label_values(&[issuer])
        .set(-1);
    crate::metrics::JWKS_WITHDRAWN.with_label_values(&[issuer]);
    if config.introspection.is_some() {
        for result in ["active", "inactive", "error"] {
            crate::metrics::INTROSPECTION.with_label_values(&[issuer, result]);
        }
    }
    crate::metrics::JWKS_WAITING
        .with_label_values(&[issuer])
        .set(0);
}

/// The key set's URL and, when the document names one, the introspection endpoint's, from an
/// OIDC discovery document `body`: it must name `issuer` (the one configured), and its URLs be
/// https (or http when `insecure_http` allows it).
pub(crate) fn discovery_urls(
    body: &[u8],
    issuer: &str,
    insecure_http: bool,
) -> Result<(url::Url, Option<url::Url>), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("discovery document is not JSON: {e}"))?;
    let named = doc["issuer"].as_str().unwrap_or_default();
    if named != issuer {
        return Err(format!(
            "discovery says issuer `{named}`, configured `{issuer}`"
        ));
    }
    let jwks = url_at(&doc, "jwks_uri", insecure_http)?;
    Ok((
        jwks,
        url_at(&doc, "introspection_endpoint", insecure_http).ok(),
    ))
}

/// The URL at `field` of a discovery document, over https (or http when allowed).
fn url_at(doc: &serde_json::Value, field: &str, insecure_http: bool) -> Result<url::Url, String> {
    let uri = doc[field]
        .as_str()
        .ok_or_else(|| format!("discovery document has no {field}"))?;
    let url = url::Url::parse(uri).map_err(|e| format!("{field} `{uri}`: {e}"))?;
    if url.scheme() != "https" && !(url.scheme() == "http" && insecure_http) {
        return Err(format!("{field} `{uri}` is not https"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ec-1","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

    /// A provider on a free port: discovery (claiming `issuer`) and a JWKS that answers
    /// `jwks` (or 500 when `None`), counting fetches.
    async fn serve(
        issuer_path: &'static str,
        jwks: Arc<Mutex<Option<&'static str>>>,
    ) -> (String, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = format!("{base}{issuer_path}");
        let count = fetches.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get({
                    let base = base.clone();
                    move || {
                        let (issuer, base) = (issuer.clone(), base.clone());
                        async move { axum::Json(serde_json::json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks")})) }
                    }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (jwks, count) = (jwks.clone(), count.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        match *jwks.lock() {
                            Some(body) => (axum::http::StatusCode::OK, [("cache-control", "max-age=60")], body).into_response(),
                            None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, [("cache-control", "no-store")], "down").into_response(),
                        }
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, fetches)
    }

    fn provider(issuer: &str, discovery: bool) -> Provider {
        let yaml = if discovery {
            format!("- {{ issuer: '{issuer}', discovery: true, allow_insecure_http: true, refresh: {{ min_interval_seconds: 1 }} }}")
        } else {
            format!("- {{ issuer: '{issuer}', jwks_uri: '{issuer}/jwks', allow_insecure_http: true, refresh: {{ min_interval_seconds: 1 }} }}")
        };
        let cfg = crate::config::Config::from_yaml(
            &format!(
                "gateway:\n  auth:\n    issuers:\n    {}\n",
                yaml.replace('\n', "\n    ")
            ),
            &|_: &str| None,
            crate::config::LoadMode::Run,
        )
        .unwrap();
        Provider::new(cfg.auth.issuers[0].clone(), reqwest::Client::new())
    }

    #[tokio::test]
    async fn discovery_leads_to_the_key_set_and_concurrent_refreshes_share_one_fetch() {
        let jwks = Arc::new(Mutex::new(Some(JWKS)));
        let (base, fetches) = serve("", jwks.clone()).await;
        let p = Arc::new(provider(&base, true));
        assert!(p.current().is_none(), "nothing before the first fetch");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.refresh().await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(1));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for 20 askers");
        assert_eq!(p.current().map(|s| s.len()), Some(1));
        // The provider goes down: the last good set stays.
        *jwks.lock() = None;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(p.refresh().await.is_err());
        assert!(p.current().is_some());
    }

    #[tokio::test]
    async fn oversized_or_malformed_sets_never_replace_a_good_one() {
        let jwks = Arc::new(Mutex::new(Some(JWKS)));
        let (base, _) = serve("", jwks.clone()).await;
        let p = provider(&base, false);
        assert_eq!(p.refresh().await, Ok(1));
        let huge: &'static str = Box::leak(
            format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(MAX_BODY)).into_boxed_str(),
        );
        for (body, why) in [(huge, "larger than"), ("{\"keys\": 7}", "")] {
            *jwks.lock() = Some(body);
            p.advance(Duration::from_secs(2));
            let e = p.refresh().await.unwrap_err();
            assert!(e.contains(why), "{e}");
            assert_eq!(p.current().map(|s| s.len()), Some(1), "the good set stays");
        }
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_mid_fetch_does_not_leave_it_in_progress() {
        // A key set that never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let p = Arc::new(provider(&base, false));
        let asker = tokio::spawn({
            let p = p.clone();
            async move { p.refresh().await }
        });
        while !p.state.lock().in_flight() {
            tokio::task::yield_now().await;
        }
        assert!(p.may_refresh(), "while it runs, others join it");
        asker.abort();
        let _ = asker.await;
        assert!(!p.state.lock().in_flight());
        assert!(
            !p.may_refresh(),
            "ended: the next fetch waits for min_interval"
        );
    }

    #[tokio::test]
    async fn a_discovery_document_for_another_issuer_is_refused() {
        let (base, fetches) = serve("/other", Arc::new(Mutex::new(Some(JWKS)))).await;
        let p = provider(&base, true);
        let e = p.refresh().await.unwrap_err();
        assert!(e.contains("discovery says issuer"), "{e}");
        assert_eq!(fetches.load(Ordering::SeqCst), 0);
        assert!(p.current().is_none());
    }
}
