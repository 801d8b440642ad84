//! Prometheus instruments, registered in the default registry that pingora-prometheus serves.
//!
//! Labels are route names, services, groups and status codes: never raw paths, ids, IPs or tokens.
//!
//! Only the instruments live here, each with its help text, so names and labels can be reviewed
//! together. Each module that moves a series primes it at 0 itself (its `prime`, next to its
//! label enum), and `lib.rs` calls them all at start.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Registration only fails on a duplicate name, a programming error caught by every test run.
    register_int_counter_vec!(name, help, labels)
        .unwrap_or_else(|e| panic!("metric {name} cannot be registered: {e}"))
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register_histogram_vec!(name, help, labels, LATENCY_BUCKETS.to_vec())
        .unwrap_or_else(|e| panic!("metric {name} cannot be registered: {e}"))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(name, help, labels)
        .unwrap_or_else(|e| panic!("metric {name} cannot be registered: {e}"))
}

/// Requests by method, protocol, route name and status, including ones answered locally.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "http_requests_total",
        "Requests handled, by method, protocol (http/1.1 or h2), route and status",
        &["method", "protocol", "route", "status"],
    )
});

/// Request duration from the first byte read to the last byte written.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "http_request_duration_seconds",
        "Request duration in seconds, by method and route",
        &["method", "route"],
    )
});

/// Active health of each backend (1 healthy, 0 not).
pub static BACKEND_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "upstream_backend_healthy",
        "Whether the active health check sees the backend as healthy",
        &["group", "backend"],
    )
});

/// Rate-limit decisions by result and backend.
pub static RATE_LIMIT_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "rate_limit_decisions_total",
        "Rate limit decisions, by policy, result (allowed|limited|denied) and backend \
         (redis|memory|fallback|unavailable)",
        &["policy", "result", "backend"],
    )
});

/// Authentication failures by reason.
pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "auth_failures_total",
        "Rejected authentications, by reason",
        &["reason"],
    )
});

/// Cache entries purged through the admin API, by kind.
pub static CACHE_INVALIDATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cache_invalidations_total",
        "Cached aggregate entries purged through the admin API, by kind (key|tag)",
        &["kind"],
    )
});

/// Entries held in each aggregate's in-process cache tier.
pub static CACHE_LOCAL_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "cache_local_entries",
        "Entries held in the in-process cache tier (cache.local), by aggregate",
        &["aggregate"],
    )
});

/// Whether this replica hears cache invalidations from the others (Redis pub/sub).
pub static CACHE_INVALIDATION_FEED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "cache_invalidation_feed_up",
        "1 while subscribed to the other replicas' cache invalidations (Redis pub/sub); \
         while 0 the in-process tier is not read"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Invalidation messages between replicas, by direction.
pub static CACHE_INVALIDATION_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cache_invalidation_messages_total",
        "Cache invalidation messages published to or received from the replicas, by direction \
         (sent|received|bad)",
        &["direction"],
    )
});

/// Store operations that failed or timed out, by backend and operation.
pub static STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "store_errors_total",
        "Shared-store errors and timeouts, by backend and operation",
        &["backend", "op"],
    )
});

/// Connections proxied requests got to a group's backends: reused from the keep-alive pool
/// or opened anew.
pub static UPSTREAM_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "upstream_connections_total",
        "Connections to an upstream group for proxied requests, by whether the keep-alive pool had one (reused) or one was opened",
        &["group", "reused"],
    )
});

/// Calls to the aggregates' services, by service and outcome.
pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "upstream_requests_total",
        "Attempts against dependency services, by service and outcome",
        &["service", "outcome"],
    )
});

/// Duration of each attempt against a dependency service.
pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "upstream_request_duration_seconds",
        "Duration of attempts against dependency services, in seconds",
        &["service"],
    )
});

/// Retries made against a dependency service.
pub static UPSTREAM_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "upstream_retries_total",
        "Retries against dependency services",
        &["service"],
    )
});

