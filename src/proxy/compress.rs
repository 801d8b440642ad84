//! Response compression: the coding negotiated from `Accept-Encoding`, the answers that may be
//! compressed, and the encoders (Pingora's gzip, brotli and zstd compressors).
//!
//! Pingora's own compression module is not used as a whole: it ignores q-values, always takes
//! the client's first coding, and has a fixed 20-byte threshold and type list. Its encoders are
//! what it does well, so they are reused through `Algorithm::compressor` (brotli aside, below).
//!
//! Negotiation, the header rules, the encoders and the memo of cached aggregates' compressed
//! copies share one policy.

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG, TRANSFER_ENCODING, VARY,
};
use http::HeaderMap;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::{Algorithm, Encode};

use crate::config::{Coding, CompressionConfig};
use crate::metrics;

/// Compressed copies of cached aggregates may hold this many bytes (originals included).
const MEMO_BYTES: usize = 32 << 20;

/// What a request's `Accept-Encoding` allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The coding to use when the answer qualifies; `None`: send it as it is.
    pub(crate) coding: Option<Coding>,
    /// `identity;q=0` (or `*;q=0` without identity): small answers are compressed too.
    pub(crate) identity_refused: bool,
}

/// The compression policy and the memo of compressed cached aggregates.
pub(crate) struct Compressor {
    config: CompressionConfig,
    memo: Mutex<Memo>,
}

struct Memo {
    entries: lru::LruCache<(String, Coding), (Bytes, Bytes)>,
    bytes: usize,
}

/// A streaming encoder for one proxied answer.
pub(crate) struct Encoder {
    coding: Coding,
    inner: Box<dyn Encode + Send + Sync>,
}

/// An encoder for `coding`: Pingora's for gzip and zstd, ours for brotli.
fn compressor(coding: Coding, level: u32) -> Option<Box<dyn Encode + Send + Sync>> {
    match coding {
        Coding::Zstd => Algorithm::Zstd.compressor(level),
        Coding::Gzip => Algorithm::Gzip.compressor(level),
        Coding::Br => Some(Box::new(Brotli::new(level))),
    }
}

/// Brotli that ends its stream. Pingora 0.9's brotli compressor only flushes at the end, so
/// its output lacks the final meta-block and strict decoders (the `brotli` CLI, the crate's
/// reader) refuse it.
struct Brotli {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    took: std::time::Duration,
}

impl Brotli {
    fn new(level: u32) -> Brotli {
        Brotli {
            // A 512 KiB window (lgwin 19), as Pingora's: larger windows cost memory per answer.
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
            took: std::time::Duration::ZERO,
        }
    }
}

impl Encode for Brotli {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        use std::io::Write;
        let start = std::time::Instant::now();
        let Some(w) = self.writer.as_mut() else {
            return Err(pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "brotli stream already finished",
            ));
        };
        self.total_in += input.len();
        w.write_all(input)
            .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "brotli", e))?;
        let out = if end {
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(w.get_mut())
        };
        self.total_out += out.len();
        self.took += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", self.total_in, self.total_out, self.took)
    }
}

/// `q` in thousandths (RFC 9110 §12.4.2: at most three decimals), `None` when malformed.
fn parse_q(v: &str) -> Option<u16> {
    let v = v.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" if frac_val == 0 => Some(1000),
        _ => None,
    }
}

/// Reads `Accept-Encoding` against the codings offered, in the gateway's order of preference.
pub(crate) fn negotiate(headers: &HeaderMap, offered: &[Coding]) -> Negotiated {
    let mut values = headers.get_all(ACCEPT_ENCODING).iter().peekable();
    if values.peek().is_none() {
        // No header: any coding is allowed, but clients that send none (curl, scripts) expect
        // the bytes as they are.
        return Negotiated::default();
    }
    let mut star: Option<u16> = None;
    let mut identity: Option<u16> = None;
    let mut explicit: [Option<u16>; 3] = [None; 3];
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let mut parts = element.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v);
                    }
                }
            }
            let Some(q) = q else { continue };
            match name.as_str() {
                "*" => star = Some(q),
                "identity" => identity = Some(q),
                "zstd" => explicit[0] = Some(q),
                "br" => explicit[1] = Some(q),
                "gzip" | "x-gzip" => explicit[2] = Some(q),
                _ => {}
            }
        }
    }
    let index = |c: Coding| match c {
        Coding::Zstd => 0,
        Coding::Br => 1,
        Coding::Gzip => 2,
    };
    let mut best: Option<(Coding, u16)> = None;
    for &c in offered {
        let q = explicit[index(c)].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((c, q));
        }
    }
    Negotiated {
        coding: best.map(|(c, _)| c),
        identity_refused: identity.or(star).is_some_and(|q| q == 0),
    }
}

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                t.trim()
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(token)
            })
        })
    })
}

