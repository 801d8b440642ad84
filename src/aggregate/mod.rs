//! Aggregates: documents the gateway builds from several services, declared in the conf file
//! (`gateway.aggregates`, checked into a plan by `config::aggregates`). Each request runs its
//! aggregate's legs as a dependency graph: a leg starts the moment every leg it depends on has
//! finished, legs with nothing to wait for start at once, and `for_each` legs fan out per
//! item. Object-level authorization, cache-aside and single flight per cache key come first.
//!
//! This file is the front: the declared aggregates built from the config (on a reload, keeping
//! what did not change), route matching, params and authorization.
//! - `cache`: the lookup in front of every build, the writes after it, purges by key or tag.
//! - `flight`: single flight per key.
//! - `graph`: running the plan, fan-out and the document.
//! - `key`: cache keys and the declaration's fingerprint.
//! - [`client`]: the service clients (timeouts, retries, breakers, body checks).
//! - `template`: filling path templates and reading values out of legs' JSON.
//! - `entry`, `local`: the cached entry's format and the in-process tier.
//!
//! This module returns documents and [`GatewayError`]s; `proxy` writes them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared, WeakShared};
use parking_lot::Mutex;

use crate::config::{AggregateConfig, Config, Segment};
use crate::edge::auth::Identity;
use crate::error::GatewayError;
use crate::metrics;
use crate::rebuild::Rebuild;
use crate::store::feed::Direction;
use crate::store::{FeedEvent, Store};
use opentelemetry::trace::SpanContext;

mod cache;
pub(crate) mod client;
mod entry;
mod flight;
mod graph;
mod key;
mod local;
pub(crate) mod template;

use self::client::ServiceClient;
use self::key::Fingerprint;
use self::local::LocalTier;

/// What an operator purged through the admin API (`cache_invalidations_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PurgeKind {
    /// One entry, by its key.
    Key,
    /// Every entry carrying a tag.
    Tag,
}

impl PurgeKind {
    /// Both kinds, for priming.
    pub(crate) const ALL: [PurgeKind; 2] = [PurgeKind::Key, PurgeKind::Tag];

    /// The `kind` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            PurgeKind::Key => "key",
            PurgeKind::Tag => "tag",
        }
    }

    /// Counts `n` entries purged.
    pub(crate) fn count(self, n: u64) {
        metrics::CACHE_INVALIDATIONS
            .with_label_values(&[self.label()])
            .inc_by(n);
    }
}

/// Creates the aggregates' series at 0: purges, and per aggregate its cache results, its
/// in-process tier, and per leg its service's calls and the degraded answers it may cause.
pub(crate) fn prime(aggregates: &[AggregateConfig]) {
    for kind in PurgeKind::ALL {
        metrics::CACHE_INVALIDATIONS.with_label_values(&[kind.label()]);
    }
    for a in aggregates {
        let name = a.name.as_str();
        if let Some(cache) = a.cache.as_ref().filter(|c| !c.ttl.is_zero()) {
            for status in CacheStatus::ALL {
                metrics::CACHE_REQUESTS.with_label_values(&[name, status.label()]);
            }
            if cache.local.is_some() {
                metrics::CACHE_LOCAL_ENTRIES.with_label_values(&[name]);
            }
        }
        for leg in &a.legs {
            client::prime(leg.service.as_str());
            if !leg.required {
                metrics::AGGREGATE_DEGRADED.with_label_values(&[name, leg.name.as_str()]);
            }
        }
    }
}

/// The pooled client for `connect_timeout`, built the first time a service asks for it.
fn pool(
    pools: &mut HashMap<Duration, reqwest::Client>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    if let Some(c) = pools.get(&connect_timeout) {
        return Ok(c.clone());
    }
    let c = client::http_client(connect_timeout)
        .map_err(|e| format!("cannot build the service HTTP client: {e}"))?;
    pools.insert(connect_timeout, c.clone());
    Ok(c)
}

