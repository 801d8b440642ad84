//! Client connections: the whole-header deadline wrapped around every accepted stream, and the
//! HTTP/1 keep-alive loop that runs in front of Pingora's per-request state.
//!
//! Why this exists: Pingora 0.9 bounds each read of a request header (60 s) but not the header
//! as a whole, so a client trickling a byte every few seconds could hold a connection for ever
//! ([`stream`] adds the deadline). And Pingora's own keep-alive loop keeps its per-request state
//! (its request future, header buffer and parse scratch space) allocated for the whole idle time
//! of every keep-alive connection; this loop waits for each request's first bytes before
//! handing the connection to Pingora (docs/BENCHMARKS.md has the measured sizes).
//!
//! The loop mirrors `HttpServerApp::process_new` of pingora-core 0.9.1 (`apps/mod.rs`): the
//! first session's keep-alive and reuse limit, then `HttpPersistentSettings` carried from one
//! request to the next. On a Pingora upgrade, re-check that function (new per-connection
//! settings, pipelining) against [`WithHeaderDeadline::serve_http1`]. h2c, TLS and custom
//! protocols still go through Pingora's own loop. Pipelined requests (sent before the previous
//! answer) start without waiting; [`pipeline`] reads the bytes Pingora kept for them.
//!
//! - `report`: slow and vanished clients counted, and Pingora's log lines about them
//!   classified (so `logging` can keep them out of the log).
//! - `per_ip`: the per-address connection cap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Peek, Ssl, Stream};
use pingora::server::ShutdownWatch;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

mod per_ip;
mod pipeline;
pub(crate) mod report;
mod stream;

pub(crate) use self::per_ip::PerIpCap;
use self::report::ClientEvent;
use self::stream::DeadlineStream;

/// What every client connection is held to.
pub(crate) struct ConnLimits {
    /// From a request's first byte to the end of its header (`limits.header_read_timeout_ms`).
    pub(crate) header_deadline: Duration,
    /// How long a connection may sit without a request (`limits.keepalive_timeout_ms`).
    pub(crate) keepalive: Duration,
    /// Requests answered in a row from bytes read ahead (`limits.pipeline_depth`); the last
    /// one's answer closes the connection.
    pub(crate) pipeline_depth: usize,
    /// Concurrent connections per address (`limits.max_connections_per_ip`); `None`: no cap.
    pub(crate) per_ip: Option<Arc<PerIpCap>>,
}

/// A server app that gives every accepted connection a header deadline, then hands it on.
pub(crate) struct WithHeaderDeadline<A> {
    inner: Arc<A>,
    limits: ConnLimits,
}

impl<A> WithHeaderDeadline<A> {
    /// Wraps `inner`, holding every connection to `limits`.
    pub(crate) fn new(inner: A, limits: ConnLimits) -> Self {
        WithHeaderDeadline {
            inner: Arc::new(inner),
            limits,
        }
    }
}

