//! Answers the gateway gives itself: probes, the aggregate endpoint, unknown paths, the
//! redirect to HTTPS and CORS preflights.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{ErrorType, Result};

use super::routes::{ProxyRoute, Route};
use super::{respond, Ctx, Gateway};
use crate::aggregate::Aggregate;
use crate::config::RouteTarget;
use crate::edge::cors::Preflight;
use crate::edge::ratelimit::RateVerdict;
use crate::edge::ratelimit::Scope;
use crate::error::GatewayError;
use crate::headers;

impl Gateway {
    /// Answers a request on the plain listener with `308` to the same path and query on the
    /// HTTPS listener (`redirect_http`).
    pub(super) async fn redirect_to_https(&self, session: &mut Session, ctx: &Ctx) -> Result<bool> {
        let port = ctx
            .snap
            .config
            .tls
            .as_ref()
            .map_or(443, |t| t.listen.port());
        let Some(location) = https_location(session.req_header(), port) else {
            let e = GatewayError::BadRequest("a Host header is needed to redirect to HTTPS".into());
            respond::error(session, &e, &ctx.local_headers()).await?;
            return Ok(true);
        };
        let body = Bytes::from(serde_json::json!({ "location": location }).to_string());
        let mut headers = ctx.local_headers();
        match http::HeaderValue::try_from(location) {
            Ok(v) => headers.push(("Location", v)),
            Err(_) => {
                let e = GatewayError::BadRequest("the request's host cannot be redirected".into());
                respond::error(session, &e, &ctx.local_headers()).await?;
                return Ok(true);
            }
        }
        respond::json(session, 308, body, &headers).await?;
        Ok(true)
    }

