//! Distributed tracing: W3C trace context in and out, one SERVER span per request and one
//! CLIENT span per upstream attempt, exported as OTLP/HTTP by a background task.
//!
//! - `export`: the bounded queue every finished span goes to, and the task that sends it.
//!
//! Spans are built directly on the OpenTelemetry SDK and carried explicitly (in the proxy's
//! `Ctx`, and as a [`Parent`] into aggregate builds): no thread-local "current span", so a
//! span started in one Pingora phase ends in another, and a single-flight build polled by a
//! follower still hangs under the leader's request. Unsampled spans are the SDK's
//! non-recording ones: ids for the `traceparent` we send on, no attributes, nothing queued.
//!
//! This module may use `config` and `metrics`; `proxy` and `aggregate` use it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};

use crate::config::TracingConfig;

pub(crate) mod export;

/// The header names of W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub(crate) const TRACESTATE: &str = "tracestate";

/// The process's tracer: sampling, ids, and the queue finished spans go to.
pub struct Tracer {
    tracer: SdkTracer,
    /// Kept so the queue processor lives as long as the tracer.
    _provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
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
    pub(crate) traceparent: Option<String>,
    /// `tracestate`, when the trace carries one.
    pub(crate) tracestate: Option<String>,
}

impl Propagated {
    /// The pairs to set on an outgoing request (replacing whatever the client sent).
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TRACEPARENT, &self.traceparent),
            (TRACESTATE, &self.tracestate),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)))
    }
}

impl Tracer {
    /// The tracer for `config`, and the export task its spans go to.
    pub(crate) fn new(config: &TracingConfig) -> Result<(Tracer, export::ExportService), String> {
        let (queue, service) = export::ExportService::new(config)?;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_span_processor(queue)
            .with_resource(service.resource().clone())
            .build();
        let tracer = provider.tracer("gateway");
        Ok((
            Tracer {
                tracer,
                _provider: provider,
                propagator: TraceContextPropagator::new(),
            },
            service,
        ))
    }

    /// The SERVER span of a request: the client's trace continued when its `traceparent` is
    /// valid, a new one otherwise (a malformed header is ignored, never an error).
    pub(crate) fn server(&self, req: &HeaderMap, start: SystemTime) -> RequestTrace {
        let incoming = self.propagator.extract(&Headers(req));
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.tracer, &incoming);
        RequestTrace {
            tracer: self.tracer.clone(),
            server: span,
            attempt: None,
            try_status: 0,
        }
    }
}

/// Where an aggregate build's spans hang: the SERVER span of the request that started it.
#[derive(Clone)]
pub(crate) struct Parent {
    tracer: SdkTracer,
    cx: Context,
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
    /// [`Attempt::end`]ed). Attributes are built only for a sampled trace.
    pub(crate) fn client(
        &self,
        name: impl Into<Cow<'static, str>>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Attempt {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &self.cx);
        if span.is_recording() {
            span.set_attributes(attributes());
        }
        Attempt { span }
    }

    /// The span context a follower links to.
    pub(crate) fn span_context(&self) -> &SpanContext {
        &self.span
    }
}

/// One upstream attempt's CLIENT span.
pub(crate) struct Attempt {
    span: Span,
}

impl Attempt {
    /// The headers that make the upstream's span a child of this one (W3C trace context,
    /// written directly: the propagator would build a `Context` per request to say the same).
    pub(crate) fn propagated(&self) -> Propagated {
        let sc = self.span.span_context();
        let state = sc.trace_state().header();
        Propagated {
            traceparent: Some(format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8() & 1
            )),
            tracestate: (!state.is_empty()).then_some(state),
        }
    }

    /// Adds attributes (only recorded for a sampled trace).
    pub(crate) fn set(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.span.is_recording() {
            self.span.set_attributes(attributes());
        }
    }

    /// Adds an event (e.g. a retry's backoff) at this moment.
    pub(crate) fn event(&mut self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.span.is_recording() {
            self.span.add_event(name, attributes());
        }
    }

    /// Ends the span: `outcome` as `gateway.outcome`, and an error status unless it is
    /// `success` (or `not_found`, an answer).
    pub(crate) fn end(mut self, outcome: &'static str) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("gateway.outcome", outcome));
            if !matches!(outcome, "success" | "not_found") {
                self.span
                    .set_attribute(KeyValue::new("error.type", outcome));
                self.span.set_status(Status::error(outcome));
            }
        }
        self.span.end();
    }
}

/// A request's spans: the SERVER span and the proxied try in progress.
pub(crate) struct RequestTrace {
    tracer: SdkTracer,
    server: Span,
    attempt: Option<Attempt>,
    /// The status the try in progress answered (0: none yet).
    try_status: u16,
}

impl RequestTrace {
    /// The trace id for the access log (also for unsampled requests: the services see it).
    pub(crate) fn trace_id(&self) -> String {
        self.server.span_context().trace_id().to_string()
    }

    /// Whether this request's spans are recorded and exported.
    pub(crate) fn sampled(&self) -> bool {
        self.server.is_recording()
    }

    /// Adds attributes to the SERVER span (only built for a sampled trace).
    pub(crate) fn set(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.server.is_recording() {
            self.server.set_attributes(attributes());
        }
    }

    /// Names the SERVER span `{method} {route}` once the route is known.
    pub(crate) fn name(&mut self, method: &str, route: Option<&str>) {
        if self.server.is_recording() {
            self.server.update_name(match route {
                Some(r) => format!("{method} {r}"),
                None => method.to_string(),
            });
        }
    }

    /// The parent an aggregate build's spans hang under.
    pub(crate) fn parent(&self) -> Parent {
        let span = self.server.span_context().clone();
        Parent {
            tracer: self.tracer.clone(),
            cx: Context::new().with_remote_span_context(span.clone()),
            span,
        }
    }

    /// This request joined another's build: a link to the leader's span, no leg spans here.
    pub(crate) fn link(&mut self, leader: SpanContext) {
        if self.server.is_recording() {
            self.server.add_link(
                leader,
                vec![KeyValue::new("gateway.link", "single_flight_leader")],
            );
        }
    }

    /// Starts a proxied try (ending the previous one, already reported).
    pub(crate) fn start_try(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        if let Some(a) = self.attempt.take() {
            a.end("retried");
        }
        self.attempt = Some(self.parent().client(name, attributes));
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
        if self.server.is_recording() {
            if status != 0 {
                self.server.set_attribute(KeyValue::new(
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
                self.server
                    .set_attribute(KeyValue::new("error.type", why.clone()));
                self.server.set_status(Status::error(why));
            }
        }
        self.server.end();
    }
}

/// `client.address` etc. for the SERVER span.
pub(crate) fn server_attributes(
    method: &str,
    path: &str,
    scheme: &'static str,
    protocol: &'static str,
    client: Option<IpAddr>,
    user_agent: Option<&HeaderValue>,
) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.path", path.to_string()),
        KeyValue::new("url.scheme", scheme),
        KeyValue::new("network.protocol.version", protocol),
    ];
    if let Some(ip) = client {
        v.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(ua) = user_agent.and_then(|u| u.to_str().ok()) {
        v.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    v
}
