//! Per-request state: one [`Ctx`] per request, filled as the phases run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::proxy::Session;

use super::body;
use super::compress;
use super::health::BackendTry;
use super::routes::Route;
use crate::aggregate::CacheStatus;
use crate::edge::auth::Identity;
use crate::edge::client::ClientAddr;
use crate::edge::ratelimit::RateVerdict;
use crate::error::GatewayError;
use crate::headers;
use crate::snapshot::Snapshot;

/// Per-request state, filled as the phases run; each field names the phase that writes it.
pub struct Ctx {
    /// new_ctx: when the request started, for the duration metric.
    pub(super) started: Instant,
    /// new_ctx: the configuration this request runs on, start to end.
    pub(super) snap: Arc<Snapshot>,
    /// request_filter: where the request goes.
    pub(super) route: Route,
    /// request_filter: the backend of the first try, picked before proxying (upstream_peer
    /// takes it).
    pub(super) first_pick: Option<pingora::lb::Backend>,
    /// The group this request goes to (the route's, or the side of its split).
    pub(super) group: Option<std::sync::Arc<super::upstreams::UpstreamGroup>>,
    /// What a hashing group hashes for this request.
    pub(super) balance_key: Vec<u8>,
    /// A sticky split's cookie the client did not have (`Set-Cookie` on the answer).
    pub(super) set_cookie: Option<String>,
    /// request_filter: the request carried credentials the gateway checked, so its answer
    /// is the caller's (`Vary: Authorization`).
    pub(super) credentialed: bool,
    /// request_filter: the target as sent, when normalisation changed it.
    pub(super) original_target: Option<String>,
    /// request_filter: the matched template's params (empty for other routes).
    pub(super) params: Vec<(Box<str>, Box<str>)>,
    /// upstream_response_filter: the backend's status is one the route retries; the error
    /// raised for it is marked retryable by error_while_proxy.
    pub(super) retry_status: bool,
    /// request_filter: the client's id, or a fresh one.
    pub(super) request_id: String,
    /// request_filter: the client, on every route (public ones included).
    pub(super) client: Option<ClientAddr>,
    /// request_filter: the limits' verdict, reported in `RateLimit-*` headers.
    pub(super) rate: Option<RateVerdict>,
    /// request_filter: the verified caller, forwarded as `X-User-Id`.
    pub(super) identity: Option<Arc<Identity>>,
    /// request_filter: how an aggregate's answer relates to the cache, for the access log.
    pub(super) cache: Option<CacheStatus>,
    /// upstream_peer: backends already tried, so a retry goes elsewhere.
    pub(super) tried: Vec<SocketAddr>,
    /// upstream_peer starts a try; the phases that learn its outcome report it.
    pub(super) backend: BackendTry,
    /// upstream_peer: an error decided before proxying (no healthy backend), answered by
    /// fail_to_proxy.
    pub(super) local_error: Option<GatewayError>,
    /// request_filter: how the body was read (buffered bytes, budget held until the end).
    pub(super) body: body::Prepared,
    /// request_filter: CORS headers for this request's answers (`None`: no policy covers the
    /// route, and the service's own CORS headers stand).
    pub(super) cors: Option<Vec<(&'static str, String)>>,
    /// request_filter: the coding `Accept-Encoding` allows (read only with compression on).
    pub(super) accept: compress::Negotiated,
    /// response_filter: the encoder of a proxied answer being compressed.
    pub(super) encoder: Option<compress::Encoder>,
    /// request_filter: the request's spans (tracing on), ended by logging.
    pub(super) trace: Option<crate::trace::RequestTrace>,
    /// request_filter: a gRPC call's deadline; its status, read from the answer.
    pub(super) grpc: Option<Box<super::grpc::Call>>,
    /// request_filter: how an upgraded connection (tunnel) ended.
    pub(super) tunnel: Option<&'static str>,
}

impl Ctx {
    /// The headers an answer gets because of who asked: `Vary` by the credential headers when
    /// the request carried one (an answer to a caller is that caller's), and a sticky split's
    /// new cookie.
    pub(super) fn caller_headers(
        &mut self,
        resp: &mut pingora::http::ResponseHeader,
    ) -> pingora::Result<()> {
        if self.credentialed {
            resp.append_header(
                http::header::VARY,
                http::HeaderValue::from_static("Authorization"),
            )?;
            if let Some(k) = &self.snap.config.auth.api_keys {
                resp.append_header(
                    http::header::VARY,
                    http::HeaderValue::from(k.header.clone()),
                )?;
            }
        }
        if let Some(cookie) = self.set_cookie.take() {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    /// Request id and rate-limit headers that every local answer carries.
    pub(super) fn local_headers(&self) -> Vec<(&'static str, http::HeaderValue)> {
        let mut h = Vec::with_capacity(8);
        if let Ok(id) = http::HeaderValue::from_str(&self.request_id) {
            h.push((headers::X_REQUEST_ID, id));
        }
        if let Some(d) = &self.rate {
            h.extend(d.headers());
        }
        h.extend(
            self.cors
                .iter()
                .flatten()
                .filter_map(|(n, v)| Some((*n, http::HeaderValue::from_str(v).ok()?))),
        );
        h
    }
}

impl Ctx {
    /// Where `route`'s `{…}` values come from for this request (`host` and `path` as the
    /// caller read them).
    pub(super) fn values<'a>(
        &'a self,
        route: &'a super::routes::ProxyRoute,
        host: Option<&'a str>,
        path: &'a str,
    ) -> super::routes::Values<'a> {
        super::routes::Values {
            route,
            params: &self.params,
            identity: self.identity.as_deref(),
            request_id: &self.request_id,
            client_ip: self.client.as_ref().map(|c| c.ip),
            host,
            path,
        }
    }
}

/// Whether the client's connection is TLS (the HTTPS listener).
pub(super) fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}
