//! The `ProxyHttp` implementation and the per-request `Ctx`: the only place that knows the phases.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::Backend;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::error::GatewayError;
use crate::profile::{self, CacheStatus, ProfileService};
use crate::ratelimit::{Decision, RateLimiter};
use crate::respond;
use crate::routes::{PassiveHealth, Route, RouteTable};
use crate::store::{unix_now, MemoryKv, RedisStore, Store};
use crate::{hygiene, metrics, net};

/// Request id header, kept from the client when well-formed, else generated.
pub const REQUEST_ID: &str = "x-request-id";

/// The gateway: shared state every request reads.
pub struct Gateway {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Route table and upstream groups.
    pub routes: RouteTable,
    /// JWT verifier.
    pub auth: Authenticator,
    /// Per-IP limiter (Redis or memory).
    pub limiter: RateLimiter,
    /// The `/api/profile/{id}` aggregation.
    pub profile: ProfileService,
}

/// Per-request state, filled as the phases run.
pub struct Ctx {
    /// When the request started (new_ctx); for the duration metric.
    started: Instant,
    /// Decided in request_filter.
    route: Route,
    /// Set in request_filter: the client's id or a fresh one.
    request_id: String,
    /// TCP peer (request_filter), normalised (IPv4-mapped IPv6 → IPv4).
    peer_ip: Option<IpAddr>,
    /// The client the limiter counted (request_filter): the peer or, behind a trusted proxy,
    /// the address it reports.
    client_ip: Option<IpAddr>,
    /// The limiter's decision (request_filter), reported in `RateLimit-*` headers.
    rate: Option<Decision>,
    /// The verified caller (request_filter), forwarded as `X-User-Id`.
    identity: Option<Arc<Identity>>,
    /// Cache outcome of a profile answer (request_filter), for the access log.
    cache: Option<CacheStatus>,
    /// Backends already tried for this request (upstream_peer), so a retry goes elsewhere.
    tried: Vec<SocketAddr>,
    /// The backend of the current try (upstream_peer), for passive health and the log.
    backend: Option<Backend>,
    /// Whether the current try's outcome was reported to passive health.
    outcome_reported: bool,
    /// An error decided before proxying (e.g. no healthy backend), answered by fail_to_proxy.
    local_error: Option<GatewayError>,
}

impl Ctx {
    fn report(&mut self, ok: bool) {
        if self.outcome_reported {
            return;
        }
        self.outcome_reported = true;
        if let Some(p) = self
            .backend
            .as_ref()
            .and_then(|b| b.ext.get::<PassiveHealth>())
        {
            let now = Instant::now();
            let transition = if ok {
                p.0.on_success(now)
            } else {
                p.0.on_failure(now)
            };
            if let Some(t) = transition {
                let backend = self
                    .backend
                    .as_ref()
                    .map(|b| b.addr.to_string())
                    .unwrap_or_default();
                tracing::warn!(backend = %backend, from = ?t.from, to = ?t.to, "passive health state changed");
            }
        }
    }
}

impl Gateway {
    /// Builds the gateway and the health-check services its groups need.
    pub fn new(
        config: Arc<Config>,
        redis: Option<Arc<RedisStore>>,
    ) -> std::result::Result<(Gateway, Vec<crate::routes::HealthService>), String> {
        let (routes, health) = crate::routes::build(&config);
        let auth = Authenticator::new(&config.auth, config.limits.max_authorization_bytes);
        let limiter = RateLimiter::new(&config.rate_limit, redis.clone());
        let store = Arc::new(match redis {
            Some(r) => Store::Redis(r),
            None => Store::Memory(MemoryKv::default()),
        });
        let profile = ProfileService::new(&config, store)
            .map_err(|e| format!("cannot build the service HTTP client: {e}"))?;
        Ok((
            Gateway {
                config,
                routes,
                auth,
                limiter,
                profile,
            },
            health,
        ))
    }