/// How the answer relates to the cache (the `X-Cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache; no upstream call.
    Hit,
    /// Built from the upstreams (also when the cache is disabled).
    Miss,
    /// The store failed or was too slow; built from the upstreams.
    Bypass,
    /// A stale entry, served at once while one rebuild runs in the background.
    Stale,
    /// A stale entry, served because the rebuild failed or degraded.
    StaleError,
}

impl CacheStatus {
    /// The `X-Cache` value, also shown in the access log.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
            CacheStatus::StaleError => "STALE-ERROR",
        }
    }

    /// The `cache_requests_total{result}` label.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Stale => "stale",
            CacheStatus::StaleError => "stale_error",
        }
    }

    /// Every status, for priming the metric.
    pub const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Stale,
        CacheStatus::StaleError,
    ];
}

/// A finished aggregate answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The JSON document.
    pub body: Bytes,
    /// Cache outcome for `X-Cache`.
    pub cache: CacheStatus,
    /// The `Cache-Control` value: `private, max-age=<ttl>` when the answer may be cached.
    pub cache_control: String,
    /// The cache key of a document that is (or would be) cached; `None` for one that is not.
    pub key: Option<String>,
    /// Seconds since a cached document was built (the `Age` header); `None` unless a hit.
    pub age: Option<u64>,
}

/// A document built from the upstreams, shared by every coalesced request.
#[derive(Debug, Clone)]
struct Built {
    body: Bytes,
    degraded: bool,
    /// How long the document may be cached (zero: not at all).
    ttl: std::time::Duration,
}

type BuildFuture = BoxFuture<'static, Result<Built, GatewayError>>;
type Flight = Shared<BuildFuture>;
/// In-flight builds: flight number (so a finished flight removes only itself), a weak handle,
/// and the span of the request that started it (followers link to it).
type Inflight = Mutex<HashMap<String, (u64, WeakShared<BuildFuture>, Option<SpanContext>)>>;

/// Every declared aggregate, ready to answer.
pub struct Aggregates {
    list: Vec<Arc<Aggregate>>,
    /// One client per service the aggregates call, for the next reload to keep.
    clients: HashMap<String, Arc<ServiceClient>>,
    /// The pooled HTTP clients the service clients share, one per connect timeout.
    http: HashMap<Duration, reqwest::Client>,
    store: Arc<Store>,
}

/// A purge as announced to every replica: entries by store key, and by tag.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Invalidation {
    /// Store keys (the rendered key and the declaration's fingerprint).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tags: every entry carrying one is purged.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What a purge did.
#[derive(Debug, Clone, Copy)]
pub struct Purged {
    /// Entries removed from the shared store.
    pub count: u64,
    /// Whether the other replicas were told (false: no Redis, or the announcement failed and
    /// their in-process copies live out their few seconds).
    pub announced: bool,
}

/// One declared aggregate with its clients, cache and in-flight builds.
pub struct Aggregate {
    config: AggregateConfig,
    /// A stable digest of the declaration, appended to cache keys: a changed declaration (a
    /// reload, or replicas on different files) never reads documents of another shape.
    fingerprint: Fingerprint,
    /// The literal start of the path (up to the first param): every path under it is this
    /// aggregate's, and answered 400 when it does not match the pattern.
    prefix: String,
    /// One client per leg (shared per service: one breaker and retry budget per service).
    clients: Vec<Arc<ServiceClient>>,
    /// Whether a leg's value is read by a template, a `for_each` or a field of the response.
    needs_json: Vec<bool>,
    store: Arc<Store>,
    /// In-flight builds by key. Weak, so that when every waiting client has gone the build is
    /// dropped (its upstream calls cancelled) rather than kept alive by this map.
    inflight: Inflight,
    next_flight: AtomicU64,
    /// The in-process tier (`cache.local`), if declared.
    local: Option<LocalTier>,
    /// Moves on every purge this process hears of: a build or a copy that began before one
    /// is not kept, since its data may be what was purged.
    epoch: AtomicU64,
    /// Entries written lately: (when, store key, tags), see [`RECENT_MS`].
    recent: Mutex<VecDeque<(u64, String, Vec<String>)>>,
}

