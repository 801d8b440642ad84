//! Distributed tracing: W3C trace context in and out, one SERVER span per request and one
//! CLIENT span per upstream attempt, exported as OTLP/HTTP by a background task.
//!
//! - `export`: the bounded queue every finished span goes to, and the task that sends it.
//!
//! Spans are carried explicitly (in the proxy's `Ctx`, and as a [`Parent`] into aggregate
//! builds): no thread-local "current span", so a span started in one Pingora phase ends in
//! another, and a single-flight build polled by a follower still hangs under the leader's
//! request.
//!
//! The sampling decision is taken first: an unsampled request (nine in ten at the default
//! ratio) gets bare ids for the `traceparent` it sends on and records nothing. A sampled span
//! is recorded straight into its OTLP encoding (`otlp`), each attribute the moment it is set,
//! and copied into the export queue when it ends. The `opentelemetry` crate gives the types
//! (ids, trace state, attribute values, status) and `opentelemetry_sdk` the W3C propagator;
//! the SDK's spans and processors are not used: measured with callgrind, they and the OTLP
//! exporter cost several times this path per sampled request (docs/BENCHMARKS.md has the
//! counts).
//!
//! Here: a request's trace, from the sampling decision to its last span (the queue and its
//! task are `export`, the wire format `otlp`).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::config::TracingConfig;

pub(crate) mod export;
mod otlp;

use export::Sink;
pub(crate) use otlp::Record;

/// The header names of W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub(crate) const TRACESTATE: &str = "tracestate";
/// [`TRACEPARENT`] parsed once: every traced request looks it up.
static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
/// See [`TRACEPARENT_NAME`].
static TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// The process's tracer: sampling, ids, and the queue finished spans go to.
pub struct Tracer {
    sink: Arc<Sink>,
    propagator: TraceContextPropagator,
    /// A new trace is sampled when a random `u64` falls below this (`sample_ratio` of the
    /// range; `u64::MAX` with ratio 1 keeps every one).
    threshold: u64,
}

/// A fresh span id (never the invalid zero id).
fn span_id() -> SpanId {
    SpanId::from(random_u64() | 1)
}

