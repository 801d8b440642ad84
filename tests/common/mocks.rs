//! The mocks binary (user, order, product and recommendation services) as a test fixture.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use super::{client, free_port, mocks_bin, wait_for_port, Proc};

/// A running mocks process and its ports.
pub struct Mocks {
    pub proc: Proc,
    pub ports: HashMap<&'static str, u16>,
}

impl Mocks {
    /// Starts the named services (user, order, product, recommendation) on free ports.
    pub fn start(services: &[&'static str]) -> Mocks {
        let ports: HashMap<&'static str, u16> =
            services.iter().map(|s| (*s, free_port())).collect();
        Mocks::start_on(ports)
    }

    /// Starts services on the given ports (used to bring a killed backend back).
    pub fn start_on(ports: HashMap<&'static str, u16>) -> Mocks {
        let mut cmd = Command::new(mocks_bin());
        let names: Vec<&str> = ports.keys().copied().collect();
        cmd.arg("--services").arg(names.join(","));
        for (name, port) in &ports {
            cmd.arg(format!("--{name}-port")).arg(port.to_string());
        }
        let proc = Proc::spawn("mocks", &mut cmd);
        for port in ports.values() {
            wait_for_port(*port, Duration::from_secs(10));
        }
        Mocks { proc, ports }
    }

    /// Base URL of one service.
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// `host:port` of one service.
    pub fn addr(&self, service: &str) -> String {
        format!("127.0.0.1:{}", self.ports[service])
    }

    /// Clears a service's faults (`DELETE /__faults`).
    pub async fn reset_faults(&self, service: &str) {
        let r = client()
            .delete(format!("{}/__faults", self.url(service)))
            .send()
            .await
            .expect("faults cleared");
        assert!(r.status().is_success());
    }

    /// Sets a service's faults (`PUT /__faults`).
    pub async fn faults(&self, service: &str, faults: serde_json::Value) {
        let r = client()
            .put(format!("{}/__faults", self.url(service)))
            .json(&faults)
            .send()
            .await
            .expect("faults accepted");
        assert!(r.status().is_success());
    }

    /// Number of requests a service saw on `route` (e.g. `/users/{id}`).
    pub async fn count(&self, service: &str, route: &str) -> u64 {
        let v: serde_json::Value = client()
            .get(format!("{}/__stats", self.url(service)))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        v["requests"][route].as_u64().unwrap_or(0)
    }
}

/// Env vars pointing the gateway's four services at `mocks`.
pub fn service_env(mocks: &Mocks) -> Vec<(&'static str, String)> {
    vec![
        ("USER_SERVICE_URL", mocks.url("user")),
        ("ORDER_SERVICE_URL", mocks.url("order")),
        ("PRODUCT_SERVICE_URL", mocks.url("product")),
        ("RECOMMENDATION_SERVICE_URL", mocks.url("recommendation")),
    ]
}
