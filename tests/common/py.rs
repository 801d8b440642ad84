//! Python programs the tests drive (tests/py/, with libraries from PyPI that `make test-deps`
//! installs into target/pyenv): WebSocket and gRPC clients and servers nobody here wrote.

use std::process::Command;
use std::time::Duration;

use super::{free_port, wait_for_port, Proc};

/// The test venv's interpreter.
pub const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python");

/// A script of tests/py/ by file name.
pub fn py_script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python server listening on `port` (stopped when dropped).
pub struct PyServer {
    /// The process (its output shown if the test fails).
    pub proc: Proc,
    /// Where it listens.
    pub port: u16,
}

impl PyServer {
    /// Starts `script` with `args` (`{port}` in them becomes a free port) and waits for it
    /// to listen.
    pub fn start(name: &str, script: &str, args: &[&str]) -> PyServer {
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let proc = Proc::spawn(
            name,
            Command::new(PYTHON).arg(py_script(script)).args(&args),
        );
        wait_for_port(port, Duration::from_secs(30));
        PyServer { proc, port }
    }
}

/// Runs `script` with `args` to its end (at most `limit`) and returns the JSON of its last
/// line of output; panics with its stderr when it fails.
pub async fn py_json(script: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    let run = tokio::process::Command::new(PYTHON)
        .arg(py_script(script))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} did not end within {limit:?}"))
        .expect("python runs (make test-deps installs the venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {stderr}\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}\n{stderr}"))
}
