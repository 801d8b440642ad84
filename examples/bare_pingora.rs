//! The framework's floor, for `make bench`: a Pingora proxy with `upstream_peer` only and
//! Pingora's default settings — no filters, no limits, no metrics — in front of one origin.
//! One setting follows the gateway's default instead: an upstream pool of 1024 idle
//! connections, so that the h2 row compares the request path, not two pool sizes.
//!
//! `bare_pingora <listen ip:port> <origin ip:port> [<tls ip:port> <cert.pem> <key.pem>]`: the
//! optional TLS listener is Pingora's intermediate settings with h2 offered by ALPN (the floor
//! of the HTTPS rows).

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;

/// Sends every request to the one origin.
struct Bare {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.origin.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(origin)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: bare_pingora <listen ip:port> <origin ip:port> [<tls ip:port> <cert.pem> <key.pem>]"
        );
        std::process::exit(2);
    };
    let conf = pingora::server::configuration::ServerConf {
        upstream_keepalive_pool_size: 1024,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            origin: origin.clone(),
        },
    );
    proxy.add_tcp(listen);
    if let (Some(tls), Some(cert), Some(key)) = (args.get(3), args.get(4), args.get(5)) {
        match TlsSettings::intermediate(cert, key) {
            Ok(mut settings) => {
                // ALPN offers h2 as the gateway's and nginx's listeners do.
                settings.enable_h2();
                proxy.add_tls_with_settings(tls, None, settings);
            }
            Err(e) => {
                eprintln!("bare_pingora: TLS listener {tls}: {e}");
                std::process::exit(2);
            }
        }
    }
    server.add_service(proxy);
    server.run_forever();
}