/// Waits for the next request on `stream`; `None` when the client closed or stayed silent
/// past the keep-alive time, or the server began shutting down (idle connections close then,
/// as Pingora's own loop does).
async fn next_request(
    mut stream: Box<DeadlineStream>,
    keepalive: Duration,
    shutdown: &ShutdownWatch,
) -> Option<Box<DeadlineStream>> {
    if *shutdown.borrow() {
        return None;
    }
    let mut shutdown = shutdown.clone();
    let stopping = async {
        while shutdown.changed().await.is_ok() {
            if *shutdown.borrow() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        biased;
        // Pingora's coarse timer wheel: cheaper to arm and disarm than tokio's, and this one
        // is armed for every request on a keep-alive connection.
        arrived = pingora_timeout::fast_timeout::fast_timeout(keepalive, stream.request_arrived()) => match arrived {
            Ok(Ok(true)) => Some(stream),
            _ => None,
        },
        () = stopping => None,
    }
}

/// Whether the next request is already here: bytes Pingora read past the last one (then fed
/// to the header deadline), or bytes waiting in the socket the moment the last answer went out
/// (sent without waiting for it). `None` when the connection should close instead. Not async,
/// so none of this stays in an idle connection's state.
fn next_is_here(
    stream: &mut DeadlineStream,
    settings: Option<&HttpPersistentSettings>,
    shutdown: &ShutdownWatch,
) -> Option<bool> {
    let prefix = match settings {
        Some(s) if stream.take_read_ahead() => pipeline::pipelined_prefix(s),
        _ => None,
    };
    if let Some(prefix) = prefix {
        stream.pipelined_request_begins(&prefix);
        return Some(true);
    }
    if *shutdown.borrow() {
        return None;
    }
    match stream.request_arrived().now_or_never() {
        Some(Ok(true)) => Some(true),
        Some(_) => None,
        None => Some(false),
    }
}

/// Caps each read from the client's stream at `cap` bytes (0: no cap), for as long as a body
/// of unknown size is buffered. Does nothing on a stream this module did not wrap.
pub(crate) fn set_read_cap(session: &pingora::proxy::Session, cap: u16) {
    let stream = session
        .as_downstream()
        .stream()
        // `**`: the boxed stream itself, not the box (which is an `IO` too).
        .and_then(|s| (**s).as_any().downcast_ref::<DeadlineStream>());
    if let Some(s) = stream {
        s.set_read_cap(cap);
    }
}

/// Pingora's boxed per-request future, as `process_new_http` returns it.
type RequestFuture<'a> = Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>>;

impl<A: HttpServerApp + Send + Sync + 'static> WithHeaderDeadline<A> {
    /// Pingora's HTTP/1 keep-alive loop (pingora-core `apps`), with the wait for each request
    /// moved out here, in front of the per-request state. When the client pipelined, the next
    /// request is already in Pingora's hands (the prefix) and is started without waiting.
    async fn serve_http1(
        self: &Arc<Self>,
        mut stream: Box<DeadlineStream>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut settings: Option<HttpPersistentSettings> = None;
        // Requests in a row that arrived before the previous answer went out; `u32::MAX`
        // before the first request (which follows no answer).
        let mut pipelined = u32::MAX;
        loop {
            let here = next_is_here(&mut stream, settings.as_ref(), shutdown)?;
            let first = pipelined == u32::MAX;
            if !here {
                stream = next_request(stream, self.limits.keepalive, shutdown).await?;
            }
            pipelined = if here && !first { pipelined + 1 } else { 0 };
            let last = pipelined as usize >= self.limits.pipeline_depth;
            let request = self.request(stream, first, settings.take(), last, shutdown);
            let (next, next_settings) = request.await?.consume();
            settings = next_settings;
            stream = next.into_any().downcast::<DeadlineStream>().ok()?;
        }
    }

    /// With h2c on: a connection that opens with the HTTP/2 preface goes to Pingora's h2 loop,
    /// any other to this module's HTTP/1 loop.
    async fn serve_h2c_or_http1(
        self: &Arc<Self>,
        mut stream: Box<DeadlineStream>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut first = [0u8; H2_PREFACE.len()];
        let peek = stream.try_peek(&mut first);
        let peeked = pingora_timeout::timeout(self.limits.keepalive, peek)
            .await
            .ok()?
            .ok()?;
        if peeked && first == *H2_PREFACE {
            return self.inner.process_new(stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await
    }

    /// Starts Pingora on one request. Not async on purpose: the session built here is moved
    /// into Pingora's own boxed future, and an `async` caller would keep room for it in every
    /// idle connection's state.
    fn request<'a>(
        self: &'a Arc<Self>,
        stream: Box<DeadlineStream>,
        first: bool,
        settings: Option<HttpPersistentSettings>,
        last: bool,
        shutdown: &'a ShutdownWatch,
    ) -> RequestFuture<'a> {
        let mut session = ServerSession::new_http1(stream);
        if first {
            // Pipelined requests are answered in order; the settings carry this to the next
            // session on the connection.
            session.set_pipelining_enabled(true);
            // Pingora counts keep-alive in whole seconds; this loop enforces the exact limit.
            let secs = self.limits.keepalive.as_secs_f64().ceil().max(1.0) as u64;
            session.set_keepalive((!*shutdown.borrow()).then_some(secs));
            session.set_keepalive_reuses_remaining(
                self.inner
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit),
            );
        } else if let Some(s) = settings {
            s.apply_to_session(&mut session);
        }
        if last {
            // The pipelining cap: this answer says `Connection: close`; the client sends what
            // it pipelined after it again on a new connection (RFC 9112 §9.3.2). (A reuse
            // count, because Pingora resets the keep-alive timeout from the request header.)
            session.set_keepalive_reuses_remaining(Some(0));
        }
        self.inner.process_new_http(session, shutdown)
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for WithHeaderDeadline<A> {
    // Written out rather than `async fn`: the macro's extra async layer around the loop made
    // every idle connection's state larger (docs/BENCHMARKS.md).
    fn process_new<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: Stream,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<Stream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let slot = match &self.limits.per_ip {
            Some(cap) => {
                let peer = session
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
                match peer.map(|ip| cap.admit(ip)) {
                    Some(Ok(slot)) => slot,
                    Some(Err(())) => {
                        // Closed before a byte is read: the cheapest answer to a flood.
                        report::report(ClientEvent::Refused);
                        return Box::pin(std::future::ready(None));
                    }
                    None => None,
                }
            }
            None => None,
        };
        let stream = Box::new(DeadlineStream::new(
            session,
            self.limits.header_deadline,
            slot,
        ));
        let options = self.inner.server_options();
        if options.is_some_and(|o| o.force_custom) || stream.get_ssl_digest().is_some() {
            // Not the plain HTTP/1 this gateway serves: Pingora's own loop.
            return self.inner.process_new(stream, shutdown);
        }
        if options.is_some_and(|o| o.h2c) {
            return Box::pin(self.serve_h2c_or_http1(stream, shutdown));
        }
        Box::pin(self.serve_http1(stream, shutdown))
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
