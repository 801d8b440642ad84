use crate::config::{Config, LoadMode};

use super::*;

fn load(routes: &str) -> Result<Config, String> {
    let yaml = format!(
        "gateway:\n  upstreams:\n    a: {{ backends: ['127.0.0.1:1'] }}\n    b: {{ backends: ['127.0.0.1:2'] }}\n  rate_limit: {{ policies: [{{ name: per-user, key: sub, limit: 5 }}] }}\n  routes:\n{routes}"
    );
    let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
    Config::from_yaml(&yaml, &env, LoadMode::Run).map_err(|e| e.to_string())
}

#[test]
fn the_full_form_resolves() {
    let c = load(
        r#"
    - name: orders-read
      match:
        hosts: ["API.example.com:443", "*.example.com"]
        path: { template: "/orders/{id}/{rest...}" }
        methods: [get, HEAD]
        headers: { X-Api-Version: ["2", "3"] }
        query: { preview: "true" }
      upstream: a
      rewrite: { path: "/o/{id}/{rest}" }
      auth: optional
      require: { scopes: ["orders:read"], roles: [staff] }
      rate_limit: [per-user, default]
      timeouts: { connect_ms: 1000, read_ms: 30000, total_ms: 60000 }
      retries: { attempts: 2, on: [connect, "502", 503] }
      headers:
        request: { set: { X-Tenant: "{claim.tenant}" }, remove: [Cookie] }
        response: { set: { Strict-Transport-Security: "max-age=31536000" }, remove: [Server] }
"#,
    )
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(r.name, "orders-read");
    assert_eq!(
        r.hosts,
        [
            HostMatch::Exact("api.example.com".into()),
            HostMatch::Wildcard(".example.com".into())
        ]
    );
    assert_eq!(r.conditions.methods, [Method::GET, Method::HEAD]);
    assert_eq!(r.conditions.count(), 3);
    assert_eq!(r.auth, RouteAuth::Optional);
    let retries = r.retries.as_ref().unwrap();
    assert_eq!((retries.attempts, retries.on_connect), (2, true));
    assert_eq!(retries.statuses, [502, 503]);
    assert_eq!(r.request_headers.remove, ["cookie"]);
    assert_eq!(r.response_headers.set[0].0, "strict-transport-security");
}

#[test]
fn the_shorthand_keeps_working_and_names_default_to_hosts_and_path() {
    let c = load("    - { prefix: /api/, upstream: a, strip_prefix: /api }\n    - { match: { hosts: [x.io], path: { exact: /login } }, upstream: b }\n").unwrap();
    assert_eq!(c.routes[0].name, "/api/");
    assert_eq!(c.routes[0].path, PathMatch::Prefix("/api/".into()));
    assert_eq!(
        c.routes[0].rewrite,
        Some(Rewrite::Prefix {
            strip: "/api".into(),
            prefix: String::new()
        })
    );
    assert_eq!(c.routes[1].name, "x.io/login");
}

#[test]
fn equal_specificity_is_refused_naming_both() {
    let e = load("    - { name: one, prefix: /api/, upstream: a }\n    - { name: two, match: { path: { prefix: /api/ } }, upstream: b }\n").unwrap_err();
    assert!(
        e.contains("`one`") && e.contains("`two`") && e.contains("gateway.routes[1]"),
        "{e}"
    );
    // Disjoint methods, or a condition more, or another host: no conflict.
    load("    - { name: r, match: { path: { prefix: /o }, methods: [GET] }, upstream: a }\n    - { name: w, match: { path: { prefix: /o }, methods: [POST] }, upstream: b }\n    - { name: v, match: { path: { prefix: /o }, methods: [GET], headers: { X-V: '2' } }, upstream: b }\n    - { name: h, match: { hosts: [a.io], path: { prefix: /o } }, upstream: b }\n").unwrap();
    let e = load("    - { name: t1, match: { path: { template: '/u/{id}' } }, upstream: a }\n    - { name: t2, match: { path: { template: '/u/{name}' } }, upstream: b }\n").unwrap_err();
    assert!(e.contains("`t1`") && e.contains("`t2`"), "{e}");
}

#[test]
fn mistakes_are_refused_with_their_key() {
    for (routes, key) in [
        ("    - { prefix: api, upstream: a }\n", "routes[0].match.path"),
        ("    - { prefix: /a, upstream: nope }\n", "routes[0].upstream"),
        ("    - { prefix: /a }\n", "routes[0].upstream"),
        ("    - { prefix: /a, upstream: a, respond: { status: 200 } }\n", "routes[0].upstream"),
        ("    - { match: { hosts: ['a.*.io'] }, upstream: a }\n", "routes[0].match.hosts[0]"),
        ("    - { match: { methods: ['G T'] }, upstream: a }\n", "routes[0].match.methods[0]"),
        ("    - { prefix: /a, upstream: a, rate_limit: [nope] }\n", "routes[0].rate_limit[0]"),
        ("    - { prefix: /a, upstream: a, retries: { attempts: 1, on: ['404'] } }\n", "routes[0].retries.on[0]"),
        ("    - { prefix: /a, upstream: a, headers: { request: { set: { X-A: '{claim}' } } } }\n", "routes[0].headers.request.set.X-A"),
        ("    - { prefix: /a, upstream: a, rewrite: { path: '/b/{id}' } }\n", "routes[0].rewrite.path"),
        ("    - { prefix: /a, upstream: a, auth: public, require: { scopes: [x] } }\n", "routes[0].require"),
        ("    - { prefix: /a, redirect: { to: 'https://x{path}', status: 200 } }\n", "routes[0].redirect.status"),
        ("    - { prefix: /a, upstream: a, headers: { request: { set: { Connection: x } } } }\n", "routes[0].headers.request.set.Connection"),
        ("    - { prefix: /a, upstream: a, credentials: [] }\n", "routes[0].credentials"),
        ("    - { prefix: /a, upstream: a, credentials: [bearer, cookie] }\n", "routes[0].credentials[1]"),
        ("    - { prefix: /a, upstream: a, auth: public, credentials: [bearer] }\n", "routes[0].credentials"),
        ("    - { prefix: /a, upstream: a, credentials: [mtls] }\n", "routes[0].credentials: lists mtls, but gateway.tls.client_auth"),
    ] {
        let e = load(routes).unwrap_err();
        assert!(e.contains(key), "{routes}: {e}");
    }
}
