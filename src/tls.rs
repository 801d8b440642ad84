//! The HTTPS listener's certificates: read from the conf's files, checked (the key matches the
//! certificate, not expired), chosen per handshake by SNI, and swapped in while running when a
//! file changes. A pair that fails its check is never served: the one before it stays.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use openssl::asn1::Asn1Time;
use parking_lot::Mutex;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;

use crate::config::{CertPaths, TlsConfig};
use crate::metrics::Outcome;

/// One checked certificate chain and key.
pub struct Pair {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
    /// DNS names from the SANs (lowercase; `*.example.com` kept as written).
    names: Vec<String>,
    /// Unix time of `notAfter`.
    expires: i64,
}

impl Pair {
    /// Parses and checks a pair from PEM text; the error names what is wrong.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Pair, String> {
        let mut certs =
            X509::stack_from_pem(cert).map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the file".into());
        }
        let leaf = certs.remove(0);
        let key =
            PKey::private_key_from_pem(key).map_err(|e| format!("not a PEM private key: {e}"))?;
        let public = leaf
            .public_key()
            .map_err(|e| format!("the certificate's public key: {e}"))?;
        if !public.public_eq(&key) {
            return Err("the key does not belong to the certificate".into());
        }
        let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
        if leaf.not_after() < now {
            return Err(format!("the certificate expired ({})", leaf.not_after()));
        }
        let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
        let diff = epoch.diff(leaf.not_after()).map_err(|e| e.to_string())?;
        let expires = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
        let mut names: Vec<String> = leaf
            .subject_alt_names()
            .map(|sans| {
                sans.iter()
                    .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            // Old certificates name their host only in the subject's CN.
            names = leaf
                .subject_name()
                .entries_by_nid(pingora::tls::nid::Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
                .collect();
        }
        Ok(Pair {
            leaf,
            chain: certs,
            key,
            names,
            expires,
        })
    }

    /// The metric label: the first name, or `default` for a certificate with none.
    pub fn label(&self) -> &str {
        self.names.first().map_or("default", String::as_str)
    }

    /// Unix time after which the certificate is no longer valid.
    pub fn expires(&self) -> i64 {
        self.expires
    }
}

/// The pairs in conf order with their names indexed; the first pair is the default.
pub struct CertSet {
    pairs: Vec<Arc<Pair>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Indexes `pairs` (earlier entries win a name both carry).
    pub fn new(pairs: Vec<Arc<Pair>>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, p) in pairs.iter().enumerate() {
            for n in &p.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            pairs,
            exact,
            wildcard,
        }
    }

    /// The pair for a handshake's SNI: an exact name, else a wildcard one level up, else the
    /// first pair (clients without SNI, or names no certificate carries).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<Pair>> {
        let i = sni
            .map(str::to_ascii_lowercase)
            .and_then(|host| {
                let host = host.trim_end_matches('.');
                self.exact.get(host).copied().or_else(|| {
                    let (_, parent) = host.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.pairs.get(i)
    }
}

/// What was last read from one entry's files, to see whether they changed.
#[derive(Default, Clone, PartialEq, Eq)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The listener's certificates, shared by the handshake callback and the reloader.
pub struct Certificates {
    paths: Vec<CertPaths>,
    current: ArcSwap<CertSet>,
    /// Per entry: the contents last loaded or last refused (a refused pair is reported once).
    seen: Mutex<Vec<Seen>>,
    /// Per entry: changed contents that failed once and are given one more interval.
    pending: Mutex<Vec<Option<Seen>>>,
}

fn read(paths: &CertPaths) -> Result<Seen, String> {
    let cert = std::fs::read(&paths.cert).map_err(|e| format!("{}: {e}", paths.cert.display()))?;
    let key = std::fs::read(&paths.key).map_err(|e| format!("{}: {e}", paths.key.display()))?;
    Ok(Seen { cert, key })
}

impl Certificates {
    /// Reads and checks every pair; any failure is a start-up error naming the file.
    pub fn load(config: &TlsConfig) -> Result<Certificates, String> {
        let mut pairs = Vec::new();
        let mut seen = Vec::new();
        for (i, p) in config.certificates.iter().enumerate() {
            let files = read(p).map_err(|e| format!("gateway.tls.certificates[{i}]: {e}"))?;
            let pair = Pair::from_pem(&files.cert, &files.key).map_err(|e| {
                format!(
                    "gateway.tls.certificates[{i}] ({}, {}): {e}",
                    p.cert.display(),
                    p.key.display()
                )
            })?;
            pairs.push(Arc::new(pair));
            seen.push(files);
        }
        let certs = Certificates {
            paths: config.certificates.clone(),
            current: ArcSwap::from_pointee(CertSet::new(pairs)),
            pending: Mutex::new(vec![None; seen.len()]),
            seen: Mutex::new(seen),
        };
        certs.publish_expiry();
        Ok(certs)
    }

    /// The set in use.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Reads every entry's files again; changed pairs that pass the checks replace the old
    /// ones in one swap. Returns how many were replaced and the refusals (each reported once).
    pub fn reload(&self) -> (usize, Vec<String>) {
        let mut seen = self.seen.lock();
        let mut pending = self.pending.lock();
        let mut pairs = self.current.load().pairs.clone();
        let mut replaced = 0;
        let mut refused = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            // A file caught half-written or missing is read again next time.
            let Ok(files) = read(p) else { continue };
            if files == seen[i] {
                continue;
            }
            match Pair::from_pem(&files.cert, &files.key) {
                Ok(pair) => {
                    pairs[i] = Arc::new(pair);
                    replaced += 1;
                }
                // Certificate and key replaced one after the other: a mismatch may last until
                // the second file lands. Refused only when the same contents fail twice.
                Err(_) if pending[i].as_ref() != Some(&files) => {
                    pending[i] = Some(files);
                    continue;
                }
                Err(e) => refused.push(format!(
                    "gateway.tls.certificates[{i}] ({}): {e}",
                    p.cert.display()
                )),
            }
            pending[i] = None;
            seen[i] = files;
        }
        if replaced > 0 {
            self.current.store(Arc::new(CertSet::new(pairs)));
            self.publish_expiry();
        }
        (replaced, refused)
    }

    fn publish_expiry(&self) {
        // A replaced certificate's series goes: an expiry alert must never fire for a
        // certificate that is no longer served.
        crate::metrics::TLS_CERT_EXPIRY.reset();
        for p in &self.current.load().pairs {
            crate::metrics::TLS_CERT_EXPIRY
                .with_label_values(&[p.label()])
                .set(p.expires());
        }
    }
}

/// Picks the certificate for each handshake from the current set.
pub struct SniResolver(pub Arc<Certificates>);

/// The identity a verified client certificate gives (attached to the connection's TLS digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate's first URI subject alternative name (SPIFFE ids and the like), else
    /// its subject's common name.
    pub sub: String,
}

