//! What the admin API's `/status/*` pages and the dashboard show: the live configuration's
//! routes, upstream groups (each backend's health, breaker and load), identity providers,
//! limits, caches and the configuration itself, plus per-route traffic counters the dashboard
//! turns into rates. Runtime figures come from the process's own Prometheus registry, so the
//! pages and `/metrics` never disagree.

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::proto::MetricFamily;
use serde_json::{json, Value};

use crate::snapshot::Snapshot;

/// `(labels, value)` of every series of counter or gauge `name`.
fn series(families: &[MetricFamily], name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some(f) = families.iter().find(|f| f.name() == name) else {
        return Vec::new();
    };
    let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
    f.get_metric()
        .iter()
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let value = if counter {
                m.get_counter().value()
            } else {
                m.get_gauge().value()
            };
            (labels, value)
        })
        .collect()
}

/// The sum of `name`'s series whose label `key` is `value`, grouped by label `by`.
fn sum_by(
    families: &[MetricFamily],
    name: &str,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
    by: &str,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, v) in series(families, name) {
        if filter(&labels) {
            *out.entry(labels.get(by).cloned().unwrap_or_default())
                .or_insert(0.0) += v;
        }
    }
    out
}

/// `GET /status/routes`: the route table in match order.
pub(crate) fn routes(snap: &Snapshot) -> Value {
    json!({
        "generation": snap.generation,
        "routes": super::routes::table_rows(&snap.config),
    })
}

/// `GET /status/upstreams`: every group and each of its backends.
pub(crate) fn upstreams(snap: &Snapshot) -> Value {
    let now = Instant::now();
    let groups: Vec<Value> = snap.routes.groups.values().map(|g| g.status(now)).collect();
    json!({ "generation": snap.generation, "upstreams": groups })
}

/// `GET /status/issuers`: each identity provider's keys and their freshness.
pub(crate) fn issuers(snap: &Snapshot) -> Value {
    let families = prometheus::gather();
    let keys = sum_by(&families, "jwks_keys", |_| true, "issuer");
    let age = sum_by(&families, "jwks_age_seconds", |_| true, "issuer");
    let errors = sum_by(
        &families,
        "jwks_refresh_total",
        |l| l.get("result").is_some_and(|r| r == "error"),
        "issuer",
    );
    let fetches = sum_by(&families, "jwks_refresh_total", |_| true, "issuer");
    let issuers: Vec<Value> = snap
        .config
        .auth
        .issuers
        .iter()
        .map(|i| {
            let name = &i.issuer;
            json!({
                "issuer": name,
                "keys": keys.get(name).copied().unwrap_or(0.0),
                "age_seconds": age.get(name).copied().unwrap_or(-1.0),
                "fetches": fetches.get(name).copied().unwrap_or(0.0),
                "fetch_errors": errors.get(name).copied().unwrap_or(0.0),
                "algorithms": i.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "hs256": !snap.config.auth.secret.is_empty(),
        "api_keys": snap.config.auth.api_keys.as_ref().map(|k| k.keys.len()),
        "issuers": issuers,
    })
}

/// `GET /status/limits`: each rate-limit policy and its decisions so far.
pub(crate) fn limits(snap: &Snapshot) -> Value {
    let families = prometheus::gather();
    let mut decisions: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (labels, v) in series(&families, "rate_limit_decisions_total") {
        let policy = labels.get("policy").cloned().unwrap_or_default();
        let result = labels.get("result").cloned().unwrap_or_default();
        *decisions
            .entry(policy)
            .or_default()
            .entry(result)
            .or_insert(0.0) += v;
    }
    let rl = &snap.config.rate_limit;
    let mut policies = vec![json!({
        "name": "default",
        "limit": rl.limit,
        "window_seconds": rl.window.as_secs(),
        "decisions": decisions.get("default"),
    })];
    policies.extend(rl.policies.iter().map(|p| {
        json!({
            "name": p.name,
            "limit": p.limit,
            "window_seconds": p.window.as_secs(),
            "key": format!("{:?}", p.key),
            "algorithm": format!("{:?}", p.algorithm),
            "decisions": decisions.get(&p.name),
        })
    }));
    json!({ "store": snap.config.redis.kind(), "policies": policies })
}

/// `GET /status/cache`: each aggregate's cache settings and lookups by result.
pub(crate) fn cache(snap: &Snapshot) -> Value {
    let families = prometheus::gather();
    let mut lookups: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (labels, v) in series(&families, "cache_requests_total") {
        let a = labels.get("aggregate").cloned().unwrap_or_default();
        let r = labels.get("result").cloned().unwrap_or_default();
        *lookups.entry(a).or_default().entry(r).or_insert(0.0) += v;
    }
    let aggregates: Vec<Value> = snap
        .config
        .aggregates
        .iter()
        .map(|a| {
            json!({
                "aggregate": a.name,
                "cached": a.cache.is_some(),
                "ttl_seconds": a.cache.as_ref().map(|c| c.ttl.as_secs()),
                "lookups": lookups.get(&a.name),
            })
        })
        .collect();
    json!({ "store": snap.config.redis.kind(), "aggregates": aggregates })
}

/// `GET /status/config`: the running configuration and its reloads.
pub(crate) fn config(snap: &Snapshot) -> Value {
    let families = prometheus::gather();
    let reloads = sum_by(&families, "config_reload_total", |_| true, "result");
    json!({
        "generation": snap.generation,
        "fingerprint": snap.hash,
        "reloads": reloads,
        "version": env!("CARGO_PKG_VERSION"),
        "pingora": env!("PINGORA_VERSION"),
    })
}

/// `GET /status/traffic`: per route, requests and 5xx answers so far and the duration
/// histogram's cumulative buckets (the dashboard turns two readings into rates and a p99).
pub(crate) fn traffic() -> Value {
    let families = prometheus::gather();
    let mut routes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (labels, v) in series(&families, "http_requests_total") {
        let route = labels.get("route").cloned().unwrap_or_default();
        let e = routes.entry(route).or_default();
        e.0 += v;
        if labels.get("status").is_some_and(|s| s.starts_with('5')) {
            e.1 += v;
        }
    }
    let mut buckets: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    if let Some(f) = families
        .iter()
        .find(|f| f.name() == "http_request_duration_seconds")
    {
        for m in f.get_metric() {
            let route = m
                .get_label()
                .iter()
                .find(|l| l.name() == "route")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let per = buckets.entry(route).or_default();
            for b in m.get_histogram().get_bucket() {
                *per.entry(b.upper_bound().to_string()).or_insert(0.0) +=
                    b.cumulative_count() as f64;
            }
        }
    }
    let rows: Vec<Value> = routes
        .into_iter()
        .map(|(route, (requests, errors))| {
            json!({
                "route": route,
                "requests": requests,
                "errors": errors,
                "buckets": buckets.get(&route),
            })
        })
        .collect();
    json!({ "routes": rows })
}
