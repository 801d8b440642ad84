//! The cap on concurrent client connections per address (`limits.max_connections_per_ip`):
//! one address cannot take every connection the gateway can hold. Counted at accept, before
//! a byte is read; the slot lives in the connection's stream and is given back when it drops.
//!
//! IPv6 clients are counted per /64, the block one host is usually given, so an attacker
//! cannot step around the cap by cycling through its own addresses. Trusted proxies
//! (`rate_limit.trusted_proxies`) carry many clients and are not capped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::edge::client::normalise_ip;
use crate::sharded::Sharded;

/// Open connections per address, with the cap.
pub(crate) struct PerIpCap {
    max: u32,
    trusted: Vec<IpNet>,
    /// Open connections by the hash of the counted address (a per-process keyed hash, so no
    /// client can aim two addresses at one count).
    open: Sharded<HashMap<u64, u32>>,
}

/// One connection's place under the cap; dropping it frees the place. 16 bytes, since every
/// connection's state holds one.
pub(crate) struct Slot {
    cap: Arc<PerIpCap>,
    key: u64,
}

impl PerIpCap {
    /// A cap of `max` connections per address (0 = no cap: `None`), trusted networks exempt.
    pub(crate) fn new(max: u32, trusted: Vec<IpNet>) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(PerIpCap {
                max,
                trusted,
                open: Sharded::new(64, HashMap::new),
            })
        })
    }

    /// A slot for a connection from `peer`: `Ok(None)` when it is exempt, `Err(())` when the
    /// address already holds `max` connections.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Option<Slot>, ()> {
        let peer = normalise_ip(peer);
        if self.trusted.iter().any(|n| n.contains(&peer)) {
            return Ok(None);
        }
        let key = self.open.hash_of(&counted_as(peer));
        let mut open = self.open.lock_at(key);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return Err(());
        }
        *n += 1;
        Ok(Some(Slot {
            cap: self.clone(),
            key,
        }))
    }

    /// Connections open from `ip`'s address block (for tests).
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> u32 {
        let key = self.open.hash_of(&counted_as(ip));
        self.open.lock_at(key).get(&key).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock_at(self.key);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // An address with no connection left costs nothing.
                open.remove(&self.key);
            }
        }
    }
}

/// The key an address is counted under: itself, or its /64 for IPv6.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_cap_refuses_the_extra_connection_and_frees_places_on_drop() {
        let cap = PerIpCap::new(2, vec![]).unwrap();
        let a = cap.admit(ip("10.0.0.1")).unwrap();
        let b = cap.admit(ip("10.0.0.1")).unwrap();
        assert!(cap.admit(ip("10.0.0.1")).is_err());
        assert!(
            cap.admit(ip("10.0.0.2")).unwrap().is_some(),
            "another address"
        );
        drop(a);
        let c = cap.admit(ip("10.0.0.1")).unwrap();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(cap.open_from(ip("10.0.0.1")), 0);
        assert!(
            cap.open.each().all(|s| s.is_empty()),
            "no entry left behind"
        );
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let cap = PerIpCap::new(1, vec![]).unwrap();
        let _a = cap.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(cap.admit(ip("2001:db8:1:2:ffff::9")).is_err(), "same /64");
        assert!(cap.admit(ip("2001:db8:1:3::1")).unwrap().is_some());
        let _b = cap.admit(ip("192.0.2.7")).unwrap();
        assert!(cap.admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn a_slot_stays_small() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 16);
    }

    #[test]
    fn trusted_proxies_and_a_zero_cap_are_not_counted() {
        assert!(PerIpCap::new(0, vec![]).is_none());
        let cap = PerIpCap::new(1, vec!["10.1.0.0/16".parse().unwrap()]).unwrap();
        for _ in 0..5 {
            assert!(cap.admit(ip("10.1.2.3")).unwrap().is_none());
        }
        assert_eq!(cap.open_from(ip("10.1.2.3")), 0);
    }
}
