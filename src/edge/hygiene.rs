//! Request hygiene on top of Pingora's parser: framing and target-form rules, header-size caps,
//! hop-by-hop header removal and request ids.

use http::HeaderName;
use pingora::http::RequestHeader;

use crate::config::LimitsConfig;
use crate::error::GatewayError;

/// A request refused before routing: the answer and the `reason` label it is counted under
/// (`http_requests_rejected_total`).
#[derive(Debug)]
pub struct Rejected {
    /// The metric label.
    pub reason: &'static str,
    /// The answer (400 or 431).
    pub error: GatewayError,
    /// Whether the connection must close after it: the body's framing cannot be trusted.
    pub close: bool,
}

impl Rejected {
    fn new(reason: &'static str, message: &'static str) -> Self {
        Rejected {
            reason,
            error: GatewayError::BadRequest(message.into()),
            close: false,
        }
    }

    fn framing(reason: &'static str, message: &'static str) -> Self {
        Rejected {
            close: true,
            ..Rejected::new(reason, message)
        }
    }

    /// A target that is neither origin form nor a usable absolute URL.
    pub fn target_form() -> Self {
        Rejected::new(
            "target_form",
            "the request target must be a path (/…) or an absolute http(s) URL",
        )
    }

    /// A path that cannot be made canonical.
    pub(crate) fn path(e: super::path::PathError) -> Self {
        Rejected::new(e.reason(), e.message())
    }

    /// Counts the rejection.
    pub fn count(&self) {
        crate::metrics::HTTP_REJECTED
            .with_label_values(&[self.reason])
            .inc();
    }
}

/// Every `reason` a rejection is counted under.
pub const REASONS: [&str; 13] = [
    "target_form",
    "host_missing",
    "host_repeated",
    "content_length",
    "transfer_encoding",
    "method_case",
    "header_size",
    "target_bytes",
    "path_escape",
    "path_climbs",
    "encoded_slash",
    "backslash",
    "chunked",
];

/// Primes `http_requests_rejected_total` and `http_request_headers_dropped_total`.
pub fn prime() {
    for r in REASONS {
        crate::metrics::HTTP_REJECTED.with_label_values(&[r]);
    }
    crate::metrics::HTTP_HEADERS_DROPPED.with_label_values(&["underscore"]);
}

/// Rejects what Pingora's parser lets through but an edge must not forward, as nginx does: a
/// target that is not origin form (absolute form is made origin form before this), an
/// HTTP/1.1 request without exactly one `Host`, a `Content-Length` that is not one number,
/// ambiguous `Transfer-Encoding`, a method not in upper case, oversized headers. `http2`: the
/// request came over h2, whose target always carries `:authority` (the h2 form of `Host`).
pub fn check_request(
    req: &RequestHeader,
    limits: &LimitsConfig,
    http2: bool,
) -> Result<Head, Rejected> {
    // Origin form only (`*` and authority form would address something other than a path).
    let path_ok = if http2 {
        req.uri.path().starts_with('/')
    } else {
        req.raw_path().first() == Some(&b'/') && req.uri.authority().is_none()
    };
    if !path_ok {
        return Err(Rejected::target_form());
    }
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Rejected::new(
            "method_case",
            "methods are case-sensitive: GET, not get",
        ));
    }
    // One pass over the headers (each value once) instead of a hashed lookup per rule.
    let (mut hosts, mut header_bytes, mut underscored) = (0usize, 0usize, false);
    let (mut upgrade, mut grpc) = (false, false);
    let mut cl: (usize, Option<&http::HeaderValue>) = (0, None);
    let mut te: (usize, Option<&http::HeaderValue>) = (0, None);
    for (k, v) in req.headers.iter() {
        header_bytes += k.as_str().len() + v.len() + 4;
        if *k == http::header::HOST {
            hosts += 1;
        } else if *k == http::header::CONTENT_LENGTH {
            cl = (cl.0 + 1, Some(v));
        } else if *k == http::header::TRANSFER_ENCODING {
            te = (te.0 + 1, Some(v));
        } else if *k == http::header::AUTHORIZATION && v.len() > limits.max_authorization_bytes {
            return Err(too_large("Authorization header too large"));
        } else if *k == http::header::UPGRADE {
            upgrade = true;
        } else if *k == http::header::CONTENT_TYPE {
            grpc = is_grpc_content_type(v.as_bytes());
        }
        underscored |= k.as_str().contains('_');
    }
    if !http2 && req.version >= http::Version::HTTP_11 {
        match hosts {
            0 => {
                return Err(Rejected::new(
                    "host_missing",
                    "an HTTP/1.1 request needs a Host header",
                ))
            }
            1 => {}
            _ => {
                return Err(Rejected::new(
                    "host_repeated",
                    "a request has one Host header",
                ))
            }
        }
    }
    if let (n, Some(first)) = cl {
        // One header of digits only: a list, even of equal values, is a framing a server
        // behind us might read differently (request smuggling).
        let digits = !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit);
        if n > 1 || !digits {
            return Err(Rejected::framing(
                "content_length",
                "Content-Length must be one number",
            ));
        }
    }
    if let (n, Some(first)) = te {
        // Both framings at once: the request a server behind us would see depends on which
        // one it believes (RFC 9112 §6.1 lets a server refuse it; nothing legitimate sends it).
        if cl.0 > 0 {
            return Err(Rejected::framing(
                "transfer_encoding",
                "Content-Length and Transfer-Encoding together",
            ));
        }
        // Exactly one header whose only coding is `chunked`: anything else is a framing
        // ambiguity that a server behind us might resolve differently (request smuggling).
        let only_chunked = first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if n > 1 || !only_chunked {
            return Err(Rejected::framing(
                "transfer_encoding",
                "Transfer-Encoding must be a single `chunked`",
            ));
        }
    }
    if header_bytes > limits.max_request_header_bytes {
        return Err(too_large("request headers too large"));
    }
    Ok(Head {
        underscored,
        upgrade,
        grpc,
    })
}

