//! What a request must show before it is served, and whether a backend's answer is tried
//! again: the head made canonical (`prepare_head`), the access a route asks for (`Access`),
//! and the route's status retries (`retries_status`).

use std::time::Instant;

use pingora::proxy::Session;

use super::ctx::Ctx;
use super::routes::Route;
use crate::config::RouteAuth;
use crate::edge::hygiene;
use crate::metrics;

/// Makes the request's head what the rest of the gateway reads: absolute form made origin
/// form, the framing and header rules checked, underscored header names dropped, the path
/// normalised (the target as sent kept in `ctx.original_target`). Says what the header
/// pass learnt (an `Upgrade` header, a gRPC content type).
pub(super) fn prepare_head(
    session: &mut Session,
    ctx: &mut Ctx,
    limits: &crate::config::LimitsConfig,
    http2: bool,
) -> std::result::Result<hygiene::Head, hygiene::Rejected> {
    let req = session.req_header_mut();
    if !http2 && req.raw_path().first() != Some(&b'/') && !hygiene::to_origin_form(req) {
        return Err(hygiene::Rejected::target_form());
    }
    let head = hygiene::check_request(req, limits, http2)?;
    if head.underscored && !limits.underscores_in_headers {
        hygiene::drop_underscored(req);
    }
    match crate::edge::path::normalise(req.raw_path(), &limits.path) {
        Ok(None) => Ok(head),
        Ok(Some(canon)) => {
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = canon.parse().ok();
            let uri = http::Uri::from_parts(parts).map_err(|_| hygiene::Rejected::target_form())?;
            ctx.original_target = Some(String::from_utf8_lossy(req.raw_path()).into_owned());
            req.set_uri(uri);
            Ok(head)
        }
        Err(e) => Err(hygiene::Rejected::path(e)),
    }
}

/// What a request must show before it is served.
#[derive(Debug, Clone, Copy)]
pub(super) enum Access {
    /// Nothing: a probe, an `auth: public` route, or `auth.public_paths`.
    Public,
    /// No route: limited, then answered 404/405 without reading a token.
    Unrouted,
    /// A credential of the kinds `accepts` lists (verified when sent if `optional`).
    Token {
        /// Without a credential the request goes on anonymously.
        optional: bool,
        /// The kinds of credential that count.
        accepts: crate::config::Credentials,
    },
}

impl Access {
    pub(super) fn of(route: &Route, auth: &crate::config::AuthConfig, path: &str) -> Access {
        match route {
            r if r.is_probe() => Access::Public,
            Route::NotFound | Route::NotAllowed(_) | Route::Invalid => Access::Unrouted,
            _ if auth.is_public(path) => Access::Public,
            Route::Proxy(r) | Route::Direct(r) => match r.config.auth {
                RouteAuth::Public => Access::Public,
                RouteAuth::Optional => Access::Token {
                    optional: true,
                    accepts: r.config.credentials,
                },
                RouteAuth::Required => Access::Token {
                    optional: false,
                    accepts: r.config.credentials,
                },
            },
            _ => Access::Token {
                optional: false,
                accepts: crate::config::Credentials::default(),
            },
        }
    }
}

/// Whether a backend's `status` is tried again: the route retries it, the method is
/// idempotent, the body is still held whole, a try and another backend are left, and the
/// group's retry budget allows it (counted when it does).
pub(super) fn retries_status(session: &Session, ctx: &Ctx, status: u16, now: Instant) -> bool {
    let Route::Proxy(route) = &ctx.route else {
        return false;
    };
    let (Some(r), Some(g)) = (&route.config.retries, &ctx.group) else {
        return false;
    };
    let ok = r.statuses.contains(&status)
        && session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && ctx.tried.len() <= r.attempts as usize
        && ctx.tried.len() < g.backend_count()
        && g.retry_budget.try_withdraw(now);
    if ok {
        metrics::ROUTE_RETRIES
            .with_label_values(&[route.config.name.as_str(), &status.to_string()])
            .inc();
    }
    ok
}

/// Whether a try that failed to connect goes to another backend: the route's `retries` (on
/// `connect`, within its attempts and the group's retry budget, counted), else the group's
/// `connect_retries`; never beyond the backends not tried yet.
pub(super) fn retries_connect(ctx: &Ctx) -> bool {
    let (Route::Proxy(route), Some(g)) = (&ctx.route, &ctx.group) else {
        return false;
    };
    let Some(r) = &route.config.retries else {
        return g.may_retry_connect(ctx.tried.len());
    };
    let retry = r.on_connect
        && ctx.tried.len() <= r.attempts as usize
        && ctx.tried.len() < g.backend_count()
        && g.retry_budget.try_withdraw(Instant::now());
    if retry {
        metrics::ROUTE_RETRIES
            .with_label_values(&[route.config.name.as_str(), "connect"])
            .inc();
    }
    retry
}
