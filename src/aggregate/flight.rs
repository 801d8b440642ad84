//! Single flight: requests for the same key share one build, and a build every waiting
//! client has left is dropped with its upstream calls.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::FutureExt;

use super::cache::{now_ms, servable};
use super::{Aggregate, Built, Flight};
use crate::trace::Parent;
use opentelemetry::trace::SpanContext;

pub(super) struct FlightGuard {
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

impl Aggregate {
    /// Joins the in-flight build for `key` (with the span context of the request that started
    /// it, when traced), or starts one. A `revalidate` build (a stale entry's, in the
    /// background) stays in flight until its entry is written, so a stale read meanwhile joins
    /// it instead of starting a second rebuild; others answer without waiting for the write.
    pub(super) fn flight(
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
    pub(super) async fn refreshed(&self, key: &str) -> Option<Built> {
        let e = servable(&self.store.get(key).await.ok()??)?;
        let now = now_ms();
        e.is_fresh(now).then(|| Built {
            ttl: e.remaining(now),
            body: e.body,
            degraded: false,
        })
    }
}
