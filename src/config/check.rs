//! What every section's checks share: the error that names a key, the environment the
//! overrides come from, what loading is for, and the checks of listen addresses and positive
//! numbers.

use std::net::SocketAddr;
use std::time::Duration;

/// A start-up configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path as given on the command line.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema (serde names the key and line).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value was well-formed YAML but not acceptable.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `gateway.routes[0].upstream`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A [`ConfigError::Invalid`] for `key`.
pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Source of environment variables, injectable for tests.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, key: &str) -> Option<String> {
        self(key)
    }
}

/// What loading is for: starting the gateway, or `-t` checking a file on another machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Start-up: `JWT_SECRET` is required and backend host names are resolved.
    Run,
    /// `-t`: everything start checks (secrets and files included), but host names only for
    /// form (a compose or Kubernetes service name does not resolve on the build machine).
    Check,
}

/// An `ip:port` listen address, its port overridden by `port_env` (variable, value) when set.
pub(super) fn parse_listen(
    key: &str,
    value: &str,
    port_env: Option<(&str, String)>,
) -> Result<SocketAddr, ConfigError> {
    let mut addr: SocketAddr = value
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not an ip:port address")))?;
    if let Some((var, port)) = port_env {
        let port = parse_port(&port)
            .ok_or_else(|| invalid(var, format!("`{port}` is not a port (1-65535)")))?;
        addr.set_port(port);
    }
    if addr.port() == 0 {
        return Err(invalid(key, "port 0 is not allowed"));
    }
    Ok(addr)
}

/// A port number, 0 refused.
pub(super) fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// `v`, refused when 0.
pub(super) fn positive(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// A positive number of milliseconds as a duration.
pub(super) fn millis(key: &str, v: u64) -> Result<Duration, ConfigError> {
    positive(key, v).map(Duration::from_millis)
}

/// A variable's value, unless unset or blank (`VAR=` in a compose file counts as unset).
pub(super) fn nonempty(env: &dyn Env, key: &str) -> Option<String> {
    env.var(key).filter(|v| !v.trim().is_empty())
}
