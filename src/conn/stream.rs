//! The client stream with a whole-header read deadline (slowloris defence), and the response
//! write buffer that replaces Pingora's per-connection L4 buffer.
//!
//! The clock starts at the first byte of a request and stops at the blank line that ends its
//! header; past the deadline the read fails and Pingora drops the connection. Request
//! boundaries are seen from the bytes themselves: a request starts with the first byte read
//! after a response was written. Upgraded connections (101) are left alone.
//!
//! Pingora's `Stream` asks for a dozen small delegating trait impls; the logic is the phase
//! machine, the write buffer and the per-read cap.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::per_ip::Slot;
use super::report::{report, ClientEvent, Phase as ReportPhase};

/// The first read of a request: one read usually takes the whole header.
const FIRST_READ: usize = 4096;
/// The response write buffer: Pingora's own L4 default (one MSS).
const WRITE_BUFFER: usize = 1460;

/// Where the connection is in its request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request header (idle keep-alive time is not counted).
    Idle,
    /// Inside a request header: the clock runs.
    Header,
    /// Header complete; body and response follow. A write moves back to `Idle`-after-write.
    Body,
    /// A response was written: the next byte read starts a new request.
    Answered,
    /// Upgraded (101) or otherwise exempt: never timed again.
    Off,
}

/// A client stream with a header deadline.
pub(crate) struct DeadlineStream {
    inner: Stream,
    /// The header deadline in milliseconds (a `Duration` would take 12 more bytes in every
    /// connection's state; docs/BENCHMARKS.md counts them).
    limit_ms: u32,
    phase: Phase,
    /// Last three bytes seen, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read while waiting for a request, not yet handed to Pingora.
    stash: BytesMut,
    /// Response bytes not yet written; allocated per response and freed by the flush that
    /// ends it, so an idle connection holds no write buffer.
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_done: u16,
    /// Bytes arrived past the end of this request's header (a body, or requests pipelined
    /// behind it): only then may Pingora hold bytes of the next request.
    read_ahead: bool,
    /// This connection's place under the per-address cap, freed when the stream drops.
    _slot: Option<Slot>,
    /// The most one read returns (0: no cap); set through a shared reference while a body
    /// of unknown size is buffered (`proxy::body`). The small integer types here keep the
    /// struct in jemalloc's 112-byte size class.
    read_cap: AtomicU16,
}

impl std::fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("phase", &self.phase)
            .field("limit_ms", &self.limit_ms)
            .finish()
    }
}

impl DeadlineStream {
    /// Wraps `inner`, allowing each request header `limit` from its first byte to its end.
    pub(crate) fn new(inner: Stream, limit: Duration, slot: Option<Slot>) -> Self {
        DeadlineStream {
            inner,
            limit_ms: u32::try_from(limit.as_millis()).unwrap_or(u32::MAX),
            phase: Phase::Idle,
            tail: [0; 3],
            timer: None,
            stash: BytesMut::new(),
            out: Vec::new(),
            out_done: 0,
            read_ahead: false,
            _slot: slot,
            read_cap: AtomicU16::new(0),
        }
    }

    /// Caps every read from now on at `cap` bytes (0: no cap).
    pub(super) fn set_read_cap(&self, cap: u16) {
        self.read_cap.store(cap, Ordering::Relaxed);
    }

    /// Whether bytes arrived past the end of the last request's header (and forgets it).
    pub(super) fn take_read_ahead(&mut self) -> bool {
        std::mem::take(&mut self.read_ahead)
    }

    /// The next request starts from `prefix`, bytes Pingora already read: its header clock
    /// starts now and sees them as if they had just arrived.
    pub(super) fn pipelined_request_begins(&mut self, prefix: &[u8]) {
        if self.phase != Phase::Off {
            self.phase = Phase::Answered;
            self.saw(prefix);
        }
    }

