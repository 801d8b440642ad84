//! Which route wins: exact host over wildcard over any; then exact path over template over
//! a longer prefix over a shorter one; then more conditions over fewer. Never file order: two
//! routes that could take the same request at equal specificity are refused at start.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::types::{Conditions, HostMatch, PathMatch, RouteConfig};
use crate::config::check::{invalid, ConfigError};

/// A route's place in the match order: lower wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// 0 exact host, 1 wildcard (a longer suffix first), 2 any host.
    host: (u8, Reverse<usize>),
    /// 0 exact path, 1 template, 2 prefix (a longer one first).
    path: (u8, Reverse<usize>),
    /// More conditions first.
    conditions: Reverse<usize>,
}

impl Specificity {
    /// Of `route` on `host` (one of its hosts, `None` for a route on any host).
    pub fn on(route: &RouteConfig, host: Option<&HostMatch>) -> Specificity {
        Specificity {
            host: match host {
                Some(HostMatch::Exact(_)) => (0, Reverse(0)),
                Some(HostMatch::Wildcard(s)) => (1, Reverse(s.len())),
                None => (2, Reverse(0)),
            },
            path: match &route.path {
                PathMatch::Exact(_) => (0, Reverse(0)),
                PathMatch::Template(t) => (1, Reverse(t.literal_start().len())),
                PathMatch::Prefix(p) => (2, Reverse(p.len())),
            },
            conditions: Reverse(route.conditions.count()),
        }
    }

    /// Of `route` on its most specific host.
    pub fn of(route: &RouteConfig) -> Specificity {
        route
            .hosts
            .iter()
            .map(|h| Specificity::on(route, Some(h)))
            .min()
            .unwrap_or_else(|| Specificity::on(route, None))
    }
}

impl RouteConfig {
    /// Its place in the match order.
    pub fn specificity(&self) -> Specificity {
        Specificity::of(self)
    }
}

/// Whether some request could meet both sets of conditions.
fn overlap(a: &Conditions, b: &Conditions) -> bool {
    if !a.methods.is_empty()
        && !b.methods.is_empty()
        && !a.methods.iter().any(|m| b.methods.contains(m))
    {
        return false;
    }
    let disjoint = |x: &[String], y: &[String]| !x.iter().any(|v| y.contains(v));
    for (name, values) in &a.headers {
        if let Some((_, other)) = b.headers.iter().find(|(n, _)| n == name) {
            if disjoint(values, other) {
                return false;
            }
        }
    }
    for (name, values) in &a.query {
        if let Some((_, other)) = b.query.iter().find(|(n, _)| n == name) {
            if disjoint(values, other) {
                return false;
            }
        }
    }
    true
}

/// The path as a grouping key: a template's param names do not tell two templates apart.
fn path_key(p: &PathMatch) -> (u8, String) {
    match p {
        PathMatch::Exact(x) => (0, x.clone()),
        PathMatch::Prefix(x) => (2, x.clone()),
        PathMatch::Template(t) => {
            let mut key = String::new();
            for seg in t.text.split('/') {
                if seg.starts_with('{') {
                    key.push_str(if seg.ends_with("...}") { "{*}" } else { "{}" });
                } else {
                    key.push_str(seg);
                }
                key.push('/');
            }
            (1, key)
        }
    }
}

/// Refuses two routes (`where_` names each: `gateway.routes[3]`) that could take the same
/// request at equal specificity, and templates the matcher cannot hold together.
pub(crate) fn check_conflicts(routes: &[(String, &RouteConfig)]) -> Result<(), ConfigError> {
    type Group<'a> = Vec<(&'a str, &'a RouteConfig)>;
    let mut groups: BTreeMap<(Option<&HostMatch>, (u8, String)), Group<'_>> = BTreeMap::new();
    let mut templates: BTreeMap<Option<&HostMatch>, matchit::Router<&str>> = BTreeMap::new();
    for (where_, r) in routes {
        let hosts: Vec<Option<&HostMatch>> = if r.hosts.is_empty() {
            vec![None]
        } else {
            r.hosts.iter().map(Some).collect()
        };
        for host in hosts {
            let group = groups.entry((host, path_key(&r.path))).or_default();
            for (other_where, other) in group.iter() {
                if let (PathMatch::Template(a), PathMatch::Template(b)) = (&other.path, &r.path) {
                    if a.text != b.text {
                        return Err(invalid(
                            format!("{where_}.match.path.template"),
                            format!(
                                "routes `{}` ({other_where}) and `{}`: `{}` has the shape of `{}`: \
                                 name the params the same",
                                other.name, r.name, b.text, a.text
                            ),
                        ));
                    }
                }
                if other.conditions.count() == r.conditions.count()
                    && overlap(&other.conditions, &r.conditions)
                {
                    return Err(invalid(
                        where_.clone(),
                        format!(
                            "routes `{}` ({other_where}) and `{}` could both take the same \
                             request ({}{}) with equal specificity: add a condition (methods, \
                             headers, query) to one, or remove one",
                            other.name,
                            r.name,
                            host.map(ToString::to_string).unwrap_or_default(),
                            r.path.text()
                        ),
                    ));
                }
            }
            let first_of_template = group.is_empty();
            group.push((where_.as_str(), r));
            if let (PathMatch::Template(t), true) = (&r.path, first_of_template) {
                let router = templates.entry(host).or_default();
                if let Err(e) = router.insert(t.router.clone(), r.name.as_str()) {
                    return Err(invalid(
                        format!("{where_}.match.path.template"),
                        format!(
                            "`{}` cannot be told apart from another template: {e}",
                            t.text
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
