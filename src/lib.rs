//! An edge gateway / BFF on Cloudflare Pingora.
//!
//! # Layout
//! A folder per capability; each `mod.rs` says what lives there. No file imports one that
//! imports it back (`scripts/import_cycles.py`, run by `make lint`).
//! - [`proxy`]: the `ProxyHttp` phases and the per-request `Ctx`; routes, upstream groups,
//!   health, local answers, the access log.
//! - [`edge`]: what every request passes first: hygiene, the client address, rate limiting,
//!   authentication (limit, then authenticate).
//! - [`aggregate`]: declared composite endpoints (`gateway.aggregates`) and the service clients
//!   behind them.
//! - [`store`]: shared state on Redis, or the embedded map.
//! - [`conn`]: client connections: the whole-header deadline and the keep-alive loop.
//! - [`config`]: the `gateway:` section of the conf file, env overrides, validation.
//! - [`logging`]: non-blocking log writers, JSON or text.
//! - [`error`]: every locally produced error → status + JSON body.
//! - [`resilience`]: circuit breaker, retry policy and retry budget over an injected clock.
//! - [`metrics`]: Prometheus instruments; each module primes its own series.
//! - `snapshot`: the composition root, one configuration built; `rebuild`: what a reload keeps.
//! - [`reload`], [`tls`]: live configuration, and the HTTPS listener's certificates.
//! - `trace`: OpenTelemetry spans (W3C trace context in and out) and their OTLP export.
//! - [`headers`], [`clock`], `sharded`: header names, wall-clock seconds, sharded locks.
//! - `summary`: what the process serves, said once at start.
//! - [`trust`]: which roots the TLS clients load, and when (none they will not use).
//!
//! `main.rs` only parses the command line and calls [`build_server`].

pub(crate) mod aggregate;
pub mod clock;
pub mod config;
pub(crate) mod conn;
pub mod edge;
pub(crate) mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod headers;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod rebuild;
pub mod reload;
pub(crate) mod resilience;
pub(crate) mod sharded;
pub(crate) mod snapshot;
pub mod store;
pub(crate) mod summary;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub(crate) mod trace;
pub mod trust;

use std::sync::Arc;

use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::config::Config;
use crate::proxy::Gateway;

/// Idle upstream connections kept for reuse, over all backends, unless the conf file sets
/// `upstream_keepalive_pool_size`. Each request in flight to an HTTP/1 backend holds a
/// connection of its own, and h2 clients put many in flight at once: below that peak every
/// release past the pool's size closes a connection the next request reopens (Pingora's
/// default of 128 is far below what h2 clients put in flight; docs/BENCHMARKS.md).
const UPSTREAM_POOL: usize = 1024;

/// Pingora's settings from the conf file, with two defaults of our own where the file is
/// silent: `work_stealing: false`, so each worker thread runs its own runtime and a
/// connection's tasks (the upstream pool's idle watcher included) stay on its thread, which
/// saves the cross-thread wake-ups of plain proxying (docs/BENCHMARKS.md); and an upstream
/// pool of [`UPSTREAM_POOL`].
fn server_conf(conf_text: &str) -> pingora::Result<ServerConf> {
    let mut conf = ServerConf::from_yaml(conf_text)?;
    let file = serde_yaml::from_str::<serde_yaml::Value>(conf_text).ok();
    let says = |key: &str| file.as_ref().and_then(|v| v.get(key)).is_some();
    if !says("work_stealing") {
        conf.work_stealing = false;
    }
    if !says("upstream_keepalive_pool_size") {
        conf.upstream_keepalive_pool_size = UPSTREAM_POOL;
    }
    Ok(conf)
}

/// Creates every series `config` can move at 0, so dashboards and alerts see a flat line
/// instead of "no data" until the first event. Each module primes its own; rate-limit
/// decisions are primed by the limiter, which resolves its counters once.
fn prime(config: &Config) {
    logging::prime();
    conn::report::prime(config.tls.is_some());
    proxy::body::BodyMode::prime();
    proxy::local::Unready::prime();
    edge::auth::prime(&config.auth);
    edge::hygiene::prime();
    aggregate::prime(&config.aggregates);
    store::prime(&config.redis);
    reload::prime();
    if config.tls.is_some() {
        tls::prime();
    }
    if config.tracing.is_some() {
        trace::export::prime();
    }
    if let Some(c) = &config.compression {
        proxy::compress::prime(c);
    }
}

/// `opt` without the conf path: the conf was read already (and Pingora would warn that it
/// ignores the path).
fn opt_without_conf(mut opt: Opt) -> Opt {
    opt.conf = None;
    opt
}

/// The metrics listener's one page: every series in Prometheus' text format, never cached
/// (a scrape through a caching proxy must see the values of now).
struct MetricsPage;

