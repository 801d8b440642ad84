//! The HTTPS listener with real clients (Debian's curl and openssl) and certificates from a
//! throwaway CA: choice by SNI, protocol floor, h2 and HTTP/1.1 behaving as plaintext, reload
//! without a restart, the redirect, and TLS/h2 to an nginx backend.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{client, eventually, free_port, token, EchoServer, Gateway, Leaf, TestCa};

/// Runs curl with `args` off the runtime (the echo upstream shares it).
async fn curl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// What `openssl s_client` printed offering only TLS 1.1 (with the ciphers it needs allowed).
async fn offer_tls11(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
            .args(["-servername", "a.test", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

/// `tls_handshake_errors_total` now.
async fn handshake_errors(gw: &Gateway) -> f64 {
    common::metric_sum(&gw.metrics().await, "tls_handshake_errors_total ")
}

/// `curl` to `https://{host}:{port}{path}` resolved to 127.0.0.1 and checked against `ca`.
fn https_args(ca: &Path, host: &str, port: u16, path: &str) -> Vec<String> {
    vec![
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
        format!("https://{host}:{port}{path}"),
    ]
}

/// The subject CN the server presented, from curl's verbose output.
fn subject(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: CN="))
        .unwrap_or("")
        .to_string()
}

fn tls_section(port: u16, certs: &[&Leaf], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert: \"{}\", key: \"{}\" }}",
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    format!(
        "tls:\n  listen: \"127.0.0.1:{port}\"\n  certificates: [{}]\n{extra}",
        list.join(", ")
    )
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_old_protocols_are_refused() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let b = ca.leaf("b", &["b.test", "*.b.test"], 30);
    let port = free_port();
    let gw = Gateway::start(&tls_section(port, &[&a, &b], ""), &[]).await;
    for (host, want) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.b.test", "b.test"),
    ] {
        let mut args = vec!["-v".to_string(), "-o".into(), "/dev/null".into()];
        args.extend(https_args(&ca.cert, host, port, "/healthz"));
        let out = curl(args).await;
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(subject(&out), want, "{host}");
    }
    // No SNI (an IP address): the first certificate. Its name is not the IP, so only print it.
    let out = curl(vec![
        "-vk".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("https://127.0.0.1:{port}/healthz"),
    ])
    .await;
    assert_eq!(subject(&out), "a.test", "the default certificate");
    // TLS 1.1 offered by a client that allows it (OpenSSL 3 refuses it by itself at its default
    // security level, so curl's failure would prove nothing): the gateway's alert refuses it.
    let before = handshake_errors(&gw).await;
    let hello = offer_tls11(port).await;
    assert!(
        hello.contains("alert protocol version"),
        "the server's protocol_version alert: {hello}"
    );
    eventually(
        "the refused handshake counted",
        Duration::from_secs(5),
        async || handshake_errors(&gw).await == before + 1.0,
    )
    .await;
    drop(gw);

    // With min_version 1.3, TLS 1.2 is refused and 1.3 served.
    let port = free_port();
    let _gw = Gateway::start(&tls_section(port, &[&a], "  min_version: \"1.3\"\n"), &[]).await;
    let mut v12 = vec!["--tls-max".to_string(), "1.2".into()];
    v12.extend(https_args(&ca.cert, "a.test", port, "/healthz"));
    assert!(!curl(v12).await.status.success(), "TLS 1.2 refused");
    assert!(curl(https_args(&ca.cert, "a.test", port, "/healthz"))
        .await
        .status
        .success());
}

#[tokio::test]
async fn h2_and_http1_over_tls_behave_as_plaintext() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let echo = EchoServer::start().await;
    let port = free_port();
    let section = format!(
        "{}rate_limit: {{ per_minute: 6, window_seconds: 3600 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        tls_section(port, &[&a], ""),
        echo.port
    );
    let gw = Gateway::start(&section, &[]).await;
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, &body).unwrap();
    let auth = format!("Authorization: Bearer {}", token("7"));
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // A proxied GET: the backend sees the caller and that the client used TLS.
        let mut args = vec![
            flag.to_string(),
            "-H".into(),
            auth.clone(),
            "-w".into(),
            "\n%{http_version} %{http_code}".into(),
        ];
        args.extend(https_args(&ca.cert, "a.test", port, "/echo/get?x=1"));
        let out = curl(args).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.ends_with(&format!("{version} 200")), "{flag}: {text}");
        let seen = echo.requests().pop().unwrap();
        assert_eq!(seen.uri, "/echo/get?x=1", "{flag}");
        assert_eq!(seen.header("x-user-id"), ["7"], "{flag}");
        assert_eq!(seen.header("x-forwarded-proto"), ["https"], "{flag}");
        assert_eq!(seen.header("host"), [format!("a.test:{port}")], "{flag}");
        // A 5 MiB POST comes back byte for byte.
        let out_file = dir.path().join(format!("out{version}"));
        let mut args = vec![
            flag.to_string(),
            "-H".into(),
            auth.clone(),
            "--data-binary".into(),
            format!("@{}", body_file.display()),
            "-o".into(),
            out_file.display().to_string(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        args.extend(https_args(&ca.cert, "a.test", port, "/echo/post"));
        let out = curl(args).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{flag} POST");
        assert!(
            std::fs::read(&out_file).unwrap() == body,
            "{flag}: the body is byte-exact"
        );
        // No token → 401 JSON.
        let mut args = vec![flag.to_string(), "-w".into(), "\n%{http_code}".into()];
        args.extend(https_args(&ca.cert, "a.test", port, "/echo/get"));
        let out = String::from_utf8_lossy(&curl(args).await.stdout).to_string();
        assert!(
            out.ends_with("401") && out.contains("\"error\":\"unauthorized\""),
            "{flag}: {out}"
        );
    }
    // The limit (6 an hour: a window edge cannot fall inside the test) counts TLS requests like
    // any other: 4 passed above, then 429.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut args = vec![
            "--http2".to_string(),
            "-H".into(),
            auth.clone(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        args.extend(https_args(&ca.cert, "a.test", port, "/echo/get"));
        codes.push(String::from_utf8_lossy(&curl(args).await.stdout).to_string());
    }
    assert_eq!(codes.last().unwrap(), "429", "{codes:?}");
    let m = gw.metrics().await;
    assert!(
        m.contains("tls_certificate_expiry_timestamp_seconds{certificate=\"a.test\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let ca = TestCa::new();
    let first = ca.leaf("first", &["a.test"], 10);
    let second = ca.leaf("second", &["a.test"], 20);
    let third = ca.leaf("third", &["a.test"], 25);
    let port = free_port();
    let served = ca.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let live = Leaf {
        cert: served.join("tls.crt"),
        key: served.join("tls.key"),
    };
    let install = |from: &Leaf| {
        // As a secret volume does: new files renamed over the old ones.
        for (src, dst) in [(&from.key, &live.key), (&from.cert, &live.cert)] {
            let tmp = dst.with_extension("tmp");
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, dst).unwrap();
        }
    };
    install(&first);
    let gw = Gateway::start(
        &tls_section(port, &[&live], "  reload_interval_ms: 200\n"),
        &[],
    )
    .await;
    let expiry = || async {
        let mut args = vec!["-v".to_string(), "-o".into(), "/dev/null".into()];
        args.extend(https_args(&ca.cert, "a.test", port, "/healthz"));
        let out = curl(args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("*  expire date: ")
                    .map(str::to_string)
            })
            .unwrap()
    };
    let before = expiry().await;
    // New handshakes in a bounded loop (one curl each) while the files are replaced twice.
    let (ca_path, stop) = (
        ca.cert.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let load = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
                && ok < 2000
            {
                let out = std::process::Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "5",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                    ])
                    .args(https_args(&ca_path, "a.test", port, "/healthz"))
                    .output()
                    .unwrap();
                if out.status.success() && out.stdout == b"200" {
                    ok += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&out.stderr).to_string());
                }
            }
            (ok, failed)
        }
    });
    for next in [&second, &third] {
        let was = expiry().await;
        install(next);
        let changed = Instant::now();
        eventually(
            "the new certificate served",
            Duration::from_secs(5),
            async || expiry().await != was,
        )
        .await;
        assert!(
            changed.elapsed() < Duration::from_millis(200 + 1000),
            "within reload_interval + 1 s"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} handshakes failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 5, "{ok} handshakes");
    let now = expiry().await;
    assert_ne!(now, before);

    // A broken key: refused (after it stays broken for a second interval), the old pair serves.
    std::fs::write(&live.key, b"not a key").unwrap();
    eventually(
        "the broken pair counted",
        Duration::from_secs(5),
        async || {
            gw.metrics()
                .await
                .contains("tls_reload_total{result=\"error\"} 1")
        },
    )
    .await;
    assert_eq!(expiry().await, now, "the previous certificate still served");
    let m = gw.metrics().await;
    assert!(m.contains("tls_reload_total{result=\"ok\"} 2"), "{m}");
}

