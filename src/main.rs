//! The `gateway` command line: run the server (Pingora's own flags) or issue a token.

use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::config::{Config, LoadMode, ProcessEnv};
use pingora::prelude::Opt;
use pingora::server::RunArgs;

// glibc malloc was a large share of the proxy's CPU under load, and mimalloc doubled the memory
// per connection (docs/BENCHMARKS.md); jemalloc, which Pingora itself runs on, costs least.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Edge gateway on Pingora.
#[derive(Parser)]
#[command(name = "gateway", version, about, after_help = env_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

/// Serving: Pingora's own flags, described in the gateway's words.
#[derive(clap::Args)]
struct Serve {
    /// The configuration file: the `gateway:` section and Pingora's server keys
    /// (conf/gateway.yaml documents every key). Without it: the defaults.
    #[arg(short, long, value_name = "FILE")]
    conf: Option<String>,
    /// Check the configuration as start would (secrets from the environment, the files it
    /// names) and exit: 0 valid, 2 not, with a message naming the key.
    #[arg(short, long)]
    test: bool,
    /// Zero-downtime upgrade: take the listening sockets of the running gateway (over
    /// `upgrade_sock`), then send SIGQUIT to the old process; it finishes what it serves.
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background: detach, write `pid_file`, log to `error_log`.
    #[arg(short, long)]
    daemon: bool,
}

impl Serve {
    fn into_opt(self) -> Opt {
        Opt {
            upgrade: self.upgrade,
            daemon: self.daemon,
            nocapture: false,
            test: self.test,
            conf: self.conf,
        }
    }
}

