//! Which roots the gateway's TLS clients load, and when.
//!
//! Every OpenSSL client context the openssl crate builds loads the default trust store
//! (`SslConnector::builder` calls `set_default_verify_paths`), and Pingora builds one per
//! connector: the proxy's HTTP/1 and HTTP/2 connectors, one per health check, two per HTTP
//! health check — about a megabyte each with the system bundle, whether or not anything is
//! ever verified against it. When no upstream group verifies against the system roots, the
//! process points `SSL_CERT_FILE` (read by OpenSSL at each load) at a one-certificate file
//! nobody has the key of, held in memory, never on disk, before any thread starts; a group a
//! reload adds that does need the system roots gets them per connection, loaded once.
//!
//! The gateway's HTTP clients (identity providers, introspection, services, collectors,
//! mirrors) share one rustls configuration whose system roots are read when the first
//! certificate is checked: a gateway that never speaks HTTPS to them never loads them.

use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, OnceLock};

use openssl::x509::X509;

/// Where the system roots are (probed before `SSL_CERT_FILE` is pointed elsewhere), and the
/// in-memory file the connectors load instead, when they do.
struct Roots {
    file: Option<PathBuf>,
    dir: Option<PathBuf>,
    /// Open for the process's life: connectors built later (health checks after a reload)
    /// read it by its `/proc/self/fd` path.
    empty: Option<std::fs::File>,
}

static ROOTS: OnceLock<Roots> = OnceLock::new();

/// The system roots, parsed once, for groups that verify against them when the connectors do
/// not hold them.
static SYSTEM: OnceLock<Option<Arc<Box<[X509]>>>> = OnceLock::new();

/// Decides what the connectors load: the system roots when an upstream group verifies
/// against them (`needed`), otherwise the one-certificate file. Call it before any thread
/// starts (it sets `SSL_CERT_FILE`); without a call every context loads the system roots.
pub fn init(needed: bool) {
    ROOTS.get_or_init(|| {
        let probe = openssl_probe::probe();
        let mut roots = Roots {
            file: probe.cert_file,
            dir: probe.cert_dir.into_iter().next(),
            empty: None,
        };
        if needed {
            return roots;
        }
        match empty_trust_file() {
            Ok((path, file)) => {
                // Before any thread: nothing reads the environment concurrently.
                std::env::set_var("SSL_CERT_FILE", path);
                roots.empty = Some(file);
            }
            Err(e) => eprintln!("gateway: upstream connectors load the system roots ({e})"),
        }
        roots
    });
}

/// The system roots for one connection of a group that verifies against them, when the
/// connectors do not hold them (`None`: the connector's own store has them).
pub(crate) fn peer_roots() -> Option<Arc<Box<[X509]>>> {
    let roots = ROOTS.get().filter(|r| r.empty.is_some())?;
    SYSTEM
        .get_or_init(|| load_system_roots(roots.file.as_ref()?))
        .clone()
}

/// The system bundle at `file`.
fn load_system_roots(file: &PathBuf) -> Option<Arc<Box<[X509]>>> {
    let certs = std::fs::read(file)
        .ok()
        .and_then(|pem| X509::stack_from_pem(&pem).ok())
        .filter(|c| !c.is_empty());
    if certs.is_none() {
        tracing::warn!(file = %file.display(), "the system certificate bundle could not be read: upstream certificates cannot be verified");
    }
    certs.map(|c| Arc::new(c.into_boxed_slice()))
}

/// A self-signed certificate whose key is thrown away, in an anonymous in-memory file.
fn empty_trust_file() -> Result<(String, std::fs::File), Box<dyn std::error::Error>> {
    use openssl::{asn1::Asn1Time, bn::BigNum, ec, hash::MessageDigest, nid::Nid, pkey::PKey};
    let key = PKey::from_ec_key(ec::EcKey::generate(
        ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?.as_ref(),
    )?)?;
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "gateway: no system roots loaded")?;
    let name = name.build();
    let mut cert = X509::builder()?;
    cert.set_version(2)?;
    cert.set_serial_number(BigNum::from_u32(1)?.to_asn1_integer()?.as_ref())?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(&key)?;
    cert.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    cert.set_not_after(Asn1Time::days_from_now(1)?.as_ref())?;
    cert.sign(&key, MessageDigest::sha256())?;
    let pem = cert.build().to_pem()?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the descriptor it returns is
    // owned by the `File` from here on.
    let fd = unsafe { libc::memfd_create(c"gateway-trust".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&pem)?;
    file.rewind()?;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    // Pingora unwraps its load of this file: make sure it reads back as a certificate first.
    X509::stack_from_pem(&std::fs::read(&path)?)?;
    Ok((path, file))
}

/// A `reqwest` client builder whose HTTPS trusts the system roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` honoured), read once for every client, when the first certificate is checked.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    static CONFIG: LazyLock<Option<rustls::ClientConfig>> = LazyLock::new(http_tls);
    let builder = reqwest::Client::builder();
    match &*CONFIG {
        Some(c) => builder.use_preconfigured_tls(c.clone()),
        None => builder,
    }
}

/// The clients' TLS: ring (as for Redis), the default protocol versions, h2 or HTTP/1.1.
fn http_tls() -> Option<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?;
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SystemRoots {
            provider,
            verifier: OnceLock::new(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(config)
}

/// rustls's own WebPKI verification against the system roots, built on first use.
#[derive(Debug)]
struct SystemRoots {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: OnceLock<Result<Arc<rustls::client::WebPkiServerVerifier>, String>>,
}

impl SystemRoots {
    fn verifier(&self) -> Result<&Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        self.verifier
            .get_or_init(|| {
                // The paths probed before `SSL_CERT_FILE` was pointed at the empty file.
                let found = match ROOTS.get() {
                    Some(r) => rustls_native_certs::load_certs_from_paths(
                        r.file.as_deref(),
                        r.dir.as_deref(),
                    ),
                    None => rustls_native_certs::load_native_certs(),
                };
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = "no system root certificates found (SSL_CERT_FILE, SSL_CERT_DIR)";
                    tracing::warn!("{why}: HTTPS to identity providers and services will fail");
                    return Err(why.to_string());
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }
}

impl rustls::client::danger::ServerCertVerifier for SystemRoots {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_trust_file_holds_one_certificate_and_reads_back_by_its_path() {
        let (path, _file) = empty_trust_file().expect("a trust file");
        let certs = X509::stack_from_pem(&std::fs::read(&path).expect("readable")).expect("PEM");
        assert_eq!(certs.len(), 1);
        // An OpenSSL context loads it as a CA file, as Pingora's connector does.
        let mut b =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("builder");
        b.set_ca_file(&path).expect("loaded");
    }

    #[test]
    fn the_system_bundle_is_found_and_parsed() {
        let file = openssl_probe::probe()
            .cert_file
            .expect("Debian's ca-certificates");
        let roots = load_system_roots(&file).expect("parsed");
        assert!(roots.len() > 10, "{} roots", roots.len());
    }
}