/// A certificate for `a.test` (subject CN `expired`) signed by `ca` whose validity ended in
/// 2024, written as `{file}.crt` / `{file}.key` in the CA's directory. `openssl x509` cannot
/// backdate, so `openssl ca` signs it with explicit dates.
fn expired_leaf(ca: &TestCa, file: &str) -> Leaf {
    let dir = ca.dir.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (crt, key, csr) = (
        format!("{file}.crt"),
        format!("{file}.key"),
        format!("{file}.csr"),
    );
    std::fs::write(
        dir.join(format!("{file}.cnf")),
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {file}.index\nserial = {file}.serial\n\
             new_certs_dir = .\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             [any]\ncommonName = supplied\n\
             [leaf]\nsubjectAltName = DNS:a.test\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{file}.index")), "").unwrap();
    run(&[
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
        "/CN=expired",
    ]);
    run(&[
        "ca",
        "-batch",
        "-notext",
        "-rand_serial",
        "-config",
        &format!("{file}.cnf"),
        "-extensions",
        "leaf",
        "-cert",
        "ca.crt",
        "-keyfile",
        ca.key().to_str().unwrap(),
        "-startdate",
        "20240101000000Z",
        "-enddate",
        "20240201000000Z",
        "-in",
        &csr,
        "-out",
        &crt,
    ]);
    Leaf {
        cert: dir.join(crt),
        key: dir.join(key),
    }
}

/// `openssl x509 -noout -serial -subject -enddate` of the first certificate in `pem`.
fn cert_id(pem: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-subject", "-enddate"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`cert_id`] of the certificate the listener on `port` presents for `host` (whether or not
/// it verifies: `s_client` prints it either way).
async fn served_id(port: u16, host: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-servername", host, "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        cert_id(&out.stdout)
    })
    .await
    .unwrap()
}

