//! `gateway.readiness`: what `/readyz` waits for beyond identity providers' keys.

use serde::Deserialize;

/// `readiness` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ReadinessFile {
    require_upstreams: bool,
    require_store: bool,
}

/// What `/readyz` checks. Off by default: a replica that reports unready because a shared
/// dependency is down takes itself out of the load balancer with every other replica, and the
/// routes that do not need that dependency go down with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadinessConfig {
    /// Every upstream group that a route sends to has at least one healthy backend.
    pub require_upstreams: bool,
    /// Redis answers a `PING` within its command timeout (the embedded store always does).
    pub require_store: bool,
}

impl ReadinessFile {
    /// The typed settings; every combination is valid.
    pub(super) fn resolve(self) -> ReadinessConfig {
        ReadinessConfig {
            require_upstreams: self.require_upstreams,
            require_store: self.require_store,
        }
    }
}
