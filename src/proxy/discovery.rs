//! Backends found by DNS and kept current: a group whose `backends` name hosts (or that gives
//! `srv`) resolves them at start and again at their records' TTL (kept within
//! `gateway.dns.refresh`), as Pingora's balancer asks its discovery for the backends.
//!
//! - A new address is probed once with the group's health check before it takes traffic
//!   (unless none serves and none passes: then anything is better than nothing).
//! - A vanished address stops getting new requests; requests on it finish.
//! - A failed lookup keeps the name's last good addresses (counted, logged once per streak);
//!   a name that never resolved leaves the group empty (503) and `/readyz` names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioResolver;
use parking_lot::Mutex;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;

use super::health::{active_check, PassiveHealth};
use crate::config::{DnsConfig, UpstreamConfig};
use crate::metrics;

/// A group's discovery: its static addresses, its names and SRV name, and what they resolved to.
pub(crate) struct DnsDiscovery {
    group: Arc<str>,
    config: UpstreamConfig,
    resolver: Option<TokioResolver>,
    probe: Box<dyn HealthCheck + Send + Sync>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Backends taking traffic, by address (each with its passive-health breaker).
    admitted: BTreeMap<SocketAddr, Backend>,
    /// The last good answer of each name (`host:port`, or the SRV name).
    last_good: HashMap<String, Vec<(SocketAddr, usize)>>,
    /// Names that failed their last lookup (warned once per streak).
    failing: BTreeSet<String>,
    /// Names that have never resolved.
    never: BTreeSet<String>,
}

/// The resolver `dns` describes: its servers, or the system's; TTLs clamped to its bounds.
/// `None` when none can be built (lookups then fail, and are counted as such).
fn resolver(dns: &DnsConfig) -> Option<TokioResolver> {
    let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
    let mut builder = if dns.servers.is_empty() {
        match TokioResolver::builder(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's resolver configuration: backend names will not resolve (set gateway.dns.servers)");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![]),
                    provider,
                )
            }
        }
    } else {
        let servers = dns
            .servers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            provider,
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.positive_min_ttl = Some(dns.min_refresh);
    opts.positive_max_ttl = Some(dns.max_refresh);
    // A name that does not exist yet is asked again soon: it may be a backend starting.
    opts.negative_min_ttl = Some(dns.min_refresh);
    opts.negative_max_ttl = Some(dns.min_refresh);
    opts.timeout = std::time::Duration::from_secs(2);
    opts.attempts = 2;
    builder
        .build()
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot build the DNS resolver: backend names will not resolve");
        })
        .ok()
}

impl DnsDiscovery {
    /// The discovery of group `group`; nothing is resolved until Pingora first asks.
    pub(crate) fn new(group: &Arc<str>, config: &UpstreamConfig, dns: &DnsConfig) -> DnsDiscovery {
        for result in ["ok", "error"] {
            metrics::DNS_RESOLUTIONS.with_label_values(&[&**group, result]);
        }
        for state in ["serving", "pending"] {
            metrics::UPSTREAM_BACKENDS
                .with_label_values(&[&**group, state])
                .set(0);
        }
        let mut never: BTreeSet<String> = config
            .names
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        never.extend(config.srv.clone());
        DnsDiscovery {
            group: group.clone(),
            config: config.clone(),
            resolver: resolver(dns),
            probe: active_check(group, config),
            state: Mutex::new(State {
                never,
                ..State::default()
            }),
        }
    }

    /// A name of this group that has never resolved, if any (for `/readyz`).
    pub(crate) fn unresolved(&self) -> Option<String> {
        self.state.lock().never.iter().next().cloned()
    }

