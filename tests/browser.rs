//! A real browser's cache (Debian's chromium, headless, driven through chromium-driver by
//! `tests/browser/cache.py`): one user's answers are never shown to the next user.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{profile_aggregate, service_env, token, Gateway, Mocks};
use serde_json::Value;

#[tokio::test]
async fn a_browser_never_shows_one_users_profile_to_the_next() {
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let section = format!(
        "rate_limit: {{ per_minute: 100000 }}\n{}services:\n  user: {{}}\n  order: {{}}\n  product: {{}}\n  recommendation: {{}}\n",
        profile_aggregate(30, 5000)
    );
    let gw = Gateway::start(&section, &service_env(&mocks)).await;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/cache.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(gw.url(""))
        .arg(token("1"))
        .arg(token("2"))
        .output()
        .await
        .expect("the browser script runs (make test-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = &v["/api/profile/me"];
    let body = |x: &Value| serde_json::from_str::<Value>(x["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (me[0]["status"].as_u64(), me[1]["status"].as_u64()),
        (Some(200), Some(200)),
        "{v}"
    );
    assert_eq!(body(&me[0])["user"]["id"], "1", "{v}");
    assert_eq!(
        body(&me[1])["user"]["id"],
        "2",
        "user 2 sees their own profile: {v}"
    );
    // User 1 may read /api/profile/1; user 2 may not, and the browser must not answer for the
    // gateway from user 1's copy.
    let one = &v["/api/profile/1"];
    assert_eq!(one[0]["status"].as_u64(), Some(200), "{v}");
    assert_eq!(one[1]["status"].as_u64(), Some(403), "{v}");
}

#[tokio::test]
async fn the_dashboard_shows_routes_and_upstreams_and_a_killed_backend_within_3_s() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    const TOKEN: &str = "dashboard-admin-token-0123456789";
    let stays = common::Mocks::start(&["user"]);
    let mut goes = common::Mocks::start(&["user"]);
    let admin = common::free_port();
    let section = format!(
        "admin: {{ listen: \"127.0.0.1:{admin}\" }}\nupstreams:\n  users: {{ backends: [\"{}\", \"{}\"], health_check: {{ interval_ms: 300, consecutive_failure: 1, consecutive_success: 1 }} }}\nroutes:\n  - {{ name: users, match: {{ path: {{ prefix: \"/users/\" }} }}, upstream: users }}\n",
        stays.addr("user"),
        goes.addr("user")
    );
    let gw = common::Gateway::start(&section, &[("ADMIN_TOKEN", TOKEN.to_string())]).await;
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/dashboard.png");
    let _ = std::fs::remove_file(shot);
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.py");
    let mut browser = tokio::process::Command::new(python)
        .args([script, &format!("http://127.0.0.1:{admin}"), TOKEN, shot])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(browser.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the page loaded ({e}): {line:?}"));
    // A wrong token: said clearly, nothing shown.
    assert!(
        first["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("refused this token"),
        "{first}"
    );
    assert_eq!(first["refused"]["data_shown"], false, "{first}");
    assert!(
        first["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "users"),
        "{first}"
    );
    let backends = first["backends"].as_object().unwrap();
    assert_eq!(
        backends.get(&goes.addr("user")).unwrap(),
        "healthy",
        "{first}"
    );
    assert_eq!(
        backends.get(&stays.addr("user")).unwrap(),
        "healthy",
        "{first}"
    );
    goes.proc.kill();
    let mut stdin = browser.stdin.take().unwrap();
    stdin.write_all(b"killed\n").await.unwrap();
    line.clear();
    out.read_line(&mut line).await.unwrap();
    let second: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the page showed the change ({e}): {line:?}"));
    println!("dashboard: {second}; screenshot {shot}");
    assert_eq!(second["unhealthy"], goes.addr("user"), "{second}");
    assert!(second["seconds"].as_f64().unwrap() < 3.0, "{second}");
    let png = std::fs::read(shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "a screenshot for a person to look at"
    );
    drop(gw);
}