/// Requests refused before routing for how they were written, by reason.
pub static HTTP_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "http_requests_rejected_total",
        "Requests refused for their framing, target, path or headers before routing, by reason",
        &["reason"],
    )
});

/// Request headers the gateway did not forward, by reason (`underscore`).
pub static HTTP_HEADERS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "http_request_headers_dropped_total",
        "Request headers not forwarded, by reason (underscore: a name with `_`)",
        &["reason"],
    )
});

/// Proxied requests tried again on another backend, by route and what the try met
/// (`connect`, or the status).
pub static ROUTE_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "route_retries_total",
        "Proxied requests tried again on another backend, by route and cause (connect or status)",
        &["route", "cause"],
    )
});

/// Header values a route's rules would have set but did not: a claim or param holding CR,
/// LF, NUL or another byte a header cannot carry.
pub static ROUTE_HEADERS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "route_header_values_dropped_total",
        "Header values of route rules not sent because they held bytes a header cannot carry",
        &["route"],
    )
});

/// Circuit breaker state per service: 0 closed, 1 open, 2 half-open.
pub static BREAKER_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "circuit_breaker_state",
        "Circuit breaker state per service (0 closed, 1 open, 2 half-open)",
        &["service"],
    )
});

/// Profile cache lookups by result.
pub static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cache_requests_total",
        "Aggregate cache lookups, by aggregate and result (hit|miss|bypass)",
        &["aggregate", "result"],
    )
});

/// Aggregate answers with a degraded key, by aggregate and leg.
pub static AGGREGATE_DEGRADED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "aggregate_degraded_total",
        "Aggregate answers served with a key degraded (its leg failed, was skipped or partly fetched), by aggregate and leg",
        &["aggregate", "leg"],
    )
});

/// Log lines dropped because their stream could not keep up, by stream.
pub static LOG_LINES_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "log_lines_dropped_total",
        "Log lines dropped because the stream's reader could not keep up, by stream (stdout|stderr)",
        &["stream"],
    )
});

/// Clients that were too slow, by phase (header|body|response).
pub static CLIENT_TIMEOUTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "client_timeouts_total",
        "Client connections cut for slowness, by phase (header|body|response)",
        &["phase"],
    )
});

/// Clients that went away mid-request, by phase.
pub static CLIENT_ABORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "client_aborts_total",
        "Clients that closed or reset their connection mid-request, by phase (header|body|response)",
        &["phase"],
    )
});

/// Connections refused at accept, by reason.
pub static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "connections_refused_total",
        "Client connections closed at accept, by reason (per_ip)",
        &["reason"],
    )
});

/// Request bodies by how they were read.
pub static REQUEST_BODIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "request_bodies_total",
        "Proxied request bodies by how they were read (buffered|streamed|budget_exhausted|too_large)",
        &["mode"],
    )
});

/// Bytes held by buffered request bodies right now.
pub static REQUEST_BODY_BUFFERED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "request_body_buffered_bytes",
        "Bytes of request bodies buffered in memory right now (bounded by limits.request_body_buffer_total_bytes)"
    )
    .unwrap_or_else(|e| panic!("metric request_body_buffered_bytes cannot be registered: {e}"))
});

/// Key set fetches per identity provider, by result (ok|error).
pub static JWKS_REFRESH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "jwks_refresh_total",
        "Key set fetches per identity provider, by issuer and result (ok|error)",
        &["issuer", "result"],
    )
});

/// Usable keys in each issuer's current set.
pub static JWKS_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "jwks_keys",
        "Usable signing keys in each identity provider's current key set",
        &["issuer"],
    )
});

/// Requests of split routes by the side they went to.
pub static SPLIT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "split_requests_total",
        "Requests of a route with a split, by route and the upstream group they went to",
        &["route", "upstream"],
    )
});

/// Mirrored copies by route and result.
pub static MIRROR_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mirror_requests_total",
        "Copies of a route's requests to its mirror group, by result (sent: answered; failed; dropped: over max_in_flight; not_buffered: a streamed body; no_backend)",
        &["route", "result"],
    )
});