    async fn answer_profile(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let req = session.req_header();
        let target = if req.method == http::Method::GET || req.method == http::Method::HEAD {
            profile::parse_id(req.uri.path()).and_then(|id| {
                profile::authorize(id, ctx.identity.as_deref(), self.config.profile.owner_only)
            })
        } else {
            Err(GatewayError::MethodNotAllowed(
                "only GET is allowed here".into(),
            ))
        };
        let result = match target {
            Ok(id) => {
                match until_client_gone(session, self.profile.get(&id, &ctx.request_id)).await {
                    Some(r) => r,
                    // The dropped future cancelled its upstream calls; there is nobody to answer.
                    None => return Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        let mut headers = Self::local_headers(ctx);
        match result {
            Ok(answer) => {
                ctx.cache = Some(answer.cache);
                headers.push(("X-Cache", answer.cache.as_str().to_string()));
                respond::json(session, 200, answer.body, &headers).await
            }
            Err(e) => respond::error(session, &e, &headers).await,
        }
    }

    /// Request id and rate-limit headers that every local answer carries.
    fn local_headers(ctx: &Ctx) -> Vec<(&'static str, String)> {
        let mut h = vec![("X-Request-Id", ctx.request_id.clone())];
        if let Some(d) = &ctx.rate {
            // Digits only, so always text.
            h.extend(
                d.headers()
                    .map(|(n, v)| (n, v.to_str().unwrap_or_default().to_owned())),
            );
        }
        h
    }

    /// Rate limit, then authenticate: floods of bad tokens are limited too.
    async fn edge_checks(
        &self,
        session: &Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), GatewayError> {
        let req = session.req_header();
        if let Some(peer) = ctx.peer_ip {
            let xff = req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            let ip = net::client_ip(peer, xff, &self.config.rate_limit.trusted_proxies);
            ctx.client_ip = Some(ip);
            let decision = self.limiter.check(ip, unix_now()).await;
            ctx.rate = Some(decision);
            if !decision.allowed {
                return Err(GatewayError::RateLimited {
                    retry_after_secs: decision.reset_secs,
                });
            }
        }
        match self.auth.authenticate(&req.headers) {
            Ok(identity) => {
                ctx.identity = Some(identity);
                Ok(())
            }
            Err(e) => {
                metrics::AUTH_FAILURES
                    .with_label_values(&[e.reason()])
                    .inc();
                Err(GatewayError::Unauthorized {
                    message: e.to_string().into(),
                    token_given: e.token_given(),
                })
            }
        }
    }

    async fn answer_local(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let body: &'static [u8] = match &ctx.route {
            // The common case: nothing to answer here, nothing to allocate.
            Route::Proxy(_) => return Ok(false),
            Route::Profile => {
                self.answer_profile(session, ctx).await?;
                return Ok(true);
            }
            Route::Healthz => br#"{"status":"ok"}"#,
            Route::Readyz => br#"{"status":"ready"}"#,
            Route::NotFound => {
                let e = GatewayError::NotFound("no route matches this path".into());
                respond::error(session, &e, &Self::local_headers(ctx)).await?;
                return Ok(true);
            }
        };
        respond::json(
            session,
            200,
            Bytes::from_static(body),
            &Self::local_headers(ctx),
        )
        .await?;
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

fn timeout_error(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            route: Route::NotFound,
            request_id: String::new(),
            peer_ip: None,
            client_ip: None,
            rate: None,
            identity: None,
            cache: None,
            tried: Vec::new(),
            backend: None,
            outcome_reported: false,
            local_error: None,
        }
    }

    /// Routes, then answers locally or lets the request through to `upstream_peer`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = match session.req_header().headers.get(REQUEST_ID) {
            Some(v) if hygiene::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => hygiene::new_request_id(),
        };
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| net::normalise_ip(a.ip()));
        ctx.route = self.routes.route(session.req_header().uri.path());
        if let Err(e) = hygiene::check_request(session.req_header(), &self.config.limits) {
            respond::error(session, &e, &Self::local_headers(ctx)).await?;
            return Ok(true);
        }
        let exempt = matches!(ctx.route, Route::Healthz | Route::Readyz)
            || self.config.auth.is_public(session.req_header().uri.path());
        if !exempt {
            if let Err(e) = self.edge_checks(session, ctx).await {
                respond::error(session, &e, &Self::local_headers(ctx)).await?;
                return Ok(true);
            }
        }
        self.answer_local(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Route::Proxy(route) = &ctx.route else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer on a local route",
            ));
        };
        let group = &route.group;
        let Some(backend) = group.select(&ctx.tried, Instant::now()) else {
            ctx.local_error = Some(GatewayError::Unavailable(
                format!("no healthy backend in upstream group `{}`", group.name).into(),
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy backend",
            ));
        };
        let PingoraAddr::Inet(addr) = backend.addr else {
            return Err(Error::explain(ErrorType::InternalError, "non-inet backend"));
        };
        ctx.tried.push(addr);
        ctx.backend = Some(backend);
        ctx.outcome_reported = false;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(group.config.connect_timeout);
        peer.options.read_timeout = Some(group.config.read_timeout);
        peer.options.write_timeout = Some(group.config.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.report(false);
        let Route::Proxy(route) = &ctx.route else {
            return e;
        };
        // Nothing was sent yet, so any method may go to another backend; bounded per group.
        let retries_used = ctx.tried.len().saturating_sub(1);
        if retries_used < route.group.config.connect_retries
            && ctx.tried.len() < route.group.config.backends.len()
        {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let is_upgrade = session.is_upgrade_req();
        hygiene::strip_hop_by_hop(req, is_upgrade);
        if let Route::Proxy(route) = &ctx.route {
            if let Some(strip) = &route.strip_prefix {
                let path = req.uri.path();
                let rest = path.strip_prefix(strip.as_str()).unwrap_or(path);
                let mut new = String::with_capacity(rest.len() + 1);
                if !rest.starts_with('/') {
                    new.push('/');
                }
                new.push_str(rest);
                if let Some(q) = req.uri.query() {
                    new.push('?');
                    new.push_str(q);
                }
                let uri = new.parse::<http::Uri>().map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "bad rewritten path")
                })?;
                req.set_uri(uri);
            }
        }
        if let Some(ip) = ctx.peer_ip {
            let peer = ip.to_string();
            let trusted = net::is_trusted(ip, &self.config.rate_limit.trusted_proxies);
            // Only a trusted proxy's chain is kept; anyone else could have forged it.
            let value = match req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if trusted && !prev.trim().is_empty() => format!("{prev}, {peer}"),
                _ => peer,
            };
            req.insert_header("X-Forwarded-For", value)?;
        }
        req.insert_header("X-Forwarded-Proto", "http")?;
        req.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        // The identity header is ours alone: a client-sent one is dropped before ours is set.
        req.remove_header("x-user-id");
        if let Some(id) = &ctx.identity {
            req.insert_header("X-User-Id", id.sub.as_str())?;
        }
        if !self.config.auth.forward_authorization {
            req.remove_header("authorization");
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.report(resp.status.as_u16() < 500);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        if let Some(d) = &ctx.rate {
            for (name, value) in d.headers() {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &ErrorSource::Upstream {
            ctx.report(false);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A body already (partly) sent may only be replayed for idempotent methods.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match ctx.local_error.take() {
            Some(err) => Some(err),
            None => match (e.esource(), e.etype()) {
                (_, ErrorType::HTTPStatus(code)) if *code >= 500 => {
                    Some(GatewayError::BadGateway("upstream failed".into()))
                }
                (ErrorSource::Upstream, _) if timeout_error(e) => Some(GatewayError::Timeout(
                    "the upstream did not answer in time".into(),
                )),
                (ErrorSource::Upstream, _) => Some(GatewayError::BadGateway(
                    "the upstream could not be reached or failed".into(),
                )),
                (
                    ErrorSource::Downstream,
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ) => None,
                (ErrorSource::Downstream, _) => {
                    Some(GatewayError::BadRequest("malformed request".into()))
                }
                _ if timeout_error(e) => Some(GatewayError::Timeout(
                    "the upstream did not answer in time".into(),
                )),
                _ => Some(GatewayError::Internal),
            },
        };
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if matches!(err, GatewayError::Internal) {
            tracing::error!(request_id = %ctx.request_id, error = %e, "internal error while proxying");
        }
        let code = err.status();
        // Once the upstream's header went out, the client must see a broken stream, not a
        // second response glued to the first.
        if session.response_written().is_none() {
            let headers = Self::local_headers(ctx);
            if let Err(write_err) = respond::error(session, &err, &headers).await {
                tracing::debug!(error = %write_err, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if e.is_none() && ctx.backend.is_some() {
            ctx.report(true);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let method = metrics::method_label(&session.req_header().method);
        let route = ctx.route.label();
        let elapsed = ctx.started.elapsed();
        metrics::HTTP_REQUESTS
            .with_label_values(&[method, route, &metrics::status_label(status)])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
        if crate::access::enabled() {
            let req = session.req_header();
            crate::access::write(&crate::access::AccessRecord {
                time: crate::access::now_rfc3339(),
                request_id: &ctx.request_id,
                client_ip: ctx.client_ip.or(ctx.peer_ip),
                method: req.method.as_str(),
                path: crate::access::redact_query(req.uri.path(), req.uri.query()),
                route,
                status,
                duration_ms: crate::access::millis(elapsed),
                upstream: ctx.backend.as_ref().map(|b| b.addr.to_string()),
                cache: ctx.cache.map(CacheStatus::as_str),
                user: ctx.identity.as_ref().map(|i| i.sub.as_str()),
                bytes_sent: session.body_bytes_sent(),
            });
        }
    }
}
