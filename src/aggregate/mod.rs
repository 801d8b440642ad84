//! Aggregates: documents the gateway builds from several services, declared in the conf file
//! (`gateway.aggregates`, checked into a plan by `config::aggregates`). Each request runs its
//! aggregate's legs as a dependency graph: a leg starts the moment every leg it depends on has
//! finished, legs with nothing to wait for start at once, and `for_each` legs fan out per
//! item. Object-level authorization, cache-aside and single flight per cache key come first.
//!
//! - [`client`]: the service clients (timeouts, retries, breakers, body checks).
//! - [`template`]: filling path templates and reading values out of legs' JSON.
//! - [`local`]: the in-process tier in front of the shared store.
//!
//! About 1,250 lines before its tests, one concern: running a declared aggregate (route match,
//! params, authorization, cache (fresh, stale, tagged, copies in memory, purges racing builds)
//! and single flight, the graph runner,
//! fan-out, the document),
//! and building the aggregates from the config (on a reload, keeping what did not change).
//! Filling templates is split out; the rest shares the per-request state and would only be
//! passed back and forth between files.
//!
//! This module returns documents and [`GatewayError`]s; `proxy` writes them. It may use
//! `config`, `store`, `resilience`, `metrics`, `error` and the caller's `Identity`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use crate::config::{AggregateConfig, Config, Expect, LegConfig, Segment};
use crate::edge::auth::Identity;
use crate::error::GatewayError;
use crate::metrics;
use crate::rebuild::Rebuild;
use crate::resilience::FailureKind;
use crate::store::feed::Direction;
use crate::store::{FeedEvent, Store, StoreError};
use crate::trace::{Parent, RequestTrace};
use opentelemetry::trace::SpanContext;
use opentelemetry::KeyValue;

pub(crate) mod client;
mod entry;
mod local;
mod template;

use self::entry::Entry;
use self::local::LocalTier;

use self::client::{has_shape, CallError, CallTrace, ServiceClient};

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
    /// The pooled HTTP client every service client shares.
    http: reqwest::Client,
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

/// How long this process remembers the entries it wrote, for a purge heard from another
/// replica to delete again: a write that landed in Redis just after that purge carries data
/// from before it. Announcements take milliseconds; this is ample.
const RECENT_MS: u64 = 2_000;
/// Most writes remembered (beyond it the oldest are forgotten).
const RECENT_MAX: usize = 4_096;