/// Renames copies of `from`'s key, then certificate, over `to`'s files (as a secret volume
/// replaces them).
fn install(from: &Leaf, to: &Leaf) {
    for (src, dst) in [(&from.key, &to.key), (&from.cert, &to.cert)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test]
async fn an_expired_certificate_is_refused_on_reload_and_the_old_one_keeps_serving() {
    let ca = TestCa::new();
    let old = ca.leaf("old", &["a.test"], 30);
    let expired = expired_leaf(&ca, "expired");
    // A second entry, renewed twice after the refusal: each renewal served is one more reload
    // pass that read the expired files again, so a refusal repeated per pass would show.
    let (b1, b2, b3) = (
        ca.leaf("b1", &["b.test"], 10),
        ca.leaf("b2", &["b.test"], 20),
        ca.leaf("b3", &["b.test"], 25),
    );
    let live = |name: &str| {
        let d = ca.dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        Leaf {
            cert: d.join("tls.crt"),
            key: d.join("tls.key"),
        }
    };
    let (live_a, live_b) = (live("served-a"), live("served-b"));
    install(&old, &live_a);
    install(&b1, &live_b);
    let port = free_port();
    let mut gw = Gateway::start(
        &tls_section(port, &[&live_a, &live_b], "  reload_interval_ms: 200\n"),
        &[],
    )
    .await;
    let old_id = cert_id(&std::fs::read(&old.cert).unwrap());
    let expired_id = cert_id(&std::fs::read(&expired.cert).unwrap());
    assert!(
        expired_id.contains("notAfter=Feb  1 00:00:00 2024 GMT"),
        "{expired_id}"
    );
    assert_eq!(served_id(port, "a.test").await, old_id);
    let reloads = |result: &'static str| {
        let gw = &gw;
        async move {
            common::metric_sum(
                &gw.metrics().await,
                &format!("tls_reload_total{{result=\"{result}\"}}"),
            )
        }
    };

    install(&expired, &live_a);
    eventually(
        "the expired pair refused",
        Duration::from_secs(5),
        async || reloads("error").await == 1.0,
    )
    .await;
    assert_eq!(
        served_id(port, "a.test").await,
        old_id,
        "the old one serves"
    );
    // And a verifying client still completes its handshake with it.
    let mut args = vec!["-v".to_string(), "-o".into(), "/dev/null".into()];
    args.extend(https_args(&ca.cert, "a.test", port, "/healthz"));
    let out = curl(args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(subject(&out), "a.test");
    assert_eq!(reloads("ok").await, 0.0);

    for (n, next) in [(1.0, &b2), (2.0, &b3)] {
        install(next, &live_b);
        eventually(
            "the other entry renewed",
            Duration::from_secs(5),
            async || reloads("ok").await == n,
        )
        .await;
        assert_eq!(
            served_id(port, "b.test").await,
            cert_id(&std::fs::read(&next.cert).unwrap())
        );
    }
    assert_eq!(served_id(port, "a.test").await, old_id, "still the old one");
    assert_eq!(reloads("error").await, 1.0, "refused once, not per pass");

    let (out, err) = gw.stop_and_read();
    let file = live_a.cert.display().to_string();
    let named: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains(r#""level":"ERROR""#) && l.contains(&file))
        .collect();
    assert_eq!(named.len(), 1, "one ERROR naming {file}: {named:#?}");
    assert!(
        named[0].contains("the certificate expired"),
        "the reason: {}",
        named[0]
    );
}

#[tokio::test]
async fn the_plain_listener_redirects_to_https_but_probes_stay() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let port = free_port();
    let gw = Gateway::start(
        &format!("{}redirect_http: true\n", tls_section(port, &[&a], "")),
        &[],
    )
    .await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(gw.url("/api/products?page=2"))
        .header("Host", "a.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://a.test:{port}/api/products?page=2").as_str()
    );
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            client().get(gw.url(probe)).send().await.unwrap().status(),
            200,
            "{probe}"
        );
    }
    // Over TLS, no redirect.
    let out = curl(https_args(&ca.cert, "a.test", port, "/healthz")).await;
    assert!(out.status.success());
}

