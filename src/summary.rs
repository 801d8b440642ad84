//! The start-up summary: what this process serves, said once when it starts listening — a
//! readable block on a terminal, one JSON line (the same facts as fields) for a log pipeline.

use crate::config::{Config, KeySource};
use crate::logging::{self, Format};

/// The facts of the summary, each a short text.
struct Facts {
    listeners: Vec<(&'static str, String)>,
    routes: String,
    auth: String,
    store: String,
    config: String,
}

fn facts(config: &Config, conf: Option<&str>, fingerprint: &str) -> Facts {
    let mut listeners = vec![(
        "http",
        format!(
            "{}{}",
            config.listen,
            if config.h2c {
                " (HTTP/1.1 and h2c)"
            } else {
                ""
            }
        ),
    )];
    if let Some(t) = &config.tls {
        let protocols = if t.http2 {
            "h2 and HTTP/1.1"
        } else {
            "HTTP/1.1"
        };
        let certs = t.certificates.len();
        let mtls = t.client_auth.as_ref().map_or("", |c| {
            if c.required {
                ", client certificates required"
            } else {
                ", client certificates asked"
            }
        });
        listeners.push((
            "https",
            format!("{} ({protocols}, {certs} certificate(s){mtls})", t.listen),
        ));
    }
    listeners.push(("metrics", format!("{}/metrics", config.metrics_listen)));
    if let Some(a) = &config.admin {
        listeners.push(("admin", format!("{} (bearer token)", a.listen)));
    }
    let backends: usize = config.upstreams.values().map(|u| u.backends.len()).sum();
    let names: usize = config
        .upstreams
        .values()
        .map(|u| u.names.len() + usize::from(u.srv.is_some()))
        .sum();
    let routes = format!(
        "{} route(s), {} aggregate(s), {} upstream group(s) ({backends} backend address(es){}), {} service(s)",
        config.routes.len(),
        config.aggregates.len(),
        config.upstreams.len(),
        if names > 0 {
            format!(", {names} name(s) resolved at their TTL")
        } else {
            String::new()
        },
        config.services.names().len(),
    );
    let mut auth = Vec::new();
    if !config.auth.secret.is_empty() {
        auth.push("HS256 (JWT_SECRET)".to_string());
    }
    for i in &config.auth.issuers {
        let keys = match &i.keys {
            KeySource::Discovery(_) => "keys by discovery, loading; /readyz waits",
            KeySource::Jwks(_) => "key set loading; /readyz waits",
        };
        auth.push(format!("issuer {} ({keys})", i.issuer));
    }
    if let Some(k) = &config.auth.api_keys {
        auth.push(format!("API keys ({} in the keys file)", k.keys.len()));
    }
    let r = &config.redis;
    let store = match (r.kind(), &r.sentinel, &r.url) {
        ("redis_cluster", _, _) => format!("Redis Cluster ({} seed node(s))", r.cluster.len()),
        ("redis_sentinel", Some(s), _) => format!("Redis Sentinel (master `{}`)", s.master),
        ("redis", _, Some(url)) => format!("Redis {}", redact(url)),
        _ => "embedded (this replica's own limits and cache)".into(),
    };
    let config_text = format!(
        "{}, fingerprint {fingerprint}",
        conf.unwrap_or("(none: the defaults)")
    );
    Facts {
        listeners,
        routes,
        auth: if auth.is_empty() {
            "none".into()
        } else {
            auth.join("; ")
        },
        store,
        config: config_text,
    }
}

/// A Redis URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Says what this process serves: a block on a terminal, one JSON line otherwise.
pub fn announce(config: &Config, conf: Option<&str>, fingerprint: &str) {
    let f = facts(config, conf, fingerprint);
    let version = env!("CARGO_PKG_VERSION");
    let pingora = env!("PINGORA_VERSION");
    match logging::format() {
        Format::Text => {
            let mut block =
                format!("gateway {version} (Pingora {pingora}) starting; listening on:\n");
            for (name, what) in &f.listeners {
                block.push_str(&format!("  {name:<9} {what}\n"));
            }
            block.push_str(&format!("  {:<9} {}\n", "serving", f.routes));
            block.push_str(&format!("  {:<9} {}\n", "auth", f.auth));
            block.push_str(&format!("  {:<9} {}\n", "store", f.store));
            block.push_str(&format!("  {:<9} {}", "config", f.config));
            logging::stderr().write_line(format!("{block}\n").into_bytes());
        }
        Format::Json => {
            let listeners: Vec<String> = f
                .listeners
                .iter()
                .map(|(n, w)| format!("{n} {w}"))
                .collect();
            tracing::info!(
                version,
                pingora,
                listeners = %listeners.join(", "),
                serving = %f.routes,
                auth = %f.auth,
                store = %f.store,
                config = %f.config,
                "gateway starting"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadMode;

    #[test]
    fn the_summary_names_listeners_routes_auth_and_store() {
        let env = |k: &str| (k == "JWT_SECRET").then(|| "x".repeat(32));
        let config = Config::from_yaml(
            "gateway:\n  h2c: true\n  upstreams: { a: { backends: ['127.0.0.1:1', '127.0.0.1:2'] } }\n  routes: [{ prefix: /a/, upstream: a }]\n",
            &env,
            LoadMode::Check,
        )
        .unwrap();
        let f = facts(&config, Some("conf/x.yaml"), "abc");
        assert_eq!(
            f.listeners[0],
            ("http", "0.0.0.0:8080 (HTTP/1.1 and h2c)".into())
        );
        assert_eq!(f.listeners[1].0, "metrics");
        assert!(
            f.routes
                .starts_with("1 route(s), 0 aggregate(s), 1 upstream group(s) (2 backend"),
            "{}",
            f.routes
        );
        assert_eq!(f.auth, "HS256 (JWT_SECRET)");
        assert!(f.store.starts_with("embedded"));
        assert_eq!(f.config, "conf/x.yaml, fingerprint abc");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://…@h:6379");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
