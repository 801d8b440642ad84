//! WebSocket connections: the handshake sent to a backend by the gateway itself,
//! and on its `101` the two connections joined into a tunnel until either side closes.
//!
//! Why not Pingora's own upgrade path: it tears a tunnel down when the backend's `101` is read
//! before the upgrade request's empty body was handled (cloudflare/pingora#946; a fast backend
//! on loopback hits it), and it knows no idle timeout other than the backend read timeout, no
//! message size and no shutdown close. Here the request has passed the edge (route, token,
//! limits, CORS) like any other; the backend is picked, connected (another on a connect
//! failure, never after it answered), and sent the request with the same headers a proxied
//! request gets. A non-`101` answer is relayed as it is.
//!
//! The tunnel copies bytes both ways; it ends when either side closes or fails, after
//! `websocket.idle_timeout_ms` without a byte either way, when a client message (its frames
//! together) passes `websocket.max_message_bytes`, or in a graceful shutdown or upgrade one
//! second before the grace period ends. In the last three cases the client gets a close frame
//! (1001 going away, or 1009 too big) and the backend a masked 1001, as a WebSocket endpoint
//! would send. A token that expires during a session does not end it: the edge checks the
//! handshake, as browsers' WebSocket API allows no re-authentication mid-session.

use std::io::Cursor;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType, Result};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

use super::ctx::Ctx;
use super::routes::Route;
use super::{respond, spans};
use crate::config::WebSocketLimits;
use crate::edge::hygiene;
use crate::error::GatewayError;
use crate::metrics;

/// Connects tunnels' backends (TCP or TLS, as each group's peer says); no pool, since an
/// upgraded connection is never reused.
static CONNECTOR: LazyLock<TransportConnector> = LazyLock::new(|| TransportConnector::new(None));

/// The server's shutdown signal and how long a graceful shutdown lets connections run.
static SHUTDOWN: OnceLock<(ShutdownWatch, Duration)> = OnceLock::new();

/// Whether the shutdown's closing of tunnels was logged (once per process, not per tunnel).
static SAID_CLOSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Hands the server's shutdown signal to tunnels (a background service is given it at start).
pub(crate) struct ShutdownSignal {
    /// `grace_period_seconds`: how long open connections may run once shutdown begins.
    pub(crate) grace: Duration,
}

#[async_trait]
impl BackgroundService for ShutdownSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = SHUTDOWN.set((shutdown.clone(), self.grace));
        // Stays until shutdown, so that the server does not log this service as ended.
        let _ = shutdown.changed().await;
    }
}

/// How a tunnel ended (the `result` label of `websocket_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client closed its side.
    ClientClosed,
    /// The backend closed its side.
    UpstreamClosed,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// A client message over `max_message_bytes`.
    TooBig,
    /// The server shut down (or upgraded) with the tunnel open.
    Shutdown,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the backend failed.
    UpstreamError,
    /// The backend answered the handshake with something other than `101`.
    Refused,
    /// No backend could be connected, or the handshake failed.
    ConnectError,
    /// A browser page of an origin the route's CORS policy does not allow (403).
    OriginRefused,
}

impl Ended {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_closed",
            Ended::UpstreamClosed => "upstream_closed",
            Ended::IdleTimeout => "idle_timeout",
            Ended::TooBig => "too_big",
            Ended::Shutdown => "shutdown",
            Ended::ClientError => "client_error",
            Ended::UpstreamError => "upstream_error",
            Ended::Refused => "refused",
            Ended::ConnectError => "connect_error",
            Ended::OriginRefused => "origin_refused",
        }
    }
}

/// Counts an open tunnel in `websocket_connections` for as long as it lives.
struct Open;

impl Open {
    fn new() -> Open {
        metrics::WEBSOCKET_CONNECTIONS.inc();
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::WEBSOCKET_CONNECTIONS.dec();
    }
}