impl Aggregates {
    /// Builds the clients (one shared HTTP pool, one client per service) and each aggregate.
    #[cfg(test)]
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Aggregates, String> {
        Aggregates::build(config, store, None)
    }

    /// As [`Aggregates::new`], keeping from `previous` every service client whose settings did
    /// not change (its breaker and retry budget go on) and every aggregate whose declaration
    /// and services did not change (its in-flight builds go on).
    pub fn build(
        config: &Config,
        store: Arc<Store>,
        previous: Option<&Aggregates>,
    ) -> Result<Aggregates, String> {
        let mut http = previous.map(|p| p.http.clone()).unwrap_or_default();
        let now = Instant::now();
        let mut clients: HashMap<String, Arc<ServiceClient>> = HashMap::new();
        let mut list = Vec::new();
        for a in &config.aggregates {
            let mut legs = Vec::with_capacity(a.legs.len());
            for leg in &a.legs {
                let c = match clients.get(leg.service.as_str()) {
                    Some(c) => c.clone(),
                    None => {
                        let svc = config.services.get(&leg.service).ok_or_else(|| {
                            format!(
                                "aggregate `{}`, leg `{}`: no service `{}`",
                                a.name, leg.name, leg.service
                            )
                        })?;
                        let pool = pool(&mut http, svc.connect_timeout)?;
                        let c = ServiceClient::rebuild(
                            svc,
                            previous.and_then(|p| p.clients.get(&leg.service)),
                            || ServiceClient::new(svc.clone(), pool, now),
                        );
                        clients.insert(leg.service.clone(), c.clone());
                        c
                    }
                };
                legs.push(c);
            }
            let previous = previous
                .and_then(|p| p.list.iter().find(|old| old.config.name == a.name))
                .filter(|old| {
                    old.clients
                        .iter()
                        .zip(&legs)
                        .all(|(o, n)| Arc::ptr_eq(o, n))
                });
            list.push(Aggregate::rebuild(a, previous, || {
                Aggregate::new(a, legs, store.clone())
            }));
        }
        Ok(Aggregates {
            list,
            clients,
            http,
            store,
        })
    }

    /// Handles an event of the invalidation feed.
    pub fn on_feed(&self, event: FeedEvent<'_>) {
        match event {
            FeedEvent::Message(raw) => match serde_json::from_slice::<Invalidation>(raw) {
                Ok(inv) => {
                    Direction::Received.count();
                    self.forget(&inv, true);
                }
                Err(e) => {
                    Direction::Bad.count();
                    tracing::warn!(error = %e, "ignored a malformed cache invalidation message");
                }
            },
            // Whatever was announced while not subscribed is unknown: start empty.
            FeedEvent::Joined | FeedEvent::Lost => {
                for a in &self.list {
                    a.epoch.fetch_add(1, Ordering::AcqRel);
                    if let Some(l) = &a.local {
                        l.clear();
                    }
                }
            }
        }
    }

    /// The aggregate called `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Aggregate>> {
        self.list.iter().find(|a| a.config.name == name)
    }
}