impl Compressor {
    /// The policy from `gateway.compression`.
    pub(crate) fn new(config: CompressionConfig) -> Compressor {
        Compressor {
            config,
            memo: Mutex::new(Memo {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The settings this compressor was built from.
    pub(crate) fn config(&self) -> &CompressionConfig {
        &self.config
    }

    /// What this request's `Accept-Encoding` allows.
    pub(crate) fn negotiate(&self, headers: &HeaderMap) -> Negotiated {
        negotiate(headers, &self.config.algorithms)
    }

    fn type_matches(&self, headers: &HeaderMap) -> bool {
        let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.config.content_types.iter().any(|t| {
            if t.ends_with('/') {
                media.starts_with(t.as_str())
            } else {
                media == *t
            }
        })
    }

    /// Decides for one answer and rewrites its header when it is compressed: `Content-Encoding`
    /// set, `Content-Length` and `Accept-Ranges` dropped (the length is not known until the
    /// end), a strong `ETag` weakened, `Vary: Accept-Encoding` on every answer whose type could
    /// be compressed. `body_len`: the length when the caller knows it (it overrides the header).
    pub(crate) fn begin(
        &self,
        n: Negotiated,
        head: bool,
        http2: bool,
        resp: &mut ResponseHeader,
        body_len: Option<usize>,
    ) -> Option<Coding> {
        let status = resp.status.as_u16();
        if resp.status.is_informational() || matches!(status, 204 | 206 | 304) {
            return None;
        }
        let h = &resp.headers;
        let encoded = h
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded || !self.type_matches(h) || header_has_token(h, CACHE_CONTROL, "no-transform") {
            return None;
        }
        if !header_has_token(h, VARY, "accept-encoding") && !header_has_token(h, VARY, "*") {
            let _ = resp.append_header(VARY, "Accept-Encoding");
        }
        if head {
            return None;
        }
        let coding = n.coding?;
        let len = body_len.or_else(|| {
            resp.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        });
        match len {
            Some(0) => return None,
            Some(l) if l < self.config.min_bytes && !n.identity_refused => return None,
            _ => {}
        }
        let _ = resp.insert_header(CONTENT_ENCODING, coding.token());
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        if let Some(etag) = resp.headers.get(ETAG).map(|v| v.as_bytes().to_vec()) {
            if etag.starts_with(b"\"") {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(&etag);
                let _ = resp.insert_header(ETAG, weak);
            } else if !etag.starts_with(b"W/") {
                resp.remove_header(&ETAG);
            }
        }
        if !http2 {
            let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
        }
        Some(coding)
    }

    /// A streaming encoder for a proxied answer `begin` chose to compress.
    pub(crate) fn encoder(&self, coding: Coding) -> Option<Encoder> {
        let inner = compressor(coding, self.config.level.for_coding(coding))?;
        metrics::COMPRESSED_RESPONSES
            .with_label_values(&[coding.token(), How::Stream.label()])
            .inc();
        Some(Encoder { coding, inner })
    }

    fn compress(&self, coding: Coding, body: &[u8]) -> Option<Bytes> {
        let mut enc = compressor(coding, self.config.level.for_coding(coding))?;
        let out = enc.encode(body, true).ok()?;
        record(coding, body.len(), out.len());
        Some(out)
    }

    /// `body` compressed with `coding`, the whole of it. For an answer that can be cached,
    /// `memo_key` names it, and the compressed copy is reused while the document is the same.
    pub(crate) fn whole(
        &self,
        coding: Coding,
        body: &Bytes,
        memo_key: Option<&str>,
    ) -> Option<Bytes> {
        let Some(key) = memo_key else {
            let out = self.compress(coding, body)?;
            metrics::COMPRESSED_RESPONSES
                .with_label_values(&[coding.token(), How::Whole.label()])
                .inc();
            return Some(out);
        };
        let memo_key = (key.to_owned(), coding);
        if let Some((src, out)) = self.memo.lock().entries.get(&memo_key) {
            if src == body {
                record(coding, body.len(), out.len());
                metrics::COMPRESSED_RESPONSES
                    .with_label_values(&[coding.token(), How::Memo.label()])
                    .inc();
                return Some(out.clone());
            }
        }
        // Compressed outside the lock: another request may do the same meanwhile, which costs
        // one more compression and nothing else.
        let out = self.compress(coding, body)?;
        metrics::COMPRESSED_RESPONSES
            .with_label_values(&[coding.token(), How::Whole.label()])
            .inc();
        let weight = body.len() + out.len();
        if weight <= MEMO_BYTES / 4 {
            let mut memo = self.memo.lock();
            if let Some((s, o)) = memo.entries.put(memo_key, (body.clone(), out.clone())) {
                memo.bytes -= s.len() + o.len();
            }
            memo.bytes += weight;
            while memo.bytes > MEMO_BYTES {
                match memo.entries.pop_lru() {
                    Some((_, (s, o))) => memo.bytes -= s.len() + o.len(),
                    None => break,
                }
            }
        }
        Some(out)
    }
}

impl crate::rebuild::Rebuild for Compressor {
    type Settings = CompressionConfig;
    fn settings(&self) -> &CompressionConfig {
        self.config()
    }
}

fn record(coding: Coding, input: usize, output: usize) {
    metrics::COMPRESSION_BYTES
        .with_label_values(&[coding.token(), STAGES[0]])
        .inc_by(input as u64);
    metrics::COMPRESSION_BYTES
        .with_label_values(&[coding.token(), STAGES[1]])
        .inc_by(output as u64);
}

/// The `stage` labels of `compression_bytes_total`: bytes as made, then as sent.
const STAGES: [&str; 2] = ["in", "out"];

/// How an answer came to be compressed (`compressed_responses_total{how}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// A proxied answer, compressed as it streams.
    Stream,
    /// An aggregate's document, compressed for this request.
    Whole,
    /// A cached aggregate's compressed copy, reused.
    Memo,
}

impl How {
    const ALL: [How; 3] = [How::Stream, How::Whole, How::Memo];

    fn label(self) -> &'static str {
        match self {
            How::Stream => "stream",
            How::Whole => "whole",
            How::Memo => "memo",
        }
    }
}

/// Creates the compression series at 0 for every configured algorithm.
pub(crate) fn prime(config: &crate::config::CompressionConfig) {
    for coding in &config.algorithms {
        for stage in STAGES {
            metrics::COMPRESSION_BYTES.with_label_values(&[coding.token(), stage]);
        }
        for how in How::ALL {
            metrics::COMPRESSED_RESPONSES.with_label_values(&[coding.token(), how.label()]);
        }
    }
}

impl Encoder {
    /// Replaces `body` with its compressed form; at `end`, with everything the encoder still
    /// holds. `Err`: the encoder failed, and the answer cannot be finished.
    pub(crate) fn encode(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), String> {
        let input = body.as_deref().unwrap_or(&[]);
        if input.is_empty() && !end {
            return Ok(());
        }
        let out = self
            .inner
            .encode(input, end)
            .map_err(|e| format!("{} compression failed: {e}", self.coding.token()))?;
        *body = (!out.is_empty() || end).then_some(out);
        Ok(())
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // Counted here so that answers cut short are counted too.
        let (_, input, output, _) = self.inner.stat();
        record(self.coding, input, output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Level;

    fn headers(ae: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, ae.parse().unwrap());
        h
    }

    const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    #[test]
    fn q_values_and_preference_decide_the_coding() {
        let n = |ae: &str| negotiate(&headers(ae), &ALL);
        assert_eq!(n("gzip, br, zstd").coding, Some(Coding::Zstd), "ties: ours");
        assert_eq!(n("gzip;q=1, br;q=0.5").coding, Some(Coding::Gzip));
        assert_eq!(n("gzip;q=0.2, br;q=0.9").coding, Some(Coding::Br));
        assert_eq!(n("gzip;q=0, br;q=0").coding, None);
        assert_eq!(n("*").coding, Some(Coding::Zstd));
        assert_eq!(n("*;q=0.5, zstd;q=0").coding, Some(Coding::Br));
        assert_eq!(n("x-gzip").coding, Some(Coding::Gzip));
        assert_eq!(n("deflate").coding, None);
        assert_eq!(n("identity").coding, None);
        assert_eq!(
            n("gzip;q=2, br").coding,
            Some(Coding::Br),
            "a bad q drops the entry"
        );
        assert_eq!(n("GZIP ; Q=0.8").coding, Some(Coding::Gzip));
        assert_eq!(negotiate(&HeaderMap::new(), &ALL), Negotiated::default());
        assert_eq!(
            negotiate(&headers("gzip, zstd"), &[Coding::Gzip, Coding::Zstd]).coding,
            Some(Coding::Gzip)
        );
    }

    #[test]
    fn identity_refusal_is_read() {
        let n = |ae: &str| negotiate(&headers(ae), &ALL);
        assert!(n("gzip, identity;q=0").identity_refused);
        assert!(n("gzip, *;q=0").identity_refused);
        assert!(!n("gzip, *;q=0, identity").identity_refused);
        assert!(!n("gzip").identity_refused);
    }

    fn compressor(min: usize) -> Compressor {
        Compressor::new(CompressionConfig {
            algorithms: ALL.to_vec(),
            min_bytes: min,
            level: Level::Default,
            content_types: vec!["application/json".into(), "text/".into()],
        })
    }

    fn resp(ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header(CONTENT_TYPE, ct).unwrap();
        if let Some(l) = len {
            r.insert_header(CONTENT_LENGTH, l.to_string()).unwrap();
        }
        r
    }

    #[test]
    fn which_answers_are_compressed() {
        let c = compressor(1024);
        let gz = Negotiated {
            coding: Some(Coding::Gzip),
            identity_refused: false,
        };
        let mut r = resp("application/json; charset=utf-8", Some(5000));
        r.insert_header(ETAG, "\"abc\"").unwrap();
        r.insert_header(ACCEPT_RANGES, "bytes").unwrap();
        assert_eq!(c.begin(gz, false, false, &mut r, None), Some(Coding::Gzip));
        assert_eq!(r.headers[CONTENT_ENCODING], "gzip");
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        assert!(r.headers.get(ACCEPT_RANGES).is_none());
        assert_eq!(r.headers[ETAG], "W/\"abc\"");
        assert_eq!(r.headers[VARY], "Accept-Encoding");
        assert_eq!(r.headers[TRANSFER_ENCODING], "chunked");

        let mut small = resp("text/plain", Some(100));
        assert_eq!(c.begin(gz, false, false, &mut small, None), None);
        assert_eq!(
            small.headers[VARY], "Accept-Encoding",
            "varies all the same"
        );
        let refused = Negotiated {
            identity_refused: true,
            ..gz
        };
        let mut small = resp("text/plain", Some(100));
        assert_eq!(
            c.begin(refused, false, true, &mut small, None),
            Some(Coding::Gzip)
        );
        assert!(
            small.headers.get(TRANSFER_ENCODING).is_none(),
            "h2 has no chunking"
        );

        let mut image = resp("image/png", Some(5000));
        assert_eq!(c.begin(gz, false, false, &mut image, None), None);
        assert!(image.headers.get(VARY).is_none());

        let mut pre = resp("application/json", Some(5000));
        pre.insert_header(CONTENT_ENCODING, "br").unwrap();
        assert_eq!(c.begin(gz, false, false, &mut pre, None), None);
        assert_eq!(pre.headers[CONTENT_LENGTH], "5000");

        let mut head = resp("application/json", Some(5000));
        assert_eq!(c.begin(gz, true, false, &mut head, None), None);
        assert_eq!(head.headers[CONTENT_LENGTH], "5000");

        let mut partial = resp("application/json", Some(5000));
        partial.set_status(206).unwrap();
        assert_eq!(c.begin(gz, false, false, &mut partial, None), None);

        let mut nt = resp("application/json", Some(5000));
        nt.insert_header(CACHE_CONTROL, "private, no-transform")
            .unwrap();
        assert_eq!(c.begin(gz, false, false, &mut nt, None), None);

        let mut chunked = resp("text/html", None);
        assert_eq!(
            c.begin(gz, false, false, &mut chunked, None),
            Some(Coding::Gzip)
        );

        let mut varied = resp("application/json", Some(5000));
        varied
            .insert_header(VARY, "Origin, accept-encoding")
            .unwrap();
        c.begin(gz, false, false, &mut varied, None);
        assert_eq!(varied.headers.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn cached_documents_are_compressed_once_per_coding() {
        let c = compressor(10);
        let body = Bytes::from(vec![b'a'; 4000]);
        let first = c.whole(Coding::Gzip, &body, Some("profile\0/7")).unwrap();
        let again = c.whole(Coding::Gzip, &body, Some("profile\0/7")).unwrap();
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same bytes, not a new compression"
        );
        let changed = Bytes::from(vec![b'b'; 4000]);
        let other = c
            .whole(Coding::Gzip, &changed, Some("profile\0/7"))
            .unwrap();
        assert_ne!(first, other, "a changed document is compressed again");
        let zstd = c
            .whole(Coding::Zstd, &changed, Some("profile\0/7"))
            .unwrap();
        assert_ne!(zstd, other);
    }

    #[test]
    fn the_memo_stays_within_its_bound_and_forgets_the_least_recent() {
        let c = compressor(10);
        let body = Bytes::from(vec![b'a'; 1 << 20]);
        let keys: Vec<String> = (0..40).map(|i| format!("doc\0/{i}")).collect();
        let oldest = c.whole(Coding::Gzip, &body, Some(&keys[0])).unwrap();
        for k in &keys[1..] {
            c.whole(Coding::Gzip, &body, Some(k)).unwrap();
        }
        let held = c.memo.lock().bytes;
        assert!(
            held > MEMO_BYTES / 2 && held <= MEMO_BYTES,
            "40 MiB of documents went in, {held} bytes are held"
        );
        let newest = c.whole(Coding::Gzip, &body, Some(&keys[39])).unwrap();
        let newest_again = c.whole(Coding::Gzip, &body, Some(&keys[39])).unwrap();
        assert_eq!(newest.as_ptr(), newest_again.as_ptr(), "the newest is kept");
        let oldest_again = c.whole(Coding::Gzip, &body, Some(&keys[0])).unwrap();
        assert_ne!(
            oldest.as_ptr(),
            oldest_again.as_ptr(),
            "the oldest was forgotten"
        );
    }

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Coding::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Coding::Zstd => out = zstd::decode_all(data).unwrap(),
        }
        out
    }

    #[test]
    fn streamed_and_whole_output_decode_to_the_input() {
        let c = compressor(10);
        let body: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for coding in ALL {
            let mut enc = c.encoder(coding).unwrap();
            let mut out = Vec::new();
            for chunk in body.chunks(7000) {
                let mut b = Some(Bytes::copy_from_slice(chunk));
                enc.encode(&mut b, false).unwrap();
                out.extend_from_slice(b.as_deref().unwrap_or(&[]));
            }
            let mut b = None;
            enc.encode(&mut b, true).unwrap();
            out.extend_from_slice(b.as_deref().unwrap_or(&[]));
            assert!(out.len() < body.len(), "{coding:?}");
            assert_eq!(decode(coding, &out), body, "{coding:?} streamed");
            let whole = c.whole(coding, &Bytes::from(body.clone()), None).unwrap();
            assert_eq!(decode(coding, &whole), body, "{coding:?} whole");
        }
    }
}
