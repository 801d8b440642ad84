//! Request hygiene on top of Pingora's parser: framing and target-form rules, header-size caps,
//! hop-by-hop header removal and request ids.

use http::HeaderName;
use pingora::http::RequestHeader;

use crate::config::LimitsConfig;
use crate::error::GatewayError;

/// Rejects what Pingora's parser lets through but an edge must not forward: absolute-form
/// targets (`GET http://other/`), ambiguous `Transfer-Encoding`, oversized headers.
/// `http2`: the request came over h2, whose target always carries `:authority` (the h2 form
/// of `Host`), so only the path is checked.
pub fn check_request(
    req: &RequestHeader,
    limits: &LimitsConfig,
    http2: bool,
) -> Result<(), GatewayError> {
    // Origin-form only: `http://other/…` (absolute form) and `*` would let a client address
    // hosts other than ours, and upstreams may read the raw target differently from our router.
    let path_ok = if http2 {
        req.uri.path().starts_with('/')
    } else {
        req.raw_path().first() == Some(&b'/') && req.uri.authority().is_none()
    };
    if !path_ok {
        return Err(GatewayError::BadRequest(
            "only origin-form request targets (/path) are accepted".into(),
        ));
    }
    let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        // Exactly one header whose only coding is `chunked`: anything else is a framing
        // ambiguity that a server behind us might resolve differently (request smuggling).
        let only_chunked = first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if te.next().is_some() || !only_chunked {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding must be a single `chunked`".into(),
            ));
        }
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_request_header_bytes {
        return Err(GatewayError::HeadersTooLarge(
            "request headers too large".into(),
        ));
    }
    if req
        .headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.len() > limits.max_authorization_bytes)
    {
        return Err(GatewayError::HeadersTooLarge(
            "Authorization header too large".into(),
        ));
    }
    Ok(())
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
        }
    }

    fn req(target: &[u8], headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", target, None).expect("request");
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
            let e = check_request(&req(b"/a", &bad), &l, false).map_err(|e| e.status());
            assert_eq!(e, Err(400), "{bad:?}");
        }
        let big = "a".repeat(2000);
        let e = check_request(&req(b"/a", &[("x-big", &big)]), &l, false).map_err(|e| e.status());
        assert_eq!(e, Err(431));
        let auth = "a".repeat(100);
        let e = check_request(&req(b"/a", &[("authorization", &auth)]), &l, false)
            .map_err(|e| e.status());
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
}
