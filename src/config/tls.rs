//! `gateway.tls` (the HTTPS listener and its certificates), `gateway.redirect_http` and an
//! upstream group's `tls`, as written and as checked. The listener's certificate files are read
//! and checked by [`crate::tls`]; an upstream CA file is read here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, ConfigError};

/// `gateway.tls` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    #[serde(default = "default_listen")]
    listen: String,
    certificates: Vec<CertFile>,
    #[serde(default = "default_min_version")]
    min_version: String,
    #[serde(default = "default_true")]
    http2: bool,
    #[serde(default = "default_reload_ms")]
    reload_interval_ms: u64,
    #[serde(default = "default_h2_streams")]
    h2_max_concurrent_streams: u32,
    #[serde(default = "default_h2_header_list")]
    h2_max_header_list_bytes: u32,
    #[serde(default)]
    client_auth: Option<ClientAuthFile>,
}

/// `gateway.tls.client_auth` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientAuthFile {
    ca: String,
    #[serde(default)]
    required: bool,
}

/// Client certificates (mTLS) on the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file of the CAs whose client certificates are accepted.
    pub ca: PathBuf,
    /// A handshake without a client certificate is refused.
    pub required: bool,
}

/// Concurrent h2 streams per client connection unless `tls.h2_max_concurrent_streams` says
/// (Pingora 0.9's own default).
pub const DEFAULT_H2_STREAMS: u32 = 100;
/// The largest h2 header list a client may send unless `tls.h2_max_header_list_bytes` says.
pub const DEFAULT_H2_HEADER_LIST_BYTES: u32 = 64 * 1024;

fn default_h2_streams() -> u32 {
    DEFAULT_H2_STREAMS
}
fn default_h2_header_list() -> u32 {
    DEFAULT_H2_HEADER_LIST_BYTES
}

fn default_listen() -> String {
    "0.0.0.0:8443".into()
}
fn default_min_version() -> String {
    "1.2".into()
}
fn default_true() -> bool {
    true
}
fn default_reload_ms() -> u64 {
    2000
}

/// One certificate entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFile {
    cert: String,
    key: String,
}

/// The lowest TLS version the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// A certificate chain file (leaf first) and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM: the leaf certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key.
    pub key: PathBuf,
}

/// The HTTPS listener, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Address of the TLS listener (`HTTPS_PORT` replaces the port).
    pub listen: SocketAddr,
    /// Chosen by SNI from each certificate's names; the first answers clients without SNI.
    pub certificates: Vec<CertPaths>,
    /// Lowest accepted protocol version.
    pub min_version: TlsVersion,
    /// Offer h2 by ALPN (beside HTTP/1.1).
    pub http2: bool,
    /// How often the files are read again to see whether they changed.
    pub reload_interval: Duration,
    /// Streams one h2 client connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest decoded header list an h2 request may carry.
    pub h2_max_header_list_bytes: u32,
    /// Client certificates asked for and verified, when set.
    pub client_auth: Option<ClientAuth>,
}

impl TlsFile {
    /// Checks the section; `listen` is the already-parsed address (with `HTTPS_PORT`).
    pub(super) fn resolve(
        self,
        parse_listen: impl FnOnce(&str) -> Result<SocketAddr, ConfigError>,
    ) -> Result<TlsConfig, ConfigError> {
        let listen = parse_listen(&self.listen)?;
        if self.certificates.is_empty() {
            return Err(invalid(
                "gateway.tls.certificates",
                "needs at least one { cert, key } entry",
            ));
        }
        let mut certificates = Vec::with_capacity(self.certificates.len());
        for (i, c) in self.certificates.into_iter().enumerate() {
            for (what, path) in [("cert", &c.cert), ("key", &c.key)] {
                if path.trim().is_empty() {
                    return Err(invalid(
                        format!("gateway.tls.certificates[{i}].{what}"),
                        "must be a file path",
                    ));
                }
            }
            certificates.push(CertPaths {
                cert: c.cert.into(),
                key: c.key.into(),
            });
        }
        let min_version = match self.min_version.as_str() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                return Err(invalid(
                    "gateway.tls.min_version",
                    format!("`{other}` is not \"1.2\" or \"1.3\""),
                ))
            }
        };
        if self.reload_interval_ms < 100 {
            return Err(invalid(
                "gateway.tls.reload_interval_ms",
                "must be at least 100 (the files are read again each time)",
            ));
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err(invalid(
                "gateway.tls.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.h2_max_header_list_bytes < 1024 {
            return Err(invalid(
                "gateway.tls.h2_max_header_list_bytes",
                "must be at least 1024",
            ));
        }
        let client_auth = match self.client_auth {
            None => None,
            Some(c) => {
                // Read now, so that `-t` and start-up name a bad file.
                let pem = std::fs::read(&c.ca)
                    .map_err(|e| invalid("gateway.tls.client_auth.ca", format!("{}: {e}", c.ca)))?;
                if openssl::x509::X509::stack_from_pem(&pem).map_or(true, |s| s.is_empty()) {
                    return Err(invalid(
                        "gateway.tls.client_auth.ca",
                        format!("{}: no PEM certificate", c.ca),
                    ));
                }
                Some(ClientAuth {
                    ca: c.ca.into(),
                    required: c.required,
                })
            }
        };
        Ok(TlsConfig {
            client_auth,
            listen,
            certificates,
            min_version,
            http2: self.http2,
            reload_interval: Duration::from_millis(self.reload_interval_ms),
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            h2_max_header_list_bytes: self.h2_max_header_list_bytes,
        })
    }
}

