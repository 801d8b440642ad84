//! Throwaway certificates made with Debian's `openssl` CLI: a test CA and leaf certificates it
//! signs, in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and the directory its files live in.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM), for clients' `--cacert` and upstream `tls.ca`.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and key pair on disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new P-256 CA valid for 30 days.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=Gateway Test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        );
        TestCa {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
            dir,
        }
    }

    /// A leaf for `names` (SANs; the first is also the CN), valid `days`, written as
    /// `{file}.crt` / `{file}.key` in the CA's directory.
    pub fn leaf(&self, file: &str, names: &[&str], days: u32) -> Leaf {
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let ext = format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        );
        self.sign(file, &format!("/CN={}", names[0]), &ext, days)
    }

    /// A client certificate (`clientAuth`) with subject CN `cn` and, when given, a URI SAN
    /// (`spiffe://…`), valid 30 days, written as `{file}.crt` / `{file}.key`.
    pub fn client(&self, file: &str, cn: &str, uri: Option<&str>) -> Leaf {
        let mut ext =
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
                .to_string();
        if let Some(u) = uri {
            ext.push_str(&format!("subjectAltName=URI:{u}\n"));
        }
        self.sign(file, &format!("/CN={cn}"), &ext, 30)
    }

    /// A new key and a certificate for `subj` with extensions `ext`, signed by this CA.
    fn sign(&self, file: &str, subj: &str, ext_text: &str, days: u32) -> Leaf {
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{file}.ext")), ext_text).expect("ext file");
        let (crt, key, csr, ext) = (
            format!("{file}.crt"),
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.ext"),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subj,
            ],
            dir,
        );
        let days = days.to_string();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                &days,
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            dir,
        );
        Leaf {
            cert: dir.join(crt),
            key: dir.join(key),
        }
    }

    /// The CA's key (for tests that sign something themselves).
    pub fn key(&self) -> &Path {
        &self.key
    }
}
