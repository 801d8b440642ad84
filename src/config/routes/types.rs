//! The route table's entries as the gateway holds them once checked.

use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::template::{PathTemplate, ValueTemplate};
use crate::config::limits::BodyPolicy;

/// A host condition: exact (`api.example.com`) or one leading wildcard label
/// (`*.example.com`, held as `.example.com`). Lower case, no port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostMatch {
    /// This host only.
    Exact(String),
    /// Any host ending with this suffix (which starts with `.`).
    Wildcard(String),
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The path fits this template.
    Template(PathTemplate),
}

impl PathMatch {
    /// As written in the conf.
    pub fn text(&self) -> &str {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p,
            PathMatch::Template(t) => &t.text,
        }
    }

    /// The template's params (none for prefix and exact paths).
    pub fn params(&self) -> &[String] {
        match self {
            PathMatch::Template(t) => &t.params,
            _ => &[],
        }
    }
}

/// Conditions beyond host and path; all must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    /// Any of these methods (empty: any method).
    pub methods: Vec<Method>,
    /// Each header must be present with one of its values.
    pub headers: Vec<(HeaderName, Vec<String>)>,
    /// Each query parameter must be present with one of its values.
    pub query: Vec<(String, Vec<String>)>,
}

impl Conditions {
    /// How many conditions there are (listed methods count as one).
    pub fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }
}

/// What answers a matched request.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteTarget {
    /// Proxied to this upstream group.
    Upstream(String),
    /// Answered with a redirect to `to` (the request's query string kept unless `to` has one).
    Redirect {
        /// Where to.
        to: ValueTemplate,
        /// 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// Answered by the gateway with this status and body.
    Respond {
        /// The status.
        status: u16,
        /// The body.
        body: bytes::Bytes,
        /// Its content type.
        content_type: &'static str,
    },
    /// Answered by this aggregate (an aggregate is a route in the same table).
    Aggregate(String),
}

impl RouteTarget {
    /// A short text for route listings.
    pub fn describe(&self) -> String {
        match self {
            RouteTarget::Upstream(g) => format!("upstream {g}"),
            RouteTarget::Redirect { to, status } => format!("redirect {status} {}", to.text),
            RouteTarget::Respond { status, .. } => format!("respond {status}"),
            RouteTarget::Aggregate(a) => format!("aggregate {a}"),
        }
    }
}

/// How a proxied path is rewritten for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// The leading `strip` removed, then `prefix` put in front (the result starts with `/`).
    Prefix {
        /// Removed when the path starts with it.
        strip: String,
        /// Put in front of what is left.
        prefix: String,
    },
    /// The path replaced by this template over the route's params (the query kept).
    Path(ValueTemplate),
}

/// Whether a route asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// A valid token is needed (the default).
    Required,
    /// A token is verified when sent (a bad one is refused); without one the request goes on
    /// anonymously.
    Optional,
    /// No token is asked for, nor read.
    Public,
}

/// A route's traffic split between groups (`split:`), with what keeps a client on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Each side's group and weight (weights > 0).
    pub sides: Vec<(String, u32)>,
    /// What keeps a client on the side it got (`None`: each request drawn anew).
    pub sticky: Option<Sticky>,
}

/// The key a sticky split hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie the gateway sets when the client has none.
    Cookie(String),
    /// A request header (no header: drawn anew).
    Header(http::HeaderName),
    /// The caller's `sub` (anonymous: drawn anew).
    Sub,
}

/// A copy of a route's requests sent to another group (`mirror:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// The group the copies go to.
    pub upstream: String,
    /// The share of requests copied, 0 to 100.
    pub percent: f64,
    /// Copies in flight at once; more are dropped (and counted).
    pub max_in_flight: usize,
}

/// The kinds of credential a route accepts (`credentials:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// `Authorization: Bearer` (a JWT, or an opaque token when an issuer introspects).
    pub bearer: bool,
    /// An API key in `auth.api_keys.header`.
    pub api_key: bool,
    /// A verified client certificate (`tls.client_auth`).
    pub mtls: bool,
}

