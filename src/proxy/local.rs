//! Answers the gateway gives itself: probes, the aggregate endpoint, unknown paths.

use std::sync::Arc;

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{ErrorType, Result};

use super::routes::Route;
use super::{respond, Ctx, Gateway};
use crate::aggregate::Aggregate;
use crate::error::GatewayError;
use crate::headers;

impl Gateway {
    async fn answer_aggregate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        aggregate: &Arc<Aggregate>,
    ) -> Result<()> {
        let req = session.req_header();
        let target = if aggregate.allows(&req.method) {
            aggregate.params(req.uri.path()).and_then(|mut params| {
                aggregate
                    .authorize(&mut params, ctx.identity.as_deref())
                    .map(|()| params)
            })
        } else {
            Err(GatewayError::MethodNotAllowed(
                "only GET is allowed here".into(),
            ))
        };
        let result = match target {
            Ok(params) => {
                match until_client_gone(session, aggregate.get(params, &ctx.request_id)).await {
                    Some(r) => r,
                    // The dropped future cancelled its upstream calls; there is nobody to answer.
                    None => return Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        let mut headers = ctx.local_headers();
        match result {
            Ok(answer) => {
                ctx.cache = Some(answer.cache);
                headers.push((headers::X_CACHE, answer.cache.header_value().to_string()));
                respond::json_cached(session, 200, answer.body, &headers, &answer.cache_control)
                    .await
            }
            Err(e) => respond::error(session, &e, &headers).await,
        }
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
            Route::Readyz if !self.edge.ready() => {
                let e =
                    GatewayError::Unavailable("identity provider keys are not loaded yet".into());
                respond::error(session, &e, &ctx.local_headers()).await?;
                return Ok(true);
            }
            Route::Readyz => br#"{"status":"ready"}"#,
            Route::NotFound => {
                let e = GatewayError::NotFound("no route matches this path".into());
                respond::error(session, &e, &ctx.local_headers()).await?;
                return Ok(true);
            }
        };
        respond::json(session, 200, Bytes::from_static(body), &ctx.local_headers()).await?;
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