#[tokio::test]
async fn start_up_and_check_refuse_a_key_that_is_not_the_certificates() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let b = ca.leaf("b", &["b.test"], 30);
    let mixed = Leaf {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    let section = tls_section(free_port(), &[&mixed], "");
    let indented: String = section.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(&conf, format!("gateway:\n{indented}")).unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["-t", "-c"])
        .arg(&conf)
        .env("JWT_SECRET", common::SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the key does not belong to the certificate"),
        "{err}"
    );
    assert!(err.contains("gateway.tls.certificates[0]"), "{err}");
}

/// nginx serving TLS (h2 and HTTP/1.1) with `leaf`, logging each request's connection number.
struct Nginx {
    proc: common::Proc,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its worker too: the harness's SIGKILL (`Proc`'s drop, the
    /// fallback) would leave the worker running with no parent.
    fn drop(&mut self) {
        self.proc.terminate();
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }
}

impl Nginx {
    fn start(dir: &Path, leaf: &Leaf) -> Nginx {
        let port = free_port();
        let log = dir.join("access.log");
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                r#"worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log error;
events {{ worker_connections 256; }}
http {{
  log_format conn '$connection $server_protocol';
  access_log {log} conn;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ default_type application/json; return 200 '{{"backend":"nginx","protocol":"$server_protocol"}}'; }}
  }}
}}
"#,
                d = dir.display(),
                log = log.display(),
                cert = leaf.cert.display(),
                key = leaf.key.display(),
            ),
        )
        .unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        // Debian package nginx-light.
        let proc = common::Proc::spawn(
            "nginx",
            std::process::Command::new(nginx)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir),
        );
        common::wait_for_port(port, Duration::from_secs(10));
        Nginx { proc, port, log }
    }

    /// (distinct connections, requests) seen in the access log.
    fn connections(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let conns: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.split(' ').next()).collect();
        (conns.len(), text.lines().count())
    }
}

