//! `gateway.limits`: header and body caps, client timeouts, pipelining, connections per
//! address, and how request bodies are buffered.

use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, millis, positive, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsFile {
    pub(super) max_request_header_bytes: usize,
    pub(super) max_authorization_bytes: usize,
    pub(super) header_read_timeout_ms: u64,
    pub(super) keepalive_timeout_ms: u64,
    pub(super) pipeline_depth: u64,
    pub(super) request_body_buffer_bytes: u64,
    pub(super) request_body_buffer_total_bytes: u64,
    pub(super) body_read_timeout_ms: u64,
    pub(super) max_request_body_bytes: u64,
    pub(super) max_connections_per_ip: u64,
    pub(super) response_write_timeout_ms: u64,
    pub(super) path: PathRules,
    pub(super) underscores_in_headers: bool,
}

/// `limits.path`: how request paths are normalised before routing (docs/LIMITS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathRules {
    /// `//` is read as `/`.
    pub merge_slashes: bool,
    /// What `%2F` inside a segment is.
    pub encoded_slash: EncodedSlash,
    /// What a raw `\` is.
    pub backslash: Backslash,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Keep,
            backslash: Backslash::Reject,
        }
    }
}

/// `%2F` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlash {
    /// Stays `%2F`, part of its segment (the backend decides what it means).
    Keep,
    /// Becomes `/`, a segment separator, before routing.
    Decode,
    /// 400.
    Reject,
}

/// A raw backslash in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backslash {
    /// 400 (some servers read `\` as `/`, which would undo normalisation behind us).
    Reject,
    /// Forwarded as `%5C`, an ordinary byte of its segment.
    Encode,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_header_bytes: 32 * 1024,
            max_authorization_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            pipeline_depth: 16,
            request_body_buffer_bytes: 64 * 1024,
            request_body_buffer_total_bytes: 64 * 1024 * 1024,
            body_read_timeout_ms: 10_000,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_connections_per_ip: 256,
            response_write_timeout_ms: 30_000,
            path: PathRules::default(),
            underscores_in_headers: false,
        }
    }
}

/// Request size caps.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Sum of request header names and values.
    pub max_request_header_bytes: usize,
    /// Length of the Authorization header value.
    pub max_authorization_bytes: usize,
    /// Time from a request's first byte to the end of its header.
    pub header_read_timeout: Duration,
    /// How long a client connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    /// Pipelined requests answered in a row on one connection before it is closed.
    pub pipeline_depth: usize,
    /// How request bodies are read, unless a route says otherwise.
    pub body: BodyPolicy,
    /// Bytes all buffered request bodies together may hold; past it, bodies stream.
    pub body_buffer_total: usize,
    /// Concurrent client connections per address (IPv6: per /64); 0 = no cap.
    pub max_connections_per_ip: u32,
    /// Longest a response write may wait on a client that does not read.
    pub response_write_timeout: Duration,
    /// How request paths are normalised.
    pub path: PathRules,
    /// Whether header names with `_` are forwarded (else dropped and counted).
    pub underscores_in_headers: bool,
}

/// The most a request body can be buffered: Pingora's retry buffer, which holds the body
/// until it is sent, keeps 64 KiB.
pub const MAX_BODY_BUFFER: usize = 64 * 1024;

/// How one route reads request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Bodies up to this size are read whole before a backend is chosen; 0 = always stream.
    pub buffer_bytes: usize,
    /// Larger bodies are refused with 413.
    pub max_bytes: u64,
    /// Whole-body deadline when buffered; longest pause between two reads when streamed.
    pub read_timeout: Duration,
}

impl LimitsFile {
    pub(super) fn resolve(self) -> Result<LimitsConfig, ConfigError> {
        Ok(LimitsConfig {
            max_request_header_bytes: positive(
                "gateway.limits.max_request_header_bytes",
                self.max_request_header_bytes as u64,
            )? as usize,
            max_authorization_bytes: positive(
                "gateway.limits.max_authorization_bytes",
                self.max_authorization_bytes as u64,
            )? as usize,
            header_read_timeout: millis(
                "gateway.limits.header_read_timeout_ms",
                self.header_read_timeout_ms,
            )?,
            keepalive_timeout: millis(
                "gateway.limits.keepalive_timeout_ms",
                self.keepalive_timeout_ms,
            )?,
            pipeline_depth: positive("gateway.limits.pipeline_depth", self.pipeline_depth)?
                as usize,
            body: BodyPolicy {
                buffer_bytes: buffer_bytes(
                    "gateway.limits.request_body_buffer_bytes",
                    self.request_body_buffer_bytes,
                )?,
                max_bytes: positive(
                    "gateway.limits.max_request_body_bytes",
                    self.max_request_body_bytes,
                )?,
                read_timeout: millis(
                    "gateway.limits.body_read_timeout_ms",
                    self.body_read_timeout_ms,
                )?,
            },
            body_buffer_total: usize::try_from(self.request_body_buffer_total_bytes).map_err(
                |_| {
                    invalid(
                        "gateway.limits.request_body_buffer_total_bytes",
                        "too large",
                    )
                },
            )?,
            max_connections_per_ip: u32::try_from(self.max_connections_per_ip).map_err(|_| {
                invalid(
                    "gateway.limits.max_connections_per_ip",
                    "must be at most 4294967295 (0 = no cap)",
                )
            })?,
            response_write_timeout: millis(
                "gateway.limits.response_write_timeout_ms",
                self.response_write_timeout_ms,
            )?,
            path: self.path,
            underscores_in_headers: self.underscores_in_headers,
        })
    }
}

/// A body buffer size: Pingora keeps a buffered body in its retry buffer, which holds 64 KiB,
/// so a larger setting would silently lose bodies; it is refused at start-up instead.
pub(super) fn buffer_bytes(key: &str, v: u64) -> Result<usize, ConfigError> {
    if v > MAX_BODY_BUFFER as u64 {
        return Err(invalid(
            key,
            format!("{v} is over {MAX_BODY_BUFFER}, the most a request body can be buffered (0 = always stream)"),
        ));
    }
    Ok(v as usize)
}