/// Serves an upgrade request on a proxied route whose backend is already picked (`ctx.group`
/// and `ctx.first_pick`). Always answers (`Ok(true)`); `Err` only when writing to the client
/// failed before the tunnel began.
pub(super) async fn serve<G>(gw: &G, session: &mut Session, ctx: &mut Ctx) -> Result<bool>
where
    G: ProxyHttp<CTX = Ctx> + Sync,
{
    let Some(group) = ctx.group.clone() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "a route without a group",
        ));
    };
    let route: std::sync::Arc<str> = ctx.route.label().into();
    let req = session.req_header();
    if ctx
        .snap
        .edge
        .cors
        .refuses_origin(req.uri.path(), &req.headers)
    {
        let e = GatewayError::Forbidden("this origin may not open a WebSocket here".into());
        respond::error(session, &e, &ctx.local_headers()).await?;
        ctx.tunnel = Some(Ended::OriginRefused.label());
        count(&route, Ended::OriginRefused);
        return Ok(true);
    }
    // Read by upstream_request_filter: this request's `Upgrade` is kept.
    ctx.tunnel = Some(Ended::ConnectError.label());
    let ended = match handshake(gw, session, ctx).await {
        Ok(Some(mut up)) => {
            ctx.tunnel = Some(Ended::ClientClosed.label());
            let ended = relay(session, &mut up, group.config.websocket, &route).await;
            up.shutdown().await;
            ended
        }
        Ok(None) => Ended::Refused,
        Err(e) => {
            answer_failure(session, ctx, &e).await?;
            Ended::ConnectError
        }
    };
    ctx.tunnel = Some(ended.label());
    count(&route, ended);
    Ok(true)
}

fn count(route: &str, ended: Ended) {
    metrics::WEBSOCKET_SESSIONS
        .with_label_values(&[route, ended.label()])
        .inc();
}

