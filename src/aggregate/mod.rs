//! Aggregates: documents the gateway builds from several services. Today one, `GET
//! /api/profile/{id}`: object-level authorization, cache-aside, single flight, the user service
//! first and then orders, products and recommendations concurrently.
//!
//! - [`client`]: the service clients (timeouts, retries, breakers, body checks).
//!
//! This module returns documents and [`GatewayError`]s; `proxy` writes them. It may use
//! `config`, `store`, `resilience`, `metrics`, `error` and the caller's `Identity`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use parking_lot::Mutex;

use crate::config::{Config, ProfileConfig, ServiceName};
use crate::edge::auth::Identity;
use crate::error::GatewayError;
use crate::metrics;
use crate::resilience::FailureKind;
use crate::store::Store;

pub(crate) mod client;

use self::client::{has_shape, CallError, ServiceClient, Shape};

/// How the answer relates to the cache (the `X-Cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache; no upstream call.
    Hit,
    /// Built from the upstreams (also when the cache is disabled).
    Miss,
    /// The store failed or was too slow; built from the upstreams.
    Bypass,
}

impl CacheStatus {
    /// The `X-Cache` value, also shown in the access log.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// The `cache_requests_total{result}` label.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// Every status, for priming the metric.
    pub const ALL: [CacheStatus; 3] = [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Bypass];
}

/// A finished profile answer.
#[derive(Debug, Clone)]
pub struct ProfileAnswer {
    /// The JSON document.
    pub body: Bytes,
    /// Cache outcome for `X-Cache`.
    pub cache: CacheStatus,
}

/// A document built from the upstreams, shared by every coalesced request.
#[derive(Debug, Clone)]
struct Built {
    body: Bytes,
}

type BuildFuture = BoxFuture<'static, Result<Built, GatewayError>>;
type Flight = Shared<BuildFuture>;
/// In-flight builds: flight number (so a finished flight removes only itself) and a weak handle.
type Inflight = Mutex<HashMap<String, (u64, WeakShared<BuildFuture>)>>;

/// The aggregation service.
pub struct ProfileService {
    inner: Arc<Inner>,
}

struct Inner {
    user: ServiceClient,
    order: ServiceClient,
    product: ServiceClient,
    recommendation: ServiceClient,
    store: Arc<Store>,
    config: ProfileConfig,
    /// In-flight builds by id. Weak, so that when every waiting client has gone the build is
    /// dropped (its upstream calls cancelled) rather than kept alive by this map.
    inflight: Inflight,
    next_flight: std::sync::atomic::AtomicU64,
}