/// The `--help` epilogue: every environment variable the gateway reads.
fn env_help() -> String {
    let mut out = String::from("Environment (overrides the file; docs/CONFIGURATION.md):\n");
    for (name, help) in gateway::config::ENV_VARS
        .iter()
        .zip(gateway::config::ENV_HELP)
    {
        out.push_str(&format!("  {name:<28} {help}\n"));
    }
    out.push_str("  INTROSPECTION_SECRET (or the variable an issuer's client_secret_env names)\n");
    out.push_str("                               an introspecting issuer's client secret\n");
    out
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token signed with JWT_SECRET (for demos, curl and tests).
    Token {
        /// The `sub` claim (user id).
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A role for the `roles` claim; repeat for more.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Print a new API key (give it to the client; it is not stored) and, on the next line,
    /// its entry for the keys file (`gateway.auth.api_keys.keys_file`).
    Apikey {
        /// The identity the key stands for (`X-User-Id`, `key: sub` limits).
        #[arg(long)]
        sub: String,
        /// A role; repeat for more.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A scope; repeat for more.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Exit 0 when the gateway on this host answers `GET /healthz` with 200 on `HTTP_PORT`
    /// (default 8080), else 1: a container's health check without curl or a shell.
    Health {
        /// The port (default: `HTTP_PORT`, else 8080).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Print the route table in match order, or explain which route takes a request.
    Routes {
        /// The configuration file.
        #[arg(short = 'c', long = "conf")]
        conf: std::path::PathBuf,
        /// A request to explain: a method and a URL (`GET https://api.example.com/orders/7`).
        #[arg(long, num_args = 2, value_names = ["METHOD", "URL"])]
        explain: Option<Vec<String>>,
        /// A header of the request explained, `Name: value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

/// Whether `GET /healthz` on 127.0.0.1:`port` answers 200 within two seconds.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let limit = Duration::from_secs(2);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(limit));
    let _ = s.set_write_timeout(Some(limit));
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 16];
    s.write_all(request).is_ok()
        && s.read_exact(&mut head[..12]).is_ok()
        && (head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

fn fail(message: impl std::fmt::Display) -> ! {
    gateway::logging::flush(Duration::from_millis(500));
    eprintln!("gateway: {message}");
    std::process::exit(2);
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Routes {
        conf,
        explain,
        headers,
    }) = &cli.command
    {
        let path = conf.to_string_lossy();
        let text = Config::read(&path).unwrap_or_else(|e| fail(e));
        let config =
            Config::from_yaml(&text, &ProcessEnv, LoadMode::Check).unwrap_or_else(|e| fail(e));
        let explain = explain.as_ref().map(|v| (v[0].as_str(), v[1].as_str()));
        match gateway::routes_report(&config, explain, headers) {
            Ok(text) => print!("{text}"),
            Err(e) => fail(e),
        }
        return;
    }
    if let Some(Command::Health { port }) = &cli.command {
        let port = port.or_else(|| std::env::var("HTTP_PORT").ok()?.trim().parse().ok());
        std::process::exit(i32::from(!healthy(port.unwrap_or(8080))));
    }
    if let Some(Command::Apikey { sub, roles, scopes }) = &cli.command {
        let word = |x: &String| !x.is_empty() && !x.contains(char::is_whitespace);
        if sub.is_empty() || sub.chars().any(char::is_control) {
            fail("--sub must be a non-empty id without control characters");
        }
        if !roles.iter().chain(scopes).all(word) {
            fail("roles and scopes are words without spaces");
        }
        let (key, digest) = gateway::edge::auth::new_api_key();
        let list = |xs: &[String]| {
            xs.iter()
                .map(|x| serde_json::Value::from(x.as_str()).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("{key}");
        println!(
            "  - {{ sha256: \"{digest}\", sub: {}, roles: [{}], scopes: [{}] }}",
            serde_json::Value::from(sub.as_str()),
            list(roles),
            list(scopes)
        );
        return;
    }
    if let Some(Command::Token { sub, ttl, roles }) = cli.command {
        let secret = std::env::var("JWT_SECRET").unwrap_or_default();
        if secret.is_empty() {
            fail("JWT_SECRET is required to sign a token");
        }
        match gateway::edge::auth::issue_token(secret.as_bytes(), &sub, ttl, &roles) {
            Ok(t) => println!("{t}"),
            Err(e) => fail(format!("cannot sign the token: {e}")),
        }
        return;
    }
    let opt = cli.serve.into_opt();
    let path = opt.conf.clone();
    // Read once: the same text is parsed here and fingerprinted and kept by the reloader.
    let text = match &path {
        Some(p) => Config::read(p).unwrap_or_else(|e| fail(e)),
        None => String::new(),
    };
    let mode = if opt.test {
        LoadMode::Check
    } else {
        LoadMode::Run
    };
    if let (Some(p), true) = (&path, text.trim().is_empty()) {
        // Running on defaults because a file came out empty is never what was meant.
        fail(format!(
            "{p} is empty: write at least `gateway:` (conf/gateway.yaml has every key), or start without -c for the defaults"
        ));
    }
    let config = Config::from_yaml(&text, &ProcessEnv, mode).unwrap_or_else(|e| fail(e));
    if !opt.test {
        // Before the first thread (the log writer): it may set SSL_CERT_FILE.
        gateway::trust::init(config.verifies_against_system_roots());
    }
    gateway::logging::init();
    // rediss:// connections need a TLS crypto provider; ring is the one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !config.auth.secret.is_empty() && config.auth.secret.len() < 32 && !opt.test {
        tracing::warn!(
            "JWT_SECRET is shorter than 32 bytes: HS256 secrets that short can be brute-forced"
        );
    }
    if opt.test {
        // `-t` checks the certificate files too (key matches, not expired).
        if let Some(tls) = &config.tls {
            if let Err(e) = gateway::tls::Certificates::load(tls) {
                fail(e);
            }
        }
        println!(
            "gateway: configuration {} is valid",
            path.as_deref().unwrap_or("(defaults)")
        );
    }
    if !opt.test && !opt.upgrade {
        // Pingora would retry a port in use every second, forever, without a word to the
        // operator; an upgrade takes the old process's sockets instead of binding.
        if let Err(e) = gateway::wait_for_listen_addresses(&config) {
            gateway::logging::flush(Duration::from_millis(500));
            eprintln!("gateway: {e}");
            std::process::exit(1);
        }
    }
    let daemon = opt.daemon;
    let mut server = gateway::build_server(opt, config, text)
        .unwrap_or_else(|e| fail(format!("cannot start: {e}")));
    // With -t this validates Pingora's own keys and exits. With -u it returns once the old
    // process has handed its listening sockets over.
    server.bootstrap();
    if !daemon {
        // Pingora writes `pid_file` only when it daemonizes; `kill -HUP "$(cat pid_file)"` (a
        // reload) and an upgrade's `kill -QUIT` must work in the foreground too. Written here,
        // an upgrade's new process takes the file over once it holds the sockets.
        let path = &server.configuration.pid_file;
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            tracing::warn!(file = %path, error = %e, "cannot write the pid file");
        }
    }
    server.run(RunArgs::default());
    // Pingora's `run_forever` exits here without a word; the log queues are written out first.
    gateway::logging::flush(Duration::from_secs(2));
    std::process::exit(0);
}
