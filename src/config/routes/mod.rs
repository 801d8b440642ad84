//! `gateway.routes`: what a request must look like (host, path, method, headers, query) and
//! what answers it (an upstream group, a redirect, a fixed answer), with its auth, scopes,
//! limits, timeouts, retries and header rules.
//!
//! - `file`: the schema as written.
//! - [`template`]: path templates and `{…}` value templates.
//! - `specificity`: which of two routes wins, and the conflicts refused at start.

use http::header::HeaderName;
use http::Method;
use std::collections::{BTreeMap, BTreeSet};

use super::check::{invalid, millis, positive, ConfigError};
use super::limits::{buffer_bytes, BodyPolicy};
use super::upstreams::UpstreamConfig;

mod file;
mod specificity;
pub mod template;
pub mod types;

pub(crate) use self::file::RouteFile;
use self::file::{AuthModeFile, HeaderRuleFile, MatchFile, StripFile};
pub(super) use self::specificity::check_conflicts;
pub use self::specificity::Specificity;
use self::template::{PathTemplate, ValueTemplate, Vars};
pub use self::types::{
    Conditions, Credentials, HeaderRules, HostMatch, Mirror, PathMatch, Require, Rewrite,
    RouteAuth, RouteConfig, RouteRetries, RouteTarget, RouteTimeouts, Split, Sticky,
};

