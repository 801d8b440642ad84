//! The ways in besides JWTs: API keys for machine clients (and client certificates), against
//! the real gateway binary and a real upstream.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{client, eventually, metric_sum, token, EchoServer, Gateway};
use std::time::Duration;

/// A new key from the gateway's own `apikey` command: (key, keys-file line).
fn new_key(sub: &str, extra: &[&str]) -> (String, String) {
    let out = std::process::Command::new(common::gateway_bin())
        .args(["apikey", "--sub", sub])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let key = lines.next().unwrap().to_string();
    let line = lines.next().unwrap().to_string();
    assert!(line.contains("sha256:") && !line.contains(&key), "{line}");
    (key, line)
}

fn section(echo: &EchoServer, keys_file: &std::path::Path) -> String {
    format!(
        r#"services: {{}}
aggregates: []
auth:
  api_keys: {{ keys_file: "{}" }}
  forward_claims: {{ scope: X-Scopes }}
rate_limit:
  per_minute: 100000
  policies:
    - {{ name: per-caller, key: sub, limit: 3, window_seconds: 3600, routes: ["/limited/"] }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{}"] }}
routes:
  - {{ name: read, match: {{ path: {{ prefix: "/read/" }} }}, upstream: echo, require: {{ roles: [reader], scopes: [api] }} }}
  - {{ name: limited, match: {{ path: {{ prefix: "/limited/" }} }}, upstream: echo }}
  - {{ name: open, match: {{ path: {{ prefix: "/open/" }} }}, upstream: echo, auth: optional }}
"#,
        keys_file.display(),
        echo.port
    )
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn api_keys_identify_machine_clients_and_a_reload_revokes_them() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("api-keys.yaml");
    let (reader, reader_line) = new_key("svc-a", &["--role", "reader", "--scope", "api"]);
    let (writer, writer_line) = new_key("svc-b", &["--role", "writer"]);
    std::fs::write(&keys_file, format!("keys:\n{reader_line}\n{writer_line}\n")).unwrap();
    let mut gw = Gateway::start(&section(&echo, &keys_file), &[]).await;

    // A known key: its identity reaches the backend; the key itself does not.
    let (s, _) = get(&gw, "/read/x", &[("X-Api-Key", &reader)]).await;
    assert_eq!(s, 200);
    let seen = echo.requests().pop().unwrap();
    let header = |name: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-user-id").as_deref(), Some("svc-a"));
    assert_eq!(header("x-scopes").as_deref(), Some("api"));
    assert_eq!(header("x-api-key"), None, "the key is not forwarded");

    // Refusals, each with its reason counted once.
    let (s, body) = get(&gw, "/read/x", &[("X-Api-Key", "gw_not-a-key")]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (s, body) = get(&gw, "/read/x", &[("X-Api-Key", &writer)]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    let bearer = format!("Bearer {}", token("1"));
    let (s, _) = get(
        &gw,
        "/read/x",
        &[("X-Api-Key", &reader), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(s, 401, "two credentials");
    let m = gw.metrics().await;
    for reason in ["invalid_api_key", "two_credentials", "insufficient_scope"] {
        assert_eq!(
            metric_sum(&m, &format!(r#"auth_failures_total{{reason="{reason}"}}"#)),
            1.0,
            "{reason}"
        );
    }

    // An optional route: a key is a caller, no key is anonymous, a bad key is refused.
    assert_eq!(get(&gw, "/open/x", &[]).await.0, 200);
    assert_eq!(echo.last_header("x-user-id"), None);
    assert_eq!(get(&gw, "/open/x", &[("X-Api-Key", &writer)]).await.0, 200);
    assert_eq!(echo.last_header("x-user-id").as_deref(), Some("svc-b"));
    assert_eq!(get(&gw, "/open/x", &[("X-Api-Key", "nope")]).await.0, 401);

    // Limits count the key's `sub`: three for svc-a, then 429; svc-b has its own three.
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/limited/x", &[("X-Api-Key", &reader)]).await.0,
            200
        );
    }
    assert_eq!(
        get(&gw, "/limited/x", &[("X-Api-Key", &reader)]).await.0,
        429
    );
    assert_eq!(
        get(&gw, "/limited/x", &[("X-Api-Key", &writer)]).await.0,
        200
    );

    // Revoked: the keys file loses svc-a (the conf itself unchanged), SIGHUP, the key is
    // refused.
    std::fs::write(&keys_file, format!("keys:\n{writer_line}\n")).unwrap();
    gw.proc.signal("HUP");
    eventually(
        "the reloaded keys refuse svc-a",
        Duration::from_secs(20),
        async || get(&gw, "/read/x", &[("X-Api-Key", &reader)]).await.0 == 401,
    )
    .await;
    assert_eq!(
        get(&gw, "/open/x", &[("X-Api-Key", &writer)]).await.0,
        200,
        "svc-b stays"
    );

    // A keys file that does not parse is refused by the reload; the keys in use stay.
    std::fs::write(&keys_file, "keys: [ { sha256: 12 } ]\n").unwrap();
    gw.proc.signal("HUP");
    eventually(
        "the broken keys file is refused",
        Duration::from_secs(20),
        async || {
            metric_sum(
                &gw.metrics().await,
                r#"config_reload_total{result="error"}"#,
            ) == 1.0
        },
    )
    .await;
    assert_eq!(get(&gw, "/open/x", &[("X-Api-Key", &writer)]).await.0, 200);

    let (out, err) = gw.stop_and_read();
    for key in [&reader, &writer] {
        assert!(
            !out.contains(key.as_str()) && !err.contains(key.as_str()),
            "a key in the logs"
        );
    }
}

#[tokio::test]
async fn a_bad_keys_file_stops_the_start_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, "keys:\n  - { sha256: \"abc\", sub: svc }\n").unwrap();
    std::fs::write(
        &conf,
        format!(
            "gateway:\n  auth:\n    api_keys: {{ keys_file: \"{}\" }}\n",
            keys.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["-t", "-c"])
        .arg(&conf)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gateway.auth.api_keys.keys_file") && err.contains("keys[0].sha256"),
        "{err}"
    );
}

/// `curl` over TLS to the gateway as `a.test`, with a client certificate when given:
/// (curl's exit code, HTTP status, body, stderr).
async fn curl_tls(
    ca: &common::TestCa,
    port: u16,
    path: &str,
    cert: Option<&common::Leaf>,
    extra: &[&str],
) -> (i32, u16, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca.cert)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args(extra);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let out = cmd
        .arg(format!("https://a.test:{port}{path}"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mtls_section(
    echo: &EchoServer,
    port: u16,
    server: &common::Leaf,
    clients: &common::TestCa,
    required: bool,
) -> String {
    format!(
        r#"services: {{}}
aggregates: []
rate_limit: {{ per_minute: 100000 }}
tls:
  listen: "127.0.0.1:{port}"
  certificates: [{{ cert: "{}", key: "{}" }}]
  client_auth: {{ ca: "{}", required: {required} }}
upstreams:
  echo: {{ backends: ["127.0.0.1:{}"] }}
routes:
  - {{ name: machines, match: {{ path: {{ prefix: "/machines/" }} }}, upstream: echo, credentials: [mtls, bearer] }}
  - {{ name: people, match: {{ path: {{ prefix: "/people/" }} }}, upstream: echo }}
"#,
        server.cert.display(),
        server.key.display(),
        clients.cert.display(),
        echo.port
    )
}

#[tokio::test]
async fn client_certificates_identify_callers_on_routes_that_take_them() {
    let echo = EchoServer::start().await;
    let server_ca = common::TestCa::new();
    let server = server_ca.leaf("server", &["a.test"], 30);
    let clients = common::TestCa::new();
    let spiffe = clients.client("svc", "svc-cn", Some("spiffe://example.org/billing"));
    let plain = clients.client("plain", "reporting", None);
    let other_ca = common::TestCa::new();
    let stranger = other_ca.client("stranger", "mallory", None);
    let port = common::free_port();
    let gw = Gateway::start(&mtls_section(&echo, port, &server, &clients, false), &[]).await;

    // A verified certificate is the caller on a route that lists mtls: URI SAN first, else CN.
    let (rc, status, _, err) = curl_tls(&server_ca, port, "/machines/x", Some(&spiffe), &[]).await;
    assert_eq!((rc, status), (0, 200), "{err}");
    assert_eq!(
        echo.last_header("x-user-id").as_deref(),
        Some("spiffe://example.org/billing")
    );
    let (_, status, _, _) = curl_tls(&server_ca, port, "/machines/x", Some(&plain), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(echo.last_header("x-user-id").as_deref(), Some("reporting"));
    // A route that does not list mtls still wants a token; without a certificate, so does
    // the mtls route (the certificate is optional on this listener).
    let (_, status, body, _) = curl_tls(&server_ca, port, "/people/x", Some(&spiffe), &[]).await;
    assert_eq!(status, 401, "{body}");
    let (rc, status, _, _) = curl_tls(&server_ca, port, "/machines/x", None, &[]).await;
    assert_eq!((rc, status), (0, 401));
    // A bearer token still works on the route beside the certificate.
    let bearer = format!("Authorization: Bearer {}", token("7"));
    let (_, status, _, _) = curl_tls(&server_ca, port, "/machines/x", None, &["-H", &bearer]).await;
    assert_eq!(status, 200);
    assert_eq!(echo.last_header("x-user-id").as_deref(), Some("7"));
    // A certificate from another CA fails the handshake: the server refuses it, not curl. TLS
    // 1.3 sends the server's `unknown ca` alert after the client's Finished, so curl reports
    // the alert or the reset that follows; the server's own count below proves the refusal.
    let before = metric_sum(&gw.metrics().await, "tls_handshake_errors_total");
    let (rc, status, _, err) =
        curl_tls(&server_ca, port, "/machines/x", Some(&stranger), &[]).await;
    assert_ne!(rc, 0, "refused");
    assert_eq!(status, 0);
    assert!(
        ["alert unknown ca", "reset", "not connected"]
            .iter()
            .any(|w| err.contains(w)),
        "{err}"
    );
    eventually(
        "the refused handshake counted",
        Duration::from_secs(5),
        async || metric_sum(&gw.metrics().await, "tls_handshake_errors_total") == before + 1.0,
    )
    .await;
    let m = gw.metrics().await;
    assert!(
        metric_sum(&m, r#"tls_client_certificates_total{result="verified"}"#) >= 3.0,
        "{m}"
    );
    drop(gw);

    // required: true refuses a handshake without a certificate: the same curl that got 401
    // above fails, and the server counts the handshake it refused.
    let port = common::free_port();
    let gw = Gateway::start(&mtls_section(&echo, port, &server, &clients, true), &[]).await;
    let before = metric_sum(&gw.metrics().await, "tls_handshake_errors_total");
    let (rc, status, _, err) = curl_tls(&server_ca, port, "/machines/x", None, &[]).await;
    assert_ne!(rc, 0, "no certificate, refused: {err}");
    assert_eq!(status, 0);
    eventually(
        "the refused handshake counted",
        Duration::from_secs(5),
        async || metric_sum(&gw.metrics().await, "tls_handshake_errors_total") == before + 1.0,
    )
    .await;
    let (rc, status, _, err) = curl_tls(&server_ca, port, "/machines/x", Some(&plain), &[]).await;
    assert_eq!((rc, status), (0, 200), "{err}");
}
