//! Finds the route of a request without walking the table: a hash per exact host and per
//! wildcard suffix (then the routes on any host); in each, a hash of exact paths, a radix
//! tree of templates (`matchit`), and a hash per prefix length, longest first. Each of those
//! lookups yields the routes on that host and path, most conditions first.

use ahash::AHashMap;
use http::{HeaderMap, Method};

use crate::config::{Conditions, HostMatch, PathMatch};

/// What a request is matched on.
pub(crate) struct RequestView<'r> {
    /// Lower case, no port (`None`: no host sent).
    pub(crate) host: Option<&'r str>,
    pub(crate) method: &'r Method,
    /// Without the query.
    pub(crate) path: &'r str,
    pub(crate) query: Option<&'r str>,
    pub(crate) headers: &'r HeaderMap,
}

/// The outcome of a match.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Match {
    /// This entry, with the template's params (empty for other paths).
    Route(usize, Vec<(Box<str>, Box<str>)>),
    /// The path is routed, but not for this method: these are.
    NotAllowed(Vec<Method>),
    /// Nothing matches.
    NotFound,
}

/// One entry as the matcher sees it.
pub(crate) struct Candidate<'c> {
    pub(crate) hosts: &'c [HostMatch],
    pub(crate) path: &'c PathMatch,
    pub(crate) conditions: &'c Conditions,
}

/// Routes by path, for one path shape.
type Lists = AHashMap<Box<str>, Vec<usize>>;

#[derive(Default)]
struct Bucket {
    exact: Lists,
    templates: matchit::Router<usize>,
    /// The router pattern of each template list, to add a route to an existing one.
    template_index: AHashMap<String, usize>,
    template_lists: Vec<Vec<usize>>,
    /// By prefix length, longest first.
    prefixes: Vec<(usize, Lists)>,
}

impl Bucket {
    fn add(&mut self, idx: usize, path: &PathMatch) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(idx),
            PathMatch::Template(t) => match self.template_index.get(&t.router) {
                Some(&list) => self.template_lists[list].push(idx),
                None => {
                    let list = self.template_lists.len();
                    // Templates that cannot live together were refused when the conf was checked.
                    if self.templates.insert(t.router.clone(), list).is_ok() {
                        self.template_index.insert(t.router.clone(), list);
                        self.template_lists.push(vec![idx]);
                    }
                }
            },
            PathMatch::Prefix(p) => {
                let at = match self.prefixes.iter().position(|(len, _)| *len <= p.len()) {
                    Some(i) if self.prefixes[i].0 == p.len() => i,
                    Some(i) => {
                        self.prefixes.insert(i, (p.len(), AHashMap::new()));
                        i
                    }
                    None => {
                        self.prefixes.push((p.len(), AHashMap::new()));
                        self.prefixes.len() - 1
                    }
                };
                self.prefixes[at]
                    .1
                    .entry(p.as_str().into())
                    .or_default()
                    .push(idx);
            }
        }
    }

    fn lists(&mut self) -> impl Iterator<Item = &mut Vec<usize>> {
        self.exact
            .values_mut()
            .chain(self.template_lists.iter_mut())
            .chain(self.prefixes.iter_mut().flat_map(|(_, m)| m.values_mut()))
    }
}

/// The compiled index over a table's entries.
#[derive(Default)]
pub(crate) struct Matcher {
    /// Each entry's conditions, by its index.
    conditions: Vec<Conditions>,
    exact_hosts: AHashMap<Box<str>, Bucket>,
    wildcard_hosts: AHashMap<Box<str>, Bucket>,
    any_host: Bucket,
}