/// Pingora's pool race: a pooled upstream connection taken by another request first.
pub static UPSTREAM_POOL_RACES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "upstream_pool_races_total",
        "Pooled upstream connections another request took first (a new one was opened; harmless)"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// WebSocket (and other upgraded) tunnels open now.
pub static WEBSOCKET_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "websocket_connections",
        "Upgraded connections (WebSocket tunnels) open now"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Tunnels ended, by route and how they ended.
pub static WEBSOCKET_SESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "websocket_sessions_total",
        "Upgraded connections ended, by route and result (client_closed, upstream_closed, idle_timeout, too_big, shutdown, client_error, upstream_error, refused: the backend did not switch, connect_error, origin_refused: a browser page of an origin the route's CORS policy refuses)",
        &["route", "result"],
    )
});

/// Bytes carried through tunnels, by route and direction.
pub static WEBSOCKET_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "websocket_bytes_total",
        "Bytes carried through upgraded connections, by route and direction (to_upstream, to_client)",
        &["route", "direction"],
    )
});

/// gRPC calls by route and the `grpc-status` they ended with.
pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "grpc_requests_total",
        "gRPC calls, by route and grpc_status (the code the call ended with, the gateway's own errors included; none: the stream was cut without one)",
        &["route", "grpc_status"],
    )
});

/// Lookups of upstream groups' backend names by result.
pub static DNS_RESOLUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "dns_resolutions_total",
        "Lookups of upstream groups' backend names (A/AAAA or SRV), by group and result (ok|error)",
        &["group", "result"],
    )
});

/// Discovered backends of each group by state.
pub static UPSTREAM_BACKENDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "upstream_backends",
        "Backends of a group found by DNS, by state (serving; pending: discovered, not yet past their first health check)",
        &["group", "state"],
    )
});

/// Verified client certificates (mTLS) by whether they named an identity.
pub static CLIENT_CERTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tls_client_certificates_total",
        "Verified client certificates, by result (verified|no_identity: neither a URI SAN nor a printable CN)",
        &["result"],
    )
});

/// Calls to introspection endpoints by issuer and answer.
pub static INTROSPECTION: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "introspection_requests_total",
        "Calls to an issuer's token introspection endpoint, by answer (active|inactive|error)",
        &["issuer", "result"],
    )
});

/// Keys withdrawn by each issuer (published by one fetch, absent from the next).
pub static JWKS_WITHDRAWN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "jwks_keys_withdrawn_total",
        "Keys an identity provider stopped publishing (tokens verified with them are refused from then on)",
        &["issuer"],
    )
});

/// Requests waiting for an identity provider's next permitted key fetch (a `kid` not yet
/// published when it arrived).
pub static JWKS_WAITING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "jwks_waiting_requests",
        "Requests waiting for an identity provider's next permitted key fetch (a new kid)",
        &["issuer"],
    )
});

/// Seconds since each issuer's set was last fetched successfully.
pub static JWKS_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "jwks_age_seconds",
        "Seconds since each identity provider's key set was last fetched successfully (-1: never)",
        &["issuer"],
    )
});

/// When each served certificate stops being valid (unix seconds), by its first name.
pub static TLS_CERT_EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tls_certificate_expiry_timestamp_seconds",
        "notAfter of each served certificate (unix seconds), labelled by its first SAN",
        &["certificate"],
    )
});

/// Certificate reloads by result (ok: a changed pair swapped in; error: refused, old kept).
pub static TLS_RELOAD: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tls_reload_total",
        "Certificate pairs reloaded from changed files (ok) or refused by their checks (error)",
        &["result"],
    )
});

/// TLS handshakes that failed, timed out, or could not be given a certificate.
pub static TLS_HANDSHAKE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tls_handshake_errors_total",
        "TLS handshakes that failed (bad client, protocol refused, timeout, no certificate)"
    )
    .unwrap_or_else(|e| panic!("metric tls_handshake_errors_total cannot be registered: {e}"))
});