#[tokio::test]
async fn backends_are_reached_over_verified_tls_and_multiplexed_h2() {
    let ca = TestCa::new();
    let backend = ca.leaf("backend", &["backend.test"], 30);
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(nginx_dir.path(), &backend);
    // Health checks open connections of their own: one round at start, none while counting.
    let group = |name: &str, tls: &str, extra: &str| {
        format!(
            "  {name}: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }}, tls: {{ {tls} }}{extra} }}\n",
            nginx.port
        )
    };
    let ca_path = ca.cert.display().to_string();
    let section = format!(
        "auth: {{ public_paths: [\"/\"] }}\nupstreams:\n{}{}{}{}routes:\n  - {{ prefix: \"/h2/\", upstream: h2 }}\n  - {{ prefix: \"/h1/\", upstream: h1 }}\n  - {{ prefix: \"/wrongname/\", upstream: wrongname }}\n  - {{ prefix: \"/untrusted/\", upstream: untrusted }}\n",
        group("h2", &format!("sni: backend.test, ca: \"{ca_path}\""), ", http2: { max_streams: 100 }"),
        group("h1", &format!("sni: backend.test, ca: \"{ca_path}\""), ""),
        group("wrongname", &format!("sni: other.test, ca: \"{ca_path}\""), ""),
        group("untrusted", "sni: backend.test", ""),
    );
    let mut gw = Gateway::builder(&section)
        .env("RUST_LOG", "warn")
        .start()
        .await;
    let r = client().get(gw.url("/h1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("HTTP/1.1"));
    // Once one h2 connection is up, concurrent requests share it (a cold burst would open one
    // each: Pingora shares only established h2 connections).
    let r = client().get(gw.url("/h2/warm")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // nginx logs a request after answering it: wait for the two so far (h1, warm-up).
    common::eventually(
        "nginx logged the warm-up",
        Duration::from_secs(5),
        async || nginx.connections().1 >= 2,
    )
    .await;
    let before = nginx.connections();
    // In waves of 5 concurrent requests: requests that race for the one idle connection may
    // open their own (under the full suite's load a 40-wide burst opened 22), but each wave's
    // connections are pooled and shared by the next.
    let mut bodies = Vec::new();
    for wave in 0..8 {
        let urls: Vec<String> = (0..5).map(|i| gw.url(&format!("/h2/{wave}-{i}"))).collect();
        bodies.extend(
            futures::future::join_all(urls.iter().map(|u| async move {
                let r = client().get(u).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }))
            .await,
        );
    }
    for (status, body) in &bodies {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("HTTP/2.0"), "{body}");
    }
    common::eventually("nginx logged the 40", Duration::from_secs(5), async || {
        nginx.connections().1 >= before.1 + 40
    })
    .await;
    let after = nginx.connections();
    let (conns, requests) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(requests, 40);
    assert!(conns < 10, "{conns} new connections for 40 h2 requests");
    // A name the certificate does not carry, or a CA the gateway does not trust: 502.
    for path in ["/wrongname/x", "/untrusted/x"] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
    }
    let (out, err) = gw.stop_and_read();
    let log = out + &err;
    assert!(
        log.to_lowercase().contains("certificate"),
        "the log says why:\n{log}"
    );
}

#[tokio::test]
async fn verify_false_reaches_a_backend_whose_certificate_the_gateway_cannot_verify() {
    // Signed by a CA the gateway is never given: neither the system roots nor a `ca` trust it.
    let unknown = TestCa::new();
    let backend = unknown.leaf("backend", &["backend.test"], 30);
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(nginx_dir.path(), &backend);
    let group = |name: &str, tls: &str| {
        format!(
            "  {name}: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 60000 }}, tls: {{ {tls} }} }}\n",
            nginx.port
        )
    };
    let section = format!(
        "auth: {{ public_paths: [\"/\"] }}\nupstreams:\n{}{}{}routes:\n  - {{ prefix: \"/checked/\", upstream: checked }}\n  - {{ prefix: \"/unchecked/\", upstream: unchecked }}\n  - {{ prefix: \"/othername/\", upstream: othername }}\n",
        group("checked", "sni: backend.test"),
        group("unchecked", "sni: backend.test, verify: false"),
        // Without verification the name is not checked either.
        group("othername", "sni: other.test, verify: false"),
    );
    let mut gw = Gateway::start(&section, &[]).await;
    let get = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get("/checked/a").await;
    assert_eq!(status, 502, "{body}");
    for path in ["/unchecked/b", "/othername/c"] {
        let (status, body) = get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        // nginx's own answer: it listens for TLS only, so this came over TLS.
        assert!(body.contains(r#""backend":"nginx""#), "{path}: {body}");
    }
    // The unverified connections are pooled for their own groups only: the checking group
    // still refuses.
    let (status, body) = get("/checked/d").await;
    assert_eq!(status, 502, "{body}");
    // nginx saw exactly the two unverified requests (a refused handshake sends none).
    eventually("nginx logged the two", Duration::from_secs(5), async || {
        nginx.connections().1 >= 2
    })
    .await;
    let (_, requests) = nginx.connections();
    assert_eq!(requests, 2);
    // One line per refused request, saying why; none for the unverified groups.
    let (out, err) = gw.stop_and_read();
    let refused: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("certificate verify failed"))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for (line, path) in refused.iter().zip(["GET /checked/a,", "GET /checked/d,"]) {
        assert!(line.contains(path), "{path}: {line}");
    }
}

#[tokio::test]
async fn h2_limits_are_announced_to_clients() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let port = free_port();
    let _gw = Gateway::start(
        &tls_section(
            port,
            &[&a],
            "  h2_max_concurrent_streams: 7\n  h2_max_header_list_bytes: 16384\n",
        ),
        &[],
    )
    .await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("nghttp")
            .args(["-nv", &format!("https://127.0.0.1:{port}/healthz")])
            .output()
            .expect("nghttp (Debian package nghttp2-client)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):16384"),
        "{text}"
    );
}

