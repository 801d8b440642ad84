//! From the file format to the typed [`Config`]: the listeners, then each section's own
//! `resolve` (in its file), then the checks across sections (routes against upstreams and
//! aggregates).

use std::net::SocketAddr;
use std::time::Duration;

use super::aggregates::resolve_aggregates;
use super::check::{invalid, nonempty, parse_listen};
use super::file::GatewayFile;
use super::routes::resolve_routes;
use super::services::resolve_services;
use super::upstreams::resolve_upstreams;
use super::*;

impl GatewayFile {
    /// Applies env overrides and validates into the typed [`Config`], section by section.
    pub(super) fn resolve(self, env: &dyn Env, mode: LoadMode) -> Result<Config, ConfigError> {
        let (listen, metrics_listen) = resolve_listeners(&self.listen, &self.metrics_listen, env)?;
        let dns = super::upstreams::resolve_dns(self.dns)?;
        let upstreams = resolve_upstreams(self.upstreams, mode, &dns)?;
        let limits = self.limits.resolve()?;
        let routes = resolve_routes(self.routes, &upstreams, &limits.body)?;
        let services = resolve_services(self.services, env)?;
        let names = services.names();
        let aggregates = resolve_aggregates(self.aggregates, &names)?;
        let rate_limit = self.rate_limit.resolve(env)?;
        check_table(&routes, &aggregates, &rate_limit, &limits.body)?;
        let tls = self
            .tls
            .map(|t| {
                t.resolve(|value| {
                    parse_listen(
                        "gateway.tls.listen",
                        value,
                        nonempty(env, "HTTPS_PORT").map(|v| ("HTTPS_PORT", v)),
                    )
                })
            })
            .transpose()?;
        if let Some(t) = &tls {
            if t.listen == listen || t.listen == metrics_listen {
                return Err(invalid(
                    "gateway.tls.listen",
                    "must differ from gateway.listen and gateway.metrics_listen",
                ));
            }
        }
        let client_certs = tls.as_ref().is_some_and(|t| t.client_auth.is_some());
        if let Some(i) = routes
            .iter()
            .position(|r| r.credentials.mtls && !client_certs)
        {
            return Err(invalid(
                format!("gateway.routes[{i}].credentials"),
                "lists mtls, but gateway.tls.client_auth asks no client for a certificate",
            ));
        }
        let mut taken = vec![listen, metrics_listen];
        taken.extend(tls.as_ref().map(|t| t.listen));
        let admin = super::admin::resolve_admin(self.admin, env, &taken, mode)?;
        if self.redirect_http && tls.is_none() {
            return Err(invalid(
                "gateway.redirect_http",
                "needs gateway.tls: there is no HTTPS listener to redirect to",
            ));
        }
        Ok(Config {
            listen,
            metrics_listen,
            redis: self.redis.resolve(env)?,
            auth: self.auth.resolve(env, mode)?,
            rate_limit,
            services,
            aggregates,
            limits,
            upstreams,
            routes,
            tls,
            redirect_http: self.redirect_http,
            h2c: self.h2c,
            listen_retry: std::time::Duration::from_secs(self.listen_retry_seconds),
            access_format: self.log.access_format,
            cors: super::cors::resolve_cors(self.cors)?,
            compression: super::compression::resolve_compression(self.compression)?,
            readiness: self.readiness.resolve(),
            reload: ReloadConfig {
                watch: self.reload.watch,
                interval: Duration::from_millis(self.reload.interval_ms.max(100)),
            },
            tracing: super::tracing::resolve_tracing(self.tracing, env)?,
            admin,
        })
    }
}

/// The whole route table (routes and aggregates): names unique across both, no two routes
/// in conflict, every listed rate-limit policy declared.
fn check_table(
    routes: &[RouteConfig],
    aggregates: &[AggregateConfig],
    rate_limit: &RateLimitConfig,
    body: &BodyPolicy,
) -> Result<(), ConfigError> {
    let policies: Vec<&str> = std::iter::once("default")
        .chain(rate_limit.policies.iter().map(|p| p.name.as_str()))
        .collect();
    for (i, r) in routes.iter().enumerate() {
        for (j, p) in r.rate_limit.iter().flatten().enumerate() {
            if !policies.contains(&p.as_str()) {
                return Err(invalid(
                    format!("gateway.routes[{i}].rate_limit[{j}]"),
                    format!("`{p}` is not a policy (known: {})", policies.join(", ")),
                ));
            }
        }
    }
    let aggregate_routes = aggregate_routes(aggregates, body);
    let mut all: Vec<(String, &RouteConfig)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        all.push((format!("gateway.routes[{i}]"), r));
    }
    for (j, r) in aggregate_routes.iter().enumerate() {
        let where_ = format!("gateway.aggregates[{j}]");
        if let Some(i) = routes.iter().position(|x| x.name == r.name) {
            return Err(invalid(
                format!("gateway.routes[{i}].name"),
                format!("`{}` is also the name of {where_}", r.name),
            ));
        }
        all.push((where_, r));
    }
    super::routes::check_conflicts(&all)
}

/// The routes the aggregates are, in their order.
pub(crate) fn aggregate_routes(
    aggregates: &[AggregateConfig],
    body: &BodyPolicy,
) -> Vec<RouteConfig> {
    aggregates
        .iter()
        .map(|a| {
            let text = &a.path.text;
            let literal = &text[..text.find('{').unwrap_or(text.len())];
            RouteConfig::for_aggregate(
                &a.name,
                a.hosts.clone(),
                literal.trim_end_matches('/'),
                *body,
            )
        })
        .collect()
}

/// The main and metrics listeners, `HTTP_PORT` / `METRICS_PORT` replacing their ports.
fn resolve_listeners(
    listen: &str,
    metrics_listen: &str,
    env: &dyn Env,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let listen = parse_listen(
        "gateway.listen",
        listen,
        nonempty(env, "HTTP_PORT").map(|v| ("HTTP_PORT", v)),
    )?;
    let metrics_listen = parse_listen(
        "gateway.metrics_listen",
        metrics_listen,
        nonempty(env, "METRICS_PORT").map(|v| ("METRICS_PORT", v)),
    )?;
    if listen == metrics_listen {
        return Err(invalid(
            "gateway.metrics_listen",
            "must differ from gateway.listen",
        ));
    }
    Ok((listen, metrics_listen))
}