/// h2 client connections the gateway cut for abuse, by reason (`rapid_reset`).
pub static H2_CONNECTIONS_CUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "h2_connections_cut_total",
        "h2 client connections closed for abuse, by reason (rapid_reset: streams reset in a loop)",
        &["reason"],
    )
});

/// Bytes through the response compressor, by coding and stage (`in`: as the service or the
/// aggregate made them, `out`: as sent).
pub static COMPRESSION_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "compression_bytes_total",
        "Response bytes through the compressor, by algorithm and stage (in|out)",
        &["algorithm", "stage"],
    )
});

/// Answers compressed, by coding and how (`stream`: proxied, `whole`: an aggregate compressed
/// for this request, `memo`: a cached aggregate's compressed copy reused).
pub static COMPRESSED_RESPONSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "compressed_responses_total",
        "Answers sent compressed, by algorithm and how (stream|whole|memo)",
        &["algorithm", "how"],
    )
});

/// `/readyz` answers of 503, by the check that failed.
pub static READINESS_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "readiness_refusals_total",
        "Readiness probes answered 503, by the failed check (keys|upstreams|store)",
        &["check"],
    )
});

/// Configuration reloads by result (`ok`, `unchanged`, `error`).
pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "config_reload_total",
        "Configuration reloads (SIGHUP or watch), by result (ok|unchanged|error)",
        &["result"],
    )
});

/// The running configuration's generation: 1 at start, +1 per applied reload.
pub static CONFIG_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "config_generation",
        "Generation of the running configuration (1 at start, +1 per applied reload)"
    )
    .unwrap_or_else(|e| panic!("metric config_generation cannot be registered: {e}"))
});

/// The build: 1, with the gateway's and Pingora's versions as labels.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "gateway_build_info",
        "The running build: 1, with the gateway's version and the Pingora version it was built with",
        &["version", "pingora"],
    )
});

/// 1, labelled with the running conf file's fingerprint.
pub static CONFIG_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "config_info",
        "The running configuration: 1, with the conf file's fingerprint as config_hash",
        &["config_hash"],
    )
});

/// Sampled spans that never reached the collector, by reason (`queue_full`, `export_failed`).
pub static TRACING_SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tracing_spans_dropped_total",
        "Finished spans not exported, by reason (queue_full|export_failed)",
        &["reason"],
    )
});

/// Spans the collector accepted.
pub static TRACING_SPANS_EXPORTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tracing_spans_exported_total",
        "Finished spans the collector accepted"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Export requests to the collector, by result (`ok`, `error`).
pub static TRACING_EXPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tracing_export_requests_total",
        "OTLP export requests, by result (ok|error; an error drops the batch)",
        &["result"],
    )
});

/// Spans waiting for export when the last batch was taken.
pub static TRACING_QUEUE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tracing_queue_spans",
        "Finished spans waiting for export (bounded by gateway.tracing.max_queue)"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Changes of a Redis Cluster's set of masters (failovers, resharding), as the watch saw them.
pub static REDIS_TOPOLOGY_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "redis_topology_changes_total",
        "Changes of the Redis Cluster's masters seen by the gateway (failovers, resharding)"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Masters of the Redis Cluster at the last reading (0 until the first).
pub static REDIS_CLUSTER_MASTERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redis_cluster_masters",
        "Masters of the Redis Cluster serving slots at the gateway's last reading"
    )
    .unwrap_or_else(|e| panic!("metric cannot be registered: {e}"))
});

