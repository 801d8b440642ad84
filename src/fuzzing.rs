//! Entry points for the fuzz targets under `fuzz/` (the `fuzzing` feature; never in a
//! release): each takes arbitrary bytes, runs one parser of the edge on them, and panics when
//! an invariant breaks, which is what a fuzzer reports. Each function names its invariants.

use std::sync::{Arc, LazyLock};

use crate::config::{Backslash, Config, EncodedSlash, LoadMode, PathRules};
use crate::edge::hygiene;
use crate::proxy::routes::{self, Route, RouteTable};

/// The HS256 secret the token target's verifier holds.
pub const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32b";

fn env(key: &str) -> Option<String> {
    (key == "JWT_SECRET").then(|| String::from_utf8_lossy(SECRET).into_owned())
}

/// Path normalisation under the rules the first byte picks: never a panic; a result starts
/// with `/`, holds no `.` or `..` segment, no empty segment when slashes merge, no byte a
/// target cannot carry; normalising it again changes nothing.
pub fn path(data: &[u8]) {
    let Some((&pick, target)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        merge_slashes: pick & 1 == 0,
        encoded_slash: match (pick >> 1) % 3 {
            0 => EncodedSlash::Keep,
            1 => EncodedSlash::Decode,
            _ => EncodedSlash::Reject,
        },
        backslash: if pick & 0x80 == 0 {
            Backslash::Reject
        } else {
            Backslash::Encode
        },
    };
    let mut input = b"/".to_vec();
    input.extend_from_slice(target);
    let Ok(out) = crate::edge::path::normalise(&input, &rules) else {
        return;
    };
    let canon = out.unwrap_or_else(|| String::from_utf8_lossy(&input).into_owned());
    let path = canon.split('?').next().unwrap_or_default();
    assert!(path.starts_with('/'), "{canon:?}");
    for seg in path.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "a dot segment in {canon:?}");
    }
    if rules.merge_slashes {
        assert!(!path.contains("//"), "{canon:?}");
    }
    assert!(
        canon.bytes().all(|b| b > 0x20 && b != 0x7f),
        "a byte a target cannot carry in {canon:?}"
    );
    let again = crate::edge::path::normalise(canon.as_bytes(), &rules);
    assert_eq!(again, Ok(None), "normalising {canon:?} again changed it");
}

/// A request head (`METHOD TARGET` on the first line, `Name: value` lines after) through the
/// gateway's head rules, then hop-by-hop removal: never a panic, and a head that is accepted
/// never carries both `Content-Length` and `Transfer-Encoding`, nor a header named with `_`.
pub fn head(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let Ok(mut req) = pingora::http::RequestHeader::build(method, target.as_bytes(), None) else {
        return;
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let _ = req.append_header(name.trim().to_string(), value.trim());
        }
    }
    let limits = Config::from_yaml("", &env, LoadMode::Check)
        .map(|c| c.limits)
        .unwrap_or_else(|e| panic!("the empty conf loads: {e}"));
    if req.raw_path().first() != Some(&b'/') && !hygiene::to_origin_form(&mut req) {
        return;
    }
    let Ok(head) = hygiene::check_request(&req, &limits, false) else {
        return;
    };
    if head.underscored {
        hygiene::drop_underscored(&mut req);
    }
    hygiene::strip_hop_by_hop(&mut req, false);
    let cl = req.headers.contains_key(http::header::CONTENT_LENGTH);
    let te = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    assert!(
        !(cl && te),
        "an accepted head carries both CL and TE: {req:?}"
    );
    assert!(
        req.headers.keys().all(|k| !k.as_str().contains('_')),
        "{req:?}"
    );
}

/// The HS256 verifier (with forwarded and dotted claim paths) on a token: never a panic, and
/// never an identity for a token whose signature does not check out with the secret.
pub fn token(data: &[u8]) {
    static AUTH: LazyLock<crate::edge::auth::Authenticator> = LazyLock::new(|| {
        let yaml = "gateway: { auth: { roles_claim: realm.roles, forward_claims: { tenant: X-Tenant, org.id: X-Org } } }";
        let cfg = Config::from_yaml(yaml, &env, LoadMode::Run)
            .unwrap_or_else(|e| panic!("the token target's conf loads: {e}"));
        crate::edge::auth::Authenticator::new(
            &cfg.auth,
            8192,
            &[],
            vec![vec!["tenant".into()], vec!["a".into(), "b".into()]],
            true,
        )
    });
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if AUTH.verify(token).is_ok() {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let key = jsonwebtoken::DecodingKey::from_secret(SECRET);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).is_ok(),
            "verified without a valid signature: {token:?}"
        );
    }
}

/// A JWKS document and an OIDC discovery document (the same bytes as both): never a panic;
/// a discovery document only ever yields an https key-set URL.
pub fn key_documents(data: &[u8]) {
    let _ = crate::edge::auth::jwks::KeySet::parse(data);
    if let Ok((jwks, introspection)) =
        crate::edge::auth::provider::discovery_urls(data, "https://idp.example", false)
    {
        for url in std::iter::once(&jwks).chain(introspection.as_ref()) {
            assert_eq!(url.scheme(), "https", "{url}");
        }
    }
}