#[async_trait::async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsPage {
    async fn response(
        &self,
        _session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        use pingora_prometheus::prometheus::{Encoder, TextEncoder};
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        let status = match encoder.encode(&pingora_prometheus::prometheus::gather(), &mut body) {
            Ok(()) => 200,
            Err(_) => 500,
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        let len = resp.body().len();
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        resp
    }
}

/// The route table of `config` in match order as aligned text (`gateway routes`), or, with
/// `explain` (a method and a URL, plus `Name: value` headers), which route takes that request
/// and why each other does not.
pub fn routes_report(
    config: &Config,
    explain: Option<(&str, &str)>,
    headers: &[String],
) -> Result<String, String> {
    if let Some((method, url)) = explain {
        return proxy::routes::explain(config, method, url, headers);
    }
    let rows = proxy::routes::table_rows(config);
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "*".to_string()
                } else {
                    v.join(",")
                }
            };
            [
                r.name.clone(),
                list(&r.hosts),
                r.path.clone(),
                list(&r.methods),
                r.target.clone(),
                r.auth.to_string(),
                r.policies.join(","),
            ]
        })
        .collect();
    let head = [
        "NAME", "HOSTS", "PATH", "METHODS", "TARGET", "AUTH", "POLICIES",
    ]
    .map(String::from);
    let mut widths = [0usize; 7];
    for row in std::iter::once(&head).chain(&cells) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Builds a ready-to-run Pingora server: the proxy service, the metrics service and the
/// background services (live configuration with health checks and key refresh, certificate
/// reload, the client report) for `config`, parsed from `conf_text` (the file's text, which
/// the reloader compares its next reads with). Call `bootstrap` and `run` on it.
pub fn build_server(opt: Opt, config: Config, conf_text: String) -> pingora::Result<Server> {
    metrics::init();
    prime(&config);
    let conf_path = opt.conf.clone();
    let testing = opt.test;
    let hash = config::fingerprint_loaded(&conf_text, &config);
    if !testing {
        summary::announce(&config, conf_path.as_deref(), &hash);
    }
    proxy::access::set_format(config.access_format);
    metrics::CONFIG_INFO.with_label_values(&[&hash]).set(1);
    let config = Arc::new(config);
    let mut server = Server::new_with_opt_and_conf(opt_without_conf(opt), server_conf(&conf_text)?);

    let redis = store::RedisStore::from_config(&config.redis)
        .map_err(internal)?
        .map(Arc::new);
    let redis_for_watch = redis.clone().filter(|r| r.is_cluster());
    let (tracer, exporter) = match &config.tracing {
        Some(t) => {
            let (tracer, exporter) = trace::Tracer::new(t).map_err(internal)?;
            (Some(Arc::new(tracer)), Some(exporter))
        }
        None => (None, None),
    };
    let gateway = Gateway::new((*config).clone(), hash, redis, tracer).map_err(internal)?;
    let (live, shared) = gateway.live();
    let admin = config.admin.as_ref().map(|a| {
        let mut service = pingora::services::listening::Service::new(
            "admin".to_string(),
            gateway.admin_api(a.token.clone()),
        );
        service.add_tcp(&a.listen.to_string());
        service
    });
    let feed = gateway.invalidation_feed();
    let reloader = reload::Reloader::new(live, shared, conf_path, conf_text);
    let (proxy, tls_reloader) = proxy_service(&config, gateway, &server)?;

    let mut page = pingora::apps::http_app::HttpServer::new_app(MetricsPage);
    // Scrapes are text a few hundred KiB long: gzip at Pingora's level 7, as Prometheus asks.
    page.add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(7));
    let mut prometheus =
        pingora::services::listening::Service::new("Prometheus metric HTTP".to_string(), page);
    prometheus.add_tcp(&config.metrics_listen.to_string());

    server.add_service(proxy);
    server.add_service(prometheus);
    if let Some(admin) = admin {
        server.add_service(admin);
    }
    // Also starts the health checks and key refresh of every snapshot, the first included.
    add_background(&mut server, "live configuration", reloader);
    add_background(&mut server, "client report", conn::report::SummaryService);
    // Pingora's own default when the file sets none.
    let grace = server.configuration.grace_period_seconds.unwrap_or(300);
    let signal = proxy::tunnel::ShutdownSignal {
        grace: std::time::Duration::from_secs(grace),
    };
    add_background(&mut server, "tunnel shutdown", signal);
    if let Some(store) = redis_for_watch {
        add_background(
            &mut server,
            "redis cluster topology",
            store::TopologyWatch(store),
        );
    }
    if let Some(feed) = feed {
        add_background(&mut server, "cache invalidation feed", feed);
    }
    if let Some(exporter) = exporter {
        add_background(&mut server, "trace export", exporter);
    }
    if let Some(reloader) = tls_reloader {
        add_background(&mut server, "certificate reload", reloader);
    }
    Ok(server)
}