impl Default for Credentials {
    /// Tokens and API keys; a client certificate only where a route lists `mtls`.
    fn default() -> Self {
        Credentials {
            bearer: true,
            api_key: true,
            mtls: false,
        }
    }
}

impl Credentials {
    /// The names as written in the conf.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.bearer, "bearer"),
            (self.api_key, "api_key"),
            (self.mtls, "mtls"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect()
    }
}

impl RouteAuth {
    /// As written in the conf.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteAuth::Required => "required",
            RouteAuth::Optional => "optional",
            RouteAuth::Public => "public",
        }
    }
}

/// Scopes and roles a caller must hold, all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Require {
    /// From `scope` (space-separated) or `scp` (an array).
    pub scopes: Vec<String>,
    /// From `auth.roles_claim`.
    pub roles: Vec<String>,
}

/// Per-route timeouts over the group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    /// Connecting to a backend.
    pub connect: Option<Duration>,
    /// Each read from (and write to) the backend.
    pub read: Option<Duration>,
    /// The whole request, retries included: each try's timeouts shrink to what is left.
    pub total: Option<Duration>,
}

/// When a proxied request is tried again on another backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRetries {
    /// Tries after the first.
    pub attempts: u32,
    /// After a failed connect.
    pub on_connect: bool,
    /// After one of these statuses from the backend.
    pub statuses: Vec<u16>,
}

/// Headers set and removed on one direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    /// Set (replacing any sent), after the removals.
    pub set: Vec<(HeaderName, ValueTemplate)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// One route table entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Unique; the `route` label of metrics and the access log.
    pub name: String,
    /// Any of these hosts (empty: any host).
    pub hosts: Vec<HostMatch>,
    /// The path condition.
    pub path: PathMatch,
    /// Methods, headers, query.
    pub conditions: Conditions,
    /// What answers.
    pub target: RouteTarget,
    /// How the path is rewritten for the upstream.
    pub rewrite: Option<Rewrite>,
    /// Whether a token is needed.
    pub auth: RouteAuth,
    /// Which credentials count.
    pub credentials: Credentials,
    /// Traffic split between groups (the target is then the first side's group).
    pub split: Option<Split>,
    /// A copy of requests to another group.
    pub mirror: Option<Mirror>,
    /// Scopes and roles needed.
    pub require: Require,
    /// The rate-limit policies counted (`None`: those whose own `routes` cover the path).
    pub rate_limit: Option<Vec<String>>,
    /// Timeouts over the group's.
    pub timeouts: RouteTimeouts,
    /// Retries over the group's connect retries.
    pub retries: Option<RouteRetries>,
    /// Header rules on the request to the upstream.
    pub request_headers: HeaderRules,
    /// Header rules on the answer to the client.
    pub response_headers: HeaderRules,
    /// How this route reads request bodies (`limits` unless overridden).
    pub body: BodyPolicy,
}

impl RouteConfig {
    /// The upstream group it proxies to, if it does.
    pub fn upstream(&self) -> Option<&str> {
        match &self.target {
            RouteTarget::Upstream(g) => Some(g),
            _ => None,
        }
    }

    /// The route an aggregate is: its hosts, every path under its template's literal start,
    /// any method (the aggregate answers 405 itself), a token required.
    pub(crate) fn for_aggregate(
        name: &str,
        hosts: Vec<HostMatch>,
        prefix: &str,
        body: BodyPolicy,
    ) -> Self {
        RouteConfig {
            name: name.to_string(),
            hosts,
            path: PathMatch::Prefix(prefix.to_string()),
            conditions: Conditions::default(),
            target: RouteTarget::Aggregate(name.to_string()),
            rewrite: None,
            auth: RouteAuth::Required,
            credentials: Credentials::default(),
            split: None,
            mirror: None,
            require: Require::default(),
            rate_limit: None,
            timeouts: RouteTimeouts::default(),
            retries: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            body,
        }
    }
}