/// Connects a backend (another one after a connect failure, as the group allows), sends the
/// request and relays the answer's header. `Some`: the backend switched protocols (`101`);
/// `None`: it answered otherwise, and that answer was relayed whole.
async fn handshake<G: ProxyHttp<CTX = Ctx> + Sync>(
    gw: &G,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<Option<UpstreamSession>> {
    let (stream, peer) = loop {
        let peer = gw.upstream_peer(session, ctx).await?;
        match CONNECTOR.new_stream(&*peer).await {
            Ok(stream) => break (stream, peer),
            Err(e) => {
                let e = gw.fail_to_connect(session, &peer, ctx, e);
                if !e.retry() {
                    return Err(e);
                }
            }
        }
    };
    let mut up = UpstreamSession::new(stream);
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    let mut req = Box::new(session.req_header().clone());
    gw.upstream_request_filter(session, &mut req, ctx).await?;
    let sent = async {
        up.write_request_header(req).await?;
        up.read_response().await
    };
    if let Err(e) = sent.await {
        let health = ctx.backend.failed(Instant::now());
        spans::health(ctx, health);
        return Err(e);
    }
    let mut resp = Box::new(
        up.resp_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?,
    );
    spans::answered(ctx, resp.status.as_u16(), Instant::now());
    // The handshake's answer is never compressed (a 101 has no body; a refusal is relayed as
    // the backend framed it).
    ctx.accept = Default::default();
    gw.response_filter(session, &mut resp, ctx).await?;
    if up.was_upgraded() {
        session.write_response_header(resp, false).await?;
        up.maybe_upgrade_body_writer();
        return Ok(Some(up));
    }
    relay_refusal(session, &mut up, resp).await?;
    Ok(None)
}

/// Relays a backend's answer that did not switch protocols, body included.
async fn relay_refusal(
    session: &mut Session,
    up: &mut UpstreamSession,
    mut resp: Box<ResponseHeader>,
) -> Result<()> {
    // The connection is not reused after an upgrade request either way.
    resp.remove_header(&http::header::CONNECTION);
    session.as_downstream_mut().set_keepalive(None);
    session.write_response_header(resp, false).await?;
    while let Some(chunk) = up.read_body_bytes().await? {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await
}

/// The client is told why no tunnel was made (in gRPC's or JSON's shape, as every error).
async fn answer_failure(session: &mut Session, ctx: &mut Ctx, e: &Error) -> Result<()> {
    let err = ctx
        .local_error
        .take()
        .or_else(|| respond::proxy_failure(e))
        .unwrap_or(GatewayError::Internal);
    session.as_downstream_mut().set_keepalive(None);
    if session.response_written().is_none() {
        respond::error(session, &err, &ctx.local_headers()).await?;
    }
    Ok(())
}

/// Copies bytes both ways until the tunnel ends; says how it ended.
async fn relay(
    session: &mut Session,
    up: &mut UpstreamSession,
    limits: WebSocketLimits,
    route: &str,
) -> Ended {
    let _open = Open::new();
    let to_upstream = metrics::WEBSOCKET_BYTES.with_label_values(&[route, "to_upstream"]);
    let to_client = metrics::WEBSOCKET_BYTES.with_label_values(&[route, "to_client"]);
    // The tunnel's own idle timeout replaces per-read ones on both sides.
    session.set_read_timeout(None);
    up.read_timeout = None;
    let mut sizes = limits.max_message_bytes.map(MessageSizes::new);
    let (mut shutdown, grace) = match SHUTDOWN.get() {
        Some((watch, grace)) => (Some(watch.clone()), *grace),
        None => (None, Duration::ZERO),
    };
    let mut closing_at: Option<tokio::time::Instant> = None;
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        closing_at = Some(close_after(grace));
    }
    let mut idle_until = tokio::time::Instant::now() + limits.idle_timeout;
    loop {
        let close_at = closing_at.unwrap_or(idle_until).min(idle_until);
        tokio::select! {
            read = session.as_downstream_mut().read_request_body() => match read {
                Ok(Some(chunk)) => {
                    if let Some(s) = &mut sizes {
                        if s.feed(&chunk).is_err() {
                            close(session, up, CloseCode::Size, "message too big").await;
                            return Ended::TooBig;
                        }
                    }
                    to_upstream.inc_by(chunk.len() as u64);
                    if up.write_body(&chunk).await.is_err() {
                        return Ended::UpstreamError;
                    }
                }
                Ok(None) => return Ended::ClientClosed,
                Err(_) => return Ended::ClientError,
            },
            read = up.read_body_bytes() => match read {
                Ok(Some(chunk)) => {
                    to_client.inc_by(chunk.len() as u64);
                    let down = session.as_downstream_mut();
                    if down.write_response_body(chunk, false).await.is_err() {
                        return Ended::ClientError;
                    }
                }
                Ok(None) => return Ended::UpstreamClosed,
                Err(_) => return Ended::UpstreamError,
            },
            changed = async {
                match &mut shutdown {
                    Some(s) => s.changed().await.is_ok() && *s.borrow(),
                    None => std::future::pending().await,
                }
            }, if closing_at.is_none() => {
                if changed {
                    closing_at = Some(close_after(grace));
                } else {
                    shutdown = None;
                }
                continue;
            }
            () = tokio::time::sleep_until(close_at) => {
                if closing_at.is_some_and(|c| c <= tokio::time::Instant::now()) {
                    if !SAID_CLOSING.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!("closing the open WebSocket tunnels (1001 going away) before the shutdown's grace period ends; websocket_sessions_total{{result=\"shutdown\"}} counts them");
                    }
                    close(session, up, CloseCode::Away, "server shutting down").await;
                    return Ended::Shutdown;
                }
                close(session, up, CloseCode::Away, "idle timeout").await;
                return Ended::IdleTimeout;
            }
        }
        idle_until = tokio::time::Instant::now() + limits.idle_timeout;
    }
}

/// When a tunnel open at a graceful shutdown is closed: one second before the grace period
/// ends (the runtime is then torn down and would drop it without a close frame), or halfway
/// through a grace period of two seconds or less.
fn close_after(grace: Duration) -> tokio::time::Instant {
    let left = grace.saturating_sub(Duration::from_secs(1)).max(grace / 2);
    tokio::time::Instant::now() + left
}

