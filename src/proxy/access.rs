//! The access log: exactly one JSON line per request on stdout, written in the logging phase.
//!
//! Written directly rather than through `tracing` so that the line's shape is fixed and cheap;
//! `RUST_LOG` still switches it (target `access`, level info). Lines go through the
//! non-blocking stdout queue of [`crate::logging`], so a stuck reader never holds a request.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One request's record.
#[derive(Serialize)]
pub(crate) struct AccessRecord<'a> {
    /// RFC 3339 time the request ended.
    pub(crate) time: String,
    /// The request id (client's or generated).
    pub(crate) request_id: &'a str,
    /// The client address the limiter used.
    pub(crate) client_ip: Option<IpAddr>,
    /// Request method.
    pub(crate) method: &'a str,
    /// `http/1.1` or `h2`.
    pub(crate) protocol: &'a str,
    /// The configuration generation the request ran on.
    pub(crate) config_generation: u64,
    /// Path with query parameter names but not their values (values may carry secrets).
    pub(crate) path: String,
    /// The path as the client sent it, when normalisation changed it (query values dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) original_path: Option<String>,
    /// Route name.
    pub(crate) route: &'a str,
    /// The aggregate that answered, on aggregate routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aggregate: Option<&'a str>,
    /// Status sent (0 when nothing was sent).
    pub(crate) status: u16,
    /// Time from the first byte read to the end, in milliseconds.
    pub(crate) duration_ms: f64,
    /// The upstream group a proxied request went to (a split's side, for one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_group: Option<&'a str>,
    /// Backend that served a proxied request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<String>,
    /// Aggregate cache result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<&'a str>,
    /// Authenticated `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
    /// Response body bytes sent.
    pub(crate) bytes_sent: usize,
    /// The request's trace (tracing on; also for unsampled requests, whose id the services
    /// received in `traceparent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<&'a str>,
    /// How an upgraded connection (WebSocket tunnel) ended; its line is written then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tunnel: Option<&'static str>,
    /// The `grpc-status` a gRPC call ended with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grpc_status: Option<u32>,
}

/// Writes `ctx`'s request's line (the logging phase's last step).
pub(super) fn log(
    session: &pingora::proxy::Session,
    ctx: &super::ctx::Ctx,
    protocol: &str,
    status: u16,
    elapsed: Duration,
    trace_id: Option<&str>,
) {
    use super::routes::Route;
    let req = session.req_header();
    write(&AccessRecord {
        time: now_rfc3339(),
        request_id: &ctx.request_id,
        config_generation: ctx.snap.generation,
        client_ip: ctx.client.as_ref().map(|c| c.ip),
        method: req.method.as_str(),
        protocol,
        path: redact_query(req.uri.path(), req.uri.query()),
        original_path: ctx.original_target.as_deref().map(|t| {
            let (p, q) = t.split_once('?').map_or((t, None), |(p, q)| (p, Some(q)));
            redact_query(p, q)
        }),
        route: ctx.route.label(),
        upstream_group: ctx.group.as_deref().map(|g| &*g.name),
        aggregate: match &ctx.route {
            Route::Aggregate(a) => Some(a.name()),
            _ => None,
        },
        status,
        duration_ms: millis(elapsed),
        upstream: ctx.backend.backend().map(|b| b.addr.to_string()),
        cache: ctx.cache.map(crate::aggregate::CacheStatus::header_value),
        user: ctx.identity.as_ref().map(|i| i.sub.as_str()),
        bytes_sent: session.body_bytes_sent(),
        trace_id,
        tunnel: ctx.tunnel,
        grpc_status: ctx.grpc.as_ref().and_then(|g| g.status),
    });
}

/// Whether the access log is switched on (`RUST_LOG` allows target `access` at info).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// `path?a=&b=`: keeps which parameters were sent, drops their values.
pub(crate) fn redact_query(path: &str, query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return path.to_string();
    };
    let mut out = String::with_capacity(path.len() + q.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair.split('=').next().unwrap_or(""));
        out.push('=');
    }
    out
}

/// Milliseconds with microsecond precision.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Whether access lines are text (`gateway.log.access_format`), set once at start.
static TEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chooses the access log's format: `text` or `json` as configured, else text when stdout is
/// a terminal (a person reading) and JSON otherwise (a log pipeline).
pub(crate) fn set_format(configured: Option<crate::config::AccessFormat>) {
    use std::io::IsTerminal;
    let text = match configured {
        Some(crate::config::AccessFormat::Text) => true,
        Some(crate::config::AccessFormat::Json) => false,
        None => std::io::stdout().is_terminal(),
    };
    TEXT.store(text, std::sync::atomic::Ordering::Relaxed);
}

/// Queues the record as one line (dropped and counted if stdout cannot keep up).
pub(crate) fn write(record: &AccessRecord<'_>) {
    let mut line = Vec::with_capacity(320);
    if TEXT.load(std::sync::atomic::Ordering::Relaxed) {
        line = text_line(record).into_bytes();
    } else if serde_json::to_writer(&mut line, record).is_err() {
        return;
    }
    line.push(b'\n');
    crate::logging::stdout().write_line(line);
}

/// One readable line: time, client, method, path, status and duration first, then the rest
/// as key=value (only what the request has).
fn text_line(r: &AccessRecord<'_>) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{} {} {} {} {} {}ms route={}",
        r.time,
        r.client_ip
            .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
        r.method,
        r.path,
        r.status,
        r.duration_ms,
        r.route
    );
    let mut kv = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            let _ = write!(s, " {k}={v}");
        }
    };
    kv("upstream", r.upstream.as_deref());
    kv("group", r.upstream_group);
    kv("aggregate", r.aggregate);
    kv("cache", r.cache);
    kv("user", r.user);
    kv("tunnel", r.tunnel);
    kv("original_path", r.original_path.as_deref());
    kv("trace_id", r.trace_id);
    if let Some(g) = r.grpc_status {
        let _ = write!(s, " grpc_status={g}");
    }
    let _ = write!(
        s,
        " bytes={} id={} protocol={}",
        r.bytes_sent, r.request_id, r.protocol
    );
    s
}

/// RFC 3339 timestamp of now, millisecond precision.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_dropped() {
        assert_eq!(redact_query("/a", None), "/a");
        assert_eq!(
            redact_query("/a", Some("token=s3cret&b=2&flag")),
            "/a?token=&b=&flag="
        );
    }
}
