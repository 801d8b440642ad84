//! From an aggregate as written to its checked plan, each failure naming its key; then the
//! checks across aggregates (unique names, no overlapping paths).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indexmap::IndexMap;

use super::file::{AggregateFile, AuthorizeFile, CacheFile, LegFile};
use super::parse::{find_cycle, parse_pattern, parse_template, valid_name, value_ref, Scope};
use super::plan::{AggregateConfig, Authorize, CacheSpec, Expect, LegConfig, LocalSpec, ValueRef};
use crate::config::check::{invalid, millis, positive, ConfigError};

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
        let mut hosts = Vec::new();
        for (j, h) in self
            .matches
            .map(|m| m.hosts)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            hosts.push(
                crate::config::routes::parse_host(h)
                    .map_err(|e| invalid(k(&format!("match.hosts[{j}]")), e))?,
            );
        }
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
            hosts,
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

/// Checks every aggregate, then the set: unique names, no two on overlapping paths (which of
/// an aggregate and a route wins is the route table's specificity).
pub(crate) fn resolve_aggregates(
    files: Vec<AggregateFile>,
    services: &BTreeSet<String>,
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
        out.push(a);
    }
    Ok(out)
}
