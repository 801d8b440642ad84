//! `gateway.aggregates`: composite endpoints declared in the conf file. Each is a small
//! dependency graph of legs (service calls); this module parses and checks it once, at start-up
//! and under `-t`, into a plan the aggregation engine runs without further checks: templates
//! are split into parts, leg names become indexes, dependencies are known and acyclic.
//!
//! Every error names its key, e.g. `gateway.aggregates[1].legs.items.for_each`.
//!
//! The aggregate schema as written, the checked plan the engine runs, and the checks between
//! them: the graph checks read the file structs and write the plan in one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use super::check::{invalid, ConfigError};
use super::check::{millis, positive};

/// One aggregate as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AggregateFile {
    name: String,
    path: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default = "default_deadline_ms")]
    deadline_ms: u64,
    #[serde(default)]
    authorize: Option<AuthorizeFile>,
    #[serde(default)]
    cache: Option<CacheFile>,
    legs: IndexMap<String, LegFile>,
    #[serde(default)]
    response: Option<IndexMap<String, String>>,
}

fn default_deadline_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeFile {
    param: String,
    #[serde(default = "default_claim")]
    claim: String,
    #[serde(default)]
    bypass_roles: Vec<String>,
    #[serde(default)]
    me: bool,
}

fn default_claim() -> String {
    "sub".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    #[serde(default)]
    ttl_seconds: u64,
    key: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    stale_while_revalidate_seconds: u64,
    #[serde(default)]
    stale_if_error_seconds: u64,
    #[serde(default)]
    ttl_from_services: bool,
    #[serde(default)]
    local: Option<LocalFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    #[serde(default = "default_local_entries")]
    max_entries: u64,
    #[serde(default = "default_local_ttl")]
    ttl_seconds: u64,
}

fn default_local_entries() -> u64 {
    10_000
}

fn default_local_ttl() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegFile {
    service: String,
    path: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<serde_json::Value>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    for_each: Option<String>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default)]
    max_items: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// The checked plan.

/// A declared composite endpoint, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Metric label and log field: `[a-z0-9_]+`, unique.
    pub name: String,
    /// The path pattern, e.g. `/api/profile/{id}`.
    pub path: PathPattern,
    /// Whether HEAD is answered too (it follows GET).
    pub methods: Vec<http::Method>,
    /// Budget of the whole request, every leg and retry included.
    pub deadline: Duration,
    /// Object-level authorization, if any.
    pub authorize: Option<Authorize>,
    /// Cache-aside settings (`ttl` zero: off).
    pub cache: Option<CacheSpec>,
    /// The legs in declaration order; [`LegConfig::deps`] index into this.
    pub legs: Vec<LegConfig>,
    /// Output keys, in order, each a leg's value or a field of it.
    pub response: Vec<(String, ValueRef)>,
}

/// `authorize`: the path param must equal the caller's claim, unless a role bypasses.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorize {
    /// Index of the param in [`PathPattern::params`].
    pub param: usize,
    /// The claim compared (`sub`).
    pub claim: String,
    /// Roles that may read anyone's.
    pub bypass_roles: Vec<String>,
    /// `me` in the param means the caller's own claim.
    pub me: bool,
}

/// Cache-aside for one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// How long an entry lives; zero turns the cache off.
    pub ttl: Duration,
    /// The key, over path params only.
    pub key: Template,
    /// Tags the entry carries (over params and leg values), for invalidation by tag; a tag
    /// that cannot be rendered (a missing value) is left off.
    pub tags: Vec<Template>,
    /// After `ttl`, how long a stale entry is served while one rebuild runs in the background.
    pub stale_while_revalidate: Duration,
    /// After `ttl`, how long a stale entry is served when a rebuild fails or degrades.
    pub stale_if_error: Duration,
    /// The TTL is at most every leg's `Cache-Control` max-age; `no-store`/`private`/`no-cache`
    /// from any leg → not cached.
    pub ttl_from_services: bool,
    /// The in-process tier in front of the shared store, if any.
    pub local: Option<LocalSpec>,
}

