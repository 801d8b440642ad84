//! The edge: what every request passes before it is routed anywhere.
//!
//! - [`hygiene`]: framing and target-form rules, header caps, hop-by-hop removal, request ids.
//! - [`client`]: the client address, trusting `X-Forwarded-For` only from our own proxies.
//! - [`ratelimit`]: the rate-limit policies (per IP, user, claim or header; fixed window or
//!   GCRA) on Redis or in memory.
//! - [`auth`]: JWT verification into an [`auth::Identity`].
//! - [`cors`]: cross-origin policies: preflights and the headers of answers.
//!
//! [`Edge::check`] fixes the order: the address and header policies, then authenticate (so that
//! floods of bad tokens are limited too), then the user and claim policies. Everything here
//! decides and returns values; `proxy` writes the answers.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::clock::unix_now_micros;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics;
use crate::store::RedisStore;

pub mod auth;
pub(crate) mod client;
pub(crate) mod cors;
pub(crate) mod hygiene;
pub(crate) mod path;
pub mod ratelimit;

use self::auth::{Authenticator, Identity};
use self::ratelimit::{Limits, RateVerdict, Scope};

/// The limiter and the verifier, shared by every request.
pub(crate) struct Edge {
    limits: Limits,
    auth: Authenticator,
    /// Cross-origin policies (preflights and answer headers).
    pub(crate) cors: cors::Cors,
}

/// What the edge decided for one request.
pub(crate) struct EdgeVerdict {
    /// The limits' verdict, reported in `RateLimit-*` headers on every answer, a 401
    /// included (`None` when no policy counted the request).
    pub(crate) rate: Option<RateVerdict>,
    /// The verified caller (`None`: anonymous on an `auth: optional` route), or the answer
    /// that refuses the request.
    pub(crate) identity: Result<Option<Arc<Identity>>, GatewayError>,
    /// How authentication went, for the request's span.
    pub(crate) auth: AuthOutcome,
}

/// How authentication went for one request (the span's `gateway.auth.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    /// A token was verified.
    Ok,
    /// Not tried: a limit refused the request first.
    NotChecked,
    /// Not asked for: the route is public.
    Public,
    /// No token sent on a route where one is optional.
    Anonymous,
    /// Refused, for this reason (never the token).
    Refused(&'static str),
}

impl AuthOutcome {
    /// The attribute's value: `ok`, `not_checked` or the failure's reason label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthOutcome::Ok => "ok",
            AuthOutcome::NotChecked => "not_checked",
            AuthOutcome::Public => "public",
            AuthOutcome::Anonymous => "anonymous",
            AuthOutcome::Refused(reason) => reason,
        }
    }
}

/// Whether `identity` holds every scope and role of `require`: 403 `insufficient_scope`
/// when it does not, 401 when there is no caller at all (an anonymous request).
pub(crate) fn require(
    require: &crate::config::Require,
    identity: Option<&Identity>,
) -> Result<(), GatewayError> {
    if require.scopes.is_empty() && require.roles.is_empty() {
        return Ok(());
    }
    let Some(who) = identity else {
        return Err(GatewayError::Unauthorized {
            message: "this route needs a token".into(),
            token_given: false,
        });
    };
    let scopes: Vec<&str> = require
        .scopes
        .iter()
        .filter(|s| !who.has_scope(s))
        .map(String::as_str)
        .collect();
    let roles: Vec<&str> = require
        .roles
        .iter()
        .filter(|r| !who.has_role(r))
        .map(String::as_str)
        .collect();
    if scopes.is_empty() && roles.is_empty() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !scopes.is_empty() {
        missing.push(format!("scope {}", scopes.join(" ")));
    }
    if !roles.is_empty() {
        missing.push(format!("role {}", roles.join(" ")));
    }
    metrics::AUTH_FAILURES
        .with_label_values(&["insufficient_scope"])
        .inc();
    Err(GatewayError::InsufficientScope {
        message: format!("the token lacks {}", missing.join(" and ")).into(),
        scope: require.scopes.join(" ").into(),
    })
}