    /// Writes out what `out` holds; the progress survives a `Pending`.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut res = Ok(());
        while (self.out_done as usize) < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_done as usize..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    res = Err(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                // `out` never holds more than `WRITE_BUFFER` bytes, so the count fits.
                Poll::Ready(Ok(n)) => self.out_done += n as u16,
                Poll::Ready(Err(e)) => {
                    res = Err(e);
                    break;
                }
            }
        }
        self.out = Vec::new();
        self.out_done = 0;
        Poll::Ready(res)
    }

    /// Waits until the client sends something (`Ok(0)`: it closed) and keeps what arrived for
    /// the next read. The buffer exists only while a read is attempted, so a connection idling
    /// here costs no buffer memory.
    fn poll_request_bytes(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if !self.stash.is_empty() {
            return Poll::Ready(Ok(self.stash.len()));
        }
        let mut buf = BytesMut::with_capacity(FIRST_READ);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut buf) {
            Poll::Ready(Ok(n)) => {
                self.stash = buf;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Waits for the first bytes of the next request; `false` when the client closed first.
    pub(super) async fn request_arrived(&mut self) -> std::io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_request_bytes(cx))
            .await
            .map(|n| n > 0)
    }

    /// Feeds bytes just read through the phase machine (no allocation: this runs per read).
    fn saw(&mut self, data: &[u8]) {
        if data.is_empty() || self.phase == Phase::Off {
            return;
        }
        if self.phase == Phase::Body {
            self.read_ahead = true;
            return;
        }
        if matches!(self.phase, Phase::Idle | Phase::Answered) {
            self.phase = Phase::Header;
            self.tail = [0; 3];
            self.read_ahead = false;
        }
        // The blank line may straddle two reads: check the seam, then the new bytes. `end` is
        // where the header ends within `data`.
        let mut seam = [0u8; 6];
        let k = data.len().min(3);
        seam[..3].copy_from_slice(&self.tail);
        seam[3..3 + k].copy_from_slice(&data[..k]);
        let end = seam[..3 + k]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|w| w + 1)
            .or_else(|| BLANK_LINE.find(data).map(|p| p + 4));
        if let Some(end) = end {
            self.phase = Phase::Body;
            self.timer = None;
            self.read_ahead = end < data.len();
            return;
        }
        // Armed only when the header did not come whole with its first read (the usual case
        // does): its clock starts at that read, where the request's first bytes were seen.
        if self.timer.is_none() {
            let limit = Duration::from_millis(u64::from(self.limit_ms));
            self.timer = Some(Box::pin(tokio::time::sleep(limit)));
        }
        if data.len() >= 3 {
            self.tail.copy_from_slice(&data[data.len() - 3..]);
        } else {
            let keep = 3 - data.len();
            let mut t = [0u8; 3];
            t[..keep].copy_from_slice(&self.tail[3 - keep..]);
            t[keep..].copy_from_slice(data);
            self.tail = t;
        }
    }

    fn wrote(&mut self, data: &[u8]) {
        if data.is_empty() || self.phase == Phase::Off {
            return;
        }
        if data.starts_with(b"HTTP/1.1 101") || data.starts_with(b"HTTP/1.0 101") {
            self.phase = Phase::Off;
            self.timer = None;
        } else if self.phase == Phase::Body && is_interim(data) {
            // `100 Continue` asks for the body: the request is not answered yet, and the body
            // that follows must not be taken for the next request's header (and its deadline).
        } else if matches!(self.phase, Phase::Body | Phase::Header) {
            // A response means the request's header was complete, even one that arrived
            // pipelined behind another and was never seen ending here.
            self.phase = Phase::Answered;
            self.timer = None;
        }
    }
}

/// An interim (1xx, not 101) response header.
fn is_interim(data: &[u8]) -> bool {
    data.len() > 9
        && data.starts_with(b"HTTP/1.")
        && data[9] == b'1'
        && !data[9..].starts_with(b"101")
}

/// The end of a request header, searched for in every read (the searcher is built once: its
/// set-up costs more than a short header's search).
static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                self.timer = None;
                self.phase = Phase::Off;
                report(ClientEvent::Timeout(ReportPhase::Header));
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request header not received within the deadline",
                )));
            }
        }
        let cap = self.read_cap.load(Ordering::Relaxed) as usize;
        if cap > 0 && buf.remaining() > cap {
            let mut limited = buf.take(cap);
            let res = self.as_mut().poll_read(cx, &mut limited);
            let n = limited.filled().len();
            // SAFETY: the first `n` bytes of the unfilled part were just written by the read.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return res;
        }
        let before = buf.filled().len();
        let this = &mut *self;
        if !this.stash.is_empty() {
            let n = this.stash.len().min(buf.remaining());
            buf.put_slice(&this.stash[..n]);
            this.stash.advance(n);
            if this.stash.is_empty() {
                // Free the buffer now rather than hold it through the next idle wait.
                this.stash = BytesMut::new();
            }
            this.saw(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        let room = buf.remaining() > 0;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before || !room => {
                this.saw(&buf.filled()[before..])
            }
            // Closed or reset halfway through a header: counted here, where the header's
            // phase is known (Pingora only sees a failed read, and its log line is filtered).
            Poll::Ready(_) if this.phase == Phase::Header => {
                this.phase = Phase::Off;
                this.timer = None;
                report(ClientEvent::Aborted(ReportPhase::Header));
            }
            _ => {}
        }
        res
    }
}