/// `cache.local`: fresh entries kept in this process for a short while, so a hit costs no
/// round trip to Redis; invalidations reach it through Redis pub/sub.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSpec {
    /// Entries kept at most (per aggregate).
    pub max_entries: usize,
    /// How long an entry is kept here at most (never past its freshness).
    pub ttl: Duration,
}

impl CacheSpec {
    /// How long the store keeps an entry past its TTL: the longer stale window.
    pub fn stale_window(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// One service call of an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct LegConfig {
    /// The leg's name (its default output key, and the `leg` metric label).
    pub name: String,
    /// The service called.
    pub service: String,
    /// The request path.
    pub path: Template,
    /// A failure fails the whole aggregate (404 → 404, …).
    pub required: bool,
    /// The value used when an optional leg fails.
    pub default: serde_json::Value,
    /// The JSON shape the service must answer.
    pub expect: Expect,
    /// Legs that must finish first (from `after`, templates and `for_each`), sorted.
    pub deps: Vec<usize>,
    /// Per-item fan-out: the leg and the path to an array in its value.
    pub for_each: Option<ValueRef>,
    /// Items fetched at once.
    pub concurrency: usize,
    /// Items fetched at most; the rest are dropped and the key degraded.
    pub max_items: usize,
}

/// The JSON shape a leg's service must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value.
    Any,
}

/// A path pattern: literal segments and `{param}` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The pattern as written.
    pub text: String,
    /// Its segments after the leading `/`.
    pub segments: Vec<Segment>,
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must match exactly.
    Literal(String),
    /// Captures one segment: 1–64 chars of `[A-Za-z0-9_-]`.
    Param(String),
}

impl PathPattern {
    /// The params' names, in path order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether some path matches both patterns.
    fn overlaps(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                })
    }

    /// A path this pattern matches (params as `x`), to test route prefixes against.
    fn example(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(_) => s.push('x'),
            }
        }
        s
    }
}

/// A step into a JSON value: an object key, or (on an array) an index.
pub type Step = String;

/// A value of an earlier leg: the leg, then a path into its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRef {
    /// Index of the leg.
    pub leg: usize,
    /// Keys (or array indexes) into its value; empty: the whole value.
    pub path: Vec<Step>,
}

/// A string with `{…}` placeholders, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The parts, in order.
    pub parts: Vec<Part>,
}

/// One part of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Copied as is.
    Literal(String),
    /// A path param, by index in [`PathPattern::params`].
    Param(usize),
    /// A value of an earlier leg.
    Value(ValueRef),
    /// The current `for_each` element, or a path into it.
    Item(Vec<Step>),
}

impl Template {
    /// The legs whose values the template reads.
    fn legs(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v.leg),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Checking.

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_pattern(key: &str, text: &str) -> Result<PathPattern, ConfigError> {
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| invalid(key, format!("`{text}` must start with `/`")))?;
    let mut segments = Vec::new();
    let mut seen = BTreeSet::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(invalid(key, format!("`{text}` has an empty segment")));
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if !valid_name(name) {
                return Err(invalid(
                    key,
                    format!("`{{{name}}}`: a param name is [a-z0-9_]+"),
                ));
            }
            if !seen.insert(name.to_string()) {
                return Err(invalid(key, format!("param `{name}` appears twice")));
            }
            segments.push(Segment::Param(name.to_string()));
        } else if seg.contains(['{', '}']) {
            return Err(invalid(
                key,
                format!("`{seg}`: a param must be a whole segment, like `{{id}}`"),
            ));
        } else {
            segments.push(Segment::Literal(seg.to_string()));
        }
    }
    Ok(PathPattern {
        text: text.to_string(),
        segments,
    })
}

