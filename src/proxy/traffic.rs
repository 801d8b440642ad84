//! Where a proxied request goes beyond its route: the side of a split (weighted, or kept by a
//! sticky key hashed the same on every replica), the key a hashing group hashes, and the copy
//! a mirror sends.

use std::sync::Arc;

use http::HeaderMap;

use super::upstreams::UpstreamGroup;
use crate::config::{HashKey, Sticky};
use crate::edge::auth::Identity;

/// A route's split, compiled: each side's group and the running total of weights.
#[derive(Debug)]
pub(crate) struct SplitSides {
    /// Each side's group and the sum of the weights up to and including it.
    sides: Box<[(Arc<UpstreamGroup>, u64)]>,
    total: u64,
    sticky: Option<Sticky>,
}

/// A side chosen for a request, and the cookie to set when the gateway made the sticky key.
pub(crate) struct Chosen {
    /// The group the request goes to.
    pub(crate) group: Arc<UpstreamGroup>,
    /// `Set-Cookie` value for a sticky cookie the client did not have.
    pub(crate) set_cookie: Option<String>,
}

/// FNV-1a: the same key lands on the same side on every replica and across restarts.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix, so that keys differing in their last bytes spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}

impl SplitSides {
    /// The sides of `sides` (group, weight), with `sticky`.
    pub(crate) fn new(sides: Vec<(Arc<UpstreamGroup>, u32)>, sticky: Option<Sticky>) -> SplitSides {
        let mut total = 0u64;
        let sides = sides
            .into_iter()
            .map(|(g, w)| {
                total += u64::from(w);
                (g, total)
            })
            .collect();
        SplitSides {
            sides,
            total,
            sticky,
        }
    }

    /// The side for a request: by its sticky key's hash when it has one, else drawn by weight;
    /// a side with no healthy backend hands its share to the next one that has.
    pub(crate) fn choose(&self, headers: &HeaderMap, who: Option<&Identity>) -> Chosen {
        let mut set_cookie = None;
        let key: Option<std::borrow::Cow<'_, str>> = match &self.sticky {
            None => None,
            Some(Sticky::Header(h)) => headers.get(h).and_then(|v| v.to_str().ok()).map(Into::into),
            Some(Sticky::Sub) => who.map(|w| w.sub.as_str().into()),
            Some(Sticky::Cookie(name)) => match cookie(headers, name) {
                Some(v) => Some(v.into()),
                None => {
                    let value = const_hex::encode(rand::random::<[u8; 12]>());
                    set_cookie = Some(format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax"));
                    Some(value.into())
                }
            },
        };
        let point = match key {
            Some(k) => stable_hash(k.as_bytes()) % self.total,
            None => rand::random::<u64>() % self.total,
        };
        let at = self
            .sides
            .iter()
            .position(|(_, upto)| point < *upto)
            .unwrap_or(0);
        let n = self.sides.len();
        let group = (0..n)
            .map(|i| &self.sides[(at + i) % n].0)
            .find(|g| g.any_healthy())
            .unwrap_or(&self.sides[at].0)
            .clone();
        Chosen { group, set_cookie }
    }
}

/// Where a request on a proxied route goes: the group (the route's, or its split's side), the
/// sticky cookie to set, and the key a hashing group hashes.
pub(crate) struct Destination {
    /// The group that serves the request.
    pub(crate) group: Arc<UpstreamGroup>,
    /// `Set-Cookie` for a sticky split's key the client did not have.
    pub(crate) set_cookie: Option<String>,
    /// What a hashing group hashes (empty for the other balancers).
    pub(crate) balance_key: Vec<u8>,
}

/// The destination of a request on route `route` with its `split` or else its `group`
/// (`None`: it proxies nowhere); a split's choice is counted in `split_requests_total`.
pub(crate) fn destination(
    route: &str,
    split: Option<&SplitSides>,
    group: Option<&Arc<UpstreamGroup>>,
    headers: &HeaderMap,
    who: Option<&Identity>,
    client: Option<std::net::IpAddr>,
) -> Option<Destination> {
    let (group, set_cookie) = match split {
        Some(split) => {
            let chosen = split.choose(headers, who);
            crate::metrics::SPLIT_REQUESTS
                .with_label_values(&[route, &chosen.group.name])
                .inc();
            (chosen.group, chosen.set_cookie)
        }
        None => (group?.clone(), None),
    };
    let balance_key = match &group.config.balance {
        crate::config::Balance::Hash(k) => hash_key(k, headers, who, client),
        _ => Vec::new(),
    };
    Some(Destination {
        group,
        set_cookie,
        balance_key,
    })
}