impl Drop for DeadlineStream {
    // As Pingora's own stream does: a response cut short (an upstream dying mid-body) still
    // sends what it has, so the client sees a truncated body rather than nothing.
    fn drop(&mut self) {
        if (self.out_done as usize) < self.out.len() {
            let _ = self.poll_write_out(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

impl AsyncWrite for DeadlineStream {
    // Buffered like Pingora's own L4 write buffer (which the listener turns off): a response
    // header and a small body leave in one write, big writes go straight through.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() + data.len() > WRITE_BUFFER {
            if let Err(e) = std::task::ready!(this.poll_write_out(cx)) {
                return Poll::Ready(Err(e));
            }
        }
        let res = if data.len() >= WRITE_BUFFER {
            Pin::new(&mut this.inner).poll_write(cx, data)
        } else {
            if this.out.capacity() == 0 {
                this.out.reserve_exact(WRITE_BUFFER);
            }
            this.out.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        };
        if let Poll::Ready(Ok(n)) = res {
            this.wrote(&data[..n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_write_out(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.stash.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        // Bytes already taken off the socket come first; a longer peek is not offered.
        if self.stash.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.stash[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_state_stays_within_one_allocator_size_class() {
        // An idle keep-alive connection is mostly this struct (docs/BENCHMARKS.md: under 4 KB
        // per connection); jemalloc's size classes step from 112 to 128 bytes.
        assert!(
            std::mem::size_of::<DeadlineStream>() <= 112,
            "{}",
            std::mem::size_of::<DeadlineStream>()
        );
    }

    /// A wrapper around a real (idle) socket: the phase machine never touches it.
    async fn stream() -> DeadlineStream {
        pair().await.0
    }

    #[tokio::test]
    async fn phases_follow_requests_and_responses() {
        let mut s = stream().await;
        s.saw(b"GET / HTTP/1.1\r\nHo");
        assert_eq!(s.phase, Phase::Header);
        assert!(s.timer.is_some());
        s.saw(b"st: x\r\n\r");
        assert_eq!(s.phase, Phase::Header);
        s.saw(b"\n");
        assert_eq!(s.phase, Phase::Body, "the blank line may straddle reads");
        let mut t = stream().await;
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
            assert_ne!(t.phase, Phase::Body);
            t.saw(&[*b]);
        }
        assert_eq!(t.phase, Phase::Body, "one byte at a time");
        assert!(s.timer.is_none());
        s.saw(b"body bytes \r\n\r\n are not timed");
        assert_eq!(s.phase, Phase::Body);
        s.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(s.phase, Phase::Answered);
        s.saw(b"G");
        assert_eq!(
            s.phase,
            Phase::Header,
            "the next request starts the clock again"
        );
        s.saw(b"ET / HTTP/1.1\r\n\r\n");
        s.wrote(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(s.phase, Phase::Off);
        s.saw(b"websocket frames");
        assert!(s.timer.is_none());
    }

    /// A wrapper and the socket at the other end of it.
    async fn pair() -> (DeadlineStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (peer, _) = listener.accept().await.expect("accept");
        let inner: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
        (
            DeadlineStream::new(inner, Duration::from_secs(10), None),
            peer,
        )
    }

    #[tokio::test]
    async fn writes_are_buffered_until_flush_and_the_buffer_is_freed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, mut peer) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        s.write_all(b"small").await.unwrap();
        assert_eq!(s.out.as_slice(), b"HTTP/1.1 200 OK\r\n\r\nsmall");
        // A write bigger than the buffer sends what is pending first, in order.
        let big = vec![b'x'; WRITE_BUFFER * 3];
        s.write_all(&big).await.unwrap();
        assert!(s.out.is_empty());
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(
            s.out.capacity(),
            0,
            "an idle connection holds no write buffer"
        );
        let mut want = b"HTTP/1.1 200 OK\r\n\r\nsmall".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        assert_eq!(
            s.phase,
            Phase::Idle,
            "a response without a request changes nothing"
        );
    }

    #[tokio::test]
    async fn bytes_read_while_waiting_are_handed_over_then_freed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, mut peer) = pair().await;
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(s.request_arrived().await.unwrap());
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET ");
        let mut rest = [0u8; 12];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"/ HTTP/1.1\r\n");
        assert_eq!(
            s.stash.capacity(),
            0,
            "the read buffer is gone once handed over"
        );
        assert_eq!(
            s.phase,
            Phase::Header,
            "stashed bytes still start the header clock"
        );
        drop(peer);
        assert!(
            !s.request_arrived().await.unwrap(),
            "a closed client is no request"
        );
    }

    #[tokio::test]
    async fn dropping_a_stream_sends_what_it_buffered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, mut peer) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut")
            .await
            .unwrap();
        drop(s);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut");
    }
}