/// Forces registration so every family shows on `/metrics` from the first scrape. Process
/// metrics (CPU seconds, resident memory, open fds) come with the default registry itself,
/// through the `prometheus` crate's `process` feature.
pub fn init() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&BACKEND_HEALTHY);
    LazyLock::force(&UPSTREAM_CONNECTIONS);
    LazyLock::force(&RATE_LIMIT_DECISIONS);
    LazyLock::force(&AUTH_FAILURES);
    LazyLock::force(&STORE_ERRORS);
    LazyLock::force(&CACHE_INVALIDATIONS);
    LazyLock::force(&CACHE_LOCAL_ENTRIES);
    LazyLock::force(&CACHE_INVALIDATION_FEED);
    LazyLock::force(&CACHE_INVALIDATION_MESSAGES);
    LazyLock::force(&UPSTREAM_REQUESTS);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&UPSTREAM_RETRIES);
    LazyLock::force(&BREAKER_STATE);
    LazyLock::force(&CACHE_REQUESTS);
    LazyLock::force(&AGGREGATE_DEGRADED);
    LazyLock::force(&LOG_LINES_DROPPED);
    LazyLock::force(&CLIENT_TIMEOUTS);
    LazyLock::force(&CLIENT_ABORTS);
    LazyLock::force(&CONNECTIONS_REFUSED);
    LazyLock::force(&REQUEST_BODIES);
    LazyLock::force(&REQUEST_BODY_BUFFERED);
    LazyLock::force(&JWKS_REFRESH);
    LazyLock::force(&JWKS_KEYS);
    LazyLock::force(&JWKS_AGE);
    LazyLock::force(&JWKS_WITHDRAWN);
    LazyLock::force(&INTROSPECTION);
    LazyLock::force(&CLIENT_CERTS);
    LazyLock::force(&DNS_RESOLUTIONS);
    LazyLock::force(&SPLIT_REQUESTS);
    LazyLock::force(&MIRROR_REQUESTS);
    LazyLock::force(&WEBSOCKET_CONNECTIONS);
    LazyLock::force(&UPSTREAM_POOL_RACES);
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PINGORA_VERSION")])
        .set(1);
    LazyLock::force(&WEBSOCKET_SESSIONS);
    LazyLock::force(&WEBSOCKET_BYTES);
    LazyLock::force(&GRPC_REQUESTS);
    LazyLock::force(&UPSTREAM_BACKENDS);
    LazyLock::force(&JWKS_WAITING);
    LazyLock::force(&TLS_CERT_EXPIRY);
    LazyLock::force(&TLS_RELOAD);
    LazyLock::force(&TLS_HANDSHAKE_ERRORS);
    LazyLock::force(&H2_CONNECTIONS_CUT);
    LazyLock::force(&COMPRESSION_BYTES);
    LazyLock::force(&COMPRESSED_RESPONSES);
    LazyLock::force(&CONFIG_RELOADS);
    LazyLock::force(&READINESS_REFUSALS);
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&CONFIG_INFO);
    LazyLock::force(&TRACING_SPANS_DROPPED);
    LazyLock::force(&TRACING_SPANS_EXPORTED);
    LazyLock::force(&TRACING_EXPORTS);
    LazyLock::force(&TRACING_QUEUE);
    LazyLock::force(&REDIS_TOPOLOGY_CHANGES);
    LazyLock::force(&REDIS_CLUSTER_MASTERS);
}

/// The `result` label of an attempt that either worked or did not (certificate reloads, key
/// set fetches, trace exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It worked.
    Ok,
    /// It failed; what was there before stays.
    Error,
}

impl Outcome {
    /// Both outcomes, for priming.
    pub(crate) const ALL: [Outcome; 2] = [Outcome::Ok, Outcome::Error];

    /// The `result` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }

    /// `Ok` for a success, `Error` otherwise.
    pub(crate) fn of<T, E>(result: &std::result::Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        }
    }
}

/// Bounded method label: the standard methods by name, anything else as `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Status as a label without allocating for the common codes.
pub fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    match status {
        0 => "0".into(),
        200 => "200".into(),
        201 => "201".into(),
        204 => "204".into(),
        301 => "301".into(),
        302 => "302".into(),
        304 => "304".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        429 => "429".into(),
        500 => "500".into(),
        502 => "502".into(),
        503 => "503".into(),
        504 => "504".into(),
        s => s.to_string().into(),
    }
}