/// The body a mirror copy carries: none for a bodyless request, the whole body when the
/// gateway holds it (Pingora's retry buffer), `None` when it streams (not mirrored).
pub(crate) fn mirror_body(session: &mut pingora::proxy::Session) -> Option<bytes::Bytes> {
    let h = &session.req_header().headers;
    let bodyless = !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get(http::header::CONTENT_LENGTH).is_none_or(|v| v == "0");
    let whole =
        bodyless || (session.as_mut().is_body_done() && !session.as_ref().retry_buffer_truncated());
    whole.then(|| session.as_ref().get_retry_buffer().unwrap_or_default())
}

/// The bytes a hashing group hashes for a request (empty: none, which still picks a backend).
pub(crate) fn hash_key(
    key: &HashKey,
    headers: &HeaderMap,
    who: Option<&Identity>,
    client: Option<std::net::IpAddr>,
) -> Vec<u8> {
    match key {
        HashKey::Header(h) => headers.get(h).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(c) => cookie(headers, c).map(|v| v.as_bytes().to_vec()),
        HashKey::Sub => who.map(|w| w.sub.as_bytes().to_vec()),
        HashKey::ClientIp => client.map(|ip| ip.to_string().into_bytes()),
    }
    .unwrap_or_default()
}

/// A route's mirror, compiled: the group copies go to, the share copied and the copies that
/// may be in flight.
#[derive(Debug)]
pub(crate) struct MirrorTarget {
    route: Arc<str>,
    group: Arc<UpstreamGroup>,
    percent: f64,
    slots: Arc<tokio::sync::Semaphore>,
}

/// The client copies go out on: plain HTTP/1.1, its own pool, no proxy from the environment.
static MIRROR_CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
    crate::trust::http_client_builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_default()
});

/// Every `mirror_requests_total` result.
pub(crate) const MIRROR_RESULTS: [&str; 5] =
    ["sent", "failed", "dropped", "not_buffered", "no_backend"];

impl MirrorTarget {
    /// The mirror of route `route` to `group`.
    pub(crate) fn new(
        route: &str,
        group: Arc<UpstreamGroup>,
        percent: f64,
        max_in_flight: usize,
    ) -> Self {
        for result in MIRROR_RESULTS {
            crate::metrics::MIRROR_REQUESTS.with_label_values(&[route, result]);
        }
        MirrorTarget {
            route: route.into(),
            group,
            percent,
            slots: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
        }
    }

    fn count(&self, result: &str) {
        crate::metrics::MIRROR_REQUESTS
            .with_label_values(&[&self.route, result])
            .inc();
    }

    /// Sends a copy of `req` (as it goes to the primary backend) with `body` (`None`: the body
    /// streams and is not copied), on a task of its own: its answer is read and dropped, and
    /// nothing of it reaches the client. Beyond the copies in flight it is dropped.
    pub(crate) fn send(&self, req: &pingora::http::RequestHeader, body: Option<bytes::Bytes>) {
        if self.percent < 100.0 && rand::random::<f64>() * 100.0 >= self.percent {
            return;
        }
        let Some(body) = body else {
            self.count("not_buffered");
            return;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.count("dropped");
            return;
        };
        let Some(backend) = self.group.select(&[], std::time::Instant::now(), b"") else {
            self.count("no_backend");
            return;
        };
        let pingora::protocols::l4::socket::SocketAddr::Inet(addr) = backend.addr else {
            self.count("no_backend");
            return;
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("http://{addr}{target}");
        let mut headers = req.headers.clone();
        headers.insert(
            "x-mirrored-from",
            http::HeaderValue::from_str(&self.route)
                .unwrap_or(http::HeaderValue::from_static("route")),
        );
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::TRANSFER_ENCODING);
        let request = MIRROR_CLIENT
            .request(req.method.clone(), url)
            .headers(headers)
            .timeout(self.group.config.read_timeout + self.group.config.connect_timeout)
            .body(body);
        let route = self.route.clone();
        tokio::spawn(async move {
            let result = match request.send().await {
                Ok(r) => {
                    // Read to the end so the connection can be reused; the content is dropped.
                    let _ = r.bytes().await;
                    "sent"
                }
                Err(_) => "failed",
            };
            crate::metrics::MIRROR_REQUESTS
                .with_label_values(&[&route, result])
                .inc();
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; canary=xyz".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "canary"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "can"), None);
    }

    #[test]
    fn the_stable_hash_spreads_keys_evenly() {
        // 10,000 keys over 100 buckets: no bucket far from 100.
        let mut buckets = [0u32; 100];
        for i in 0..10_000 {
            buckets[(stable_hash(format!("user-{i}").as_bytes()) % 100) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (60..=140).contains(b)),
            "{buckets:?}"
        );
        assert_eq!(stable_hash(b"same"), stable_hash(b"same"));
    }
}
