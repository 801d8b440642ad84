use super::*;
use crate::config::{Config, LoadMode};

fn table(routes: &str, with_profile: bool) -> RouteTable {
    let profile = if with_profile {
        crate::testing::profile_section()
    } else {
        String::new()
    };
    let profile: serde_yaml::Value =
        serde_yaml::from_str(&format!("{{{profile}}}")).expect("profile");
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&format!(
        "gateway:\n  upstreams:\n    users: {{ backends: ['127.0.0.1:1'] }}\n    orders: {{ backends: ['127.0.0.1:2'] }}\n  routes:\n{routes}\n"
    ))
    .expect("routes");
    if let (Some(g), serde_yaml::Value::Mapping(p)) = (yaml.get_mut("gateway"), profile) {
        for (k, v) in p {
            g[k] = v;
        }
    }
    let yaml = serde_yaml::to_string(&yaml).expect("yaml");
    let env = |k: &str| (k == "JWT_SECRET").then(|| "s".to_string());
    let cfg = Config::from_yaml(&yaml, &env, LoadMode::Run).expect("test config");
    let store = Arc::new(crate::store::Store::Memory(Default::default()));
    let aggregates = Aggregates::new(&cfg, store).expect("aggregates");
    RouteTable::build(&cfg, &aggregates, None)
}

/// The label of the route `METHOD host path?query` (with `headers`) goes to.
fn pick(
    t: &RouteTable,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> String {
    let uri: Uri = target.parse().unwrap();
    let mut map = HeaderMap::new();
    if !host.is_empty() {
        map.insert(http::header::HOST, host.parse().unwrap());
    }
    for (n, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let req = Request {
        uri: &uri,
        method: &method,
        headers: &map,
    };
    match t.route(&req, &mut Vec::new()) {
        Route::NotAllowed(allow) => format!("405 {allow}"),
        r => r.label().to_string(),
    }
}

#[test]
fn prefixes_aggregates_and_builtins() {
    let t = table(
        "    - { prefix: /api/users/, upstream: users }\n    - { prefix: /api/orders, upstream: orders }\n    - { name: root, prefix: /api/, upstream: orders }\n",
        true,
    );
    assert_eq!(pick(&t, "GET", "", "/api/users/1", &[]), "/api/users/");
    assert_eq!(pick(&t, "GET", "", "/api/orders", &[]), "/api/orders");
    assert_eq!(pick(&t, "GET", "", "/api/profile/1", &[]), "profile");
    assert_eq!(
        pick(&t, "GET", "", "/api/profile/1/x", &[]),
        "profile",
        "400 from the aggregate"
    );
    assert_eq!(pick(&t, "GET", "", "/api/profile", &[]), "profile");
    assert_eq!(
        pick(&t, "GET", "", "/api/profilex", &[]),
        "root",
        "not under the aggregate"
    );
    assert_eq!(pick(&t, "GET", "", "/healthz", &[]), "healthz");
    assert_eq!(pick(&t, "GET", "", "/readyz", &[]), "readyz");
    assert_eq!(pick(&t, "GET", "", "/other", &[]), "not_found");
}

#[test]
fn specificity_decides_never_file_order() {
    let t = table(
        r#"
    - { name: any, match: { path: { prefix: "/" } }, upstream: users }
    - { name: wild, match: { hosts: ["*.example.com"], path: { prefix: "/" } }, upstream: users }
    - { name: deep-wild, match: { hosts: ["*.eu.example.com"], path: { prefix: "/" } }, upstream: users }
    - { name: exact-host, match: { hosts: ["api.example.com"], path: { prefix: "/" } }, upstream: users }
    - { name: orders, match: { hosts: ["api.example.com"], path: { prefix: "/orders" } }, upstream: orders }
    - { name: orders-write, match: { hosts: ["api.example.com"], path: { prefix: "/orders" }, methods: [POST, PUT] }, upstream: orders }
    - { name: order, match: { hosts: ["api.example.com"], path: { template: "/orders/{id}" } }, upstream: orders }
    - { name: login, match: { hosts: ["api.example.com"], path: { exact: "/orders/login" } }, upstream: orders }
    - { name: v2, match: { path: { prefix: "/v" }, headers: { X-Api-Version: ["2", "3"] } }, upstream: orders }
    - { name: preview, match: { path: { prefix: "/v" }, methods: [GET], query: { preview: "true" } }, upstream: orders, rate_limit: [default] }
"#,
        false,
    );
    assert_eq!(pick(&t, "GET", "api.example.com", "/x", &[]), "exact-host");
    assert_eq!(
        pick(&t, "GET", "API.Example.COM:8443", "/x", &[]),
        "exact-host",
        "case and port"
    );
    assert_eq!(pick(&t, "GET", "a.example.com", "/x", &[]), "wild");
    assert_eq!(pick(&t, "GET", "a.eu.example.com", "/x", &[]), "deep-wild");
    assert_eq!(
        pick(&t, "GET", "example.com", "/x", &[]),
        "any",
        "a wildcard needs a label"
    );
    assert_eq!(pick(&t, "GET", "other.io", "/x", &[]), "any");
    assert_eq!(pick(&t, "GET", "api.example.com", "/orders", &[]), "orders");
    assert_eq!(
        pick(&t, "POST", "api.example.com", "/orders", &[]),
        "orders-write"
    );
    assert_eq!(
        pick(&t, "GET", "api.example.com", "/orders/7", &[]),
        "order"
    );
    assert_eq!(
        pick(&t, "GET", "api.example.com", "/orders/login", &[]),
        "login"
    );
    assert_eq!(
        pick(&t, "GET", "api.example.com", "/orders/7/x", &[]),
        "orders"
    );
    assert_eq!(pick(&t, "GET", "", "/v1", &[("x-api-version", "3")]), "v2");
    assert_eq!(pick(&t, "GET", "", "/v1", &[("x-api-version", "4")]), "any");
    assert_eq!(pick(&t, "GET", "", "/v1?a=1&preview=true", &[]), "preview");
    assert_eq!(pick(&t, "GET", "", "/v1?preview=false", &[]), "any");
}

#[test]
fn a_path_routed_for_other_methods_is_405_with_allow() {
    let t = table(
        "    - { name: r, match: { path: { exact: /o }, methods: [GET, HEAD] }, upstream: users }\n    - { name: w, match: { path: { exact: /o }, methods: [POST] }, upstream: users }\n",
        false,
    );
    assert_eq!(pick(&t, "DELETE", "", "/o", &[]), "405 GET, HEAD, POST");
    assert_eq!(pick(&t, "POST", "", "/o", &[]), "w");
    assert_eq!(pick(&t, "GET", "", "/p", &[]), "not_found");
}

#[test]
fn template_params_are_captured_raw() {
    let t = table(
        "    - { name: t, match: { path: { template: '/u/{id}/f/{rest...}' } }, upstream: users, rewrite: { path: '/users/{id}/{rest}' } }\n",
        false,
    );
    let uri: Uri = "/u/a%2Fb/f/x/y?q=1".parse().unwrap();
    let mut params = Vec::new();
    let req = Request {
        uri: &uri,
        method: &Method::GET,
        headers: &HeaderMap::new(),
    };
    let Route::Proxy(r) = t.route(&req, &mut params) else {
        panic!("a proxy route");
    };
    assert_eq!(&*params[0].1, "a%2Fb");
    assert_eq!(
        r.upstream_target(uri.path(), uri.query(), &params)
            .as_deref(),
        Some("/users/a%2Fb/x/y?q=1")
    );
}