/// Parses a host condition: lower-cased, port removed; `*.` only as the whole first label.
pub(crate) fn parse_host(text: &str) -> Result<HostMatch, String> {
    let lower = text.trim().to_ascii_lowercase();
    let host = match lower.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => lower.clone(),
    };
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{text}` is not a host name (exact, or `*.` and a name: `*.example.com`)"
        ));
    }
    Ok(if wild {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(key, format!("`{name}` is not a header name")))
}

fn rules(key: &str, f: HeaderRuleFile, params: &[String]) -> Result<HeaderRules, ConfigError> {
    let mut out = HeaderRules::default();
    for (name, value) in f.set {
        let k = format!("{key}.set.{name}");
        let n = header_name(&k, &name)?;
        if is_hop_by_hop(&n) {
            return Err(invalid(k, "a hop-by-hop header cannot be set"));
        }
        let t = ValueTemplate::parse(&value, Vars::Header, params).map_err(|e| invalid(&k, e))?;
        if t.parts.iter().any(|p| match p {
            template::Part::Literal(l) => http::HeaderValue::from_str(l).is_err(),
            _ => false,
        }) {
            return Err(invalid(k, "the value has characters a header cannot carry"));
        }
        out.set.push((n, t));
    }
    for (j, name) in f.remove.iter().enumerate() {
        out.remove
            .push(header_name(&format!("{key}.remove[{j}]"), name)?);
    }
    Ok(out)
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
        TRAILER,
        CONTENT_LENGTH,
        HOST,
    ]
    .contains(n)
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// Resolves every route: each on its own, then names unique and no two in conflict.
pub(super) fn resolve_routes(
    routes: Vec<RouteFile>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    body: &BodyPolicy,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut resolved: Vec<RouteConfig> = Vec::with_capacity(routes.len());
    let mut names = BTreeMap::new();
    for (i, r) in routes.into_iter().enumerate() {
        let key = |k: &str| format!("gateway.routes[{i}].{k}");
        let route = resolve_route(r, &key, upstreams, body)?;
        if let Some(j) = names.insert(route.name.clone(), i) {
            return Err(invalid(
                key("name"),
                format!(
                    "`{}` is also the name of gateway.routes[{j}] (give one a `name`)",
                    route.name
                ),
            ));
        }
        resolved.push(route);
    }
    Ok(resolved)
}

fn resolve_path(
    key: &dyn Fn(&str) -> String,
    m: &mut MatchFile,
    prefix: Option<String>,
) -> Result<PathMatch, ConfigError> {
    let path = m.path.take();
    let path = match (path, prefix) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("prefix"),
                "give the path once: `match.path` or the shorthand `prefix`, not both",
            ))
        }
        (None, Some(p)) => PathMatch::Prefix(p),
        (None, None) => PathMatch::Prefix("/".into()),
        (Some(p), None) => match (p.prefix, p.exact, p.template) {
            (Some(x), None, None) => PathMatch::Prefix(x),
            (None, Some(x), None) => PathMatch::Exact(x),
            (None, None, Some(t)) => PathMatch::Template(
                PathTemplate::parse(&t).map_err(|e| invalid(key("match.path.template"), e))?,
            ),
            _ => {
                return Err(invalid(
                    key("match.path"),
                    "exactly one of `prefix`, `exact` or `template`",
                ))
            }
        },
    };
    if !path.text().starts_with('/') {
        return Err(invalid(
            key("match.path"),
            format!("`{}` must start with `/`", path.text()),
        ));
    }
    Ok(path)
}

fn resolve_conditions(
    key: &dyn Fn(&str) -> String,
    m: MatchFile,
) -> Result<(Vec<HostMatch>, Conditions), ConfigError> {
    let mut hosts = Vec::new();
    for (j, h) in m.hosts.iter().enumerate() {
        let h = parse_host(h).map_err(|e| invalid(key(&format!("match.hosts[{j}]")), e))?;
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    let mut methods = Vec::new();
    for (j, name) in m.methods.iter().enumerate() {
        let upper = name.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes())
            .map_err(|_| invalid(key(&format!("match.methods[{j}]")), "not a method"))?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    let mut headers = Vec::new();
    for (name, values) in m.headers {
        let k = key(&format!("match.headers.{name}"));
        headers.push((header_name(&k, &name)?, values.into_vec()));
    }
    let query = m
        .query
        .into_iter()
        .map(|(n, v)| (n, v.into_vec()))
        .collect();
    Ok((
        hosts,
        Conditions {
            methods,
            headers,
            query,
        },
    ))
}

fn target_group(t: &RouteTarget) -> Option<&str> {
    match t {
        RouteTarget::Upstream(g) => Some(g),
        _ => None,
    }
}

fn resolve_target(
    key: &dyn Fn(&str) -> String,
    r: &mut RouteFile,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    params: &[String],
) -> Result<RouteTarget, ConfigError> {
    let group = |name: &str, at: &str| -> Result<(), ConfigError> {
        if upstreams.contains_key(name) {
            Ok(())
        } else {
            Err(invalid(
                key(at),
                format!("`{name}` is not a group defined under gateway.upstreams"),
            ))
        }
    };
    if let Some(sides) = &r.split {
        if r.upstream.is_some() {
            return Err(invalid(key("split"), "`split` or `upstream`, not both"));
        }
        if sides.is_empty() {
            return Err(invalid(
                key("split"),
                "must list at least one { upstream, weight }",
            ));
        }
        for (i, side) in sides.iter().enumerate() {
            group(&side.upstream, &format!("split[{i}].upstream"))?;
            if side.weight == 0 {
                return Err(invalid(
                    key(&format!("split[{i}].weight")),
                    "must be at least 1",
                ));
            }
            if sides[..i].iter().any(|o| o.upstream == side.upstream) {
                return Err(invalid(
                    key(&format!("split[{i}].upstream")),
                    format!("`{}` is listed twice", side.upstream),
                ));
            }
        }
        r.upstream = Some(sides[0].upstream.clone());
    }
    if let Some(m) = &r.mirror {
        group(&m.upstream, "mirror.upstream")?;
    }
    match (r.upstream.take(), r.redirect.take(), r.respond.take()) {
        (Some(group), None, None) => {
            if !upstreams.contains_key(&group) {
                return Err(invalid(
                    key("upstream"),
                    format!("`{group}` is not a group defined under gateway.upstreams"),
                ));
            }
            Ok(RouteTarget::Upstream(group))
        }
        (None, Some(redirect), None) => {
            if ![301, 302, 303, 307, 308].contains(&redirect.status) {
                return Err(invalid(
                    key("redirect.status"),
                    "one of 301, 302, 303, 307, 308",
                ));
            }
            let to = ValueTemplate::parse(&redirect.to, Vars::Redirect, params)
                .map_err(|e| invalid(key("redirect.to"), e))?;
            Ok(RouteTarget::Redirect {
                to,
                status: redirect.status,
            })
        }
        (None, None, Some(respond)) => {
            if !(200..=599).contains(&respond.status) {
                return Err(invalid(key("respond.status"), "a status from 200 to 599"));
            }
            let (body, content_type) = match (respond.json, respond.body) {
                (Some(json), None) => (json.to_string().into_bytes(), "application/json"),
                (None, Some(text)) => (text.into_bytes(), "text/plain; charset=utf-8"),
                (None, None) => (Vec::new(), "text/plain; charset=utf-8"),
                (Some(_), Some(_)) => {
                    return Err(invalid(key("respond"), "`json` or `body`, not both"))
                }
            };
            Ok(RouteTarget::Respond {
                status: respond.status,
                body: body.into(),
                content_type,
            })
        }
        (None, None, None) => Err(invalid(
            key("upstream"),
            "a route needs one of `upstream`, `redirect` or `respond`",
        )),
        _ => Err(invalid(
            key("upstream"),
            "only one of `upstream`, `redirect` or `respond`",
        )),
    }
}

fn resolve_rewrite(
    key: &dyn Fn(&str) -> String,
    r: &mut RouteFile,
    path: &PathMatch,
) -> Result<Option<Rewrite>, ConfigError> {
    let shorthand = std::mem::take(&mut r.strip_prefix);
    let rewrite = r.rewrite.take();
    let from_prefix = |strip: String, prefix: String, k: &str| {
        let PathMatch::Prefix(p) = path else {
            return Err(invalid(
                key(k),
                "needs a `prefix` path (a template rewrites with `path`)",
            ));
        };
        if strip.is_empty() || !p.starts_with(strip.as_str()) {
            return Err(invalid(
                key(k),
                format!("`{strip}` is not a leading part of the prefix `{p}`"),
            ));
        }
        Ok(Some(Rewrite::Prefix { strip, prefix }))
    };
    match (shorthand, rewrite) {
        (StripFile::Flag(false), None) => Ok(None),
        (StripFile::Flag(true), None) => {
            from_prefix(path.text().to_string(), String::new(), "strip_prefix")
        }
        (StripFile::Prefix(s), None) => from_prefix(s, String::new(), "strip_prefix"),
        (StripFile::Flag(false), Some(rw)) => match (rw.strip_prefix, rw.prefix, rw.path) {
            (None, None, Some(p)) => {
                if !p.starts_with('/') {
                    return Err(invalid(
                        key("rewrite.path"),
                        format!("`{p}` must start with `/`"),
                    ));
                }
                let t = ValueTemplate::parse(&p, Vars::Rewrite, path.params())
                    .map_err(|e| invalid(key("rewrite.path"), e))?;
                Ok(Some(Rewrite::Path(t)))
            }
            (strip, prefix, None) if strip.is_some() || prefix.is_some() => {
                let prefix = prefix.unwrap_or_default();
                if !prefix.is_empty() && !prefix.starts_with('/') {
                    return Err(invalid(
                        key("rewrite.prefix"),
                        format!("`{prefix}` must start with `/`"),
                    ));
                }
                match strip {
                    Some(s) => from_prefix(s, prefix, "rewrite.strip_prefix"),
                    None => Ok(Some(Rewrite::Prefix {
                        strip: String::new(),
                        prefix,
                    })),
                }
            }
            _ => Err(invalid(
                key("rewrite"),
                "`strip_prefix` and/or `prefix`, or `path` alone",
            )),
        },
        (_, Some(_)) => Err(invalid(
            key("strip_prefix"),
            "give the rewrite once: `rewrite` or the shorthand `strip_prefix`, not both",
        )),
    }
}

fn resolve_retries(
    key: &dyn Fn(&str) -> String,
    f: file::RetriesFile,
) -> Result<RouteRetries, ConfigError> {
    let mut out = RouteRetries {
        attempts: f.attempts,
        on_connect: false,
        statuses: Vec::new(),
    };
    if !(1..=10).contains(&f.attempts) {
        return Err(invalid(key("retries.attempts"), "from 1 to 10"));
    }
    for (j, v) in f.on.iter().enumerate() {
        let text = match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match text.as_str() {
            "connect" => out.on_connect = true,
            s => match s.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => out.statuses.push(code),
                _ => {
                    return Err(invalid(
                        key(&format!("retries.on[{j}]")),
                        "`connect` or a 5xx status such as \"503\"",
                    ))
                }
            },
        }
    }
    Ok(out)
}

fn resolve_route(
    mut r: RouteFile,
    key: &dyn Fn(&str) -> String,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    body: &BodyPolicy,
) -> Result<RouteConfig, ConfigError> {
    let mut m = r.matches.take().unwrap_or_default();
    let path = resolve_path(key, &mut m, r.prefix.take())?;
    let (hosts, conditions) = resolve_conditions(key, m)?;
    let target = resolve_target(key, &mut r, upstreams, path.params())?;
    let rewrite = resolve_rewrite(key, &mut r, &path)?;
    if rewrite.is_some() && !matches!(target, RouteTarget::Upstream(_)) {
        return Err(invalid(
            key("rewrite"),
            "only a route to an `upstream` is rewritten",
        ));
    }
    let name = match r.name.take() {
        Some(n) if n.is_empty() || n.len() > 64 || n.chars().any(char::is_control) => {
            return Err(invalid(
                key("name"),
                "1 to 64 characters, no control characters",
            ))
        }
        Some(n) => n,
        None => {
            let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
            format!("{}{}", hosts.join(","), path.text())
        }
    };
    let params = path.params().to_vec();
    let headers = r.headers.take().unwrap_or_default();
    let timeouts = r.timeouts.take().unwrap_or_default();
    let timeouts = RouteTimeouts {
        connect: timeouts
            .connect_ms
            .map(|v| millis(&key("timeouts.connect_ms"), v))
            .transpose()?,
        read: timeouts
            .read_ms
            .map(|v| millis(&key("timeouts.read_ms"), v))
            .transpose()?,
        total: timeouts
            .total_ms
            .map(|v| millis(&key("timeouts.total_ms"), v))
            .transpose()?,
    };
    let retries = r
        .retries
        .take()
        .map(|f| resolve_retries(key, f))
        .transpose()?;
    let require = r.require.take().unwrap_or_default();
    let auth = match r.auth {
        None | Some(AuthModeFile::Required) => RouteAuth::Required,
        Some(AuthModeFile::Optional) => RouteAuth::Optional,
        Some(AuthModeFile::Public) => RouteAuth::Public,
    };
    if auth == RouteAuth::Public && !(require.scopes.is_empty() && require.roles.is_empty()) {
        return Err(invalid(
            key("require"),
            "a public route reads no token: drop `require` or `auth: public`",
        ));
    }
    let split = match r.split.take() {
        None => {
            if r.sticky.is_some() {
                return Err(invalid(
                    key("sticky"),
                    "only a route with `split` is sticky",
                ));
            }
            None
        }
        Some(sides) => {
            let sticky = match r.sticky.take() {
                None => None,
                Some(s) => Some(match (s.cookie, s.header, s.claim) {
                    (Some(c), None, None) => {
                        let token = !c.is_empty()
                            && c.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                        if !token {
                            return Err(invalid(
                                key("sticky.cookie"),
                                format!("`{c}` is not a cookie name (letters, digits, - _ .)"),
                            ));
                        }
                        Sticky::Cookie(c)
                    }
                    (None, Some(h), None) => Sticky::Header(
                        http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                            invalid(key("sticky.header"), format!("`{h}` is not a header name"))
                        })?,
                    ),
                    (None, None, Some(c)) if c == "sub" => Sticky::Sub,
                    (None, None, Some(c)) => {
                        return Err(invalid(
                            key("sticky.claim"),
                            format!("`{c}`: only `sub` (the caller) is supported"),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            key("sticky"),
                            "one of `cookie`, `header` or `claim`",
                        ))
                    }
                }),
            };
            Some(Split {
                sides: sides.into_iter().map(|s| (s.upstream, s.weight)).collect(),
                sticky,
            })
        }
    };
    let mirror = match r.mirror.take() {
        None => None,
        Some(m) => {
            if !(m.percent > 0.0 && m.percent <= 100.0) {
                return Err(invalid(key("mirror.percent"), "more than 0, at most 100"));
            }
            if m.max_in_flight == 0 {
                return Err(invalid(key("mirror.max_in_flight"), "must be at least 1"));
            }
            if upstreams.get(&m.upstream).is_some_and(|u| u.tls.is_some()) {
                return Err(invalid(
                    key("mirror.upstream"),
                    "a mirror group is reached over plain HTTP: this one has `tls`",
                ));
            }
            if target_group(&target) == Some(m.upstream.as_str()) {
                return Err(invalid(
                    key("mirror.upstream"),
                    "the route's own group: a mirror is another one",
                ));
            }
            Some(Mirror {
                upstream: m.upstream,
                percent: m.percent,
                max_in_flight: m.max_in_flight,
            })
        }
    };
    let credentials = match r.credentials.take() {
        None => Credentials::default(),
        Some(list) if list.is_empty() => {
            return Err(invalid(
                key("credentials"),
                "must list at least one of bearer, api_key, mtls",
            ))
        }
        Some(list) => {
            let mut c = Credentials {
                bearer: false,
                api_key: false,
                mtls: false,
            };
            for (j, name) in list.iter().enumerate() {
                let slot = match name.as_str() {
                    "bearer" => &mut c.bearer,
                    "api_key" => &mut c.api_key,
                    "mtls" => &mut c.mtls,
                    other => {
                        return Err(invalid(
                            key(&format!("credentials[{j}]")),
                            format!("`{other}` is not bearer, api_key or mtls"),
                        ))
                    }
                };
                *slot = true;
            }
            if auth == RouteAuth::Public {
                return Err(invalid(
                    key("credentials"),
                    "a public route reads no credential: drop `credentials` or `auth: public`",
                ));
            }
            c
        }
    };
    let mut policies = BTreeSet::new();
    if let Some(list) = &r.rate_limit {
        for (j, p) in list.iter().enumerate() {
            if !policies.insert(p) {
                return Err(invalid(
                    key(&format!("rate_limit[{j}]")),
                    format!("`{p}` is listed twice"),
                ));
            }
        }
    }
    let body = BodyPolicy {
        buffer_bytes: match r.request_body_buffer_bytes {
            Some(v) => buffer_bytes(&key("request_body_buffer_bytes"), v)?,
            None => body.buffer_bytes,
        },
        max_bytes: match r.max_request_body_bytes {
            Some(v) => positive(&key("max_request_body_bytes"), v)?,
            None => body.max_bytes,
        },
        read_timeout: match r.body_read_timeout_ms {
            Some(v) => millis(&key("body_read_timeout_ms"), v)?,
            None => body.read_timeout,
        },
    };
    Ok(RouteConfig {
        name,
        hosts,
        path,
        conditions,
        target,
        rewrite,
        auth,
        credentials,
        split,
        mirror,
        require: Require {
            scopes: require.scopes,
            roles: require.roles,
        },
        rate_limit: r.rate_limit,
        timeouts,
        retries,
        request_headers: rules(&key("headers.request"), headers.request, &params)?,
        response_headers: rules(&key("headers.response"), headers.response, &[])?,
        body,
    })
}

#[cfg(test)]
mod tests;
