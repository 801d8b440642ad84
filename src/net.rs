//! Client address handling: IPv4-mapped normalisation and trusted-proxy `X-Forwarded-For`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Treats `::ffff:a.b.c.d` as `a.b.c.d`, so one client is one key whatever the socket family.
pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `ip` is one of our own proxies (`rate_limit.trusted_proxies`).
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client address for limiting: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself trusted.
///
/// Walking from the right means a client cannot choose its key by prepending addresses: only the
/// entries appended by our own proxies are believed.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = normalise_ip(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
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

    #[test]
    fn mapped_ipv6_is_ipv4() {
        assert_eq!(normalise_ip(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let peer = ip("203.0.113.9");
        assert_eq!(
            client_ip(peer, Some("1.2.3.4"), &nets(&["10.0.0.0/8"])),
            peer
        );
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_entry() {
        let peer = ip("10.0.0.5");
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer, Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &t),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(peer, None, &t), peer);
        assert_eq!(client_ip(peer, Some("junk, 10.0.0.7"), &t), ip("10.0.0.7"));
    }
}
