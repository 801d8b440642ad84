//! One compiled route: its conf, the group it proxies to, and what requests on it look up.

use std::sync::Arc;

use crate::config::RouteConfig;
use crate::proxy::upstreams::UpstreamGroup;

/// A compiled route: its conf and the group it proxies to.
#[derive(Debug)]
pub(crate) struct ProxyRoute {
    /// As configured.
    pub(crate) config: RouteConfig,
    /// The group that serves it (`None` for a redirect or a fixed answer).
    pub(crate) group: Option<Arc<UpstreamGroup>>,
    /// Indexes into the claims the verifier reads, for each `{claim.NAME}` of its header
    /// rules, in the order [`Values`] looks them up.
    pub(crate) claim_index: Box<[(Box<str>, usize)]>,
    /// The rate-limit policies it counts (`None`: those whose routes cover the path).
    pub(crate) policies: Option<Box<[Box<str>]>>,
    /// Its split between groups, when it has one (`group` is then the first side's).
    pub(crate) split: Option<crate::proxy::traffic::SplitSides>,
    /// Where copies of its requests go, when it has a mirror.
    pub(crate) mirror: Option<crate::proxy::traffic::MirrorTarget>,
}