/// Parses the `{id}` of `/api/profile/{id}`: 1–64 chars of `[A-Za-z0-9_-]`.
pub fn parse_id(path: &str) -> Result<&str, GatewayError> {
    let id = path
        .strip_prefix(crate::proxy::routes::PROFILE_PREFIX)
        .ok_or_else(|| GatewayError::BadRequest("expected /api/profile/{id}".into()))?;
    if valid_id(id) {
        Ok(id)
    } else {
        Err(GatewayError::BadRequest(
            "profile id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        ))
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Resolves `me` and applies the owner-only rule; returns the id to serve.
pub fn authorize(
    id: &str,
    identity: Option<&Identity>,
    owner_only: bool,
) -> Result<String, GatewayError> {
    let id = if id == "me" {
        let who = identity.ok_or_else(|| GatewayError::Unauthorized {
            message: "missing bearer token".into(),
            token_given: false,
        })?;
        if !valid_id(&who.sub) {
            return Err(GatewayError::BadRequest(
                "the token's subject is not a valid profile id".into(),
            ));
        }
        who.sub.clone()
    } else {
        id.to_string()
    };
    if owner_only {
        let allowed = identity.is_some_and(|who| who.sub == id || who.has_role("admin"));
        if !allowed {
            return Err(GatewayError::Forbidden(
                "a token may read only its own profile".into(),
            ));
        }
    }
    Ok(id)
}

struct FlightGuard {
    inner: Arc<Inner>,
    id: String,
    flight: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.inner.inflight.lock();
        if map.get(&self.id).is_some_and(|(f, _)| *f == self.flight) {
            map.remove(&self.id);
        }
    }
}

impl ProfileService {
    /// Builds the service clients (one shared HTTP pool) and the cache.
    pub fn new(config: &Config, store: Arc<Store>) -> Result<ProfileService, reqwest::Error> {
        let http = client::http_client()?;
        let now = Instant::now();
        let client =
            |name| ServiceClient::new(config.services.get(name).clone(), http.clone(), now);
        Ok(ProfileService {
            inner: Arc::new(Inner {
                user: client(ServiceName::User),
                order: client(ServiceName::Order),
                product: client(ServiceName::Product),
                recommendation: client(ServiceName::Recommendation),
                store,
                config: config.profile.clone(),
                inflight: Mutex::new(HashMap::new()),
                next_flight: Default::default(),
            }),
        })
    }

    /// Answers an already authorized profile request for `id`.
    pub async fn get(&self, id: &str, request_id: &str) -> Result<ProfileAnswer, GatewayError> {
        let inner = &self.inner;
        let mut cache = CacheStatus::Miss;
        if !inner.config.cache_ttl.is_zero() {
            match inner.store.get(&cache_key(id)).await {
                // A value that is not a JSON object is corrupt: a miss, overwritten below.
                Ok(Some(v)) if has_shape(&v, Shape::Object) => {
                    metrics::CACHE_REQUESTS
                        .with_label_values(&[CacheStatus::Hit.label()])
                        .inc();
                    return Ok(ProfileAnswer {
                        body: v,
                        cache: CacheStatus::Hit,
                    });
                }
                Ok(_) => {}
                Err(_) => cache = CacheStatus::Bypass,
            }
        }
        metrics::CACHE_REQUESTS
            .with_label_values(&[cache.label()])
            .inc();
        let built = self.flight(id, request_id).await?;
        Ok(ProfileAnswer {
            body: built.body,
            cache,
        })
    }

    /// Joins the in-flight build for `id`, or starts one.
    fn flight(&self, id: &str, request_id: &str) -> Flight {
        let mut map = self.inner.inflight.lock();
        if let Some(f) = map.get(id).and_then(|(_, w)| w.upgrade()) {
            return f;
        }
        let flight = self
            .inner
            .next_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = FlightGuard {
            inner: self.inner.clone(),
            id: id.to_string(),
            flight,
        };
        let inner = self.inner.clone();
        let id_owned = id.to_string();
        let request_id = request_id.to_string();
        let fut: Flight = async move {
            let _guard = guard;
            inner.build(&id_owned, &request_id).await
        }
        .boxed()
        .shared();
        if let Some(weak) = fut.downgrade() {
            map.insert(id.to_string(), (flight, weak));
        }
        fut
    }
}

fn cache_key(id: &str) -> String {
    format!("profile:{id}")
}

impl Inner {
    async fn build(self: &Arc<Self>, id: &str, request_id: &str) -> Result<Built, GatewayError> {
        let deadline = Instant::now() + self.config.deadline;
        let user = self
            .user
            .fetch(id, request_id, deadline)
            .await
            .map_err(|e| match e {
                CallError::NotFound => GatewayError::NotFound("user not found".into()),
                CallError::BreakerOpen => {
                    GatewayError::Unavailable("user service unavailable (circuit open)".into())
                }
                CallError::Failed(FailureKind::Timeout) => {
                    GatewayError::Timeout("user service timed out".into())
                }
                CallError::Failed(_) => GatewayError::BadGateway("user service failed".into()),
            })?;
        let (orders, products, recommendations) = tokio::join!(
            self.order.fetch(id, request_id, deadline),
            self.product.fetch(id, request_id, deadline),
            self.recommendation.fetch(id, request_id, deadline),
        );
        let parts = [
            (&self.order, orders),
            (&self.product, products),
            (&self.recommendation, recommendations),
        ];
        let mut body = BytesMut::with_capacity(
            64 + user.len()
                + parts
                    .iter()
                    .map(|(_, r)| r.as_ref().map_or(2, |b| b.len()))
                    .sum::<usize>(),
        );
        body.put_slice(b"{\"user\":");
        body.put_slice(&user);
        let mut degraded: Vec<&'static str> = Vec::new();
        for (client, result) in &parts {
            let key = client.name().document_key();
            body.put_slice(b",\"");
            body.put_slice(key.as_bytes());
            body.put_slice(b"\":");
            match result {
                Ok(doc) => body.put_slice(doc),
                Err(_) => {
                    metrics::PROFILE_DEGRADED
                        .with_label_values(&[client.name().as_str()])
                        .inc();
                    degraded.push(key);
                    body.put_slice(b"[]");
                }
            }
        }
        body.put_slice(b",\"degraded\":");
        body.put_slice(
            serde_json::to_string(&degraded)
                .unwrap_or_else(|_| "[]".into())
                .as_bytes(),
        );
        body.put_slice(b"}");
        let body = body.freeze();
        if degraded.is_empty() && !self.config.cache_ttl.is_zero() {
            // The response does not wait for the write; a failed write only costs a miss later.
            let store = self.store.clone();
            let key = cache_key(id);
            let value = body.clone();
            let ttl = self.config.cache_ttl;
            tokio::spawn(async move {
                if let Err(e) = store.set(&key, value, ttl).await {
                    tracing::debug!(error = %e, "profile cache write failed");
                }
            });
        }
        Ok(Built { body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str, roles: &[&str]) -> Identity {
        Identity {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(parse_id("/api/profile/abc_1-2").ok(), Some("abc_1-2"));
        for bad in [
            "/api/profile/",
            "/api/profile/../1",
            "/api/profile/%00",
            "/api/profile/a/b",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
        assert!(parse_id(&format!("/api/profile/{}", "a".repeat(64))).is_ok());
        assert!(parse_id(&format!("/api/profile/{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn owner_only_and_me() {
        let five = who("5", &[]);
        assert_eq!(authorize("5", Some(&five), true).ok().as_deref(), Some("5"));
        assert_eq!(
            authorize("me", Some(&five), true).ok().as_deref(),
            Some("5")
        );
        assert_eq!(
            authorize("6", Some(&five), true).map_err(|e| e.status()),
            Err(403)
        );
        assert!(authorize("6", Some(&who("1", &["admin"])), true).is_ok());
        assert!(authorize("6", Some(&five), false).is_ok());
        assert_eq!(
            authorize("me", None, false).map_err(|e| e.status()),
            Err(401)
        );
    }
}
