//! gRPC through the gateway: which requests are gRPC, the deadline a client sends
//! (`grpc-timeout`), and the gateway's own errors in gRPC's shape. A gRPC client reads no HTTP
//! status and no JSON body: it reads `grpc-status` and `grpc-message`, so the gateway answers
//! HTTP 200 with those two as a trailers-only response (one header block that ends the stream).

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::Result;

use crate::edge::hygiene;
use crate::error::GatewayError;
use crate::metrics;

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%` itself.
const MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// A gRPC call being proxied: its deadline and the status it ended with.
#[derive(Debug, Default)]
pub(crate) struct Call {
    /// What the client's `grpc-timeout` allows (`None`: no header, or an invalid one).
    pub(crate) timeout: Option<Duration>,
    /// The `grpc-status` the answer carried (headers or trailers).
    pub(crate) status: Option<u32>,
}

impl Call {
    /// The call `req` makes, or `None` when it is not gRPC.
    pub(crate) fn of(req: &RequestHeader) -> Option<Call> {
        is_grpc(req).then(|| Call {
            timeout: req
                .headers
                .get("grpc-timeout")
                .and_then(|v| parse_timeout(v.as_bytes())),
            status: None,
        })
    }

    /// Reads `grpc-status` from a header block (a trailers-only answer, or the trailers).
    pub(crate) fn saw(&mut self, headers: &http::HeaderMap) {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse().ok())
        {
            self.status = Some(code);
        }
    }

    /// Counts the call in `grpc_requests_total` once it ended; `sent`: the header the client
    /// got (the status of a trailers-only answer, the gateway's own errors included, is there).
    pub(crate) fn finish(&mut self, sent: Option<&ResponseHeader>, route: &str) {
        if let (None, Some(resp)) = (self.status, sent) {
            self.saw(&resp.headers);
        }
        let status = self.status.map(|c| c.to_string());
        metrics::GRPC_REQUESTS
            .with_label_values(&[route, status.as_deref().unwrap_or("none")])
            .inc();
    }
}

/// Whether `req` is a gRPC call: `application/grpc`, alone or with a `+codec` or parameters
/// (gRPC-Web's `application/grpc-web` is not).
pub(crate) fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| hygiene::is_grpc_content_type(v.as_bytes()))
}

/// `grpc-timeout`: at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for a refusal the gateway would answer with HTTP `status`.
pub(crate) fn status_for(status: u16) -> u32 {
    match status {
        400 | 431 => 3,  // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        500 => 13,       // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// Writes `err` as a trailers-only gRPC answer: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message`, with the error's own headers (`Retry-After`,
/// `WWW-Authenticate`) and `headers` beside them, and no body.
pub(crate) async fn error(
    session: &mut Session,
    err: &GatewayError,
    headers: &[(&'static str, HeaderValue)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(5 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", status_for(err.status()).to_string())?;
    let message = utf8_percent_encode(&err.to_string(), MESSAGE_ESCAPES).to_string();
    resp.insert_header("grpc-message", message)?;
    for (name, value) in err.extra_headers() {
        if let Ok(v) = HeaderValue::try_from(value) {
            resp.insert_header(name, v)?;
        }
    }
    for (name, value) in headers {
        resp.append_header(*name, value.clone())?;
    }
    if let ServerSession::H2(h2) = session.as_downstream_mut() {
        // One HEADERS frame that ends the stream: what a gRPC client reads as trailers.
        return h2.write_response_header(Box::new(resp), true);
    }
    // HTTP/1 has no trailers-only form: an empty body, framed.
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(Bytes::new()), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(content_type: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/helloworld.Greeter/SayHello", None).unwrap();
        r.insert_header("content-type", content_type).unwrap();
        r
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(is_grpc(&req("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&req("application/grp")));
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit_and_refused_when_malformed() {
        let t = |s: &str| parse_timeout(s.as_bytes());
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(t("99999999m"), Some(Duration::from_millis(99_999_999)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_map_to_the_grpc_codes_clients_act_on() {
        assert_eq!(status_for(401), 16);
        assert_eq!(status_for(403), 7);
        assert_eq!(status_for(429), 8);
        assert_eq!(status_for(413), 8);
        assert_eq!(status_for(404), 12);
        assert_eq!(status_for(502), 14);
        assert_eq!(status_for(503), 14);
        assert_eq!(status_for(504), 4);
    }

    #[test]
    fn the_status_is_read_from_headers_or_trailers() {
        let mut call = Call::of(&req("application/grpc")).unwrap();
        assert_eq!(call.status, None);
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("5"));
        call.saw(&h);
        assert_eq!(call.status, Some(5));
        assert!(Call::of(&req("text/plain")).is_none());
    }
}