/// Every claim the verifier reads beyond roles and forwarded claims, each once: those the
/// rate-limit policies count by (first, in their order), then those route header rules use.
pub(crate) fn claim_paths(config: &Config) -> Vec<Vec<String>> {
    let mut paths = Limits::claim_paths(&config.rate_limit);
    for r in &config.routes {
        for (_, t) in r.request_headers.set.iter().chain(&r.response_headers.set) {
            for c in t.claims() {
                let path: Vec<String> = c.split('.').map(str::to_string).collect();
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    paths
}

impl Edge {
    /// Builds the limiter (on `redis` when given) and the verifier. With `previous` (a
    /// reload), the limiter's counts and the providers whose settings did not change (their
    /// keys) carry over.
    pub(crate) fn new(
        config: &Config,
        redis: Option<Arc<RedisStore>>,
        previous: Option<&Edge>,
    ) -> Edge {
        let mut limits = Limits::new(&config.rate_limit, redis);
        if let Some(p) = previous {
            limits = limits.continuing(&p.limits);
        }
        let providers = previous.map(|p| p.auth.providers()).unwrap_or_default();
        Edge {
            limits,
            auth: Authenticator::new(
                &config.auth,
                config.limits.max_authorization_bytes,
                &providers,
                claim_paths(config),
                config.routes.iter().any(|r| !r.require.scopes.is_empty()),
            ),
            cors: cors::Cors::new(config.cors.clone()),
        }
    }

    /// The policies counted before authentication alone: preflights carry no token, yet a
    /// flood of them is limited.
    pub(crate) async fn limit(
        &self,
        client: Option<IpAddr>,
        scope: Scope<'_>,
        headers: &HeaderMap,
    ) -> Option<RateVerdict> {
        self.limits
            .before_auth(client, scope, headers, unix_now_micros())
            .await
    }

    /// Whether the edge can serve: every identity provider's keys are loaded.
    pub(crate) fn ready(&self) -> bool {
        self.auth.ready()
    }

    /// Whether the request carries a credential in its headers (its answer varies by them).
    pub(crate) fn has_credentials(&self, headers: &HeaderMap) -> bool {
        self.auth.has_credentials(headers)
    }

    /// Starts the key refresh of identity providers that have none running yet (new ones);
    /// each stops when its provider is dropped.
    pub(crate) fn start_key_refresh(&self) {
        for p in self.auth.providers() {
            p.start_refresh();
        }
    }

    /// The address and header policies, then authentication (by the first credential `accepts`
    /// lists that the request carries; `cert` is the connection's verified client certificate),
    /// then the user and claim policies. With `optional`, a request without a credential goes
    /// on anonymously after the first policies.
    pub(crate) async fn check(
        &self,
        client: Option<IpAddr>,
        scope: Scope<'_>,
        headers: &HeaderMap,
        optional: bool,
        accepts: crate::config::Credentials,
        cert: Option<&str>,
    ) -> EdgeVerdict {
        let now = unix_now_micros();
        let mut rate = self.limits.before_auth(client, scope, headers, now).await;
        if let Some(refusal) = rate.as_ref().and_then(RateVerdict::refusal) {
            return EdgeVerdict {
                rate,
                identity: Err(refusal),
                auth: AuthOutcome::NotChecked,
            };
        }
        if optional && !self.auth.has_credentials(headers) && !(accepts.mtls && cert.is_some()) {
            return EdgeVerdict {
                rate,
                identity: Ok(None),
                auth: AuthOutcome::Anonymous,
            };
        }
        let mut auth = AuthOutcome::Ok;
        let identity = self
            .auth
            .authenticate(headers, accepts, cert)
            .await
            .map_err(|e| {
                auth = AuthOutcome::Refused(e.reason());
                metrics::AUTH_FAILURES
                    .with_label_values(&[e.reason()])
                    .inc();
                match e.unavailable() {
                    Some(retry_after_secs) => GatewayError::AuthUnavailable {
                        code: e.reason(),
                        message: e.to_string().into(),
                        retry_after_secs,
                    },
                    None => GatewayError::Unauthorized {
                        message: e.to_string().into(),
                        token_given: e.token_given(),
                    },
                }
            });
        let identity = match identity {
            Ok(who) if self.limits.counts_callers() => {
                self.limits
                    .after_auth(&mut rate, client, scope, &who, now)
                    .await;
                match rate.as_ref().and_then(RateVerdict::refusal) {
                    Some(refusal) => Err(refusal),
                    None => Ok(Some(who)),
                }
            }
            other => other.map(Some),
        };
        EdgeVerdict {
            rate,
            identity,
            auth,
        }
    }
}