impl Matcher {
    /// Indexes `entries` (in table order); each list is ordered most conditions first.
    pub(crate) fn new(entries: &[Candidate<'_>]) -> Matcher {
        let mut m = Matcher {
            conditions: entries.iter().map(|e| e.conditions.clone()).collect(),
            ..Matcher::default()
        };
        for (i, e) in entries.iter().enumerate() {
            if e.hosts.is_empty() {
                m.any_host.add(i, e.path);
            }
            for h in e.hosts {
                let bucket = match h {
                    HostMatch::Exact(x) => m.exact_hosts.entry(x.as_str().into()).or_default(),
                    HostMatch::Wildcard(x) => {
                        m.wildcard_hosts.entry(x.as_str().into()).or_default()
                    }
                };
                bucket.add(i, e.path);
            }
        }
        let by_conditions = |list: &mut Vec<usize>| {
            list.sort_by_key(|i| std::cmp::Reverse(entries[*i].conditions.count()));
        };
        m.any_host.lists().for_each(by_conditions);
        for b in m
            .exact_hosts
            .values_mut()
            .chain(m.wildcard_hosts.values_mut())
        {
            b.lists().for_each(by_conditions);
        }
        m
    }

    /// Whether any route names a host (else the host is not read at all).
    pub(crate) fn has_hosts(&self) -> bool {
        !(self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty())
    }

    /// The most specific entry `req` meets; `accept(i)` is a last check an entry may add (an
    /// aggregate's segment boundary).
    pub(crate) fn find(&self, req: &RequestView<'_>, accept: &dyn Fn(usize) -> bool) -> Match {
        let entries = &self.conditions;
        let mut allow = Vec::new();
        if let Some(host) = req.host.filter(|_| self.has_hosts()) {
            if let Some(b) = self.exact_hosts.get(host) {
                if let Some(found) = find_in(b, req, entries, accept, &mut allow) {
                    return found;
                }
            }
            if !self.wildcard_hosts.is_empty() {
                // Longest suffix first: from the first dot on.
                for (at, _) in host.match_indices('.') {
                    if at == 0 {
                        continue;
                    }
                    if let Some(b) = self.wildcard_hosts.get(&host[at..]) {
                        if let Some(found) = find_in(b, req, entries, accept, &mut allow) {
                            return found;
                        }
                    }
                }
            }
        }
        if let Some(found) = find_in(&self.any_host, req, entries, accept, &mut allow) {
            return found;
        }
        if allow.is_empty() {
            Match::NotFound
        } else {
            Match::NotAllowed(allow)
        }
    }
}

fn find_in(
    b: &Bucket,
    req: &RequestView<'_>,
    entries: &[Conditions],
    accept: &dyn Fn(usize) -> bool,
    allow: &mut Vec<Method>,
) -> Option<Match> {
    let pick = |list: &[usize], allow: &mut Vec<Method>| {
        list.iter().copied().find(|&i| {
            let c = &entries[i];
            if !others_hold(c, req) || !accept(i) {
                return false;
            }
            if c.methods.is_empty() || c.methods.contains(req.method) {
                return true;
            }
            for m in &c.methods {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
            false
        })
    };
    if let Some(list) = b.exact.get(req.path) {
        if let Some(i) = pick(list, allow) {
            return Some(Match::Route(i, Vec::new()));
        }
    }
    if !b.template_lists.is_empty() {
        if let Ok(m) = b.templates.at(req.path) {
            if let Some(i) = pick(&b.template_lists[*m.value], allow) {
                let params = m.params.iter().map(|(k, v)| (k.into(), v.into())).collect();
                return Some(Match::Route(i, params));
            }
        }
    }
    for (len, map) in &b.prefixes {
        let Some(head) = req.path.get(..*len) else {
            continue;
        };
        if let Some(list) = map.get(head) {
            if let Some(i) = pick(list, allow) {
                return Some(Match::Route(i, Vec::new()));
            }
        }
    }
    None
}

/// The header and query conditions (the method is checked apart, for `Allow`).
fn others_hold(c: &Conditions, req: &RequestView<'_>) -> bool {
    for (name, values) in &c.headers {
        let sent = req.headers.get_all(name);
        if !sent
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| values.iter().any(|w| w == v)))
        {
            return false;
        }
    }
    if c.query.is_empty() {
        return true;
    }
    let Some(q) = req.query else {
        return false;
    };
    c.query.iter().all(|(name, values)| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == name.as_str() && values.iter().any(|w| *w == v))
    })
}

/// The request's host for matching: the URI's authority (h2, absolute form) or `Host`,
/// without port or trailing dot, in lower case (borrowed when it already is).
pub(crate) fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
    buf: &'a mut String,
) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => {
            let v = headers.get(http::header::HOST)?.to_str().ok()?;
            if let Some(rest) = v.strip_prefix('[') {
                // An IPv6 literal: up to its closing bracket.
                rest.split(']').next().unwrap_or(rest)
            } else {
                v.rsplit_once(':').map_or(v, |(h, _)| h)
            }
        }
    };
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        *buf = raw.to_ascii_lowercase();
        Some(buf.as_str())
    } else {
        Some(raw)
    }
}