#[tokio::test]
async fn an_aggregate_answers_the_same_over_h2_http1_and_plain_http() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let mocks = common::Mocks::start(&["user", "order", "product", "recommendation"]);
    let port = free_port();
    let gw = Gateway::start(
        &format!(
            "{}rate_limit: {{ per_minute: 1000 }}\n",
            tls_section(port, &[&a], "")
        ),
        &common::service_env(&mocks),
    )
    .await;
    let t = token("1");
    let plain: serde_json::Value = client()
        .get(gw.url("/api/profile/1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain["user"].is_object(), "{plain}");
    for flag in ["--http2", "--http1.1"] {
        let mut args = vec![
            flag.to_string(),
            "-H".into(),
            format!("Authorization: Bearer {t}"),
        ];
        args.extend(https_args(&ca.cert, "a.test", port, "/api/profile/1"));
        let out = curl(args).await;
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body, plain, "{flag}");
    }
    let m = gw.metrics().await;
    for protocol in ["h2", "http/1.1"] {
        let line = format!("http_requests_total{{method=\"GET\",protocol=\"{protocol}\",route=\"profile\",status=\"200\"}}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

/// An h2 connection over TLS to the gateway, trusting `ca`.
async fn h2_connect(
    ca: &Path,
    port: u16,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

#[tokio::test]
async fn a_client_that_opens_and_resets_streams_in_a_loop_is_cut_off() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    let echo = EchoServer::start().await;
    let port = free_port();
    let section = format!(
        "{}auth: {{ public_paths: [\"/echo/\"] }}\nrate_limit: {{ per_minute: 100000000 }}\nupstreams:\n  echo: {{ backends: [\"127.0.0.1:{}\"], health_check: {{ kind: tcp, interval_ms: 1000 }} }}\nroutes:\n  - {{ prefix: \"/echo/\", upstream: echo }}\n",
        tls_section(port, &[&a], ""),
        echo.port
    );
    let mut gw = Gateway::start(&section, &[]).await;
    let pid = gw.proc.child.id();
    let (cpu0, rss0) = (common::cpu_seconds(pid), common::rss_kib(pid));
    let (send, conn) = h2_connect(&ca.cert, port).await;
    let started = Instant::now();
    let mut sent = 0u32;
    // Bounded: 100,000 streams or 10 s, whichever comes first.
    while sent < 100_000 && started.elapsed() < Duration::from_secs(10) {
        let Ok(mut ready) = send.clone().ready().await else {
            break;
        };
        let req = http::Request::get(format!("https://a.test:{port}/echo/slow?ms=5000"))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = ready.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        // Let the connection task put the frames on the wire (one runtime thread).
        tokio::task::yield_now().await;
        if conn.is_finished() {
            break;
        }
    }
    let ended = conn.await.unwrap();
    let (cpu, rss) = (
        common::cpu_seconds(pid) - cpu0,
        common::rss_kib(pid).saturating_sub(rss0),
    );
    eprintln!("rapid reset: {sent} streams in {:?}, connection ended with {ended:?}, gateway CPU {cpu:.2} s, RSS +{rss} KiB", started.elapsed());
    // h2's limit on streams reset before they were accepted (20 pending) ends it after a few
    // hundred (551 here, in 50 ms, with no measurable gateway CPU).
    assert!(sent < 10_000, "the connection was not cut ({sent} streams)");
    assert!(ended.is_err(), "{ended:?}");
    assert!(cpu < 2.0, "gateway CPU {cpu} s");
    assert!(rss < 64 * 1024, "RSS grew {rss} KiB");
    eventually("the cut counted", Duration::from_secs(5), async || {
        gw.metrics()
            .await
            .contains("h2_connections_cut_total{reason=\"rapid_reset\"} 1")
    })
    .await;
    // Others are still served.
    let out = curl(https_args(&ca.cert, "a.test", port, "/healthz")).await;
    assert!(out.status.success());
    let (out, err) = gw.stop_and_read();
    assert!(
        !(out + &err).contains("reached limit"),
        "counted, not logged"
    );
}

#[tokio::test]
async fn failed_handshakes_are_counted_not_logged() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"], 30);
    // Counted whatever RUST_LOG says: `off` must not stop the metric.
    for (rust_log, tries) in [("info", 50), ("off", 10)] {
        let port = free_port();
        let env = [("RUST_LOG", rust_log.to_string())];
        let mut gw = Gateway::start(&tls_section(port, &[&a], ""), &env).await;
        // Plain HTTP to the HTTPS port (what scanners and misconfigured clients do).
        for _ in 0..tries {
            let reply = common::raw_request(
                port,
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                Duration::from_millis(200),
            )
            .await;
            assert!(!reply.contains("HTTP/1.1 200"), "{reply}");
        }
        let want = format!(" {tries}");
        eventually(
            "every handshake error counted",
            Duration::from_secs(5),
            async || {
                gw.metrics()
                    .await
                    .lines()
                    .any(|l| l.starts_with("tls_handshake_errors_total ") && l.ends_with(&want))
            },
        )
        .await;
        let (out, err) = gw.stop_and_read();
        let log = out + &err;
        assert!(!log.contains("Downstream handshake"), "{log}");
    }
}

/// Whether the gateway process holds its in-memory one-certificate trust file (the upstream
/// connectors were kept off the system roots).
fn holds_the_empty_trust_file(gw: &Gateway) -> bool {
    let fds = format!("/proc/{}/fd", gw.proc.child.id());
    std::fs::read_dir(fds).unwrap().flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("gateway-trust"))
    })
}