/// What a template may name.
struct Scope<'a> {
    params: &'a [String],
    legs: &'a IndexMap<String, LegFile>,
    /// Inside a `for_each` leg: `{item…}` is allowed.
    item: bool,
    /// Leg values are allowed (not in a cache key).
    values: bool,
}

fn split_dotted(s: &str) -> Vec<Step> {
    s.split('.').map(str::to_string).collect()
}

fn parse_template(key: &str, text: &str, scope: &Scope<'_>) -> Result<Template, ConfigError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| invalid(key, format!("`{text}`: `{{` without `}}`")))?
            + open;
        let name = &rest[open + 1..close];
        parts.push(placeholder(key, name, scope)?);
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(invalid(key, format!("`{text}`: `}}` without `{{`")));
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(Template { parts })
}

fn placeholder(key: &str, name: &str, scope: &Scope<'_>) -> Result<Part, ConfigError> {
    let mut steps = split_dotted(name);
    if steps.iter().any(String::is_empty) {
        return Err(invalid(
            key,
            format!("`{{{name}}}` is not a name or dotted path"),
        ));
    }
    let head = steps.remove(0);
    if steps.is_empty() {
        if let Some(i) = scope.params.iter().position(|p| *p == head) {
            return Ok(Part::Param(i));
        }
    }
    if head == "item" {
        if !scope.item {
            return Err(invalid(
                key,
                format!("`{{{name}}}`: `item` exists only in a leg with `for_each`"),
            ));
        }
        return Ok(Part::Item(steps));
    }
    if let Some(leg) = scope.legs.get_index_of(&head) {
        if !scope.values {
            return Err(invalid(
                key,
                format!("`{{{name}}}`: only path params may be used here"),
            ));
        }
        return Ok(Part::Value(ValueRef { leg, path: steps }));
    }
    Err(invalid(
        key,
        format!("`{{{name}}}` names neither a path param nor a leg"),
    ))
}

fn value_ref(
    key: &str,
    text: &str,
    legs: &IndexMap<String, LegFile>,
) -> Result<ValueRef, ConfigError> {
    let mut steps = split_dotted(text.trim());
    let head = steps.remove(0);
    let leg = legs
        .get_index_of(&head)
        .ok_or_else(|| invalid(key, format!("`{head}` is not a leg of this aggregate")))?;
    if steps.iter().any(String::is_empty) {
        return Err(invalid(
            key,
            format!("`{text}` is not a leg or dotted path"),
        ));
    }
    Ok(ValueRef { leg, path: steps })
}

