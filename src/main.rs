//! The `gateway` command line: run the server (Pingora's own flags) or issue a token.

use clap::Parser;
use gateway::config::{Config, ProcessEnv, SecretPolicy};
use pingora::prelude::Opt;

/// Edge gateway on Pingora.
#[derive(Parser)]
#[command(name = "gateway", version, about)]
struct Cli {
    #[command(flatten)]
    opt: Opt,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(filter)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let opt = cli.opt;
    let path = opt.conf.clone();
    let policy = if opt.test {
        SecretPolicy::Optional
    } else {
        SecretPolicy::Required
    };
    let loaded = match &path {
        Some(p) => Config::load(p, &ProcessEnv, policy),
        None => Config::from_yaml("", &ProcessEnv, policy),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            std::process::exit(2);
        }
    };
    if opt.test {
        println!(
            "gateway: configuration {} is valid",
            path.as_deref().unwrap_or("(defaults)")
        );
    }
    let mut server = match gateway::build_server(opt, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: cannot start: {e}");
            std::process::exit(2);
        }
    };
    // With -t this validates Pingora's own keys and exits.
    server.bootstrap();
    server.run_forever();
}