/// Sends a close frame to both sides (the backend's masked, as a client's must be), best
/// effort: either side may be gone already.
async fn close(session: &mut Session, up: &mut UpstreamSession, code: CloseCode, why: &str) {
    let frame = |mask: Option<[u8; 4]>| {
        let mut f = Frame::close(Some(CloseFrame {
            code,
            reason: why.into(),
        }));
        f.header_mut().mask = mask;
        let mut out = Vec::with_capacity(4 + why.len() + 4);
        f.format(&mut out).ok().map(|()| out)
    };
    if let Some(out) = frame(None) {
        let down = session.as_downstream_mut();
        let _ = down.write_response_body(Bytes::from(out), false).await;
    }
    if let Some(out) = frame(Some(rand::random())) {
        let _ = up.write_body(&out).await;
    }
}

/// Reads the frame headers of a client's byte stream to know each message's size (all its
/// frames together); payloads are skipped, never copied.
struct MessageSizes {
    max: u64,
    /// A frame header split across reads (at most 14 bytes).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current data message so far.
    message: u64,
}

impl MessageSizes {
    fn new(max: u64) -> MessageSizes {
        MessageSizes {
            max,
            head: Vec::with_capacity(14),
            payload_left: 0,
            message: 0,
        }
    }

    /// Reads `chunk`; `Err` once a message is over the maximum or a frame is malformed.
    fn feed(&mut self, mut chunk: &[u8]) -> std::result::Result<(), ()> {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let skip = chunk
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let before = self.head.len();
            let take = (14 - before).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            let mut cursor = Cursor::new(&self.head[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize - before;
                    chunk = &chunk[used..];
                    self.head.clear();
                    self.payload_left = len;
                    match header.opcode {
                        OpCode::Data(Data::Continue) => self.message += len,
                        OpCode::Data(_) => self.message = len,
                        OpCode::Control(_) => continue,
                    }
                    if self.message > self.max {
                        return Err(());
                    }
                }
                Ok(None) => chunk = &chunk[take..],
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }
}

/// Whether the request becomes a tunnel: a WebSocket upgrade on a proxied route.
pub(super) fn tunnels(route: &Route, session: &Session) -> bool {
    matches!(route, Route::Proxy(_)) && hygiene::is_websocket_upgrade(session.req_header())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: OpCode, fin: bool, len: usize) -> Vec<u8> {
        let mut f = match opcode {
            OpCode::Control(_) => Frame::ping(vec![b'x'; len]),
            OpCode::Data(_) => Frame::message(vec![b'x'; len], opcode, fin),
        };
        f.header_mut().mask = Some([1, 2, 3, 4]);
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn a_message_over_the_maximum_is_caught_whatever_the_reads() {
        let mut stream = frame(OpCode::Data(Data::Text), true, 100);
        stream.extend(frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            true,
            10,
        ));
        stream.extend(frame(OpCode::Data(Data::Binary), false, 600));
        stream.extend(frame(OpCode::Data(Data::Continue), true, 600));
        // Fed whole, and one byte at a time: header parsing across reads.
        let mut whole = MessageSizes::new(1000);
        assert!(whole.feed(&stream).is_err(), "two frames of 600 make 1200");
        let mut bytes = MessageSizes::new(1000);
        let first_bad = stream.iter().position(|b| bytes.feed(&[*b]).is_err());
        assert!(first_bad.is_some());
        let mut fits = MessageSizes::new(1200);
        assert!(fits.feed(&stream).is_ok());
        let mut big = MessageSizes::new(70_000);
        assert!(big
            .feed(&frame(OpCode::Data(Data::Binary), true, 70_000))
            .is_ok());
        assert!(big
            .feed(&frame(OpCode::Data(Data::Binary), true, 70_001))
            .is_err());
    }
}
