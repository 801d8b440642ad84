//! The checks a plan is made of: names, path patterns, templates and the values they read,
//! and the dependency graph's cycles.

use std::collections::BTreeSet;

use indexmap::IndexMap;

use super::file::LegFile;
use super::plan::{Part, PathPattern, Segment, Step, Template, ValueRef};
use crate::config::check::{invalid, ConfigError};

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) fn parse_pattern(key: &str, text: &str) -> Result<PathPattern, ConfigError> {
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
pub(super) struct Scope<'a> {
    pub(super) params: &'a [String],
    pub(super) legs: &'a IndexMap<String, LegFile>,
    /// Inside a `for_each` leg: `{item…}` is allowed.
    pub(super) item: bool,
    /// Leg values are allowed (not in a cache key).
    pub(super) values: bool,
}

fn split_dotted(s: &str) -> Vec<Step> {
    s.split('.').map(str::to_string).collect()
}

pub(super) fn parse_template(
    key: &str,
    text: &str,
    scope: &Scope<'_>,
) -> Result<Template, ConfigError> {
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

pub(super) fn value_ref(
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
pub(super) fn find_cycle(names: &[&str], deps: &[Vec<usize>]) -> Option<String> {
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
