//! An edge gateway / BFF on Cloudflare Pingora.
//!
//! # Layout
//! - [`config`]: the `gateway:` section of the conf file, env overrides, validation.
//! - [`deadline`]: the whole-header read deadline wrapped around client connections.
//! - [`error`]: every locally produced error → status + JSON body.
//! - [`hygiene`]: framing/target rules, header caps, hop-by-hop removal, request ids.
//! - [`respond`]: writes the gateway's own answers onto the session.
//! - [`proxy`]: the `ProxyHttp` implementation and the per-request `Ctx`.
//! - [`access`]: the one-line-per-request JSON access log.
//! - [`auth`]: JWT verification → `Identity`; token issuing for the CLI.
//! - [`ratelimit`]: per-IP fixed windows on Redis or in memory, with fallback.
//! - [`store`]: the Redis connection with timeouts, breaker and rate-limited warnings.
//! - [`profile`]: `/api/profile/{id}`: authorization, cache-aside, single flight, fan-out.
//! - [`upstream`]: dependency-service clients with timeout, retry and breaker.
//! - [`routes`]: route table, upstream groups, load balancing, active and passive health.
//! - [`resilience`]: circuit breaker and retry policy over an injected clock.
//! - [`net`]: client address normalisation and trusted-proxy `X-Forwarded-For`.
//! - [`metrics`]: Prometheus instruments.
//!
//! `main.rs` only parses the command line and calls [`build_server`].

pub mod access;
pub mod auth;
pub mod config;
pub mod deadline;
pub mod error;
pub mod hygiene;
pub mod metrics;
pub mod net;
pub mod profile;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod respond;
pub mod routes;
pub mod store;
pub mod upstream;

use std::sync::Arc;

use pingora::prelude::Opt;
use pingora::server::Server;

use crate::config::Config;
use crate::proxy::Gateway;

/// Builds a ready-to-run Pingora server: the proxy service, the metrics service and one
/// health-check service per upstream group. Call `bootstrap` and `run_forever` on it.
pub fn build_server(opt: Opt, config: Config) -> pingora::Result<Server> {
    metrics::init();
    metrics::prime(config.redis.url.is_some());
    let config = Arc::new(config);
    let mut server = Server::new(Some(opt))?;

    let redis = match &config.redis.url {
        Some(url) => {
            let store = store::RedisStore::new(url, config.redis.clone()).map_err(|e| {
                pingora::Error::explain(
                    pingora::ErrorType::InternalError,
                    format!("REDIS_ADDR / gateway.redis.addr is not usable: {e}"),
                )
            })?;
            Some(Arc::new(store))
        }
        None => None,
    };
    let (gateway, health_services) = Gateway::new(config.clone(), redis)
        .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e))?;
    let mut http = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    http.handle_init_modules();
    // Every client connection gets a whole-header read deadline (slowloris defence).
    let app = deadline::WithHeaderDeadline::new(http, config.limits.header_read_timeout);
    let mut proxy = pingora::services::listening::Service::new("gateway".to_string(), app);
    // No L4 buffers: Pingora reads headers and bodies into buffers of its own, so the default
    // 64 KiB read buffer (meant for TLS records) only adds a copy and memory, and the header
    // deadline wrapper buffers writes only while a response is being written.
    proxy.add_listener(
        pingora::listeners::ListenerConfig::tcp(config.listen.to_string()).l4_buffer(
            pingora::protocols::l4::stream::L4BufferSettings::default()
                .read(0)
                .write(0),
        ),
    );

    let mut prometheus = pingora_prometheus::prometheus_http_service();
    prometheus.add_tcp(&config.metrics_listen.to_string());

    let health_handles: Vec<_> = health_services
        .into_iter()
        .map(|svc| server.add_service(svc))
        .collect();
    let proxy_handle = server.add_service(proxy);
    // The client listener opens only after every group has its backends discovered.
    proxy_handle.add_dependencies(health_handles.iter());
    server.add_service(prometheus);
    Ok(server)
}
