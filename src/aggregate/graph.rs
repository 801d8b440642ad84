//! Running a plan: each leg starts the moment every leg it depends on has finished,
//! `for_each` legs fan out per item, and the legs' outcomes are assembled into the document.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};

use super::cache::now_ms;
use super::client::{CallError, CallTrace};
use super::entry::Entry;
use super::template;
use super::{Aggregate, Built};
use crate::config::LegConfig;
use crate::error::GatewayError;
use crate::metrics;
use crate::resilience::FailureKind;
use crate::trace::Parent;
use opentelemetry::KeyValue;

/// What every call of one build shares: the request's params and id, the build's deadline
/// and trace, and the lowest freshness the services' answers allow so far.
pub(super) struct LegCall<'a> {
    pub(super) params: &'a [String],
    pub(super) request_id: &'a str,
    pub(super) deadline: Instant,
    pub(super) trace: Option<&'a Parent>,
    /// Seconds, lowered by each answer's `Cache-Control` (read with `ttl_from_services`).
    pub(super) fresh: &'a AtomicU64,
}

/// What became of one leg.
#[derive(Debug, Clone)]
pub(super) enum LegOutcome {
    /// Its document, and (when something reads into it) the parsed JSON.
    Done(Bytes, Option<Arc<serde_json::Value>>),
    /// Failed, skipped or partly fetched: its default (or what items came back) stands in,
    /// and its response key is degraded.
    Degraded(Bytes, Option<Arc<serde_json::Value>>),
}

impl LegOutcome {
    pub(super) fn ok(&self) -> bool {
        matches!(self, LegOutcome::Done(..))
    }

    pub(super) fn json(&self) -> Option<&serde_json::Value> {
        match self {
            LegOutcome::Done(_, j) | LegOutcome::Degraded(_, j) => j.as_deref(),
        }
    }

    pub(super) fn raw(&self) -> &Bytes {
        match self {
            LegOutcome::Done(b, _) | LegOutcome::Degraded(b, _) => b,
        }
    }
}

pub(super) fn put_json_string(body: &mut BytesMut, s: &str) {
    body.put_slice(
        serde_json::to_string(s)
            .unwrap_or_else(|_| "\"\"".into())
            .as_bytes(),
    );
}

impl Aggregate {
    /// Runs the legs as their dependencies finish, then writes the document.
    pub(super) async fn build(
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
        let fresh = AtomicU64::new(u64::MAX);
        let call = LegCall {
            params: &params,
            request_id,
            deadline,
            trace,
            fresh: &fresh,
        };
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
                    let call = &call;
                    running.push(async move { (i, me.run_leg(i, &inputs, call).await) });
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
    pub(super) fn fallback(&self, i: usize) -> LegOutcome {
        let leg = &self.config.legs[i];
        let raw = serde_json::to_vec(&leg.default).unwrap_or_else(|_| b"null".to_vec());
        LegOutcome::Degraded(
            Bytes::from(raw),
            self.needs_json[i].then(|| Arc::new(leg.default.clone())),
        )
    }

    /// A zero-length span for a leg never called because a leg it needs failed.
    pub(super) fn skipped_span(&self, parent: &Parent, i: usize) {
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
            .skipped();
    }

    /// One leg: its calls, and what the aggregate makes of their outcome. `Err` only for a
    /// required leg that failed (the whole answer is that error).
    pub(super) async fn run_leg(
        &self,
        i: usize,
        inputs: &[Option<serde_json::Value>],
        call: &LegCall<'_>,
    ) -> Result<LegOutcome, GatewayError> {
        let leg = &self.config.legs[i];
        let values: Vec<(usize, &serde_json::Value)> = leg
            .deps
            .iter()
            .zip(inputs)
            .filter_map(|(&d, v)| v.as_ref().map(|v| (d, v)))
            .collect();
        let result = match &leg.for_each {
            None => self.call(i, &values, None, call).await,
            Some(_) => return Ok(self.fan_out(i, &values, call).await),
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
    pub(super) async fn fan_out(
        &self,
        i: usize,
        values: &[(usize, &serde_json::Value)],
        call: &LegCall<'_>,
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
            .map(|item| self.call(i, values, Some(item), call))
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
    pub(super) async fn call(
        &self,
        i: usize,
        values: &[(usize, &serde_json::Value)],
        item: Option<(usize, &serde_json::Value)>,
        call: &LegCall<'_>,
    ) -> Result<Bytes, CallError> {
        let leg = &self.config.legs[i];
        let path = template::render(&leg.path, call.params, values, item.map(|(_, v)| v))
            .ok_or(CallError::Failed(FailureKind::BadBody))?;
        let trace = call.trace.map(|parent| CallTrace {
            parent,
            leg: &leg.name,
            item: item.map(|(n, _)| n),
        });
        self.clients[i]
            .fetch(
                &path,
                leg.expect,
                call.request_id,
                call.deadline,
                trace.as_ref(),
                call.fresh,
            )
            .await
    }

    pub(super) fn required_failed(&self, leg: &LegConfig, e: CallError) -> GatewayError {
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
    pub(super) fn document(&self, outcomes: &[LegOutcome]) -> (Bytes, bool) {
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
