//! `gateway.aggregates`: composite endpoints declared in the conf file. Each is a small
//! dependency graph of legs (service calls); this module parses and checks it once, at start-up
//! and under `-t`, into a plan the aggregation engine runs without further checks: templates
//! are split into parts, leg names become indexes, dependencies are known and acyclic.
//!
//! Every error names its key, e.g. `gateway.aggregates[1].legs.items.for_each`.
//!
//! - `file`: the schema as written.
//! - `plan`: the checked plan the engine runs.
//! - `parse`: names, path patterns, templates, value references, dependency cycles.
//! - `resolve`: one aggregate from file to plan, then the checks across aggregates.

mod file;
mod parse;
mod plan;
mod resolve;

pub(super) use self::file::AggregateFile;
pub use self::plan::{
    AggregateConfig, Authorize, CacheSpec, Expect, LegConfig, LocalSpec, Part, PathPattern,
    Segment, Step, Template, ValueRef,
};
pub(super) use self::resolve::resolve_aggregates;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigError;

    fn services() -> BTreeSet<String> {
        ["user", "order", "product", "recommendation", "catalog"]
            .map(String::from)
            .into()
    }

    fn check(yaml: &str) -> Result<Vec<AggregateConfig>, ConfigError> {
        let files: Vec<AggregateFile> = serde_yaml::from_str(yaml).unwrap();
        resolve_aggregates(files, &services())
    }

    fn err(yaml: &str) -> String {
        check(yaml).unwrap_err().to_string()
    }

    #[test]
    fn the_default_profile_declaration_is_valid() {
        let a = resolve_aggregates(
            serde_yaml::from_str(crate::testing::PROFILE_AGGREGATE).unwrap(),
            &services(),
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
                "- { name: a, path: '/x/{id}', match: { hosts: ['a.*'] }, legs: { a: { service: user, path: '/y' } } }",
                "gateway.aggregates[0].match.hosts[0]",
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