    /// Answers a CORS preflight: before authentication (it carries no token) but after the
    /// per-client limit; never proxied.
    pub(super) async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        preflight: Preflight,
    ) -> Result<bool> {
        let req = session.req_header();
        ctx.rate = ctx
            .snap
            .edge
            .limit(
                ctx.client.as_ref().map(|c| c.ip),
                Scope {
                    path: req.uri.path(),
                    names: ctx.route.config().and_then(|r| r.policies.as_deref()),
                },
                &req.headers,
            )
            .await;
        if let Some(e) = ctx.rate.as_ref().and_then(RateVerdict::refusal) {
            // The page must be able to read why it was refused: an allowed origin gets the
            // same CORS headers as on any other answer.
            ctx.cors = ctx
                .snap
                .edge
                .cors
                .response_headers(req.uri.path(), &req.headers);
            respond::error(session, &e, &ctx.local_headers()).await?;
            return Ok(true);
        }
        match preflight {
            Preflight::Allow(headers) => {
                let mut resp = ResponseHeader::build(204, Some(headers.len() + 6))?;
                for (name, value) in ctx.local_headers() {
                    resp.insert_header(name, value)?;
                }
                for (name, value) in headers {
                    resp.insert_header(name, value)?;
                }
                session.write_response_header(Box::new(resp), true).await?;
            }
            Preflight::Deny { headers, why } => {
                let e = GatewayError::Forbidden(why.into());
                let mut all = ctx.local_headers();
                all.extend(
                    headers
                        .into_iter()
                        .filter_map(|(n, v)| Some((n, http::HeaderValue::from_str(&v).ok()?))),
                );
                respond::error(session, &e, &all).await?;
            }
        }
        Ok(true)
    }

    async fn answer_aggregate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        aggregate: &Arc<Aggregate>,
    ) -> Result<()> {
        let req = session.req_header();
        let mut by_caller = false;
        let target = if aggregate.allows(&req.method) {
            aggregate.params(req.uri.path()).and_then(|mut params| {
                by_caller = aggregate.names_caller(&params);
                aggregate
                    .authorize(&mut params, ctx.identity.as_deref())
                    .map(|()| params)
            })
        } else {
            Err(GatewayError::MethodNotAllowed {
                message: "only GET is allowed here".into(),
                allow: "GET, HEAD".into(),
            })
        };
        let result = match target {
            Ok(params) => {
                let got = aggregate.get(params, &ctx.request_id, ctx.trace.as_mut());
                match until_client_gone(session, got).await {
                    Some(r) => r,
                    // The dropped future cancelled its upstream calls; there is nobody to answer.
                    None => return Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        let mut headers = ctx.local_headers();
        // The answer is the caller's: no shared cache may give it to another caller, and a
        // browser's own cache must not either when the next request carries another token.
        headers.push(("Vary", http::HeaderValue::from_static("Authorization")));
        match result {
            Ok(mut answer) => {
                ctx.cache = Some(answer.cache);
                if by_caller {
                    // One URL, a different document per caller: always asked again.
                    answer.cache_control = "private, no-cache".into();
                }
                headers.push((
                    headers::X_CACHE,
                    http::HeaderValue::from_static(answer.cache.header_value()),
                ));
                if let Some(age) = answer.age {
                    headers.push((headers::AGE, age.into()));
                }
                // Named only when there is something to compress: no allocation otherwise.
                let compress = ctx.snap.compress.as_deref();
                let memo_key = compress
                    .and(answer.key)
                    .map(|k| format!("{}\0{k}", aggregate.name()));
                let compress = compress.map(|c| (c, ctx.accept, memo_key.as_deref()));
                respond::json_cached(
                    session,
                    200,
                    answer.body,
                    &headers,
                    &answer.cache_control,
                    compress,
                )
                .await
            }
            Err(e) => respond::error(session, &e, &headers).await,
        }
    }

    /// Why this replica should not get traffic yet, if it should not: identity providers'
    /// keys not loaded, and (when `readiness` asks) a routed upstream group with no healthy
    /// backend, or Redis not answering.
    async fn unready(&self, ctx: &Ctx) -> Option<(Unready, String)> {
        if !ctx.snap.edge.ready() {
            return Some((
                Unready::Keys,
                "identity provider keys are not loaded yet".into(),
            ));
        }
        if let Some((group, name)) = ctx.snap.routes.unresolved_group() {
            return Some((
                Unready::Dns,
                format!("upstream group `{group}`: `{name}` does not resolve yet"),
            ));
        }
        let wants = ctx.snap.config.readiness;
        if wants.require_upstreams {
            if let Some(group) = ctx.snap.routes.unhealthy_group() {
                return Some((
                    Unready::Upstreams,
                    format!("upstream group `{group}` has no healthy backend"),
                ));
            }
        }
        if wants.require_store {
            if let Err(e) = self.shared.store.ping().await {
                return Some((
                    Unready::Store,
                    format!("the shared store is not answering: {e}"),
                ));
            }
        }
        None
    }

    /// Answers the routes the gateway serves itself; `Ok(false)` for proxied ones.
    pub(super) async fn answer_local(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let body: &'static [u8] = match &ctx.route {
            // The common case: nothing to answer here, nothing to allocate.
            Route::Proxy(_) => return Ok(false),
            Route::Aggregate(a) => {
                let a = a.clone();
                self.answer_aggregate(session, ctx, &a).await?;
                return Ok(true);
            }
            Route::Healthz => br#"{"status":"ok"}"#,
            Route::Readyz => match self.unready(ctx).await {
                Some((check, why)) => {
                    check.count();
                    let e = GatewayError::Unavailable(why.into());
                    respond::error(session, &e, &ctx.local_headers()).await?;
                    return Ok(true);
                }
                None => br#"{"status":"ready"}"#,
            },
            Route::NotFound | Route::Invalid => {
                let e = GatewayError::NotFound("no route matches this request".into());
                respond::error(session, &e, &ctx.local_headers()).await?;
                return Ok(true);
            }
            Route::NotAllowed(allow) => {
                let e = GatewayError::MethodNotAllowed {
                    message: format!("this path takes {allow} only").into(),
                    allow: allow.to_string().into(),
                };
                respond::error(session, &e, &ctx.local_headers()).await?;
                return Ok(true);
            }
            Route::Direct(r) => {
                let r = r.clone();
                return self.answer_direct(session, ctx, &r).await;
            }
        };
        respond::json(session, 200, Bytes::from_static(body), &ctx.local_headers()).await?;
        Ok(true)
    }
}

impl Gateway {
    /// Answers a route's `redirect` or `respond`, with its response header rules.
    async fn answer_direct(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &ProxyRoute,
    ) -> Result<bool> {
        let req = session.req_header();
        let mut buf = String::new();
        let host = super::routes::matcher::request_host(&req.uri, &req.headers, &mut buf);
        let values = ctx.values(route, host, req.uri.path());
        let (status, content_type, body, location) = match &route.config.target {
            RouteTarget::Redirect { to, status } => {
                let mut location = values.render(to).unwrap_or_default();
                if !location.contains('?') {
                    if let Some(q) = req.uri.query() {
                        location.push('?');
                        location.push_str(q);
                    }
                }
                let Ok(value) = http::HeaderValue::from_str(&location) else {
                    let e = GatewayError::BadRequest("this request cannot be redirected".into());
                    respond::error(session, &e, &ctx.local_headers()).await?;
                    return Ok(true);
                };
                let body = serde_json::json!({ "location": location }).to_string();
                (*status, "application/json", Bytes::from(body), Some(value))
            }
            RouteTarget::Respond {
                status,
                body,
                content_type,
            } => (*status, *content_type, body.clone(), None),
            RouteTarget::Upstream(_) | RouteTarget::Aggregate(_) => return Ok(false),
        };
        let mut resp = ResponseHeader::build(status, Some(8))?;
        resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        for (name, value) in ctx.local_headers() {
            resp.insert_header(name, value)?;
        }
        if let Some(l) = location {
            resp.insert_header(http::header::LOCATION, l)?;
        }
        super::routes::apply_response_rules(&mut resp, route, &values);
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        let head_only = req.method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

/// Runs `work` unless the client closes its connection first (then `None`, and `work` is
/// dropped). A GET has no body, so anything the client does meanwhile is a close or a pipelined
/// request; only a close cancels.
async fn until_client_gone<T>(
    session: &mut Session,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let downstream = session.as_downstream_mut();
    downstream.set_abort_on_close(true);
    let gone = async {
        match downstream.read_body_or_idle(true).await {
            Err(e) if e.etype() == &ErrorType::ConnectionClosed => {}
            _ => std::future::pending::<()>().await,
        }
    };
    let result = tokio::select! {
        biased;
        r = work => Some(r),
        () = gone => None,
    };
    session.as_downstream_mut().set_abort_on_close(false);
    result
}

/// `https://` + the request's host + the HTTPS port (left out when 443) + path and query;
/// `None` when the request names no usable host.
fn https_location(req: &RequestHeader, https_port: u16) -> Option<String> {
    let host = req
        .uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers.get(http::header::HOST)?.to_str().ok()?;
            let a: http::uri::Authority = h.parse().ok()?;
            Some(a.host().to_string())
        })?;
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{host}{port}{target}"))
}

/// What made `/readyz` answer 503 (`readiness_refusals_total{check}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unready {
    /// An identity provider's keys are not loaded.
    Keys,
    /// A routed upstream group has no healthy backend.
    Upstreams,
    /// Redis did not answer.
    Store,
    /// A backend name has never resolved.
    Dns,
}

impl Unready {
    /// Every check, for priming.
    pub(crate) const ALL: [Unready; 4] = [
        Unready::Keys,
        Unready::Upstreams,
        Unready::Store,
        Unready::Dns,
    ];

    /// The `check` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Unready::Keys => "keys",
            Unready::Upstreams => "upstreams",
            Unready::Store => "store",
            Unready::Dns => "dns",
        }
    }

    fn count(self) {
        crate::metrics::READINESS_REFUSALS
            .with_label_values(&[self.label()])
            .inc();
    }

    /// Creates `readiness_refusals_total` at 0 for every check.
    pub(crate) fn prime() {
        for check in Unready::ALL {
            crate::metrics::READINESS_REFUSALS.with_label_values(&[check.label()]);
        }
    }
}