/// The first dependency cycle among `deps`, as `a → b → a`.
fn find_cycle(names: &[&str], deps: &[Vec<usize>]) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        n: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for &d in &deps[n] {
            match marks[d] {
                Mark::Active => {
                    let from = stack.iter().position(|&x| x == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, deps, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; deps.len()];
    for n in 0..deps.len() {
        if marks[n] == Mark::New {
            if let Some(c) = visit(n, deps, &mut marks, &mut Vec::new()) {
                // `deps` point from a leg to what it waits for; print in waiting order.
                let names: Vec<&str> = c.iter().map(|&i| names[i]).collect();
                return Some(names.join(" → "));
            }
        }
    }
    None
}

impl AggregateFile {
    fn resolve(
        self,
        key: &str,
        services: &BTreeSet<String>,
    ) -> Result<AggregateConfig, ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        if !valid_name(&self.name) {
            return Err(invalid(
                k("name"),
                format!("`{}`: an aggregate name is [a-z0-9_]+", self.name),
            ));
        }
        let path = parse_pattern(&k("path"), &self.path)?;
        let params: Vec<String> = path.params().map(str::to_string).collect();
        let methods = methods(self.methods, &k)?;
        let deadline = millis(&k("deadline_ms"), self.deadline_ms)?;
        let authorize = authorize(self.authorize, &params, &self.path, &k)?;
        if self.legs.is_empty() {
            return Err(invalid(k("legs"), "an aggregate needs at least one leg"));
        }
        let cache = cache(self.cache, &params, &self.legs, &k)?;
        let mut legs = Vec::with_capacity(self.legs.len());
        for (name, leg) in &self.legs {
            legs.push(resolve_leg(key, name, leg, &params, &self.legs, services)?);
        }
        let names: Vec<&str> = legs.iter().map(|l| l.name.as_str()).collect();
        let deps: Vec<Vec<usize>> = legs.iter().map(|l| l.deps.clone()).collect();
        if let Some(cycle) = find_cycle(&names, &deps) {
            return Err(invalid(k("legs"), format!("dependency cycle: {cycle}")));
        }
        let response = response(self.response, &self.legs, &k)?;
        if response.iter().any(|(key, _)| key == "degraded") {
            return Err(invalid(
                k("response.degraded"),
                "`degraded` is always the last key and is written by the gateway",
            ));
        }
        Ok(AggregateConfig {
            name: self.name,
            path,
            methods,
            deadline,
            authorize,
            cache,
            legs,
            response,
        })
    }
}

/// `methods`: GET (HEAD comes with it); nothing else.
fn methods(
    methods: Option<Vec<String>>,
    k: &dyn Fn(&str) -> String,
) -> Result<Vec<http::Method>, ConfigError> {
    Ok(match methods {
        None => vec![http::Method::GET],
        Some(ms) => {
            let mut out = Vec::new();
            for m in ms {
                match m.to_ascii_uppercase().as_str() {
                    "GET" => out.push(http::Method::GET),
                    "HEAD" => {}
                    other => {
                        return Err(invalid(
                            k("methods"),
                            format!("`{other}`: aggregates answer GET (and HEAD) only"),
                        ))
                    }
                }
            }
            if out.is_empty() {
                return Err(invalid(k("methods"), "must include GET"));
            }
            out
        }
    })
}

/// `authorize`: which param names the owner, compared with the token's `sub`.
fn authorize(
    authorize: Option<AuthorizeFile>,
    params: &[String],
    path: &str,
    k: &dyn Fn(&str) -> String,
) -> Result<Option<Authorize>, ConfigError> {
    Ok(match authorize {
        None => None,
        Some(a) => {
            let param = params.iter().position(|p| *p == a.param).ok_or_else(|| {
                invalid(
                    k("authorize.param"),
                    format!("`{}` is not a param of `{}`", a.param, path),
                )
            })?;
            if a.claim != "sub" {
                return Err(invalid(
                    k("authorize.claim"),
                    format!("`{}`: only `sub` can be compared (custom claims come with identity providers)", a.claim),
                ));
            }
            Some(Authorize {
                param,
                claim: a.claim,
                bypass_roles: a.bypass_roles,
                me: a.me,
            })
        }
    })
}

/// `cache`: the key and tag templates, the stale windows and the in-process tier.
fn cache(
    cache: Option<CacheFile>,
    params: &[String],
    legs: &IndexMap<String, LegFile>,
    k: &dyn Fn(&str) -> String,
) -> Result<Option<CacheSpec>, ConfigError> {
    Ok(match cache {
        None => None,
        Some(c) => {
            let scope = Scope {
                params,
                legs,
                item: false,
                values: false,
            };
            let with_values = Scope {
                values: true,
                ..scope
            };
            let tags = c
                .tags
                .iter()
                .enumerate()
                .map(|(i, t)| parse_template(&k(&format!("cache.tags[{i}]")), t, &with_values))
                .collect::<Result<Vec<_>, _>>()?;
            // A day at most: a stale window is a bridge over a refresh or an outage, not
            // a second TTL.
            for (field, v) in [
                (
                    "stale_while_revalidate_seconds",
                    c.stale_while_revalidate_seconds,
                ),
                ("stale_if_error_seconds", c.stale_if_error_seconds),
            ] {
                if v > 86_400 {
                    return Err(invalid(
                        k(&format!("cache.{field}")),
                        "at most 86400 (a day)",
                    ));
                }
            }
            let local = match c.local {
                None => None,
                Some(l) => {
                    if !(1..=1_000_000).contains(&l.max_entries) {
                        return Err(invalid(
                            k("cache.local.max_entries"),
                            "1 to 1000000 entries",
                        ));
                    }
                    // Short by design: it bounds how long a replica that missed an
                    // invalidation (its subscription down) can go on answering an entry.
                    if !(1..=300).contains(&l.ttl_seconds) {
                        return Err(invalid(k("cache.local.ttl_seconds"), "1 to 300 seconds"));
                    }
                    Some(LocalSpec {
                        max_entries: l.max_entries as usize,
                        ttl: Duration::from_secs(l.ttl_seconds),
                    })
                }
            };
            Some(CacheSpec {
                local,
                ttl: Duration::from_secs(c.ttl_seconds),
                key: parse_template(&k("cache.key"), &c.key, &scope)?,
                tags,
                stale_while_revalidate: Duration::from_secs(c.stale_while_revalidate_seconds),
                stale_if_error: Duration::from_secs(c.stale_if_error_seconds),
                ttl_from_services: c.ttl_from_services,
            })
        }
    })
}

/// One leg: its service, path template, dependencies, `for_each` and body shape.
fn resolve_leg(
    key: &str,
    name: &str,
    leg: &LegFile,
    params: &[String],
    all: &IndexMap<String, LegFile>,
    services: &BTreeSet<String>,
) -> Result<LegConfig, ConfigError> {
    let lk = |s: &str| format!("{key}.legs.{name}.{s}");
    if !valid_name(name) {
        return Err(invalid(
            format!("{key}.legs.{name}"),
            "a leg name is [a-z0-9_]+",
        ));
    }
    if !services.contains(&leg.service) {
        return Err(invalid(
            lk("service"),
            format!("`{}` is not a service under gateway.services", leg.service),
        ));
    }
    if !leg.path.starts_with('/') {
        return Err(invalid(
            lk("path"),
            format!("`{}` must start with `/`", leg.path),
        ));
    }
    let scope = Scope {
        params,
        legs: all,
        item: leg.for_each.is_some(),
        values: true,
    };
    let path = parse_template(&lk("path"), &leg.path, &scope)?;
    let mut deps: BTreeSet<usize> = path.legs().collect();
    for a in &leg.after {
        let i = all
            .get_index_of(a)
            .ok_or_else(|| invalid(lk("after"), format!("`{a}` is not a leg of this aggregate")))?;
        deps.insert(i);
    }
    let for_each = match &leg.for_each {
        None => None,
        Some(f) => {
            let v = value_ref(&lk("for_each"), f, all)?;
            deps.insert(v.leg);
            Some(v)
        }
    };
    let me = all.get_index_of(name).unwrap_or(usize::MAX);
    if deps.contains(&me) {
        return Err(invalid(
            lk(
                if leg
                    .for_each
                    .as_deref()
                    .is_some_and(|f| f.split('.').next() == Some(name))
                {
                    "for_each"
                } else {
                    "path"
                },
            ),
            format!("leg `{name}` depends on itself"),
        ));
    }
    let expect = match leg.expect.as_deref() {
        None | Some("any") => Expect::Any,
        Some("object") => Expect::Object,
        Some("array") => Expect::Array,
        Some(other) => {
            return Err(invalid(
                lk("expect"),
                format!("`{other}`: one of object, array, any"),
            ))
        }
    };
    Ok(LegConfig {
        name: name.to_string(),
        service: leg.service.clone(),
        path,
        required: leg.required,
        default: leg.default.clone().unwrap_or(serde_json::Value::Null),
        expect,
        deps: deps.into_iter().collect(),
        for_each,
        concurrency: positive(&lk("concurrency"), leg.concurrency.unwrap_or(8))? as usize,
        max_items: positive(&lk("max_items"), leg.max_items.unwrap_or(100))? as usize,
    })
}

/// `response`: the document's keys and where each comes from (every leg whole by default).
fn response(
    response: Option<IndexMap<String, String>>,
    legs: &IndexMap<String, LegFile>,
    k: &dyn Fn(&str) -> String,
) -> Result<Vec<(String, ValueRef)>, ConfigError> {
    Ok(match response {
        None => legs
            .keys()
            .enumerate()
            .map(|(leg, name)| {
                (
                    name.clone(),
                    ValueRef {
                        leg,
                        path: Vec::new(),
                    },
                )
            })
            .collect(),
        Some(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (out_key, source) in map {
                out.push((
                    out_key.clone(),
                    value_ref(&k(&format!("response.{out_key}")), &source, legs)?,
                ));
            }
            out
        }
    })
}

/// Checks every aggregate, then the set: unique names, no two on overlapping paths, no route
/// prefix that would take an aggregate's requests.
pub(super) fn resolve_aggregates(
    files: Vec<AggregateFile>,
    services: &BTreeSet<String>,
    route_prefixes: &[String],
) -> Result<Vec<AggregateConfig>, ConfigError> {
    let mut out: Vec<AggregateConfig> = Vec::with_capacity(files.len());
    let mut names = BTreeMap::new();
    for (i, f) in files.into_iter().enumerate() {
        let key = format!("gateway.aggregates[{i}]");
        let a = f.resolve(&key, services)?;
        if let Some(j) = names.insert(a.name.clone(), i) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is also the name of gateway.aggregates[{j}]", a.name),
            ));
        }
        if let Some((j, other)) = out
            .iter()
            .enumerate()
            .find(|(_, o)| o.path.overlaps(&a.path))
        {
            return Err(invalid(
                format!("{key}.path"),
                format!(
                    "`{}` overlaps `{}` of gateway.aggregates[{j}]",
                    a.path.text, other.path.text
                ),
            ));
        }
        let example = a.path.example();
        if let Some((r, prefix)) = route_prefixes
            .iter()
            .enumerate()
            .find(|(_, p)| example.starts_with(p.as_str()))
        {
            return Err(invalid(
                format!("gateway.routes[{r}].prefix"),
                format!(
                    "`{prefix}` would take the requests of aggregate `{}` (`{}`)",
                    a.name, a.path.text
                ),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> BTreeSet<String> {
        ["user", "order", "product", "recommendation", "catalog"]
            .map(String::from)
            .into()
    }

    fn check(yaml: &str) -> Result<Vec<AggregateConfig>, ConfigError> {
        let files: Vec<AggregateFile> = serde_yaml::from_str(yaml).unwrap();
        resolve_aggregates(files, &services(), &["/api/users/".into()])
    }

    fn err(yaml: &str) -> String {
        check(yaml).unwrap_err().to_string()
    }

    #[test]
    fn the_default_profile_declaration_is_valid() {
        let a = resolve_aggregates(
            serde_yaml::from_str(crate::testing::PROFILE_AGGREGATE).unwrap(),
            &services(),
            &[],
        )
        .unwrap();
        let p = &a[0];
        assert_eq!(p.name, "profile");
        assert_eq!(p.legs.len(), 4);
        // orders reads user.id, products and recommendations wait for user: one stage each.
        assert_eq!(p.legs[1].deps, vec![0]);
        assert_eq!(
            p.legs[1].path.parts[1],
            Part::Value(ValueRef {
                leg: 0,
                path: vec!["id".into()]
            })
        );
        assert_eq!(p.legs[2].deps, vec![0]);
        assert_eq!(p.response.len(), 4);
        assert_eq!(p.authorize.as_ref().map(|a| a.param), Some(0));
    }

    #[test]
    fn every_invalid_graph_is_refused_naming_its_key() {
        let cases = [
            (
                "- { name: a, path: '/x/{id}', legs: { l: { service: nope, path: /y } } }",
                "gateway.aggregates[0].legs.l.service",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { l: { service: user, path: '/y/{nope}' } } }",
                "gateway.aggregates[0].legs.l.path",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/{b.id}' }, b: { service: user, path: '/{a.id}' } } }",
                "dependency cycle: a → b → a",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/{item}', for_each: a } } }",
                "gateway.aggregates[0].legs.a.for_each",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/{item}', for_each: b } } }",
                "gateway.aggregates[0].legs.a.for_each",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/y' } } }\n- { name: b, path: '/x/{other}', legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[1].path",
            ),
            (
                "- { name: a, path: '/api/users/{id}/all', legs: { a: { service: user, path: '/y' } } }",
                "gateway.routes[0].prefix",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/y' } }, response: { out: nope } }",
                "gateway.aggregates[0].response.out",
            ),
            (
                "- { name: a, path: '/x/{id}', authorize: { param: uid }, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].authorize.param",
            ),
            (
                "- { name: a, path: '/x/{id}', legs: { a: { service: user, path: '/y/{item}' } } }",
                "gateway.aggregates[0].legs.a.path",
            ),
            (
                "- { name: a, path: '/x/{id}', cache: { ttl_seconds: 5, key: 'k:{a.id}' }, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].cache.key",
            ),
            (
                "- { name: a, path: '/x/{id}', cache: { ttl_seconds: 5, key: 'k:{id}', local: { max_entries: 0 } }, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].cache.local.max_entries",
            ),
            (
                "- { name: a, path: '/x/{id}', cache: { ttl_seconds: 5, key: 'k:{id}', local: { ttl_seconds: 301 } }, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].cache.local.ttl_seconds",
            ),
            (
                "- { name: A, path: /x, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].name",
            ),
            (
                "- { name: a, path: /x, legs: { a: { service: user, path: '/y' } } }\n- { name: a, path: /z, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[1].name",
            ),
        ];
        for (yaml, want) in cases {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml}\n→ {e}\nwanted {want}");
        }
    }

    #[test]
    fn a_local_tier_takes_its_defaults() {
        let a = check("- { name: a, path: '/x/{id}', cache: { ttl_seconds: 5, key: 'k:{id}', local: {} }, legs: { a: { service: user, path: '/y' } } }").unwrap();
        let local = a[0].cache.as_ref().and_then(|c| c.local.clone());
        assert_eq!(
            local,
            Some(LocalSpec {
                max_entries: 10_000,
                ttl: Duration::from_secs(2)
            })
        );
    }

    #[test]
    fn a_three_stage_cycle_is_printed_in_order() {
        let e = err("- { name: a, path: /x, legs: { a: { service: user, path: '/{c.id}' }, b: { service: user, path: '/{a.id}' }, c: { service: user, path: '/{b.id}' } } }");
        assert!(e.contains("a → c → b → a"), "{e}");
    }

    #[test]
    fn templates_split_into_params_values_and_items() {
        let a = check("- { name: a, path: '/x/{id}', legs: { o: { service: order, path: '/o/{id}' }, p: { service: catalog, path: '/p/{item.product_id}?u={id}', for_each: o.lines } } }").unwrap();
        let p = &a[0].legs[1];
        assert_eq!(p.deps, vec![0]);
        assert_eq!(
            p.for_each,
            Some(ValueRef {
                leg: 0,
                path: vec!["lines".into()]
            })
        );
        assert_eq!(
            p.path.parts,
            vec![
                Part::Literal("/p/".into()),
                Part::Item(vec!["product_id".into()]),
                Part::Literal("?u=".into()),
                Part::Param(0),
            ]
        );
    }
}
