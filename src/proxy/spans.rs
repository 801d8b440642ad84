//! What the request's spans say, phase by phase: the proxy calls these with tracing on.

use opentelemetry::KeyValue;
use pingora::proxy::Session;

use super::ctx::{is_tls, Ctx};
use super::health::Passive;
use super::routes::Route;
use crate::edge::AuthOutcome;
use crate::trace::{self, RequestTrace, Tracer};

/// The SERVER span, started when the request did, named after its route (never its path).
pub(super) fn start(tracer: &Tracer, session: &Session, ctx: &Ctx) -> RequestTrace {
    let req = session.req_header();
    tracer.server(&req.headers, ctx.started, |rec| {
        let method = &req.method;
        let (template, name): (Option<&str>, &str) = match &ctx.route {
            Route::Aggregate(a) => (Some(a.pattern()), a.name()),
            Route::Proxy(r) | Route::Direct(r) => (Some(r.config.path.text()), &r.config.name),
            Route::Healthz => (Some("/healthz"), "healthz"),
            Route::Readyz => (Some("/readyz"), "readyz"),
            Route::NotFound | Route::NotAllowed(_) | Route::Invalid => (None, ctx.route.label()),
        };
        rec.name(match template {
            Some(t) => trace::span_name(method.as_str(), t),
            None => method.as_str().to_string().into(),
        });
        trace::server_attributes(
            rec,
            method,
            req.uri.path(),
            if is_tls(session) { "https" } else { "http" },
            if session.is_http2() { "2" } else { "1.1" },
            ctx.client.as_ref().map(|c| c.ip),
            req.headers.get(http::header::USER_AGENT),
        );
        if let Some(tpl) = template {
            rec.str("http.route", tpl);
        }
        if let Route::Aggregate(_) = &ctx.route {
            rec.str("gateway.aggregate", name);
        }
        rec.str("gateway.route", name);
        rec.str("gateway.request_id", &ctx.request_id);
    })
}

/// The edge's decisions: the limit (`allowed`, `limited`, or `none` without a client address
/// or on a public route) and authentication (`ok`, `public` or the failure's reason).
pub(super) fn edge(ctx: &mut Ctx, auth: AuthOutcome) {
    let rate = match &ctx.rate {
        Some(d) if d.allowed() => "allowed",
        Some(d) if d.denied() => "denied",
        Some(_) => "limited",
        None => "none",
    };
    if let Some(t) = &mut ctx.trace {
        t.set(|| {
            vec![
                KeyValue::new("gateway.rate_limit.decision", rate),
                KeyValue::new("gateway.auth.outcome", auth.label()),
            ]
        });
    }
}

/// A proxied try starts on `addr` (the `n`th of this request).
pub(super) fn try_started(
    ctx: &mut Ctx,
    method: &http::Method,
    addr: std::net::SocketAddr,
    n: usize,
) {
    let Route::Proxy(route) = &ctx.route else {
        return;
    };
    let Some(t) = &mut ctx.trace else { return };
    t.start_try(|rec| {
        rec.name(trace::span_name(method.as_str(), route.config.path.text()));
        rec.attribute(&KeyValue::new(
            "http.request.method",
            trace::method_value(method),
        ));
        let mut buf = [0u8; 48];
        rec.str("server.address", trace::ip_str(addr.ip(), &mut buf));
        rec.attribute(&KeyValue::new("server.port", i64::from(addr.port())));
        if let Some(g) = &ctx.group {
            rec.str("gateway.upstream.group", &g.name);
        }
        rec.attribute(&KeyValue::new("gateway.attempt", n as i64));
        rec.attribute(&KeyValue::new("http.request.resend_count", n as i64 - 1));
    });
}

/// The try's passive-health report (`success`, `failure`, `ejected`, `restored`).
pub(super) fn health(ctx: &mut Ctx, outcome: Option<Passive>) {
    let (Some(t), Some(outcome)) = (&mut ctx.trace, outcome) else {
        return;
    };
    if let Some(a) = t.try_mut() {
        a.set(|| vec![KeyValue::new("gateway.upstream.health", outcome.label())]);
    }
}

/// The backend's answer header arrived with `status`: a 5xx is a failed try for passive
/// health, anything else a successful one; both go on the try's span.
pub(super) fn answered(ctx: &mut Ctx, status: u16, now: std::time::Instant) {
    let outcome = if status < 500 {
        ctx.backend.succeeded(now)
    } else {
        ctx.backend.failed(now)
    };
    health(ctx, outcome);
    if let Some(t) = &mut ctx.trace {
        t.try_answered(status);
    }
}

/// Ends every span: the try (its body streamed until now; `failed`: the request ended in an
/// error) and the SERVER span.
pub(super) fn finish(ctx: &mut Ctx, status: u16, failed: bool) {
    let Some(mut t) = ctx.trace.take() else {
        return;
    };
    if let Some(c) = ctx.cache {
        t.set(|| vec![KeyValue::new("gateway.cache.status", c.header_value())]);
    }
    t.finish(status, failed);
}