/// One declared aggregate with its clients, cache and in-flight builds.
pub struct Aggregate {
    config: AggregateConfig,
    /// A stable digest of the declaration, appended to cache keys: a changed declaration (a
    /// reload, or replicas on different files) never reads documents of another shape.
    fingerprint: String,
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
        let http = match previous {
            Some(p) => p.http.clone(),
            None => client::http_client()
                .map_err(|e| format!("cannot build the service HTTP client: {e}"))?,
        };
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
                        let c = ServiceClient::rebuild(
                            svc,
                            previous.and_then(|p| p.clients.get(&leg.service)),
                            || ServiceClient::new(svc.clone(), http.clone(), now),
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

    /// Purges every entry carrying one of `tags`: here first (copies, and builds under way),
    /// then in the shared store, then announced to the other replicas.
    pub async fn invalidate_tags(&self, tags: Vec<String>) -> Result<Purged, StoreError> {
        let inv = Invalidation {
            keys: Vec::new(),
            tags,
        };
        self.forget(&inv, false);
        let count = self.store.invalidate_tags(&inv.tags, entry_carries).await?;
        let announced = announce(&self.store, &inv).await;
        Ok(Purged { count, announced })
    }

    /// Applies a purge to this process: in-process copies dropped, builds under way not kept,
    /// and (`heard`: announced by a replica) recent writes it names deleted again.
    fn forget(&self, inv: &Invalidation, heard: bool) {
        for a in &self.list {
            a.forget(inv, heard);
        }
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

    /// The aggregate a path belongs to: every path under its literal start (so that a bad
    /// param is a 400 from the aggregate, not a 404).
    pub fn route(&self, path: &str) -> Option<&Arc<Aggregate>> {
        self.list.iter().find(|a| a.claims(path))
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

/// Tells the other replicas of `inv`; whether they were told.
async fn announce(store: &Store, inv: &Invalidation) -> bool {
    let payload = serde_json::to_vec(inv).unwrap_or_default();
    match store.announce(&payload).await {
        Ok(told) => told,
        Err(e) => {
            tracing::warn!(error = %e, "a cache purge could not be announced to the other replicas; their in-process copies live out their ttl");
            false
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    crate::clock::unix_now_micros() / 1000
}

/// A stored value as an entry to answer with. Anything but an entry holding JSON (an older
/// gateway's bare document, a corrupt value) is treated as absent, and overwritten.
fn servable(raw: &Bytes) -> Option<Entry> {
    Entry::decode(raw).filter(|e| has_shape(&e.body, Expect::Any))
}

/// Whether a stored entry carries one of `tags` (the embedded store has no tag index).
pub(crate) fn entry_carries(raw: &Bytes, tags: &[String]) -> bool {
    Entry::decode(raw).is_some_and(|e| e.tags.iter().any(|t| tags.contains(t)))
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
            fingerprint: crate::config::fingerprint(a),
            config: a.clone(),
            prefix,
            clients: legs,
            needs_json,
            store,
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
        }
    }

    fn claims(&self, path: &str) -> bool {
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

struct FlightGuard {
    aggregate: Arc<Aggregate>,
    key: String,
    flight: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.aggregate.inflight.lock();
        if map.get(&self.key).is_some_and(|(f, ..)| *f == self.flight) {
            map.remove(&self.key);
        }
    }
}

/// What became of one leg.
#[derive(Debug, Clone)]
enum LegOutcome {
    /// Its document, and (when something reads into it) the parsed JSON.
    Done(Bytes, Option<Arc<serde_json::Value>>),
    /// Failed, skipped or partly fetched: its default (or what items came back) stands in,
    /// and its response key is degraded.
    Degraded(Bytes, Option<Arc<serde_json::Value>>),
}

impl LegOutcome {
    fn ok(&self) -> bool {
        matches!(self, LegOutcome::Done(..))
    }

    fn json(&self) -> Option<&serde_json::Value> {
        match self {
            LegOutcome::Done(_, j) | LegOutcome::Degraded(_, j) => j.as_deref(),
        }
    }

    fn raw(&self) -> &Bytes {
        match self {
            LegOutcome::Done(b, _) | LegOutcome::Degraded(b, _) => b,
        }
    }
}

impl Aggregate {
    /// The store key of the entry whose rendered key is `key` (the declaration's fingerprint
    /// appended, as every entry of this declaration carries).
    fn stored_key(&self, key: &str) -> String {
        format!("{key}#{}", self.fingerprint)
    }

    /// Whether the aggregate is cached at all.
    pub fn cached(&self) -> bool {
        self.config.cache.as_ref().is_some_and(|c| !c.ttl.is_zero())
    }

    /// Purges the entry `key` (as the key template renders it) here, in the shared store and
    /// at every replica.
    pub async fn purge(&self, key: &str) -> Result<Purged, StoreError> {
        let inv = Invalidation {
            keys: vec![self.stored_key(key)],
            tags: Vec::new(),
        };
        self.forget(&inv, false);
        let existed = self.store.delete(&inv.keys[0]).await?;
        let announced = announce(&self.store, &inv).await;
        Ok(Purged {
            count: u64::from(existed),
            announced,
        })
    }

    /// See [`Aggregates::forget`].
    fn forget(&self, inv: &Invalidation, heard: bool) {
        let suffix = format!("#{}", self.fingerprint);
        let keys: Vec<String> = inv
            .keys
            .iter()
            .filter(|k| k.ends_with(&suffix))
            .cloned()
            .collect();
        if keys.is_empty() && inv.tags.is_empty() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(l) = &self.local {
            l.forget(&keys, &inv.tags);
        }
        if !heard {
            return;
        }
        let now = now_ms();
        let again: Vec<String> = {
            let mut recent = self.recent.lock();
            while recent.front().is_some_and(|(at, ..)| at + RECENT_MS < now) {
                recent.pop_front();
            }
            recent
                .iter()
                .filter(|(_, k, tags)| {
                    keys.contains(k) || tags.iter().any(|t| inv.tags.contains(t))
                })
                .map(|(_, k, _)| k.clone())
                .collect()
        };
        if !again.is_empty() {
            let store = self.store.clone();
            tokio::spawn(async move {
                for k in again {
                    let _ = store.delete(&k).await;
                }
            });
        }
    }

    /// Keeps a copy of `entry` here unless a purge came after `epoch` (checked again after,
    /// for a purge that ran between the check and the copy).
    fn keep_local(&self, local: &LocalTier, key: &str, entry: Entry, epoch: u64, now: u64) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        local.put(key.to_string(), entry, now);
        if self.epoch.load(Ordering::Acquire) != epoch {
            local.forget(&[key.to_string()], &[]);
        }
    }

    /// Writes `entry` to the shared store (a failed write only costs a miss), unless a purge
    /// came after `epoch`; a purge arriving while the write is under way deletes it again once
    /// it lands.
    async fn write(self: Arc<Self>, key: String, entry: Entry, keep: Duration, epoch: u64) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            tracing::debug!(key, "purged while building: not cached");
            return;
        }
        {
            let mut recent = self.recent.lock();
            if recent.len() >= RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back((now_ms(), key.clone(), entry.tags.clone()));
        }
        let value = entry.encode();
        if let Err(e) = self.store.set_tagged(&key, value, keep, &entry.tags).await {
            tracing::debug!(error = %e, "aggregate cache write failed");
        } else if self.epoch.load(Ordering::Acquire) != epoch {
            let _ = self.store.delete(&key).await;
        }
    }

    /// The entry `key` (as the key template renders it), if cached.
    pub async fn inspect(&self, key: &str) -> Result<Option<EntryInfo>, crate::store::StoreError> {
        let raw = self.store.get(&self.stored_key(key)).await?;
        let now = now_ms();
        Ok(raw.as_ref().and_then(Entry::decode).map(|e| EntryInfo {
            key: key.to_string(),
            age_seconds: e.age_secs(now),
            ttl_seconds: e.remaining_secs(now),
            stale: !e.is_fresh(now),
            tags: e.tags,
            bytes: e.body.len(),
        }))
    }

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

    /// Answers an authorized request with these `params`. With `trace`, a build's leg spans
    /// hang under its SERVER span, and joining another request's build links to that one.
    pub async fn get(
        self: &Arc<Self>,
        params: Vec<String>,
        request_id: &str,
        trace: Option<&mut RequestTrace>,
    ) -> Result<Answer, GatewayError> {
        let name = self.config.name.as_str();
        let cache = self.config.cache.as_ref().filter(|c| !c.ttl.is_zero());
        let key = match cache {
            Some(c) => format!(
                "{}#{}",
                template::render(&c.key, &params, &[], None).unwrap_or_default(),
                self.fingerprint
            ),
            // Without a cache, requests for the same params still share one build.
            None => params.join("/"),
        };
        let mut status = CacheStatus::Miss;
        // A stale entry kept for when the rebuild fails or degrades (stale-if-error).
        let mut fallback: Option<Entry> = None;
        if let Some(c) = cache {
            let now = now_ms();
            let local = self.local.as_ref().filter(|_| self.store.feeds_local());
            if let Some(held) = local.and_then(|l| l.get(&key, now)) {
                cache_metric(name, CacheStatus::Hit);
                return Ok(cached_answer(&held.entry, CacheStatus::Hit, key, now));
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            match self.store.get(&key).await {
                Ok(Some(v)) => {
                    if let Some(e) = servable(&v) {
                        let stale_for = now.saturating_sub(e.built_ms + e.fresh_ms);
                        if e.is_fresh(now) {
                            cache_metric(name, CacheStatus::Hit);
                            let answer = cached_answer(&e, CacheStatus::Hit, key, now);
                            if let (Some(l), Some(k)) = (local, &answer.key) {
                                self.keep_local(l, k, e, epoch, now);
                            }
                            return Ok(answer);
                        }
                        if stale_for < c.stale_while_revalidate.as_millis() as u64 {
                            // Answered now; one rebuild (shared with any other in flight for
                            // this key) refreshes the entry for the next reads.
                            let (flight, _) =
                                self.flight(key.clone(), params, request_id, None, true);
                            tokio::spawn(async move {
                                let _ = flight.await;
                            });
                            cache_metric(name, CacheStatus::Stale);
                            return Ok(cached_answer(&e, CacheStatus::Stale, key, now));
                        }
                        if stale_for < c.stale_if_error.as_millis() as u64 {
                            fallback = Some(e);
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => status = CacheStatus::Bypass,
            }
        }
        let memo_key = cache.is_some().then(|| key.clone());
        let parent = trace.as_deref().map(RequestTrace::parent);
        let (flight, leader) = self.flight(key, params, request_id, parent, false);
        if let Some(t) = trace {
            let role = if leader.is_some() {
                "follower"
            } else {
                "leader"
            };
            t.set(|| vec![KeyValue::new("gateway.single_flight", role)]);
            if let Some(leader) = leader {
                t.link(leader);
            }
        }
        let built = flight.await;
        if let Some(e) = fallback {
            if built.as_ref().map_or(true, |b| b.degraded) {
                // The good entry stands in for a failed or degraded rebuild (which is never
                // written over it).
                cache_metric(name, CacheStatus::StaleError);
                let key = memo_key.unwrap_or_default();
                return Ok(cached_answer(&e, CacheStatus::StaleError, key, now_ms()));
            }
        }
        cache_metric(name, status);
        let built = built?;
        let cacheable = !built.degraded && !built.ttl.is_zero();
        Ok(Answer {
            cache_control: if cacheable {
                format!("private, max-age={}", built.ttl.as_secs())
            } else {
                "no-store".into()
            },
            key: memo_key.filter(|_| cacheable),
            body: built.body,
            cache: status,
            age: None,
        })
    }

    /// Joins the in-flight build for `key` (with the span context of the request that started
    /// it, when traced), or starts one. A `revalidate` build (a stale entry's, in the
    /// background) stays in flight until its entry is written, so a stale read meanwhile joins
    /// it instead of starting a second rebuild; others answer without waiting for the write.
    fn flight(
        self: &Arc<Self>,
        key: String,
        params: Vec<String>,
        request_id: &str,
        parent: Option<Parent>,
        revalidate: bool,
    ) -> (Flight, Option<SpanContext>) {
        let mut map = self.inflight.lock();
        if let Some((_, w, leader)) = map.get(&key) {
            if let Some(f) = w.upgrade() {
                let leader = parent.and(leader.clone());
                return (f, leader);
            }
        }
        let leader = parent.as_ref().map(|p| p.span_context().clone());
        let flight = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let guard = FlightGuard {
            aggregate: self.clone(),
            key: key.clone(),
            flight,
        };
        let me = self.clone();
        let request_id = request_id.to_string();
        let cache_key = key.clone();
        let fut: Flight = async move {
            let _guard = guard;
            if revalidate {
                if let Some(built) = me.refreshed(&cache_key).await {
                    return Ok(built);
                }
            }
            me.build(cache_key, params, &request_id, parent.as_ref(), revalidate)
                .await
        }
        .boxed()
        .shared();
        if let Some(weak) = fut.downgrade() {
            map.insert(key, (flight, weak, leader));
        }
        (fut, None)
    }

    /// The stored entry for `key` if it is fresh now. A stale read whose `GET` was answered
    /// just before another rebuild's write landed, but which reaches `flight` after that
    /// rebuild ended, would otherwise repeat the rebuild (one extra `GET` per revalidation).
    async fn refreshed(&self, key: &str) -> Option<Built> {
        let e = servable(&self.store.get(key).await.ok()??)?;
        let now = now_ms();
        e.is_fresh(now).then(|| Built {
            ttl: e.remaining(now),
            body: e.body,
            degraded: false,
        })
    }

    /// Runs the legs as their dependencies finish, then writes the document.
    async fn build(
        self: &Arc<Self>,
        key: String,
        params: Vec<String>,
        request_id: &str,
        trace: Option<&Parent>,
        revalidate: bool,
    ) -> Result<Built, GatewayError> {
        let deadline = Instant::now() + self.config.deadline;
        // A purge heard while building means the legs' answers may be what it purged.
        let epoch = self.epoch.load(Ordering::Acquire);
        // The lowest freshness the services' answers allow, in seconds (read only with
        // `ttl_from_services`).
        let fresh = &AtomicU64::new(u64::MAX);
        let legs = &self.config.legs;
        let mut done: Vec<Option<LegOutcome>> = vec![None; legs.len()];
        let mut started = vec![false; legs.len()];
        let mut running = FuturesUnordered::new();
        loop {
            // Start (or skip) every leg whose dependencies have all finished; a skip may
            // unblock others, hence the loop.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for (i, leg) in legs.iter().enumerate() {
                    if started[i] || leg.deps.iter().any(|&d| done[d].is_none()) {
                        continue;
                    }
                    started[i] = true;
                    if leg
                        .deps
                        .iter()
                        .any(|&d| done[d].as_ref().is_some_and(|o| !o.ok()))
                    {
                        // A leg that needs a failed optional leg is skipped (degraded).
                        if let Some(p) = trace {
                            self.skipped_span(p, i);
                        }
                        done[i] = Some(self.fallback(i));
                        progressed = true;
                        continue;
                    }
                    let inputs: Vec<Option<serde_json::Value>> = leg
                        .deps
                        .iter()
                        .map(|&d| done[d].as_ref().and_then(|o| o.json().cloned()))
                        .collect();
                    let me = self.clone();
                    let params = &params;
                    running.push(async move {
                        (
                            i,
                            me.run_leg(i, params, &inputs, request_id, deadline, trace, fresh)
                                .await,
                        )
                    });
                }
            }
            let Some((i, outcome)) = running.next().await else {
                break;
            };
            done[i] = Some(outcome?);
        }
        let outcomes: Vec<LegOutcome> = done
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.unwrap_or_else(|| self.fallback(i)))
            .collect();
        let (body, degraded) = self.document(&outcomes);
        let cache = self.config.cache.as_ref().filter(|c| !c.ttl.is_zero());
        // The declared TTL, lowered to what the services allow when told to listen to them.
        let ttl = match cache {
            Some(c) if c.ttl_from_services => c
                .ttl
                .min(Duration::from_secs(fresh.load(Ordering::Relaxed))),
            Some(c) => c.ttl,
            None => Duration::ZERO,
        };
        if let Some(c) = cache.filter(|_| !degraded && !ttl.is_zero()) {
            let values: Vec<(usize, &serde_json::Value)> = outcomes
                .iter()
                .enumerate()
                .filter_map(|(i, o)| Some((i, o.json()?)))
                .collect();
            let mut tags: Vec<String> = c
                .tags
                .iter()
                .filter_map(|t| template::render(t, &params, &values, None))
                .collect();
            tags.dedup();
            let now = now_ms();
            let entry = Entry {
                built_ms: now,
                fresh_ms: ttl.as_millis() as u64,
                tags,
                body: body.clone(),
            };
            if let Some(l) = self.local.as_ref().filter(|_| self.store.feeds_local()) {
                self.keep_local(l, &key, entry.clone(), epoch, now);
            }
            // The store keeps the entry through its stale windows too.
            let write = self
                .clone()
                .write(key, entry, ttl + c.stale_window(), epoch);
            if revalidate {
                write.await;
            } else {
                tokio::spawn(write);
            }
        }
        Ok(Built {
            body,
            degraded,
            ttl,
        })
    }

    /// An optional leg's stand-in: its default, degraded.
    fn fallback(&self, i: usize) -> LegOutcome {
        let leg = &self.config.legs[i];
        let raw = serde_json::to_vec(&leg.default).unwrap_or_else(|_| b"null".to_vec());
        LegOutcome::Degraded(
            Bytes::from(raw),
            self.needs_json[i].then(|| Arc::new(leg.default.clone())),
        )
    }

    /// A zero-length span for a leg never called because a leg it needs failed.
    fn skipped_span(&self, parent: &Parent, i: usize) {
        let leg = &self.config.legs[i];
        parent
            .client(
                || format!("GET {}", leg.name),
                || {
                    vec![
                        KeyValue::new("gateway.leg", leg.name.clone()),
                        KeyValue::new("gateway.service", leg.service.clone()),
                    ]
                },
            )
            .end("skipped");
    }

    /// One leg: its calls, and what the aggregate makes of their outcome. `Err` only for a
    /// required leg that failed (the whole answer is that error).
    #[allow(clippy::too_many_arguments)]
    async fn run_leg(
        &self,
        i: usize,
        params: &[String],
        inputs: &[Option<serde_json::Value>],
        request_id: &str,
        deadline: Instant,
        trace: Option<&Parent>,
        fresh: &AtomicU64,
    ) -> Result<LegOutcome, GatewayError> {
        let leg = &self.config.legs[i];
        let values: Vec<(usize, &serde_json::Value)> = leg
            .deps
            .iter()
            .zip(inputs)
            .filter_map(|(&d, v)| v.as_ref().map(|v| (d, v)))
            .collect();
        let result = match &leg.for_each {
            None => {
                self.call(i, params, &values, None, request_id, deadline, trace, fresh)
                    .await
            }
            Some(_) => {
                let out = self.fan_out(i, params, &values, request_id, deadline, trace, fresh);
                return Ok(out.await);
            }
        };
        match result {
            Ok(body) => {
                let json = if self.needs_json[i] {
                    serde_json::from_slice(&body).ok().map(Arc::new)
                } else {
                    None
                };
                Ok(LegOutcome::Done(body, json))
            }
            Err(e) if leg.required => Err(self.required_failed(leg, e)),
            Err(_) => Ok(self.fallback(i)),
        }
    }

    /// A `for_each` leg: one call per item (at most `max_items`, `concurrency` at once), the
    /// results in the items' order; failed items dropped and the key degraded.
    #[allow(clippy::too_many_arguments)]
    async fn fan_out(
        &self,
        i: usize,
        params: &[String],
        values: &[(usize, &serde_json::Value)],
        request_id: &str,
        deadline: Instant,
        trace: Option<&Parent>,
        fresh: &AtomicU64,
    ) -> LegOutcome {
        let leg = &self.config.legs[i];
        let Some(source) = leg.for_each.as_ref() else {
            return self.fallback(i);
        };
        let items = values
            .iter()
            .find(|(d, _)| *d == source.leg)
            .and_then(|(_, v)| template::lookup(v, &source.path))
            .and_then(|v| v.as_array());
        let Some(items) = items else {
            return self.fallback(i);
        };
        let mut degraded = items.len() > leg.max_items;
        let calls: Vec<_> = items
            .iter()
            .take(leg.max_items)
            .enumerate()
            .map(|item| {
                self.call(
                    i,
                    params,
                    values,
                    Some(item),
                    request_id,
                    deadline,
                    trace,
                    fresh,
                )
            })
            .collect();
        let results: Vec<Result<Bytes, CallError>> = futures::stream::iter(calls)
            .buffered(leg.concurrency)
            .collect()
            .await;
        let mut body = BytesMut::with_capacity(
            2 + results
                .iter()
                .map(|r| r.as_ref().map_or(0, |b| b.len() + 1))
                .sum::<usize>(),
        );
        body.put_u8(b'[');
        let mut first = true;
        // The combined value is bounded like one document: items past the service's
        // `max_body_bytes` are dropped (and the key degraded), so `max_items` large documents
        // cannot add up to `max_items` times the bound.
        let max = self.clients[i].max_body_bytes();
        for r in results {
            match r {
                Ok(doc) if body.len() + doc.len() + 2 <= max => {
                    if !first {
                        body.put_u8(b',');
                    }
                    first = false;
                    body.put_slice(&doc);
                }
                Ok(_) | Err(_) => degraded = true,
            }
        }
        body.put_u8(b']');
        let body = body.freeze();
        let json = if self.needs_json[i] {
            serde_json::from_slice(&body).ok().map(Arc::new)
        } else {
            None
        };
        if degraded {
            LegOutcome::Degraded(body, json)
        } else {
            LegOutcome::Done(body, json)
        }
    }

    /// One call of leg `i`: its path filled (with `item` on a `for_each` leg), then fetched.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        i: usize,
        params: &[String],
        values: &[(usize, &serde_json::Value)],
        item: Option<(usize, &serde_json::Value)>,
        request_id: &str,
        deadline: Instant,
        trace: Option<&Parent>,
        fresh: &AtomicU64,
    ) -> Result<Bytes, CallError> {
        let leg = &self.config.legs[i];
        let path = template::render(&leg.path, params, values, item.map(|(_, v)| v))
            .ok_or(CallError::Failed(FailureKind::BadBody))?;
        let trace = trace.map(|parent| CallTrace {
            parent,
            leg: &leg.name,
            item: item.map(|(n, _)| n),
        });
        self.clients[i]
            .fetch(
                &path,
                leg.expect,
                request_id,
                deadline,
                trace.as_ref(),
                fresh,
            )
            .await
    }

    fn required_failed(&self, leg: &LegConfig, e: CallError) -> GatewayError {
        let service = leg.service.as_str();
        match e {
            CallError::NotFound => GatewayError::NotFound(format!("{} not found", leg.name).into()),
            CallError::BreakerOpen => GatewayError::Unavailable(
                format!("{service} service unavailable (circuit open)").into(),
            ),
            CallError::Failed(FailureKind::Timeout) => {
                GatewayError::Timeout(format!("{service} service timed out").into())
            }
            CallError::Failed(_) => {
                GatewayError::BadGateway(format!("{service} service failed").into())
            }
        }
    }

    /// Writes the response keys in order, then `degraded`: legs used whole go in as the bytes
    /// their service sent.
    fn document(&self, outcomes: &[LegOutcome]) -> (Bytes, bool) {
        let mut body = BytesMut::with_capacity(
            32 + outcomes.iter().map(|o| o.raw().len() + 16).sum::<usize>(),
        );
        let mut degraded: Vec<&str> = Vec::new();
        body.put_u8(b'{');
        for (key, source) in &self.config.response {
            let outcome = &outcomes[source.leg];
            if !outcome.ok() {
                metrics::AGGREGATE_DEGRADED
                    .with_label_values(&[
                        self.config.name.as_str(),
                        self.config.legs[source.leg].name.as_str(),
                    ])
                    .inc();
                degraded.push(key);
            }
            put_json_string(&mut body, key);
            body.put_u8(b':');
            if source.path.is_empty() {
                body.put_slice(outcome.raw());
            } else {
                let v = outcome
                    .json()
                    .and_then(|j| template::lookup(j, &source.path))
                    .unwrap_or(&serde_json::Value::Null);
                body.put_slice(
                    serde_json::to_string(v)
                        .unwrap_or_else(|_| "null".into())
                        .as_bytes(),
                );
            }
            body.put_u8(b',');
        }
        body.put_slice(b"\"degraded\":");
        body.put_slice(
            serde_json::to_string(&degraded)
                .unwrap_or_else(|_| "[]".into())
                .as_bytes(),
        );
        body.put_u8(b'}');
        (body.freeze(), !degraded.is_empty())
    }
}

fn put_json_string(body: &mut BytesMut, s: &str) {
    body.put_slice(
        serde_json::to_string(s)
            .unwrap_or_else(|_| "\"\"".into())
            .as_bytes(),
    );
}

/// The answer for a cached entry: a fresh one says how long it stays fresh, a stale one
/// `max-age=0`; both carry their age.
fn cached_answer(e: &Entry, cache: CacheStatus, key: String, now: u64) -> Answer {
    Answer {
        cache_control: format!("private, max-age={}", e.remaining_secs(now)),
        age: Some(e.age_secs(now)),
        body: e.body.clone(),
        cache,
        key: Some(key),
    }
}

fn cache_metric(aggregate: &str, status: CacheStatus) {
    metrics::CACHE_REQUESTS
        .with_label_values(&[aggregate, status.label()])
        .inc();
}

impl Rebuild for Aggregate {
    type Settings = AggregateConfig;
    fn settings(&self) -> &AggregateConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadMode};

    fn who(sub: &str, roles: &[&str]) -> Identity {
        Identity {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            forwarded: Box::default(),
            limit_claims: Box::default(),
        }
    }

    fn profile() -> Arc<Aggregate> {
        // No service answers on port 1: a leg that is called fails.
        let env = |k: &str| match k {
            "JWT_SECRET" => Some("s".to_string()),
            k if k.ends_with("_SERVICE_URL") => Some("http://127.0.0.1:1".to_string()),
            _ => None,
        };
        let cfg = Config::from_yaml("gateway: {}", &env, LoadMode::Run).expect("config");
        let store = Arc::new(Store::Memory(crate::store::MemoryKv::default()));
        let all = Aggregates::new(&cfg, store).expect("aggregates");
        all.route("/api/profile/1").expect("profile").clone()
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
