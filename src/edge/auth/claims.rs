//! What the gateway reads out of a verified token beyond `sub`: the roles at `roles_claim` and
//! the values of `forward_claims`, ready to be sent upstream as headers.

use http::HeaderValue;
use serde_json::Value;

/// Reads roles and forwarded claims from a token's claims.
pub(crate) struct ClaimReader {
    roles: Vec<String>,
    forward: Vec<Vec<String>>,
    /// Paths of the claims rate-limit policies count by and header rules read.
    limits: Vec<Vec<String>>,
    /// Whether scopes are read (some route requires them).
    scopes: bool,
}

impl ClaimReader {
    /// A reader for the configured roles path, forwarded claim paths (in conf order) and the
    /// claim paths of rate-limit policies.
    pub(crate) fn new(
        roles: Vec<String>,
        forward: Vec<Vec<String>>,
        limits: Vec<Vec<String>>,
        scopes: bool,
    ) -> Self {
        ClaimReader {
            roles,
            forward,
            limits,
            scopes,
        }
    }

    /// The scopes: `scope` split on spaces, else the strings of `scp` (an array, or a string
    /// split on spaces); none unless a route requires scopes.
    pub(crate) fn scopes(&self, claims: &Value) -> Vec<String> {
        if !self.scopes {
            return Vec::new();
        }
        let split = |s: &str| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => split(s),
            (_, Some(Value::String(s))) => split(s),
            (_, Some(Value::Array(a))) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether HS256 tokens can skip the generic JSON read: roles at the top-level `roles`
    /// and nothing forwarded, which the typed claims already cover.
    pub(crate) fn is_plain(&self) -> bool {
        self.forward.is_empty()
            && self.limits.is_empty()
            && !self.scopes
            && self.roles.len() == 1
            && self.roles[0] == "roles"
    }

    /// The roles: strings of the array at the roles path (none when absent or not an array).
    pub(crate) fn roles(&self, claims: &Value) -> Vec<String> {
        lookup(claims, &self.roles)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One header value per forwarded claim, `None` where the claim is absent or is not text
    /// (objects); a claim with control characters refuses the token (it cannot be forwarded,
    /// and leaving it out would let the upstream take its absence for the truth).
    pub(crate) fn forwarded(
        &self,
        claims: &Value,
    ) -> Result<Box<[Option<HeaderValue>]>, super::error::AuthError> {
        self.forward
            .iter()
            .map(|path| match lookup(claims, path).and_then(text) {
                None => Ok(None),
                Some(t) if t.is_empty() => Ok(None),
                Some(t) if !sendable(&t) => {
                    Err(super::error::AuthError::InvalidClaim(path.join(".")))
                }
                Some(t) => Ok(HeaderValue::from_str(&t).ok()),
            })
            .collect()
    }
}

impl ClaimReader {
    /// One value per rate-limit claim path: the claim's text (an array's items joined by
    /// commas), `None` where the token has none.
    pub(crate) fn limit_values(&self, claims: &Value) -> Box<[Option<String>]> {
        self.limits
            .iter()
            .map(|path| {
                lookup(claims, path)
                    .and_then(text)
                    .filter(|t| !t.is_empty())
            })
            .collect()
    }
}

/// Whether a claim value can travel as a header value (no control character, no DEL).
pub(crate) fn sendable(v: &str) -> bool {
    v.bytes().all(|b| (b >= 0x20 || b == b'\t') && b != 0x7f)
}

fn lookup<'v>(claims: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(claims, |v, step| v.get(step))
}

/// A claim's text: scalars as they read, arrays of scalars joined by commas (how HTTP folds a
/// repeated header, so `groups: [a, b]` arrives as `a,b`); objects have none.
fn text(v: &Value) -> Option<String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match v {
        Value::Array(items) => Some(
            items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()?
                .join(","),
        ),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn roles_follow_the_dotted_path() {
        let r = ClaimReader::new(path("realm_access.roles"), vec![], vec![], false);
        let c = json!({"realm_access": {"roles": ["admin", 7, "ops"]}, "roles": ["x"]});
        assert_eq!(r.roles(&c), ["admin", "ops"]);
        assert!(r
            .roles(&json!({"realm_access": {"roles": "admin"}}))
            .is_empty());
        assert!(!r.is_plain());
        assert!(ClaimReader::new(path("roles"), vec![], vec![], false).is_plain());
    }

    #[test]
    fn forwarded_claims_become_header_values_or_nothing() {
        let r = ClaimReader::new(
            path("roles"),
            [
                "tenant", "org.id", "groups", "admin", "obj", "missing", "empty",
            ]
            .map(path)
            .to_vec(),
            vec![],
            false,
        );
        let c = json!({"tenant": "acme", "org": {"id": 42}, "groups": ["a", "b"], "admin": true,
                       "obj": {"x": 1}, "empty": ""});
        let got: Vec<Option<String>> = r
            .forwarded(&c)
            .unwrap()
            .iter()
            .map(|v| v.as_ref().map(|v| v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            Some("acme"),
            Some("42"),
            Some("a,b"),
            Some("true"),
            None,
            None,
            None,
        ];
        assert_eq!(got, want.map(|s| s.map(String::from)));
        // A claim that cannot be a header refuses the token, naming the claim.
        for bad in ["line\nbreak", "nul\u{0}", "del\u{7f}"] {
            let c = json!({"org": {"id": bad}});
            assert_eq!(
                r.forwarded(&c).err(),
                Some(super::super::error::AuthError::InvalidClaim(
                    "org.id".into()
                ))
            );
        }
    }

    #[test]
    fn scopes_come_from_scope_or_scp_when_asked_for() {
        let r = ClaimReader::new(path("roles"), vec![], vec![], true);
        assert!(!r.is_plain());
        assert_eq!(r.scopes(&json!({"scope": "a  b"})), ["a", "b"]);
        assert_eq!(r.scopes(&json!({"scp": ["a", 1, "c"]})), ["a", "c"]);
        assert_eq!(r.scopes(&json!({"scp": "x y"})), ["x", "y"]);
        assert!(r.scopes(&json!({"scope": 7})).is_empty());
        let off = ClaimReader::new(path("roles"), vec![], vec![], false);
        assert!(off.scopes(&json!({"scope": "a"})).is_empty());
    }

    #[test]
    fn limit_claims_are_text_or_nothing() {
        let r = ClaimReader::new(
            path("roles"),
            vec![],
            ["tenant", "org.id", "obj", "missing", "empty"]
                .map(path)
                .to_vec(),
            false,
        );
        assert!(!r.is_plain());
        let c = json!({"tenant": "acme", "org": {"id": 42}, "obj": {"x": 1}, "empty": ""});
        assert_eq!(
            &*r.limit_values(&c),
            &[
                Some("acme".to_string()),
                Some("42".to_string()),
                None,
                None,
                None
            ]
        );
    }
}