/// The aggregate templates over a service's JSON (the input), as legs and `for_each` read it:
/// never a panic; a filled path never gains a segment nor climbs out of one.
pub fn templates(data: &[u8]) {
    static CONF: LazyLock<Config> = LazyLock::new(|| {
        let yaml = r#"
gateway:
  services: { s: { url: "http://127.0.0.1:1" } }
  aggregates:
    - name: a
      path: "/a/{id}"
      legs:
        first: { service: s, path: "/x/{id}" }
        second: { service: s, path: "/u/{first.user.id}/o/{first.orders.0.id}", after: [first] }
        each: { service: s, path: "/p/{item.id}/{item.sku}", for_each: first }
"#;
        Config::from_yaml(yaml, &env, LoadMode::Run)
            .unwrap_or_else(|e| panic!("the templates target's conf loads: {e}"))
    });
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let legs = &CONF.aggregates[0].legs;
    let params = ["7".to_string()];
    let values = [(0usize, &json)];
    let check = |out: Option<String>, slashes: usize| {
        if let Some(path) = out {
            assert_eq!(path.matches('/').count(), slashes, "{path:?}");
            assert!(!path.split('/').any(|s| s == ".."), "{path:?}");
        }
    };
    check(
        crate::aggregate::template::render(&legs[1].path, &params, &values, None),
        4,
    );
    let items: Vec<&serde_json::Value> = match &json {
        serde_json::Value::Array(a) => a.iter().take(100).collect(),
        other => vec![other],
    };
    for item in items {
        check(
            crate::aggregate::template::render(&legs[2].path, &params, &values, Some(item)),
            3,
        );
    }
}

/// Route matching (hosts, templates, methods, headers, query) and the header rules' values:
/// the input is `METHOD HOST TARGET` then a claim value. Never a panic, and a value sent never
/// holds CR, LF or NUL.
pub fn route(data: &[u8]) {
    static TABLE: LazyLock<RouteTable> = LazyLock::new(|| {
        let yaml = r#"
gateway:
  upstreams: { g: { backends: ["127.0.0.1:1"] } }
  routes:
    - { name: any, match: { path: { prefix: "/" } }, upstream: g }
    - { name: wild, match: { hosts: ["*.example.com"], path: { prefix: "/w" } }, upstream: g }
    - { name: exact, match: { hosts: ["api.example.com"], path: { exact: "/login" }, methods: [POST] }, upstream: g }
    - name: tmpl
      match: { hosts: ["api.example.com"], path: { template: "/u/{id}/f/{rest...}" }, headers: { X-V: ["1", "2"] }, query: { q: "x" } }
      upstream: g
      rewrite: { path: "/users/{id}/{rest}" }
      headers: { request: { set: { X-T: "{claim.tenant}-{param.id}-{host}-{path}" } } }
"#;
        let cfg = Config::from_yaml(yaml, &env, LoadMode::Run)
            .unwrap_or_else(|e| panic!("the route target's conf loads: {e}"));
        let store = Arc::new(crate::store::Store::Memory(Default::default()));
        let aggregates = crate::aggregate::Aggregates::build(&cfg, store, None)
            .unwrap_or_else(|e| panic!("no aggregates: {e}"));
        RouteTable::build(&cfg, &aggregates, None)
    });
    let text = String::from_utf8_lossy(data);
    let (line, claim) = text.split_once('\n').unwrap_or((&text, ""));
    let mut words = line.splitn(3, ' ');
    let (Some(method), Some(host), Some(target)) = (words.next(), words.next(), words.next())
    else {
        return;
    };
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(method.as_bytes()),
        target.parse::<http::Uri>(),
    ) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(h) = http::HeaderValue::from_str(host) {
        headers.insert(http::header::HOST, h);
    }
    headers.insert("x-v", http::HeaderValue::from_static("2"));
    let mut params = Vec::new();
    let req = routes::Request {
        uri: &uri,
        method: &method,
        headers: &headers,
    };
    let Route::Proxy(route) = TABLE.route(&req, &mut params) else {
        return;
    };
    let _ = route.upstream_target(uri.path(), uri.query(), &params);
    let identity = crate::edge::auth::Identity {
        sub: "s".into(),
        roles: Vec::new(),
        forwarded: Box::default(),
        limit_claims: vec![Some(claim.to_string())].into(),
        scopes: Vec::new(),
    };
    let values = routes::Values {
        route: &route,
        params: &params,
        identity: Some(&identity),
        request_id: "r",
        client_ip: None,
        host: Some(host),
        path: uri.path(),
    };
    for (_, t) in &route.config.request_headers.set {
        if let Ok(Some(v)) = values.header(t) {
            assert!(
                !v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "{v:?}"
            );
        }
    }
}

/// The conf loader: any text is a conf or a named error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for mode in [LoadMode::Check, LoadMode::Run] {
        let _ = Config::from_yaml(text, &env, mode);
    }
}