/// Whether a `Content-Type` names gRPC: `application/grpc`, alone or with a `+codec` or
/// parameters (gRPC-Web's `application/grpc-web` does not).
pub fn is_grpc_content_type(v: &[u8]) -> bool {
    const TYPE: &[u8] = b"application/grpc";
    v.len() >= TYPE.len()
        && v[..TYPE.len()].eq_ignore_ascii_case(TYPE)
        && matches!(v.get(TYPE.len()), None | Some(b'+' | b';'))
}

/// What [`check_request`] learnt of an accepted head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Some header name has a `_` ([`drop_underscored`] has work to do).
    pub underscored: bool,
    /// An `Upgrade` header is present (whether it is a WebSocket upgrade is read later).
    pub upgrade: bool,
    /// The `Content-Type` is gRPC's.
    pub grpc: bool,
}

fn too_large(message: &'static str) -> Rejected {
    Rejected {
        reason: "header_size",
        error: GatewayError::HeadersTooLarge(message.into()),
        close: false,
    }
}

/// An absolute-form target (`GET http://api.example.com/x`, which RFC 9112 §3.2.2 says a
/// server must accept) made origin form, its authority replacing `Host`. `false` when the
/// scheme is not http(s).
pub fn to_origin_form(req: &mut RequestHeader) -> bool {
    // Pingora keeps the target as sent; its `uri` may not carry the authority.
    let Ok(target) = http::Uri::try_from(req.raw_path()) else {
        return false;
    };
    let Some(authority) = target.authority().map(|a| a.as_str().to_string()) else {
        return false;
    };
    if !matches!(target.scheme_str(), Some("http" | "https")) {
        return false;
    }
    let origin = target
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    req.set_uri(uri);
    req.insert_header(http::header::HOST, authority).is_ok()
}

/// Removes header names with `_` (frameworks that map `_` to `-` would read
/// `Transfer_Encoding` as a second `Transfer-Encoding`), counting each.
pub fn drop_underscored(req: &mut RequestHeader) {
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for n in names {
        req.remove_header(&n);
        crate::metrics::HTTP_HEADERS_DROPPED
            .with_label_values(&["underscore"])
            .inc();
    }
}