/// What the admin API shows of a cached entry.
#[derive(Debug, serde::Serialize)]
pub struct EntryInfo {
    /// The key as the conf's template renders it.
    pub key: String,
    /// Seconds since it was built.
    pub age_seconds: u64,
    /// Seconds it stays fresh.
    pub ttl_seconds: u64,
    /// Whether it is past its freshness.
    pub stale: bool,
    /// Its tags.
    pub tags: Vec<String>,
    /// Size of the document.
    pub bytes: usize,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Aggregate {
    /// An aggregate over its service clients `legs` (one per leg, in order).
    fn new(a: &AggregateConfig, legs: Vec<Arc<ServiceClient>>, store: Arc<Store>) -> Aggregate {
        let mut needs_json = vec![false; a.legs.len()];
        for leg in &a.legs {
            for p in &leg.path.parts {
                if let crate::config::Part::Value(v) = p {
                    needs_json[v.leg] = true;
                }
            }
            if let Some(f) = &leg.for_each {
                needs_json[f.leg] = true;
            }
        }
        for (_, v) in &a.response {
            if !v.path.is_empty() {
                needs_json[v.leg] = true;
            }
        }
        for t in a.cache.iter().flat_map(|c| &c.tags) {
            for p in &t.parts {
                if let crate::config::Part::Value(v) = p {
                    needs_json[v.leg] = true;
                }
            }
        }
        let mut prefix = String::new();
        for seg in &a.path.segments {
            prefix.push('/');
            match seg {
                Segment::Literal(l) => prefix.push_str(l),
                Segment::Param(_) => break,
            }
        }
        let local = a
            .cache
            .as_ref()
            .and_then(|c| c.local.as_ref())
            .map(|l| LocalTier::new(&a.name, l));
        Aggregate {
            local,
            epoch: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            fingerprint: Fingerprint::of(a),
            config: a.clone(),
            prefix,
            clients: legs,
            needs_json,
            store,
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
        }
    }

    pub(crate) fn claims(&self, path: &str) -> bool {
        let p = self.prefix.as_str();
        if let Some(base) = p.strip_suffix('/') {
            path == base || path.starts_with(p)
        } else {
            path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
        }
    }
}

/// Whether `v` is a valid path param: 1–64 chars of `[A-Za-z0-9_-]`.
fn valid_param(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Aggregate {
    /// The aggregate's name (metric label, log field).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The path pattern as declared (the SERVER span's `http.route`).
    pub fn pattern(&self) -> &str {
        &self.config.path.text
    }

    /// Whether the aggregate answers `method` (HEAD follows GET).
    pub fn allows(&self, method: &http::Method) -> bool {
        *method == http::Method::HEAD || self.config.methods.contains(method)
    }

    /// The path's params, in pattern order; 400 when the path does not fit the pattern.
    pub fn params(&self, path: &str) -> Result<Vec<String>, GatewayError> {
        let bad = || {
            GatewayError::BadRequest(
                format!(
                    "expected {} with each {{param}} 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
                    self.config.path.text
                )
                .into(),
            )
        };
        let rest = path.strip_prefix('/').ok_or_else(bad)?;
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.len() != self.config.path.segments.len() {
            return Err(bad());
        }
        let mut params = Vec::new();
        for (seg, want) in segs.iter().zip(&self.config.path.segments) {
            match want {
                Segment::Literal(l) if l == seg => {}
                Segment::Literal(_) => return Err(bad()),
                Segment::Param(_) if valid_param(seg) => params.push(seg.to_string()),
                Segment::Param(_) => return Err(bad()),
            }
        }
        Ok(params)
    }

    /// Whether `params` (as sent) name the caller by `me`: the answer then differs by caller
    /// under one URL.
    pub fn names_caller(&self, params: &[String]) -> bool {
        self.config
            .authorize
            .as_ref()
            .is_some_and(|rule| rule.me && params.get(rule.param).is_some_and(|v| v == "me"))
    }

    /// Resolves `me` and applies `authorize` to `params`.
    pub fn authorize(
        &self,
        params: &mut [String],
        identity: Option<&Identity>,
    ) -> Result<(), GatewayError> {
        let Some(rule) = &self.config.authorize else {
            return Ok(());
        };
        let value = &mut params[rule.param];
        if rule.me && value == "me" {
            let who = identity.ok_or_else(|| GatewayError::Unauthorized {
                message: "missing bearer token".into(),
                token_given: false,
            })?;
            if !valid_param(&who.sub) {
                return Err(GatewayError::BadRequest(
                    "the token's subject is not a valid path value".into(),
                ));
            }
            *value = who.sub.clone();
        }
        let allowed = identity.is_some_and(|who| {
            who.sub == *value || rule.bypass_roles.iter().any(|r| who.has_role(r))
        });
        if allowed {
            Ok(())
        } else {
            Err(GatewayError::Forbidden(
                format!("a token may read only its own {}", self.config.name).into(),
            ))
        }
    }
}

impl Rebuild for Aggregate {
    type Settings = AggregateConfig;
    fn settings(&self) -> &AggregateConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::cache::now_ms;
    use super::entry::Entry;
    use super::*;
    use crate::config::{Config, LoadMode};
    use std::time::Duration;

    fn who(sub: &str, roles: &[&str]) -> Identity {
        Identity {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            forwarded: Box::default(),
            limit_claims: Box::default(),
            scopes: Vec::new(),
        }
    }

    fn profile() -> Arc<Aggregate> {
        // No service answers on port 1: a leg that is called fails.
        let env = |k: &str| match k {
            "JWT_SECRET" => Some("s".to_string()),
            k if k.ends_with("_SERVICE_URL") => Some("http://127.0.0.1:1".to_string()),
            _ => None,
        };
        let yaml = format!("gateway: {{{}}}", crate::testing::profile_section());
        let cfg = Config::from_yaml(&yaml, &env, LoadMode::Run).expect("config");
        let store = Arc::new(Store::Memory(crate::store::MemoryKv::default()));
        let all = Aggregates::new(&cfg, store).expect("aggregates");
        all.named("profile").expect("profile").clone()
    }

    #[test]
    fn params_are_validated() {
        let p = profile();
        assert_eq!(
            p.params("/api/profile/abc_1-2").ok(),
            Some(vec!["abc_1-2".to_string()])
        );
        for bad in [
            "/api/profile/",
            "/api/profile/../1",
            "/api/profile/%00",
            "/api/profile/a/b",
        ] {
            assert!(p.params(bad).is_err(), "{bad}");
        }
        assert!(p
            .params(&format!("/api/profile/{}", "a".repeat(64)))
            .is_ok());
        assert!(p
            .params(&format!("/api/profile/{}", "a".repeat(65)))
            .is_err());
    }

    #[tokio::test]
    async fn owner_only_and_me() {
        let p = profile();
        let five = who("5", &[]);
        let mut ps = vec!["5".to_string()];
        assert!(p.authorize(&mut ps, Some(&five)).is_ok());
        let mut ps = vec!["me".to_string()];
        assert!(p.authorize(&mut ps, Some(&five)).is_ok());
        assert_eq!(ps, vec!["5".to_string()]);
        let mut ps = vec!["6".to_string()];
        assert_eq!(
            p.authorize(&mut ps, Some(&five)).map_err(|e| e.status()),
            Err(403)
        );
        let mut ps = vec!["6".to_string()];
        assert!(p.authorize(&mut ps, Some(&who("1", &["admin"]))).is_ok());
        let mut ps = vec!["me".to_string()];
        assert_eq!(p.authorize(&mut ps, None).map_err(|e| e.status()), Err(401));
    }

    #[tokio::test]
    async fn a_revalidation_that_finds_the_entry_fresh_again_calls_no_service() {
        let p = profile();
        let key = p.stored_key("profile:1");
        let entry = Entry {
            built_ms: now_ms(),
            fresh_ms: 30_000,
            tags: vec![],
            body: Bytes::from_static(br#"{"user":{"id":"1"}}"#),
        };
        // Written by the rebuild that ended just before this stale read reached `flight`.
        p.store
            .set_tagged(&key, entry.encode(), Duration::from_secs(30), &[])
            .await
            .expect("stored");
        let (flight, _) = p.flight(key, vec!["1".into()], "r-1", None, true);
        // A rebuild would fail: its user leg cannot connect.
        let built = flight
            .await
            .expect("answered from the entry, no leg called");
        assert_eq!(built.body, entry.body);
        assert!(!built.degraded);
        assert!(built.ttl > Duration::from_secs(28) && built.ttl <= Duration::from_secs(30));
    }
}
