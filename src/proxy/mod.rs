//! The proxy: the `ProxyHttp` implementation, the per-request [`Ctx`], and everything that
//! decides where a request goes once it is past the edge.
//!
//! - [`routes`]: the route table and path rewrites.
//! - [`upstreams`]: load-balanced upstream groups.
//! - [`health`]: active checks and passive outcome reporting.
//! - [`local`](self::local): the routes the gateway answers itself, the HTTPS redirect and
//!   CORS preflights.
//! - [`respond`]: the gateway's own answers on the session, and proxy-error mapping.
//! - [`access`]: the one-line-per-request access log.
//! - [`compress`]: response compression (negotiation, encoders, cached aggregates' copies).
//! - `ctx`: the per-request state, each field naming the phase that writes it.
//! - `admit`: the request's head made canonical, the access its route asks for, and the
//!   route's status retries.
//! - `gateway`: the gateway's methods beside the phases (construction, what the reloader and
//!   admin API take, refusing a request).
//! - [`admin`]: the admin API (status pages, dashboard, cache purge) on a listener of its
//!   own; `status`: what the status pages show.
//! - [`tunnel`]: upgraded connections (WebSocket) joined to their backend; `grpc`: gRPC
//!   calls' deadlines and the gateway's errors in gRPC's shape.
//!
//! Every phase carries its contract below, in the order Pingora runs them; this is the only
//! module that knows Pingora's phases. `lib.rs` builds the server around [`Gateway`].
//!
//! # Phases, in the order Pingora runs them
//! 1. [`new_ctx`](ProxyHttp::new_ctx): a fresh [`Ctx`].
//! 2. [`request_filter`](ProxyHttp::request_filter): request id, client address, route,
//!    hygiene, then (unless the route is public) the edge: limit, then authenticate. Local
//!    routes are answered here (`Ok(true)`); proxied ones continue (`Ok(false)`).
//! 3. [`upstream_peer`](ProxyHttp::upstream_peer): picks a healthy backend not tried yet.
//! 4. [`fail_to_connect`](ProxyHttp::fail_to_connect): a connect failure; may ask Pingora to
//!    go back to 3 with another backend.
//! 5. [`upstream_request_filter`](ProxyHttp::upstream_request_filter): the request headers the
//!    backend sees.
//! 6. [`upstream_response_filter`](ProxyHttp::upstream_response_filter) and
//!    [`response_filter`](ProxyHttp::response_filter): the backend's answer, then ours;
//!    [`response_body_filter`](ProxyHttp::response_body_filter) and
//!    [`response_trailer_filter`](ProxyHttp::response_trailer_filter): its body, compressed.
//! 7. [`error_while_proxy`](ProxyHttp::error_while_proxy) /
//!    [`fail_to_proxy`](ProxyHttp::fail_to_proxy): an error after connecting, then the
//!    answer for any error that ends the request.
//! 8. [`logging`](ProxyHttp::logging): always, once per request: metrics and the access log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::conn::report::report;
use crate::edge::client::ClientAddr;
use crate::edge::hygiene;
use crate::edge::ratelimit::{RateVerdict, Scope};
use crate::edge::AuthOutcome;
use crate::error::GatewayError;
use crate::headers;
use crate::metrics;

pub(crate) mod access;
pub(crate) mod admin;
mod admit;
pub(crate) mod body;
pub(crate) mod compress;
mod ctx;
mod discovery;
mod gateway;
mod grpc;
pub(crate) mod health;
pub(crate) mod local;
pub(crate) mod respond;
pub(crate) mod routes;
mod spans;
mod status;
mod traffic;
pub(crate) mod tunnel;
pub(crate) mod upstreams;

use self::ctx::is_tls;
pub use self::ctx::Ctx;
use self::health::BackendTry;
use self::routes::Route;
use crate::snapshot::{Shared, Snapshot};
use arc_swap::ArcSwap;

