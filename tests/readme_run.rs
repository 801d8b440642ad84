//! README.md's shell examples run: every block fenced as `sh runnable` is executed with bash
//! against a gateway started as `make run` starts it (conf/gateway.yaml plus the admin
//! listener, the mocks, the embedded store), with the `TOKEN` and `ADMIN_TOKEN` it prints; every
//! other `sh` block must say what it needs (`# needs: …`), so no example is silently untested.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{free_port, gateway_bin, token, Mocks, Proc, SECRET};

const ADMIN_TOKEN: &str = "readme-admin-token-0123456789";

/// `(info string, body)` of every fenced block whose info string starts with `sh`.
fn shell_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim().starts_with("sh") => {
                current = Some((info.trim().to_string(), String::new()));
            }
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn every_runnable_readme_example_runs_and_the_others_say_what_they_need() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let blocks = shell_blocks(&readme);
    let unmarked: Vec<&String> = blocks
        .iter()
        .filter(|(info, body)| info != "sh runnable" && !body.contains("# needs:"))
        .map(|(_, b)| b)
        .collect();
    assert!(
        unmarked.is_empty(),
        "examples neither run nor marked `# needs:`: {unmarked:?}"
    );
    let runnable: Vec<&String> = blocks
        .iter()
        .filter(|(info, _)| info == "sh runnable")
        .map(|(_, b)| b)
        .collect();
    assert!(!runnable.is_empty(), "README has examples that run");

    // What `make run` starts, on free ports: the mocks, then the gateway on conf/gateway.yaml
    // with the admin listener, the conf's fixed mock addresses moved to the free ports.
    let ports: HashMap<&'static str, u16> = ["user", "order", "product", "recommendation", "idp"]
        .into_iter()
        .map(|s| (s, free_port()))
        .collect();
    std::env::set_var("IDP_ISSUER", format!("http://127.0.0.1:{}", ports["idp"]));
    let mocks = Mocks::start_on(ports);
    let mut conf = std::fs::read_to_string(format!("{root}/conf/gateway.yaml")).unwrap();
    for (fixed, service) in [
        (8081, "user"),
        (8082, "order"),
        (8083, "product"),
        (8084, "recommendation"),
        (8085, "idp"),
    ] {
        conf = conf.replace(&format!("127.0.0.1:{fixed}"), &mocks.addr(service));
    }
    let dir = tempfile::tempdir().unwrap();
    let (http, metrics, admin) = (free_port(), free_port(), free_port());
    conf = conf
        .replace(
            "/tmp/gateway.pid",
            &dir.path().join("gw.pid").display().to_string(),
        )
        .replace(
            "/tmp/gateway_upgrade.sock",
            &dir.path().join("up.sock").display().to_string(),
        );
    conf.push_str(&format!("  admin: {{ listen: \"127.0.0.1:{admin}\" }}\n"));
    let conf_path = dir.path().join("gateway.yaml");
    std::fs::write(&conf_path, &conf).unwrap();
    let _gw = Proc::spawn(
        "gateway (README)",
        Command::new(gateway_bin())
            .arg("-c")
            .arg(&conf_path)
            .env("JWT_SECRET", SECRET)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HTTP_PORT", http.to_string())
            .env("METRICS_PORT", metrics.to_string())
            .env("RUST_LOG", "warn"),
    );
    let ready = format!("http://127.0.0.1:{http}/readyz");
    common::eventually(
        "the gateway is ready",
        Duration::from_secs(30),
        async || reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200),
    )
    .await;

    for block in runnable {
        let script = block
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
            .replace("127.0.0.1:9091", &format!("127.0.0.1:{metrics}"))
            .replace("127.0.0.1:9092", &format!("127.0.0.1:{admin}"))
            .replace(
                "./target/release/gateway",
                &gateway_bin().display().to_string(),
            )
            .replace("conf/gateway.yaml", &conf_path.display().to_string());
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("TOKEN", token("1"))
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("JWT_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README example failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("ran README example:\n{block}");
    }
}
