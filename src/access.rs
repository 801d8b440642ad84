//! The access log: exactly one JSON line per request on stdout, written in the logging phase.
//!
//! Written directly rather than through `tracing` so that the line's shape is fixed and cheap;
//! `RUST_LOG` still switches it (target `access`, level info).

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One request's record.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request ended.
    pub time: String,
    /// The request id (client's or generated).
    pub request_id: &'a str,
    /// The client address the limiter used.
    pub client_ip: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Path with query parameter names but not their values (values may carry secrets).
    pub path: String,
    /// Route name.
    pub route: &'a str,
    /// Status sent (0 when nothing was sent).
    pub status: u16,
    /// Time from the first byte read to the end, in milliseconds.
    pub duration_ms: f64,
    /// Backend that served a proxied request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Profile cache result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// Authenticated `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Response body bytes sent.
    pub bytes_sent: usize,
}

/// Whether the access log is switched on (`RUST_LOG` allows target `access` at info).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// `path?a=&b=`: keeps which parameters were sent, drops their values.
pub fn redact_query(path: &str, query: Option<&str>) -> String {
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
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Writes the record as one line; a failed write (closed stdout) is ignored, never fatal.
pub fn write(record: &AccessRecord<'_>) {
    let mut line = match serde_json::to_vec(record) {
        Ok(l) => l,
        Err(_) => return,
    };
    line.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&line);
}

/// RFC 3339 timestamp of now, millisecond precision.
pub fn now_rfc3339() -> String {
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