/// How long an unused upstream connection stays in Pingora's pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// The gateway: the current configuration snapshot and what outlives snapshots.
pub struct Gateway {
    /// The snapshot new requests take; a reload swaps it.
    live: Arc<ArcSwap<Snapshot>>,
    /// The store and Redis connection every snapshot shares.
    shared: Arc<Shared>,
    /// Bytes all buffered request bodies may hold together.
    body_budget: Arc<body::BodyBudget>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// Runs first, once per request: every field empty but the start time.
    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snap: self.live.load_full(),
            route: Route::NotFound,
            original_target: None,
            credentialed: false,
            first_pick: None,
            group: None,
            balance_key: Vec::new(),
            set_cookie: None,
            params: Vec::new(),
            retry_status: false,
            request_id: String::new(),
            client: None,
            rate: None,
            identity: None,
            cache: None,
            tried: Vec::new(),
            backend: BackendTry::None,
            local_error: None,
            body: body::Prepared::default(),
            cors: None,
            accept: compress::Negotiated::default(),
            encoder: None,
            trace: None,
            grpc: None,
            tunnel: None,
        }
    }

    /// Runs once the request header is read. Writes `request_id`, `client`, `route`, and, on
    /// routes that are not public, `rate` and `identity`. Answers hygiene failures (400/431),
    /// the edge's refusals (429/401), the gateway's own routes and unknown paths, returning
    /// `Ok(true)`; `Ok(false)` sends a proxied request on to `upstream_peer`. `Err` only when
    /// writing to the client failed.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = ctx.snap.clone();
        let req = session.req_header();
        ctx.request_id = match req.headers.get(headers::X_REQUEST_ID) {
            Some(v) if hygiene::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => hygiene::new_request_id(),
        };
        ctx.client = session.client_addr().and_then(|a| a.as_inet()).map(|a| {
            ClientAddr::new(
                a.ip(),
                req.headers.get(headers::X_FORWARDED_FOR),
                &snap.config.rate_limit.trusted_proxies,
            )
        });
        let http2 = session.is_http2();
        // Nothing is routed or authenticated before the request is known to be well formed
        // and its path canonical: what the router and the checks saw is what the backend gets.
        let head = match admit::prepare_head(session, ctx, &snap.config.limits, http2) {
            Ok(head) => head,
            Err(rejected) => {
                rejected.count();
                ctx.route = Route::Invalid;
                if rejected.close {
                    return self.refuse(session, ctx, &rejected.error).await;
                }
                respond::error(session, &rejected.error, &ctx.local_headers()).await?;
                return Ok(true);
            }
        };
        let req = session.req_header();
        if head.grpc {
            ctx.grpc = grpc::Call::of(req).map(Box::new);
        }
        ctx.route = snap.routes.route(
            &routes::Request {
                uri: &req.uri,
                method: &req.method,
                headers: &req.headers,
            },
            &mut ctx.params,
        );
        if let Some(tracer) = &self.shared.tracer {
            // Probes are not traced: a kubelet's every-few-seconds checks would bury the traces.
            if !ctx.route.is_probe() {
                ctx.trace = Some(spans::start(tracer, session, ctx));
            }
        }
        if snap.config.redirect_http && !ctx.route.is_probe() && !is_tls(session) {
            return self.redirect_to_https(session, ctx).await;
        }
        let req = session.req_header();
        if let Some(preflight) = snap
            .edge
            .cors
            .preflight(&req.method, req.uri.path(), &req.headers)
        {
            return self.answer_preflight(session, ctx, preflight).await;
        }
        ctx.cors = snap
            .edge
            .cors
            .response_headers(req.uri.path(), &req.headers);
        if let Some(c) = &snap.compress {
            ctx.accept = c.negotiate(&req.headers);
        }
        let mode = admit::Access::of(&ctx.route, &snap.config.auth, req.uri.path());
        // A client that stops reading its answer is cut after this, per write.
        session.set_write_timeout(Some(snap.config.limits.response_write_timeout));
        let max_body = match &ctx.route {
            Route::Proxy(r) => r.config.body.max_bytes,
            _ => snap.config.limits.body.max_bytes,
        };
        if let Err(refusal) = body::check_declared(session, max_body) {
            // Refused before a byte of the body is read; the connection cannot be reused.
            return self.refuse(session, ctx, &refusal.error).await;
        }
        let req = session.req_header();
        let client = ctx.client.as_ref().map(|c| c.ip);
        let scope = Scope {
            path: req.uri.path(),
            names: ctx.route.config().and_then(|r| r.policies.as_deref()),
        };
        match mode {
            admit::Access::Public => spans::edge(ctx, AuthOutcome::Public),
            admit::Access::Unrouted => {
                // No token is read for a path nobody serves (404 with or without one), but
                // a scan of them is still limited.
                ctx.rate = snap.edge.limit(client, scope, &req.headers).await;
                spans::edge(ctx, AuthOutcome::NotChecked);
                if let Some(e) = ctx.rate.as_ref().and_then(RateVerdict::refusal) {
                    respond::error(session, &e, &ctx.local_headers()).await?;
                    return Ok(true);
                }
            }
            admit::Access::Token { optional, accepts } => {
                ctx.credentialed = snap.edge.has_credentials(&req.headers);
                let cert = session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .and_then(|s| s.extension.get::<crate::tls::ClientCert>())
                    .map(|c| c.sub.as_str());
                let verdict = snap
                    .edge
                    .check(client, scope, &req.headers, optional, accepts, cert)
                    .await;
                ctx.rate = verdict.rate;
                spans::edge(ctx, verdict.auth);
                match verdict.identity {
                    Ok(identity) => ctx.identity = identity,
                    Err(e) => {
                        respond::error(session, &e, &ctx.local_headers()).await?;
                        return Ok(true);
                    }
                }
                if let Some(route) = ctx.route.config() {
                    if let Err(e) =
                        crate::edge::require(&route.config.require, ctx.identity.as_deref())
                    {
                        respond::error(session, &e, &ctx.local_headers()).await?;
                        return Ok(true);
                    }
                }
            }
        }
        if let Route::Proxy(route) = &ctx.route {
            // After the edge, so that only admitted clients get a buffer.
            match body::prepare(session, &route.config.body, &self.body_budget).await {
                Ok(prepared) => ctx.body = prepared,
                Err(Some(refusal)) => return self.refuse(session, ctx, &refusal.error).await,
                Err(None) => {
                    return Err(Error::explain(
                        ErrorType::ConnectionClosed,
                        "client went away while its request body was read",
                    )
                    .into_down())
                }
            }
            // The first backend is picked here, last, so that a group with none to try is
            // answered before proxying and the connection stays open (after an error in the
            // proxy phase Pingora closes it); upstream_peer takes this pick.
            let Route::Proxy(route) = &ctx.route else {
                return self.answer_local(session, ctx).await;
            };
            let route = route.clone();
            let client = ctx.client.as_ref().map(|c| c.ip);
            let headers = &session.req_header().headers;
            let (name, split) = (route.config.name.as_str(), route.split.as_ref());
            let who = ctx.identity.as_deref();
            if let Some(to) =
                traffic::destination(name, split, route.group.as_ref(), headers, who, client)
            {
                let group = to.group;
                ctx.set_cookie = to.set_cookie;
                ctx.balance_key = to.balance_key;
                ctx.first_pick = group.select(&[], Instant::now(), &ctx.balance_key);
                ctx.group = Some(group.clone());
                if ctx.first_pick.is_none() {
                    let e = GatewayError::Unavailable(
                        format!("no healthy backend in upstream group `{}`", group.name).into(),
                    );
                    if session.as_downstream_mut().is_body_done() {
                        respond::error(session, &e, &ctx.local_headers()).await?;
                        return Ok(true);
                    }
                    return self.refuse(session, ctx, &e).await;
                }
            }
            if head.upgrade && tunnel::tunnels(&ctx.route, session) {
                return tunnel::serve(self, session, ctx).await;
            }
        }
        self.answer_local(session, ctx).await
    }

    /// Runs for each piece of a proxied request body on its way to the backend: sends ahead
    /// any bytes buffered but not kept by Pingora, and refuses a body that grows past the
    /// route's maximum (413, or a cut stream if the backend already answered).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.body.unsent.is_empty() {
            let mut all = bytes::BytesMut::new();
            for chunk in ctx.body.unsent.drain(..) {
                all.extend_from_slice(&chunk);
            }
            if let Some(b) = body.take() {
                all.extend_from_slice(&b);
            }
            *body = Some(all.freeze());
        }
        if let Route::Proxy(route) = &ctx.route {
            if session.as_downstream().body_bytes_read() as u64 > route.config.body.max_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's maximum",
                ));
            }
        }
        Ok(())
    }

    /// Runs for proxied routes, again after each connect failure that may be retried. Reads
    /// `route` and `tried`; pushes the pick to `tried` and starts a `backend` try. `Err` with
    /// `local_error` set when no healthy backend is left (answered 503 by `fail_to_proxy`).
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Route::Proxy(route) = &ctx.route else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer on a local route",
            ));
        };
        let Some(group) = ctx.group.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "a route without a group",
            ));
        };
        let now = Instant::now();
        let timeouts = route.config.timeouts;
        // A gRPC client's own deadline counts too, within the route's.
        let deadline = match (timeouts.total, ctx.grpc.as_ref().and_then(|g| g.timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let left = deadline.map(|t| t.saturating_sub(ctx.started.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            ctx.local_error = Some(GatewayError::Timeout(
                "the route's total timeout passed".into(),
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                respond::TOTAL_TIMEOUT,
            ));
        }
        if ctx.tried.is_empty() && route.config.retries.is_some() {
            // Only routes that retry draw from the budget, so only they fill it.
            group.retry_budget.deposit(now);
        }
        let pick = match ctx.first_pick.take() {
            Some(b) if ctx.tried.is_empty() => Some(b),
            _ => group.select(&ctx.tried, now, &ctx.balance_key),
        };
        let Some(backend) = pick else {
            ctx.local_error = Some(GatewayError::Unavailable(
                format!("no healthy backend in upstream group `{}`", group.name).into(),
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                respond::NO_HEALTHY_BACKEND,
            ));
        };
        let PingoraAddr::Inet(addr) = backend.addr else {
            return Err(Error::explain(ErrorType::InternalError, "non-inet backend"));
        };
        ctx.tried.push(addr);
        ctx.backend.start(backend);
        spans::try_started(ctx, &session.req_header().method, addr, ctx.tried.len());
        let tls = group.config.tls.as_ref();
        let sni = tls.map_or_else(String::new, |t| t.sni.clone());
        let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
        if let Some(t) = tls {
            t.apply(&mut peer.options);
            peer.group_key = t.pool_key;
        }
        upstreams::h2_options(&group.config, &mut peer.options);
        let cap = |d: Duration| left.map_or(d, |l| d.min(l));
        let read = cap(timeouts.read.unwrap_or(group.config.read_timeout));
        peer.options.connection_timeout = Some(cap(timeouts
            .connect
            .unwrap_or(group.config.connect_timeout)));
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(read);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    /// Counts the connection the try got: a steady stream of new ones under load means the
    /// keep-alive pool is smaller than the requests in flight.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(g) = &ctx.group {
            g.connections[usize::from(reused)].inc();
        }
        Ok(())
    }

    /// Runs when connecting to the picked backend failed. Reports the try as failed; marks the
    /// error retryable (Pingora then calls `upstream_peer` again) while the group allows
    /// another backend. Nothing was sent yet, so any method may be retried.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let health = ctx.backend.failed(Instant::now());
        spans::health(ctx, health);
        if let Some(t) = &mut ctx.trace {
            t.end_try("connect_error");
        }
        if admit::retries_connect(ctx) {
            e.set_retry(true);
        }
        e
    }

    /// Runs before the request header goes to the backend. Reads `route`, `client`,
    /// `request_id` and `identity`: removes hop-by-hop headers, rewrites the path, sets
    /// `X-Forwarded-*`, `X-Request-Id`, `X-User-Id` and the forwarded claims (client-sent
    /// copies of these are dropped first). `Err` if a header cannot be set.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only a tunnel's handshake keeps `Upgrade` (tunnel.rs sets `ctx.tunnel` first).
        hygiene::strip_hop_by_hop(req, ctx.tunnel.is_some());
        if ctx.grpc.is_some() {
            // gRPC servers refuse a call without it (it says the client reads trailers).
            req.insert_header(http::header::TE, "trailers")?;
        }
        if let Some(authority) = req.uri.authority() {
            // An h2 request's target carries its `:authority`; backends get origin form and
            // the authority as `Host` (an h2 backend's `:authority` is made from it).
            if !req.headers.contains_key(http::header::HOST) {
                let host = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad authority"))?;
                req.insert_header(http::header::HOST, host)?;
            }
            let origin = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let uri = origin
                .parse::<http::Uri>()
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad request target"))?;
            req.set_uri(uri);
        }
        let route = match &ctx.route {
            Route::Proxy(r) => Some(r.clone()),
            _ => None,
        };
        if let Some(route) = &route {
            if !route.config.request_headers.is_empty() {
                let mut buf = String::new();
                let host = routes::matcher::request_host(&req.uri, &req.headers, &mut buf)
                    .map(str::to_string);
                let path = req.uri.path().to_string();
                let values = ctx.values(route, host.as_deref(), &path);
                routes::apply_request_rules(req, route, &values);
            }
            if let Some(target) =
                route.upstream_target(req.uri.path(), req.uri.query(), &ctx.params)
            {
                let uri = target.parse::<http::Uri>().map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "bad rewritten path")
                })?;
                req.set_uri(uri);
            }
        }
        if let Some(client) = &ctx.client {
            req.insert_header(headers::X_FORWARDED_FOR, client.forwarded_for())?;
        }
        let proto = if is_tls(session) { "https" } else { "http" };
        req.insert_header(headers::X_FORWARDED_PROTO, proto)?;
        req.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        // The identity header is ours alone: a client-sent one is dropped before ours is set.
        // (Checked first: a removal parses and hashes the name even when it is absent.)
        if req.headers.contains_key(&headers::X_USER_ID_NAME) {
            req.remove_header(&headers::X_USER_ID_NAME);
        }
        let auth = &ctx.snap.config.auth;
        for (_, name) in &auth.forward_claims {
            req.remove_header(name);
        }
        if let Some(id) = &ctx.identity {
            req.insert_header(headers::X_USER_ID, id.sub.as_str())?;
            let names = auth.forward_claims.iter().map(|(_, n)| n);
            for (name, value) in names.zip(id.forwarded.iter()) {
                if let Some(value) = value {
                    req.insert_header(name.clone(), value.clone())?;
                }
            }
        }
        if !auth.forward_authorization && req.headers.contains_key(http::header::AUTHORIZATION) {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        // An API key is the gateway's credential, never the backend's.
        if let Some(k) = &auth.api_keys {
            if req.headers.contains_key(&k.header) {
                req.remove_header(&k.header);
            }
        }
        if let Some(t) = &ctx.trace {
            // The backend's span is a child of this try's, never of the client's span.
            if t.client_sent_context() {
                req.remove_header(crate::trace::TRACEPARENT);
                req.remove_header(crate::trace::TRACESTATE);
            }
            if let Some(a) = t.try_ref() {
                for (name, value) in a.propagated().into_pairs() {
                    req.append_header(name, value)?;
                }
            }
        }
        if ctx.body.continue_sent {
            // The client has its `100 Continue` from us; the backend gets the body at once.
            req.remove_header(&http::header::EXPECT);
        }
        if let Some(m) = route.as_ref().and_then(|r| r.mirror.as_ref()) {
            // Once per request, not per retry; a tunnel is not copied.
            if ctx.tried.len() == 1 && !session.is_upgrade_req() {
                m.send(req, traffic::mirror_body(session));
            }
        }
        Ok(())
    }

    /// Runs when the backend's response header arrives: a 5xx is a failed try, anything else
    /// a successful one.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let now = Instant::now();
        spans::answered(ctx, status, now);
        if status >= 500 && admit::retries_status(session, ctx, status, now) {
            ctx.retry_status = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "the backend's status is retried on another backend",
            ));
        }
        Ok(())
    }

    /// Runs before a proxied response header goes to the client: adds `X-Request-Id` and the
    /// `RateLimit-*` headers from `rate`.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(c) = &ctx.snap.compress {
            let head = session.req_header().method == http::Method::HEAD;
            if let Some(coding) = c.begin(ctx.accept, head, session.is_http2(), resp, None) {
                ctx.encoder = c.encoder(coding);
            }
        }
        resp.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.caller_headers(resp)?;
        if let Some(d) = &ctx.rate {
            for (name, value) in d.headers() {
                resp.insert_header(name, value)?;
            }
        }
        if let Route::Proxy(route) = &ctx.route {
            if !route.config.response_headers.is_empty() {
                let req = session.req_header();
                let mut buf = String::new();
                let host = routes::matcher::request_host(&req.uri, &req.headers, &mut buf);
                let values = ctx.values(route, host, req.uri.path());
                routes::apply_response_rules(resp, route, &values);
            }
        }
        if let Some(cors) = &ctx.cors {
            // The gateway owns CORS on this route: a service's own answer would contradict it
            // (and open the route to origins the policy refuses).
            for name in [
                "access-control-allow-origin",
                "access-control-allow-credentials",
                "access-control-expose-headers",
            ] {
                resp.remove_header(name);
            }
            for (name, value) in cors {
                if name.eq_ignore_ascii_case("vary") {
                    resp.append_header(*name, value.as_str())?;
                } else {
                    resp.insert_header(*name, value.as_str())?;
                }
            }
        }
        Ok(())
    }

    /// Runs for each piece of a proxied answer: compresses it when `response_filter` chose to.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(enc) = &mut ctx.encoder {
            // A failed encoder cannot be undone mid-answer: the answer is cut, never corrupt.
            enc.encode(body, end_of_stream)
                .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
        }
        Ok(None)
    }

    /// Trailers end the answer: a compressed body is finished before them (Pingora then sends
    /// the returned bytes as the body's end, without the trailers).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<bytes::Bytes>> {
        if let Some(call) = &mut ctx.grpc {
            call.saw(trailers);
        }
        let Some(enc) = &mut ctx.encoder else {
            return Ok(None);
        };
        let mut rest = None;
        enc.encode(&mut rest, true)
            .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
        ctx.encoder = None;
        Ok(rest)
    }

    /// Runs when proxying fails after the connection was made. An upstream-side error is a
    /// failed try. The error is retried only for idempotent methods whose body Pingora still
    /// holds whole, since the backend may have acted on what it got.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &ErrorSource::Upstream {
            let health = ctx.backend.failed(Instant::now());
            spans::health(ctx, health);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.retry_status) {
            // Decided in upstream_response_filter, where the method and budget were checked.
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Runs when an error ends a proxied request. Answers `local_error` if one was decided,
    /// else the mapping of `e` ([`respond::proxy_failure`]); nothing when the client is gone or
    /// the backend's header was already sent (the client then sees a cut stream, never a second
    /// response). The connection is never reused after this.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if body::is_malformed(e) && !respond::answered(session) {
            // A streamed body whose chunked framing broke: 400 (below), counted like the
            // refusals made before proxying.
            metrics::HTTP_REJECTED.with_label_values(&["chunked"]).inc();
        }
        if let Some(event) = respond::client_event(e, respond::answered(session)) {
            report(event);
        }
        let Some(err) = ctx.local_error.take().or_else(|| respond::proxy_failure(e)) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if matches!(err, GatewayError::Internal) {
            tracing::error!(request_id = %ctx.request_id, error = %e, "internal error while proxying");
        }
        if !respond::answered(session) {
            // Pingora closes the connection after an error once proxying began (it reuses the
            // client's connection only when the upstream exchange completed), so the answer
            // says so: a client must never pool a connection that is about to close. A group
            // with no backend to try is answered in request_filter instead, connection kept.
            session.as_downstream_mut().set_keepalive(None);
            if let Err(write_err) = respond::error(session, &err, &ctx.local_headers()).await {
                tracing::debug!(error = %write_err, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    /// Keeps Pingora's per-request ERROR line for what is worth one: a client that was too
    /// slow or went away is counted and summarised instead (`conn::report`), and so is a body
    /// refused for its size, so an attack cannot flood the log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        respond::client_event(e, false).is_some()
            || matches!(e.etype(), ErrorType::HTTPStatus(408 | 413))
            || respond::decided_here(e)
    }

    /// Runs last for every request, whatever happened. A proxied request that ended without
    /// error was a successful try. Records the metrics and writes the access-log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if e.is_none() {
            let health = ctx.backend.succeeded(Instant::now());
            spans::health(ctx, health);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let trace_id = ctx
            .trace
            .as_ref()
            .filter(|_| access::enabled())
            .map(|t| t.trace_id());
        spans::finish(ctx, status, e.is_some());
        let method = metrics::method_label(&session.req_header().method);
        let route = ctx.route.label();
        let elapsed = ctx.started.elapsed();
        let protocol = if session.is_http2() { "h2" } else { "http/1.1" };
        metrics::HTTP_REQUESTS
            .with_label_values(&[method, protocol, route, &metrics::status_label(status)])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
        if let Some(call) = &mut ctx.grpc {
            call.finish(session.response_written(), route);
        }
        if access::enabled() {
            access::log(session, ctx, protocol, status, elapsed, trace_id.as_deref());
        }
    }
}