    /// One lookup's outcome: counted, and remembered or replaced by the last good answer.
    fn settle(
        &self,
        key: &str,
        found: Result<Vec<(SocketAddr, usize)>, String>,
    ) -> Vec<(SocketAddr, usize)> {
        let mut st = self.state.lock();
        let label = if found.as_ref().is_ok_and(|a| !a.is_empty()) {
            "ok"
        } else {
            "error"
        };
        metrics::DNS_RESOLUTIONS
            .with_label_values(&[&*self.group, label])
            .inc();
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                if st.failing.remove(key) {
                    tracing::info!(group = %self.group, name = key, addresses = addrs.len(), "backend name resolves again");
                }
                st.never.remove(key);
                st.last_good.insert(key.to_string(), addrs.clone());
                addrs
            }
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "no address".to_string(),
                };
                if st.failing.insert(key.to_string()) {
                    tracing::warn!(group = %self.group, name = key, error = %why, "backend name did not resolve; its last good addresses stay in use");
                }
                st.last_good.get(key).cloned().unwrap_or_default()
            }
        }
    }

    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<(SocketAddr, usize)>, String> {
        // As written: a short name (`users`) goes through the search domains, as in a pod.
        let resolver = self.resolver.as_ref().ok_or("no DNS resolver")?;
        let answer = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
        Ok(answer
            .iter()
            .map(|ip| (SocketAddr::new(ip, port), 1))
            .collect())
    }

    async fn lookup_srv(&self, name: &str) -> Result<Vec<(SocketAddr, usize)>, String> {
        let resolver = self.resolver.as_ref().ok_or("no DNS resolver")?;
        let answer = resolver.srv_lookup(name).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for record in answer.answers() {
            let hickory_resolver::proto::rr::RData::SRV(srv) = &record.data else {
                continue;
            };
            let target = srv.target.to_ascii();
            // A weight of 0 still takes some traffic (RFC 2782: "very small").
            let weight = usize::from(srv.weight).max(1);
            for (addr, _) in self.lookup(&target, srv.port).await? {
                out.push((addr, weight));
            }
        }
        Ok(out)
    }

    fn backend(&self, addr: SocketAddr, weight: usize) -> Backend {
        let mut b = Backend {
            addr: PingoraAddr::Inet(addr),
            weight,
            ext: Default::default(),
        };
        b.ext
            .insert(PassiveHealth::new(&self.config, Instant::now()));
        b
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut found: Vec<(SocketAddr, usize)> =
            self.config.backends.iter().map(|a| (*a, 1)).collect();
        for n in &self.config.names {
            let key = format!("{}:{}", n.host, n.port);
            let answer = self.lookup(&n.host, n.port).await;
            found.extend(self.settle(&key, answer));
        }
        if let Some(srv) = &self.config.srv {
            let answer = self.lookup_srv(srv).await;
            found.extend(self.settle(srv, answer));
        }
        let mut wanted: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (addr, weight) in found {
            wanted.entry(addr).or_insert(weight);
        }
        // New addresses are probed before they take traffic, unless nothing else can.
        let (keeping, new): (Vec<_>, Vec<_>) = {
            let st = self.state.lock();
            wanted
                .iter()
                .map(|(a, w)| (*a, *w))
                .partition(|(a, w)| st.admitted.get(a).is_some_and(|b| b.weight == *w))
        };
        let mut admitted_now = Vec::new();
        let mut failed_probe = Vec::new();
        for (addr, weight) in new {
            let candidate = self.backend(addr, weight);
            if self.probe.check(&candidate).await.is_ok() {
                admitted_now.push((addr, candidate));
            } else {
                failed_probe.push((addr, candidate));
            }
        }
        // Nothing serves and nothing new passed: anything is better than nothing (the active
        // check then takes out what is down).
        if keeping.is_empty() && admitted_now.is_empty() {
            admitted_now = failed_probe;
        }
        let mut st = self.state.lock();
        for (addr, b) in admitted_now {
            tracing::info!(group = %self.group, backend = %addr, "backend address discovered");
            metrics::BACKEND_HEALTHY
                .with_label_values(&[&*self.group, &addr.to_string()])
                .set(1);
            st.admitted.insert(addr, b);
        }
        let gone: Vec<SocketAddr> = st
            .admitted
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            st.admitted.remove(&addr);
            tracing::info!(group = %self.group, backend = %addr, "backend address gone from DNS; requests on it finish");
            let _ =
                metrics::BACKEND_HEALTHY.remove_label_values(&[&*self.group, &addr.to_string()]);
        }
        let pending = wanted.len().saturating_sub(st.admitted.len());
        metrics::UPSTREAM_BACKENDS
            .with_label_values(&[&*self.group, "serving"])
            .set(st.admitted.len() as i64);
        metrics::UPSTREAM_BACKENDS
            .with_label_values(&[&*self.group, "pending"])
            .set(pending as i64);
        Ok((st.admitted.values().cloned().collect(), HashMap::new()))
    }
}

/// The discovery as Pingora holds it (boxed), sharing the group's.
pub(crate) struct Shared(pub(crate) Arc<DnsDiscovery>);

#[async_trait]
impl ServiceDiscovery for Shared {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}
