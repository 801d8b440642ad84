//! The templates routes hold: path templates they match (`/users/{id}/{rest...}`) and value
//! templates they fill (`{claim.tenant}`, `{param.id}`, `{request_id}`, …).

/// A matched path template, e.g. `/users/{id}/orders/{rest...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// As written.
    pub text: String,
    /// The same in `matchit`'s syntax (`{*rest}` for a trailing `{rest...}`).
    pub router: String,
    /// The params' names, in path order.
    pub params: Vec<String>,
}

impl PathTemplate {
    /// Parses `text`: whole-segment params `{name}` of `[A-Za-z0-9_]`, the last one may be
    /// `{name...}` (the rest of the path).
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        let segments: Vec<&str> = text[1..].split('/').collect();
        let mut router = String::with_capacity(text.len() + 2);
        let mut params = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            router.push('/');
            let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                if seg.contains(['{', '}']) {
                    return Err(format!(
                        "`{text}`: a param must be a whole segment, as in `/users/{{id}}`"
                    ));
                }
                router.push_str(seg);
                continue;
            };
            let (name, rest) = match inner.strip_suffix("...") {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !valid_name(name) {
                return Err(format!(
                    "`{text}`: `{{{inner}}}` is not a param name of [A-Za-z0-9_]"
                ));
            }
            if params.iter().any(|p| p == name) {
                return Err(format!("`{text}`: param `{name}` appears twice"));
            }
            if rest && i + 1 != segments.len() {
                return Err(format!(
                    "`{text}`: `{{{name}...}}` must be the last segment"
                ));
            }
            router.push_str(if rest { "{*" } else { "{" });
            router.push_str(name);
            router.push('}');
            params.push(name.to_string());
        }
        if params.is_empty() {
            return Err(format!(
                "`{text}` has no `{{param}}`: use `exact` or `prefix`"
            ));
        }
        Ok(PathTemplate {
            text: text.to_string(),
            router,
            params,
        })
    }

    /// The part before the first param (every path it matches starts with it).
    pub fn literal_start(&self) -> &str {
        &self.text[..self.text.find('{').unwrap_or(self.text.len())]
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One piece of a [`ValueTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Copied as written.
    Literal(String),
    /// `{claim.NAME}`: a claim of the verified token (dots walk into objects).
    Claim(String),
    /// `{param.NAME}` (or `{NAME}` in a rewrite path): a template param, as sent.
    Param(String),
    /// `{request_id}`.
    RequestId,
    /// `{client_ip}`.
    ClientIp,
    /// `{host}`: the request's host, without port.
    Host,
    /// `{path}`: the request's path, without query.
    Path,
}

/// A value with `{…}` variables: header values, redirect targets and rewritten paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    /// As written.
    pub text: String,
    /// Literal text and variables, in order.
    pub parts: Vec<Part>,
}

/// Which variables a template may use where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vars {
    /// Header values: every variable.
    Header,
    /// A redirect's `to`: no claims (the route may be public).
    Redirect,
    /// A rewrite path: the params only, as `{NAME}`.
    Rewrite,
}

impl ValueTemplate {
    /// Parses `text`; `params` are the route's template params (empty when it has none).
    pub(crate) fn parse(text: &str, vars: Vars, params: &[String]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("`{text}`: `{{` without `}}`"));
            };
            let name = &rest[open + 1..open + close];
            parts.push(Self::variable(text, name, vars, params)?);
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}`: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(ValueTemplate {
            text: text.to_string(),
            parts,
        })
    }

    fn variable(text: &str, name: &str, vars: Vars, params: &[String]) -> Result<Part, String> {
        let param = |p: &str| {
            if params.iter().any(|x| x == p) {
                Ok(Part::Param(p.to_string()))
            } else if params.is_empty() {
                Err(format!(
                    "`{text}`: `{{{name}}}` needs a `match.path.template` with that param"
                ))
            } else {
                Err(format!(
                    "`{text}`: `{p}` is not a param of the route's template (it has {})",
                    params.join(", ")
                ))
            }
        };
        let rest_param = name.strip_suffix("...").unwrap_or(name);
        match (vars, name) {
            (Vars::Rewrite, _) => param(rest_param),
            (_, "request_id") => Ok(Part::RequestId),
            (_, "client_ip") => Ok(Part::ClientIp),
            (_, "host") => Ok(Part::Host),
            (_, "path") => Ok(Part::Path),
            (_, n) if n.starts_with("param.") => param(&n["param.".len()..]),
            (Vars::Header, n) if n.starts_with("claim.") && n.len() > "claim.".len() => {
                Ok(Part::Claim(n["claim.".len()..].to_string()))
            }
            _ => Err(format!(
                "`{text}`: unknown variable `{{{name}}}` (known: {})",
                match vars {
                    Vars::Header =>
                        "{claim.NAME}, {param.NAME}, {request_id}, {client_ip}, {host}, {path}",
                    _ => "{param.NAME}, {request_id}, {client_ip}, {host}, {path}",
                }
            )),
        }
    }

    /// The claim names this template reads.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// Whether the template is plain text (no variable).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_become_matchit_patterns() {
        let t = PathTemplate::parse("/users/{id}/orders/{rest...}").unwrap();
        assert_eq!(t.router, "/users/{id}/orders/{*rest}");
        assert_eq!(t.params, ["id", "rest"]);
        assert_eq!(t.literal_start(), "/users/");
        for bad in [
            "users/{id}",
            "/users/x{id}",
            "/users/{rest...}/x",
            "/users/{id}/{id}",
            "/users/{a b}",
            "/users",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn value_templates_know_their_variables() {
        let p = ["id".to_string()];
        let t = ValueTemplate::parse("t-{claim.tenant}/{param.id}", Vars::Header, &p).unwrap();
        assert_eq!(
            t.parts,
            [
                Part::Literal("t-".into()),
                Part::Claim("tenant".into()),
                Part::Literal("/".into()),
                Part::Param("id".into())
            ]
        );
        assert!(ValueTemplate::parse("{claim.x}", Vars::Redirect, &p).is_err());
        assert!(ValueTemplate::parse("{nope}", Vars::Header, &p).is_err());
        assert!(ValueTemplate::parse("{param.other}", Vars::Header, &p).is_err());
        assert!(ValueTemplate::parse("/o/{id", Vars::Rewrite, &p).is_err());
        assert_eq!(
            ValueTemplate::parse("/o/{id}", Vars::Rewrite, &p)
                .unwrap()
                .parts[1],
            Part::Param("id".into())
        );
        assert!(ValueTemplate::parse("max-age=1", Vars::Header, &[])
            .unwrap()
            .is_literal());
    }
}