impl ClientCert {
    /// The identity of a verified peer certificate, if it names one that can be a header value.
    fn of(cert: &openssl::x509::X509Ref) -> Option<ClientCert> {
        let uri = cert
            .subject_alt_names()
            .and_then(|names| names.iter().find_map(|n| n.uri().map(str::to_string)));
        let cn = || {
            cert.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().to_string().ok())
        };
        let sub = uri.or_else(cn)?;
        let printable = !sub.is_empty() && sub.bytes().all(|b| (0x20..0x7f).contains(&b));
        printable.then_some(ClientCert { sub })
    }
}

/// Asks TLS clients for a certificate signed by `c.ca` (and refuses handshakes without one
/// when it is required). A certificate that does not verify always fails the handshake.
pub fn ask_client_certificates(
    settings: &mut pingora::listeners::tls::TlsSettings,
    c: &crate::config::ClientAuth,
) -> Result<(), String> {
    use pingora::tls::ssl::SslVerifyMode;
    let ca = c.ca.to_string_lossy();
    settings
        .set_ca_file(&c.ca)
        .map_err(|e| format!("gateway.tls.client_auth.ca: {ca}: {e}"))?;
    let pem = std::fs::read(&c.ca).map_err(|e| format!("gateway.tls.client_auth.ca: {ca}: {e}"))?;
    let mut names = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
    for cert in openssl::x509::X509::stack_from_pem(&pem).map_err(|e| e.to_string())? {
        let name = cert.subject_name().to_owned().map_err(|e| e.to_string())?;
        names.push(name).map_err(|e| e.to_string())?;
    }
    // Tells clients which CAs are accepted (a client with several certificates picks by it).
    settings.set_client_ca_list(names);
    let mut mode = SslVerifyMode::PEER;
    if c.required {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    settings.set_verify(mode);
    Ok(())
}

#[async_trait::async_trait]
impl TlsAccept for SniResolver {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // Only a verified chain gets here with a certificate (a failed one ends the handshake).
        let cert = ssl.peer_certificate()?;
        if ssl.verify_result() != openssl::x509::X509VerifyResult::OK {
            return None;
        }
        let identity = ClientCert::of(&cert);
        let result = if identity.is_some() {
            "verified"
        } else {
            "no_identity"
        };
        crate::metrics::CLIENT_CERTS
            .with_label_values(&[result])
            .inc();
        identity.map(|c| Arc::new(c) as Arc<dyn std::any::Any + Send + Sync>)
    }

    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let set = self.0.current();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(pair) = set.select(sni.as_deref()) else {
            return;
        };
        // Failing here fails the handshake (no certificate), which the client sees as an alert;
        // it is counted with every other failed handshake, from Pingora's report of it.
        let _ = ext::ssl_use_certificate(ssl, &pair.leaf).is_ok()
            && ext::ssl_use_private_key(ssl, &pair.key).is_ok()
            && pair
                .chain
                .iter()
                .all(|c| ext::ssl_add_chain_cert(ssl, c).is_ok());
    }
}

/// Reads the certificate files every `reload_interval` and swaps changed pairs in.
pub struct Reloader {
    certs: Arc<Certificates>,
    every: std::time::Duration,
}

impl Reloader {
    /// A reloader for `certs`.
    pub fn new(certs: Arc<Certificates>, every: std::time::Duration) -> Reloader {
        Reloader { certs, every }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.changed() => return,
            }
            let certs = self.certs.clone();
            let Ok((replaced, refused)) = tokio::task::spawn_blocking(move || certs.reload()).await
            else {
                continue;
            };
            if replaced > 0 {
                crate::metrics::TLS_RELOAD
                    .with_label_values(&[Outcome::Ok.label()])
                    .inc_by(replaced as u64);
                tracing::info!(replaced, "TLS certificates reloaded");
            }
            for e in refused {
                crate::metrics::TLS_RELOAD
                    .with_label_values(&[Outcome::Error.label()])
                    .inc();
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
            }
        }
    }
}

/// Creates `tls_reload_total` at 0 for both results, and the client-certificate series.
pub(crate) fn prime() {
    for result in ["verified", "no_identity"] {
        crate::metrics::CLIENT_CERTS.with_label_values(&[result]);
    }
    for result in Outcome::ALL {
        crate::metrics::TLS_RELOAD.with_label_values(&[result.label()]);
    }
}