thread_local! {
    /// Ids need to be unique and unpredictable enough to spread, not secret: a small fast
    /// generator per thread, seeded from the OS (what the SDK's id generator uses too), at a
    /// third of the thread-local ChaCha's cost per id.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

fn random_u64() -> u64 {
    IDS.with_borrow_mut(rand::RngCore::next_u64)
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The two headers of a span's context, as the next hop must receive them.
#[derive(Default)]
pub(crate) struct Propagated {
    /// `traceparent`.
    pub(crate) traceparent: Option<HeaderValue>,
    /// `tracestate`, when the trace carries one.
    pub(crate) tracestate: Option<HeaderValue>,
}

impl Propagated {
    /// The pairs to set on an outgoing request (replacing whatever the client sent), moved
    /// out: cloning a value would promote its bytes to shared storage, an allocation each.
    pub(crate) fn into_pairs(self) -> impl Iterator<Item = (&'static str, HeaderValue)> {
        [
            (TRACEPARENT, self.traceparent),
            (TRACESTATE, self.tracestate),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
    }
}

impl Tracer {
    /// The tracer for `config`, and the export task its spans go to.
    pub(crate) fn new(config: &TracingConfig) -> Result<(Tracer, export::ExportService), String> {
        let (sink, service) = export::ExportService::new(config)?;
        Ok((
            Tracer {
                sink,
                propagator: TraceContextPropagator::new(),
                threshold: if config.sample_ratio >= 1.0 {
                    u64::MAX
                } else {
                    (config.sample_ratio.max(0.0) * u64::MAX as f64) as u64
                },
            },
            service,
        ))
    }

    /// The SERVER span of a request: the client's trace continued when its `traceparent` is
    /// valid, a new one otherwise (a malformed header is ignored, never an error). Parent
    /// based: a client's sampled flag is followed either way; a new trace is sampled with
    /// probability `sample_ratio` (a draw per request, like the SDK's ratio sampler).
    /// `describe` names the span and writes its attributes; it runs only for a sampled request.
    pub(crate) fn server(
        &self,
        req: &HeaderMap,
        started: std::time::Instant,
        describe: impl FnOnce(&mut Record),
    ) -> RequestTrace {
        // One pass over the few names a client sends finds both headers (two lookups would
        // hash both names for every request); most requests carry neither, and then no
        // propagator runs and no `Context` is built.
        let (mut sent_parent, mut sent_state) = (false, false);
        for name in req.keys() {
            sent_parent |= *name == TRACEPARENT_NAME;
            sent_state |= *name == TRACESTATE_NAME;
        }
        let incoming = sent_parent
            .then(|| self.propagator.extract(&Headers(req)))
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        let (sampled, trace, state, parent) = match incoming {
            Some(sc) => (
                sc.is_sampled(),
                sc.trace_id(),
                sc.trace_state().clone(),
                Some(sc.span_id()),
            ),
            None => {
                // The draw and the trace id from one borrow of the generator.
                let [draw, hi, lo] = IDS.with_borrow_mut(|r| {
                    use rand::RngCore;
                    [r.next_u64(), r.next_u64(), r.next_u64()]
                });
                let sampled = self.threshold == u64::MAX || draw < self.threshold;
                let trace = TraceId::from((u128::from(hi) << 64 | u128::from(lo)) | 1);
                (sampled, trace, TraceState::NONE, None)
            }
        };
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(trace, span_id(), flags, false, state);
        let server = sampled.then(|| {
            let mut rec = Record::new(
                &sc,
                parent.unwrap_or(SpanId::INVALID),
                parent.is_some(),
                SpanKind::Server,
                Cow::Borrowed("request"),
                // The wall-clock start, read only for a span that is kept.
                SystemTime::now() - started.elapsed(),
            );
            describe(&mut rec);
            Live::new(rec, &self.sink)
        });
        RequestTrace {
            sink: self.sink.clone(),
            sc,
            server,
            attempt: None,
            try_status: 0,
            from_client: sent_parent || sent_state,
        }
    }
}

/// A sampled span in progress: it goes to the export queue when it ends or is dropped (a
/// request cut short still reports what it did).
struct Live {
    rec: Record,
    sink: Arc<Sink>,
}

impl Live {
    /// Boxed: the record is large, and the unsampled path (most requests) should move
    /// only a pointer's worth of it.
    fn new(rec: Record, sink: &Arc<Sink>) -> Box<Live> {
        Box::new(Live {
            rec,
            sink: sink.clone(),
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.sink.finish(&self.rec);
    }
}

/// Where an aggregate build's spans hang: the SERVER span of the request that started it.
#[derive(Clone)]
pub(crate) struct Parent {
    sink: Arc<Sink>,
    span: SpanContext,
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parent")
            .field("trace_id", &self.span.trace_id())
            .finish()
    }
}

impl Parent {
    /// A CLIENT span under the request (started now; it ends when dropped or
    /// [`Attempt::end`]ed). Its name and attributes are built only for a sampled trace (a
    /// child is sampled exactly when its parent is); an unsampled one is a bare span id.
    pub(crate) fn client<N: Into<Cow<'static, str>>>(
        &self,
        name: impl FnOnce() -> N,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Attempt {
        self.client_with(|rec| {
            rec.name(name().into());
            rec.attributes(&attributes());
        })
    }

    /// [`Parent::client`] with the span named and its attributes written by `describe`.
    pub(crate) fn client_with(&self, describe: impl FnOnce(&mut Record)) -> Attempt {
        child(&self.span, &self.sink, describe)
    }

    /// The span context a follower links to.
    pub(crate) fn span_context(&self) -> &SpanContext {
        &self.span
    }
}

/// A CLIENT span under `parent`: a bare span id when unsampled (a child is sampled exactly
/// when its parent is), otherwise a record `describe` names and fills.
fn child(parent: &SpanContext, sink: &Arc<Sink>, describe: impl FnOnce(&mut Record)) -> Attempt {
    let sc = SpanContext::new(
        parent.trace_id(),
        span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    );
    let span = parent.is_sampled().then(|| {
        let mut rec = Record::new(
            &sc,
            parent.span_id(),
            false,
            SpanKind::Client,
            Cow::Borrowed("attempt"),
            SystemTime::now(),
        );
        describe(&mut rec);
        Live::new(rec, sink)
    });
    Attempt { sc, span }
}

/// One upstream attempt's CLIENT span (recorded only for a sampled request).
pub(crate) struct Attempt {
    sc: SpanContext,
    span: Option<Box<Live>>,
}

impl Attempt {
    /// The headers that make the upstream's span a child of this one (W3C trace context,
    /// written directly: the propagator would build a `Context` and format ids per request
    /// to say the same; `const_hex` writes them, SIMD where the CPU has it).
    pub(crate) fn propagated(&self) -> Propagated {
        let sc = &self.sc;
        // Both ids in one encoding pass, then placed between the dashes.
        let mut ids = [0u8; 24];
        ids[..16].copy_from_slice(&sc.trace_id().to_bytes());
        ids[16..].copy_from_slice(&sc.span_id().to_bytes());
        let mut hex = [0u8; 48];
        // The buffer is exactly twice the input's length: the write cannot fail.
        let _ = const_hex::encode_to_slice(ids, &mut hex);
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        v[3..35].copy_from_slice(&hex[..32]);
        v[36..52].copy_from_slice(&hex[32..]);
        v[54] = b'0' + (sc.trace_flags().to_u8() & 1);
        // Most traces carry no state: no `String` is built for them.
        let tracestate = (*sc.trace_state() != TraceState::NONE)
            .then(|| sc.trace_state().header())
            .filter(|s| !s.is_empty())
            .and_then(|s| HeaderValue::from_str(&s).ok());
        Propagated {
            traceparent: HeaderValue::from_bytes(&v).ok(),
            tracestate,
        }
    }

    /// Adds attributes (only recorded for a sampled trace).
    pub(crate) fn set(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(span) = &mut self.span {
            span.rec.attributes(&attributes());
        }
    }

    /// Adds an event (e.g. a retry's backoff) at this moment.
    pub(crate) fn event(&mut self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(span) = &mut self.span {
            span.rec.event(name, SystemTime::now(), &attributes());
        }
    }

    /// Ends a step that was never run (a leg skipped for a failed dependency): zero length.
    pub(crate) fn skipped(mut self) {
        if let Some(span) = self.span.as_mut() {
            span.rec.instant();
        }
        self.end("skipped");
    }

    /// Ends the span: `outcome` as `gateway.outcome`, and an error status unless it is
    /// `success` (or `not_found`, an answer).
    pub(crate) fn end(self, outcome: &'static str) {
        let Some(mut span) = self.span else { return };
        span.rec
            .attribute(&KeyValue::new("gateway.outcome", outcome));
        if !matches!(outcome, "success" | "not_found") {
            span.rec.attribute(&KeyValue::new("error.type", outcome));
            span.rec.status(Status::error(outcome));
        }
    }
}

/// A request's spans: the SERVER span and the proxied try in progress.
pub(crate) struct RequestTrace {
    sink: Arc<Sink>,
    /// The SERVER span's context (its ids also when unsampled).
    sc: SpanContext,
    /// The SERVER span, for a sampled request.
    server: Option<Box<Live>>,
    attempt: Option<Attempt>,
    /// The status the try in progress answered (0: none yet).
    try_status: u16,
    /// The client sent trace context (to be replaced on the way upstream).
    from_client: bool,
}

impl RequestTrace {
    /// The trace id for the access log (also for unsampled requests: the services see it).
    pub(crate) fn trace_id(&self) -> String {
        crate::headers::hex_id(self.sc.trace_id().to_bytes())
    }

    /// Whether the client sent `traceparent` or `tracestate` (which must not reach upstream).
    pub(crate) fn client_sent_context(&self) -> bool {
        self.from_client
    }

    /// Adds attributes to the SERVER span (only built for a sampled trace).
    pub(crate) fn set(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(server) = &mut self.server {
            server.rec.attributes(&attributes());
        }
    }

    /// The parent an aggregate build's spans hang under.
    pub(crate) fn parent(&self) -> Parent {
        Parent {
            sink: self.sink.clone(),
            span: self.sc.clone(),
        }
    }

    /// This request joined another's build: a link to the leader's span, no leg spans here.
    pub(crate) fn link(&mut self, leader: SpanContext) {
        if let Some(server) = &mut self.server {
            server.rec.link(
                &leader,
                &[KeyValue::new("gateway.link", "single_flight_leader")],
            );
        }
    }

    /// Starts a proxied try (ending the previous one, already reported); `describe` names it
    /// and writes its attributes (only for a sampled request).
    pub(crate) fn start_try(&mut self, describe: impl FnOnce(&mut Record)) {
        if let Some(a) = self.attempt.take() {
            a.end("retried");
        }
        self.attempt = Some(child(&self.sc, &self.sink, describe));
        self.try_status = 0;
    }

    /// The try in progress got its answer header.
    pub(crate) fn try_answered(&mut self, status: u16) {
        self.try_status = status;
        if let Some(a) = &mut self.attempt {
            a.set(|| {
                vec![KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                )]
            });
        }
    }

    /// The try in progress, to read.
    pub(crate) fn try_ref(&self) -> Option<&Attempt> {
        self.attempt.as_ref()
    }

    /// The try in progress.
    pub(crate) fn try_mut(&mut self) -> Option<&mut Attempt> {
        self.attempt.as_mut()
    }

    /// Ends the try in progress with `outcome`.
    pub(crate) fn end_try(&mut self, outcome: &'static str) {
        if let Some(a) = self.attempt.take() {
            a.end(outcome);
        }
    }

    /// Ends every span: the try still open (its answer streamed until now: `success`, a 5xx's
    /// `server_error`, or `upstream_error` when `failed` mid-answer) and the SERVER span with
    /// the status; an error status for a 5xx, or when nothing was answered.
    pub(crate) fn finish(mut self, status: u16, failed: bool) {
        let outcome = if failed {
            "upstream_error"
        } else if self.try_status >= 500 {
            "server_error"
        } else {
            "success"
        };
        self.end_try(outcome);
        let Some(mut server) = self.server.take() else {
            return;
        };
        if status != 0 {
            server.rec.attribute(&KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if status >= 500 || status == 0 {
            let why = if status == 0 {
                "no answer sent".to_string()
            } else {
                status.to_string()
            };
            server
                .rec
                .attribute(&KeyValue::new("error.type", why.clone()));
            server.rec.status(Status::error(why));
        }
    }
}

/// A method as a `'static` attribute value (no allocation for the standard ones).
pub(crate) fn method_value(method: &http::Method) -> opentelemetry::Value {
    use http::Method as M;
    let known = match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        _ => return opentelemetry::Value::from(method.as_str().to_string()),
    };
    opentelemetry::Value::from(known)
}

/// An address as text, written into `buf` (no `String` for an attribute encoded at once). An
/// IPv4 address, nearly every client and backend, is written digit by digit: `Display` goes
/// through the formatting machinery once per octet, a fifth of a sampled span's cost.
pub(crate) fn ip_str(ip: IpAddr, buf: &mut [u8; 48]) -> &str {
    let n = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                for (d, shown) in [(o / 100, o >= 100), (o / 10 % 10, o >= 10), (o % 10, true)] {
                    if shown {
                        buf[n] = b'0' + d;
                        n += 1;
                    }
                }
            }
            n
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// A span name of two parts (`GET /api/`), joined without the formatting machinery.
pub(crate) fn span_name(a: &str, b: &str) -> Cow<'static, str> {
    let mut s = String::with_capacity(a.len() + 1 + b.len());
    s.push_str(a);
    s.push(' ');
    s.push_str(b);
    Cow::Owned(s)
}

/// `http.request.method`, `url.path`, `client.address` etc. for the SERVER span.
pub(crate) fn server_attributes(
    rec: &mut Record,
    method: &http::Method,
    path: &str,
    scheme: &'static str,
    protocol: &'static str,
    client: Option<IpAddr>,
    user_agent: Option<&HeaderValue>,
) {
    rec.attribute(&KeyValue::new("http.request.method", method_value(method)));
    rec.str("url.path", path);
    rec.str("url.scheme", scheme);
    rec.str("network.protocol.version", protocol);
    if let Some(ip) = client {
        let mut buf = [0u8; 48];
        rec.str("client.address", ip_str(ip, &mut buf));
    }
    if let Some(ua) = user_agent.and_then(|u| u.to_str().ok()) {
        rec.str("user_agent.original", ua);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "10.200.7.65",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_str(ip, &mut buf), ip.to_string());
        }
        assert_eq!(span_name("GET", "/api/"), "GET /api/");
    }
}
