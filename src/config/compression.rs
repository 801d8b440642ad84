//! `gateway.compression`: which answers are compressed, with what, from what size.

use serde::Deserialize;

use super::check::{invalid, ConfigError};

/// `gateway.compression` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompressionFile {
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default = "default_min_bytes")]
    min_bytes: usize,
    #[serde(default)]
    level: Option<serde_yaml::Value>,
    #[serde(default = "default_content_types")]
    content_types: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    ["zstd", "br", "gzip"].map(String::from).to_vec()
}
fn default_min_bytes() -> usize {
    1024
}
fn default_content_types() -> Vec<String> {
    ["application/json", "text/"].map(String::from).to_vec()
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// Zstandard (RFC 8878).
    Zstd,
    /// Brotli (RFC 7932).
    Br,
    /// gzip (RFC 1952).
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token, also the metric label.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// Every coding, for priming metrics.
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];
}

/// How hard to compress: a named preset or one number for every algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// gzip 1, br 1, zstd 1.
    Fastest,
    /// gzip 6, br 4, zstd 3: what nginx and Caddy use for answers compressed on the fly.
    Default,
    /// gzip 9, br 11, zstd 19: for answers compressed once and cached.
    Best,
    /// 1–9, the same number for every algorithm.
    Number(u32),
}

impl Level {
    /// The encoder level for `coding`.
    pub fn for_coding(self, coding: Coding) -> u32 {
        match (self, coding) {
            (Level::Fastest, _) => 1,
            (Level::Default, Coding::Gzip) => 6,
            (Level::Default, Coding::Br) => 4,
            (Level::Default, Coding::Zstd) => 3,
            (Level::Best, Coding::Gzip) => 9,
            (Level::Best, Coding::Br) => 11,
            (Level::Best, Coding::Zstd) => 19,
            (Level::Number(n), _) => n,
        }
    }
}

/// Response compression, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    /// The codings the gateway offers, in its order of preference (ties in `q` go to the first).
    pub algorithms: Vec<Coding>,
    /// Answers with a smaller `Content-Length` are sent as they are.
    pub min_bytes: usize,
    /// Encoder effort.
    pub level: Level,
    /// Media types compressed: `type/subtype` exactly, or `type/` for the whole type.
    pub content_types: Vec<String>,
}

/// Checks `gateway.compression`; `None` when the key is absent (nothing is compressed).
pub(super) fn resolve_compression(
    file: Option<CompressionFile>,
) -> Result<Option<CompressionConfig>, ConfigError> {
    let Some(f) = file else { return Ok(None) };
    let key = "gateway.compression";
    if f.algorithms.is_empty() {
        return Err(invalid(
            format!("{key}.algorithms"),
            "needs at least one of zstd, br, gzip",
        ));
    }
    let mut algorithms = Vec::new();
    for (i, a) in f.algorithms.iter().enumerate() {
        let c = match a.to_ascii_lowercase().as_str() {
            "zstd" => Coding::Zstd,
            "br" | "brotli" => Coding::Br,
            "gzip" => Coding::Gzip,
            _ => {
                return Err(invalid(
                    format!("{key}.algorithms[{i}]"),
                    format!("`{a}` is not one of zstd, br, gzip"),
                ))
            }
        };
        if algorithms.contains(&c) {
            return Err(invalid(
                format!("{key}.algorithms[{i}]"),
                format!("`{a}` is listed twice"),
            ));
        }
        algorithms.push(c);
    }
    let level = match &f.level {
        None => Level::Default,
        Some(serde_yaml::Value::String(s)) => match s.as_str() {
            "default" => Level::Default,
            "fastest" => Level::Fastest,
            "best" => Level::Best,
            _ => return Err(level_error(key)),
        },
        Some(serde_yaml::Value::Number(n)) => match n.as_u64() {
            Some(n @ 1..=9) => Level::Number(n as u32),
            _ => return Err(level_error(key)),
        },
        Some(_) => return Err(level_error(key)),
    };
    let mut content_types = Vec::new();
    for (i, t) in f.content_types.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        let valid = match t.split_once('/') {
            Some((ty, sub)) => {
                !ty.is_empty() && !sub.contains('/') && !t.contains(';') && !t.contains(' ')
            }
            None => false,
        };
        if !valid {
            return Err(invalid(
                format!("{key}.content_types[{i}]"),
                format!("`{t}` is not a media type (`type/subtype`, or `type/` for all of a type)"),
            ));
        }
        content_types.push(t);
    }
    Ok(Some(CompressionConfig {
        algorithms,
        min_bytes: f.min_bytes,
        level,
        content_types,
    }))
}

fn level_error(key: &str) -> ConfigError {
    invalid(
        format!("{key}.level"),
        "must be default, fastest, best or a number from 1 to 9",
    )
}
