//! The edge: what every request passes before it is routed anywhere.
//!
//! - [`hygiene`]: framing and target-form rules, header caps, hop-by-hop removal, request ids.
//! - [`client`]: the client address, trusting `X-Forwarded-For` only from our own proxies.
//! - [`ratelimit`]: per-client fixed windows on Redis or in memory.
//! - [`auth`]: JWT verification into an [`auth::Identity`].
//! - [`cors`]: cross-origin policies: preflights and the headers of answers.
//!
//! [`Edge::check`] fixes the order: limit, then authenticate, so that floods of bad tokens are
//! limited too. Everything here decides and returns values; `proxy` writes the answers. This
//! module may use `config`, `store`, `metrics`, `error`, `clock` and `sharded`.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::clock::unix_now;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics;
use crate::store::RedisStore;

pub mod auth;
pub(crate) mod client;
pub(crate) mod cors;
pub(crate) mod hygiene;
pub mod ratelimit;

use self::auth::{Authenticator, Identity};
use self::ratelimit::{Decision, RateLimiter};

/// The limiter and the verifier, shared by every request.
pub(crate) struct Edge {
    limiter: RateLimiter,
    auth: Authenticator,
    /// Cross-origin policies (preflights and answer headers).
    pub(crate) cors: cors::Cors,
}

/// What the edge decided for one request.
pub(crate) struct EdgeVerdict {
    /// The limiter's decision, reported in `RateLimit-*` headers on every answer, a 401
    /// included (`None` when there was no client address to count).
    pub(crate) rate: Option<Decision>,
    /// The verified caller, or the answer that refuses the request.
    pub(crate) identity: Result<Arc<Identity>, GatewayError>,
    /// How authentication went, for the request's span: `ok`, `not_checked` (limited first)
    /// or the failure's reason label (never the token).
    pub(crate) auth: &'static str,
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
        let mut limiter = RateLimiter::new(&config.rate_limit, redis);
        if let Some(p) = previous {
            limiter = limiter.continuing(&p.limiter);
        }
        let providers = previous.map(|p| p.auth.providers()).unwrap_or_default();
        Edge {
            limiter,
            auth: Authenticator::new(
                &config.auth,
                config.limits.max_authorization_bytes,
                &providers,
            ),
            cors: cors::Cors::new(config.cors.clone()),
        }
    }

    /// The per-client limit alone: preflights carry no token, yet a flood of them is limited.
    pub(crate) async fn limit(&self, client: Option<IpAddr>) -> Option<Decision> {
        match client {
            Some(ip) => Some(self.limiter.check(ip, unix_now()).await),
            None => None,
        }
    }

    /// Whether the edge can serve: every identity provider's keys are loaded.
    pub(crate) fn ready(&self) -> bool {
        self.auth.ready()
    }

    /// Starts the key refresh of identity providers that have none running yet (new ones);
    /// each stops when its provider is dropped.
    pub(crate) fn start_key_refresh(&self) {
        for p in self.auth.providers() {
            p.start_refresh();
        }
    }

    /// Rate limit, then authenticate.
    pub(crate) async fn check(&self, client: Option<IpAddr>, headers: &HeaderMap) -> EdgeVerdict {
        let rate = self.limit(client).await;
        if let Some(d) = rate.filter(|d| !d.allowed) {
            return EdgeVerdict {
                rate,
                identity: Err(GatewayError::RateLimited {
                    retry_after_secs: d.reset_secs,
                }),
                auth: "not_checked",
            };
        }
        let mut auth = "ok";
        let identity = self.auth.authenticate(headers).await.map_err(|e| {
            auth = e.reason();
            metrics::AUTH_FAILURES
                .with_label_values(&[e.reason()])
                .inc();
            GatewayError::Unauthorized {
                message: e.to_string().into(),
                token_given: e.token_given(),
            }
        });
        EdgeVerdict {
            rate,
            identity,
            auth,
        }
    }
}