/// A start-up failure as Pingora's error.
fn internal(e: impl Into<pingora::ImmutStr>) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::InternalError, e)
}

fn add_background<S>(server: &mut Server, name: &str, service: S)
where
    S: pingora::services::background::BackgroundService + Send + Sync + 'static,
{
    server.add_service(pingora::services::background::background_service(
        name, service,
    ));
}

/// The listening service that serves clients.
type ProxyService = pingora::services::listening::Service<
    conn::WithHeaderDeadline<pingora::proxy::HttpProxy<Gateway>>,
>;

/// The client-facing service: the proxy behind the whole-header deadline on the plain
/// listener, and the TLS listener (with its certificate reloader) when configured.
fn proxy_service(
    config: &Config,
    gateway: Gateway,
    server: &Server,
) -> pingora::Result<(ProxyService, Option<tls::Reloader>)> {
    let mut http = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    http.handle_init_modules();
    if let Some(tls) = &config.tls {
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_concurrent_streams(tls.h2_max_concurrent_streams);
        h2.max_header_list_size(tls.h2_max_header_list_bytes);
        http.h2_options = Some(h2);
    }
    if config.h2c {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        http.server_options = Some(options);
        if http.h2_options.is_none() {
            let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
            h2.max_concurrent_streams(config::DEFAULT_H2_STREAMS);
            h2.max_header_list_size(config::DEFAULT_H2_HEADER_LIST_BYTES);
            http.h2_options = Some(h2);
        }
    }
    // Every client connection gets a whole-header read deadline (slowloris defence).
    let app = conn::WithHeaderDeadline::new(
        http,
        conn::ConnLimits {
            header_deadline: config.limits.header_read_timeout,
            keepalive: config.limits.keepalive_timeout,
            pipeline_depth: config.limits.pipeline_depth,
            per_ip: conn::PerIpCap::new(
                config.limits.max_connections_per_ip,
                config.rate_limit.trusted_proxies.clone(),
            ),
        },
    );
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
    let Some(tls) = &config.tls else {
        return Ok((proxy, None));
    };
    let certs = Arc::new(tls::Certificates::load(tls).map_err(internal)?);
    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(
        tls::SniResolver(certs.clone()),
    ))?;
    if tls.http2 {
        settings.enable_h2();
    }
    let min = match tls.min_version {
        config::TlsVersion::V1_2 => pingora::tls::ssl::SslVersion::TLS1_2,
        config::TlsVersion::V1_3 => pingora::tls::ssl::SslVersion::TLS1_3,
    };
    settings
        .set_min_proto_version(Some(min))
        .map_err(|e| internal(format!("gateway.tls.min_version: {e}")))?;
    if let Some(c) = &tls.client_auth {
        tls::ask_client_certificates(&mut settings, c).map_err(internal)?;
    }
    proxy.add_tls_with_settings(&tls.listen.to_string(), None, settings);
    Ok((proxy, Some(tls::Reloader::new(certs, tls.reload_interval))))
}

/// Waits up to `listen_retry_seconds` for every listen address of `config` to be free (each
/// bound and released again); `Err` names the first still in use.
pub fn wait_for_listen_addresses(config: &Config) -> Result<(), String> {
    let mut addresses = vec![config.listen, config.metrics_listen];
    addresses.extend(config.tls.as_ref().map(|t| t.listen));
    addresses.extend(config.admin.as_ref().map(|a| a.listen));
    let deadline = std::time::Instant::now() + config.listen_retry;
    for addr in addresses {
        let mut said = false;
        loop {
            match std::net::TcpListener::bind(addr) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if std::time::Instant::now() >= deadline {
                        return Err(format!(
                            "{addr} is in use (waited {} s, gateway.listen_retry_seconds): another process listens there",
                            config.listen_retry.as_secs()
                        ));
                    }
                    if !said {
                        tracing::warn!(%addr, "listen address in use, waiting for it");
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_stealing_is_off_unless_the_file_turns_it_on() {
        let conf = |text: &str| super::server_conf(text).expect("a valid conf");
        assert!(!conf("version: 1\nthreads: 2\n").work_stealing);
        assert!(conf("version: 1\nwork_stealing: true\n").work_stealing);
        assert!(!conf("version: 1\nwork_stealing: false\n").work_stealing);
        assert_eq!(conf("version: 1\nthreads: 3\n").threads, 3);
    }

    #[test]
    fn the_upstream_pool_is_sized_for_multiplexed_clients_unless_the_file_says() {
        let conf = |text: &str| super::server_conf(text).expect("a valid conf");
        assert_eq!(
            conf("version: 1\n").upstream_keepalive_pool_size,
            super::UPSTREAM_POOL
        );
        let set = conf("version: 1\nupstream_keepalive_pool_size: 64\n");
        assert_eq!(set.upstream_keepalive_pool_size, 64);
    }
}