/// Whether a client-sent request id is safe to keep (and echo into logs and headers).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A fresh random request id (128 bits, hex).
pub fn new_request_id() -> String {
    crate::headers::hex_id(rand::random::<u128>().to_be_bytes())
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Whether `req` asks to switch to WebSocket: HTTP/1.1, `Upgrade: websocket` and `Connection`
/// naming `upgrade` (RFC 9110 §7.8, RFC 6455 §4.1). Any other `Upgrade` is dropped as hop-by-hop
/// and the request proxied as it is.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let tokens = |name: http::header::HeaderName, want: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    req.version == http::Version::HTTP_11
        && tokens(http::header::UPGRADE, "websocket")
        && tokens(http::header::CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers (and any header `Connection` names) before the upstream; Pingora
/// does not do this for HTTP/1.
pub fn strip_hop_by_hop(req: &mut RequestHeader, is_upgrade: bool) {
    let named: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        // An upgrade must keep `Connection: upgrade` + `Upgrade` for the upstream to switch.
        if is_upgrade && name == "upgrade" {
            continue;
        }
        // Framing is Pingora's business: it re-frames the body for the upstream itself. And
        // `Connection: host` must not strip the backend's virtual host (set after this, the
        // forwarding and identity headers are ours whatever the client nominated).
        if name == "transfer-encoding" || name == "content-length" || name == "host" {
            continue;
        }
        req.remove_header(name.as_str());
    }
    // One pass over what the client sent (a removal by name parses and hashes the name even
    // when it is absent, which it nearly always is).
    let present: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            HOP_BY_HOP.contains(k)
                || (!is_upgrade && (*k == http::header::UPGRADE || *k == http::header::CONNECTION))
        })
        .cloned()
        .collect();
    for name in present {
        req.remove_header(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_request_header_bytes: 1024,
            max_authorization_bytes: 64,
            header_read_timeout: std::time::Duration::from_secs(10),
            keepalive_timeout: std::time::Duration::from_secs(60),
            pipeline_depth: 16,
            body: crate::config::BodyPolicy {
                buffer_bytes: 1024,
                max_bytes: 4096,
                read_timeout: std::time::Duration::from_secs(10),
            },
            body_buffer_total: 1 << 20,
            max_connections_per_ip: 16,
            response_write_timeout: std::time::Duration::from_secs(30),
            path: crate::config::PathRules::default(),
            underscores_in_headers: false,
        }
    }

    fn req(target: &[u8], headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", target, None).expect("request");
        if !headers.iter().any(|(k, _)| *k == "host") {
            r.append_header("host", "h").expect("host");
        }
        for (k, v) in headers {
            r.append_header(*k, *v).expect("header");
        }
        r
    }

    #[test]
    fn framing_and_target_rules() {
        let l = limits();
        assert!(check_request(&req(b"/a", &[]), &l, false).is_ok());
        assert!(check_request(&req(b"/a", &[("transfer-encoding", "chunked")]), &l, false).is_ok());
        assert!(check_request(&req(b"http://evil.com/a", &[]), &l, false).is_err());
        for bad in [
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "xchunked")],
        ] {
            let e = check_request(&req(b"/a", &bad), &l, false).map_err(|e| e.error.status());
            assert_eq!(e, Err(400), "{bad:?}");
        }
        for (bad, reason) in [
            (vec![("content-length", "5, 5")], "content_length"),
            (vec![("content-length", "+5")], "content_length"),
            (
                vec![("content-length", "5"), ("content-length", "5")],
                "content_length",
            ),
            (vec![("host", "a"), ("host", "b")], "host_repeated"),
        ] {
            let e = check_request(&req(b"/a", &bad), &l, false)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.reason, reason, "{bad:?}");
        }
        let mut no_host = RequestHeader::build("GET", b"/", None).expect("request");
        assert_eq!(
            check_request(&no_host, &l, false).unwrap_err().reason,
            "host_missing"
        );
        no_host.set_version(http::Version::HTTP_10);
        assert!(
            check_request(&no_host, &l, false).is_ok(),
            "HTTP/1.0 needs no Host"
        );
        let lower = RequestHeader::build("get", b"/", None).expect("request");
        assert_eq!(
            check_request(&lower, &l, true).unwrap_err().reason,
            "method_case"
        );
        let big = "a".repeat(2000);
        let e =
            check_request(&req(b"/a", &[("x-big", &big)]), &l, false).map_err(|e| e.error.status());
        assert_eq!(e, Err(431));
        let auth = "a".repeat(100);
        let e = check_request(&req(b"/a", &[("authorization", &auth)]), &l, false)
            .map_err(|e| e.error.status());
        assert_eq!(e, Err(431));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut r = req(
            b"/",
            &[
                ("connection", "keep-alive, X-Secret, Host"),
                ("host", "api.example"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "1"),
            ],
        );
        strip_hop_by_hop(&mut r, false);
        for h in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-connection",
        ] {
            assert!(r.headers.get(h).is_none(), "{h} should be gone");
        }
        assert!(r.headers.get("x-kept").is_some());
        assert_eq!(r.headers["host"], "api.example", "a nominated Host stays");
        let mut u = req(
            b"/",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
            ],
        );
        strip_hop_by_hop(&mut u, true);
        assert!(u.headers.get("te").is_none());
        assert_eq!(
            u.headers["upgrade"], "websocket",
            "an upgrade keeps Upgrade"
        );
        assert_eq!(u.headers["connection"], "Upgrade");
    }

    #[test]
    fn only_a_websocket_upgrade_with_connection_upgrade_is_one() {
        let req = |version: http::Version, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
            r.set_version(version);
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).unwrap();
            }
            r
        };
        let v11 = http::Version::HTTP_11;
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_websocket_upgrade(&req(v11, &ws)));
        assert!(!is_websocket_upgrade(&req(http::Version::HTTP_10, &ws)));
        assert!(!is_websocket_upgrade(&req(
            v11,
            &[("upgrade", "websocket")]
        )));
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert!(!is_websocket_upgrade(&req(v11, &h2c)));
    }
}