#[tokio::test]
async fn system_roots_are_loaded_only_when_a_group_verifies_against_them_even_after_a_reload() {
    // The test CA stands in for the system roots (`SSL_CERT_FILE`, as OpenSSL reads it).
    let ca = TestCa::new();
    let backend = ca.leaf("backend", &["backend.test"], 30);
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(nginx_dir.path(), &backend);
    let echo = common::EchoServer::start().await;
    let plain = format!(
        "auth: {{ public_paths: [\"/\"] }}\nupstreams:\n  plain: {{ backends: [\"127.0.0.1:{}\"] }}\nroutes:\n  - {{ prefix: \"/plain/\", upstream: plain }}\n",
        echo.port
    );
    let with_tls = format!(
        "auth: {{ public_paths: [\"/\"] }}\nupstreams:\n  plain: {{ backends: [\"127.0.0.1:{}\"] }}\n  sys: {{ backends: [\"127.0.0.1:{}\"], tls: {{ sni: backend.test }} }}\nroutes:\n  - {{ prefix: \"/plain/\", upstream: plain }}\n  - {{ prefix: \"/sys/\", upstream: sys }}\n",
        echo.port, nginx.port
    );
    let roots = ca.cert.display().to_string();
    let status = |gw: &Gateway, path: &'static str| {
        let url = gw.url(path);
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };

    // No group verifies: the connectors hold the one-certificate file, not the roots.
    let gw = Gateway::builder(&plain)
        .env("SSL_CERT_FILE", roots.clone())
        .start()
        .await;
    assert!(holds_the_empty_trust_file(&gw));
    assert_eq!(status(&gw, "/plain/x").await, 200);
    // A reload adds a group verifying against the system roots: it gets them per connection
    // (the connectors' own store would refuse the backend).
    gw.rewrite(&with_tls);
    gw.proc.signal("HUP");
    eventually(
        "the new group served",
        Duration::from_secs(10),
        async || status(&gw, "/sys/a").await == 200,
    )
    .await;

    // A group verifying at start: the connectors load the system roots as Pingora does.
    let gw = Gateway::builder(&with_tls)
        .env("SSL_CERT_FILE", roots)
        .start()
        .await;
    assert!(!holds_the_empty_trust_file(&gw));
    assert_eq!(status(&gw, "/sys/b").await, 200);
    // Without the test CA among the roots the same backend is refused: verification is on.
    let gw = Gateway::start(&with_tls, &[]).await;
    assert_eq!(status(&gw, "/sys/c").await, 502);
}
