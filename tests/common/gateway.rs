//! The real gateway binary on free ports, tokens for it, and the HTTP clients tests use on it.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, gateway_bin, Proc};

/// A running gateway process.
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    /// The environment it was started with (for a second process on the same conf).
    pub env: Vec<(String, String)>,
}

/// Secret used by every test gateway.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

/// The profile aggregate as conf/gateway.yaml declares it, with this cache TTL and deadline:
/// an `aggregates:` key for a test's `gateway:` section.
pub fn profile_aggregate(ttl_seconds: u64, deadline_ms: u64) -> String {
    profile_aggregate_with(
        deadline_ms,
        &format!(r#"ttl_seconds: {ttl_seconds}, key: "profile:{{id}}""#),
    )
}

/// As [`profile_aggregate`], with `cache` as the inside of its `cache: {…}` (tags, an
/// in-process tier, stale serving).
pub fn profile_aggregate_with(deadline_ms: u64, cache: &str) -> String {
    format!(
        r#"aggregates:
  - name: profile
    path: "/api/profile/{{id}}"
    deadline_ms: {deadline_ms}
    authorize: {{ param: id, claim: sub, bypass_roles: [admin], me: true }}
    cache: {{ {cache} }}
    legs:
      user:            {{ service: user,  path: "/users/{{id}}", required: true, expect: object }}
      orders:          {{ service: order, path: "/orders/user/{{user.id}}", default: [], expect: array }}
      products:        {{ service: product, path: "/products", after: [user], default: [], expect: array }}
      recommendations: {{ service: recommendation, path: "/recommendations/{{id}}", after: [user], default: [], expect: array }}
"#
    )
}

fn conf_text(dir: &std::path::Path, port: u16, metrics_port: u16, section: &str) -> String {
    format!(
        "version: 1\nthreads: 2\npid_file: {dir}/gw.pid\nupgrade_sock: {dir}/upgrade.sock\n\
         grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 10\n\
         gateway:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics_port}\"\n{section}",
        dir = dir.display(),
        section = indent(&with_demo(section)),
    )
}

/// A test gateway runs the demo as `make run` does unless its section says otherwise: the
/// demo's services when it declares none, and the profile aggregate over them when it
/// declares neither services nor aggregates.
fn with_demo(section: &str) -> String {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(section).expect("a test's gateway section is YAML");
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    let Some(map) = value.as_mapping_mut() else {
        return section.to_string();
    };
    let (services, aggregates) = (map.contains_key("services"), map.contains_key("aggregates"));
    if services {
        return section.to_string();
    }
    map.insert(
        "services".into(),
        serde_yaml::from_str(gateway::testing::DEMO_SERVICES).expect("demo services"),
    );
    if !aggregates {
        map.insert(
            "aggregates".into(),
            serde_yaml::from_str(gateway::testing::PROFILE_AGGREGATE).expect("demo aggregate"),
        );
    }
    serde_yaml::to_string(&value).expect("a YAML mapping")
}

/// Fixed windows are aligned to the clock; a burst must not straddle a boundary, so when the
/// current window of `window` seconds ends within `margin`, start in the next one.
pub async fn align_to_window(window: u64, margin: u64) {
    let into = gateway::clock::unix_now() % window;
    if window - into <= margin {
        tokio::time::sleep(Duration::from_secs(window - into)).await;
    }
}

/// A valid token for `sub`, one hour.
pub fn token(sub: &str) -> String {
    gateway::edge::auth::issue_token(SECRET.as_bytes(), sub, Duration::from_secs(3600), &[])
        .expect("sign")
}

/// A valid token for `sub` with roles.
pub fn token_with_roles(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    gateway::edge::auth::issue_token(SECRET.as_bytes(), sub, Duration::from_secs(3600), &roles)
        .expect("sign")
}

/// How to start a gateway: [`Gateway::builder`], then what differs from the usual start, then
/// [`GatewayBuilder::start`].
pub struct GatewayBuilder {
    section: String,
    env: Vec<(String, String)>,
    ready: bool,
    unread_pipes: bool,
}

impl GatewayBuilder {
    /// Adds one environment variable (after the harness's own, so it can replace them).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Adds environment variables, as [`GatewayBuilder::env`].
    pub fn envs(mut self, env: &[(&str, String)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    /// Waits only for the client port to accept, not for `/readyz` (to test readiness).
    pub fn unready(mut self) -> Self {
        self.ready = false;
        self
    }

    /// Puts stdout and stderr on pipes that nobody reads (to test a reader that stops
    /// reading), instead of the log files every other gateway writes.
    pub fn unread_pipes(mut self) -> Self {
        self.unread_pipes = true;
        self
    }

    /// Writes the conf file, starts the gateway and waits until it is ready: `/readyz`
    /// answers 200 and the metrics and admin listeners accept.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let metrics_port = free_port();
        let conf = conf_text(dir.path(), port, metrics_port, &self.section);
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, conf).expect("write conf");
        let proc = spawn_gateway("gateway", &path, &self.env, &[], self.unread_pipes);
        let gw = Gateway {
            proc,
            port,
            metrics_port,
            dir,
            env: self.env,
        };
        if !self.ready {
            super::wait_for_port(port, Duration::from_secs(20));
            return gw;
        }
        let url = gw.url("/readyz");
        eventually(
            "gateway /readyz",
            Duration::from_secs(20),
            async || matches!(client().get(&url).send().await, Ok(r) if r.status() == 200),
        )
        .await;
        // Pingora binds each service's listener on that service's own runtime, so the metrics
        // and admin listeners may still be starting when the main one answers.
        for p in std::iter::once(metrics_port).chain(admin_port(&self.section)) {
            eventually(
                &format!("a listener on port {p}"),
                Duration::from_secs(20),
                async || {
                    tokio::net::TcpStream::connect(("127.0.0.1", p))
                        .await
                        .is_ok()
                },
            )
            .await;
        }
        gw
    }
}

impl Gateway {
    /// A gateway whose conf file's `gateway:` section is `gateway_section` (YAML, without the
    /// listen keys, which the harness adds on free ports).
    pub fn builder(gateway_section: &str) -> GatewayBuilder {
        GatewayBuilder {
            section: gateway_section.to_string(),
            env: Vec::new(),
            ready: true,
            unread_pipes: false,
        }
    }

    /// `Gateway::builder(gateway_section).envs(env).start()`: the usual start.
    pub async fn start(gateway_section: &str, env: &[(&str, String)]) -> Gateway {
        Gateway::builder(gateway_section).envs(env).start().await
    }

    /// Starts a second gateway on the same conf with Pingora's `-u`: it takes the listening
    /// sockets over once this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Proc {
        spawn_gateway(
            "gateway (upgrade)",
            &self.dir.path().join("gateway.yaml"),
            &self.env,
            &["-u"],
            false,
        )
    }

    /// Stops the gateway (SIGTERM) and returns everything it wrote on stdout and stderr.
    pub fn stop_and_read(&mut self) -> (String, String) {
        self.proc.terminate();
        assert!(
            self.proc.wait_exit(Duration::from_secs(15)).is_some(),
            "the gateway exits on SIGTERM"
        );
        self.proc
            .logs
            .as_ref()
            .expect("a gateway with log files (not `unread_pipes`)")
            .read()
    }

    /// Replaces the conf file's `gateway:` section (listen keys kept), atomically (written
    /// beside it, then renamed over it), for a reload to pick up.
    pub fn rewrite(&self, gateway_section: &str) {
        let conf = conf_text(
            self.dir.path(),
            self.port,
            self.metrics_port,
            gateway_section,
        );
        let tmp = self.dir.path().join("gateway.yaml.new");
        std::fs::write(&tmp, conf).expect("write conf");
        std::fs::rename(&tmp, self.dir.path().join("gateway.yaml")).expect("rename conf");
    }

    /// URL of `path` on the client listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Status of `GET /healthz` (the gateway is still serving).
    pub async fn health_status(&self) -> u16 {
        client()
            .get(self.url("/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

fn spawn_gateway(
    name: &str,
    conf: &std::path::Path,
    env: &[(String, String)],
    extra: &[&str],
    unread_pipes: bool,
) -> Proc {
    let mut cmd = Command::new(gateway_bin());
    cmd.args(extra).arg("-c").arg(conf);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    if unread_pipes {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        return Proc::new(name, cmd.spawn().expect("gateway starts"));
    }
    Proc::spawn(name, &mut cmd)
}

/// The port of the admin listener a `gateway:` section declares. Only the admin port: a bare
/// TCP probe of a TLS port would count as a failed handshake.
fn admin_port(section: &str) -> Option<u16> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(section).ok()?;
    let listen = yaml.get("admin")?.get("listen")?.as_str()?;
    listen.rsplit_once(':')?.1.parse().ok()
}

fn indent(section: &str) -> String {
    section
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
}

/// The sum of every sample in a metrics text whose line starts with `prefix` (a series name
/// and, optionally, the start of its labels).
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `rate_limit_decisions_total` for one backend, policy and result in a metrics text.
pub fn decisions(metrics: &str, backend: &str, policy: &str, result: &str) -> f64 {
    metric_sum(
        metrics,
        &format!(
            r#"rate_limit_decisions_total{{backend="{backend}",policy="{policy}",result="{result}"}}"#
        ),
    )
}

/// A shared HTTP client with no proxy from the environment and a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Sends raw bytes (a client library would normalise them) and returns what came back until the
/// server closed or went quiet for `quiet`.
pub async fn raw_request(port: u16, request: &[u8], quiet: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one GET per URL, all at once, each with `bearer`; returns the statuses in URL order
/// (the test fails if any request gets no answer at all).
pub async fn concurrent_gets(urls: Vec<String>, bearer: &str) -> Vec<u16> {
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let bearer = bearer.to_string();
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(bearer)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task").expect("answered"));
    }
    out
}

/// The `X-Cache` header of a response ("" when absent).
pub fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}