/// TLS to a group's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// Server name sent and, with `verify`, checked against the certificate.
    pub sni: String,
    /// Check the chain (system roots, or `ca`) and the name; a failure is a 502, never plain.
    pub verify: bool,
    /// Roots to trust instead of the system's.
    pub ca: Option<std::sync::Arc<Box<[openssl::x509::X509]>>>,
    /// This group's own connection-pool key: Pingora's pool key leaves the CA out, so a group
    /// trusting other roots must never reuse a connection verified for another group.
    pub pool_key: u64,
}

impl UpstreamTls {
    /// Sets verification and trusted roots on a peer's options (proxied tries and health
    /// checks alike).
    pub fn apply(&self, options: &mut pingora::upstreams::peer::PeerOptions) {
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
        options.ca = match &self.ca {
            Some(ca) => Some(ca.clone()),
            None if self.verify => crate::trust::peer_roots(),
            None => None,
        };
    }
}

/// Checks a group's `tls`: the name to send (given, or the first backend's host name), and
/// the CA file when one is named (read now, so `-t` and start-up name a bad file).
pub(super) fn upstream_tls(
    t: UpstreamTlsFile,
    group: &str,
    backends: &[String],
    key: &dyn Fn(&str) -> String,
) -> Result<UpstreamTls, ConfigError> {
    let host_of = |b: &String| {
        b.rsplit_once(':')
            .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())
    };
    let host = backends
        .first()
        .and_then(host_of)
        .filter(|h| h.parse::<std::net::IpAddr>().is_err());
    if t.sni.is_none() && t.verify {
        // One name is sent to every backend: taken from the first, it would fail the name
        // check on every backend that carries another.
        if let Some(other) = backends
            .iter()
            .filter_map(host_of)
            .find(|h| Some(h) != host.as_ref())
        {
            if host.is_some() {
                return Err(invalid(
                    key("tls.sni"),
                    format!(
                        "is needed: the backends have different host names ({} and {other}); set the name their certificates carry",
                        host.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    let sni = match t.sni {
        Some(s) if !s.trim().is_empty() => s,
        Some(_) => return Err(invalid(key("tls.sni"), "must be a host name")),
        None => match host {
            Some(h) => h.to_string(),
            None if t.verify => {
                return Err(invalid(
                    key("tls.sni"),
                    "is needed to verify backends given by IP address (the name their certificate carries)",
                ))
            }
            None => String::new(),
        },
    };
    let ca = match t.ca {
        None => None,
        Some(path) => {
            let pem =
                std::fs::read(&path).map_err(|e| invalid(key("tls.ca"), format!("{path}: {e}")))?;
            let certs = openssl::x509::X509::stack_from_pem(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| invalid(key("tls.ca"), format!("{path}: no PEM certificate")))?;
            Some(std::sync::Arc::new(certs.into_boxed_slice()))
        }
    };
    let pool_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        group.hash(&mut h);
        h.finish()
    };
    Ok(UpstreamTls {
        sni,
        verify: t.verify,
        ca,
        pool_key,
    })
}

/// `upstreams.<name>.tls` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTlsFile {
    #[serde(default)]
    pub(super) sni: Option<String>,
    #[serde(default = "default_true")]
    pub(super) verify: bool,
    #[serde(default)]
    pub(super) ca: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str, backends: &[&str]) -> Result<UpstreamTls, ConfigError> {
        let file: UpstreamTlsFile = serde_yaml::from_str(yaml).expect("yaml");
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        upstream_tls(file, "g", &backends, &|k| {
            format!("gateway.upstreams.g.{k}")
        })
    }

    #[test]
    fn the_name_sent_to_backends_is_one_they_all_carry() {
        let two = ["a.example:443", "b.example:443"];
        let e = check("{}", &two).unwrap_err().to_string();
        assert!(
            e.contains("gateway.upstreams.g.tls.sni") && e.contains("b.example"),
            "{e}"
        );
        assert_eq!(
            check("{sni: api.internal}", &two).unwrap().sni,
            "api.internal"
        );
        assert_eq!(check("{verify: false}", &two).unwrap().sni, "a.example");
        let same = ["a.example:443", "a.example:8443"];
        assert_eq!(check("{}", &same).unwrap().sni, "a.example");
        assert!(
            check("{}", &["10.0.0.5:443"]).is_err(),
            "an IP needs a name"
        );
    }
}
