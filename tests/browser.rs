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
