//! Filling a leg's path template, and reading values out of legs' JSON (`{user.id}`,
//! `{orders.0.id}`, `{item.product_id}`).

use crate::config::{Part, Step, Template};

/// The value at `path` inside `v`: object keys, or array indexes on arrays.
pub(super) fn lookup<'a>(v: &'a serde_json::Value, path: &[Step]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, step| match v {
        serde_json::Value::Object(m) => m.get(step),
        serde_json::Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A scalar as one path segment, percent-encoded: only unreserved characters other than `.`
/// stay as they are, so a value can never add a segment nor climb out of one (`/`, `..`).
fn push_segment(out: &mut String, v: &serde_json::Value) -> Option<()> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Some(())
}

/// The filled template; `None` when a value it names is missing or not a scalar (the leg
/// fails). `values` are the legs this one depends on, by leg index.
pub(crate) fn render(
    t: &Template,
    params: &[String],
    values: &[(usize, &serde_json::Value)],
    item: Option<&serde_json::Value>,
) -> Option<String> {
    let mut out = String::with_capacity(64);
    for part in &t.parts {
        match part {
            Part::Literal(l) => out.push_str(l),
            Part::Param(i) => push_segment(
                &mut out,
                &serde_json::Value::String(params.get(*i)?.clone()),
            )?,
            Part::Value(r) => {
                let (_, v) = values.iter().find(|(leg, _)| *leg == r.leg)?;
                push_segment(&mut out, lookup(v, &r.path)?)?
            }
            Part::Item(path) => push_segment(&mut out, lookup(item?, path)?)?,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValueRef;
    use serde_json::json;

    fn t(parts: Vec<Part>) -> Template {
        Template { parts }
    }

    #[test]
    fn values_are_looked_up_by_keys_and_indexes() {
        let v = json!({"id": 7, "orders": [{"id": "a"}, {"id": "b"}], "addr": {"city": "Oslo"}});
        assert_eq!(
            lookup(&v, &["orders".into(), "1".into(), "id".into()]),
            Some(&json!("b"))
        );
        assert_eq!(
            lookup(&v, &["addr".into(), "city".into()]),
            Some(&json!("Oslo"))
        );
        assert_eq!(lookup(&v, &["orders".into(), "9".into()]), None);
        assert_eq!(lookup(&v, &["id".into(), "x".into()]), None);
    }

    #[test]
    fn values_are_one_encoded_segment_and_never_a_path_escape() {
        let user = json!({"id": "../../admin/x?y#z", "n": 42, "o": {"k": 1}});
        let tpl = t(vec![
            Part::Literal("/users/".into()),
            Part::Value(ValueRef {
                leg: 0,
                path: vec!["id".into()],
            }),
        ]);
        let got = render(&tpl, &[], &[(0, &user)], None).unwrap();
        assert_eq!(got, "/users/%2E%2E%2F%2E%2E%2Fadmin%2Fx%3Fy%23z");
        let n = t(vec![Part::Value(ValueRef {
            leg: 0,
            path: vec!["n".into()],
        })]);
        assert_eq!(render(&n, &[], &[(0, &user)], None).as_deref(), Some("42"));
        let obj = t(vec![Part::Value(ValueRef {
            leg: 0,
            path: vec!["o".into()],
        })]);
        assert_eq!(render(&obj, &[], &[(0, &user)], None), None, "not a scalar");
        let missing = t(vec![Part::Value(ValueRef {
            leg: 0,
            path: vec!["nope".into()],
        })]);
        assert_eq!(render(&missing, &[], &[(0, &user)], None), None);
        let item = t(vec![
            Part::Literal("/p/".into()),
            Part::Item(vec!["pid".into()]),
        ]);
        assert_eq!(
            render(&item, &[], &[], Some(&json!({"pid": "x y"}))).as_deref(),
            Some("/p/x%20y")
        );
        let param = t(vec![Part::Literal("/u/".into()), Part::Param(0)]);
        assert_eq!(
            render(&param, &["5".into()], &[], None).as_deref(),
            Some("/u/5")
        );
    }
}
