//! Who the client is: the TCP peer (IPv4-mapped IPv6 as IPv4), or, behind one of our own
//! proxies, the address they report in `X-Forwarded-For`. Decided once per request, in
//! `request_filter`, and read from there by the limiter, the access log and the upstream
//! request's `X-Forwarded-For`.

use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

/// Treats `::ffff:a.b.c.d` as `a.b.c.d`, so one client is one key whatever the socket family.
pub(crate) fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client behind one request.
#[derive(Debug, Clone)]
pub(crate) struct ClientAddr {
    /// The TCP peer, normalised.
    pub(crate) peer: IpAddr,
    /// The address the limiter counts and the access log shows: the peer, or, when the peer
    /// is a trusted proxy, the right-most `X-Forwarded-For` entry that is not itself trusted.
    pub(crate) ip: IpAddr,
    /// The chain received from a trusted proxy, to be extended; anyone else's is dropped,
    /// since they could have forged it.
    trusted_chain: Option<HeaderValue>,
}

impl ClientAddr {
    /// Decides the client from the peer and the request's `X-Forwarded-For`.
    pub(crate) fn new(peer: IpAddr, xff: Option<&HeaderValue>, trusted: &[IpNet]) -> Self {
        let peer = normalise_ip(peer);
        if !is_trusted(peer, trusted) {
            return ClientAddr {
                peer,
                ip: peer,
                trusted_chain: None,
            };
        }
        let chain = xff.filter(|v| !v.as_bytes().trim_ascii().is_empty());
        let ip = chain
            .and_then(|v| v.to_str().ok())
            .map_or(peer, |v| rightmost_untrusted(peer, v, trusted));
        ClientAddr {
            peer,
            ip,
            trusted_chain: chain.cloned(),
        }
    }

    /// The `X-Forwarded-For` value for the upstream: the trusted chain with the peer appended,
    /// or the peer alone.
    pub(crate) fn forwarded_for(&self) -> String {
        match self.trusted_chain.as_ref().and_then(|v| v.to_str().ok()) {
            Some(chain) => format!("{chain}, {}", self.peer),
            None => self.peer.to_string(),
        }
    }
}

/// Walking from the right means a client cannot choose its key by prepending addresses: only
/// the entries appended by our own proxies are believed.
fn rightmost_untrusted(peer: IpAddr, xff: &str, trusted: &[IpNet]) -> IpAddr {
    let mut last = peer;
    for entry in xff.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop believing it at this point.
            return last;
        };
        let ip = normalise_ip(ip);
        if !is_trusted(ip, trusted) {
            return ip;
        }
        last = ip;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().expect("test CIDR")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn client(peer: &str, xff: Option<&'static str>, trusted: &[&str]) -> ClientAddr {
        let xff = xff.map(HeaderValue::from_static);
        ClientAddr::new(ip(peer), xff.as_ref(), &nets(trusted))
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        assert_eq!(normalise_ip(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client("::ffff:10.1.2.3", None, &[]).ip, ip("10.1.2.3"));
    }

    #[test]
    fn untrusted_peer_header_is_ignored_and_replaced() {
        let c = client("203.0.113.9", Some("1.2.3.4"), &["10.0.0.0/8"]);
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert_eq!(c.forwarded_for(), "203.0.113.9");
        assert_eq!(client("203.0.113.9", Some("1.2.3.4"), &[]).ip, c.ip);
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_entry_and_extends_the_chain() {
        let t = ["10.0.0.0/8"];
        let c = client("10.0.0.5", Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &t);
        assert_eq!(c.ip, ip("1.2.3.4"));
        assert_eq!(c.forwarded_for(), "6.6.6.6, 1.2.3.4, 10.0.0.7, 10.0.0.5");
        let c = client("10.0.0.5", None, &t);
        assert_eq!(
            (c.ip, c.forwarded_for()),
            (ip("10.0.0.5"), "10.0.0.5".into())
        );
        let c = client("10.0.0.5", Some("  "), &t);
        assert_eq!(
            c.forwarded_for(),
            "10.0.0.5",
            "an empty chain is not extended"
        );
        assert_eq!(
            client("10.0.0.5", Some("junk, 10.0.0.7"), &t).ip,
            ip("10.0.0.7")
        );
    }
}
